"""``receiver.integrations.slack:send`` end to end: a real receiver posts to the loopback Slack
fake (tests/fakes/slack.py, proven faithful with slack_sdk in test_slack_fake.py)."""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import SecretStr

from receiver.cli import main
from receiver.events import Event, Status
from receiver.handlers import RateLimited
from receiver.integrations import slack
from receiver.integrations.slack import MAX_COMMENT_CHARS, SlackSender, SlackSettings
from receiver.settings import Settings
from receiver.store.base import Job, JobRun, JobState
from tests.fakes.slack import TOKEN, FakeSlack, fake_slack
from tests.support import (
    Delivery,
    Receiver,
    Sample,
    delivery_server,
    eventually,
    jpeg_bytes,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

HANDLER = "receiver.integrations.slack:send"
CHANNEL = "C0CHAN"


@contextmanager
def slack_receiver(
    tmp_path: Path,
    fake: FakeSlack,
    delivery: Delivery | None = None,
    *,
    max_attempts: int = 5,
    **slack_settings: Any,
) -> Iterator[tuple[Settings, Receiver]]:
    """A receiver whose only handler posts to ``fake`` with these ``SLACK_*`` values."""
    hosts = {"sample_hosts": (delivery.host,)} if delivery is not None else {}
    settings = settings_for(tmp_path, handler_max_attempts=max_attempts, **hosts)
    values: dict[str, Any] = {"bot_token": TOKEN, "api_url": fake.api_url, **slack_settings}
    sender = SlackSender(SlackSettings(_env_file=None, **values))  # type: ignore[call-arg]
    with running_receiver(settings, {HANDLER: sender.send}) as r:
        yield settings, r


def submitted(settings: Settings, task_id: str, metadata: dict[str, Any]) -> None:
    """What the submitter records before BFL answers: the task's metadata, by its id."""

    async def record(store: Any) -> None:
        await store.prepare_submission(f"ref-{task_id}", "flux-dev", metadata)
        await store.bind_submission(f"ref-{task_id}", task_id, None)

    read_store(settings, record)


def job_of(settings: Settings, task_id: str) -> Job | None:
    jobs: list[Job] = read_store(settings, lambda s: s.jobs_for(task_id))
    return next((j for j in jobs if j.handler == HANDLER), None)


def settled(settings: Settings, task_id: str, state: JobState) -> Job:
    def reached() -> Job | None:
        job = job_of(settings, task_id)
        return job if job is not None and job.state is state else None

    eventually(lambda: reached() is not None, timeout=30)
    job = reached()
    assert job is not None
    return job


def calls(fake: FakeSlack, method: str) -> list[dict[str, Any]]:
    return [c.fields for c in fake.calls if c.method == method]


def test_the_stored_image_reaches_the_thread_and_replaces_the_progress_message(
    tmp_path: Path,
) -> None:
    image = jpeg_bytes(48, "green")
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg", Sample(body=image))
        parent = fake.post(CHANNEL, "/imagine a green square")
        progress = fake.post(CHANNEL, "Generating…")
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(
                settings,
                "t-ok",
                {
                    "slack_channel": CHANNEL,
                    "slack_thread_ts": parent,
                    "slack_message_ts": progress,
                    "caption": "a green square",
                },
            )
            r.post(ready("t-ok", sample))
            job = settled(settings, "t-ok", JobState.DONE)
    assert job.attempts == 1
    (ticket,) = calls(fake, "files.getUploadURLExternal")
    assert ticket["filename"] == "t-ok.jpg"
    assert ticket["length"] == str(len(image))
    assert ticket["alt_txt"] == "a green square"
    (complete,) = calls(fake, "files.completeUploadExternal")
    (listed,) = json.loads(complete["files"])
    assert listed["title"] == "a green square"
    assert (complete["channel_id"], complete["thread_ts"]) == (CHANNEL, parent)
    assert fake.uploaded(listed["id"]) == image  # the stored bytes, exactly
    (upload,) = fake.uploads
    assert "authorization" not in upload.headers  # the token goes to the API only
    assert all(c.headers["authorization"] == f"Bearer {TOKEN}" for c in fake.calls)
    parent_message, shared = fake.channels[CHANNEL].messages  # the progress message is gone
    assert parent_message.ts == parent
    assert (shared.text, shared.thread_ts, shared.files) == (
        "a green square",
        parent,
        [listed["id"]],
    )
    assert delivery.url not in json.dumps([c.fields for c in fake.calls])  # never BFL's URL


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


def test_a_large_image_is_uploaded_byte_for_byte(tmp_path: Path) -> None:
    """Slack has no photo/document split (files up to 1 GB): a 4 MB PNG goes as it is."""
    image = noise_png(1200)
    assert len(image) > 4_000_000
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("big.png", Sample(body=image, content_type="image/png"))
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(settings, "t-big", {"slack_channel": CHANNEL})
            r.post(ready("t-big", sample))
            settled(settings, "t-big", JobState.DONE)
    (complete,) = calls(fake, "files.completeUploadExternal")
    (listed,) = json.loads(complete["files"])
    assert listed["title"] == "t-big.png"  # no caption: the file's name
    assert "initial_comment" not in complete
    assert fake.uploaded(listed["id"]) == image


def test_a_file_over_the_workspaces_limit_is_dead_with_slacks_reason(tmp_path: Path) -> None:
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        fake.max_file_bytes = 100  # the workspace restricts uploads
        sample = delivery.add("a.jpg")
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(settings, "t-huge", {"slack_channel": CHANNEL})
            r.post(ready("t-huge", sample))
            job = settled(settings, "t-huge", JobState.DEAD)
    assert job.attempts == 1
    assert job.last_error == (
        "SlackPermanentError: Slack files.getUploadURLExternal: file_upload_size_restricted"
    )
    assert fake.uploads == []


def test_a_progress_message_that_cannot_be_deleted_does_not_post_the_image_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg")
        progress = fake.post(CHANNEL, "Generating…")
        fake.fail_next("chat.delete", status=500)
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(settings, "t-del", {"slack_channel": CHANNEL, "slack_message_ts": progress})
            r.post(ready("t-del", sample))
            job = settled(settings, "t-del", JobState.DONE)
    assert job.attempts == 1
    left, shared = fake.channels[CHANNEL].messages
    assert (left.ts, len(shared.files)) == (progress, 1)
    assert any("progress message not deleted" in m for m in caplog.messages)


def test_a_caption_at_the_limit_and_one_over_it(tmp_path: Path) -> None:
    at_limit = "x" * MAX_COMMENT_CHARS
    over = "y" * (MAX_COMMENT_CHARS + 1)
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg")
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(settings, "t-at", {"slack_channel": CHANNEL, "caption": at_limit})
            submitted(settings, "t-over", {"slack_channel": CHANNEL, "caption": over})
            submitted(settings, "t-esc", {"slack_channel": CHANNEL, "caption": "<!channel> & co"})
            for task in ("t-at", "t-over", "t-esc"):
                r.post(ready(task, sample))
            for task in ("t-at", "t-over", "t-esc"):
                settled(settings, task, JobState.DONE)
    texts = sorted(m.text for m in fake.channels[CHANNEL].messages)
    # Slack's formatting characters are escaped: a prompt cannot ping the whole channel.
    assert texts == ["&lt;!channel&gt; &amp; co", at_limit, "y" * (MAX_COMMENT_CHARS - 1) + "…"]
    tickets = [c for c in fake.calls if c.method == "files.getUploadURLExternal"]
    alt = {c.fields["filename"]: c.fields["alt_txt"] for c in tickets}
    assert (len(alt["t-at.jpg"]), len(alt["t-over.jpg"])) == (1000, 1000)  # Slack's limit
    assert alt["t-esc.jpg"] == "<!channel> & co"  # alt_txt is plain text, not escaped
    # Sends to one channel are paced a second apart (Pacer(1.0) per channel).
    times = sorted(c.at for c in tickets)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.9


def test_failure_and_moderation_texts_replace_or_follow_the_progress_message(
    tmp_path: Path,
) -> None:
    with fake_slack(CHANNEL) as fake:
        progress = fake.post(CHANNEL, "Generating…")
        parent = fake.post(CHANNEL, "a thread")
        with slack_receiver(tmp_path, fake) as (settings, r):
            submitted(settings, "t-err", {"slack_channel": CHANNEL, "slack_message_ts": progress})
            submitted(settings, "t-mod", {"slack_channel": CHANNEL, "slack_thread_ts": parent})
            submitted(  # its progress message was deleted meanwhile: the text comes anew
                settings, "t-gone", {"slack_channel": CHANNEL, "slack_message_ts": "1.000001"}
            )
            r.post({"id": "t-err", "status": "Error", "error": "out of credits"})
            r.post({"id": "t-mod", "status": "Request Moderated"})
            r.post({"id": "t-gone", "status": "Content Moderated"})
            for task in ("t-err", "t-mod", "t-gone"):
                assert settled(settings, task, JobState.DONE).attempts == 1
    messages = {m.ts: m for m in fake.channels[CHANNEL].messages}
    assert messages[progress].text == "The image could not be generated: out of credits"
    moderated = "The image was not generated: the request was moderated."
    threaded = [m for m in messages.values() if m.thread_ts == parent]
    assert [m.text for m in threaded] == [moderated]
    anew = [m for m in messages.values() if m.thread_ts is None and m.text == moderated]
    assert len(anew) == 1
    assert sorted(c["ts"] for c in calls(fake, "chat.update")) == sorted([progress, "1.000001"])
    assert not calls(fake, "files.getUploadURLExternal")


def test_a_429_is_waited_out_without_using_an_attempt(tmp_path: Path) -> None:
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg")
        fake.fail_next("files.completeUploadExternal", status=429, retry_after=1)
        with slack_receiver(tmp_path, fake, delivery, max_attempts=1) as (settings, r):
            submitted(settings, "t-429", {"slack_channel": CHANNEL})
            r.post(ready("t-429", sample))
            job = settled(settings, "t-429", JobState.DONE)
            runs: list[JobRun] = read_store(settings, lambda s: s.runs_for("t-429"))
            assert (
                r.metric("bfl_hooks_handler_runs_total", handler=HANDLER, outcome="rate_limited")
                == 1
            )
    assert job.attempts == 1
    assert job.waited == pytest.approx(1.0)
    mine = [run for run in runs if run.job_id == job.id]
    assert [run.outcome for run in mine] == ["rate limited", "ok"]
    assert "429" in (mine[0].error or "")
    assert len([m for m in fake.channels[CHANNEL].messages if m.files]) == 1  # posted once


def test_a_429_holds_the_channel_for_its_retry_after() -> None:
    """The sender itself, against the fake: a 429 for a channel keeps this process from
    sending there again until Retry-After has passed."""
    failed = Event(
        task_id="t1",
        status=Status.ERROR,
        image=None,
        metadata={"slack_channel": CHANNEL},
        payload={},
        attempt=1,
        idempotency_key="t1:h",
        error="x",
    )
    with fake_slack(CHANNEL) as fake:
        sender = SlackSender(
            SlackSettings(_env_file=None, bot_token=SecretStr(TOKEN), api_url=fake.api_url)  # type: ignore[call-arg]
        )
        fake.fail_next("chat.postMessage", status=429, retry_after=3)
        with pytest.raises(RateLimited) as limited:
            anyio.run(sender.send, failed)
        assert limited.value.retry_after == 3.0
        assert sender.pacer.next_free(f"slack:{CHANNEL}") > 2.0
        assert sender.pacer.next_free("slack:C0OTHER") == 0.0  # other channels are free
    assert fake.channels[CHANNEL].messages == []


def test_a_5xx_is_retried(tmp_path: Path) -> None:
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg")
        fake.fail_next("files.getUploadURLExternal", status=503)
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(settings, "t-503", {"slack_channel": CHANNEL})
            r.post(ready("t-503", sample))
            job = settled(settings, "t-503", JobState.DONE)
    assert job.attempts == 2
    assert len(fake.channels[CHANNEL].messages) == 1


def test_permanent_errors_are_dead_at_once_with_slacks_reason(tmp_path: Path) -> None:
    with fake_slack(CHANNEL) as fake:
        fake.add_channel("C0ARCH", archived=True)
        fake.add_channel("C0OUT", member=False)
        with slack_receiver(tmp_path, fake, max_attempts=5) as (settings, r):
            for task, channel in [("t-none", "C0NONE"), ("t-arch", "C0ARCH"), ("t-out", "C0OUT")]:
                submitted(settings, task, {"slack_channel": channel})
                r.post({"id": task, "status": "Error", "error": "x"})
            reasons = {
                task: settled(settings, task, JobState.DEAD)
                for task in ("t-none", "t-arch", "t-out")
            }
    for task, error in [
        ("t-none", "channel_not_found"),
        ("t-arch", "is_archived"),
        ("t-out", "not_in_channel"),
    ]:
        job = reasons[task]
        assert job.attempts == 1
        assert job.last_error == f"SlackPermanentError: Slack chat.postMessage: {error}"


def test_a_wrong_token_is_dead_at_once_and_no_token_is_in_any_log_or_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "xoxb-wrong-9876543210-zyxwvuZYXWVU"
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg")
        with slack_receiver(tmp_path / "ok", fake, delivery) as (settings, r):
            submitted(settings, "t-ok", {"slack_channel": CHANNEL})
            r.post(ready("t-ok", sample))
            settled(settings, "t-ok", JobState.DONE)
        with slack_receiver(tmp_path / "bad", fake, delivery, bot_token=wrong) as (bad, r):
            submitted(bad, "t-bad", {"slack_channel": CHANNEL})
            r.post(ready("t-bad", sample))
            job = settled(bad, "t-bad", JobState.DEAD)
            assert TOKEN not in r.client.get("/metrics").text
            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("RECEIVER_DATABASE_URL", bad.database_url)
            shown = CliRunner().invoke(main, ["show", "t-bad", "--json"])
            assert shown.exit_code == 0, shown.output
            assert "invalid_auth" in shown.output  # its runs, errors and tracebacks
    assert job.attempts == 1
    assert job.last_error == "SlackPermanentError: Slack files.getUploadURLExternal: invalid_auth"
    credentials = [f.credential for f in fake.files.values()]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    # httpx's request lines were captured, the upload's too (with its query elided).
    assert "HTTP Request: POST " + fake.api_url + "files.getUploadURLExternal" in logged
    assert "/upload/v1/" in logged
    for secret in (TOKEN, wrong, *credentials):
        assert secret not in logged
        assert secret not in shown.output
        assert secret not in (job.last_error or "")


def test_an_event_for_another_platform_is_skipped(tmp_path: Path) -> None:
    with fake_slack(CHANNEL) as fake, slack_receiver(tmp_path, fake) as (settings, r):
        submitted(settings, "t-tg", {"telegram_chat_id": 42})
        r.post({"id": "t-tg", "status": "Error", "error": "x"})
        job = settled(settings, "t-tg", JobState.DONE)
        eventually(
            lambda: (
                r.metric("bfl_hooks_handler_runs_total", handler=HANDLER, outcome="skipped") == 1
            )
        )
    assert job.last_error == "skipped: no slack_channel in the metadata"
    assert fake.calls == []


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"slack_channel": {"id": "C0CHAN"}}, "slack_channel must be a non-empty string"),
        ({"slack_channel": "C" * 5000}, "slack_channel is not a Slack channel id"),
        ({"slack_channel": "#general\n"}, "slack_channel is not a Slack channel id"),
        ({"slack_channel": CHANNEL, "slack_message_ts": "1; drop"}, "slack_message_ts is not"),
        ({"slack_channel": CHANNEL, "slack_thread_ts": [1]}, "slack_thread_ts must be"),
    ],
)
def test_bad_metadata_is_a_clear_permanent_error(
    tmp_path: Path, metadata: dict[str, Any], reason: str
) -> None:
    with fake_slack(CHANNEL) as fake, slack_receiver(tmp_path, fake) as (settings, r):
        submitted(settings, "t-bad", metadata)
        r.post({"id": "t-bad", "status": "Error", "error": "x"})
        job = settled(settings, "t-bad", JobState.DEAD)
    assert job.attempts == 1
    assert job.last_error is not None
    assert job.last_error.startswith(f"PermanentError: {reason}")
    assert len(job.last_error) < 200  # never the hostile value itself
    assert fake.calls == []


def test_replay_after_dead_sends_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with delivery_server() as delivery, fake_slack() as fake:
        sample = delivery.add("a.jpg")
        with slack_receiver(tmp_path, fake, delivery) as (settings, r):
            submitted(settings, "t-replay", {"slack_channel": CHANNEL})
            r.post(ready("t-replay", sample))
            settled(settings, "t-replay", JobState.DEAD)  # the bot was not in a channel yet
            fake.add_channel(CHANNEL)
            monkeypatch.chdir(tmp_path)
            monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
            replayed = CliRunner().invoke(main, ["replay", "--dead"])
            assert replayed.exit_code == 0, replayed.output
            job = settled(settings, "t-replay", JobState.DONE)
    assert job.attempts == 1  # attempts start again from zero on a replay
    (shared,) = fake.channels[CHANNEL].messages
    assert len(shared.files) == 1


def test_an_upload_url_on_a_host_not_allowed_is_never_posted_to(tmp_path: Path) -> None:
    with delivery_server() as delivery, fake_slack(CHANNEL) as fake:
        sample = delivery.add("a.jpg")
        port = fake.url.rsplit(":", 1)[1]
        fake.upload_base = f"http://localhost:{port}"  # the same fake, under another name
        with slack_receiver(tmp_path / "refused", fake, delivery) as (settings, r):
            submitted(settings, "t-refused", {"slack_channel": CHANNEL})
            r.post(ready("t-refused", sample))
            job = settled(settings, "t-refused", JobState.DEAD)
        assert fake.uploads == []
        assert job.attempts == 1
        assert job.last_error is not None
        assert f"'localhost:{port}', which is not an allowed upload host" in job.last_error
        assert "SLACK_UPLOAD_HOSTS" in job.last_error
        assert "credential" not in job.last_error
        # SLACK_UPLOAD_HOSTS names it: then it is used.
        extra = (f"localhost:{port}",)
        with slack_receiver(tmp_path / "allowed", fake, delivery, upload_hosts=extra) as (
            allowed,
            r,
        ):
            submitted(allowed, "t-allowed", {"slack_channel": CHANNEL})
            r.post(ready("t-allowed", sample))
            settled(allowed, "t-allowed", JobState.DONE)
    assert len(fake.uploads) == 1


def test_the_module_handler_reads_slack_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setattr(slack, "_default", SlackSender())  # this test's SLACK_* only
    settings = settings_for(tmp_path)
    with fake_slack(CHANNEL) as fake:
        monkeypatch.setenv("SLACK_API_URL", fake.api_url.rstrip("/"))  # the slash is added
        with running_receiver(settings, {HANDLER: slack.send}) as r:
            submitted(settings, "t-unset", {"slack_channel": CHANNEL})
            r.post({"id": "t-unset", "status": "Error", "error": "x"})
            unset = settled(settings, "t-unset", JobState.DEAD)
        assert unset.last_error is not None
        assert "SLACK_BOT_TOKEN is not set" in unset.last_error
        monkeypatch.setenv("SLACK_BOT_TOKEN", TOKEN)
        monkeypatch.setattr(slack, "_default", SlackSender())
        with running_receiver(settings, {HANDLER: slack.send}) as r:
            submitted(settings, "t-env", {"slack_channel": CHANNEL})
            r.post({"id": "t-env", "status": "Error", "error": "x"})
            settled(settings, "t-env", JobState.DONE)
    (message,) = fake.channels[CHANNEL].messages
    assert message.text == "The image could not be generated: x"
