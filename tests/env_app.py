"""``uvicorn --factory tests.env_app:app``: the receiver as a user embedding it serves it, with
settings from the environment only (no ``bfl-receiver serve`` checks in front)."""

from __future__ import annotations

from starlette.applications import Starlette

from receiver import Settings, create_app


def app() -> Starlette:
    return create_app(Settings(), handlers={})
