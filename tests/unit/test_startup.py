"""The launcher starts without torch: every command but the training itself answers in about a second.

torch and accelerate cost ~4 s of CPU each to import on a 2-core machine; the launcher only needs them
where it trains (the agent and the trainer, in their own processes) and for `models`.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT

LAUNCHER_MODULES = ["launcher.cli", "launcher.cloud_cli", "launcher.orchestrator", "launcher.lifecycle",
                    "launcher.targets.local", "launcher.targets.ec2", "launcher.live", "launcher.compare",
                    "infra.datasync", "infra.agent"]


def test_the_launcher_and_the_agent_import_neither_torch_nor_accelerate():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in LAUNCHER_MODULES)
            + "print(sorted(m for m in ('torch', 'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported at start-up: {out.stdout.strip()}"
