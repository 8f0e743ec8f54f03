"""Slack's Web API, as the Slack handler (``receiver.integrations.slack``) calls it: its
settings, its answers sorted into what the worker should do, and the upload to the URL Slack
hands out, which is only posted to when its host is allowed.

Every method answers HTTP 200 with ``{"ok": true, …}`` or ``{"ok": false, "error": "…"}``;
a rate limit is HTTP 429 with ``Retry-After`` (seconds) (docs.slack.dev, "Rate limits").
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from receiver import handlers
from receiver.download import host_allowed
from receiver.handlers import PermanentError, RateLimited
from receiver.integrations.common import IntegrationSettings, LoopClients, settings_from_env
from receiver.integrations.forward import retry_after
from receiver.integrations.pacing import Pacer
from receiver.redact import redact_text
from receiver.settings import CommaList, split_commas

DEFAULT_API_URL = "https://slack.com/api/"
#: Where Slack's upload URLs point (``https://files.slack.com/upload/v1/…``).
DEFAULT_UPLOAD_HOSTS = ("https://files.slack.com",)
#: How much of Slack's error code goes into the job's error (they are short snake_case words).
MAX_ERROR_CHARS = 80

#: Slack errors no retry can fix: the bot, its token or the channel must change first.
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "channel_is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "not_allowed_token_type",
        "ekm_access_denied",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "team_access_not_granted",
        "org_login_required",
        "access_denied",
        "file_uploads_disabled",
        "file_upload_size_restricted",
        "file_type_not_allowed",
        "invalid_arguments",
        "invalid_thread_ts",
        "thread_not_found",
        "msg_too_long",
        "alt_txt_too_large",
    }
)
#: The progress message is already gone or not the bot's to change: not fatal.
PROGRESS_GONE = frozenset(
    {"message_not_found", "cant_update_message", "cant_delete_message", "edit_window_closed"}
)

__all__ = [
    "DEFAULT_API_URL",
    "PERMANENT_ERRORS",
    "PROGRESS_GONE",
    "SlackApiError",
    "SlackConfigError",
    "SlackError",
    "SlackPermanentError",
    "SlackRetryLater",
    "SlackSettings",
    "SlackWebApi",
    "load_settings",
]


class SlackError(Exception):
    """A Slack call failed, and a later try may succeed: the worker retries it."""


class SlackApiError(SlackError):
    """Slack answered ``ok: false`` with ``error`` (not one known to be permanent)."""

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


class SlackRetryLater(SlackError, handlers.RetryLater):
    """Slack answered a 5xx; ``retry_after`` is its ``Retry-After`` when it sent one."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        handlers.RetryLater.__init__(self, message, retry_after)


class SlackPermanentError(PermanentError):
    """Slack refused for a reason no retry fixes (``channel_not_found``, ``invalid_auth``…)."""

    def __init__(self, message: str, error: str | None = None) -> None:
        super().__init__(message)
        self.error = error


class SlackConfigError(PermanentError):
    """``SLACK_*`` settings are missing or invalid; no retry until they are fixed."""


class SlackSettings(IntegrationSettings):
    """How to reach Slack: ``SLACK_*`` variables (or the ``.env`` found upward)."""

    model_config = SettingsConfigDict(env_prefix="SLACK_")

    bot_token: SecretStr | None = None
    """The bot's token (``xoxb-…``); required when the handler runs."""

    api_url: str = DEFAULT_API_URL
    """Slack's Web API base URL (another for a proxy or the tests' fake)."""

    upload_hosts: CommaList = ()
    """More hosts Slack's upload URLs may point to, besides files.slack.com and the host of
    ``SLACK_API_URL`` (same syntax as ``RECEIVER_SAMPLE_HOSTS``)."""

    timeout_seconds: float = Field(default=30.0, gt=0)
    """For each request to Slack (connect, send, answer)."""

    @field_validator("upload_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("api_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value if value.endswith("/") else value + "/"

    @property
    def allowed_upload_hosts(self) -> tuple[str, ...]:
        """Where an upload URL may point: files.slack.com, the API's host, and any added."""
        api = urlsplit(self.api_url)
        own = f"https://{api.netloc}" if api.scheme == "https" else api.netloc
        return (*DEFAULT_UPLOAD_HOSTS, own, *self.upload_hosts)


def load_settings() -> SlackSettings:
    """``SlackSettings`` from the environment, or a ``SlackConfigError`` saying what is wrong
    (never showing the token)."""
    return settings_from_env(SlackSettings, SlackConfigError)


def _safe_error(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    text = error if isinstance(error, str) else "unknown_error"
    return "".join(ch for ch in text if ch.isalnum() or ch in "_-.")[:MAX_ERROR_CHARS] or "?"


class SlackWebApi:
    """Slack's Web API as the handler uses it: settings read once, one HTTP client per event
    loop, one pace per channel (``SlackSender`` adds what is sent when)."""

    def __init__(
        self,
        settings: SlackSettings | None = None,
        *,
        pacer: Pacer | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self.pacer = pacer or Pacer(1.0)
        self._clients: LoopClients | None = None
        self._transport = transport

    @property
    def settings(self) -> SlackSettings:
        """The settings in use, read from the environment on first use."""
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _client(self) -> httpx.AsyncClient:
        if self._clients is None:
            self._clients = LoopClients(
                timeout=self.settings.timeout_seconds,
                follow_redirects=False,  # the token must not follow a redirect elsewhere
                transport=self._transport,
            )
        return self._clients.get()

    def _token(self) -> str:
        token = self.settings.bot_token
        if token is None or not token.get_secret_value().strip():
            raise SlackConfigError(
                "SLACK_BOT_TOKEN is not set: receiver.integrations.slack:send needs the bot's "
                "token (xoxb-…); set it, restart, then bfl-receiver replay --dead"
            )
        return token.get_secret_value().strip()

    def _answer_status(self, what: str, response: httpx.Response, key: str) -> None:
        """Raise for a 429, a 5xx or any other non-200 answer."""
        status = response.status_code
        if status == 200:
            return
        wait = retry_after(response.headers.get("retry-after"), time.time())
        if status == 429:
            wait = 1.0 if wait is None else wait
            self.pacer.hold(key, wait)
            raise RateLimited(f"Slack {what}: rate limited (429), Retry-After {wait:g} s", wait)
        asked = f", Retry-After {wait:g} s" if wait is not None else ""
        if status >= 500:
            raise SlackRetryLater(f"Slack {what}: {status} {response.reason_phrase}{asked}", wait)
        raise SlackError(f"Slack {what}: HTTP {status} {response.reason_phrase}".rstrip())

    async def call(self, method: str, fields: dict[str, str], key: str) -> dict[str, Any]:
        """POST ``method`` (form-encoded, which every Web API method takes) and return its
        answer when ``ok``; otherwise raise as ``receiver.integrations.slack`` describes."""
        url = f"{self.settings.api_url}{method}"
        headers = {"authorization": f"Bearer {self._token()}"}
        try:
            response = await self._client().post(url, data=fields, headers=headers)
        except httpx.HTTPError as exc:
            # httpx's text may name the URL: with any query elided, as the logs do.
            raise SlackError(
                f"Slack {method}: {type(exc).__name__}: {redact_text(str(exc))}"
            ) from None
        self._answer_status(method, response, key)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise SlackError(f"Slack {method}: the answer is not a JSON object")
        if answer.get("ok") is True:
            return answer
        error = _safe_error(answer)
        if error in PERMANENT_ERRORS:
            raise SlackPermanentError(f"Slack {method}: {error}", error)
        raise SlackApiError(f"Slack {method}: {error}", error)

    async def upload(self, upload_url: str, data: bytes, key: str) -> None:
        """POST the bytes to the URL Slack handed out, if its host is allowed; without the
        token (the URL is its own credential)."""
        try:
            host = (urlsplit(upload_url).netloc.rpartition("@")[2] or "?")[:100]
        except ValueError:  # not even a URL: refused below, by its (lack of a) host
            host = "?"
        if not host_allowed(upload_url, self.settings.allowed_upload_hosts):
            raise SlackPermanentError(
                f"Slack's upload URL points to {host!r}, which is not an allowed upload host: "
                "add it to SLACK_UPLOAD_HOSTS if it is yours, then bfl-receiver replay --dead"
            )
        what = f"upload to {host}"
        try:
            response = await self._client().post(
                upload_url,
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
        except httpx.HTTPError as exc:
            # Only the host: the URL's path and query are the upload's credential.
            raise SlackError(f"Slack {what}: {type(exc).__name__}") from None
        self._answer_status(what, response, key)
