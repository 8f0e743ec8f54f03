"""Pace sends to one chat or channel, as the platforms ask.

Telegram allows about one message a second per chat and 20 a minute per group; Slack about one
a second per channel; going faster earns a 429 and, on Discord, counts towards a ban. A
``Pacer`` spaces a process's sends per key (``"telegram:<chat id>"``), and holds a key for as
long as a 429 for it asked.

A wait longer than ``max_wait`` is not slept: ``slot`` raises ``RateLimited`` instead, so the
worker queues the job again for that time without using an attempt, rather than holding one of
its slots while a chat's limit lifts.

The pace is per process: replicas each keep their own, and the platform's 429 (waited out the
same way) covers what they do together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from receiver.handlers import RateLimited

#: A minute: the window of ``per_minute``.
WINDOW_SECONDS = 60.0
#: Keys kept before idle ones are forgotten (a key is idle once its window is past).
MAX_KEYS = 10_000


@dataclass(slots=True)
class _Key:
    sends: deque[float] = field(default_factory=deque)
    """The monotonic times of the sends reserved within the last window, oldest first."""
    held_until: float = 0.0


class Pacer:
    """At least ``interval`` seconds between two sends to one key, at most ``per_minute`` of
    them in any minute when given, and none while a 429 holds the key."""

    def __init__(
        self, interval: float, *, per_minute: int | None = None, max_wait: float = 10.0
    ) -> None:
        if interval < 0 or (per_minute is not None and per_minute < 1) or max_wait < 0:
            raise ValueError("interval and max_wait must be >= 0, per_minute >= 1")
        self.interval = interval
        self.per_minute = per_minute
        self.max_wait = max_wait
        self._keys: dict[str, _Key] = {}

    def _key(self, key: str, now: float) -> _Key:
        state = self._keys.get(key)
        if state is None:
            if len(self._keys) >= MAX_KEYS:
                self._forget_idle(now)
            state = self._keys[key] = _Key()
        while state.sends and state.sends[0] <= now - WINDOW_SECONDS:
            state.sends.popleft()
        return state

    def _forget_idle(self, now: float) -> None:
        idle = [
            k
            for k, s in self._keys.items()
            if s.held_until <= now and (not s.sends or s.sends[-1] <= now - WINDOW_SECONDS)
        ]
        for k in idle:
            del self._keys[k]

    def next_free(self, key: str) -> float:
        """Seconds until ``key`` may send (0 when it may send now); reserves nothing."""
        now = time.monotonic()
        return max(0.0, self._earliest(self._key(key, now), now) - now)

    def _earliest(self, state: _Key, now: float) -> float:
        at = max(now, state.held_until)
        if state.sends:
            at = max(at, state.sends[-1] + self.interval)
        if self.per_minute is not None and len(state.sends) >= self.per_minute:
            at = max(at, state.sends[-self.per_minute] + WINDOW_SECONDS)
        return at

    async def slot(self, key: str) -> None:
        """Wait for ``key``'s next free slot and take it; raise ``RateLimited`` (with the
        wait) instead of sleeping longer than ``max_wait``."""
        now = time.monotonic()
        state = self._key(key, now)
        at = self._earliest(state, now)
        wait = at - now
        if wait > self.max_wait:
            raise RateLimited(f"pacing sends to {key}: next free in {wait:.1f} s", wait)
        state.sends.append(at)  # reserved before sleeping, so a second sender queues behind
        if wait > 0:
            await asyncio.sleep(wait)

    def hold(self, key: str, seconds: float) -> None:
        """The platform answered 429 for ``key``: send nothing to it for ``seconds``."""
        now = time.monotonic()
        state = self._key(key, now)
        state.held_until = max(state.held_until, now + max(0.0, seconds))
