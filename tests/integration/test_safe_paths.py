"""Names that come from elsewhere (S3 keys, a checkpoint manifest, a tar stream, a store folder, the
host's tree) never write outside their destination: crafted objects in a moto bucket (in-process),
crafted files and tars here. Each test checks both the one-line refusal and that nothing outside
(nor, where the check comes first, inside) was written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

import boto3
import pytest

from core.errors import ConfigError, RunError, SyncError
from infra.host import LocalHost
from infra.s3 import S3Store
from infra.safepath import UnsafePathError, check_name, safe_join
from infra.store import LocalStore, latest_stored_checkpoint
from tests.support.aws_helpers import fake_aws_env, moto_bucket

BUCKET = "artifacts"
URI = f"s3://{BUCKET}/team"


# -- the helper ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a/..", "..", "", ".", "a/\nb", "a\x00b",
                                  "\\evil", "C:/x", "./"])
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePathError):
        check_name(name)


@pytest.mark.parametrize("name, parts", [("a", ("a",)), ("a/b.c", ("a", "b.c")), ("./a//b/", ("a", "b")),
                                         ("..a/b..", ("..a", "b.."))])
def test_safe_names_are_split_into_parts(name, parts):
    assert check_name(name) == parts


def test_a_symlink_leading_outside_is_refused_and_one_inside_is_fine(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "inner").mkdir(parents=True)
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "inner")
    (root / "file").symlink_to(outside / "f")
    assert safe_join(root, "in/x") == root / "in" / "x"
    assert safe_join(root, "new/dir/x") == root / "new" / "dir" / "x"
    for bad in ("out/x", "out", "file"):
        with pytest.raises(UnsafePathError, match="symlink to outside"):
            safe_join(root, bad)


# -- results: S3 ----------------------------------------------------------------------------------

@pytest.fixture
def s3(monkeypatch, tmp_path):
    yield from moto_bucket(monkeypatch, tmp_path, BUCKET)


def put(client, run: str, name: str, body: bytes = b"x") -> None:
    client.put_object(Bucket=BUCKET, Key=f"team/runs/{run}/{name}", Body=body)


def files_under(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else []


def test_results_refuses_a_crafted_key_before_writing_anything(s3, tmp_path):
    for i, key in enumerate(["../../../escaped.txt", "a/../../escaped.txt", "/escaped.txt", "checkpoints/\nx",
                             "..\\escaped.txt"]):
        run = f"r{i}"
        put(s3, run, "config.yaml", b"model: model3\n")
        put(s3, run, key, b"owned")
        dest = tmp_path / f"sandbox{i}" / "dest"
        dest.mkdir(parents=True)
        with pytest.raises(RunError, match=r"s3://artifacts/team: refusing to write .* nothing was written outside"):
            S3Store(URI).download(run, dest)
        # not even config.yaml: all keys are checked first
        assert files_under(tmp_path / f"sandbox{i}") == ["dest"], key
    assert not list(tmp_path.rglob("escaped.txt"))


def test_results_refuses_to_write_through_a_symlink_in_the_destination(s3, tmp_path):
    put(s3, "r1", "config.yaml", b"model: model3\n")
    put(s3, "r1", "checkpoints/epoch_001/model.bin", b"weights")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "r1").mkdir(parents=True)
    (dest / "r1" / "checkpoints").symlink_to(outside)  # planted: would send the checkpoint to outside/
    with pytest.raises(RunError, match="symlink to outside"):
        S3Store(URI).download("r1", dest)
    assert files_under(outside) == []


def test_results_with_honest_keys_still_lands_everything(s3, tmp_path):
    for name in ("config.yaml", "checkpoints/epoch_001/model.bin", "a..b/c"):
        put(s3, "r1", name, name.encode())
    s3.put_object(Bucket=BUCKET, Key="team/runs/r1/folder/", Body=b"")  # a console-made folder marker
    out = S3Store(URI).download("r1", tmp_path / "dest")
    assert files_under(out) == ["a..b", "a..b/c", "checkpoints", "checkpoints/epoch_001",
                                "checkpoints/epoch_001/model.bin", "config.yaml"]


def test_a_crafted_run_id_is_refused_by_every_store(s3, tmp_path):
    for run_id in ["../x", "..", "/abs", "-rf", "a/b", "a b", "$(touch M)", ".hidden", ""]:
        with pytest.raises(ConfigError, match="run id .*: use ASCII letters"):
            S3Store(URI).download(run_id, tmp_path / "dest")
        with pytest.raises(ConfigError, match="run id"):
            LocalStore(tmp_path / "store").download(run_id, tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "M").exists()


# -- results: a folder store ------------------------------------------------------------------------

def test_local_results_copy_never_follows_a_symlink_out_of_the_run(tmp_path):
    store = LocalStore(tmp_path / "store")
    run = store.run_dir("r1")
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: model3\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (run / "stolen.txt").symlink_to(secret)  # a link in a shared store folder, to a file of this machine
    (run / "everything").symlink_to(tmp_path)
    out = store.download("r1", tmp_path / "dest")
    assert files_under(out) == ["config.yaml"]
    assert "private" not in "".join(p.read_text() for p in out.rglob("*") if p.is_file())


def test_local_results_refuses_a_destination_symlink_leading_out(tmp_path):
    store = LocalStore(tmp_path / "store")
    (store.run_dir("r1") / "sub").mkdir(parents=True)
    (store.run_dir("r1") / "sub" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest" / "r1").mkdir(parents=True)
    (tmp_path / "dest" / "r1" / "sub").symlink_to(outside)
    with pytest.raises(RunError, match="symlink to outside"):
        store.download("r1", tmp_path / "dest")
    assert files_under(outside) == []


# -- restoring a checkpoint from the store ------------------------------------------------------------

def _upload_checkpoint(store, scratch: Path, run_id: str, folder: str, files: dict[str, bytes],
                       names: dict[str, bytes] | None = None) -> None:
    """A checkpoint as the agent uploads it, with a manifest that may name other files than it holds."""
    scratch.mkdir(parents=True, exist_ok=True)
    for i, (rel, data) in enumerate(files.items()):
        (scratch / str(i)).write_bytes(data)
        store.put_file(run_id, f"checkpoints/{folder}/{rel}", scratch / str(i))
    listed = names if names is not None else files
    manifest = {"epoch": 1, "files": {rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                      for rel, d in listed.items()}}
    (scratch / "manifest").write_text(json.dumps(manifest))
    store.put_file(run_id, f"checkpoints/{folder}/checkpoint.json", scratch / "manifest")


def test_a_manifest_naming_files_outside_the_checkpoint_is_never_restored_from(s3, tmp_path):
    from infra.restore import restore_run

    store = S3Store(URI)
    tmp = tmp_path / "c.yaml"
    tmp.write_text("model: model3\n")
    store.put_file("r1", "config.yaml", tmp)
    # the crafted manifest lists "../../../escaped" with the size of an object stored under that very key
    # (S3 keys may hold ".."): a listing check alone would vouch for it
    evil = {"../../../escaped": b"owned"}
    for rel, data in evil.items():
        s3.put_object(Bucket=BUCKET, Key=f"team/runs/r1/checkpoints/epoch_002/{rel}", Body=data)
    _upload_checkpoint(store, tmp_path / "up", "r1", "epoch_002", {}, names=evil)
    assert latest_stored_checkpoint(store, "r1") is None
    with pytest.raises(RunError, match="no complete checkpoint"):
        restore_run(store, "r1", tmp_path / "fresh" / "runs" / "r1")
    assert not list(tmp_path.rglob("escaped"))

    # an honest older one next to it is still found and restored, inside the run folder only
    _upload_checkpoint(store, tmp_path / "up", "r1", "epoch_001", {"model.bin": b"weights"})
    ckpt = restore_run(store, "r1", tmp_path / "fresh" / "runs" / "r1")
    assert ckpt["name"] == "epoch_001"
    assert (tmp_path / "fresh/runs/r1/checkpoints/epoch_001/model.bin").read_bytes() == b"weights"
    assert not list(tmp_path.rglob("escaped"))


def test_restore_refuses_a_crafted_checkpoint_handed_to_it(s3, tmp_path, monkeypatch):
    """Even a checkpoint record that skipped the store's check is refused before anything is written."""
    import infra.restore as restore

    store = S3Store(URI)
    monkeypatch.setattr(restore, "latest_stored_checkpoint", lambda s, r: {
        "name": "../../..", "epoch": 1, "step": 0, "files": {"x": {"size": 1, "sha256": "0"}}})
    run_dir = tmp_path / "fresh" / "runs" / "r1"
    with pytest.raises(RunError, match="refusing to restore .*'\\.\\.' would leave"):
        restore.restore_run(store, "r1", run_dir)
    assert not (tmp_path / "fresh").exists()


# -- unpacking a tar on a host ---------------------------------------------------------------------------

def _tar(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """(kind, name, data-or-linkname) -> a tar stream; kind: file, dir, sym, hard."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = data
                tar.addfile(info)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("members", [
    [("file", "../escaped", b"owned")],
    [("file", "/tmp/escaped-abs", b"owned")],
    [("sym", "link", "{outside}"), ("file", "link/escaped", b"owned")],  # a symlink, then a file through it
    [("hard", "hard", "{outside}/victim")],  # a hard link to a file outside
])
def test_local_put_tar_refuses_members_landing_outside(tmp_path, members):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("untouched")
    members = [(k, n, d.replace("{outside}", str(outside)) if isinstance(d, str) else d) for k, n, d in members]
    dest = tmp_path / "dest"
    with pytest.raises((UnsafePathError, tarfile.TarError)):
        LocalHost().put_tar(_tar(*members), str(dest))
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "untouched"
    assert not Path("/tmp/escaped-abs").exists() and not (tmp_path / "escaped").exists()


def test_local_put_tar_refuses_to_write_through_a_symlink_already_in_dest(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "pkg").symlink_to(outside)
    with pytest.raises((UnsafePathError, tarfile.TarError)):
        LocalHost().put_tar(_tar(("file", "pkg/mod.py", b"x")), str(dest))
    assert list(outside.iterdir()) == []


def test_local_put_tar_keeps_symlink_members_pointing_anywhere(tmp_path):
    dest = tmp_path / "dest"
    LocalHost().put_tar(_tar(("sym", "dataset", "/data/mnist"), ("file", "a/b.py", b"x")), str(dest))
    assert os.readlink(dest / "dataset") == "/data/mnist"
    assert (dest / "a" / "b.py").read_bytes() == b"x"


# -- the workdir sync and the data folder on a host ---------------------------------------------------

def test_sync_never_writes_through_a_host_symlink_where_a_folder_goes(tmp_path):
    """The host's tree is read by the scan; a symlink where the project has a folder is removed before
    the tar lands, so the unpack never writes through it to wherever it points."""
    from infra.sync import sync_workdir

    project, remote, outside = tmp_path / "project", tmp_path / "remote", tmp_path / "outside"
    (project / "pkg").mkdir(parents=True)
    (project / "pkg" / "mod.py").write_text("x = 1\n")
    outside.mkdir()
    remote.mkdir()
    (remote / "pkg").symlink_to(outside)
    sync_workdir(LocalHost(), project, str(remote), python=sys.executable)
    assert list(outside.iterdir()) == []
    assert (remote / "pkg").is_dir() and not (remote / "pkg").is_symlink()
    assert (remote / "pkg" / "mod.py").read_text() == "x = 1\n"


def test_check_plan_refuses_to_send_below_a_host_entry_that_is_not_a_folder():
    from infra.sync import SyncPlan, check_plan

    with pytest.raises(SyncError, match="refusing to sync pkg/mod.py: on the host pkg is a link"):
        check_plan(SyncPlan(send=["pkg/mod.py"]), {"pkg": {"type": "link", "target": "/etc"}})
    check_plan(SyncPlan(send=["pkg/mod.py"], delete=["pkg"]), {"pkg": {"type": "link", "target": "/etc"}})


def test_ship_mnist_replaces_a_symlink_under_a_data_file_name(tiny_mnist, tmp_path):
    from infra.datasync import local_data, ship_mnist

    small_mnist = tiny_mnist

    remote, outside = tmp_path / "remote", tmp_path / "outside"
    remote.mkdir()
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("untouched")
    name = sorted(local_data(small_mnist))[0]
    (remote / name).symlink_to(victim)
    ship_mnist(LocalHost(), small_mnist, str(remote), python=sys.executable)
    assert victim.read_text() == "untouched"
    assert not (remote / name).is_symlink() and (remote / name).stat().st_size > 0


def test_the_instance_fetch_writes_only_the_four_files_and_never_through_a_symlink(tiny_mnist, tmp_path, monkeypatch):
    """infra/datasync.py's fetch, run by a real Python against moto as a server: crafted keys under the
    data prefix (".." in them, other names) and symlinks planted under the data folder's own names
    leave everything outside that folder untouched."""

    from infra.datasync import fetch_mnist
    from tests.support.aws_helpers import start_moto_server

    fake_aws_env(monkeypatch, tmp_path / "home")
    server, url = start_moto_server()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="data-bucket")
        for f in sorted(tiny_mnist.iterdir()):
            s3.put_object(Bucket="data-bucket", Key=f"mnist/{f.name}", Body=f.read_bytes())
        for key in ("mnist/../../../escaped", "mnist/x/../../../../escaped.gz", "mnist/.s3-etags.json",
                    "mnist/../evil.py"):
            s3.put_object(Bucket="data-bucket", Key=key, Body=b"owned")
        dest, outside = tmp_path / "remote" / "data", tmp_path / "outside"
        dest.mkdir(parents=True)
        outside.mkdir()
        for name in ("victim", "stamps"):
            (outside / name).write_text("untouched")
        (dest / "t10k-labels-idx1-ubyte.gz").symlink_to(outside / "victim")
        (dest / "train-images-idx3-ubyte.gz.part").symlink_to(outside / "victim")
        (dest / ".s3-etags.json").symlink_to(outside / "stamps")
        report = fetch_mnist(LocalHost(), "s3://data-bucket/mnist", str(dest), python=sys.executable)
    finally:
        server.stop()
    assert report.files_sent == 4
    assert sorted(p.read_text() for p in outside.iterdir()) == ["untouched", "untouched"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([".s3-etags.json", *(f.name for f in tiny_mnist.iterdir())])
    assert not any(p.is_symlink() for p in dest.iterdir())
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == (tiny_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes()
    assert not list(tmp_path.rglob("escaped*")) and not list(tmp_path.rglob("evil.py"))
