"""What every function adapter does first: settings from the environment, the durability guard,
the receiver's app, and one clear line for whatever is misconfigured."""

from __future__ import annotations

import logging

from pydantic import ValidationError
from starlette.applications import Starlette

from receiver.app import create_app
from receiver.cli_support import scrub, settings_errors
from receiver.durability import EphemeralStoreRefused, check_durable
from receiver.settings import Settings


class FunctionMisconfigured(Exception):
    """The function cannot start; the message says why and what to set, in one line."""


def function_settings() -> Settings:
    """The settings from the environment, with the worker off unless asked for by name: once a
    function has answered, its instance may get no CPU until the next request, and a worker
    would wake inside some later request with its leases long expired."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise FunctionMisconfigured(f"bad settings: {settings_errors(exc)}") from None
    if "run_worker" not in settings.model_fields_set:
        settings = settings.model_copy(update={"run_worker": False})
    return settings


def function_app(settings: Settings) -> Starlette:
    """The receiver's app for a function, once its settings are known to be usable (logging
    configured as ``serve`` does; the platform collects standard error)."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.webhook_secret:
        raise FunctionMisconfigured(
            "RECEIVER_WEBHOOK_SECRET is not set: every webhook would be refused. "
            "Set it (comma-separated to accept several) in the function's environment."
        )
    try:
        check_durable(settings)
        return create_app(settings)
    except EphemeralStoreRefused as exc:
        raise FunctionMisconfigured(str(exc)) from None
    except Exception as exc:  # a bad handler spec or URL: say so
        raise FunctionMisconfigured(
            f"cannot start the receiver: {scrub(str(exc), settings)}"
        ) from None
