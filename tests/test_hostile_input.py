"""Bad input over HTTP never gets a 5xx (issue 8, item 9), on both store engines.

Authenticated bodies that used to fail on every retry (a permanent 500): nesting deeper than
the parser's recursion, a number longer than Python converts, NaN, and lone surrogates that no
database can encode. Then a broad hostile-input run: random bodies, headers, content types and
query strings.
"""

from __future__ import annotations

import json
import socket
import string
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.payload import MAX_DEPTH
from receiver.verify import sign
from tests.support import SECRET, Receiver, read_store, running_receiver, settings_for

REPLACEMENT = "\ufffd"


def _nested(depth: int) -> str:
    return '{"id": "deep", "status": "Ready", "x": ' + "[" * depth + "]" * depth + "}"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (_nested(1000), "nesting past the parser's recursion"),
        (_nested(MAX_DEPTH + 5), "nesting past MAX_DEPTH"),
        ('{"id": "big", "status": "Ready", "n": ' + "9" * 5000 + "}", "a 5000-digit number"),
        ('{"id": "nan", "status": "Ready", "n": NaN}', "NaN"),
        ('{"id": "inf", "status": "Ready", "n": -Infinity}', "Infinity"),
        ('{"id": "e999", "status": "Ready", "n": 1e999}', "a float no double holds"),
        ('{"id": "t\\ud800", "status": "Ready"}', "a lone surrogate in the task id"),
        ('{"id": "t\\u0000", "status": "Ready"}', "a NUL in the task id"),
    ],
)
def test_unparseable_bodies_get_400(tmp_path: Path, store_url: str, body: str, why: str) -> None:
    with running_receiver(settings_for(tmp_path, database_url=store_url)) as r:
        resp = r.post(body.encode())
        assert resp.status_code == 400, (why, resp.text)
        assert "error" in resp.json()
        # The receiver is unharmed: the next good webhook is recorded.
        assert r.post({"id": "after", "status": "Pending"}).status_code == 200


def test_nesting_within_the_limit_is_recorded(tmp_path: Path, store_url: str) -> None:
    with running_receiver(settings_for(tmp_path, database_url=store_url)) as r:
        resp = r.post(_nested(MAX_DEPTH - 2).encode())
        assert resp.status_code == 200, resp.text
        resp = r.post(b'{"id": "long", "status": "Pending", "n": ' + b"7" * 4000 + b"}")
        assert resp.status_code == 200, resp.text


def test_lone_surrogates_and_nul_are_recorded_with_replacement_characters(
    tmp_path: Path, store_url: str
) -> None:
    settings = settings_for(tmp_path, database_url=store_url)
    bodies = {
        "s-status": '{"id": "s-status", "status": "Rea\\ud800dy"}',
        "s-error": '{"id": "s-error", "status": "Error", "error": "bad \\udc00 thing"}',
        "s-sample": '{"id": "s-sample", "status": "Ready", "result": {"sample": "http://x/\\udbff"}}',
        "s-key": '{"id": "s-key", "status": "Pending", "\\ud800": {"\\udfff": ["\\ud834"]}}',
        "nul": '{"id": "nul", "status": "Er\\u0000ror", "error": "a\\u0000b"}',
        # A proper pair is one character and stays as it is.
        "pair": '{"id": "pair", "status": "Pending", "error": "\\ud83d\\ude00"}',
    }
    with running_receiver(settings) as r:
        for task_id, body in bodies.items():
            resp = r.post(body.encode())
            assert resp.status_code == 200, (task_id, resp.text)
            assert resp.json()["task_id"] == task_id
            # BFL retries what is not acknowledged; a retry is now a duplicate, not a 500.
            assert r.post(body.encode()).status_code == 200

    def load(task_id: str) -> Any:
        return read_store(settings, lambda s: s.get_event(task_id))

    assert REPLACEMENT in load("s-status").raw_status
    assert load("s-error").error == f"bad {REPLACEMENT} thing"
    assert load("s-sample").sample_url == f"http://x/{REPLACEMENT}"
    assert load("s-sample").payload["result"]["sample"] == f"http://x/{REPLACEMENT}"
    assert load("s-key").payload[REPLACEMENT] == {REPLACEMENT: [REPLACEMENT]}
    assert load("pair").error == "\U0001f600"
    assert load("pair").payload["error"] == "\U0001f600"
    nul = load("nul")
    assert nul.payload["error"] == "a\x00b"  # the JSON keeps it, as received
    assert nul.error in ("a\x00b", f"a{REPLACEMENT}b")  # PostgreSQL text cannot hold NUL


@pytest.mark.parametrize(
    "query", ["ref=%00", "ref=a%00b", "ref=%0a", "ref=" + "a" * 300, "ref=%ff%fe", "ref=&ref=x"]
)
def test_odd_references_never_get_a_5xx(tmp_path: Path, store_url: str, query: str) -> None:
    with running_receiver(settings_for(tmp_path, database_url=store_url)) as r:
        resp = r.client.post(
            "/webhooks/bfl?" + query,
            content=b'{"id": "t1", "status": "Pending"}',
            headers={"x-webhook-secret": SECRET},
        )
        assert resp.status_code in (200, 400), resp.text
        if "%0" in query or "a" * 300 in query:
            assert resp.status_code == 400


def test_huge_and_odd_headers_are_refused_without_a_5xx(tmp_path: Path) -> None:
    with running_receiver(settings_for(tmp_path)) as r:
        # h11 takes what arrives in one read, and refuses an incomplete head over 16 KiB.
        huge = r.post({"id": "h", "status": "Pending"}, headers={"x-pad": "a" * 70_000})
        assert huge.status_code < 500
        many = {f"x-h{i}": "v" * 100 for i in range(300)}
        assert r.post({"id": "m", "status": "Pending"}, headers=many).status_code < 500
        # A Latin-1 secret (not ASCII), and a Content-Length that is not a number.
        odd = r.client.post(
            "/webhooks/bfl", content=b"{}", headers={b"x-webhook-secret": b"caf\xe9"}
        )
        assert odd.status_code == 401
        host, port = r.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(
                b"POST /webhooks/bfl HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n"
                b"X-Webhook-Secret: " + SECRET.encode() + b"\r\n\r\n{}"
            )
            assert raw.recv(100).startswith(b"HTTP/1.1 400")
        assert r.post({"id": "ok", "status": "Pending"}).status_code == 200


# Hypothesis: JSON-like values with every kind of string (surrogates included), numbers past
# what a float holds, deep-ish nesting; bodies that are that, or bytes, or truncated JSON.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_ids = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=30)
_shaped = st.fixed_dictionaries(
    {"id": _ids | st.text(max_size=30) | st.integers() | _json, "status": _json},
    optional={"result": st.fixed_dictionaries({"sample": _json}) | _json, "error": _json},
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    choice = draw(st.sampled_from(["good", "shaped", "json", "bytes", "cut", "huge_int"]))
    if choice == "good":  # what BFL sends, with hostile values where they go
        result = {"sample": draw(_json | st.text()), "seed": draw(_json)}
        good = {"id": draw(_ids), "status": draw(st.sampled_from(["Ready", "Error"]) | _json)}
        return json.dumps({**good, "result": result, "error": draw(_json)}).encode()
    if choice == "shaped":
        return json.dumps(draw(_shaped)).encode()
    if choice == "json":
        return json.dumps(draw(_json)).encode()
    if choice == "bytes":
        return draw(st.binary(max_size=512))
    if choice == "huge_int":
        return b'{"id": "n", "status": "Ready", "n": ' + b"1" * draw(st.integers(1, 9000)) + b"}"
    text = json.dumps(draw(_shaped)).encode()
    return text[: draw(st.integers(0, len(text)))]


_query_parts = ["ref=", "%00", "%ff", "%", "&", "=", "a", "%0a", "%ud800", "+", "%2525", "ref"]
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
_content_types = st.sampled_from(
    ["application/json", "text/plain", "application/x-www-form-urlencoded", "", "*/*; x=\x7f"]
)


@given(
    body=_bodies(),
    content_type=_content_types,
    query=st.text(string.printable.strip() + "%é", max_size=40)
    | st.lists(st.sampled_from(_query_parts), max_size=8).map(lambda p: "ref=" + "".join(p)),
    auth=st.sampled_from(["secret", "secret", "signature", "wrong", "none", "junk_signature"]),
    junk=_header_text,
)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_random_hostile_webhooks_never_get_a_5xx(
    hostile_receiver: Receiver, body: bytes, content_type: str, query: str, auth: str, junk: str
) -> None:
    headers = {"content-type": content_type, "x-junk": junk}
    if auth == "secret":
        headers["x-webhook-secret"] = SECRET
    elif auth == "signature":
        headers["x-bfl-signature"] = sign(body, SECRET)
    elif auth == "wrong":
        headers["x-webhook-secret"] = junk
    elif auth == "junk_signature":
        headers["x-bfl-signature"] = junk
    try:
        resp = hostile_receiver.client.post("/webhooks/bfl?" + query, content=body, headers=headers)
    except httpx.LocalProtocolError:
        return  # httpx itself would not send it: nothing reached the receiver
    assert resp.status_code < 500, (resp.status_code, resp.text, body[:200])
    if auth in ("wrong", "none", "junk_signature") and junk != SECRET:
        assert resp.status_code == 401


@pytest.fixture
def hostile_receiver(tmp_path: Path, store_url: str) -> Any:
    with running_receiver(settings_for(tmp_path, database_url=store_url)) as r:
        yield r
