"""core/settings.py is the one reader of the MNIST_LAUNCH_* variables, and docs/settings.md's table
names each variable the project reads once, with the default the code applies and who reads it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core import settings
from core.errors import AWSError, ConfigError, RunError

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("core", "launcher", "infra", "trainer")
# the only files that may read a variable: the settings module, and the watcher that runs alone on
# the instance as one stdlib-only file (docs/settings.md says which two it reads)
READERS = ("core/settings.py", "infra/autostop.py")
VAR = re.compile(r"MNIST_LAUNCH_[A-Z0-9]+(?:_[A-Z0-9]+)*")
# a string that is a variable's name (or a prefix of one, as in f"MNIST_LAUNCH_{x}"): how code reads one
NAMED = re.compile(r"MNIST_LAUNCH_[A-Z0-9_]*")


def env_names_in(source: str) -> list[str]:
    """The string constants in ``source`` that name a MNIST_LAUNCH_* variable, f-string parts included.
    A message that mentions one ("... or set MNIST_LAUNCH_SSH_ENDPOINT") is not a read."""
    return [node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED.fullmatch(node.value)]


def product_files() -> list[Path]:
    return sorted(p for top in PRODUCT for p in (ROOT / top).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def table() -> dict[str, tuple[str, set[str]]]:
    """docs/settings.md: variable -> (default as the code holds it, "" for none; the set of readers)."""
    rows = {}
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and VAR.fullmatch(cells[0].strip("`")):
            name, default, _meaning, readers = cells
            assert name.strip("`") not in rows, f"{name} is in the table twice"
            rows[name.strip("`")] = ("" if default == "—" else default.strip("`"),
                                     {r.strip() for r in readers.split(",")})
    assert rows, "docs/settings.md has no table of variables"
    return rows


def read_by(reader: str) -> dict[str, str]:
    return {name: default for name, (default, readers) in table().items() if reader in readers}


@pytest.mark.parametrize("source, names", [
    ('import os\nDEBUG = os.environ.get("MNIST_LAUNCH_DEBUG") == "1"\n', ["MNIST_LAUNCH_DEBUG"]),
    ('import os\nHOME_ENV = "MNIST_LAUNCH_HOME"\nhome = os.environ[HOME_ENV]\n', ["MNIST_LAUNCH_HOME"]),
    ('import os\ndef f(k):\n    return os.getenv(f"MNIST_LAUNCH_{k}")\n', ["MNIST_LAUNCH_"]),
    ('import os\nmine = {k: v for k, v in os.environ.items() if k.startswith("MNIST_LAUNCH_")}\n', ["MNIST_LAUNCH_"]),
    ('raise ValueError("no address — set MNIST_LAUNCH_SSH_ENDPOINT")\n', []),
    ('"""Reads MNIST_LAUNCH_HOME."""\n', []),
])
def test_the_check_sees_a_read_and_not_a_mention(source, names):
    assert env_names_in(source) == names


def test_no_code_but_core_settings_reads_a_variable():
    readers = [f"{rel(p)}: {', '.join(found)}" for p in product_files()
               if rel(p) not in READERS and (found := env_names_in(p.read_text()))]
    assert not readers, ("read these through core/settings.py (and document them in docs/settings.md): "
                         + "; ".join(readers))


def test_the_table_lists_what_core_settings_reads_with_its_defaults():
    declared = {value for name, value in vars(settings).items()
                if name.isupper() and isinstance(value, str) and VAR.fullmatch(value)}
    assert declared == set(settings.DEFAULTS), "every variable core/settings.py names needs a default in DEFAULTS"
    assert read_by("core/settings.py") == settings.DEFAULTS


def test_the_table_lists_what_the_autostop_watcher_reads():
    assert set(read_by("infra/autostop.py")) == set(env_names_in((ROOT / "infra" / "autostop.py").read_text()))
    # `up` passes on the watcher's variables, all but the tests' /proc stand-in
    assert set(read_by("infra/autostop.py")) - {"MNIST_LAUNCH_AUTOSTOP_PROC"} == set(settings.AUTOSTOP_FORWARDED)


def test_every_variable_named_anywhere_is_in_the_table():
    """Docstrings, messages, tests, benchmarks, CI and docs included: a name with no row is a variable
    nobody documented, or a typo. Test-only variables belong to tests/ and .ci/run."""
    rows = table()
    here = Path(__file__).resolve()
    named: dict[str, set[str]] = {}
    places = [*product_files(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
              ROOT / ".ci" / "run", ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    for path in places:
        if path.resolve() == here or not path.is_file():
            continue
        for name in VAR.findall(path.read_text()):
            named.setdefault(name, set()).add(rel(path))
    missing = {name: sorted(where)[:3] for name, where in named.items() if name not in rows}
    assert not missing, f"add these to docs/settings.md (or fix the name): {missing}"
    unused = set(rows) - set(named)
    assert not unused, f"docs/settings.md lists variables nothing reads: {sorted(unused)}"
    for reader in ("tests/", ".ci/run"):
        for name in read_by(reader):
            assert any(w.startswith(reader) for w in named[name]), f"{name}: docs/settings.md says {reader} reads it"


def test_values_are_read_when_asked_not_at_import(monkeypatch):
    monkeypatch.delenv(settings.STEP_DELAY, raising=False)
    assert settings.step_delay() == 0.0
    monkeypatch.setenv(settings.STEP_DELAY, "0.25")
    assert settings.step_delay() == 0.25
    monkeypatch.setenv(settings.HOME, "")  # empty is unset: the default
    assert settings.launch_home() == "~/.mnist-launch"
    monkeypatch.setenv(settings.HOME, "/tmp/elsewhere")
    assert settings.launch_home() == "/tmp/elsewhere"
    monkeypatch.setenv(settings.DEBUG, "1")
    assert settings.debug()
    monkeypatch.setenv(settings.DEBUG, "yes")  # only 1 turns it on, as before
    assert not settings.debug()


def test_the_watcher_gets_only_its_own_variables_that_are_set(monkeypatch):
    monkeypatch.setenv(settings.SHUTDOWN_CMD, "touch /tmp/x")
    monkeypatch.delenv(settings.AUTOSTOP_IGNORE_SSH, raising=False)
    monkeypatch.setenv(settings.AUTOSTOP_POLL, "0.5")
    assert settings.autostop_forwarded_env() == {settings.SHUTDOWN_CMD: "touch /tmp/x"}
    assert settings.autostop_poll() == 0.5


@pytest.mark.parametrize("name, call, error, message", [
    (settings.STEP_DELAY, settings.step_delay, RunError,
     r"^MNIST_LAUNCH_STEP_DELAY='soon' is not a number of seconds — unset it or give e\.g\. 0\.2$"),
    (settings.IAM_CONSISTENCY_S, lambda: settings.aws_seconds(settings.IAM_CONSISTENCY_S), AWSError,
     r"^MNIST_LAUNCH_IAM_CONSISTENCY_S='soon': expected a number of seconds — fix or unset it$"),
    (settings.AWS_MAX_ATTEMPTS, settings.aws_max_attempts, AWSError,
     r"^MNIST_LAUNCH_AWS_MAX_ATTEMPTS='soon': expected a number of seconds — fix or unset it$"),
    (settings.AUTOSTOP_POLL, settings.autostop_poll, ConfigError,
     r"^MNIST_LAUNCH_AUTOSTOP_POLL='soon': expected a number of seconds — fix or unset it$"),
    (settings.IMDS_POLL, settings.imds_poll, RunError,
     r"^MNIST_LAUNCH_IMDS_POLL='soon': expected a number of seconds \(0: off\) — fix or unset it$"),
])
def test_a_bad_number_is_one_line_naming_the_variable(monkeypatch, name, call, error, message):
    monkeypatch.setenv(name, "soon")
    with pytest.raises(error, match=message):
        call()


def test_a_negative_aws_duration_is_refused(monkeypatch):
    monkeypatch.setenv(settings.AWS_RETRY_CAP_S, "-1")
    with pytest.raises(AWSError, match=r"^MNIST_LAUNCH_AWS_RETRY_CAP_S='-1': expected a number of seconds >= 0"):
        settings.aws_seconds(settings.AWS_RETRY_CAP_S)


def test_an_undeclared_variable_cannot_be_read():
    with pytest.raises(KeyError, match="not a setting"):
        settings.raw("MNIST_LAUNCH_" + "NOT_A_SETTING")
