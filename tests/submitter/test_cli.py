"""``bfl-submit`` end to end: the shell → the sandbox → the receiver → a handler; exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.submitter.conftest import World, cli, cli_json, sandbox
from tests.support import SECRET


def test_generate_reaches_the_handler_with_the_metadata(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    out = cli(env, "generate", "a red fox", "-m", "chat_id=42", "-m", "user=ann", "--json")
    assert out.exit_code == 0, out.output
    task = cli_json(out)["task"]
    assert task["webhook"] is True
    event = world.wait_event(task["id"])
    assert event.metadata == {"chat_id": 42, "user": "ann"}
    image = world.image_for(task["id"])
    assert image is not None
    assert image[:3] == b"\xff\xd8\xff"
    # Neither the key, the master secret nor the per-task secret is ever printed.
    for secret in (env["BFL_API_KEY"], SECRET):
        assert secret is not None
        assert secret not in out.output


def test_generate_wait_out_saves_the_image(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    out = cli(env, "generate", "a fox", "--format", "png", "--out", "fox.png", "--seed", "3")
    assert out.exit_code == 0, out.output
    assert Path("fox.png").read_bytes()[:4] == b"\x89PNG"
    assert "Ready" in out.stdout
    assert "saved fox.png" in out.stderr


def test_no_signed_sample_url_in_any_output(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    shown = cli(env, "generate", "a signed fox", "--wait")
    as_json = cli(env, "generate", "a signed fox", "--wait", "--json")
    for out in (shown, as_json):
        assert out.exit_code == 0, out.output
        assert "sig=" not in out.output  # the sample's signature is a credential
    assert "/sample.jpeg?…" in shown.stderr
    sample = cli_json(as_json)["result"]["result"]["sample"]
    assert sample.endswith("/sample.jpeg?…")


def test_registering_nowhere_is_said_once_on_stderr(world: World, tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "receiver.db"
    env = world.env(tmp_path, RECEIVER_DATABASE_URL=f"sqlite:///{missing}")
    out = cli(env, "generate", "from a bot with no store")
    assert out.exit_code == 0, out.output
    said = " ".join(out.stderr.split())
    assert said.count("warning: cannot register submissions") == 1
    assert f"at {missing} (it does not exist)" in said
    assert "the metadata still travels in the webhook URL" in said
    assert not missing.parent.exists()  # and no store of its own was made


def test_edit_sends_the_file_and_the_handler_gets_the_result(world: World, tmp_path: Path) -> None:
    Image.new("RGB", (400, 300), "blue").save("in.jpg")
    out = cli(
        world.env(tmp_path), "edit", "in.jpg", "make it red", "--aspect-ratio", "4:3",
        "-m", "order=17", "--json", "--wait",
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    shown = cli_json(out)
    assert shown["result"]["status"] == "Ready"
    assert world.wait_event(shown["task"]["id"]).metadata == {"order": 17}


def test_status_uses_the_recorded_polling_url(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    task = cli_json(cli(env, "generate", "status me", "--json", "-m", "a=b"))["task"]
    world.wait_event(task["id"])
    # The sandbox knows a task only on the region host its polling_url names, not on the
    # global one: an answer of Ready proves the recorded URL was used.
    out = cli(env, "status", task["id"], "--json")
    assert out.exit_code == 0, out.output
    shown = cli_json(out)
    assert shown["result"]["status"] == "Ready"
    assert shown["task"]["metadata"] == {"a": "b"}
    human = cli(env, "status", task["id"])
    assert f"{task['id']}\tReady" in human.stdout


def test_status_of_an_unknown_task(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    out = cli(env, "status", "no-such-task")
    assert out.exit_code == 0, out.output
    assert "Task not found" in out.stdout
    waited = cli(env, "status", "no-such-task", "--wait", "--json")
    assert waited.exit_code == 7
    assert cli_json(waited)["error"]["type"] == "TaskFailed"


def test_credits(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    assert cli(env, "credits").stdout.strip() == "1000"
    assert cli_json(cli(env, "credits", "--json")) == {"credits": 1000.0}


def test_moderated_task_with_wait_is_exit_7(world: World, tmp_path: Path) -> None:
    out = cli(world.env(tmp_path), "generate", "x [sandbox:content-moderated]", "--wait", "--json")
    assert out.exit_code == 7
    error = cli_json(out)
    assert error["exit_code"] == 7
    assert error["error"]["result"]["status"] == "Content Moderated"


def test_still_running_at_the_timeout_is_exit_8(world: World, tmp_path: Path) -> None:
    out = cli(world.env(tmp_path), "generate", "slow", "--wait", "--timeout", "0.1")
    assert out.exit_code == 8, out.output


def test_client_side_validation_is_exit_3_and_costs_nothing(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    for args in (
        ["generate", "x", "--width", "1000"],
        ["generate", "x", "--aspect-ratio", "16:9"],  # flux-dev takes width/height
        ["generate", "x", "--model", "flux-imaginary"],
        ["generate", "x", "--safety-tolerance", "9"],
        ["generate", "x", "--param", "steps=0"],
        ["generate", "x", "--param", 'width="1024"'],  # a string is not an integer
    ):
        out = cli(env, *args, "--json")
        assert out.exit_code == 3, (args, out.output)
        assert cli_json(out)["error"]["type"] == "ValidationError"
    assert cli_json(cli(env, "credits", "--json")) == {"credits": 1000.0}


def test_server_side_422_is_exit_3(world: World, tmp_path: Path) -> None:
    out = cli(world.env(tmp_path), "generate", "x [sandbox:bogus]", "--json")
    assert out.exit_code == 3
    assert cli_json(out)["error"]["errors"][0]["loc"] == ["header", "x-sandbox-fault"]


def test_out_of_credits_is_exit_4(world: World, tmp_path: Path) -> None:
    with sandbox(credits=1) as api:
        out = cli(world.env(tmp_path, BFL_API_URL=api), "generate", "x", "--json")
    assert out.exit_code == 4
    assert cli_json(out)["error"]["type"] == "OutOfCredits"


def test_rate_limited_after_the_retries_is_exit_5(world: World, tmp_path: Path) -> None:
    with sandbox(max_active_tasks=1, task_seconds=30) as api:
        env = world.env(tmp_path, BFL_API_URL=api, RECEIVER_WEBHOOK_SECRET=None)
        assert cli(env, "generate", "hog").exit_code == 0  # another tool took the only slot
        env["BFL_RETRY_ATTEMPTS"] = "2"
        out = cli(env, "generate", "blocked")
    assert out.exit_code == 5, out.output
    assert "429" in out.stderr


def test_network_failure_is_exit_6(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path, BFL_API_URL="http://127.0.0.1:9", BFL_RETRY_ATTEMPTS="1")
    out = cli(env, "generate", "x", "--json")
    assert out.exit_code == 6
    assert cli_json(out)["error"]["type"] == "TransportError"
    assert cli(env, "credits").exit_code == 6


def test_wrong_key_is_exit_1_and_the_key_is_not_printed(world: World, tmp_path: Path) -> None:
    with sandbox(api_keys=("right",)) as api:
        env = world.env(tmp_path, BFL_API_URL=api, BFL_API_KEY="sk-leak-me-not")
        out = cli(env, "generate", "x")
    assert out.exit_code == 1
    assert "401" in out.stderr
    assert "sk-leak-me-not" not in out.output


def test_without_a_webhook_secret_it_warns_loudly_and_still_submits(
    world: World, tmp_path: Path
) -> None:
    env = world.env(tmp_path, RECEIVER_WEBHOOK_SECRET=None)
    out = cli(env, "generate", "polled", "--out", "p.jpg")
    assert out.exit_code == 0, out.output
    assert "warning: RECEIVER_WEBHOOK_SECRET is not set" in out.stderr
    assert f"no .env in {tmp_path} or any folder above it" in " ".join(out.stderr.split())
    assert "WITHOUT a webhook" in out.stderr
    assert "no webhook" in out.stderr
    assert Path("p.jpg").is_file()
    quiet = cli(env, "generate", "polled", "--no-webhook")
    assert quiet.exit_code == 0, quiet.output
    assert "warning" not in quiet.stderr  # said on purpose: no warning


def test_bad_settings_are_a_usage_error(world: World, tmp_path: Path) -> None:
    out = cli(world.env(tmp_path, BFL_REGION="mars"), "credits")
    assert out.exit_code == 2
    assert "BFL_REGION" in out.output


def test_help_documents_the_exit_codes() -> None:
    out = cli({}, "--help")
    assert out.exit_code == 0
    for line in ("3  validation", "4  out of credits", "5  rate limited", "6  network", "7  with"):
        assert line in out.stdout


def test_hostile_arguments_are_usage_errors(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    Path("notes.txt").write_text("not an image")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    Path("ok.png").write_bytes(buffer.getvalue())
    for args in (
        ["generate"],  # no prompt
        ["generate", "x", "-m", "no-equals-sign"],
        ["generate", "x", "-m", "=value"],
        ["generate", "x", "--param", "width"],
        ["generate", "x", "--width", "wide"],
        ["generate", "x", "--width", "512", "--param", "width=512"],
        ["generate", "x", "--format", "gif"],
        ["generate", "x", "--param", "prompt=other"],
        ["generate", "x", "--param", "metadata={}"],
        ["edit", "ok.png", "x", "--param", "model=flux-dev"],
        ["generate", "x", "--image-file", "image=missing.png"],
        ["generate", "x", "--image-file", "nofield"],
        ["edit", "missing.png", "x"],
        ["edit", ".", "x"],
        ["edit", "ok.png", "x", "--reference", "missing.png"],
        ["status"],
        ["status", "t", "--region", "mars"],
        ["credits", "extra"],
        ["batch", "missing.jsonl"],
        ["batch", "ok.png", "--concurrency", "0"],
        ["finetune", "list", "--region", "mars"],
        ["finetune", "details"],
        ["finetune", "delete"],
        ["finetune", "create", "ok.png"],  # --mode is required
        ["finetune", "create", "missing-folder", "--mode", "style"],
        ["finetune", "create", ".", "--mode", "everything"],
        ["nonsense"],
    ):
        out = cli(env, *args)
        assert out.exit_code == 2, (args, out.output)


def test_hostile_files_are_validation_errors(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    Path("notes.txt").write_text("not an image")
    with Path("huge.png").open("wb") as sparse:
        sparse.truncate(25 * 1024 * 1024)
    Image.new("1", (5000, 4200)).save("20mp.png")
    Path("truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    for name in ("notes.txt", "huge.png", "20mp.png", "truncated.jpg"):
        out = cli(env, "edit", name, "x", "--json")
        assert out.exit_code == 3, (name, out.output)
    assert "20 megapixels" in cli(env, "edit", "20mp.png", "x").stderr
    assert "20 MB" in cli(env, "edit", "huge.png", "x").stderr
    out = cli(env, "edit", "notes.txt", "x", "--model", "flux-dev")
    assert out.exit_code == 3
    assert "does not edit" in out.stderr


def test_an_unusable_store_is_reported_not_a_traceback(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = cli(world.env(tmp_path, RECEIVER_DATABASE_URL="mysql://db/x"), "generate", "x")
    assert out.exit_code == 2
    assert "RECEIVER_DATABASE_URL" in out.output
    # A store that cannot be used is warned about, and the task still goes out: its metadata
    # travels in the webhook URL.
    Path("not-a-db").write_bytes(b"this is not SQLite" * 100)
    out = cli(world.env(tmp_path, RECEIVER_DATABASE_URL="sqlite:///not-a-db"), "generate", "x")
    assert out.exit_code == 0, out.output
    # (A real run prints the warning on stderr: see tests/test_correlation_e2e.py.)
    where = Path("not-a-db").resolve()
    assert f"cannot register submissions in the receiver's store at {where}" in caplog.text
    Path("a-dir").mkdir()
    out = cli(world.env(tmp_path, RECEIVER_DATABASE_URL="sqlite:///a-dir"), "generate", "x")
    assert out.exit_code == 0, out.output
    assert f"store at {Path('a-dir').resolve()}" in caplog.text
    assert "Traceback" not in out.output
