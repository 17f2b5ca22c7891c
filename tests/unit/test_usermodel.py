"""A model class from a file of the project (`model: PATH.py:ClassName`): built from real files in a tmp folder.

Each way a user's file can fail gives one line naming the file and line, with only that file's frames as
the detail; a model over `train.max_params` is refused with its count before anything starts.
"""

from __future__ import annotations

import json

import pytest

from core.config import load_config, validate_config
from core.errors import ConfigError
from tests.support import ROOT
from tests.support.user_models import GOOD, HEAD, INIT_FAILS, write
from trainer import usermodel
from trainer.models import count_params, summarize
from trainer.usermodel import build, model_params


def test_a_model_from_a_file_is_built_counted_and_summarized(tmp_path):
    write(tmp_path, GOOD, "models/net.py")
    model = build("models/net.py:Net", root=tmp_path)
    assert count_params(model) == 28 * 28 * 10 + 10
    assert model_params("models/net.py:Net", 7850, root=tmp_path) == 7850  # at the budget: allowed
    rows = summarize(model)
    assert [(r["layer"], r["output_shape"], r["params"]) for r in rows] == [("Linear-1", [-1, 10], 7850)]


def test_a_model_over_train_max_params_is_refused_with_its_count(tmp_path):
    write(tmp_path, GOOD)
    with pytest.raises(ConfigError, match=r"^model m.py:Net has 7,850 parameters, over train.max_params 7,000 — "):
        model_params("m.py:Net", 7000, root=tmp_path)


def test_a_zoo_model_is_held_to_train_max_params_too():
    with pytest.raises(ConfigError, match="model model3 has 7,736 parameters, over train.max_params 5,000"):
        model_params("model3", 5000)


# (what is wrong, the file, the line the message names, what the message says, a frame's line shown in the detail)
BROKEN = [
    ("syntax", HEAD + "class Net(nn.Module:\n    pass\n", 5, "SyntaxError", "class Net(nn.Module:"),
    ("import", HEAD + "import not_a_module_here\n", 5, "ModuleNotFoundError: No module named 'not_a_module_here' "
     "(while importing it)", "import not_a_module_here"),
    ("init", INIT_FAILS, 6, "ValueError: invalid literal for int() with base 10: 'eight' (in Net())",
     'return int("eight")'),
    ("forward", GOOD.replace("28 * 28, 10", "100, 10"), 11, "RuntimeError: mat1 and mat2 shapes cannot be multiplied",
     "return self.fc(x.flatten(1))"),
    ("not a module", HEAD + "class Net:\n    pass\n", 5, "class Net is not a torch.nn.Module", None),
    ("shape", GOOD.replace("28 * 28, 10", "28 * 28, 20"), 10, "Net returns shape (2, 20) for a (2, 1, 28, 28) batch",
     None),
    ("no parameters", HEAD + "class Net(nn.Module):\n    def forward(self, x):\n        return x[:, 0, 0, :10]\n",
     5, "Net has no trainable parameters", None),
]


@pytest.mark.parametrize("what,text,line,says,frame", BROKEN, ids=[b[0] for b in BROKEN])
def test_an_error_in_the_users_file_is_one_line_with_file_and_line_and_only_their_frames(
        tmp_path, what, text, line, says, frame):
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build("m.py:Net", root=tmp_path)
    err = info.value
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"m.py:{line}: "), msg
    assert says in msg and " — " in msg
    if frame is not None:  # the user's own traceback: their lines, in their file's name, and nothing of ours
        assert f'File "m.py", line {line}' in err.detail and frame in err.detail, err.detail
        assert str(tmp_path) not in err.detail
        for ours in ("usermodel.py", "importlib", "site-packages", "torch/nn"):
            assert ours not in err.detail, err.detail


def test_the_init_frames_are_every_frame_of_the_users_file_in_order(tmp_path):
    write(tmp_path, INIT_FAILS)
    with pytest.raises(ConfigError) as info:
        build("m.py:Net", root=tmp_path)
    frames = [ln.strip() for ln in info.value.detail.splitlines() if ln.strip().startswith("File ")]
    assert frames == ['File "m.py", line 12, in __init__', 'File "m.py", line 6, in width']


def test_a_wrong_class_name_names_the_file_and_the_classes_it_has(tmp_path):
    write(tmp_path, GOOD + "\n\nclass Other(nn.Module):\n    pass\n\n\nHELPER = 3\n")
    with pytest.raises(ConfigError, match=r"^m.py: no class 'Nett' there \(its nn.Module classes: Net, Other\) — "):
        build("m.py:Nett", root=tmp_path)
    with pytest.raises(ConfigError, match=r"^m.py: 'HELPER' is not a class \(its type: int\) — "):
        build("m.py:HELPER", root=tmp_path)
    write(tmp_path, HEAD + "def Net():\n    return nn.Linear(784, 10)\n")
    with pytest.raises(ConfigError, match=r"^m.py:5: 'Net' is not a class \(its type: function\) — "):
        build("m.py:Net", root=tmp_path)


def test_a_missing_file_or_one_leading_out_of_the_project_is_refused(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    with pytest.raises(ConfigError, match=r"^model: gone.py not found in the project folder .* relative to the"):
        build("gone.py:Net", root=root)
    write(tmp_path, GOOD, "outside.py")
    (root / "link.py").symlink_to(tmp_path / "outside.py")
    (root / "sub").symlink_to(tmp_path)
    for spec in ("link.py:Net", "sub/outside.py:Net"):
        with pytest.raises(ConfigError, match=r"leads outside the project folder .* keep the model's file inside"):
            build(spec, root=root)


@pytest.mark.parametrize("model,says", [
    ("../m.py:Net", "must stay inside the project"),
    ("models/../../m.py:Net", "must stay inside the project"),
    ("/etc/m.py:Net", "must be a path relative to the project root"),
    ("~/m.py:Net", "must be a path relative to the project root"),
    ("m.txt:Net", "does not end in .py"),
    ("m.py:Net()", "must be a class name"),
    ("m.py:", "must be a class name"),
    ("models/$(id).py:Net", "use only letters, digits and . _ -"),
])
def test_the_config_refuses_a_model_path_that_could_leave_the_project(model, says):
    with pytest.raises(ConfigError, match=r"^x.yaml: model: .*" + says.replace("(", r"\(")) as info:
        validate_config({"model": model}, "x.yaml")
    assert "\n" not in str(info.value)


def test_the_example_in_the_readme_loads_and_builds():
    cfg = load_config(str(ROOT / "configs/examples/tiny_net.yaml"))
    assert cfg.model == "configs/examples/tiny_net.py:TinyNet" and cfg.train.max_params == 8000
    assert model_params(cfg.model, cfg.train.max_params) == 3778
    assert usermodel.PROJECT_ROOT == ROOT


def test_the_cli_refuses_a_model_over_budget_before_anything_starts(small_mnist, tmp_path, capsys):
    from launcher.cli import main

    code = main(["train", "configs/examples/tiny_net.yaml", "--local", "--store", str(tmp_path / "store"),
                 "--data-dir", str(small_mnist), "--set", "train.max_params=3000"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: model configs/examples/tiny_net.py:TinyNet has 3,778 parameters, over "
                                 "train.max_params 3,000 — make the model smaller or raise train.max_params")
    assert not (tmp_path / "store").exists()  # no run folder, no agent, no trainer


def test_the_cli_shows_the_users_frames_then_one_line(small_mnist, tmp_path, monkeypatch, capsys):
    from launcher.cli import main

    project = tmp_path / "project"
    write(project, INIT_FAILS, "models/net.py")
    (project / "run.yaml").write_text(json.dumps({"model": "models/net.py:Net"}))
    monkeypatch.setattr(usermodel, "PROJECT_ROOT", project)  # the project whose file the config names
    code = main(["train", str(project / "run.yaml"), "--local", "--store", str(tmp_path / "store"),
                 "--data-dir", str(small_mnist)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not (tmp_path / "store").exists()
    assert lines[-1].startswith("error: models/net.py:6: ValueError: invalid literal for int() with base 10: 'eight'")
    assert [ln.strip() for ln in lines[:-1] if ln.strip().startswith("File ")] == [
        'File "models/net.py", line 12, in __init__', 'File "models/net.py", line 6, in width']
    assert not any("launcher" in ln or "trainer" in ln or "Traceback" in ln for ln in lines)


def test_a_model_file_the_sync_leaves_behind_is_refused_before_a_cloud_run_starts(tmp_path):
    from rich.console import Console

    from infra.sync import left_out_of_sync
    from launcher.targets.ec2 import CloudFlags, EC2Target

    (tmp_path / ".gitignore").write_text("scratch/\n*.local.py\n")
    (tmp_path / ".mnist-launch-ignore").write_text("!keep.local.py\n")
    left = {rel: left_out_of_sync(tmp_path, rel) for rel in
            ("models/net.py", "scratch/net.py", "a/scratch/net.py", "net.local.py", "keep.local.py", "runs/x.py")}
    assert left == {"models/net.py": False, "scratch/net.py": True, "a/scratch/net.py": True, "net.local.py": True,
                    "keep.local.py": False, "runs/x.py": True}
    cfg = validate_config({"model": "runs/net.py:Net"}, "x.yaml")  # runs/ never travels
    with pytest.raises(ConfigError, match=r"^model: runs/net.py is left out of the sync to the instance .* "
                                          r"add a line '!runs/net.py' to .mnist-launch-ignore"):
        EC2Target(CloudFlags(), Console()).prepare("r1", cfg, None, restart=False)  # before any AWS call
