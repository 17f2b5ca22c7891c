"""The run's environment on a fresh host whose image already has torch: setup seconds and what it
installed (tests/support/strict_instance.py: a non-root login user, the image's torch in a venv of its own,
over a real OpenSSH sshd on 127.0.0.1).

Each repeat starts from an empty venv folder (a fresh host), runs ``ensure_env`` with the project's
requirements, then once more (the stamp: every later run). It reports the seconds, the bytes the venv
holds (what setup downloaded or copied: pip writes nothing else), what pip installed, and whether
any torch or CUDA (nvidia-*) package landed in it. ``--missing N`` adds N small packages the image
lacks (wheels made here, offered to pip offline), so pip has something to install.

    python bench/setup_bench.py [--repeat 3] [--missing 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.remote_setup import ensure_env, project_requirements  # noqa: E402
from infra.ssh import Endpoint, SSHHost  # noqa: E402
from tests.support.sshd_fixture import stop_sshd  # noqa: E402
from tests.support.strict_instance import login_user, probe_wheel, strict_instance  # noqa: E402


def venv_bytes(venv: Path) -> int:
    return sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--missing", type=int, default=1, help="small requirements hidden from the image (0: none)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="setup-bench-"))
    user = login_user()
    wheels = user.home / f"setup-bench-wheels-{os.getpid()}"  # the packages the image lacks: small, offline
    extra = [f"mnist-launch-probe{i}==1.0" for i in range(args.missing)]
    wheels.mkdir(parents=True, exist_ok=True)
    for i in range(args.missing):
        probe_wheel(wheels, name=f"mnist_launch_probe{i}")
    subprocess.run(["chmod", "-R", "a+rX", str(wheels)], check=True)
    inst = strict_instance(tmp / "sshd", booting=False, extra_config=(f"SetEnv PIP_FIND_LINKS={wheels}",))
    reqs = project_requirements() + extra
    print(f"instance: user {inst.user} ({'made for the bench' if user.created else 'the current one'}), "
          f"image python {inst.python}; requirements: the project's + {extra or 'nothing'}", flush=True)
    rows = []
    try:
        endpoint = Endpoint(inst.user, inst.host, inst.port)
        with SSHHost(endpoint, inst.client_key, known_hosts=tmp / "known_hosts") as host:
            for i in range(args.repeat):
                venv = inst.remote(f"setup-bench-{os.getpid()}") / f"venv-{i}"
                t = time.monotonic()
                first = ensure_env(host, str(venv), base_python=inst.python, requirements=reqs)
                cold = time.monotonic() - t
                t = time.monotonic()
                again = ensure_env(host, str(venv), base_python=inst.python, requirements=reqs)
                warm = time.monotonic() - t
                assert not first.skipped and again.skipped
                [site] = venv.glob("lib/python3*/site-packages")
                installed = sorted(p.name[:-len(".dist-info")] for p in site.glob("*.dist-info"))
                heavy = [p.name for p in site.iterdir() if p.name.startswith(("torch", "nvidia", "triton"))]
                size = venv_bytes(venv)
                rows.append((cold, warm, size, installed, heavy))
                print(f"repeat {i + 1}: fresh {cold:.2f}s · stamp {warm:.2f}s · venv {size / 1e6:.2f} MB · "
                      f"installed {installed or 'nothing'} · torch/CUDA in venv: {heavy or 'none'}", flush=True)
                shutil.rmtree(venv)
    finally:
        stop_sshd(inst)
        shutil.rmtree(wheels, ignore_errors=True)
    print(f"\nmachine: {platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
          f"{time.strftime('%Y-%m-%d', time.gmtime())}")
    print("\n| measure | median | min | max |\n| --- | ---: | ---: | ---: |")
    for k, name, fmt in ((0, "setup on a fresh host (s)", "{:.2f}"), (1, "setup again, stamp unchanged (s)", "{:.2f}"),
                         (2, "venv size = bytes installed (MB)", "{:.2f}")):
        xs = [r[k] / (1e6 if k == 2 else 1) for r in rows]
        print(f"| {name} | {fmt.format(statistics.median(xs))} | {fmt.format(min(xs))} | {fmt.format(max(xs))} |")
    print(f"| torch/CUDA packages in the venv | {sum(len(r[4]) for r in rows)} | | |")


if __name__ == "__main__":
    main()
