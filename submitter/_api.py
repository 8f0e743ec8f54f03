"""Authenticated JSON calls to the BFL API; the key goes to BFL's API hosts and nowhere else."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from receiver.download import host_allowed
from receiver.settings import BFL_API_HOSTS
from submitter._errors import APIStatusError
from submitter._http import Sender
from submitter._settings import Connection


class Api:
    """JSON in, JSON out, errors as BFLErrors, retries per the rules in ``_http``."""

    def __init__(self, sender: Sender, conn: Connection) -> None:
        self.sender = sender
        self.conn = conn
        configured = [conn.base_url, *conn.legacy_urls.values()]
        self.api_hosts = (*BFL_API_HOSTS, *{urlsplit(u).netloc for u in configured})

    def url(self, path: str, region: str | None = None) -> str:
        """``/v1/<path>`` on the configured host, or on a legacy region's host."""
        base = self.conn.base_url if region is None else self.conn.legacy_urls[region]
        return f"{base}/v1/{path}"

    def headers_for(self, url: str) -> dict[str, str]:
        """The key for API hosts only: a polling URL pointing elsewhere never gets it."""
        if host_allowed(url, self.api_hosts):
            return {"x-key": self.conn.api_key.get_secret_value()}
        return {}

    async def get(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.sender.request(
            "GET", url, params=params, headers=self.headers_for(url), idempotent=True
        )
        return _json_object(response.content, response.status_code, url)

    async def post(self, url: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        response = await self.sender.request(
            "POST", url, json=body, headers=self.headers_for(url), idempotent=idempotent
        )
        return _json_object(response.content, response.status_code, url)


def _json_object(content: bytes, status: int, url: str) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        where = urlsplit(url).path
        raise APIStatusError(f"{where}: the answer is not a JSON object", status, None)
    return data
