"""Metadata in the webhook URL, bound to the per-task secret: the pure functions, and a real
receiver refusing every forgery (on SQLite and PostgreSQL where the store decides)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.correlation import (
    MAX_METADATA_BYTES,
    MAX_WEBHOOK_URL,
    CorrelationError,
    MetadataError,
    MetadataTooLarge,
    correlate,
    decode_metadata,
    encode_metadata,
    metadata_bytes,
    webhook_link,
)
from receiver.verify import derive_bound_secret, derive_secret
from tests.support import SECRET, Receiver, Recorder, as_handler, eventually, running_receiver
from tests.support import settings_for as receiver_settings

BASE = "http://127.0.0.1:9/webhooks/bfl"


# -- the pure part ---------------------------------------------------------------------------


def test_metadata_round_trips_through_the_url() -> None:
    meta = {"chat_id": 42, "name": "Zoë", "nested": {"a": [1, 2.5, None, True]}}
    data = metadata_bytes(meta)
    assert data == '{"chat_id":42,"name":"Zoë","nested":{"a":[1,2.5,null,true]}}'.encode()
    assert decode_metadata(encode_metadata(data)) == (data, meta)
    link = webhook_link(BASE, SECRET, "r1", meta)
    assert link.url == f"{BASE}?ref=r1&m={encode_metadata(data)}"
    assert link.secret == derive_bound_secret(SECRET, "r1", data)


def test_the_bound_secret_changes_with_ref_metadata_and_master() -> None:
    base = derive_bound_secret("master", "r1", b"{}")
    assert derive_bound_secret("master", "r2", b"{}") != base
    assert derive_bound_secret("master", "r1", b'{"a":1}') != base
    assert derive_bound_secret("other", "r1", b"{}") != base
    # Domain separation: never the reference-only secret, for any reference.
    assert base != derive_secret("master", "r1")
    assert "master" not in base


def test_the_size_limit_is_what_fits_with_a_674_character_public_url() -> None:
    # 1024 bytes of compact JSON ({"k":""} is 8 of them), with a 674-character public URL.
    biggest = {"k": "x" * (MAX_METADATA_BYTES - len('{"k":""}'))}
    assert len(metadata_bytes(biggest)) == MAX_METADATA_BYTES
    public = "https://" + "h" * (674 - len("https://"))
    ref = "r" * 22  # secrets.token_urlsafe(16)
    link = webhook_link(public + "/webhooks/bfl", SECRET, ref, biggest)
    assert len(link.url) == MAX_WEBHOOK_URL
    with pytest.raises(MetadataTooLarge) as too_big:
        webhook_link(BASE, SECRET, ref, {"k": "x" * (MAX_METADATA_BYTES - 7)})
    assert (too_big.value.size, too_big.value.limit) == (MAX_METADATA_BYTES + 1, 1024)
    assert "1025 bytes" in str(too_big.value)
    assert "at most 1024" in str(too_big.value)
    # Multi-byte characters count as their UTF-8 bytes.
    with pytest.raises(MetadataTooLarge):
        webhook_link(BASE, SECRET, ref, {"k": "é" * 520})
    # A public URL too long for even the limit is refused before sending as well.
    with pytest.raises(CorrelationError, match="over BFL's 2083"):
        webhook_link(public + "x/webhooks/bfl", SECRET, ref, biggest)


@pytest.mark.parametrize("text", ["nul\x00", "lone \ud800"], ids=["nul", "surrogate"])
def test_text_no_store_can_keep_is_refused_both_ways(text: str) -> None:
    with pytest.raises(MetadataError):
        webhook_link(BASE, SECRET, "r1", {"deep": [{"k": text}]})
    with pytest.raises(MetadataError):
        webhook_link(BASE, SECRET, "r1", {text: 1})
    # A URL crafted with the escape (no submitter makes one) does not decode either.
    crafted = encode_metadata(json.dumps({"k": text}).encode())
    with pytest.raises(CorrelationError, match=r"no store keeps|not valid Unicode"):
        decode_metadata(crafted)


@pytest.mark.parametrize(
    "m",
    ["not base64!", "e30=", "bm90IGpzb24", "WzEsMl0", "x" * 5000, "gA"],
    ids=["alphabet", "padding", "not-json", "not-an-object", "too-long", "not-utf8"],
)
def test_malformed_metadata_is_refused_with_only_the_shared_secret_accepted(m: str) -> None:
    with pytest.raises(CorrelationError):
        decode_metadata(m)
    link = correlate("r1", m, [SECRET])
    assert link.error is not None
    assert link.secrets == [SECRET]
    assert link.metadata is None


def test_which_secrets_each_url_shape_accepts() -> None:
    masters = [SECRET, "older"]
    assert correlate(None, None, masters).secrets == masters
    legacy = correlate("r1", None, masters)
    assert legacy.secrets == [*masters, derive_secret(SECRET, "r1"), derive_secret("older", "r1")]
    bound = correlate("r1", "e30", masters)  # {}
    assert bound.metadata == {}
    assert derive_secret(SECRET, "r1") not in bound.secrets  # binds no metadata
    assert derive_bound_secret("older", "r1", b"{}") in bound.secrets
    shared = correlate(None, "e30", masters)
    assert shared.secrets == masters


# -- through a real receiver -------------------------------------------------------------------


def post(r: Receiver, query: str, task_id: str, secret: str) -> httpx.Response:
    return r.client.post(
        f"/webhooks/bfl?{query}",
        json={"id": task_id, "status": "Error"},
        headers={"x-webhook-secret": secret},
    )


def link_parts(ref: str, meta: dict[str, Any]) -> tuple[str, str]:
    link = webhook_link(BASE, SECRET, ref, meta)
    return link.url.split("?", 1)[1], link.secret


def test_url_metadata_reaches_the_handler_with_nothing_in_the_store(tmp_path: Path) -> None:
    recorder = Recorder()
    query, secret = link_parts("bot-ref", {"chat_id": 42})
    with running_receiver(receiver_settings(tmp_path), {"rec": as_handler(recorder)}) as r:
        assert post(r, query, "t1", secret).status_code == 200
        eventually(lambda: len(recorder.events) == 1)
        assert r.metric("bfl_hooks_webhooks_uncorrelated_total") == 0
    assert recorder.events[0].metadata == {"chat_id": 42}


def test_every_forgery_of_the_url_or_a_leaked_secret_is_refused(
    store_url: str, tmp_path: Path
) -> None:
    recorder = Recorder()
    query, secret = link_parts("r1", {"chat_id": 1})
    other_query, _ = link_parts("r1", {"chat_id": 666})
    swapped_query, _ = link_parts("r2", {"chat_id": 1})
    settings = receiver_settings(tmp_path, database_url=store_url)
    with running_receiver(settings, {"rec": as_handler(recorder)}) as r:
        # The leaked secret with other metadata, another reference, no metadata, or m edited.
        assert post(r, other_query, "t1", secret).status_code == 401
        assert post(r, swapped_query, "t1", secret).status_code == 401
        assert post(r, "ref=r1", "t1", secret).status_code == 401
        assert post(r, query[:-2] + "xx", "t1", secret).status_code == 401
        # The reference-only secret never vouches for metadata.
        assert post(r, query, "t1", derive_secret(SECRET, "r1")).status_code == 401
        assert r.metric("bfl_hooks_webhooks_total", outcome="unauthorized") == 5
        # The real one, then the leaked secret reused for another task: 401.
        assert post(r, query, "t1", secret).status_code == 200
        assert post(r, query, "t2", secret).status_code == 401
        assert post(r, query, "t1", secret).json()["outcome"] == "duplicate"
        eventually(lambda: len(recorder.events) == 1)
    assert [(e.task_id, e.metadata) for e in recorder.events] == [("t1", {"chat_id": 1})]


def test_a_reference_only_secret_authenticates_one_task_while_unknown(
    store_url: str, tmp_path: Path
) -> None:
    # Issue 8 item 8: HMAC(master, ref) with ?ref=never-submitted, three task ids.
    secret = derive_secret(SECRET, "never-submitted")
    settings = receiver_settings(tmp_path, database_url=store_url)
    with running_receiver(settings) as r:
        codes = [post(r, "ref=never-submitted", t, secret).status_code for t in ("a", "b", "c")]
        assert codes == [200, 401, 401]
        assert post(r, "ref=never-submitted", "a", secret).status_code == 200  # its repeats


def test_malformed_metadata_with_the_shared_secret_is_a_400(tmp_path: Path) -> None:
    with running_receiver(receiver_settings(tmp_path)) as r:
        assert post(r, "ref=r1&m=%21%21", "t1", SECRET).status_code == 400
        assert post(r, "ref=r1&m=%21%21", "t1", "wrong").status_code == 401


def test_an_unknown_reference_without_metadata_is_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = derive_secret(SECRET, "lost-ref")
    with (
        caplog.at_level(logging.WARNING, logger="receiver"),
        running_receiver(receiver_settings(tmp_path)) as r,
    ):
        assert post(r, "ref=lost-ref", "t1", secret).status_code == 200
        assert post(r, "ref=lost-ref", "t1", secret).status_code == 200  # a duplicate
        assert r.metric("bfl_hooks_webhooks_uncorrelated_total") == 1
        # A known reference, or metadata in the URL, is not counted.
        query, bound = link_parts("with-meta", {"x": 1})
        assert post(r, query, "t2", bound).status_code == 200
        assert r.metric("bfl_hooks_webhooks_uncorrelated_total") == 1
    lines = [m for m in caplog.messages if "no submission in this store knows" in m]
    assert len(lines) == 1
    assert "lost-ref" in lines[0]
    assert "t1" in lines[0]
    assert SECRET not in caplog.text
    assert secret not in caplog.text
