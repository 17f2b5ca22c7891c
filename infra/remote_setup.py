"""The Python environment a run uses on a host: a venv over the image's own torch, built only when
its inputs change.

The venv is made with ``--system-site-packages`` so the image's CUDA build of torch (gigabytes,
matched to its driver) is reused, and pip adds only what the image lacks. Its inputs (the
interpreter, the project's dependency list, this module's recipe version) are hashed; the hash is
written into the venv only after a successful install, so a second run with the same inputs costs
one small command, and a failed or interrupted install is redone next time. The project itself
is not installed into the venv: runs put the synced code first on ``PYTHONPATH``, so a code
change never needs a setup.

    report = ensure_env(host, "~/mnist-launch/venv"); python = report.python
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

from infra.host import Host
from launcher.errors import SetupError

RECIPE_VERSION = 1  # bump when the way the venv is built changes: every host rebuilds once
STAMP = ".mnist-launch-setup"
# what the image's PyTorch environment is called on the AWS Deep Learning AMIs, most specific first
DEFAULT_PYTHONS = ("/opt/pytorch/bin/python3", "/opt/conda/envs/pytorch/bin/python3", "python3")


@dataclass
class SetupReport:
    python: str  # the venv's interpreter, to run the agent and the trainer with
    skipped: bool  # inputs unchanged: nothing was installed
    seconds: float

    def summary(self) -> str:
        return (f"setup: environment unchanged ({self.seconds:.2f}s)" if self.skipped
                else f"setup: environment built in {self.seconds:.1f}s")


def project_requirements() -> list[str]:
    """The project's runtime dependencies, as installed here (extras such as [test] left out)."""
    reqs = metadata.requires("mnist-launch") or []
    return sorted(r for r in reqs if "extra ==" not in r)


def inputs_hash(base_python: str, requirements: list[str]) -> str:
    blob = json.dumps({"python": base_python, "requirements": requirements, "recipe": RECIPE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _script(base_python: Optional[str], venv: str, requirements: list[str], digest: str) -> str:
    """One shell script: pick the interpreter, compare the stamp, build if needed, stamp last."""
    v = shlex.quote(venv) if not venv.startswith("~/") else '"$HOME"/' + shlex.quote(venv[2:])
    candidates = [base_python] if base_python else list(DEFAULT_PYTHONS)
    pick = " ".join(shlex.quote(c) for c in candidates)
    reqs = " ".join(shlex.quote(r) for r in requirements)
    return f"""set -u
base=""
for c in {pick}; do if command -v "$c" >/dev/null 2>&1; then base="$c"; break; fi; done
[ -n "$base" ] || {{ echo no interpreter found: tried {pick} >&2; exit 3; }}
want="{digest}:$(command -v "$base")"
if [ "$(cat {v}/{STAMP} 2>/dev/null)" = "$want" ] && [ -x {v}/bin/python ]; then echo "skipped"; exit 0; fi
rm -rf {v}
"$base" -m venv --system-site-packages {v} || exit 4
{v}/bin/python -m pip install --disable-pip-version-check -q {reqs} || exit 5
printf '%s' "$want" > {v}/{STAMP}
echo "built"
"""


def _failing_lines(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "error" in ln.lower() or "not found" in ln.lower()]
    return "\n".join((hits or lines)[-n:])


def ensure_env(host: Host, venv: str, base_python: Optional[str] = None, mode: str = "auto",
               requirements: Optional[list[str]] = None) -> SetupReport:
    """Make sure ``venv`` on ``host`` is built from the current inputs; see the module doc.

    ``mode='skip'`` trusts the host as it is: the base interpreter runs the job directly."""
    start = time.monotonic()
    if mode == "skip":
        return SetupReport(python=base_python or "python3", skipped=True, seconds=0.0)
    requirements = project_requirements() if requirements is None else requirements
    digest = inputs_hash(base_python or "default", requirements)
    res = host.run(["sh", "-c", _script(base_python, venv, requirements, digest)], timeout=1800)
    if res.returncode == 3:
        raise SetupError(f"{host.name}: {res.stderr.strip()} — set launch.python to the interpreter with torch")
    if res.returncode != 0:
        step = {4: "creating the venv", 5: "pip install"}.get(res.returncode, "setup")
        detail = _failing_lines(res.stdout + "\n" + res.stderr)
        raise SetupError(f"{host.name}: {step} failed in {venv} — fix the cause below, or set launch.setup: skip "
                         f"to use the image's environment as it is\n{detail}")
    python = (venv.rstrip("/") + "/bin/python")
    return SetupReport(python=python, skipped=res.stdout.strip().endswith("skipped"),
                       seconds=time.monotonic() - start)


__all__ = ["DEFAULT_PYTHONS", "SetupError", "SetupReport", "ensure_env", "inputs_hash", "project_requirements"]
