"""Finetunes: a folder or ZIP checked and uploaded, the region remembered, inference routed."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

from PIL import Image

from tests.submitter.conftest import World, cli, cli_json


def training_folder(root: Path, images: int = 2, captions: int = 1) -> Path:
    root.mkdir()
    for i in range(images):
        Image.new("RGB", (64, 64), (i * 40 % 255, 80, 120)).save(root / f"img{i}.jpg")
    for i in range(captions):
        (root / f"img{i}.txt").write_text(f"TOK number {i}")
    (root / ".DS_Store").write_bytes(b"junk the upload skips")
    return root


def test_finetune_lifecycle_and_finetuned_inference(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    folder = training_folder(tmp_path / "mydog")
    out = cli(
        env,
        "finetune",
        "create",
        str(folder),
        "--mode",
        "character",
        "--region",
        "eu1",
        "--trigger-word",
        "MYDOG",
        "--json",
        "--wait",
    )
    assert out.exit_code == 0, out.output
    finetune_id = cli_json(out)["task"]["id"]
    book = json.loads((tmp_path / "submitter" / "finetunes.json").read_text())
    assert book == {finetune_id: "eu1"}

    listed = cli_json(cli(env, "finetune", "list", "--json"))["finetunes"]
    assert {"finetune_id": finetune_id, "region": "eu1"} in listed
    details = cli_json(cli(env, "finetune", "details", finetune_id, "--json"))
    assert details["finetune_details"]["trigger_word"] == "MYDOG"
    assert details["finetune_details"]["finetune_comment"] == "mydog"
    assert details["finetune_details"]["region"] == "eu1"

    # The sandbox knows the finetune only on eu1: inference must be routed there.
    gen = cli(
        env,
        "generate",
        "MYDOG on a beach",
        "--model",
        "flux-pro-1.1-ultra-finetuned",
        "--finetune",
        finetune_id,
        "-m",
        "dog=yes",
        "--json",
    )
    assert gen.exit_code == 0, gen.output
    task = cli_json(gen)["task"]
    assert task["region"] == "eu1"
    assert world.wait_event(task["id"]).metadata == {"dog": "yes"}

    # Forgotten locally: the region is found again by asking each region's my_finetunes.
    (tmp_path / "submitter" / "finetunes.json").write_text("{broken")
    again = cli(env, "finetune", "details", finetune_id)
    assert again.exit_code == 0, again.output
    assert "eu1" in again.stdout

    deleted = cli(env, "finetune", "delete", finetune_id, "--json")
    assert deleted.exit_code == 0, deleted.output
    assert cli_json(deleted)["deleted_finetune_id"] == finetune_id
    assert cli_json(cli(env, "finetune", "list", "--json"))["finetunes"] == []
    gone = cli(env, "finetune", "details", finetune_id)
    assert gone.exit_code == 3
    assert "neither" in gone.stderr


def test_finetune_from_a_zip_and_the_human_listing(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, "PNG")
    with zipfile.ZipFile("set.zip", "w") as zf:
        zf.writestr("a.png", buffer.getvalue())
        zf.writestr("a.txt", "a red square")
        zf.writestr("__MACOSX/._a.png", b"resource fork")
    out = cli(
        env,
        "finetune",
        "create",
        "set.zip",
        "--mode",
        "product",
        "--type",
        "lora",
        "--lora-rank",
        "16",
        "--iterations",
        "100",
    )
    assert out.exit_code == 0, out.output
    finetune_id = out.stdout.strip()
    assert "us1" in out.stderr  # the default region
    listed = cli(env, "finetune", "list", "--region", "us1")
    assert finetune_id in listed.stderr  # a table, for humans
    time.sleep(0.4)  # training takes the sandbox 0.3 s
    details = cli_json(cli(env, "finetune", "details", finetune_id, "--json"))
    assert details["finetune_details"]["status"] == "Ready"
    assert details["finetune_details"]["lora_rank"] == 16


def test_bad_training_sets_are_refused_before_upload(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    before = cli_json(cli(env, "credits", "--json"))["credits"]
    Path("empty").mkdir()
    foreign = training_folder(tmp_path / "foreign")
    (foreign / "notes.pdf").write_bytes(b"%PDF")
    many = training_folder(tmp_path / "many", images=21, captions=0)
    orphan = training_folder(tmp_path / "orphan", images=1, captions=1)
    (orphan / "ghost.txt").write_text("no image of that name")
    fake = training_folder(tmp_path / "fake", images=1, captions=0)
    (fake / "liar.png").write_text("not a png at all")
    Path("broken.zip").write_bytes(b"PK\x03\x04 but then nothing")
    expected = {
        "empty": "no training images",
        str(foreign): "unsupported file",
        str(many): "21 training images",
        str(orphan): "ghost",
        str(fake): "liar.png",
        "broken.zip": "not a ZIP",
    }
    for source, message in expected.items():
        out = cli(env, "finetune", "create", source, "--mode", "style", "--json")
        assert out.exit_code == 3, (source, out.output)
        assert message in cli_json(out)["error"]["message"], source
    bad_param = cli(env, "finetune", "create", str(foreign), "--mode", "style", "--iterations", "5")
    assert bad_param.exit_code == 3
    assert "iterations" in bad_param.stderr
    assert cli_json(cli(env, "credits", "--json"))["credits"] == before


def test_unknown_finetune_is_a_validation_error(world: World, tmp_path: Path) -> None:
    env = world.env(tmp_path)
    out = cli(env, "generate", "x", "--model", "flux-pro-finetuned", "--finetune", "nope")
    assert out.exit_code == 3
    assert "neither eu1 nor us1" in out.stderr
    assert cli(env, "finetune", "delete", "nope").exit_code == 3
