"""BFL's real delivery hosts, over real https, served on loopback; and what is refused.

Samples on ``bfldeliveryprod.blob.core.windows.net`` and ``bflapistorage.blob.core.windows.net``
are fetched by a receiver with default settings through ``LoopbackTransport``: TLS is checked
against those names (a test CA issued the certificate), and no traffic leaves the machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import trustme

from receiver import Settings
from receiver.download import Downloaded, DownloadError, HostRefused, fetch_sample
from receiver.settings import BFL_DELIVERY_HOSTS
from tests.loopback_tls import LoopbackTransport, TLSServer, client_context, tls_server
from tests.support import (
    Delivery,
    Recorder,
    Sample,
    as_handler,
    eventually,
    jpeg_bytes,
    ready,
    running_receiver,
    settings_for,
)

PROD = "bfldeliveryprod.blob.core.windows.net"
LEGACY = "bflapistorage.blob.core.windows.net"
SECRET_SIG = "SECRETsig0123"
LOOKALIKES = [
    "evil.blob.core.windows.net",
    f"{PROD}.evil.com",
    f"x{PROD}",
    "bfldeliveryprod-blob.core.windows.net",
    f"{PROD}%2eevil.com",
]


def signed(host: str, path: str, scheme: str = "https") -> str:
    """A BFL-style signed URL: ``se=`` (expiry) and a ``sig=`` that must never show."""
    expiry = datetime.fromtimestamp(time.time() + 600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{scheme}://{host}/{path}?se={expiry}&sp=r&sv=2024-11-04&sr=b&sig={SECRET_SIG}"


@dataclass
class Hosts:
    """One loopback https server answering for BFL's delivery names (and the lookalikes)."""

    delivery: Delivery
    server: TLSServer
    transport: LoopbackTransport


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    ca = trustme.CA()
    names = [PROD, LEGACY, *(h for h in LOOKALIKES if "%" not in h)]
    delivery = Delivery()
    with tls_server(delivery.app, ca.issue_cert(*names), tmp_path) as server:
        delivery.url = server.url
        routes = dict.fromkeys(names, server.port)
        transport = LoopbackTransport(routes, verify=client_context(ca))
        yield Hosts(delivery, server, transport)


def fetch(transport: httpx.AsyncBaseTransport, url: str, staging: Path) -> Downloaded:
    """``fetch_sample`` with the default allowlist, through ``transport``."""
    staging.mkdir(exist_ok=True)

    async def run() -> Downloaded:
        async with httpx.AsyncClient(transport=transport) as client:
            return await fetch_sample(
                client,
                url,
                allowed_hosts=BFL_DELIVERY_HOSTS,
                max_bytes=1024 * 1024,
                staging_dir=staging,
                deadline=time.time() + 60,
            )

    return asyncio.run(run())


def test_the_defaults_name_bfls_azure_hosts_exactly_and_https_only() -> None:
    defaults = Settings(_env_file=None).sample_hosts  # type: ignore[call-arg]
    assert f"https://{PROD}" in defaults
    assert f"https://{LEGACY}" in defaults
    assert all(entry.startswith("https://") for entry in defaults)
    assert not any("blob.core.windows.net" in e and "*" in e for e in defaults)


@pytest.mark.parametrize("host", [PROD, LEGACY])
def test_a_sample_on_a_default_host_is_fetched_over_https(
    hosts: Hosts, tmp_path: Path, host: str
) -> None:
    image = jpeg_bytes(color="green")
    hosts.delivery.add("results/abc/sample.jpg", Sample(body=image))
    recorder = Recorder()
    settings = settings_for(tmp_path)  # default RECEIVER_SAMPLE_HOSTS
    with running_receiver(
        settings, {"rec": as_handler(recorder)}, transport=hosts.transport
    ) as receiver:
        url = signed(host, "results/abc/sample.jpg")
        assert receiver.post(ready("t1", url)).status_code == 200
        eventually(lambda: len(recorder.seen) == 1)
    assert recorder.images == [image]
    assert hosts.transport.seen == [f"https://{host}"]
    assert hosts.delivery.hits == ["results/abc/sample.jpg"]


def test_the_certificate_is_checked_against_the_delivery_name(tmp_path: Path) -> None:
    """Proves the https above is real: a certificate for another name fails the handshake."""
    ca = trustme.CA()
    delivery = Delivery()
    delivery.samples["x.jpg"] = Sample()
    with tls_server(delivery.app, ca.issue_cert("other.example"), tmp_path) as server:
        transport = LoopbackTransport({PROD: server.port}, verify=client_context(ca))
        with pytest.raises(DownloadError, match="transport error: ConnectError"):
            fetch(transport, signed(PROD, "x.jpg"), tmp_path / "staging")
    assert transport.seen == [f"https://{PROD}"]
    assert delivery.hits == []


@pytest.mark.parametrize("host", [PROD, LEGACY])
def test_plain_http_to_a_default_host_is_refused(hosts: Hosts, tmp_path: Path, host: str) -> None:
    hosts.delivery.add("x.jpg")
    with pytest.raises(HostRefused) as caught:
        fetch(hosts.transport, signed(host, "x.jpg", scheme="http"), tmp_path / "staging")
    assert caught.value.host == host
    assert caught.value.reason == (
        f"sample host '{host}' is allowed over https only (see RECEIVER_SAMPLE_HOSTS)"
    )
    assert hosts.transport.seen == []  # refused before any connection


@pytest.mark.parametrize("host", LOOKALIKES)
def test_lookalike_hosts_are_refused_naming_host_and_setting(
    hosts: Hosts, tmp_path: Path, host: str
) -> None:
    with pytest.raises(HostRefused) as caught:
        fetch(hosts.transport, signed(host, "results/x.jpg"), tmp_path / "staging")
    assert caught.value.host == host.lower()
    assert caught.value.reason == f"sample host '{host.lower()}' is not in RECEIVER_SAMPLE_HOSTS"
    assert not caught.value.transient
    assert SECRET_SIG not in str(caught.value)
    assert hosts.transport.seen == []


@pytest.mark.parametrize(
    ("url", "host"),
    [
        (f"https://{PROD}@evil.blob.core.windows.net/x.jpg", "evil.blob.core.windows.net"),
        (f"https://evil.com@{PROD}/x.jpg", PROD),
        (f"https://u:p@{PROD}/x.jpg", PROD),
        (f"https://{PROD}:443@evil.com/x.jpg", "evil.com"),
    ],
)
def test_userinfo_tricks_are_refused(hosts: Hosts, tmp_path: Path, url: str, host: str) -> None:
    with pytest.raises(HostRefused) as caught:
        fetch(hosts.transport, url + f"?sig={SECRET_SIG}", tmp_path / "staging")
    assert caught.value.host == host
    # Named by its host alone: the userinfo may be a password.
    assert caught.value.reason == f"sample URL for '{host}' carries credentials (user@host)"
    assert hosts.transport.seen == []


def test_a_redirect_to_a_refused_host_names_that_host(hosts: Hosts, tmp_path: Path) -> None:
    evil = "evil.blob.core.windows.net"
    hosts.delivery.add("x.jpg", Sample(redirect=signed(evil, "stolen.jpg")))
    with pytest.raises(HostRefused) as caught:
        fetch(hosts.transport, signed(PROD, "x.jpg"), tmp_path / "staging")
    assert caught.value.host == evil
    assert SECRET_SIG not in str(caught.value)
    assert hosts.transport.seen == [f"https://{PROD}"]  # the evil host was never contacted
