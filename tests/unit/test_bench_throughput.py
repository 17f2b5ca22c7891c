"""bench/throughput.py's inputs: the README's own command loads both variants, bad input is one line."""

import importlib.util
import re
import sys

import pytest

from tests.support import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("throughput_bench", ROOT / "bench" / "throughput.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_command_loads_both_variants(bench, monkeypatch, mnist_dir):
    """`python bench/throughput.py --data-dir ...` stopped with a traceback: YAML read `mixed_precision=no` as False."""
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--data-dir", str(mnist_dir)])
    configs = bench.check_args(bench.parse_args())
    assert {k: c.train.mixed_precision for k, c in configs.items()} == {"fp32": "no", "bf16": "bf16"}
    assert all(c.train.epochs == 1 and c.data.train_limit is None for c in configs.values())


@pytest.mark.parametrize(("args", "line"), [
    (["--data-dir", "/nonexistent"], r"^error: MNIST files missing .* — .*\n$"),
    (["--fraction", "0"], r"^error: --fraction 0\.0: must be in \(0, 1\] — .*\n$"),
    (["--fraction", "0.01"], r"^error: --fraction 0\.01: 600 images leave nothing to time .* — use --fraction 0\.03"),
    (["--device", "tpu"], r"^error: --device 'tpu': use cpu or cuda\n$"),
    (["--set", "train.mixed_precision=off"], r"^error: .*train\.mixed_precision: Input should be 'auto', 'no'.*"
                                               r"\(got 'off'\) — fix it and run again\n$"),
], ids=["no-data", "fraction-0", "too-few-batches", "device", "bad-set"])
def test_bad_input_is_one_error_line_before_anything_runs(bench, monkeypatch, capsys, mnist_dir, args, line):
    monkeypatch.delenv("MNIST_LAUNCH_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--data-dir", str(mnist_dir), *args])
    monkeypatch.setattr(bench, "our_pipeline", lambda cfg: pytest.fail("the trainer started on bad input"))
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code in (1, 2)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.match(line, err), err
