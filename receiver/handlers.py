"""User handlers: ``async def handler(event) -> None``, found by name or by entry point."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Protocol, TypeVar, cast

from receiver.events import Event, Kind, Status

Handler = Callable[[Event], Awaitable[None]]
H = TypeVar("H", bound=Handler)

ENTRY_POINT_GROUP = "bfl_hooks.handlers"
_KINDS_ATTR = "__bfl_hooks_kinds__"
_SELECTABLE = {"ready", "error", "moderated", "finetune", "*"}


class HandlerError(Exception):
    """A handler could not be loaded (bad ``module:callable``, not an async function)."""


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (the endpoint is gone, the handler is
    misconfigured): its job is dead at once, with this message as the reason."""


class RetryLater(Exception):
    """Raised by a handler when the other side asked it to wait (a 429 or 503 with
    ``Retry-After``): the next attempt comes no sooner than ``retry_after`` seconds (capped at
    an hour), or at the usual backoff if that is later. The attempt still counts."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(RetryLater):
    """Raised by a handler when the other side's rate limit turned it away (a chat platform's
    429): the job is queued again for ``retry_after`` seconds from now *without* using up an
    attempt, since nothing failed. Waits add up per job; past
    ``RECEIVER_RATE_LIMIT_MAX_WAIT_SECONDS`` in all it is an ordinary ``RetryLater``, so a
    limit that never lifts still ends in a dead job rather than a job waiting for ever."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, retry_after)
        self.retry_after: float = retry_after


class Skipped(Exception):
    """Raised by a handler when the event is not for it (a Telegram handler and an event with
    no chat to send to): its job is done, with nothing sent, and counted as skipped."""


def on(*kinds: str) -> Callable[[H], H]:
    """Run the decorated handler only for these kinds: ``"ready"``, ``"error"``,
    ``"moderated"`` (generations), ``"finetune"`` (a finetune's training ended, however it
    ended) or ``"*"`` (every terminal event, finetunes included: the default for undecorated
    handlers)."""
    unknown = set(kinds) - _SELECTABLE
    if not kinds or unknown:
        raise ValueError(f"on() takes some of {sorted(_SELECTABLE)}, got {sorted(unknown)}")

    def mark(handler: H) -> H:
        setattr(handler, _KINDS_ATTR, frozenset(kinds))
        return handler

    return mark


def wants(handler: Handler, kind: Kind) -> bool:
    kinds: frozenset[str] = getattr(handler, _KINDS_ATTR, frozenset({"*"}))
    return "*" in kinds or kind in kinds


class NamesFor(Protocol):
    """``HandlerSet.names_for``: the handlers an event of this status (and task kind) needs."""

    def __call__(self, status: Status, *, finetune: bool = False) -> list[str]: ...


class HandlerSet:
    """The handlers this receiver runs, by name."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)
        # Asked on every webhook: work it out once per status (and once for finetunes).
        self._names = {status: self._wanting(status, status.kind) for status in Status}
        self._finetune_names = {status: self._wanting(status, "finetune") for status in Status}

    def _wanting(self, status: Status, kind: Kind) -> list[str]:
        if not status.terminal:
            return []
        return sorted(n for n, h in self.handlers.items() if wants(h, kind))

    def names_for(self, status: Status, *, finetune: bool = False) -> list[str]:
        """Handlers that want an event of this status, in a stable order; with ``finetune``,
        those that want a finetune event (``on("finetune")`` and ``"*"``) of this status."""
        return (self._finetune_names if finetune else self._names)[status]

    def get(self, name: str) -> Handler | None:
        return self.handlers.get(name)


def load_handler(spec: str) -> Handler:
    """Import ``module:callable`` (the callable may be dotted: ``module:Class.method``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise HandlerError(f"handler {spec!r} is not in the form module:callable")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:  # whatever the module raised while it loaded
        # Not only ImportError: a handler module may fail on its own line 3 (a SyntaxError, a
        # missing setting); say which handler, which module, and what it raised.
        raise HandlerError(
            f"handler {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HandlerError(f"handler {spec!r}: {module_name!r} has no {attr!r}") from None
    if not inspect.iscoroutinefunction(target):
        raise HandlerError(f"handler {spec!r} is not an async function")
    return cast(Handler, target)


def load_handlers(specs: Iterable[str], *, use_entry_points: bool = True) -> HandlerSet:
    """The handlers named in ``specs`` plus those registered under ``bfl_hooks.handlers``."""
    names = list(specs)
    if use_entry_points:
        names += [ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return HandlerSet({name: load_handler(name) for name in dict.fromkeys(names)})
