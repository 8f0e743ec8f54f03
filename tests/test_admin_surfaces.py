"""``/metrics`` behind its own token, and a bound on bodies read before they are authenticated."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from tests.support import eventually, running_receiver, settings_for


def test_metrics_need_their_own_token_when_one_is_set(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, metrics_token="metrics-token-123")
    with running_receiver(settings) as receiver:
        assert receiver.client.get("/metrics").status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert receiver.client.get("/metrics", headers=wrong).status_code == 401
        good = {"authorization": "Bearer metrics-token-123"}
        resp = receiver.client.get("/metrics", headers=good)
        assert resp.status_code == 200
        assert "bfl_hooks_webhooks_total" in resp.text
        # The webhook secret is not the metrics credential, nor the other way round.
        assert receiver.client.get(
            "/metrics", headers={"authorization": "Bearer x"}
        ).is_client_error


def test_metrics_stay_open_without_a_token(tmp_path: Path) -> None:
    with running_receiver(settings_for(tmp_path)) as receiver:
        assert receiver.client.get("/metrics").status_code == 200


def half_sent_signed_body(url: str) -> socket.socket:
    """A request with a junk X-BFL-Signature whose body never finishes: its read is held."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(
        b"POST /webhooks/bfl HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"x-bfl-signature: sha256=00\r\ncontent-length: 100000\r\n\r\n" + b"{" * 10
    )
    return sock


def test_unauthenticated_body_reads_are_bounded(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, max_unverified_reads=2, body_timeout_seconds=30)
    with running_receiver(settings) as receiver:
        held = [half_sent_signed_body(receiver.url) for _ in range(2)]
        try:
            # Once both reads are held, a third signed request is turned away at once.
            def turned_away() -> bool:
                resp = receiver.post(
                    {"id": "x", "status": "Ready"},
                    secret=None,
                    headers={"x-bfl-signature": "sha256=00"},
                )
                return resp.status_code == 503 and resp.headers["retry-after"] == "1"

            eventually(turned_away)
            # A webhook with the secret header is authenticated before its body: never bounded.
            assert receiver.post({"id": "t1", "status": "Error"}).status_code == 200
        finally:
            for sock in held:
                sock.close()
        # Freed: a signed request is read and judged again (a wrong signature: 401).
        eventually(
            lambda: (
                receiver.post(
                    {"id": "x"}, secret=None, headers={"x-bfl-signature": "sha256=00"}
                ).status_code
                == 401
            )
        )
