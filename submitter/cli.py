"""``bfl-submit``: generate, edit, batch, status, credits and finetunes from the shell."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.markup import escape

from receiver.store import Submission, opened_store
from submitter._cli_batch import batch
from submitter._cli_finetune import finetune
from submitter._cli_support import (
    EXIT_CODES_HELP,
    client,
    describe_task,
    emit,
    err,
    json_option,
    load_settings,
    parse_pairs,
    run,
    say,
    unsigned,
)
from submitter._cli_webhook import no_webhook_option, say_client_warnings, use_webhooks
from submitter._client import BFL
from submitter._errors import TaskFailed
from submitter._settings import LEGACY_REGIONS, Settings
from submitter._types import Result, Task

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(package_name="bfl-hooks", prog_name="bfl-submit")
def main() -> None:
    """Submit work to the BFL image API (or the local sandbox), with the receiver's webhook.

    Settings come from the environment or .env: BFL_API_KEY, BFL_API_URL or BFL_REGION,
    RECEIVER_PUBLIC_URL, RECEIVER_WEBHOOK_SECRET, RECEIVER_DATABASE_URL. Without a key the
    local sandbox (http://127.0.0.1:8001) is used. Without a webhook secret, batch refuses
    and generate/edit warn, unless --no-webhook says to submit without one (and poll).
    """
    # What the client logs as a warning, the commands say themselves (once, as a note).
    logging.getLogger("submitter").addHandler(logging.NullHandler())


def _waiting(fn: F) -> F:
    """--wait, --out, --timeout: follow the task to its end (and save its image)."""
    fn = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=600.0,
        show_default=True,
        help="With --wait: give up after this many seconds (exit 8).",
    )(fn)
    fn = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Save the image here (implies --wait).",
    )(fn)
    return click.option("--wait", is_flag=True, help="Poll until the task ends.")(fn)


def _submit_options(fn: F) -> F:
    """The options generate and edit share."""
    options = [
        click.option("--seed", type=int, help="Seed, for reproducible results."),
        click.option(
            "--format",
            "output_format",
            type=click.Choice(["jpeg", "png", "webp"]),
            help="Output image format.",
        ),
        click.option("--safety-tolerance", type=int, help="0 (strict) to 6 (permissive)."),
        click.option(
            "--upsample",
            is_flag=True,
            default=None,
            help="Let BFL rewrite the prompt (prompt_upsampling).",
        ),
        click.option("--aspect-ratio", help="Like 16:9 (models that take a ratio)."),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="KEY=VALUE",
            callback=parse_pairs,
            help="Any other field of the model's request (VALUE as JSON when it parses).",
        ),
        click.option(
            "--metadata",
            "-m",
            multiple=True,
            metavar="KEY=VALUE",
            callback=parse_pairs,
            help="Attach to the task; handlers see it as event.metadata. Repeatable.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return _waiting(json_option(no_webhook_option(fn)))


#: Given as arguments or options of their own, never through --param.
RESERVED = frozenset({"prompt", "model", "metadata", "references", "image"})


def _body(params: dict[str, Any], **named: Any) -> dict[str, Any]:
    body = {k: v for k, v in named.items() if v is not None}
    clash = sorted((set(body) | RESERVED) & set(params))
    if clash:
        raise click.BadParameter(
            f"{clash[0]} has an argument or option of its own", param_hint="--param"
        )
    return {**body, **params}


@main.command()
@click.argument("prompt")
@click.option("--model", default="flux-dev", show_default=True, help="The endpoint to submit to.")
@click.option("--width", type=int, help="Width in pixels (multiple of 32 for FLUX.1 models).")
@click.option("--height", type=int, help="Height in pixels.")
@click.option("--finetune", "finetune_id", help="A finetune id (with a *-finetuned model).")
@click.option(
    "--image-file",
    "image_files",
    multiple=True,
    metavar="FIELD=PATH",
    help="An image field from a file, e.g. image=photo.png mask=mask.png (fill, expand...).",
)
@_submit_options
def generate(
    *,
    prompt: str,
    model: str,
    width: int | None,
    height: int | None,
    finetune_id: str | None,
    image_files: tuple[str, ...],
    seed: int | None,
    output_format: str | None,
    safety_tolerance: int | None,
    upsample: bool | None,
    aspect_ratio: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any],
    wait: bool,
    out: Path | None,
    timeout: float,
    as_json: bool,
    no_webhook: bool,
) -> None:
    """Generate an image from PROMPT."""
    settings = load_settings()
    webhooks = use_webhooks(settings, no_webhook=no_webhook, required=False)
    body = _body(
        params,
        width=width,
        height=height,
        finetune_id=finetune_id,
        seed=seed,
        output_format=output_format,
        safety_tolerance=safety_tolerance,
        prompt_upsampling=upsample,
        aspect_ratio=aspect_ratio,
    )
    for item in image_files:
        field, sep, path = item.partition("=")
        if not sep or not field or not path:
            raise click.BadParameter(f"{item!r} is not FIELD=PATH", param_hint="--image-file")
        if not Path(path).is_file():
            raise click.BadParameter(f"{path}: no such file", param_hint="--image-file")
        body[field] = Path(path)

    async def work() -> None:
        async with client(settings, submitting=webhooks) as bfl:
            say_client_warnings(bfl)
            _warn_metadata(bfl, metadata)
            task = await bfl.generate(model, metadata=metadata, prompt=prompt, **body)
            await _follow(bfl, task, wait=wait, out=out, wait_timeout=timeout, as_json=as_json)

    run(work, as_json)


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("prompt")
@click.option("--model", default="flux-kontext-pro", show_default=True)
@click.option(
    "--reference",
    "references",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Another input image (input_image_2, ...), for models that take several.",
)
@_submit_options
def edit(
    *,
    image: Path,
    prompt: str,
    model: str,
    references: tuple[Path, ...],
    seed: int | None,
    output_format: str | None,
    safety_tolerance: int | None,
    upsample: bool | None,
    aspect_ratio: str | None,
    params: dict[str, Any],
    metadata: dict[str, Any],
    wait: bool,
    out: Path | None,
    timeout: float,
    as_json: bool,
    no_webhook: bool,
) -> None:
    """Edit IMAGE (JPEG, PNG or WebP; 20 MB / 20 MP at most) as PROMPT says."""
    settings = load_settings()
    webhooks = use_webhooks(settings, no_webhook=no_webhook, required=False)
    body = _body(
        params,
        seed=seed,
        output_format=output_format,
        safety_tolerance=safety_tolerance,
        prompt_upsampling=upsample,
        aspect_ratio=aspect_ratio,
    )

    async def work() -> None:
        async with client(settings, submitting=webhooks) as bfl:
            say_client_warnings(bfl)
            _warn_metadata(bfl, metadata)
            task = await bfl.edit(
                image, prompt, model=model, references=references, metadata=metadata, **body
            )
            await _follow(bfl, task, wait=wait, out=out, wait_timeout=timeout, as_json=as_json)

    run(work, as_json)


@main.command()
@click.argument("task_id")
@click.option(
    "--region",
    type=click.Choice(LEGACY_REGIONS),
    help="Ask this legacy host (finetuned tasks) when the store does not know the task.",
)
@_waiting
@json_option
def status(
    *, task_id: str, region: str | None, wait: bool, out: Path | None, timeout: float, as_json: bool
) -> None:
    """Show TASK_ID's status, at the polling URL recorded when it was submitted."""
    settings = load_settings()

    async def work() -> None:
        submission = await _recorded(settings, task_id)
        polling_url = submission.polling_url if submission else None
        task = Task(
            id=task_id,
            endpoint=submission.endpoint if submission else "?",
            polling_url=polling_url,
            ref=submission.ref if submission else None,
            metadata=submission.metadata if submission else {},
            # Unrecorded: no grace for "Task not found" (it was not just submitted).
            submitted_at=submission.submitted_at if submission else 0.0,
            region=region,
        )
        async with client(settings, submitting=False) as bfl:
            if wait or out:
                await _follow(bfl, task, wait=True, out=out, wait_timeout=timeout, as_json=as_json)
                return
            result = await bfl.result(task)
        if as_json:
            emit({"task": task.as_dict(), "result": result.raw})
        else:
            _show_result(result, task)

    run(work, as_json)


@main.command()
@json_option
def credits(as_json: bool) -> None:
    """Show the account's credit balance."""
    settings = load_settings()

    async def work() -> float:
        async with client(settings, submitting=False) as bfl:
            return await bfl.credits()

    balance = run(work, as_json)
    if as_json:
        emit({"credits": balance})
    else:
        click.echo(f"{balance:g}")


main.add_command(batch)
main.add_command(finetune)


def _warn_metadata(bfl: BFL, metadata: dict[str, Any]) -> None:
    if metadata and bfl.webhook is None:
        say("[yellow]note:[/yellow] no webhook: the metadata stays with this command")


async def _recorded(settings: Settings, task_id: str) -> Submission | None:
    """The submission recorded for ``task_id``, if the store exists and knows it."""
    url = settings.database_url
    if not _store_exists(url):
        return None  # no store yet: do not create one just to look
    try:
        async with opened_store(url) as store:
            return await store.get_submission(task_id=task_id)
    except (OSError, ValueError) as exc:
        say(f"[yellow]note:[/yellow] the store cannot be read ({escape(str(exc))})")
        return None


def _store_exists(url: str) -> bool:
    return not url.startswith("sqlite:///") or Path(url.removeprefix("sqlite:///")).is_file()


async def _follow(
    bfl: BFL, task: Task, *, wait: bool, out: Path | None, wait_timeout: float, as_json: bool
) -> None:
    """Print the task; with --wait/--out poll it to its end, save the image, check success."""
    if not as_json:
        say(describe_task(task.as_dict()))
    if not (wait or out):
        if as_json:
            emit({"task": task.as_dict()})
        else:
            click.echo(task.id)
        return
    with err.status(f"waiting for {escape(task.id)}"):
        result = await bfl.wait(task, timeout=wait_timeout)
    if not result.ok:
        if not as_json:
            _show_result(result, task)
        raise TaskFailed(f"task {task.id} ended {result.status.value}", result)
    saved = await bfl.download(result, out) if out else None
    if as_json:
        emit({"task": task.as_dict(), "result": result.raw, "file": str(saved) if saved else None})
        return
    _show_result(result, task)
    if saved:
        say(f"saved [bold]{escape(str(saved))}[/bold]")


def _show_result(result: Result, task: Task) -> None:
    click.echo(f"{result.id}\t{result.status.value}")
    if result.progress is not None:
        say(f"progress {result.progress:.0%}")
    if result.sample:
        # Its signature is a credential: never printed. --out saves the image itself.
        say(f"sample (valid ~10 min; --out FILE saves it): {escape(unsigned(result.sample))}")
    if result.details:
        say(f"details: {escape(str(result.details))}")
    if task.metadata:
        say(f"metadata: {escape(str(task.metadata))}")
