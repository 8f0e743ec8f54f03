"""Checks of the receiver a submit names in its webhook URL, made before anything is sent.

- A real BFL key with a loopback or private ``RECEIVER_PUBLIC_URL`` is refused: BFL's servers
  cannot reach such an address, so every webhook (and the metadata it carries) would be lost.
- A receiver that does not answer ``GET /healthz`` is warned about, once per process, and the
  submit goes ahead: the receiver's reconciler polls what it missed once it runs again.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
from urllib.parse import urlsplit

import httpx

from receiver.settings import BFL_API_HOSTS
from submitter._errors import BFLError
from submitter._settings import Connection, Webhook

log = logging.getLogger("submitter")

#: A health check is one small GET; a receiver slower than this is as good as down for it.
HEALTH_TIMEOUT = 2.0

#: Public URLs already checked by this process, with the warning each produced (or None).
_checked: dict[str, str | None] = {}


class ConfigurationError(BFLError, ValueError):
    """The settings cannot work as they are (nothing was sent)."""


def is_bfl_api(connection: Connection) -> bool:
    """True when requests go to BFL itself (not the sandbox, not another compatible API)."""
    host = urlsplit(connection.base_url).hostname or ""
    return not connection.sandbox and any(fnmatch.fnmatch(host, p) for p in BFL_API_HOSTS)


def unreachable_from_outside(url: str) -> str | None:
    """Why BFL could not reach ``url`` (``"a loopback address"``...), or None if it may."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return "a loopback address"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: only its owner knows where it points
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_private or address.is_link_local:
        return "a private address"
    return None


def refuse_unreachable_webhook(connection: Connection, webhook: Webhook | None) -> None:
    """Raise ConfigurationError when BFL itself would be asked to call an address it cannot.

    The sandbox (and any other API on this machine) reaches loopback fine: no refusal then.
    """
    if webhook is None or not is_bfl_api(connection):
        return
    why = unreachable_from_outside(webhook.url)
    if why is None:
        return
    public = webhook.url.removesuffix("/webhooks/bfl")
    raise ConfigurationError(
        f"RECEIVER_PUBLIC_URL is {public}, {why}: BFL's servers cannot reach it, so no webhook "
        "would ever arrive. Set RECEIVER_PUBLIC_URL to the public https URL of your receiver "
        "(a reverse proxy or a tunnel to it), or submit without webhooks "
        "(bfl-submit --no-webhook, BFL(webhooks=False))."
    )


async def preflight(connection: Connection, webhook: Webhook | None) -> str | None:
    """Both checks, before a client submits anything: refuse, or the warning to show (if any)."""
    if webhook is None:
        return None
    refuse_unreachable_webhook(connection, webhook)
    return await check_receiver(webhook)


async def check_receiver(webhook: Webhook) -> str | None:
    """``GET <public URL>/healthz`` once per process; a warning when the receiver is not there.

    The warning is logged once, and returned (every time) for a CLI to show. Its own small
    client: the API client's transport (retries, test probes) is for BFL, not the receiver.
    """
    public = webhook.url.removesuffix("/webhooks/bfl")
    if public in _checked:
        return _checked[public]
    problem: str | None
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT) as client:
            answer = await client.get(f"{public}/healthz")
    except httpx.HTTPError as exc:
        problem = type(exc).__name__
    else:
        problem = None if answer.status_code == 200 else f"HTTP {answer.status_code}"
    warning = None
    if problem is not None:
        warning = (
            f"the receiver does not answer at RECEIVER_PUBLIC_URL={public} ({problem} from "
            "/healthz): submitting anyway, but its webhooks will fail until it runs "
            "(bfl-receiver serve or make run); its reconciler then polls what it missed"
        )
        log.warning("%s", warning)
    _checked[public] = warning
    return warning
