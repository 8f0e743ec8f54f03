"""Text from webhooks and handlers, made safe to print.

A task id, an error or a traceback comes from outside (BFL, a sender with the secret, a
handler's exception). Printed as it is, ``[/]`` is rich markup (a crash), ``[green]`` restyles
the output, and an ESC sequence drives the terminal. So the command line prints such text only
as ``rich.text.Text`` (never parsed as markup), with control characters written as escapes, and
its JSON is strict (no ``NaN``, which Python's ``json`` accepts on input but no other parser
does).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rich.text import Text

from receiver.redact import redact_text

#: C0 controls (ESC among them), DEL, C1 controls (0x9b is a one-byte CSI), line and paragraph
#: separators, and the bidirectional overrides and isolates that can make text read backwards.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_BUT_NEWLINE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def literal(value: object, *, multiline: bool = False) -> str:
    """``value`` as text with every control character escaped (``\\x1b``, ``\\n``...).

    With ``multiline`` (tracebacks), newlines and tabs are kept and everything else escaped.
    """
    text = "" if value is None else str(value)
    pattern = _UNSAFE_BUT_NEWLINE if multiline else _UNSAFE
    return pattern.sub(_escape, text)


def plain(value: object, *, multiline: bool = False, style: str = "") -> Text:
    """A rich ``Text`` that prints ``value`` literally (never markup), controls escaped."""
    return Text(literal(value, multiline=multiline), style=style)


def hide_queries(value: Any) -> Any:
    """``value`` with every URL in its strings redacted as in the logs (``receiver.redact``:
    the query, where a signed sample URL keeps its signature, becomes ``?…``), anywhere inside
    dicts and lists."""
    if isinstance(value, str):
        return redact_text(value) if "?" in value or "@" in value else value
    if isinstance(value, dict):
        return {k: hide_queries(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hide_queries(v) for v in value]
    return value


def finite(value: Any) -> Any:
    """``value`` with NaN and ±Infinity (anywhere inside) replaced by None, for strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """Strict JSON: non-finite numbers become null, and non-ASCII is escaped, so the text is
    safe on any terminal and valid for any parser."""
    return json.dumps(finite(value), indent=indent, allow_nan=False, ensure_ascii=True)
