"""Workdir sync over a real OpenSSH sshd on 127.0.0.1: first sync, unchanged re-sync, 10 of N changed.

Starts sshd the way the tests do (tests/support/sshd_fixture.py: generated keys, a free port), builds a
tree of N small files in nested folders, and prints a markdown table of seconds and what was sent.

    python bench/sync_bench.py [--files 1000] [--file-bytes 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.ssh import Endpoint, SSHHost  # noqa: E402
from infra.sync import SyncReport, sync_workdir  # noqa: E402
from tests.support.sshd_fixture import start_sshd, stop_sshd  # noqa: E402


def make_tree(root: Path, files: int, size: int) -> list[Path]:
    paths = []
    for i in range(files):
        # 10 top-level folders of 10 subfolders: a project-like depth, not one flat directory
        p = root / f"pkg{i % 10}" / f"sub{i // 10 % 10}" / f"file_{i:05d}.py"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size // 2).hex().encode()[:size])
        paths.append(p)
    return paths


def exec_floor(host: SSHHost, runs: int = 3) -> float:
    """Median seconds of one `true` over SSH: the per-command cost no sync can go below
    (the login shell's startup files run on every command)."""
    times = []
    for _ in range(runs):
        t = time.monotonic()
        host.run(["true"])
        times.append(time.monotonic() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--file-bytes", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each scenario; the median is reported")
    args = ap.parse_args()

    rows: dict[str, list[SyncReport]] = {"first sync": [], "unchanged re-sync": [], "10 changed": []}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_sshd(Path(tmp) / "sshd")
        try:
            endpoint = Endpoint(server.user, server.host, server.port)
            with SSHHost(endpoint, server.client_key, known_hosts=Path(tmp) / "known_hosts") as host:
                host.run(["true"])  # connect (key exchange) outside the timings
                floor = exec_floor(host)
                src = Path(tmp) / "src"
                paths = make_tree(src, args.files, args.file_bytes)
                for r in range(args.repeat):
                    dest = str(Path(tmp) / f"dest{r}")
                    rows["first sync"].append(sync_workdir(host, src, dest))
                    rows["unchanged re-sync"].append(sync_workdir(host, src, dest))
                    for p in paths[r::max(1, len(paths) // 10)][:10]:
                        p.write_bytes(p.read_bytes()[::-1])  # same size, new content
                    rows["10 changed"].append(sync_workdir(host, src, dest))
        finally:
            stop_sshd(server)

    print(f"{args.files} files of {args.file_bytes} B, sshd on 127.0.0.1, median of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| scenario | seconds | files sent | bytes sent | files total |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, reports in rows.items():
        last = reports[-1]
        secs = statistics.median(r.seconds for r in reports)
        print(f"| {name} | {secs:.3f} | {last.files_sent} | {last.bytes_sent:,} | {last.files_total} |")
    print(f"| (floor: one `true` over SSH) | {floor:.3f} | | | |")


if __name__ == "__main__":
    main()
