"""The CLI has every command, and a broken import of the cloud commands is never silent (launcher/cli.py)."""

import sys

import pytest
import typer

from launcher import cli


def test_every_command_is_registered():
    names = {c.name or c.callback.__name__ for c in cli.app.registered_commands}
    assert {"train", "logs", "cancel", "runs", "results", "models", "up", "status", "down", "ssh"} <= names


def test_a_broken_import_of_the_cloud_commands_fails_loudly(monkeypatch):
    monkeypatch.setitem(sys.modules, "launcher.cloud_cli", None)  # `import launcher.cloud_cli` raises ImportError
    app = typer.Typer()
    with pytest.raises(ImportError, match="launcher.cloud_cli"):
        cli._register_cloud_commands(app)
    assert app.registered_commands == []
