"""No signed URL's query in any log line, at any level: real downloads, logs captured at DEBUG."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trustme

import submitter
from receiver import redact
from receiver.redact import RedactURLs, redact_text, redact_url
from tests.loopback_tls import LoopbackTransport, client_context, tls_server
from tests.servers import base_url, loopback_socket
from tests.submitter.conftest import sandbox
from tests.submitter.test_api_errors import offline
from tests.support import (
    SECRET,
    Delivery,
    Recorder,
    Sample,
    as_handler,
    eventually,
    ready,
    running_receiver,
    settings_for,
)

PROD = "bfldeliveryprod.blob.core.windows.net"
LEGACY = "bflapistorage.blob.core.windows.net"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://h.example/a/b.jpg?se=1&sig=S", "https://h.example/a/b.jpg?…"),
        ("https://user:pw@h.example:8443/x?sig=S#frag", "https://h.example:8443/x?…"),
        ("http://[::1]:9/x?a=1", "http://[::1]:9/x?…"),
        ("https://h.example/plain.jpg", "https://h.example/plain.jpg"),
        ("https://h.example/x?", "https://h.example/x?…"),
        ("https://[::1/x?sig=S", "https://[::1/x?…"),  # unparsable: still cut at the query
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redact_text_finds_urls_in_any_quoting() -> None:
    line = (
        "HTTP Request: GET https://h/x?sig=A \"HTTP/1.1 302\" [(b'location', "
        "b'https://k/y?se=1&sig=B'), (b'Location', b'/rel?sig=C')] <https://u:p@m/z?sig=D>"
    )
    out = redact_text(line)
    for secret in ("sig=A", "sig=B", "sig=C", "sig=D", "u:p"):
        assert secret not in out
    assert "https://h/x?…" in out
    assert "b'https://k/y?…'" in out


@pytest.fixture
def no_redaction() -> Iterator[None]:
    """Start without the filter, so each test proves its own code path installs it."""

    def strip() -> None:
        for name in [*redact.LOGGERS, *logging.root.manager.loggerDict]:
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, RedactURLs)]:
                logger.removeFilter(f)

    strip()
    yield
    strip()


def test_receiver_download_logs_no_signature(
    no_redaction: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A redirect whose Location is signed too, over TLS: httpx INFO and httpcore DEBUG."""
    secret, hop_secret = "SECRETsig1", "SECREThop2"
    ca = trustme.CA()
    delivery = Delivery()
    target = f"https://{PROD}/results/b.jpg?se=2099-01-01T00%3A00%3A00Z&sig={hop_secret}"
    delivery.add("results/a.jpg", Sample(redirect=target))
    delivery.add("results/b.jpg")
    recorder = Recorder()
    caplog.set_level(logging.DEBUG)
    with tls_server(delivery.app, ca.issue_cert(PROD, LEGACY), tmp_path) as server:
        routes = {PROD: server.port, LEGACY: server.port}
        transport = LoopbackTransport(routes, verify=client_context(ca))
        settings = settings_for(tmp_path)
        with running_receiver(settings, {"r": as_handler(recorder)}, transport=transport) as rx:
            url = f"https://{LEGACY}/results/a.jpg?se=2099-01-01T00%3A00%3A00Z&sp=r&sig={secret}"
            assert rx.post(ready("t1", url)).status_code == 200
            eventually(lambda: len(recorder.seen) == 1)
    assert delivery.hits == ["results/a.jpg", "results/b.jpg"]
    messages = [r.getMessage() for r in caplog.records]
    requests = [m for m in messages if m.startswith("HTTP Request: GET")]
    assert f"HTTP Request: GET https://{LEGACY}/results/a.jpg?… " in requests[0]
    assert any(m.startswith("receive_response_headers.complete") for m in messages)  # DEBUG
    for text in (caplog.text, *messages):
        assert secret not in text
        assert hop_secret not in text


@pytest.mark.anyio
async def test_submitter_download_logs_no_signature(
    no_redaction: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with sandbox(task_seconds=0.1) as api:
        async with submitter.BFL(settings=offline(tmp_path, api)) as bfl:
            result = await bfl.wait(await bfl.generate("flux-dev", "quiet"), interval=0.1)
            await bfl.download(result, tmp_path / "out.jpg")
    assert result.sample is not None
    query = urlsplit(result.sample).query
    raw = query.split("sig=", 1)[1].split("&")[0]
    decoded = parse_qs(query)["sig"][0]
    assert len(decoded) >= 16
    sample_path = urlsplit(result.sample).path
    assert any(sample_path in r.getMessage() for r in caplog.records)  # the download was logged
    for signature in (raw, decoded, decoded[:12]):
        assert signature not in caplog.text
        assert all(signature not in r.getMessage() for r in caplog.records)


def test_the_access_log_of_serve_shows_no_webhook_query(tmp_path: Path) -> None:
    """The webhook URL's query carries the submission's metadata (a chat's interaction token):
    ``bfl-receiver serve`` at info logs each request line with its query elided."""
    sock = loopback_socket()
    url = base_url(sock)
    log_file = tmp_path / "serve.log"
    with log_file.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "receiver.cli", "serve", "--fd", str(sock.fileno())],
            env={
                **os.environ,
                "RECEIVER_WEBHOOK_SECRET": SECRET,
                "RECEIVER_DATABASE_URL": f"sqlite:///{tmp_path}/receiver.db",
                "RECEIVER_STORAGE_URL": f"file://{tmp_path}/samples",
                "RECEIVER_LOG_LEVEL": "info",
                "RECEIVER_HANDLERS": "",
            },
            pass_fds=(sock.fileno(),),
            stdout=out,
            stderr=out,
        )
    try:
        eventually(lambda: _answers(url), timeout=20)
        with httpx.Client(base_url=url, timeout=10) as client:
            client.post(
                "/webhooks/bfl?ref=r1&m=interaction-token-SECRET",
                json={"id": "t1", "status": "Error", "error": "x"},
                headers={"x-webhook-secret": SECRET},
            )
        eventually(lambda: "/webhooks/bfl?…" in log_file.read_text(), timeout=10)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        sock.close()
    text = log_file.read_text()
    assert '"POST /webhooks/bfl?… HTTP/1.1"' in text
    assert "SECRET" not in text
    assert "interaction-token" not in text


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            'POST https://api.telegram.org/bot123456:AAH-x_9/sendPhoto "HTTP/1.1 200 OK"',
            'POST https://api.telegram.org/bot…/sendPhoto "HTTP/1.1 200 OK"',
        ),
        ("http://127.0.0.1:81/bot42:t/getMe?offset=3", "http://127.0.0.1:81/bot…/getMe?…"),
        ("no scheme: /bot42:AbC/deleteMessage failed", "no scheme: /bot…/deleteMessage failed"),
        ("'/bot7:odd+shape=token'/x", "'/bot…'/x"),  # a token of another shape goes whole
        ("/bottles/7:x and /robots.txt", "/bottles/7:x and /robots.txt"),  # not a token
        (  # Discord: an interaction's (or a webhook's) token is the path's last part
            "PATCH https://discord.com/api/v10/webhooks/123/aW50ZXJhY3Rpb24.tok/messages/@original",
            "PATCH https://discord.com/api/v10/webhooks/123/…/messages/@original",
        ),
        (  # Slack: an upload URL's secret is in its path
            'POST https://files.slack.com/upload/v1/CwABAAAAXAoAAZnbXzT "HTTP/1.1 200 OK"',
            'POST https://files.slack.com/upload/v1/… "HTTP/1.1 200 OK"',
        ),
    ],
)
def test_a_platform_token_in_a_path_is_elided(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted


def test_httpx_request_lines_name_no_bot_token(caplog: pytest.LogCaptureFixture) -> None:
    """The INFO line httpx writes for every request, through the installed filter."""
    redact.install()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").info(
        'HTTP Request: %s %s "%s %d %s"',
        "POST",
        "https://api.telegram.org/bot123456:SECRET-token/sendPhoto",
        "HTTP/1.1",
        200,
        "OK",
    )
    assert "SECRET-token" not in caplog.text
    assert "https://api.telegram.org/bot…/sendPhoto" in caplog.text
