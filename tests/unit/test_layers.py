"""The layers point one way: core < trainer < infra < launcher. A module may import its own layer and
the ones below it, never one above (core imports none of the others; trainer only core; infra core
and trainer). Every import counts: at the top, inside functions, under TYPE_CHECKING, relative ones,
and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("core", "trainer", "infra", "launcher")  # bottom to top
RANK = {name: i for i, name in enumerate(LAYERS)}


def imported_modules(source: str, package: str = "") -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``; ``package`` resolves relative ones."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module")
                   or isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            found.append((node.lineno, node.args[0].value))
    return found


def layer_of(module: str) -> Optional[str]:
    top = module.split(".")[0]
    return top if top in RANK else None


def violations(source: str, module: str) -> list[str]:
    """The imports in ``source`` (the module named ``module``) that reach a layer above its own."""
    own = layer_of(module)
    assert own is not None, module
    package = module if module.endswith(".__init__") else module.rsplit(".", 1)[0]
    out = []
    for line, target in imported_modules(source, package.removesuffix(".__init__")):
        other = layer_of(target)
        if other is not None and RANK[other] > RANK[own]:
            out.append(f"{module}:{line} imports {target} ({own} may import only {', '.join(LAYERS[:RANK[own] + 1])})")
    return out


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def project_modules() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("module, source, bad", [
    ("core.errors", "import launcher.cli\n", True),
    ("core.config.load", "from trainer.models import MODELS\n", True),
    ("core.config.load", "def f():\n    from infra import store\n", True),  # inside a function
    ("trainer.train", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from infra.store import Store\n", True),
    ("trainer.data", "import importlib\nm = importlib.import_module('launcher.errors')\n", True),
    ("infra.agent", "x = __import__('launcher')\n", True),
    ("infra.store", "from ..launcher import cli\n", True),  # relative, resolved from infra
    ("infra.agent", "from core.errors import RunError\nfrom trainer.events import EVENTS_FILE\n", False),
    ("launcher.cli", "import core, trainer, infra.store, launcher.remote\n", False),
    ("core.config.load", "from .training import MODEL_NAMES\nfrom core.errors import ConfigError\n", False),
    ("trainer.train", "import torch\nimport yaml\n", False),
])
def test_the_check_finds_an_import_that_points_up(module, source, bad):
    assert bool(violations(source, module)) is bad


def test_no_layer_imports_one_above_it():
    found = [v for p in project_modules() for v in violations(p.read_text(), module_name(p))]
    assert not found, "\n".join(found)


def test_every_project_module_is_in_a_layer():
    assert project_modules(), "no modules found"
    assert {module_name(p).split(".")[0] for p in project_modules()} == set(LAYERS)


def test_the_autostop_watcher_is_stdlib_only():
    """infra/autostop.py is copied to the instance as one file and run by the system python3."""
    modules = {m.split(".")[0] for _, m in imported_modules((ROOT / "infra" / "autostop.py").read_text())}
    assert modules and modules <= set(sys.stdlib_module_names) | {"__future__"}, modules - set(sys.stdlib_module_names)


def test_the_config_names_exactly_the_models_the_trainer_builds():
    """core/config cannot import the zoo (it is above it), so it holds the names; they must agree."""
    from core.config import MODEL_NAMES
    from trainer.models import MODELS

    assert tuple(MODELS) == MODEL_NAMES
