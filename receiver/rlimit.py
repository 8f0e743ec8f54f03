"""Open-file limits: raise the soft limit at start, and fit the connection bound inside it.

Each connection is a file descriptor. Most systems start processes with a soft
``RLIMIT_NOFILE`` of 1024 under a much higher hard limit; at the soft limit ``accept()`` fails
and the server stops answering anyone, so ``serve`` raises it to the hard limit first.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("receiver")

#: Descriptors kept for everything but inbound connections: pooled downloads (up to 256), files
#: being stored, the store's connections, the listening socket, logs.
RESERVED_FDS = 512
#: Used when the hard limit is "unlimited", which the kernel does not take for a soft limit.
_UNLIMITED_FALLBACK = 1 << 20


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_FALLBACK if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # e.g. above the kernel's per-process ceiling
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
            return soft
        return target
    return soft if soft != resource.RLIM_INFINITY else _UNLIMITED_FALLBACK


def connection_budget(max_connections: int, open_files: int) -> int:
    """``max_connections``, lowered (with a warning) so that it fits under ``open_files``."""
    room = max(open_files - RESERVED_FDS, 16)
    if max_connections > room:
        log.warning(
            "RECEIVER_MAX_CONNECTIONS=%d does not fit the open-file limit (%d, %d kept for "
            "downloads and the store): serving at most %d connections",
            max_connections,
            open_files,
            RESERVED_FDS,
            room,
        )
        return room
    return max_connections
