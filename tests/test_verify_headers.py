"""``verify_headers``: what the headers alone settle, before the body is read."""

from __future__ import annotations

import pytest

from receiver.verify import VerificationError, sign, verify, verify_headers


def test_a_right_secret_header_authenticates_without_the_body() -> None:
    assert verify_headers({"x-webhook-secret": "b"}, ["a", "b"]) is True


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing"),
        ({"x-webhook-secret": "c"}, "wrong"),
        ({"x-webhook-secret": ""}, "wrong"),
        ({"x-webhook-secret": "a" * 10_000}, "wrong"),
    ],
)
def test_a_wrong_or_missing_secret_without_signature_is_refused(
    headers: dict[str, str], reason: str
) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify_headers(headers, ["a", "b"])


def test_no_configured_secret_refuses_everything() -> None:
    with pytest.raises(VerificationError, match="no webhook secret"):
        verify_headers({"x-webhook-secret": ""}, ["", ""])


def test_a_signature_defers_to_the_body() -> None:
    body = b'{"id": "x"}'
    for headers in (
        {"x-bfl-signature": sign(body, "k")},
        {"x-bfl-signature": sign(body, "k"), "x-webhook-secret": "wrong"},
        {"x-bfl-signature": "junk"},
    ):
        assert verify_headers(headers, ["k"]) is False
    verify(body, {"x-bfl-signature": sign(body, "k")}, ["k"])
    with pytest.raises(VerificationError):
        verify(body, {"x-bfl-signature": "junk"}, ["k"])
