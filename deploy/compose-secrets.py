"""compose.yaml's `secrets` step: random secrets for a compose deployment, made once.

Run as root in the bfl-hooks image with the `secrets` volume as its folder; it writes what is
missing and never overwrites a file (PostgreSQL keeps the password it was initialised with):

- ``.env``: ``RECEIVER_WEBHOOK_SECRET`` (read by every bfl-hooks command, which finds the
  first ``.env`` in its working folder; a value in deploy/.env, an environment variable,
  wins), for the bfl-hooks user (uid 10001);
- ``postgres-password``: for the postgres image's ``POSTGRES_PASSWORD_FILE`` (uid 999);
- ``pgpass``: the same password for asyncpg (``PGPASSFILE``), uid 10001.

Every file is mode 0600 and owned by its one reader. Values are never printed.

    python3 compose-secrets.py DIR [--app-uid 10001] [--postgres-uid 999]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

#: Who reads what: the image's user (deploy/Dockerfile) and the postgres image's.
APP_UID = 10001
POSTGRES_UID = 999
#: The database and role compose.yaml's postgres service creates.
DATABASE = "bfl_hooks"


def write_once(path: Path, text: str, uid: int) -> bool:
    """Write ``text`` to ``path`` (0600, owned by ``uid``) unless it exists; True if written."""
    if path.exists():
        return False
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chown(partial, uid, uid)
    os.replace(partial, path)  # readers see the whole file or none
    return True


def database_password(password_file: Path, pgpass: Path) -> str:
    """The password a half-finished first run already wrote, else a new one.

    Reading a file another uid owns is why the step has CAP_DAC_READ_SEARCH."""
    if password_file.exists():
        return password_file.read_text()
    if pgpass.exists():
        return pgpass.read_text().rstrip("\n").rsplit(":", 1)[1]
    return secrets.token_urlsafe(24)  # URL-safe: nothing to escape in pgpass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Random secrets for compose.yaml, made once.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--app-uid", type=int, default=APP_UID)
    parser.add_argument("--postgres-uid", type=int, default=POSTGRES_UID)
    args = parser.parse_args(argv)
    folder: Path = args.folder
    if not folder.is_dir():
        print(f"compose-secrets: {folder} is not a folder", file=sys.stderr)
        return 2
    made = []
    webhook = f"RECEIVER_WEBHOOK_SECRET={secrets.token_urlsafe(32)}\n"
    if write_once(folder / ".env", webhook, args.app_uid):
        made.append(".env (RECEIVER_WEBHOOK_SECRET)")
    password_file, pgpass = folder / "postgres-password", folder / "pgpass"
    if not (password_file.exists() and pgpass.exists()):
        password = database_password(password_file, pgpass)
        # host:port:database:user:password, for the compose network's `postgres` only.
        line = f"postgres:5432:{DATABASE}:{DATABASE}:{password}\n"
        if write_once(pgpass, line, args.app_uid):
            made.append("pgpass")
        if write_once(password_file, password, args.postgres_uid):
            made.append("postgres-password")
    print(f"compose-secrets: {', '.join(made) or 'nothing'} created in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
