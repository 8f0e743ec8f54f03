"""Keep signed URLs' queries out of logs.

A BFL sample URL is a bearer credential until it expires: its query (``se=…&sig=…``) is the
signature. httpx logs every request URL at INFO, and httpcore's DEBUG trace prints response
headers, among them a redirect's ``Location``. ``install()`` puts a filter on those loggers that
rewrites every URL in a record to ``scheme://host/path?…`` before any handler sees it.

A Telegram bot token travels in the URL's *path* (``/bot123456:ABC…/sendPhoto``), so a path
segment ``bot<digits>:<token>`` is elided too, to ``/bot…``, in URLs and in bare paths alike.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

#: The loggers httpx and httpcore write to. A logger's filters see only the records logged on it
#: (not on its children), so each one gets the filter; ``install`` adds any other ``httpcore.*``
#: that exists by then.
LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
ELIDED = "?…"
ACCESS_LOGGER = "uvicorn.access"

# An absolute URL up to a quote, a space or an angle bracket (how URLs end in log lines).
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.-]*://[^\s'"<>]+""")
# A query left without a scheme and host (a relative redirect, ``/x?se=…&sig=…``).
_QUERY = re.compile(r"""\?[^\s'"<>?]*=[^\s'"<>]*""")
# A Telegram Bot API token in a path: ``/bot<bot id>:<secret>`` (the secret is [A-Za-z0-9_-];
# anything up to the next separator goes, so a token of another shape is elided whole).
_BOT_TOKEN = re.compile(r"""/bot\d+:[^/\s'"<>?#]*""")
BOT_TOKEN_ELIDED = "/bot…"  # noqa: S105 - what replaces a token, not one
#: Other credentials that platforms put in a URL's path, not its query: Discord's
#: ``/webhooks/<id>/<token>`` (an interaction's token for 15 minutes, a webhook's for ever) and
#: Slack's upload URLs, ``files.slack.com/upload/v1/<secret>``.
_SECRET_PATHS = (
    (_BOT_TOKEN, BOT_TOKEN_ELIDED),
    (re.compile(r"""(/webhooks/\d+/)[^/\s?#'"<>]+"""), r"\1…"),
    (re.compile(r"""(/upload/v1/)[^\s?#'"<>]+"""), r"\1…"),
)


def redact_paths(text: str) -> str:
    """``text`` with every credential a platform keeps in a URL path elided (see above)."""
    for pattern, elided in _SECRET_PATHS:
        text = pattern.sub(elided, text)
    return text


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``, with ``?…`` for a query and without userinfo or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return redact_paths(url.split("?", 1)[0].split("#", 1)[0]) + ELIDED
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    tail = ELIDED if parts.query or "?" in url else ""
    path = redact_paths(parts.path)
    return f"{parts.scheme}://{netloc}{path}{tail}"


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted, any bare ``?key=value`` query elided, and any
    credential in a path (``/bot<token>``, ``/webhooks/<id>/<token>``...) elided, inside a URL
    or not."""
    text = _QUERY.sub(ELIDED, _URL.sub(lambda m: redact_url(m.group(0)), text))
    return redact_paths(text)


class RedactURLs(logging.Filter):
    """Rewrites a record's message so no URL query or userinfo in it reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


class AccessQueries(logging.Filter):
    """Elides the query of the request line in uvicorn's access log.

    The webhook URL's query carries the correlation (``?ref=…&m=…``): the submission's
    metadata, which may hold a chat's interaction token. uvicorn's access formatter reads the
    path from ``record.args`` (client, method, path, version, status), so the path is rewritten
    there and the message left as it is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path = args[2]
            if "?" in path:
                record.args = (args[0], args[1], path.split("?", 1)[0] + ELIDED, *args[3:])
        return True


def install() -> None:
    """Put ``RedactURLs`` on httpx's and httpcore's loggers, and ``AccessQueries`` on uvicorn's
    access log (once; calling again is harmless)."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessQueries) for f in access.filters):
        access.addFilter(AccessQueries())
    names = set(LOGGERS) | {
        name for name in logging.root.manager.loggerDict if name.startswith("httpcore.")
    }
    for name in sorted(names):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactURLs) for f in logger.filters):
            logger.addFilter(RedactURLs())
