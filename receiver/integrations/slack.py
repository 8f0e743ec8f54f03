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

from receiver.events import Event
from receiver.handlers import PermanentError, RateLimited
from receiver.integrations.common import address, caption, optional, outcome_text
from receiver.integrations.slack_api import (
    PROGRESS_GONE,
    SlackApiError,
    SlackConfigError,
    SlackError,
    SlackPermanentError,
    SlackRetryLater,
    SlackSettings,
    SlackWebApi,
    load_settings,
)

log = logging.getLogger("receiver.integrations.slack")

#: ``initial_comment`` is a message's text: Slack truncates text past 40,000 characters and
#: advises keeping it under 4,000 (chat.postMessage, "Truncating content").
MAX_COMMENT_CHARS = 4000
#: files.getUploadURLExternal refuses alt_txt past 1,000 characters (``alt_txt_too_large``).
MAX_ALT_CHARS = 1000
#: A file's title: Slack documents no limit; a caption's first line, kept short.
MAX_TITLE_CHARS = 250
#: Slack's ids (C0123ABCD) and message timestamps (1503435956.000247).
_CHANNEL = re.compile(r"[A-Z0-9]{2,40}")
_TS = re.compile(r"\d{1,12}\.\d{1,9}")
_IMAGE_SUFFIX = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}

__all__ = [
    "MAX_ALT_CHARS",
    "MAX_COMMENT_CHARS",
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


class SlackSender(SlackWebApi):
    """The handler behind ``send``.

    ``SlackSender(settings)`` sends with those settings (for embedding and tests);
    ``SlackSender()`` reads ``SLACK_*`` on its first event and keeps them.
    """

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
