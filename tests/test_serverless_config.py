"""What every function adapter starts with (``receiver.serverless.config``): the worker off unless
asked for by name, and one line, with no secret, for each misconfiguration."""

from __future__ import annotations

from pathlib import Path

import pytest

from receiver.serverless.config import FunctionMisconfigured, function_app, function_settings
from tests.support import SECRET


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout is read
    monkeypatch.setenv("RECEIVER_DATABASE_URL", "postgresql://bob:hunter2secret@db/receiver")
    monkeypatch.setenv("RECEIVER_STORAGE_URL", "s3://bucket/images")
    monkeypatch.setenv("RECEIVER_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("K_SERVICE", "bfl-hooks")


def test_the_worker_is_off_unless_asked_for_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert function_settings().run_worker is False
    monkeypatch.setenv("RECEIVER_RUN_WORKER", "true")
    assert function_settings().run_worker is True
    monkeypatch.setenv("RECEIVER_RUN_WORKER", "false")
    assert function_settings().run_worker is False


def test_a_usable_configuration_gives_the_receiver_app() -> None:
    app = function_app(function_settings())
    assert {getattr(r, "path", None) for r in app.routes} >= {"/webhooks/bfl", "/drain"}


def test_a_bad_setting_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_PORT", "not-a-port-hunter2")
    with pytest.raises(FunctionMisconfigured) as refused:
        function_settings()
    assert str(refused.value).startswith("bad settings: RECEIVER_PORT: ")
    assert "hunter2" not in str(refused.value)


def test_no_webhook_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECEIVER_WEBHOOK_SECRET")
    with pytest.raises(FunctionMisconfigured, match="RECEIVER_WEBHOOK_SECRET is not set"):
        function_app(function_settings())


def test_a_local_store_is_refused_by_the_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_DATABASE_URL", "sqlite:///./receiver.db")
    with pytest.raises(FunctionMisconfigured, match=r"^refusing to start on Google Cloud Run"):
        function_app(function_settings())


def test_a_bad_handler_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECEIVER_HANDLERS", "no_such_module:run")
    with pytest.raises(FunctionMisconfigured) as refused:
        function_app(function_settings())
    message = str(refused.value)
    assert message.startswith("cannot start the receiver: ")
    assert "no_such_module" in message
    assert "hunter2secret" not in message
    assert "\n" not in message
