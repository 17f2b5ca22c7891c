"""The real CLI in a subprocess: every artifact of a local run, and one clear line for bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import ROOT
from tests.support.cli import cli
from tests.support.runs import EPOCH_ROW

ARTIFACTS = ["config.yaml", "meta.json", "events.jsonl", "train.log", "summary.json", "status.json",
             "model.safetensors", "curves.png", "checkpoints"]
SUMMARY_KEYS = {"run_id", "model", "params", "epochs_completed", "best_test_accuracy", "final_test_accuracy",
                "train_seconds", "images_per_second", "mixed_precision", "num_processes", "device"}


def assert_one_line_error(p, *needles, code=None):
    assert p.returncode != 0, p.stdout
    if code is not None:
        assert p.returncode == code
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for n in needles:
        assert n in err, err


def test_local_train_end_to_end_writes_every_artifact(small_mnist, tmp_path):
    p = cli("train", "configs/model3.yaml", "--local", "--data-dir", str(small_mnist), "--store", str(tmp_path),
            "--run-id", "e2e", "--set", "train.epochs=2", "--set", "train.mixed_precision=bf16",
            # bf16 autocast on a CPU runs ~7x slower than fp32 (BENCHMARKS.md): one batch an epoch is enough here
            "--set", "data.train_limit=128")
    assert p.returncode == 0, p.stdout + p.stderr
    run_dir = tmp_path / "runs" / "e2e"
    for name in ARTIFACTS:
        assert (run_dir / name).exists(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["run_id"] == "e2e" and summary["params"] == 7736 and summary["mixed_precision"] == "bf16"
    assert 0 <= summary["final_test_accuracy"] <= 1 and summary["epochs_completed"] == 2
    resolved = (run_dir / "config.yaml").read_text()
    assert "epochs: 2" in resolved and str(small_mnist) in resolved  # the resolved config, data dir included
    assert "final test accuracy" in p.stdout and "Layer (type)" in p.stdout and "Conv2d-1" in p.stdout

    rows = json.loads(cli("runs", "--json", "--store", str(tmp_path)).stdout)
    assert [r["run_id"] for r in rows] == ["e2e"] and rows[0]["state"] == "succeeded"
    assert rows[0]["final_test_accuracy"] == summary["final_test_accuracy"]
    table = cli("runs", "--store", str(tmp_path)).stdout
    assert "e2e" in table and "model3" in table

    logs = cli("logs", "e2e", "--store", str(tmp_path))
    assert logs.returncode == 0 and logs.stdout.count("    2  ") == 1 and "finished" in logs.stdout
    raw = cli("logs", "e2e", "--raw", "--store", str(tmp_path))
    assert "Layer (type)" in raw.stdout

    got = cli("results", "e2e", "--dest", str(tmp_path / "fetched"), "--store", str(tmp_path))
    assert got.returncode == 0 and (tmp_path / "fetched" / "e2e" / "summary.json").is_file()


def test_neither_ctrl_c_nor_a_killed_follower_stops_the_run(small_mnist, tmp_path):
    """Ctrl-C on `train` detaches; a `logs --follow` killed like a closing laptop (SIGKILL) leaves the run too;
    a new follow shows every epoch once. (One run for both: each trainer run costs ~8 s of CPU.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_LAUNCH_STEP_DELAY": "0.4"}  # running when signalled
    # Ctrl-C reaches it as in a terminal, even where pytest itself was started in the background (a shell starts
    # background jobs with SIGINT ignored, and children inherit it)
    def popen(*args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "launcher", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    proc = popen("train", "configs/model3.yaml", "--local", "--data-dir", str(small_mnist), "--store", str(tmp_path),
                 "--run-id", "orphan", "--set", "train.epochs=3")
    events = tmp_path / "runs" / "orphan" / "events.jsonl"

    def seen(kind: bytes) -> bool:
        return events.exists() and b'"type":"' + kind + b'"' in events.read_bytes()

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not seen(b"start"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "detached" in out and "mnist-launch logs orphan --follow" in out
    follower = popen("logs", "orphan", "--follow", "--store", str(tmp_path))
    while time.monotonic() < deadline and not seen(b"epoch"):
        time.sleep(0.2)
    follower.kill()  # the laptop closes while it follows
    follower.communicate(timeout=30)
    follow = cli("logs", "orphan", "--follow", "--store", str(tmp_path), timeout=240)
    assert follow.returncode == 0
    assert [int(e) for e in EPOCH_ROW.findall(follow.stdout)] == [1, 2, 3], follow.stdout  # every epoch once, in order
    assert json.loads((tmp_path / "runs" / "orphan" / "status.json").read_text())["state"] == "succeeded"


def test_models_json_lists_the_recipes():
    p = cli("models", "--json")
    rows = {r["name"]: r for r in json.loads(p.stdout)}
    expected = {"model1": None, "model2": None, "model3": None, "model4": 7194, "fc_baseline": 26698,
                "fc_dropout": 15106, "one_epoch": 8530, "gap_19k": 19114}
    for name, params in expected.items():
        assert rows[name]["seed"].endswith(".txt") and rows[name]["claim"]
        if params:
            assert rows[name]["params"] == params


@pytest.fixture
def bad_config(tmp_path):
    def make(text):
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        return str(p)
    return make


def test_bad_config_and_flags_give_one_line_and_nonzero_exit(bad_config, small_mnist, tmp_path):
    store = ["--store", str(tmp_path), "--data-dir", str(small_mnist)]
    assert_one_line_error(cli("train", bad_config("model: model3\ntrain: {epoch: 3}\n"), "--local", *store),
                          "bad.yaml", "unknown key 'train.epoch'", code=2)
    assert_one_line_error(cli("train", bad_config("model: model3\ntrain: {batch_size: big}\n"), "--local", *store),
                          "train.batch_size", "integer")
    assert_one_line_error(cli("train", "configs/model3.yaml", "--local", "--set", "optimizer.lr=-1", *store),
                          "optimizer.lr", "greater than 0")
    assert_one_line_error(cli("train", "configs/model3.yaml", "--local", "--set", "train.colour=red", *store),
                          "--set", "unknown key 'train.colour'")
    assert_one_line_error(cli("train", "configs/nope.yaml", "--local", *store), "configs/nope.yaml", "not found")
    assert_one_line_error(cli("train", "configs/model3.yaml", "--local", "--bogus-flag"), "--bogus-flag", "--help")
    assert_one_line_error(cli("train", "configs/model3.yaml", "--local", "--processes", "0", *store), "--processes")
    assert not (tmp_path / "runs").exists()  # nothing half-created


def test_bad_data_gives_one_line_naming_the_problem(tmp_path):
    missing = cli("train", "configs/model3.yaml", "--local", "--data-dir", str(tmp_path / "nowhere"),
                  "--store", str(tmp_path))
    assert_one_line_error(missing, "MNIST files missing", "nowhere", "mnist-launch data download")
    from tests.support.data import make_dir

    data = make_dir(tmp_path / "corrupt")
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    corrupt = cli("train", "configs/model3.yaml", "--local", "--data-dir", str(data), "--store", str(tmp_path))
    assert_one_line_error(corrupt, "train-images-idx3-ubyte.gz")
    assert not (tmp_path / "runs").exists()


def test_train_downloads_missing_data_before_the_run_starts(mnist_mirror, tmp_path):
    """`train --local` on an empty folder fetches the four files (mirror env, stderr lines), checks them and goes
    on; the run id is taken already, so it stops at the next step, after the data step, without training."""
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    data = tmp_path / "empty"
    p = cli("train", "configs/model3.yaml", "--local", "--data-dir", str(data), "--store", str(tmp_path),
            "--run-id", "taken", env={"MNIST_LAUNCH_DATA_MIRRORS": f"http://127.0.0.1:1/,{mnist_mirror.url('good')}"})
    *lines, last = p.stderr.splitlines()
    assert p.returncode != 0 and last.startswith("error: run 'taken' already exists"), p.stderr
    assert "127.0.0.1:1/train-images-idx3-ubyte.gz: unreachable" in lines[0] and "used the next mirror" in lines[0]
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    assert [line.split()[2] for line in lines[1:]] == names and all("sha256 verified" in x for x in lines[1:])
    assert sorted(os.listdir(data)) == sorted(names)
    assert all((data / n).read_bytes() == (mnist_mirror.folder / n).read_bytes() for n in os.listdir(data))
    assert os.listdir(tmp_path / "runs" / "taken") == []


def test_unknown_runs_say_how_to_list_them(tmp_path):
    for cmd in (["logs", "ghost"], ["cancel", "ghost"], ["train", "--local", "--resume", "ghost"]):
        assert_one_line_error(cli(*cmd, "--store", str(tmp_path)), "ghost", "mnist-launch runs")


def test_debug_env_shows_the_traceback(tmp_path):
    p = cli("logs", "ghost", "--store", str(tmp_path), env={"MNIST_LAUNCH_DEBUG": "1"})
    assert p.returncode != 0 and "Traceback" in p.stderr
