"""What ``/readyz`` reports: problems that stop the receiver recording or processing, and
warnings that do not.

Every background loop, and the webhook path itself, reports here as it goes: ``fail`` when a
step could not reach the store (or died), ``ok`` when the next one could. Nothing is probed on
demand except the store itself, so readiness says what the receiver really saw, not what one
``SELECT 1`` happened to see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the receiver is not ready (or a warning), and since when."""

    component: str
    reason: str
    since: float


class Health:
    """Problems and warnings by component; cheap enough to touch on every webhook."""

    def __init__(self) -> None:
        self._problems: dict[str, Problem] = {}
        self._warnings: dict[str, Problem] = {}

    def fail(self, component: str, reason: str) -> None:
        """``component`` cannot do its work (the store refused, the loop stopped)."""
        known = self._problems.get(component)
        since = known.since if known is not None else time.time()
        self._problems[component] = Problem(component, reason, since)

    def ok(self, component: str) -> None:
        """``component`` just did its work again."""
        if self._problems:  # the common case is no problem at all: one dict check
            self._problems.pop(component, None)

    def warn(self, component: str, reason: str) -> None:
        """Something a person must look at, that does not stop the receiver (still ready)."""
        known = self._warnings.get(component)
        since = known.since if known is not None else time.time()
        self._warnings[component] = Problem(component, reason, since)

    def clear_warning(self, component: str) -> None:
        if self._warnings:
            self._warnings.pop(component, None)

    @property
    def problems(self) -> list[Problem]:
        return sorted(self._problems.values(), key=lambda p: p.since)

    @property
    def warnings(self) -> list[Problem]:
        return sorted(self._warnings.values(), key=lambda p: p.since)


def describe(exc: BaseException) -> str:
    """``OperationalError: database is locked``: the type and the first line of the message.

    Store errors carry no secrets in their text (asyncpg and sqlite3 never echo the DSN), and
    the first line is enough for a health report.
    """
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
