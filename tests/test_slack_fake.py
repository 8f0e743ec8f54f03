"""The Slack fake is faithful: Slack's own Python client (slack_sdk's ``WebClient``, pointed at
it with ``base_url``) works against it, its upload flow included, and gets Slack's errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from tests.fakes.slack import TOKEN, FakeSlack, fake_slack
from tests.support import png_bytes


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with fake_slack("C0CHAN") as fake:
        yield fake


def client(fake: FakeSlack, token: str = TOKEN, **options: object) -> WebClient:
    return WebClient(token=token, base_url=fake.api_url, timeout=10, **options)  # type: ignore[arg-type]


def test_auth_test_and_a_wrong_or_missing_token(slack: FakeSlack) -> None:
    answer = client(slack).auth_test()
    assert answer["ok"] is True
    assert answer["user_id"] == "U0FAKEBOT"
    assert slack.calls[-1].headers["authorization"] == f"Bearer {TOKEN}"
    with pytest.raises(SlackApiError) as wrong:
        client(slack, "xoxb-not-the-token").auth_test()
    assert wrong.value.response.status_code == 200  # Slack's errors are HTTP 200, ok: false
    assert wrong.value.response["error"] == "invalid_auth"
    # No header at all: not_authed; the token as a form field works too, as the docs say.
    assert httpx.post(slack.api_url + "auth.test").json() == {"ok": False, "error": "not_authed"}
    assert httpx.post(slack.api_url + "auth.test", data={"token": TOKEN}).json()["ok"] is True


def test_post_update_and_delete_a_message(slack: FakeSlack) -> None:
    web = client(slack)
    posted = web.chat_postMessage(channel="C0CHAN", text="Generating…")  # a JSON body
    ts = posted["ts"]
    assert posted["message"]["text"] == "Generating…"
    assert slack.calls[-1].headers["content-type"].startswith("application/json")
    updated = web.chat_update(channel="C0CHAN", ts=ts, text="Moderated")
    assert updated["text"] == "Moderated"
    assert [m.text for m in slack.channels["C0CHAN"].messages] == ["Moderated"]
    web.chat_delete(channel="C0CHAN", ts=ts)
    assert slack.channels["C0CHAN"].messages == []
    with pytest.raises(SlackApiError) as gone:
        web.chat_update(channel="C0CHAN", ts=ts, text="again")
    assert gone.value.response["error"] == "message_not_found"
    foreign = slack.post("C0CHAN", "someone else's", user="U0HUMAN")
    with pytest.raises(SlackApiError) as theirs:
        web.chat_delete(channel="C0CHAN", ts=foreign)
    assert theirs.value.response["error"] == "cant_delete_message"


def test_channel_errors(slack: FakeSlack) -> None:
    slack.add_channel("C0ARCH", archived=True)
    slack.add_channel("C0OUT", member=False)
    web = client(slack)
    for channel, error in [
        ("C0NONE", "channel_not_found"),
        ("C0ARCH", "is_archived"),
        ("C0OUT", "not_in_channel"),
    ]:
        with pytest.raises(SlackApiError) as refused:
            web.chat_postMessage(channel=channel, text="hi")
        assert refused.value.response["error"] == error
    # slack_sdk warns before it sends an empty text; Slack itself answers no_text.
    empty = httpx.post(
        slack.api_url + "chat.postMessage",
        json={"channel": "C0CHAN", "text": ""},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert empty.json() == {"ok": False, "error": "no_text"}


def test_files_upload_v2_runs_the_whole_external_flow(slack: FakeSlack) -> None:
    image = png_bytes(64)
    web = client(slack)
    parent = web.chat_postMessage(channel="C0CHAN", text="a thread")["ts"]
    answer = web.files_upload_v2(
        file=image,
        filename="lighthouse.png",
        title="A lighthouse",
        channel="C0CHAN",
        thread_ts=parent,
        initial_comment="a lighthouse at dusk",
    )
    file_id = answer["file"]["id"]
    assert answer["file"]["title"] == "A lighthouse"
    assert slack.uploaded(file_id) == image
    assert [c.method for c in slack.calls[-2:]] == [
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]
    assert slack.calls[-2].fields["length"] == str(len(image))  # slack_sdk sends a form
    assert json.loads(slack.calls[-1].fields["files"])[0]["id"] == file_id
    (upload,) = slack.uploads
    assert "authorization" not in upload.headers  # the URL is its own credential
    shared = slack.channels["C0CHAN"].messages[-1]
    assert (shared.text, shared.thread_ts, shared.files) == (
        "a lighthouse at dusk",
        parent,
        [file_id],
    )


def test_upload_length_must_match_and_unknown_files_do_not_complete(slack: FakeSlack) -> None:
    web = client(slack)
    ticket = web.files_getUploadURLExternal(filename="x.png", length=10)
    url = ticket["upload_url"]
    assert httpx.post(url, content=b"12345").status_code == 400
    assert httpx.post(url.split("?")[0], content=b"0123456789").status_code == 404
    with pytest.raises(SlackApiError) as unfinished:
        web.files_completeUploadExternal(files=[{"id": ticket["file_id"]}], channel_id="C0CHAN")
    assert unfinished.value.response["error"] == "file_not_found"
    with pytest.raises(SlackApiError) as unknown:
        web.files_completeUploadExternal(files=[{"id": "F000000000"}], channel_id="C0CHAN")
    assert unknown.value.response["error"] == "file_not_found"
    # Multipart works as well as raw bytes (the docs' `curl -F filename=@…`); then it completes
    # once, and only once.
    sent = httpx.post(url, files={"filename": ("x.png", b"0123456789")})
    assert (sent.status_code, sent.text) == (200, "OK - 10")
    assert slack.uploaded(ticket["file_id"]) == b"0123456789"
    web.files_completeUploadExternal(files=[{"id": ticket["file_id"]}], channel_id="C0CHAN")
    with pytest.raises(SlackApiError) as twice:
        web.files_completeUploadExternal(files=[{"id": ticket["file_id"]}], channel_id="C0CHAN")
    assert twice.value.response["error"] == "file_not_found"
    with pytest.raises(SlackApiError) as bad:
        web.files_getUploadURLExternal(filename="x.png", length=0)
    assert bad.value.response["error"] == "missing_argument"


def test_a_429_is_waited_out_by_the_sdks_rate_limit_retry_handler(slack: FakeSlack) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    with pytest.raises(SlackApiError) as limited:
        client(slack).chat_postMessage(channel="C0CHAN", text="hi")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response["error"] == "ratelimited"
    assert slack.channels["C0CHAN"].messages == []

    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    patient = client(slack, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    started = time.monotonic()
    answer = patient.chat_postMessage(channel="C0CHAN", text="hi")
    assert time.monotonic() - started >= 1.0  # it slept the Retry-After the fake sent
    assert answer["ok"] is True
    assert [m.text for m in slack.channels["C0CHAN"].messages] == ["hi"]
