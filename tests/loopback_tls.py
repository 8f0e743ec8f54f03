"""Real https for public host names, without leaving the machine.

A test CA (trustme) issues a certificate for, say, ``bfldeliveryprod.blob.core.windows.net``; a
uvicorn server on loopback presents it; ``LoopbackTransport`` sends requests for that name to
the loopback port while keeping the Host header, the TLS SNI and the certificate check on the
name itself, so the client does exactly what it would do against the real host.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trustme
import uvicorn

from tests.servers import ThreadedServer


class TLSServer(ThreadedServer):
    """``ThreadedServer`` presenting ``cert`` (its URL is https)."""

    def __init__(self, app: Any, cert: trustme.LeafCert, workdir: Path) -> None:
        super().__init__(app)
        certfile, keyfile = workdir / "server.pem", workdir / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(certfile))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(certfile), append=True)
        cert.private_key_pem.write_to_path(str(keyfile))
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=5,
            ssl_certfile=str(certfile),
            ssl_keyfile=str(keyfile),
        )
        self.server = uvicorn.Server(config)
        self.url = self.url.replace("http://", "https://", 1)

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port


@contextmanager
def tls_server(app: Any, cert: trustme.LeafCert, workdir: Path) -> Iterator[TLSServer]:
    server = TLSServer(app, cert, workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context trusting the test CA only (with the usual hostname check)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Connects requests for the hosts in ``routes`` to ``127.0.0.1:<port>`` instead.

    The request keeps its Host header, and TLS is negotiated (SNI and certificate check) for
    the original host name. Any other host is refused here, so nothing leaves the machine.
    """

    def __init__(self, routes: Mapping[str, int], *, verify: ssl.SSLContext) -> None:
        self.routes = dict(routes)
        self.inner = httpx.AsyncHTTPTransport(verify=verify)
        self.seen: list[str] = []
        """``scheme://host`` of every request routed."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host not in self.routes:
            raise httpx.ConnectError(f"{host!r} is not routed in this test", request=request)
        self.seen.append(f"{request.url.scheme}://{host}")
        routed = httpx.Request(
            request.method,
            request.url.copy_with(host="127.0.0.1", port=self.routes[host]),
            headers=request.headers,  # Host stays the original name
            stream=request.stream,
            extensions={**request.extensions, "sni_hostname": host},
        )
        return await self.inner.handle_async_request(routed)

    async def aclose(self) -> None:
        await self.inner.aclose()
