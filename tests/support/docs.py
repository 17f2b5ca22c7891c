"""The commands README.md and docs/*.md show, as a user would copy them (tests/integration/test_docs_commands.py).

A command is a line of a fenced code block that is marked bash/sh/shell/console, or of any fenced block when it
starts with one of the project's programs (docs/aws.md's synopses are unmarked); indented lines after it continue
it (a synopsis over several lines), `# ...` comments are dropped and `a && b` are two commands.

    documented()  # {"mnist-launch models": ["README.md:37"], ...}
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.support import ROOT

SHELL_BLOCKS = ("bash", "sh", "shell", "console")
PROGRAMS = ("mnist-launch", "python", "pip", "ruff", "mypy", "pytest", "accelerate", "tensorboard", "aws")
COMMENT = re.compile(r"(^|\s)#(\s.*)?$")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands_in(path: Path) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    fence: str | None = None  # the open block's info string, None outside blocks
    current: list[str] = []  # the command being read and its continuation lines
    start = 0

    def close() -> None:
        if current:
            text = " ".join(" ".join(current).split())
            out.extend((part.strip(), start) for part in text.split(" && ") if part.strip())
            current.clear()

    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            close()
            fence = line.strip()[3:].strip().lower() if fence is None else None
            continue
        if fence is None:
            continue
        code = COMMENT.sub("", line).rstrip()
        if current and code[:1].isspace() and code.strip():
            current.append(code.strip())  # a synopsis continued on an indented line
            continue
        close()
        word = code.split(" ", 1)[0]
        if code.strip() and (fence in SHELL_BLOCKS or word in PROGRAMS):
            current.append(code.strip())
            start = n
    close()
    return out


def documented() -> dict[str, list[str]]:
    """Each documented command -> where it is shown (``README.md:37``)."""
    found: dict[str, list[str]] = {}
    for path in doc_files():
        for command, line in _commands_in(path):
            found.setdefault(command, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


OPTIONAL = re.compile(r"\s*\[([^\[\]]*)\]")


def bare(command: str) -> str:
    """The command without its optional parts: `runs [--json]` -> `runs`."""
    while OPTIONAL.search(command):
        command = OPTIONAL.sub("", command)
    return command.strip()


def full(command: str) -> str:
    """The command with its optional parts, where each is one choice: `runs [--json]` -> `runs --json`."""
    return " ".join(OPTIONAL.sub(lambda m: f" {m.group(1)}", command).split())


def flags(command: str) -> list[str]:
    """Every --flag a command (or synopsis) names, optional or not: `--autostop 60m|off` -> `--autostop`."""
    return sorted({w.split("=", 1)[0] for w in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?:=\S*)?", command)})


def argv(command: str, values: dict[str, str]) -> list[str]:
    """The command's words with each placeholder word replaced (`RUN_ID` -> the run's id)."""
    return [values.get(w, w) for w in shlex.split(command)]
