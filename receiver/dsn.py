"""Database URLs in messages: the password (and any secret in the query) never shown.

``redact_dsn`` is for any text that would name a URL; ``dsn_target`` says where a URL points
(host, port, database) for a one-line error. Both work on URLs ``urlsplit`` cannot read too
(PostgreSQL's multi-host ``postgresql://u:p@h1:5432,h2:5432/db``), falling back to a pattern
that hides whatever sits between ``user:`` and ``@``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

MASK = "***"

#: Query parameters that carry a credential (libpq's ``password``, ``sslpassword``, tokens...).
_SECRET_PARAM = re.compile(r"pass|secret|token|key|auth|credential", re.IGNORECASE)
#: ``scheme://user:password@`` anywhere in a text, for what urlsplit cannot take apart.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:@/\s]*):[^@\s]*@")


def redact_dsn(url: str) -> str:
    """``url`` with its password and secret query parameters replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unreadable URL: hide any userinfo by pattern
        return _USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{hosts}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_SECRET_PARAM.search(k) for k, _ in pairs):
        query = urlencode(
            [(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*/:"
        )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide: as given
    slashes = "//" if url.startswith(f"{parts.scheme}://") else ""
    rebuilt = f"{parts.scheme}:{slashes}{netloc}{parts.path}"
    return (
        rebuilt + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    )


def redact_text(text: str, url: str) -> str:
    """``text`` with ``url``'s password removed wherever it appears (a driver's message may
    quote the URL, or the password alone)."""
    text = _USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", text)
    password = dsn_password(url)
    if password:
        text = text.replace(password, MASK)
    return text


def dsn_password(url: str) -> str | None:
    """The password in ``url``'s userinfo, decoded, or None."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    userinfo, at, _ = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return None
    return unquote(userinfo.partition(":")[2]) or None


def dsn_target(url: str) -> str:
    """Where a PostgreSQL URL points, for messages: ``database 'db' on host:5432``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the database (its URL cannot be read)"
    hosts = parts.netloc.rpartition("@")[2] or "localhost (the default socket)"
    query = dict(parse_qsl(parts.query))
    hosts = query.get("host", hosts)
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", "")
    named = f"database {database!r} on " if database else ""
    return f"{named}{hosts}"


#: How long opening a PostgreSQL connection may take when the URL says nothing: a server that
#: accepts the connection but never answers (a hung host, a black-holed port) is reported in
#: seconds, not after asyncpg's minute.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: libpq's ``connect_timeout=0``, "wait indefinitely": a day (asyncpg needs a number).
NO_CONNECT_TIMEOUT = 86400.0


def split_connect_timeout(url: str) -> tuple[str, float]:
    """``url`` without libpq's ``connect_timeout`` parameter, and its value in seconds.

    asyncpg does not know that parameter and would send it to the server as a setting, which
    the server refuses; users copy URLs from libpq tools, so it is honoured here. Missing: the
    default. ``0`` means no limit, as in libpq (NO_CONNECT_TIMEOUT). Raises ValueError for
    anything but a number of seconds, without echoing the URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, DEFAULT_CONNECT_TIMEOUT
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    given = [v for k, v in pairs if k == "connect_timeout"]
    if not given:
        return url, DEFAULT_CONNECT_TIMEOUT
    try:
        seconds = float(given[-1])
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(
            "connect_timeout in RECEIVER_DATABASE_URL must be a number of seconds (0: no limit)"
        )
    query = urlencode([(k, v) for k, v in pairs if k != "connect_timeout"])
    return parts._replace(query=query).geturl(), (seconds or NO_CONNECT_TIMEOUT)
