"""``make run``: the receiver on http://127.0.0.1:8000, with SQLite and images under ./data.

A fresh clone has no webhook secret: one is generated into .env (mode 600) and never printed.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

ENV_FILE = Path(".env")


def ensure_secret() -> None:
    if os.environ.get("RECEIVER_WEBHOOK_SECRET"):
        return
    lines = ENV_FILE.read_text().splitlines() if ENV_FILE.exists() else []
    if any(line.startswith("RECEIVER_WEBHOOK_SECRET=") for line in lines):
        return
    lines.append(f"RECEIVER_WEBHOOK_SECRET={secrets.token_urlsafe(32)}")
    ENV_FILE.touch(mode=0o600)
    ENV_FILE.write_text("\n".join(lines) + "\n")
    print("wrote a new RECEIVER_WEBHOOK_SECRET to .env (kept out of git)", file=sys.stderr)


def main() -> None:
    Path("data").mkdir(exist_ok=True)
    ensure_secret()
    from receiver.cli import main as receiver_main  # noqa: PLC0415 - after .env exists

    receiver_main(["serve"])


if __name__ == "__main__":
    main()
