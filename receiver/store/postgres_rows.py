"""What the PostgreSQL store reads back besides rows (those are in ``rows.py``)."""

from __future__ import annotations


def rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])
