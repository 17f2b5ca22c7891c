"""Shared fixtures: the real MNIST, small IDX files cut from it, and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def real_mnist_dir() -> Path:
    path = Path(os.environ.get("MNIST_LAUNCH_TEST_DATA", SHARED_MNIST))
    if not (path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file() and not any(path.rglob("train-images*")):
        pytest.skip(f"real MNIST not found at {path} (set MNIST_LAUNCH_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return real_mnist_dir()


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory) -> Path:
    """Flat, gzipped IDX files of the first 2,000 train / 500 test real digits."""
    from trainer.data import load_mnist, write_idx

    full = load_mnist(real_mnist_dir())
    out = tmp_path_factory.mktemp("small_mnist")
    write_idx(out / "train-images-idx3-ubyte", full.train_images[:2000, 0].numpy())
    write_idx(out / "train-labels-idx1-ubyte", full.train_labels[:2000].numpy().astype(np.uint8))
    write_idx(out / "t10k-images-idx3-ubyte", full.test_images[:500, 0].numpy())
    write_idx(out / "t10k-labels-idx1-ubyte", full.test_labels[:500].numpy().astype(np.uint8))
    return out


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI (`python -m launcher ...`) in a subprocess, as a user would."""
    base = {k: v for k, v in os.environ.items() if k != "MNIST_LAUNCH_DEBUG"}
    full_env = {**base, "PYTHONPATH": str(ROOT), "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def module_sshd(tmp_path_factory):
    """One real sshd for a whole test module: starting one per test would dominate the runtime."""
    from tests.sshd_fixture import start_sshd, stop_sshd

    srv = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield srv
    stop_sshd(srv)


@pytest.fixture(params=["local", "ssh"])
def any_host(request, tmp_path):
    """The same test on LocalHost and on an SSHHost to the module's sshd."""
    from infra.host import LocalHost
    from infra.ssh import Endpoint, SSHHost

    if request.param == "local":
        yield LocalHost()
        return
    srv = request.getfixturevalue("module_sshd")
    with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key, known_hosts=tmp_path / "known_hosts") as ssh:
        yield ssh
