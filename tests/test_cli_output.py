"""``bfl-receiver`` prints what webhooks and handlers wrote literally: hostile events recorded by
a real receiver, then read back by the real command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from receiver import Event
from receiver.cli import main
from receiver.payload import notice_from_payload
from receiver.render import dumps, literal
from tests.support import (
    delivery_server,
    eventually,
    read_store,
    ready,
    running_receiver,
    settings_for,
)

#: Markup, an ESC sequence that clears the screen, an OSC that retitles the terminal, a C1 CSI,
#: a right-to-left override: what a sender with the secret, or a handler's exception, may write.
HOSTILE = "[green]fine[/green] [bold red]x\x1b[2J\x1b]0;pwned\x07 \x9b31m \u202eevil"
#: Raw bytes with NaN and Infinity: Python's json reads them, strict JSON has no such values.
NAN_BODY = b'{"id": "nan-task", "status": "Pending", "progress": NaN, "eta": -Infinity}'


def strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def run(*args: str) -> Result:
    return CliRunner(env={"COLUMNS": "400"}).invoke(main, list(args))


def assert_inert(output: str) -> None:
    """Nothing in ``output`` that a terminal would act on."""
    assert "\x1b" not in output
    assert "\x9b" not in output
    assert "\x07" not in output
    assert "\u202e" not in output


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    settings = settings_for(tmp_path, handler_max_attempts=1)
    monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)

    async def explodes(event: Event) -> None:
        raise RuntimeError(f"handler says {HOSTILE}")

    with running_receiver(settings, {"explodes": explodes}) as r:
        assert r.post({"id": "evil[/]", "status": "Error", "error": HOSTILE}).status_code == 200
        assert r.post({"id": "[bold]ok", "status": "Pending"}).status_code == 200
        # A webhook with NaN is refused (400), but a polled get_result may carry one: record it
        # as the reconciler would.
        assert r.post(NAN_BODY).status_code == 400
        nan = notice_from_payload(json.loads(NAN_BODY))
        read_store(settings, lambda s: s.record(nan, deadline=None, handlers=[]))
        eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1)
    return tmp_path


def test_markup_in_a_task_id_does_not_break_the_listing(hostile: Path) -> None:
    out = run("events")
    assert out.exit_code == 0, out.output
    assert "evil[/]" in out.output
    assert "[bold]ok" in out.output
    assert "nan-task" in out.output
    assert_inert(out.output)


def test_show_prints_error_and_handler_text_literally_with_controls_escaped(
    hostile: Path,
) -> None:
    out = run("show", "evil[/]")
    assert out.exit_code == 0, out.output
    assert_inert(out.output)
    assert "[green]fine[/green] [bold red]x" in out.output  # the markup, as text
    assert "\\x1b[2J" in out.output
    assert "\\x1b]0;pwned\\x07" in out.output
    assert "\\x9b31m" in out.output
    assert "\\u202eevil" in out.output
    assert "RuntimeError: handler says [green]fine" in out.output
    assert "traceback of job" in out.output  # the traceback is shown, escaped the same way


def test_json_output_is_strict_and_safe(hostile: Path) -> None:
    out = run("events", "--json")
    assert out.exit_code == 0, out.output
    rows = {row["task_id"]: row for row in map(strict, out.output.splitlines())}
    assert rows["nan-task"]["payload"] == {
        "id": "nan-task",
        "status": "Pending",
        "progress": None,
        "eta": None,
    }
    assert rows["evil[/]"]["error"] == HOSTILE  # exact, once decoded
    assert_inert(out.output)  # \u001b escapes in JSON text, never the byte itself
    shown = run("show", "nan-task", "--json")
    assert shown.exit_code == 0, shown.output
    assert strict(shown.output)["event"]["payload"]["progress"] is None
    dead = strict(run("show", "evil[/]", "--json").output)
    assert "Traceback (most recent call last)" in dead["runs"][0]["traceback"]
    assert_inert(run("dead", "--json").output)


def test_literal_escapes_every_control_character() -> None:
    assert literal("a\x00b\x1bc\x7fd\x85e\u2028f") == "a\\x00b\\x1bc\\x7fd\\x85e\\u2028f"
    assert literal("tab\there\nnew") == "tab\\there\\nnew"
    assert literal("line 1\n\tline 2\x1b", multiline=True) == "line 1\n\tline 2\\x1b"
    assert literal("plain [text] é ✓") == "plain [text] é ✓"


def test_dumps_never_writes_nan() -> None:
    text = dumps({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    assert strict(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_signed_urls_are_shown_without_their_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with delivery_server() as delivery:
        settings = settings_for(tmp_path, sample_hosts=(delivery.host,), handler_max_attempts=1)
        monkeypatch.setenv("RECEIVER_DATABASE_URL", settings.database_url)
        signed = delivery.add("s.jpg") + "?se=2030-01-01T00%3A00%3A00Z&sig=SIGNATURE-0123"

        async def quotes_the_url(event: Event) -> None:
            raise RuntimeError(f"could not forward {event.payload['result']['sample']}")

        with running_receiver(settings, {"quotes": quotes_the_url}) as r:
            r.post(ready("signed", signed))
            eventually(lambda: r.metric("bfl_hooks_dead_jobs") == 1)
    outputs = [
        run(*args)
        for args in (
            ("events", "--json"),
            ("show", "signed"),
            ("show", "signed", "--json"),
            ("dead",),
            ("dead", "--json"),
        )
    ]
    for out in outputs:
        assert out.exit_code == 0, out.output
        assert "SIGNATURE-0123" not in out.output
    assert json.loads(outputs[0].output)["sample_url"] == f"{signed.split('?')[0]}?…"
    assert "could not forward" in outputs[1].output
