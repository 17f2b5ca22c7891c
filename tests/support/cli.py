"""One way to drive the CLI in each kind of test.

- :func:`cli` (integration): the real ``mnist-launch`` entry point in a subprocess, as a user runs it,
  with this checkout first on PYTHONPATH.
- :func:`invoke` (in-process): ``launcher.cli``'s app through typer's runner, a ``LaunchError`` shown
  as the entry point shows it (``error: ...`` on stderr, its exit code).

    p = cli("runs", "--store", str(tmp)); assert p.returncode == 0, p.stderr
    out = invoke("status"); assert out.code == 0, out.stderr
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tests.support import ROOT


def entry_point() -> list[str]:
    """argv of the installed ``mnist-launch`` script next to this interpreter (``pip install -e .`` made it)."""
    script = Path(sys.executable).parent / "mnist-launch"
    if not script.is_file():
        found = shutil.which("mnist-launch")
        if found is None:
            raise RuntimeError(f"no mnist-launch entry point next to {sys.executable}: run `pip install -e '.[test]'`")
        script = Path(found)
    return [sys.executable, str(script)]


def cli(*args: str, cwd: Optional[Path] = None, env: Optional[dict] = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would (MNIST_LAUNCH_DEBUG unset unless ``env`` sets it).
    ``timeout`` only stops a hung command: a 2-epoch local run took 435 s on the shared 2-core machine at load 14."""
    base = {k: v for k, v in os.environ.items() if k != "MNIST_LAUNCH_DEBUG"}
    full_env = {**base, "PYTHONPATH": str(ROOT), "COLUMNS": "120", **(env or {})}
    return subprocess.run([*entry_point(), *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Out:
    code: int
    stdout: str
    stderr: str


def invoke(*args: str) -> Out:
    """Run the commands in this process as the entry point does: LaunchError -> `error: ...` on stderr."""
    from typer.testing import CliRunner

    from core.errors import LaunchError
    from launcher.cli import app

    res = CliRunner().invoke(app, list(args))
    if isinstance(res.exception, LaunchError):
        return Out(res.exception.exit_code, res.stdout, res.stderr + f"error: {res.exception}\n")
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return Out(res.exit_code, res.stdout, res.stderr)
