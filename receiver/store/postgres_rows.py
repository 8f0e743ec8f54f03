"""Small pieces the PostgreSQL modules share: the database clock, and command-tag counts."""

from __future__ import annotations

#: The database's clock, as epoch seconds like ``time.time()`` (transaction start time).
NOW = "date_part('epoch', now())"


def rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])
