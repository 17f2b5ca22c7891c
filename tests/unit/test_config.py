
import pytest

from core.config import load_config
from core.errors import ConfigError
from tests.support import ROOT

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_is_a_config_for_every_recipe():
    stems = {p.stem for p in CONFIGS}
    assert {"model1", "model2", "model3", "model4", "fc_baseline", "fc_dropout", "one_epoch", "gap_19k"} <= stems


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_names_its_model(path):
    cfg = load_config(path)
    # a corrected twin (fc_baseline_onecycle.yaml) trains the model its stem starts with
    assert cfg.model == path.stem.removesuffix("_onecycle")


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_unknown_key_is_rejected_by_name(tmp_path):
    p = write(tmp_path, "model: model3\ntrain: {epochs: 2, lrr: 0.1}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'train\.lrr'"):
        load_config(p)


def test_wrong_type_names_file_and_key(tmp_path):
    p = write(tmp_path, "model: model3\ntrain: {epochs: many}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: train\.epochs: .*integer.*'many'"):
        load_config(p)


def test_negative_learning_rate_is_rejected(tmp_path):
    p = write(tmp_path, "model: model3\noptimizer: {lr: -0.1}\n")
    with pytest.raises(ConfigError, match=r"optimizer\.lr: Input should be greater than 0"):
        load_config(p)


def test_unknown_model_lists_the_zoo(tmp_path):
    p = write(tmp_path, "model: resnet50\n")
    with pytest.raises(ConfigError, match=r"unknown model 'resnet50' \(known: .*model3"):
        load_config(p)


def test_yaml_syntax_error_gives_the_line(tmp_path):
    p = write(tmp_path, "model: model3\ntrain: {epochs: 2\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(p)


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="file is empty"):
        load_config(write(tmp_path, ""))


def test_set_overrides_are_typed_and_checked(tmp_path):
    p = write(tmp_path, "model: model3\n")
    cfg = load_config(p, ["train.epochs=3", "augment.rotation=[-5, 10]", "optimizer.name=adam"])
    assert cfg.train.epochs == 3 and cfg.augment.rotation_range == (-5, 10) and cfg.optimizer.name == "adam"
    with pytest.raises(ConfigError, match=r"with --set train\.nope=1: unknown key 'train\.nope'"):
        load_config(p, ["train.nope=1"])
    with pytest.raises(ConfigError, match=r"--set 'epochs': expected KEY=VALUE"):
        load_config(p, ["epochs"])
    with pytest.raises(ConfigError, match=r"train\.mixed_precision: Input should be 'auto', 'no', 'fp16' or 'bf16'"):
        load_config(p, ["train.mixed_precision=fp8"])


def test_augment_ranges_are_validated(tmp_path):
    p = write(tmp_path, "model: model3\naugment: {scale: [1.2, 0.9]}\n")
    with pytest.raises(ConfigError, match=r"augment\.scale: must be \(lo, hi\)"):
        load_config(p)
    p = write(tmp_path, "model: model3\naugment: {rotation: -3}\n")
    with pytest.raises(ConfigError, match=r"augment\.rotation: must be >= 0"):
        load_config(p)


def test_null_turns_an_augmentation_off_as_none_does_in_torchvision(tmp_path):
    p = write(tmp_path, "model: model3\naugment: {rotation: 10, translate: [0.1, 0.1], scale: [0.9, 1.1], shear: 5}\n")
    cfg = load_config(p, ["augment.translate=null", "augment.scale=null", "augment.rotation=null",
                          "augment.shear=null"])
    assert cfg.augment.translate == (0.0, 0.0) and cfg.augment.scale == (1.0, 1.0)
    assert cfg.augment.rotation_range == (0.0, 0.0) and cfg.augment.shear_range == (0.0, 0.0)
    assert not cfg.augment.active
    assert load_config(p, ["augment.rotation=null"]).augment.active  # the others are still on


def test_mixed_precision_defaults_to_auto_and_rejects_unknown_names(tmp_path):
    p = write(tmp_path, "model: model3\n")
    assert load_config(p).train.mixed_precision == "auto"
    assert load_config(p, ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    for bad in ("fp8", "half", "true"):
        with pytest.raises(ConfigError,
                           match=r"train\.mixed_precision: Input should be 'auto', 'no', 'fp16' or 'bf16'"):
            load_config(p, [f"train.mixed_precision={bad}"])


def test_launch_env_values_become_strings_and_a_bad_one_is_named_not_shown(tmp_path):
    p = write(tmp_path, "model: model3\nlaunch:\n  env: {DEBUG: true, NAME: x}\n")
    cfg = load_config(p, ["launch.env.RETRIES=3", "launch.env.PIN=007", "launch.env.LIST=[a]"])
    # --set values are taken as written (a shell's export), YAML scalars become strings
    assert cfg.launch.env == {"DEBUG": "true", "NAME": "x", "RETRIES": "3", "PIN": "007", "LIST": "[a]"}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "model: model3\nlaunch:\n  env: {TOKEN: [hunter2]}\n"))
    assert "launch.env: TOKEN must be a string, number or boolean, not list" in str(err.value)
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError) as err:  # a failing override elsewhere: the env values are not echoed either
        load_config(write(tmp_path, "model: model3\n"), ["launch.env.TOKEN=hunter2", "train.epochs=many"])
    assert "train.epochs" in str(err.value) and "hunter2" not in str(err.value)


def test_no_off_yes_on_mean_what_was_typed_and_booleans_still_take_them(tmp_path):
    """YAML 1.1 reads `no` as False: `--set train.mixed_precision=no`, the README's own example, was refused."""
    p = tmp_path / "c.yaml"
    p.write_text("model: model3\ntrain: {mixed_precision: no, channels_last: off}\noptimizer: {nesterov: yes}\n")
    cfg = load_config(p)
    assert cfg.train.mixed_precision == "no" and cfg.train.channels_last is False and cfg.optimizer.nesterov is True
    cfg = load_config(p, ["train.mixed_precision=no", "launch.spot=on", "train.compile=false", "optimizer.nesterov=NO"])
    assert (cfg.train.mixed_precision, cfg.launch.spot, cfg.train.compile, cfg.optimizer.nesterov) == (
        "no", True, False, False)
    with pytest.raises(ConfigError,
                       match=r"train.mixed_precision: Input should be 'auto', 'no', 'fp16' or 'bf16' \(got 'off'\)"):
        load_config(p, ["train.mixed_precision=off"])


def test_the_batch_is_global_and_each_process_takes_an_even_share():
    from core.config import per_process_batch

    assert [per_process_batch(128, w) for w in (1, 2, 4, 8)] == [128, 64, 32, 16]
    with pytest.raises(ConfigError, match=r"train.batch_size=128 cannot be shared evenly by 3 processes .* "
                                          r"use a multiple of 3, e.g. 126 or 129"):
        per_process_batch(128, 3)
    with pytest.raises(ConfigError, match="e.g. 4$"):
        per_process_batch(2, 4)  # no smaller multiple than the processes themselves


def test_a_local_run_whose_batch_the_processes_cannot_share_is_refused_before_it_starts(tmp_path):
    from launcher.targets.local import LocalTarget

    cfg = load_config(str(ROOT / "configs" / "model3.yaml"), ["train.batch_size=100"])
    with pytest.raises(ConfigError, match="train.batch_size=100 cannot be shared evenly by 3 processes"):
        LocalTarget(str(tmp_path), processes=3).prepare("r", cfg, str(tmp_path / "nodata"), restart=False)
    assert not (tmp_path / "runs").exists()
    cfg = load_config(str(ROOT / "configs" / "model3.yaml"), ["train.batch_size=128"])
    from core.errors import DataError

    with pytest.raises(DataError, match="MNIST files missing"):  # the batch passes; the missing data is next
        LocalTarget(str(tmp_path), processes=4).prepare("r", cfg, str(tmp_path / "nodata"), restart=False)


# (dotted key, as typed, what the field gets): the same in a config file and in `--set KEY=VALUE` (issue 15)
TYPED = [
    ("train.mixed_precision", "no", "no"),  # a Literal of names: the name typed
    ("launch.autostop", "off", "off"),
    ("description", "on", "on"),
    ("description", "yes", "yes"),
    ("description", "007", "007"),  # not 7
    ("description", "1e3", "1e3"),
    ("description", "1.50", "1.50"),  # not 1.5
    ("description", "2024-01-01", "2024-01-01"),  # not a date
    ("description", "12:30", "12:30"),  # not YAML 1.1's sexagesimal 750
    ("description", "null", "null"),  # a text field that cannot be unset keeps the word
    ("description", "~", "~"),
    ("launch.name", "007", "007"),
    ("launch.timeout", "90", "90"),  # the field's own check reads it (90 seconds)
    ("launch.env.PIN", "007", "007"),
    ("data.dir", "null", None),  # a field that can be unset: null, ~ or nothing unsets it ...
    ("data.dir", "~", None),
    ("data.dir", "'null'", "null"),  # ... and quoted it is the text
    ("data.dir", "007", "007"),
    ("store", "off", "off"),
    ("train.seed", "010", 10),  # numbers and booleans read as YAML, but a leading zero is not octal
    ("train.epochs", "3", 3),
    ("optimizer.lr", "1.0e-3", 0.001),
    ("data.train_limit", "null", None),
    ("launch.spot", "yes", True),
    ("optimizer.nesterov", "off", False),
    ("train.compile", "true", True),
]


def nested(key: str, typed: str) -> str:
    """`train.seed`, `010` -> the YAML a user writes for it in a file."""
    *sections, leaf = key.split(".")
    lines = [f"{'  ' * i}{s}:" for i, s in enumerate(sections)]
    return "\n".join(["model: model3", *lines, f"{'  ' * len(sections)}{leaf}: {typed}"]) + "\n"


def field(cfg, key: str):
    value = cfg
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


@pytest.mark.parametrize(("key", "typed", "expected"), TYPED, ids=lambda v: str(v))
def test_a_value_means_what_was_typed_in_a_file_and_in_set(tmp_path, key, typed, expected):
    from_file = field(load_config(write(tmp_path, nested(key, typed))), key)
    from_set = field(load_config(write(tmp_path, "model: model3\n"), [f"{key}={typed}"]), key)
    assert from_file == expected and type(from_file) is type(expected)
    # --set launch.env.K=V is taken as a shell takes it, quotes included
    assert from_set == (typed if key.startswith("launch.env.") else expected)


def test_set_with_nothing_after_the_equals_unsets_or_is_the_empty_text(tmp_path):
    p = write(tmp_path, "model: model3\ndescription: x\ndata: {dir: /d}\n")
    cfg = load_config(p, ["data.dir=", "description="])
    assert cfg.data.dir is None and cfg.description == ""
    assert load_config(write(tmp_path, "model: model3\ndescription:\n")).description == ""


def test_a_text_field_given_a_mapping_or_list_in_set_gets_the_text(tmp_path):
    p = write(tmp_path, "model: model3\n")
    assert load_config(p, ["description=a: b", "launch.name=x"]).description == "a: b"
    assert load_config(p, ["description=[1, 2]"]).description == "[1, 2]"
    with pytest.raises(ConfigError, match=r"c\.yaml: description: Input should be a valid string"):
        load_config(write(tmp_path, "model: model3\ndescription: [1, 2]\n"))  # in a file a list is a list


def test_a_whole_section_in_set_and_anchors_in_a_file_are_read_against_the_schema(tmp_path):
    p = write(tmp_path, "model: model3\n")
    cfg = load_config(p, ["launch={name: 007, spot: on, autostop: off}"])
    assert (cfg.launch.name, cfg.launch.spot, cfg.launch.autostop) == ("007", True, "off")
    p = write(tmp_path, "model: model3\nbase: &b {mixed_precision: no, seed: 010}\n")
    with pytest.raises(ConfigError, match="unknown key 'base'"):
        load_config(p)
    p = write(tmp_path, "model: model3\ntrain: &b {mixed_precision: no, seed: 010}\n"
                        "launch: {name: x, env: {<<: {A: 007}, B: off}}\n")
    cfg = load_config(p)
    assert (cfg.train.mixed_precision, cfg.train.seed, cfg.launch.env) == ("no", 10, {"A": "007", "B": "off"})
