"""``bfl-submit batch FILE.jsonl``: the command around ``submitter._batch.run_batch``.

It refuses to run without a webhook unless told (``--no-webhook``), shows a progress bar of
finished lines, and on Ctrl-C prints what was saved and how to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from submitter._batch import Outcomes, run_batch
from submitter._cli_support import client, emit, err, json_option, load_settings, run
from submitter._cli_webhook import no_webhook_option, say_client_warnings, use_webhooks

#: Stopped by Ctrl-C (SIGINT), as shells report it: 128 + 2.
EXIT_INTERRUPTED = 130


def _table(outcomes: Outcomes) -> Table:
    table = Table(title="batch")
    table.add_column("outcome")
    table.add_column("lines", justify="right")
    table.add_column("detail")
    rows: list[tuple[str, int, str]] = [
        ("submitted", len(outcomes.submitted), ""),
        ("already submitted", len(outcomes.skipped), "skipped"),
        ("failed", len(outcomes.failed), _first(outcomes.failed)),
        ("uncertain", len(outcomes.uncertain), _first(outcomes.uncertain)),
        ("interrupted", len(outcomes.interrupted), "in flight at Ctrl-C: the rerun settles them"),
        ("not attempted", len(outcomes.not_attempted), _not_attempted_hint(outcomes)),
    ]
    for name, count, detail in rows:
        if count or name == "submitted":
            table.add_row(name, str(count), detail)
    return table


def _not_attempted_hint(outcomes: Outcomes) -> str:
    return (
        "stopped by Ctrl-C: rerun to resume"
        if outcomes.cancelled
        else ("rerun once the cause is fixed")
    )


def _first(items: list[dict[str, Any]]) -> str:
    if not items:
        return ""
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return f"line {items[0]['line']}: {items[0]['error']}"[:160] + more


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Submissions in flight at once (BFL's active-task limits are kept regardless).",
)
@click.option("--model", default="flux-dev", show_default=True, help="For lines naming none.")
@click.option(
    "--retry-uncertain",
    is_flag=True,
    help="Also resubmit lines BFL may already have (after a 5xx or a crash): may charge twice.",
)
@no_webhook_option
@json_option
def batch(
    *,
    file: Path,
    concurrency: int,
    model: str,
    retry_uncertain: bool,
    as_json: bool,
    no_webhook: bool,
) -> None:
    """Submit every line of FILE (JSONL); rerun it to resume where it stopped.

    Without RECEIVER_WEBHOOK_SECRET it refuses to start unless --no-webhook says that
    submitting without webhooks is meant. Ctrl-C stops it; what was done is saved.
    """
    settings = load_settings()
    webhooks = use_webhooks(settings, no_webhook=no_webhook, required=True)
    outcomes = Outcomes()

    async def work() -> Outcomes:
        async with client(settings, submitting=webhooks) as bfl:
            say_client_warnings(bfl)
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
            with Progress(*columns, console=err, transient=as_json) as progress:
                return await run_batch(
                    bfl,
                    file,
                    concurrency=concurrency,
                    model=model,
                    retry_uncertain=retry_uncertain,
                    progress=progress,
                    outcomes=outcomes,
                )

    interrupted = False
    try:
        run(work, as_json)
    except KeyboardInterrupt:
        interrupted = True
    code = EXIT_INTERRUPTED if interrupted else outcomes.exit_code()
    if as_json:
        emit(
            {
                "file": str(file),
                "submitted": outcomes.submitted,
                "skipped": outcomes.skipped,
                "failed": outcomes.failed,
                "uncertain": outcomes.uncertain,
                "not_attempted": outcomes.not_attempted,
                "interrupted": outcomes.interrupted,
                "exit_code": code,
            }
        )
    else:
        err.print(_table(outcomes))
    if interrupted:
        state = file.with_name(file.name + ".state")
        err.print(
            f"interrupted: {len(outcomes.submitted)} line(s) submitted in this run, "
            f"{len(outcomes.interrupted)} in flight; every step is saved in {escape(str(state))}."
            f" Rerun to resume: bfl-submit batch {escape(str(file))}"
        )
    raise SystemExit(code)
