"""The Python environment a run uses on a host: a venv over the image's own torch, built only when
its inputs change.

The image's PyTorch may live anywhere: the system interpreter, a conda env, or a venv of its own
(``/opt/pytorch`` on the Deep Learning AMIs). A venv made with ``--system-site-packages`` would see
only the *underlying* interpreter's packages, not another venv's, so instead the image environment
is asked for its own package folders (every ``sys.path`` entry outside the standard library), and
our venv gets a ``.pth`` file listing them: it sees exactly what the image's environment sees,
behind its own site-packages. pip then finds the image's torch, torchvision and CUDA wheels
installed and adds only what is missing, into our venv; nothing of the image is copied or changed.
pip's own resolver decides what is missing (markers, specifiers, extras), not a copy of its rules.

Its inputs (the interpreter, the project's dependency list, this module's recipe version) are
hashed; the hash is written into the venv only after a successful install, so a second run with
the same inputs costs one small command, and a failed or interrupted install is redone next time.
The project itself is not installed into the venv: runs put the synced code first on
``PYTHONPATH``, so a code change never needs a setup. On a host whose ``nvidia-smi -L`` lists
GPUs, the environment's torch must see them, or setup stops in one line before a run starts.

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

from core.errors import SetupError
from infra.host import Host

RECIPE_VERSION = 2  # bump when the way the venv is built changes: every host rebuilds once
STAMP = ".mnist-launch-setup"
IMAGE_PTH = "mnist-launch-image.pth"  # in the venv's site-packages: the image environment's package folders
# what the image's PyTorch environment is called on the AWS Deep Learning AMIs, most specific first
DEFAULT_PYTHONS = ("/opt/pytorch/bin/python3", "/opt/conda/envs/pytorch/bin/python3", "python3")

# Run by the image's interpreter: its package folders (site-packages of its venv or conda env, the
# system's dist-packages, folders added by .pth files), one a line, the standard library left out.
_SITE_DIRS = r"""
import os, sys, sysconfig
std = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
seen = []
for p in sys.path:
    if not p or not os.path.isdir(p):
        continue
    real = os.path.realpath(p)
    if any(real == s or real.startswith(s + os.sep) for s in std) and "-packages" not in real:
        continue
    if p not in seen and "\n" not in p:
        seen.append(p)
print("\n".join(seen))
"""

# Run by the venv's interpreter before pip: exit 0 when every requirement and, recursively, each of
# their dependencies is installed at a matching version, judged by the packaging library pip itself
# vendors, so the answer is pip's; anything else (missing, mismatched, no pip) lets pip decide.
_SATISFIED = r"""
import re, sys
from importlib import metadata
try:
    from pip._vendor.packaging.requirements import Requirement
except ImportError:
    sys.exit(1)
# a dependency of an extra nobody asked for is never parsed (parsing is most of the cost)
for_extra = re.compile(r";.*\bextra\s*==\s*[\x22\x27]([^\x22\x27]+)[\x22\x27]")
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
todo, seen = [(r, "") for r in sys.argv[1:]], set()
while todo:
    text, extra = todo.pop()
    if (text, extra) in seen:
        continue
    seen.add((text, extra))
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": extra}):
        continue
    try:
        dist = metadata.distribution(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(dist.version, prereleases=True):
        sys.exit(1)
    asked = {norm(e) for e in req.extras}
    for r in dist.requires or []:
        m = for_extra.search(r)
        if m is None or norm(m.group(1)) in asked:
            todo.append((r, m.group(1) if m else ""))
"""

# Run by the venv's interpreter on a host with GPUs: "<count> <torch version>".
_GPU_PROBE = "import torch; print(torch.cuda.device_count(), torch.__version__)"


@dataclass
class SetupReport:
    python: str  # the venv's interpreter, to run the agent and the trainer with
    skipped: bool  # inputs unchanged: nothing was installed
    seconds: float
    gpus: int = 0  # GPUs that nvidia-smi lists on the host (setup refuses when its torch sees none)

    def summary(self) -> str:
        gpus = f", torch sees {self.gpus} GPU{'s' if self.gpus != 1 else ''}" if self.gpus else ""
        return (f"setup: environment unchanged ({self.seconds:.2f}s{gpus})" if self.skipped
                else f"setup: environment built in {self.seconds:.1f}s{gpus}")


def project_requirements() -> list[str]:
    """The project's runtime dependencies, as installed here (extras such as [test] left out)."""
    reqs = metadata.requires("mnist-launch") or []
    return sorted(r for r in reqs if "extra ==" not in r)


def inputs_hash(base_python: str, requirements: list[str]) -> str:
    blob = json.dumps({"python": base_python, "requirements": requirements, "recipe": RECIPE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _q(path: str) -> str:
    """Quote a host path for sh, keeping a leading ~/ expandable."""
    return path if not path.startswith("~/") else '"$HOME"/' + shlex.quote(path[2:])


def _script(base_python: Optional[str], venv: str, requirements: list[str], digest: str) -> str:
    """One shell script: pick the interpreter, compare the stamp, build if needed, stamp last, check the GPUs.

    Exit codes: 3 no interpreter, 4 venv, 5 pip, 6 probing the image's environment, 7 no pip, 8 GPUs unseen."""
    v = _q(venv) if venv.startswith("~/") else shlex.quote(venv)
    candidates = [base_python] if base_python else list(DEFAULT_PYTHONS)
    pick = " ".join(shlex.quote(c) for c in candidates)
    reqs = " ".join(shlex.quote(r) for r in requirements)
    pip = f"{v}/bin/python -m pip --disable-pip-version-check"
    return f"""set -u
base=""
for c in {pick}; do if command -v "$c" >/dev/null 2>&1; then base="$c"; break; fi; done
[ -n "$base" ] || {{ echo {shlex.quote("no interpreter found: tried " + " ".join(candidates))} >&2; exit 3; }}
want="{digest}:$(command -v "$base")"
if [ "$(cat {v}/{STAMP} 2>/dev/null)" = "$want" ] && [ -x {v}/bin/python ]; then
  echo "skipped"
else
  rm -rf {v}
  sites=$("$base" -E -c {shlex.quote(_SITE_DIRS)}) || {{ echo "$base could not list its package folders" >&2; exit 6; }}
  "$base" -m venv --without-pip {v} || exit 4
  purelib=$({v}/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || exit 4
  printf '%s\\n' "$sites" > "$purelib/{IMAGE_PTH}" || exit 4
  {pip} --version >/dev/null 2>&1 || {v}/bin/python -m ensurepip -q >/dev/null || {{
    echo "neither $base nor its environment has pip, and ensurepip is missing" >&2; exit 7; }}
  {v}/bin/python -c {shlex.quote(_SATISFIED)} {reqs} 2>/dev/null || {pip} install -q {reqs} || exit 5
  printf '%s' "$want" > {v}/{STAMP}
  echo "built"
fi
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU '); fi
echo "gpus $gpus"
if [ "$gpus" -gt 0 ]; then
  seen=$({v}/bin/python -c {shlex.quote(_GPU_PROBE)} 2>&1 | tail -n 1)
  echo "torch $seen"
  case "$seen" in [1-9]*) ;; *) exit 8;; esac
fi
"""


def _failing_lines(text: str, n: int = 12) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    hits = [ln for ln in lines if "error" in ln.lower() or "not found" in ln.lower()]
    return "\n".join((hits or lines)[-n:])


def _last(prefix: str, text: str) -> str:
    found = [ln[len(prefix):].strip() for ln in text.splitlines() if ln.startswith(prefix)]
    return found[-1] if found else ""


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
    python = (venv.rstrip("/") + "/bin/python")
    if res.returncode == 3:
        raise SetupError(f"{host.name}: {res.stderr.strip()} — set launch.python to the interpreter with torch")
    if res.returncode == 8:
        gpus, seen = _last("gpus ", res.stdout), _last("torch ", res.stdout)
        count, _, version = seen.partition(" ")
        what = (f"torch {version} sees {count}" if count.isdigit()
                else f"its torch does not load ({seen[:160] or 'no message'})")
        raise SetupError(f"{host.name}: nvidia-smi lists {gpus} GPU(s) but the run's environment {python} {what} — "
                         "point launch.python at the image's CUDA build of PyTorch (or fix the driver)")
    if res.returncode != 0:
        step = {4: "creating the venv", 5: "pip install", 6: "listing the image's packages",
                7: "finding pip"}.get(res.returncode, "setup")
        detail = _failing_lines(res.stdout + "\n" + res.stderr)
        raise SetupError(f"{host.name}: {step} failed in {venv} — fix the cause below, or set launch.setup: skip "
                         f"to use the image's environment as it is\n{detail}")
    gpus = _last("gpus ", res.stdout)
    return SetupReport(python=python, skipped="skipped" in res.stdout.split(), seconds=time.monotonic() - start,
                       gpus=int(gpus) if gpus.isdigit() else 0)


__all__ = ["DEFAULT_PYTHONS", "IMAGE_PTH", "SetupError", "SetupReport", "ensure_env", "inputs_hash",
           "project_requirements"]
