"""Workdir sync against LocalHost and a real OpenSSH sshd: changes, deletions, ignores, modes, links, names."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from core.errors import LaunchError, SyncError
from infra.host import LocalHost
from infra.manifest import ALWAYS_IGNORED, compile_rules, delete, is_ignored
from infra.sync import _MAX_ARG_BYTES, SyncReport, _batches, plan_sync, sync_workdir


class CountingHost:
    """Delegates to a real host and counts tar channels, so 'nothing sent' is observable."""

    def __init__(self, host) -> None:
        self.host, self.name, self.tars = host, host.name, 0

    def run(self, argv, cwd=None, timeout=None):
        return self.host.run(argv, cwd=cwd, timeout=timeout)

    def put_tar(self, stream, dest) -> None:
        self.tars += 1
        self.host.put_tar(stream, dest)


@pytest.fixture
def host(any_host):
    return CountingHost(any_host)


def write(root: Path, rel: str, text: str = "", mode: int = 0o644) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text or f"content of {rel}\n")
    os.chmod(p, mode)
    return p


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Everything under root, independently of the code under test; symlinks are never followed."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel.split("/")[0] in skip:
                continue
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", full.read_bytes(), bool(st.st_mode & stat.S_IXUSR))
    return out


@pytest.fixture
def project(tmp_path) -> Path:
    src = tmp_path / "src"
    write(src, "train.py", "print('hi')\n")
    write(src, "scripts/run.sh", "#!/bin/sh\necho run\n", mode=0o755)
    write(src, "pkg/sub/deep/mod.py")
    write(src, "with space/file name.txt")
    write(src, "données/ünïcødé ✓.txt", "non-ascii ✓\n")
    (src / "empty dir").mkdir()
    os.symlink("train.py", src / "link-to-train")
    os.symlink("pkg/sub", src / "link-to-dir")
    # links that point outside the tree travel as links; what they point to never does
    outside = tmp_path / "outside"
    write(outside, "secret.txt", "not for the host\n")
    os.symlink(str(outside), src / "ext")
    os.symlink("../outside/secret.txt", src / "rel-ext")
    # ignored: built-in rules, the root .gitignore and .mnist-launch-ignore (with a negation)
    write(src, ".gitignore", "# build output\n/build/\n*.log\n")
    write(src, ".mnist-launch-ignore", "*.env\n!keep.env\n")
    for rel in [".git/config", "pkg/__pycache__/mod.cpython-311.pyc", "stray.pyc", "runs/r1/events.jsonl",
                "build/out.bin", "logs/a.log", "secret.env"]:
        write(src, rel)
    write(src, "pkg/build/kept.txt")  # /build/ is anchored: a nested build/ is not ignored
    write(src, "keep.env")
    return src


IGNORED = [".git", "pkg/__pycache__", "stray.pyc", "runs", "build", "logs/a.log", "secret.env"]


def expected(src: Path) -> dict[str, tuple]:
    snap = snapshot(src)
    return {rel: v for rel, v in snap.items() if not any(rel == i or rel.startswith(i + "/") for i in IGNORED)}


def test_first_sync_mirrors_the_tree_and_a_resync_sends_nothing(host, project, tmp_path):
    dest = tmp_path / "dest"
    report = sync_workdir(host, project, str(dest))
    assert snapshot(dest) == expected(project)
    assert (dest / "ext").is_symlink() and not (dest / "secret.txt").exists()
    assert os.readlink(dest / "ext") == str(tmp_path / "outside")
    assert os.access(dest / "scripts/run.sh", os.X_OK) and not os.access(dest / "train.py", os.X_OK)
    files = [rel for rel, v in expected(project).items() if v[0] != "dir"]
    assert (report.files_sent, report.files_total, report.files_deleted, host.tars) == (len(files), len(files), 0, 1)
    assert report.bytes_sent == sum(len(v[1]) for v in expected(project).values() if v[0] == "file")

    again = sync_workdir(host, project, str(dest))
    assert (again.files_sent, again.bytes_sent, again.files_deleted, host.tars) == (0, 0, 0, 1)
    assert again.summary().startswith(f"sync: 0 files sent (0 B), 0 deleted, {len(files)} unchanged in ")


def test_changes_deletions_and_kind_changes_are_mirrored(host, project, tmp_path):
    dest = tmp_path / "dest"
    sync_workdir(host, project, str(dest))
    # outputs made on the host, in ignored places, must survive the mirror
    write(dest, "runs/r9/model.bin", "weights")
    write(dest, "pkg/sub/__pycache__/mod.cpython-311.pyc", "bytecode")

    write(project, "train.py", "print('changed')\n")
    os.chmod(project / "with space/file name.txt", 0o755)  # only the executable bit changes
    (project / "données/ünïcødé ✓.txt").unlink()
    (project / "données").rmdir()  # emptied directory goes too
    (project / "link-to-train").unlink()
    os.symlink("scripts/run.sh", project / "link-to-train")  # retargeted link
    (project / "empty dir").rmdir()
    write(project, "empty dir", "now a file\n")  # directory -> file
    (project / "link-to-dir").unlink()
    write(project, "link-to-dir/real.txt")  # symlink -> directory: must not write through the old link
    write(project, "new/nested/file.py")
    report = sync_workdir(host, project, str(dest))

    assert snapshot(dest, skip=("runs",)) == {**expected(project), "pkg/sub/__pycache__": ("dir",),
                                              "pkg/sub/__pycache__/mod.cpython-311.pyc": ("file", b"bytecode", False)}
    assert (dest / "runs/r9/model.bin").read_text() == "weights"
    assert not (project / "pkg/sub/real.txt").exists()
    assert report.files_sent == 6  # train.py, file name.txt, link-to-train, empty dir, real.txt, file.py
    assert report.files_deleted == 1  # ünïcødé ✓.txt (replaced entries are not deletions)
    assert host.tars == 2


def test_a_deleted_directory_holding_ignored_host_files_keeps_only_those(host, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write(src, "old/a.py")
    write(src, "main.py")
    sync_workdir(host, src, str(dest))
    write(dest, "old/__pycache__/a.cpython-311.pyc", "bytecode")  # made by running the code there
    (src / "old/a.py").unlink()
    (src / "old").rmdir()
    report = sync_workdir(host, src, str(dest))
    assert not (dest / "old/a.py").exists() and (dest / "old/__pycache__/a.cpython-311.pyc").exists()
    assert report.files_deleted == 1
    assert sync_workdir(host, src, str(dest)).files_deleted == 0  # the kept directory is not a new deletion


def test_delete_refuses_paths_outside_the_root(tmp_path):
    write(tmp_path, "victim.txt")
    os.symlink(str(tmp_path), tmp_path / "root-link")
    (tmp_path / "root").mkdir()
    os.symlink(str(tmp_path), tmp_path / "root" / "up")
    for rel in ["../victim.txt", "/etc/hostname", "up/victim.txt", ""]:
        with pytest.raises(ValueError, match="refusing to delete"):
            delete(str(tmp_path / "root"), [rel])
    assert (tmp_path / "victim.txt").exists()
    assert delete(str(tmp_path / "root"), ["up"]) == ["up"]  # the link itself, not what it points to
    assert (tmp_path / "victim.txt").exists()


def test_a_thousand_files_with_ten_changed_sends_exactly_ten(host, tmp_path):
    src, dest = tmp_path / "big", tmp_path / "dest"
    for i in range(1000):
        write(src, f"d{i % 10}/f{i:04d}.txt", f"file {i}\n" * 3)
    first = sync_workdir(host, src, str(dest))
    assert (first.files_sent, first.files_total) == (1000, 1000)
    changed = [f"d{i % 10}/f{i:04d}.txt" for i in range(0, 1000, 100)]
    for rel in changed:
        write(src, rel, "changed!\n")
    report = sync_workdir(host, src, str(dest))
    assert (report.files_sent, report.bytes_sent, report.files_deleted) == (10, 10 * len("changed!\n"), 0)
    assert host.tars == 2
    assert snapshot(dest) == snapshot(src)
    assert "sync: 10 files sent (90 B), 0 deleted, 990 unchanged in" in report.summary()


def test_host_without_the_python_raises_a_sync_error(host, project, tmp_path):
    with pytest.raises(SyncError, match=r"python3\.99 not found on .* — install Python 3 there"):
        sync_workdir(host, project, str(tmp_path / "dest"), python="python3.99")
    assert issubclass(SyncError, LaunchError)


def test_destination_that_is_a_file_raises_a_sync_error(host, project, tmp_path):
    dest = write(tmp_path, "dest", "i am a file")
    with pytest.raises(SyncError, match=r"listing .*dest failed \(NotADirectoryError.*\) — make it a directory"):
        sync_workdir(host, project, str(dest))


def test_missing_local_root_raises_a_sync_error(tmp_path):
    with pytest.raises(SyncError, match="is not a directory — run from the project folder"):
        sync_workdir(LocalHost(), tmp_path / "nope", str(tmp_path / "dest"))


@pytest.mark.parametrize("rel,is_dir,ignored", [
    ("a/__pycache__", True, True), ("x.pyc", False, True), ("runs", True, True), ("sub/runs", True, True),
    ("runs", False, False),  # runs/ names directories only
    ("build", True, True), ("sub/build", True, False),  # /build/ is anchored
    ("a/b.log", False, True), ("keep.log", False, False),  # negation re-includes
    ("docs/x/y/z.md", False, True), ("docs/z.md", False, True), ("z.md", False, False),
    ("data7", False, True), ("datax", False, False), ("my file.tmp", False, True),
])
def test_ignore_rules_follow_gitignore(rel, is_dir, ignored):
    rules = compile_rules(ALWAYS_IGNORED + ["/build/", "*.log", "!keep.log", "docs/**/*.md", "data[0-9]",
                                            "my\\ file.*"])
    assert is_ignored(rules, rel, is_dir) is ignored


def test_plan_deletes_stale_and_kind_changed_entries_first():
    f = {"type": "file", "sha256": "a", "size": 1, "exec": False}
    local = {"a": f, "d": {"type": "dir"}, "d/x": f, "l": {"type": "link", "target": "b"}}
    remote = {"a": {**f, "exec": True}, "d": {"type": "link", "target": "x"}, "l": {"type": "link", "target": "a"},
              "old": {"type": "dir"}, "old/y": f}
    plan = plan_sync(local, remote)
    assert plan.send == ["a", "d", "d/x", "l"]
    assert sorted(plan.delete) == ["d", "l", "old", "old/y"]


def test_summary_reads_like_a_sentence():
    assert SyncReport(10, 12345, 2, 1000, 0.214).summary() == (
        "sync: 10 files sent (12.3 kB), 2 deleted, 990 unchanged in 0.21s")


def test_deletions_are_batched_below_the_argument_size_limit():
    paths = [f"dir/{i:05d}/" + "x" * 200 for i in range(2000)]  # ~430 kB of JSON: one argv string could not hold it
    batches = _batches(paths)
    assert len(batches) > 1 and [p for b in batches for p in b] == paths
    assert all(len(json.dumps(b)) <= _MAX_ARG_BYTES for b in batches)
