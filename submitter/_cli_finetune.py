"""``bfl-submit finetune``: create, list, details, delete (on BFL's legacy regional hosts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from submitter._cli_support import (
    client,
    emit,
    err,
    json_option,
    load_settings,
    parse_pairs,
    run,
    say,
)
from submitter._errors import TaskFailed
from submitter._settings import LEGACY_REGIONS

REGION = click.Choice(LEGACY_REGIONS)


@click.group()
def finetune() -> None:
    """Finetunes: trained and served only on api.eu1 / api.us1; each one's region is
    remembered under BFL_SUBMIT_DATA_DIR (default ./data)."""


@finetune.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--mode",
    type=click.Choice(["character", "product", "style", "general"]),
    required=True,
    help="What the finetune is about.",
)
@click.option("--trigger-word", default="TOK", show_default=True, help="The word that invokes it.")
@click.option("--comment", help="A note shown in details (default: the folder or file name).")
@click.option("--iterations", type=int, help="100 to 1000 (BFL's default 300).")
@click.option("--learning-rate", type=float)
@click.option("--captioning/--no-captioning", default=None, help="Caption images automatically.")
@click.option("--priority", type=click.Choice(["speed", "quality", "high_res_only"]))
@click.option("--type", "finetune_type", type=click.Choice(["full", "lora"]))
@click.option("--lora-rank", type=click.Choice(["16", "32"]))
@click.option("--region", type=REGION, help="Where to train it (default: us1, or eu1 for eu).")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_pairs,
    help="Any other field of the finetune request.",
)
@click.option(
    "--metadata",
    "-m",
    multiple=True,
    metavar="KEY=VALUE",
    callback=parse_pairs,
    help='Attach to the training; on("finetune") handlers see it as event.metadata.',
)
@click.option("--wait", is_flag=True, help="Poll until training ends.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=6 * 3600.0,
    show_default=True,
    help="With --wait: give up after this many seconds (exit 8).",
)
@json_option
def create(
    *,
    source: Path,
    mode: str,
    trigger_word: str,
    comment: str | None,
    iterations: int | None,
    learning_rate: float | None,
    captioning: bool | None,
    priority: str | None,
    finetune_type: str | None,
    lora_rank: str | None,
    region: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Train a finetune on SOURCE: a folder of 1-20 images (jpg, jpeg, png, webp; captions in
    same-named .txt files), zipped here, or such a ZIP. With RECEIVER_WEBHOOK_SECRET set, the
    training is recorded and its end reaches the receiver's on("finetune") handlers."""
    settings = load_settings()
    named = {
        "iterations": iterations,
        "learning_rate": learning_rate,
        "captioning": captioning,
        "priority": priority,
        "finetune_type": finetune_type,
        "lora_rank": int(lora_rank) if lora_rank else None,
    }
    extra = {k: v for k, v in named.items() if v is not None} | params
    default_region = {"eu": "eu1"}.get(settings.region, "us1")

    async def work() -> None:
        async with client(settings) as bfl:
            task = await bfl.finetunes.create(
                source,
                mode=mode,
                comment=comment,
                trigger_word=trigger_word,
                region=region or default_region,
                metadata=metadata,
                **extra,
            )
            if not as_json:
                say(f"training [bold]{escape(task.id)}[/bold] in {task.region}")
            result = None
            if wait:
                with err.status(f"training {escape(task.id)}"):
                    result = await bfl.wait(task, interval=2.0, timeout=timeout)
                if not result.ok:
                    raise TaskFailed(f"finetune {task.id} ended {result.status.value}", result)
        if as_json:
            emit({"task": task.as_dict(), "result": result.raw if result else None})
        else:
            click.echo(task.id)

    run(work, as_json)


@finetune.command(name="list")
@click.option("--region", type=REGION, help="Only this region (default: both).")
@json_option
def list_(region: str | None, as_json: bool) -> None:
    """List the key's finetunes, with the region each lives in."""
    settings = load_settings()

    async def work() -> list[dict[str, Any]]:
        async with client(settings, submitting=False) as bfl:
            return await bfl.finetunes.list(region)

    found = run(work, as_json)
    if as_json:
        emit({"finetunes": found})
        return
    table = Table("finetune_id", "region")
    for item in found:
        table.add_row(item["finetune_id"], item["region"])
    err.print(table)


@finetune.command()
@click.argument("finetune_id")
@json_option
def details(finetune_id: str, as_json: bool) -> None:
    """Show FINETUNE_ID's parameters and training status."""
    settings = load_settings()

    async def work() -> dict[str, Any]:
        async with client(settings, submitting=False) as bfl:
            return await bfl.finetunes.details(finetune_id)

    info = run(work, as_json)
    if as_json:
        emit({"finetune_details": info})
        return
    for key, value in info.items():
        click.echo(f"{key}\t{value}")


@finetune.command()
@click.argument("finetune_id")
@json_option
def delete(finetune_id: str, as_json: bool) -> None:
    """Delete FINETUNE_ID (inference with it fails from then on)."""
    settings = load_settings()

    async def work() -> dict[str, Any]:
        async with client(settings, submitting=False) as bfl:
            return await bfl.finetunes.delete(finetune_id)

    answer = run(work, as_json)
    if as_json:
        emit(answer)
    else:
        click.echo(f"deleted {finetune_id}")
