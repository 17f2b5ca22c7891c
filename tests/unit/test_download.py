"""Missing MNIST files downloaded from mirrors on 127.0.0.1 (trainer/download.py, launcher/datafetch.py): the real
files arrive byte for byte, a bad mirror is passed over, and no failure leaves anything half-written."""

from __future__ import annotations

import ast
import importlib.util
import io
import shutil
import socket
from pathlib import Path

import pytest
from rich.console import Console

from core.config import load_config
from core.errors import ConfigError, DataError
from launcher.datafetch import ensure_mnist, mirrors_for
from trainer.data import check_dir
from trainer.download import CANONICAL, DEFAULT_MIRRORS, LineProgress, fetch_missing

LABELS = CANONICAL["test_labels"].name  # 4.5 kB: the file the failure tests fetch


def refused_url() -> str:
    """A port on 127.0.0.1 nothing listens on (bound for a moment, then closed): no network, as fast as it gets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_default_mirrors_and_names_are_torchvisions():
    """Read from torchvision's source, not imported: importing it loads torch."""
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.submodule_search_locations
    tree = ast.parse((Path(spec.submodule_search_locations[0]) / "datasets" / "mnist.py").read_text())
    mnist = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MNIST")
    values = {t.id: ast.literal_eval(n.value) for n in mnist.body if isinstance(n, ast.Assign)
              for t in n.targets if isinstance(t, ast.Name) and t.id in ("mirrors", "resources")}
    assert tuple(values["mirrors"]) == DEFAULT_MIRRORS
    assert [name for name, _md5 in values["resources"]] == [c.name for c in CANONICAL.values()]


def test_a_good_download_is_byte_identical_and_shows_progress(mnist_mirror, tmp_path):
    dest = tmp_path / "new" / "mnist"  # folders made as needed
    out = io.StringIO()
    saved = fetch_missing(dest, list(CANONICAL), [mnist_mirror.url("good")], LineProgress(out))
    assert saved == [c.name for c in CANONICAL.values()]
    assert listing(dest) == listing(mnist_mirror.folder)  # the four files, byte for byte, and nothing else
    assert check_dir(dest)["train_images"] == 60000
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and all("sha256 verified" in line for line in lines), lines
    assert f"downloaded {CANONICAL['train_images'].name} (9.6 MB) from {mnist_mirror.url('good')}" in lines[0]


def test_only_the_missing_file_is_fetched_with_a_bar_on_a_terminal_and_nothing_else_is_touched(mnist_mirror,
                                                                                                tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    for c in CANONICAL.values():
        if c.name != LABELS:
            shutil.copyfile(mnist_mirror.folder / c.name, dest / c.name)
    (dest / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    screen = io.StringIO()
    term = Console(file=screen, force_terminal=True, width=100)
    counts = ensure_mnist(dest, [mnist_mirror.url("good")], term)
    assert counts == {"train_images": 60000, "train_labels": 60000, "test_images": 10000, "test_labels": 10000}
    assert mnist_mirror.requests[-1] == f"/good/{LABELS}"
    assert (dest / LABELS).read_bytes() == (mnist_mirror.folder / LABELS).read_bytes()
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir() if p.name != LABELS} == before
    assert f"downloaded {LABELS} (4.5 kB)" in screen.getvalue()
    screen.truncate(0)
    ensure_mnist(dest, [refused_url()], term)  # whole: no mirror asked
    assert screen.getvalue() == ""


@pytest.mark.parametrize("bad, why", [
    ("corrupt", "checksum mismatch"),
    ("garbled", "corrupt"),
    ("truncated", "short read"),
    ("cut", "truncated"),
    ("missing", "HTTP 404"),
])
def test_a_bad_first_mirror_is_passed_over_for_the_next(mnist_mirror, tmp_path, bad, why):
    out = io.StringIO()
    fetch_missing(tmp_path, ["test_labels"], [mnist_mirror.url(bad), mnist_mirror.url("good")], LineProgress(out))
    assert listing(tmp_path) == {LABELS: (mnist_mirror.folder / LABELS).read_bytes()}  # no .part left
    first, second = out.getvalue().splitlines()
    assert mnist_mirror.url(bad) in first and why in first and "used the next mirror" in first
    assert "downloaded" in second and mnist_mirror.url("good") in second


def test_when_every_mirror_fails_one_line_says_why_and_nothing_is_left(mnist_mirror, tmp_path):
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    kinds = ["corrupt", "truncated", "garbled", "missing"]
    with pytest.raises(DataError) as err:
        fetch_missing(dest, ["test_labels"], [mnist_mirror.url(k) for k in kinds], LineProgress(io.StringIO()))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{LABELS}: no mirror gave the canonical file")
    assert all(mnist_mirror.url(k) in message for k in kinds) and "mnist-launch data download" in message
    assert listing(dest) == {"notes.txt": b"mine"}  # no .part, no half-written file, the rest untouched


def test_a_file_that_inflates_past_its_size_is_stopped_there(mnist_mirror, tmp_path):
    """The train images where the labels should be: refused at the labels' 10,008 bytes, not after 47 MB."""
    with pytest.raises(DataError, match="corrupt: more than the 10,008 bytes"):
        fetch_missing(tmp_path, ["test_labels"], [mnist_mirror.url("oversized")], LineProgress(io.StringIO()))
    assert list(tmp_path.iterdir()) == []


def test_without_network_the_one_line_names_the_folder_and_how_to_get_the_files(tmp_path):
    dest = tmp_path / "nowhere" / "mnist"
    out = io.StringIO()
    with pytest.raises(DataError) as err:
        ensure_mnist(dest, [refused_url(), refused_url()], Console(file=out))
    message = str(err.value)
    assert "\n" not in message and message.startswith("MNIST files missing (train-images-idx3-ubyte.gz")
    assert f"looked in {dest}, {dest}/MNIST/raw" in message and "no mirror reachable" in message
    assert "Connection refused" in message and "mnist-launch data download --data-dir" in message
    assert out.getvalue() == ""  # the error line alone
    assert not (tmp_path / "nowhere").exists()  # the folders it made for the download are gone again


def test_the_mirrors_come_from_the_config_then_the_environment_then_torchvision(tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_LAUNCH_DATA_MIRRORS")
    assert mirrors_for(None) == list(DEFAULT_MIRRORS)
    monkeypatch.setenv("MNIST_LAUNCH_DATA_MIRRORS", "http://127.0.0.1:8000/a/, https://example.org/mnist")
    assert mirrors_for(None) == ["http://127.0.0.1:8000/a/", "https://example.org/mnist"]
    cfg = load_config("configs/model3.yaml", ["data.mirrors=[http://127.0.0.1:9/]"])
    assert mirrors_for(cfg) == ["http://127.0.0.1:9/"]
    monkeypatch.setenv("MNIST_LAUNCH_DATA_MIRRORS", "ftp://example.org/")
    with pytest.raises(ConfigError, match="MNIST_LAUNCH_DATA_MIRRORS: mirror 'ftp://example.org/' is not an http"):
        mirrors_for(None)
    with pytest.raises(ConfigError, match="data.mirrors"):
        load_config("configs/model3.yaml", ["data.mirrors=[file:///etc/]"])


def test_a_cloud_run_fetches_missing_data_on_this_machine_before_the_cluster_step(mnist_mirror, tmp_path,
                                                                                   monkeypatch):
    """The laptop ships the folder to the instance (infra/datasync.py), so it makes the folder whole first: the
    cluster step (stopped here: no AWS in a unit test) is reached with the four files in place."""
    from launcher.targets.ec2 import CloudFlags, EC2Target

    target = EC2Target(CloudFlags(), Console(file=io.StringIO()))
    (tmp_path / "data").mkdir()
    for c in CANONICAL.values():  # one file missing: the step is what is checked here, not the transfer again
        if c.name != LABELS:
            shutil.copyfile(mnist_mirror.folder / c.name, tmp_path / "data" / c.name)
    reached = []

    def cluster_step(cfg, data_uri):
        reached.append(sorted(p.name for p in (tmp_path / "data").iterdir()))
        raise ConfigError("stop here")

    monkeypatch.setattr(target, "_cluster", cluster_step)
    cfg = load_config("configs/model3.yaml", [f"data.mirrors=[{mnist_mirror.url('good')}]"])
    with pytest.raises(ConfigError, match="stop here"):
        target.prepare("r", cfg, str(tmp_path / "data"), restart=False)
    assert reached == [sorted(c.name for c in CANONICAL.values())]
    assert mnist_mirror.requests[-1] == f"/good/{LABELS}"
