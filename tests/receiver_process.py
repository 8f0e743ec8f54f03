"""``python -m tests.receiver_process FD``: the receiver as ``bfl-receiver serve --fd FD`` runs it,
for tests that need it in a process of its own (to kill it), with only the handlers that
``RECEIVER_HANDLERS`` names.

Entry points installed in the environment (a user's handler package, as the README recommends)
are not loaded: their jobs would change what these tests count.
"""

from __future__ import annotations

import socket
import sys

import uvicorn

from receiver import Settings, create_app
from receiver.handlers import load_handler


def main() -> None:
    fd = int(sys.argv[1])
    settings = Settings()
    handlers = {name: load_handler(name) for name in settings.handlers}
    config = uvicorn.Config(
        create_app(settings, handlers=handlers),
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    # As serve does: socket(fileno=) keeps the real family, so TCP_NODELAY is set.
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    main()
