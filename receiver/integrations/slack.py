"""Post each finished task to a Slack channel: the stored image, or a short text saying why not.

``RECEIVER_HANDLERS=receiver.integrations.slack:send`` with ``SLACK_BOT_TOKEN`` set (a bot token,
``xoxb-…``, with the ``chat:write`` and ``files:write`` scopes). The submitter addresses the
channel in the metadata::

    slack_channel      the channel's id (C…, G…, D…): required, else the event is skipped
    slack_thread_ts    optional: post into this thread (a parent message's ts)
    slack_message_ts   optional: a progress message ("Generating…") to replace
    caption            optional: the text under the image (a bot puts the prompt there)

What is sent, and when::

    ready, image stored   files.getUploadURLExternal (filename, length, alt_txt)
                          → POST the stored bytes to the upload_url it returned
                          → files.completeUploadExternal (files=[{id, title}], channel_id,
                            thread_ts, initial_comment = the caption, cut to 4,000 characters,
                            then &, < and > escaped as Slack's formatting asks)
                          → chat.delete of slack_message_ts
    anything else         chat.update of slack_message_ts with common.outcome_text (moderated,
                          failed and why), or chat.postMessage when there is none (or it is gone)

``files.upload`` is retired (new apps could not use it from 2024-05; it stopped in 2025-11), so
only the external upload flow is used. Slack processes the upload asynchronously; the image is
in the channel once ``files.completeUploadExternal`` answers ok.

Why plain httpx and not slack_sdk: the flow is four form POSTs, which httpx (already the
receiver's client, one pool per loop) does in a few lines. slack_sdk's ``AsyncWebClient`` would
bring aiohttp, a second HTTP stack, for no gain; its sync ``WebClient`` would need a thread per
send. And ``files_upload_v2`` posts the bytes to whatever ``upload_url`` Slack returned, while
this handler must check that URL's host first (no URL is fetched unless its host is allowed).
So the handler needs no extra dependency; slack_sdk is used in the tests, where it proves the
loopback fake faithful.

Outcomes::

    HTTP 429 + Retry-After            RateLimited: waited out without using an attempt; the
                                      channel is held that long (Pacer.hold)
    ok: false, a permanent error      SlackPermanentError (dead at once, with Slack's error):
                                      channel_not_found, not_in_channel, invalid_auth, ...
    ok: false, anything else          SlackApiError: retried, then dead with the error
    HTTP 5xx                          SlackRetryLater: retried, no sooner than Retry-After
    no answer, other HTTP status      SlackError: retried
    progress message gone             message_not_found, cant_update_message...: not fatal (the
                                      text is posted as a new message instead)
    upload_url on a host not allowed  SlackPermanentError: nothing is sent to it

The progress message is deleted only after the image is in the channel; if that delete fails
(other than the message being gone already) it is logged and the job is still done, since a
retry would post the image twice.

Secrets: the token goes only in the ``Authorization`` header of calls to ``SLACK_API_URL``
(never to the upload URL, which is itself a credential, and never in a log or an error); an
upload URL is only ever shown as its host.

Pacing: one send a second per channel (``Pacer(1.0)``), as Slack asks of ``chat.postMessage``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from receiver import handlers
from receiver.download import host_allowed
from receiver.envfile import UpwardEnvSettings
from receiver.events import Event
from receiver.handlers import PermanentError, RateLimited
from receiver.integrations.common import LoopClients, address, caption, optional, outcome_text
from receiver.integrations.forward import retry_after
from receiver.integrations.pacing import Pacer
from receiver.redact import redact_text
from receiver.settings import CommaList, split_commas

log = logging.getLogger("receiver.integrations.slack")

DEFAULT_API_URL = "https://slack.com/api/"
#: Where Slack's upload URLs point (``https://files.slack.com/upload/v1/…``).
DEFAULT_UPLOAD_HOSTS = ("https://files.slack.com",)
#: ``initial_comment`` is a message's text: Slack truncates text past 40,000 characters and
#: advises keeping it under 4,000 (chat.postMessage, "Truncating content").
MAX_COMMENT_CHARS = 4000
#: files.getUploadURLExternal refuses alt_txt past 1,000 characters (``alt_txt_too_large``).
MAX_ALT_CHARS = 1000
#: A file's title: Slack documents no limit; a caption's first line, kept short.
MAX_TITLE_CHARS = 250
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
#: Slack's ids (C0123ABCD) and message timestamps (1503435956.000247).
_CHANNEL = re.compile(r"[A-Z0-9]{2,40}")
_TS = re.compile(r"\d{1,12}\.\d{1,9}")
_IMAGE_SUFFIX = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}

__all__ = [
    "SlackApiError",
    "SlackConfigError",
    "SlackError",
    "SlackPermanentError",
    "SlackRetryLater",
    "SlackSender",
    "SlackSettings",
    "escaped",
    "load_settings",
    "send",
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


class SlackSettings(UpwardEnvSettings):
    """How to reach Slack: ``SLACK_*`` variables (or the ``.env`` found upward)."""

    model_config = SettingsConfigDict(
        env_prefix="SLACK_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # a mistyped token must not be echoed in the error
    )

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
    try:
        return SlackSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"SLACK_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise SlackConfigError(problems) from None


def _matching(event: Event, key: str, pattern: re.Pattern[str], example: str) -> str | None:
    value = optional(event, key)
    if value is None:
        return None
    text = str(value)
    if not pattern.fullmatch(text):
        # Never the value itself: it may be huge or hostile; its length says enough.
        raise PermanentError(f"{key} is not a Slack {example} ({len(text)} characters)")
    return text


def _channel(event: Event) -> str:
    address(event, "slack_channel")  # absent: Skipped; not a string: PermanentError
    channel = _matching(event, "slack_channel", _CHANNEL, "channel id like C0123ABCD")
    assert channel is not None
    return channel


def escaped(text: str) -> str:
    """``text`` as Slack's message formatting wants it: ``&``, ``<`` and ``>`` escaped, so a
    prompt's ``<!channel>`` or ``<https://…|…>`` shows as typed instead of pinging or linking."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe_error(answer: dict[str, Any]) -> str:
    error = answer.get("error")
    text = error if isinstance(error, str) else "unknown_error"
    return "".join(ch for ch in text if ch.isalnum() or ch in "_-.")[:MAX_ERROR_CHARS] or "?"


class SlackSender:
    """The handler behind ``send``: settings read once, one HTTP client per event loop, one
    pace per channel.

    ``SlackSender(settings)`` sends with those settings (for embedding and tests);
    ``SlackSender()`` reads ``SLACK_*`` on its first event and keeps them.
    """

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
        answer when ``ok``; raise as the module's docstring says otherwise."""
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
        host = (urlsplit(upload_url).netloc.rpartition("@")[2] or "?")[:100]
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

    async def send(self, event: Event) -> None:
        """Post ``event`` to its ``slack_channel``, as the module's docstring says."""
        channel = _channel(event)
        thread_ts = _matching(event, "slack_thread_ts", _TS, "message ts like 1503435956.000247")
        progress_ts = _matching(event, "slack_message_ts", _TS, "message ts like 1503435956.000247")
        self._token()  # a config error before anything is paced or sent
        key = f"slack:{channel}"
        await self.pacer.slot(key)
        if event.kind == "ready" and event.image is not None:
            await self._post_image(event, channel, thread_ts, key)
            if progress_ts is not None:
                await self._delete_progress(event, channel, progress_ts, key)
            log.info("task %s: image posted to Slack channel %s", event.task_id, channel)
            return
        text = escaped(outcome_text(event))
        if progress_ts is not None and await self._update_progress(channel, progress_ts, text, key):
            log.info("task %s: Slack progress message replaced (%s)", event.task_id, event.kind)
            return
        fields = {"channel": channel, "text": text}
        if thread_ts is not None:
            fields["thread_ts"] = thread_ts
        await self.call("chat.postMessage", fields, key)
        log.info("task %s: Slack message posted (%s)", event.task_id, event.kind)

    async def _post_image(
        self, event: Event, channel: str, thread_ts: str | None, key: str
    ) -> None:
        assert event.image is not None
        data = await event.image.read()
        suffix = _IMAGE_SUFFIX.get(event.image.content_type, "img")
        filename = f"{re.sub(r'[^A-Za-z0-9_-]', '_', event.task_id)[:100]}.{suffix}"
        comment = caption(event, MAX_COMMENT_CHARS)
        ticket_fields = {"filename": filename, "length": str(len(data))}
        if comment:
            ticket_fields["alt_txt"] = caption(event, MAX_ALT_CHARS)
        ticket = await self.call("files.getUploadURLExternal", ticket_fields, key)
        upload_url, file_id = ticket.get("upload_url"), ticket.get("file_id")
        if not isinstance(upload_url, str) or not isinstance(file_id, str):
            raise SlackError("Slack files.getUploadURLExternal: no upload_url or file_id")
        await self.upload(upload_url, data, key)
        title = caption(event, MAX_TITLE_CHARS).split("\n", 1)[0] or filename
        complete = {
            "files": json.dumps([{"id": file_id, "title": title}]),
            "channel_id": channel,
        }
        if thread_ts is not None:
            complete["thread_ts"] = thread_ts
        if comment:
            complete["initial_comment"] = escaped(comment)
        await self.call("files.completeUploadExternal", complete, key)

    async def _update_progress(self, channel: str, ts: str, text: str, key: str) -> bool:
        """Replace the progress message's text; False when it is gone (post anew instead)."""
        try:
            await self.call("chat.update", {"channel": channel, "ts": ts, "text": text}, key)
        except SlackApiError as exc:
            if exc.error in PROGRESS_GONE:
                return False
            raise
        return True

    async def _delete_progress(self, event: Event, channel: str, ts: str, key: str) -> None:
        """Delete the progress message; the image is already posted, so nothing here fails
        the job (a retry would post the image again)."""
        try:
            await self.call("chat.delete", {"channel": channel, "ts": ts}, key)
        except SlackApiError as exc:
            if exc.error not in PROGRESS_GONE:
                log.warning("task %s: progress message not deleted: %s", event.task_id, exc)
        except (SlackError, PermanentError, RateLimited) as exc:
            log.warning("task %s: progress message not deleted: %s", event.task_id, exc)


_default = SlackSender()


async def send(event: Event) -> None:
    """The handler: post ``event`` to Slack with the ``SLACK_*`` settings of this process."""
    await _default.send(event)
