"""``bfl-submit batch``: many lines, bad ones reported, and a rerun that resumes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from PIL import Image

from tests.submitter.conftest import World, cli, cli_json, sandbox
from tests.support import read_store


def write_jsonl(path: Path, *lines: Any) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def state_of(path: Path) -> dict[str, dict[str, Any]]:
    """The last record of each key in FILE.state."""
    states: dict[str, dict[str, Any]] = {}
    for raw in path.with_name(path.name + ".state").read_text().splitlines():
        if raw.startswith("{torn"):
            continue
        record = json.loads(raw)
        states[record["key"]] = record
    return states


def test_batch_submits_every_line_with_its_metadata_and_resumes(
    world: World, tmp_path: Path
) -> None:
    env = world.env(tmp_path)
    Image.new("RGB", (256, 256), "white").save("cat.png")
    jobs = write_jsonl(
        Path("jobs.jsonl"),
        {"prompt": "one", "width": 512, "height": 512, "metadata": {"row": 1}},
        {"prompt": "two", "metadata": {"row": 2}},
        "",
        {"prompt": "two", "metadata": {"row": 2}},  # the same line twice: two submissions
        {"model": "flux-kontext-pro", "image": "cat.png", "prompt": "snow", "metadata": {"row": 4}},
    )
    out = cli(env, "batch", str(jobs), "--concurrency", "3", "--json")
    assert out.exit_code == 0, out.output
    summary = cli_json(out)
    assert [s["line"] for s in summary["submitted"]] == [1, 2, 4, 5]
    for item in summary["submitted"]:
        assert world.wait_event(item["task_id"]).metadata["row"] in (1, 2, 4)
    credits = cli_json(cli(env, "credits", "--json"))["credits"]

    again = cli(env, "batch", str(jobs), "--json")
    assert again.exit_code == 0, again.output
    assert cli_json(again)["skipped"] == [1, 2, 4, 5]
    assert cli_json(again)["submitted"] == []
    assert cli_json(cli(env, "credits", "--json"))["credits"] == credits  # nothing re-sent

    human = cli(env, "batch", str(jobs))
    assert "already submitted" in human.stderr


def test_bad_lines_fail_alone_and_are_retried_on_rerun(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    jobs = write_jsonl(
        Path("mixed.jsonl"),
        {"prompt": "good"},
        "{not json",
        "[1, 2]",
        {"prompt": "x", "metadata": "not an object"},
        {"prompt": "x", "width": 1000},
        {"model": "flux-imaginary", "prompt": "x"},
        {"model": "flux-kontext-pro", "image": "missing.png", "prompt": "x"},
        {"prompt": "x [sandbox:no-such-fault]"},
    )
    out = cli(env, "batch", str(jobs), "--json")
    assert out.exit_code == 3, out.output
    summary = cli_json(out)
    assert [s["line"] for s in summary["submitted"]] == [1]
    assert [f["line"] for f in summary["failed"]] == [2, 3, 4, 5, 6, 7, 8]
    assert all(f["exit_code"] == 3 for f in summary["failed"])
    assert "not JSON" in summary["failed"][0]["error"]
    assert {r["state"] for r in state_of(jobs).values()} == {"submitted", "failed"}

    rerun = cli_json(cli(env, "batch", str(jobs), "--json"))
    assert rerun["skipped"] == [1]
    assert [f["line"] for f in rerun["failed"]] == [2, 3, 4, 5, 6, 7, 8]

    human = cli(env, "batch", str(jobs))
    assert human.exit_code == 3
    assert "failed" in human.stderr


def test_out_of_credits_stops_the_batch(world: World, tmp_path: Path) -> None:
    jobs = write_jsonl(Path("many.jsonl"), *({"prompt": f"p{i}"} for i in range(6)))
    with sandbox(credits=5) as api:  # two flux-dev tasks at 2.5
        env = world.env(tmp_path, BFL_API_URL=api)
        out = cli(env, "batch", str(jobs), "--concurrency", "1", "--json")
    assert out.exit_code == 4
    summary = cli_json(out)
    assert [s["line"] for s in summary["submitted"]] == [1, 2]
    assert [f["line"] for f in summary["failed"]] == [3]
    assert summary["not_attempted"] == [4, 5, 6]


def test_a_line_interrupted_while_sending_is_settled_from_the_store(
    world: World, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path}/store.db"
    env = world.env(tmp_path, RECEIVER_DATABASE_URL=db)
    jobs = write_jsonl(
        Path("crash.jsonl"), {"prompt": "bound"}, {"prompt": "never sent"}, {"prompt": "limbo"}
    )
    lines = jobs.read_text().splitlines()
    keys = [json.loads(r)["key"] for r in _fake_crash(jobs, lines)]

    async def prepare(store: Any) -> None:
        await store.prepare_submission("ref-bound", "flux-dev", {})
        await store.bind_submission("ref-bound", "task-from-before", "http://x/v1/get_result")
        await store.prepare_submission("ref-limbo", "flux-dev", {})  # POST never answered

    read_store(world.receiver_settings.model_copy(update={"database_url": db}), prepare)
    out = cli(env, "batch", str(jobs), "--json")
    assert out.exit_code == 6, out.output  # one line stays uncertain
    summary = cli_json(out)
    assert summary["skipped"] == [1]  # the store says BFL took it
    assert [s["line"] for s in summary["submitted"]] == [2]  # the store never saw it
    assert [u["line"] for u in summary["uncertain"]] == [3]
    states = state_of(jobs)
    assert states[keys[0]]["task"]["id"] == "task-from-before"
    assert states[keys[2]]["state"] == "uncertain"

    forced = cli_json(cli(env, "batch", str(jobs), "--retry-uncertain", "--json"))
    assert [s["line"] for s in forced["submitted"]] == [3]
    assert forced["exit_code"] == 0


def _fake_crash(jobs: Path, lines: list[str]) -> list[str]:
    """Write the state a crash mid-POST leaves: every line ``sending``."""
    records = []
    for number, (line, ref) in enumerate(
        zip(lines, ["ref-bound", "ref-unseen", "ref-limbo"], strict=True), start=1
    ):
        key = hashlib.sha256(line.strip().encode()).hexdigest()[:32] + ":1"
        records.append(json.dumps({"key": key, "line": number, "ref": ref, "state": "sending"}))
    jobs.with_name(jobs.name + ".state").write_text("\n".join(records) + "\n{torn")
    return records


def test_empty_and_undecodable_files(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    Path("empty.jsonl").write_text("\n\n")
    out = cli(env, "batch", "empty.jsonl", "--json")
    assert out.exit_code == 0
    assert cli_json(out)["submitted"] == []
    Path("latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert cli(env, "batch", "latin1.jsonl").exit_code == 2
