"""Where requests go, with which key and which webhook, from settings and arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import submitter
from submitter._settings import resolve_connection, resolve_webhook


def settings(**values: Any) -> submitter.Settings:
    base: dict[str, Any] = {"api_key": None, "api_url": None, "webhook_secret": ()}
    return submitter.Settings(_env_file=None, **{**base, **values})  # type: ignore[call-arg]


def test_nothing_configured_means_the_local_sandbox_and_says_so() -> None:
    conn = resolve_connection(settings())
    assert conn.sandbox
    assert conn.base_url == "http://127.0.0.1:8001"
    assert conn.legacy_urls == {
        "eu1": "http://127.0.0.1:8001/eu1",
        "us1": "http://127.0.0.1:8001/us1",
    }
    bfl = submitter.BFL(settings=settings())
    assert "sandbox" in bfl.notes["api"]
    assert "polling only" in bfl.notes["webhook"]


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("global", "https://api.bfl.ai"),
        ("eu", "https://api.eu.bfl.ai"),
        ("us", "https://api.us.bfl.ai"),
    ],
)
def test_regions_map_to_bfl_hosts(region: str, url: str) -> None:
    conn = resolve_connection(settings(api_key="k", region=region))
    assert not conn.sandbox
    assert conn.base_url == url
    assert conn.legacy_urls == {"eu1": "https://api.eu1.bfl.ai", "us1": "https://api.us1.bfl.ai"}
    assert conn.api_key.get_secret_value() == "k"


def test_arguments_override_settings_and_an_explicit_url_overrides_the_region() -> None:
    conn = resolve_connection(settings(api_key="k", region="eu"), api_key="other", region="us")
    assert (conn.base_url, conn.api_key.get_secret_value()) == ("https://api.us.bfl.ai", "other")
    conn = resolve_connection(settings(api_url="http://127.0.0.1:5/", region="eu"))
    assert conn.base_url == "http://127.0.0.1:5"
    assert conn.legacy_urls["us1"] == "http://127.0.0.1:5/us1"
    assert not conn.sandbox


def test_webhook_needs_a_secret_and_uses_the_first_as_master() -> None:
    assert resolve_webhook(settings()) is None
    hook = resolve_webhook(settings(webhook_secret="new, old", public_url="https://h.example/"))
    assert hook is not None
    assert hook.url == "https://h.example/webhooks/bfl"
    assert hook.master.get_secret_value() == "new"
    assert "new" not in repr(hook)


def test_settings_come_from_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFL_API_KEY", "from-env")
    monkeypatch.setenv("BFL_REGION", "us")
    monkeypatch.setenv("RECEIVER_WEBHOOK_SECRET", "a,b")
    monkeypatch.setenv("RECEIVER_PUBLIC_URL", "https://hooks.example")
    monkeypatch.setenv("RECEIVER_DATABASE_URL", "sqlite:///x.db")
    loaded = submitter.Settings(_env_file=None)  # type: ignore[call-arg]
    assert loaded.api_key is not None
    assert loaded.api_key.get_secret_value() == "from-env"
    assert loaded.region == "us"
    assert [s.get_secret_value() for s in loaded.webhook_secret] == ["a", "b"]
    assert loaded.public_url == "https://hooks.example"
    # Relative: resolved against the current folder (no .env was read).
    assert loaded.database_url == f"sqlite:///{Path.cwd().resolve() / 'x.db'}"
