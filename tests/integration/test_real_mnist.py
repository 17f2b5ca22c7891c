"""The real MNIST through the README's main command: a broken data path cannot reach this bar."""

import json

from tests.support.cli import cli


def test_model3_one_epoch_on_real_mnist_reaches_97_percent(mnist_dir, tmp_path):
    p = cli("train", "configs/model3.yaml", "--local", "--data-dir", str(mnist_dir), "--set", "train.epochs=1",
            "--store", str(tmp_path), "--run-id", "real", timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((tmp_path / "runs" / "real" / "summary.json").read_text())
    # a data path that scrambles labels, pixels or normalization lands far below this
    assert summary["final_test_accuracy"] >= 0.97, summary
    start = json.loads((tmp_path / "runs" / "real" / "events.jsonl").read_text().splitlines()[0])
    assert start["train_size"] == 60000 and start["test_size"] == 10000
