"""The durability guard: on a function platform, refuse a store or storage that dies with the
instance.

AWS Lambda, Cloud Run (its services, functions and jobs), Vercel and Azure Functions give a
process a disk of its own that is thrown away with the instance, and run several at once. A
SQLite store or a local image folder there acknowledges webhooks that the next cold start no
longer has: BFL does not send them again, so they are lost for good. Every run mode opens its
resources through ``receiver.runtime.opened_services``, which calls ``check_durable`` first,
so ``serve``, ``work``, ``drain``, the app's lifespan and the serverless adapters all refuse
the same way. ``RECEIVER_ALLOW_EPHEMERAL_STORE=true`` lets a demo run anyway, with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from receiver.settings import Settings

log = logging.getLogger("receiver")

#: The variables each platform sets in every instance, most specific first: Cloud Run
#: functions set both ``FUNCTION_TARGET`` and ``K_SERVICE``, and are named by the former.
PLATFORM_VARIABLES: tuple[tuple[str, str], ...] = (
    ("AWS_LAMBDA_FUNCTION_NAME", "AWS Lambda"),
    ("FUNCTION_TARGET", "Cloud Run functions"),
    ("K_SERVICE", "Google Cloud Run"),
    ("CLOUD_RUN_JOB", "Cloud Run jobs"),  # a drain run as a job: its disk goes the same way
    ("VERCEL", "Vercel"),
    ("FUNCTIONS_WORKER_RUNTIME", "Azure Functions"),
)

#: How the message tells the user to fix it (the README's Serverless section says more).
FIX = (
    "set RECEIVER_DATABASE_URL=postgresql://… and RECEIVER_STORAGE_URL=s3://… (a database and "
    "a bucket that outlive the instance), or RECEIVER_ALLOW_EPHEMERAL_STORE=true for a demo "
    "that may lose events"
)


class EphemeralStoreRefused(Exception):
    """The receiver was started on a function platform with a store or an image storage on the
    instance's own disk. The message names the platform and the fix."""


@dataclass(frozen=True, slots=True)
class Platform:
    """A function platform, and the variable it was recognised by."""

    name: str
    variable: str


def function_platform(environ: Mapping[str, str] | None = None) -> Platform | None:
    """The function platform this process runs on, from its environment; None elsewhere."""
    env = os.environ if environ is None else environ
    for variable, name in PLATFORM_VARIABLES:
        if env.get(variable):
            return Platform(name, variable)
    return None


def ephemeral_parts(settings: Settings) -> list[str]:
    """What the settings keep on the local disk, each named with its setting."""
    parts = []
    if settings.database_url.startswith("sqlite:"):
        where = settings.database_url.removeprefix("sqlite:///").removeprefix("sqlite:")
        parts.append(f"the SQLite store {where} (RECEIVER_DATABASE_URL)")
    if not settings.storage_url.startswith("s3://"):
        where = settings.storage_url.removeprefix("file://")
        parts.append(f"the image folder {where} (RECEIVER_STORAGE_URL)")
    return parts


#: Warnings already logged by this process: ``serve`` checks before it opens anything and its
#: lifespan checks again, and a drain every minute need not repeat it each time.
_warned: set[str] = set()


def check_durable(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Raise EphemeralStoreRefused when this process runs on a function platform with a store
    or storage on the local disk, unless ``settings.allow_ephemeral_store`` (then warn once)."""
    platform = function_platform(environ)
    if platform is None:
        return
    parts = ephemeral_parts(settings)
    if not parts:
        return
    what = " and ".join(parts)
    if settings.allow_ephemeral_store:
        warning = (
            f"running on {platform.name} ({platform.variable} is set) with {what}: "
            "RECEIVER_ALLOW_EPHEMERAL_STORE=true, so webhooks acknowledged here are lost "
            "when the instance goes (a demo only)"
        )
        if warning not in _warned:
            _warned.add(warning)
            log.warning("%s", warning)
        return
    raise EphemeralStoreRefused(
        f"refusing to start on {platform.name} ({platform.variable} is set): {what} "
        f"{'live' if len(parts) > 1 else 'lives'} on the instance's own disk, which the "
        "platform throws away, and the webhooks acknowledged meanwhile would be lost with it; "
        f"{FIX}"
    )
