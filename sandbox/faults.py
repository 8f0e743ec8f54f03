"""Fault injection: what can go wrong with a task, chosen per sandbox or per request.

A request names faults in the ``X-Sandbox-Fault`` header (``drop-webhook,duplicate-webhook``)
or in a prompt tag (``a cat [sandbox:delay-webhook=1.5]``); the sandbox's ``faults`` setting
applies to every task. A fault may carry a value: seconds for the delays, a count for the
failures; without one the ``fault_delay_seconds`` / ``fault_failures`` settings apply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: Every fault, with what it does (the README table is generated from the same words).
FAULTS: Mapping[str, str] = {
    "drop-webhook": "never send the webhook",
    "duplicate-webhook": "send the webhook twice",
    "delay-webhook": "send the webhook N seconds after the task finished",
    "early-webhook": "send the webhook while get_result still says Task not found for N seconds",
    "wrong-secret": "send the webhook with a wrong X-Webhook-Secret (and signature)",
    "slow-delivery": "the delivery URL waits N seconds before it answers",
    "failing-delivery": "the delivery URL answers 503 the first N times",
    "get-result-5xx": "get_result answers 503 the first N times it is asked for this task",
    "request-moderated": "the task ends as Request Moderated",
    "content-moderated": "the task ends as Content Moderated",
    "error": "the task ends as Error",
}

#: Faults whose value is a number of seconds; the others that take one count failures.
DELAY_FAULTS = frozenset({"delay-webhook", "early-webhook", "slow-delivery"})
COUNT_FAULTS = frozenset({"failing-delivery", "get-result-5xx"})

HEADER = "x-sandbox-fault"
_TAG = re.compile(r"\[sandbox:([^\]]*)\]")


class FaultError(ValueError):
    """A fault name is unknown or its value is not a number."""


@dataclass(frozen=True)
class Faults:
    """The faults of one task: names, and the values some of them were given."""

    names: frozenset[str] = frozenset()
    values: Mapping[str, float] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __or__(self, other: Faults) -> Faults:
        return Faults(self.names | other.names, {**self.values, **other.values})

    def seconds(self, name: str, default: float) -> float:
        """The delay of ``name`` (0 when the fault is not active)."""
        return self.values.get(name, default) if name in self.names else 0.0

    def count(self, name: str, default: int) -> int:
        """How many times ``name`` fails (0 when the fault is not active)."""
        return int(self.values.get(name, default)) if name in self.names else 0


def parse_faults(specs: Iterable[str]) -> Faults:
    """Parse ``name`` / ``name=value`` items; raise FaultError on anything unknown."""
    names: set[str] = set()
    values: dict[str, float] = {}
    for raw in specs:
        item = raw.strip().lower()
        if not item:
            continue
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in FAULTS:
            known = ", ".join(FAULTS)
            raise FaultError(f"unknown sandbox fault {name!r} (known: {known})")
        names.add(name)
        if value:
            values[name] = _number(name, value.strip())
    return Faults(frozenset(names), values)


def _number(name: str, value: str) -> float:
    if name not in DELAY_FAULTS | COUNT_FAULTS:
        raise FaultError(f"sandbox fault {name!r} takes no value")
    try:
        number = float(value)
    except ValueError:
        raise FaultError(f"sandbox fault {name}={value!r}: the value is not a number") from None
    if not 0 <= number <= 3600:
        raise FaultError(f"sandbox fault {name}={value!r}: the value must be 0..3600")
    return number


def faults_in(prompt: str | None, header: str | None) -> Faults:
    """The faults a request asks for, in its prompt tags and its header."""
    items: list[str] = []
    for tag in _TAG.findall(prompt or ""):
        items.extend(tag.split(","))
    if header:
        items.extend(header.split(","))
    return parse_faults(items)
