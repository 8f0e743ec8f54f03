"""``--version`` on the three commands, and a handler module that fails on import, named."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from receiver.cli import main as receiver_main
from receiver.handlers import HandlerError, load_handler
from sandbox.cli import main as sandbox_main
from submitter.cli import main as submitter_main
from tests.support import SECRET


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (receiver_main, "bfl-receiver"),
        (submitter_main, "bfl-submit"),
        (sandbox_main, "bfl-sandbox"),
    ],
)
def test_version(command: click.Group, name: str) -> None:
    out = CliRunner().invoke(command, ["--version"])
    assert out.exit_code == 0, out.output
    assert out.output == f"{name}, version {version('bfl-hooks')}\n"


@pytest.fixture
def broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A handler package whose module raises while it is imported (a missing setting, say)."""
    (tmp_path / "mybot_hooks_broken.py").write_text(
        "import os\nTOKEN = os.environ['MYBOT_TOKEN_THAT_IS_NOT_SET']\n"
        "async def reply(event):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MYBOT_TOKEN_THAT_IS_NOT_SET", raising=False)
    return "mybot_hooks_broken"


def test_a_handler_module_failing_on_import_names_handler_module_and_exception(
    broken_module: str,
) -> None:
    with pytest.raises(HandlerError) as raised:
        load_handler(f"{broken_module}:reply")
    message = str(raised.value)
    assert f"handler '{broken_module}:reply'" in message
    assert f"cannot import '{broken_module}'" in message
    assert "KeyError: 'MYBOT_TOKEN_THAT_IS_NOT_SET'" in message


def test_serve_with_a_handler_failing_on_import_is_one_line(
    broken_module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = CliRunner(
        env={"RECEIVER_WEBHOOK_SECRET": SECRET, "RECEIVER_HANDLERS": f"{broken_module}:reply"}
    ).invoke(receiver_main, ["serve"])
    assert out.exit_code == 1
    assert out.output.strip().count("\n") == 0
    assert "KeyError" in out.output
    assert broken_module in out.output
    assert SECRET not in out.output


def test_a_module_without_the_handler_and_a_missing_module_are_still_named() -> None:
    with pytest.raises(HandlerError, match=r"cannot import 'nowhere_at_all'.*ModuleNotFoundError"):
        load_handler("nowhere_at_all:handler")
    with pytest.raises(HandlerError, match="'json' has no 'nothing_here'"):
        load_handler("json:nothing_here")


def test_serve_never_shows_a_secret_a_handler_module_put_in_its_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leaky_hooks.py").write_text(
        "import os\n"
        "raise RuntimeError('bad config: ' + os.environ['RECEIVER_WEBHOOK_SECRET']"
        " + ' ' + os.environ['BFL_API_KEY'])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {
        "RECEIVER_WEBHOOK_SECRET": SECRET,
        "BFL_API_KEY": "bfl-key-0123456789",
        "RECEIVER_HANDLERS": "leaky_hooks:reply",
    }
    out = CliRunner(env=env).invoke(receiver_main, ["serve"])
    assert out.exit_code == 1
    assert "RuntimeError: bad config: *** ***" in out.output
    assert SECRET not in out.output
    assert "bfl-key-0123456789" not in out.output
