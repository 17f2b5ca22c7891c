"""A model from a file of the project trains through the real CLI, agent and trainer; the trainer refuses on its own.

    model: configs/examples/tiny_net.py:TinyNet   (README, "Your own model")
"""

from __future__ import annotations

import json

import yaml

from tests.support.cli import cli
from tests.support.user_models import INIT_FAILS, write
from trainer import usermodel

EXAMPLE = "configs/examples/tiny_net.py:TinyNet"


def test_the_readme_example_model_trains_locally_with_its_summary(small_mnist, tmp_path):
    p = cli("train", "configs/examples/tiny_net.yaml", "--local", "--data-dir", str(small_mnist), "--store",
            str(tmp_path), "--run-id", "mine", "--set", "data.train_limit=256", "--set", "data.test_limit=128",
            "--set", "train.epochs=1")
    assert p.returncode == 0, p.stdout + p.stderr
    run_dir = tmp_path / "runs" / "mine"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == EXAMPLE and summary["params"] == 3778 and summary["epochs_completed"] == 1
    assert 0 <= summary["final_test_accuracy"] <= 1
    start = next(json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                 if json.loads(line)["type"] == "start")
    rows = start["summary"]
    assert start["params"] == 3778 and sum(r["params"] for r in rows) == 3778
    assert rows[0]["layer"] == "Conv2d-1"
    assert rows[-1] == {"layer": "Linear-12", "output_shape": [-1, 10], "params": 170}
    assert "Layer (type)" in p.stdout and "Linear-12" in p.stdout  # the live view's table, as for the zoo
    log = (run_dir / "train.log").read_text()  # the trainer's own table (its title wraps at 80 columns)
    assert f"{EXAMPLE}: 3,778" in log and "Linear-12" in log


def test_the_trainer_itself_refuses_a_model_over_budget_or_a_broken_file(tiny_mnist, tmp_path, monkeypatch, capsys):
    """What the launcher checks before anything starts, the trainer checks again (a run started by hand, a file
    changed on the instance): one `error:` line, the agent's failure reason, above it the user's frames."""
    from trainer.__main__ import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = {"model": EXAMPLE, "data": {"dir": str(tiny_mnist)}, "train": {"max_params": 1000}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: model {EXAMPLE} has 3,778 parameters, over train.max_params 1,000 — "
                       "make the model smaller or raise train.max_params")
    assert not (run_dir / "summary.json").exists() and not (run_dir / "checkpoints").exists()

    write(tmp_path / "project", INIT_FAILS, "models/net.py")
    monkeypatch.setattr(usermodel, "PROJECT_ROOT", tmp_path / "project")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config, "model": "models/net.py:Net"}))
    assert main(["--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: models/net.py:6: ValueError: invalid literal for int()")
    assert [ln.strip() for ln in err if ln.strip().startswith("File ")] == [
        'File "models/net.py", line 12, in __init__', 'File "models/net.py", line 6, in width']
