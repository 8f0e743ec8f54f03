"""Receiver settings: one object, read from the environment (``RECEIVER_*``) or ``.env``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.envfile import (
    UpwardEnvSettings,
    base_folder,
    default_public_url,
    resolve_relative,
    sqlite_file,
    store_note,
)

#: BFL serves results from hosts like delivery-eu1.bfl.ai and delivery.us1.bfl.ai (its API docs),
#: and from two Azure storage accounts (its webhook guide, its older client's README). Those two
#: are named exactly: anyone can create a *.blob.core.windows.net account, so a glob there would
#: let any webhook sender make the receiver fetch from a host they own. ``https://`` makes every
#: default https-only (see ``receiver.download.host_allowed``).
BFL_DELIVERY_HOSTS = (
    "https://delivery-*.bfl.ai",
    "https://delivery.*.bfl.ai",
    "https://bfldeliveryprod.blob.core.windows.net",
    "https://bflapistorage.blob.core.windows.net",
)
#: Where polling URLs may point (api.bfl.ai, api.eu.bfl.ai, api.us1.bfl.ai...): the API key goes
#: to these hosts only.
BFL_API_HOSTS = ("api.bfl.ai", "api.*.bfl.ai")

CommaList = Annotated[tuple[str, ...], NoDecode]


def split_commas(value: object) -> object:
    """``"a, b,,c"`` → ``("a", "b", "c")``; anything else unchanged (for ``mode="before"``)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(UpwardEnvSettings):
    """Everything the receiver can be told; tests build one directly.

    ``.env`` is the first found in the current folder or a parent; relative ``sqlite:///`` and
    ``file://`` paths are made absolute against that file's folder (else the current folder),
    so every command, run from anywhere in the project, uses the same store
    (``receiver.envfile``).
    """

    model_config = SettingsConfigDict(
        env_prefix="RECEIVER_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    webhook_secret: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    """Accepted webhook secrets, comma-separated so an old and a new one overlap during rotation."""

    database_url: str = Field(default="sqlite:///./data/receiver.db", validate_default=True)
    """``sqlite:///path`` (embedded default) or ``postgresql://...``; a relative path is resolved
    against the folder of the ``.env`` found (else the current folder): the value is absolute."""

    storage_url: str = Field(default="file://./data/samples", validate_default=True)
    """Where images go: ``file://dir`` or ``s3://bucket/prefix``; relative as ``database_url``."""

    allow_ephemeral_store: bool = False
    """On a function platform (Lambda, Cloud Run, Vercel, Azure Functions), start even with a
    SQLite store or a local image folder, which die with the instance: for demos only
    (``receiver.durability``)."""

    handlers: CommaList = ()
    """Extra handlers as ``module:callable``; entry points in ``bfl_hooks.handlers`` load too."""

    sample_hosts: CommaList = BFL_DELIVERY_HOSTS
    """Hosts a sample may come from: names or globs, ``https://`` to require https (globs always
    do); an exact name without it (a local sandbox, ``127.0.0.1:8001``) may use plain http."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str = "http://127.0.0.1:8000"
    """The URL BFL reaches this receiver at; the submitter appends ``/webhooks/bfl``.
    Unset: ``http://127.0.0.1:<port>``, so ``RECEIVER_PORT`` moves it too."""

    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    """Webhook bodies above this are refused with 413 before they are read in full."""

    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """A connection must send a request's headers within this (from its first byte, or from
    opening); otherwise it is closed. Idle and half-sent connections cannot pile up."""

    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """A webhook's body must arrive within this after its headers: 408 (and closed) if not."""

    keep_alive_timeout_seconds: int = Field(default=5, ge=1)
    """An idle keep-alive connection is closed after this (uvicorn's ``timeout_keep_alive``)."""

    max_unverified_reads: int = Field(default=64, ge=1)
    """Webhook bodies read at once before they are authenticated (only an ``X-BFL-Signature``
    needs the body to check): above it, 503 with ``Retry-After``. Bounds the memory junk
    signatures can take to this many times ``max_body_bytes``."""

    metrics_token: SecretStr | None = None
    """When set, ``GET /metrics`` needs ``Authorization: Bearer <token>``: for receivers whose
    webhook port is public (the metrics name handler modules and show traffic)."""

    admin_token: SecretStr | None = None
    """When set, ``POST /drain?budget=SECONDS`` runs a drain for ``Authorization: Bearer
    <token>`` (Cloud Scheduler and the like); unset, that route answers 404."""

    max_connections: int = Field(default=2048, ge=1)
    """Open connections at most. At the bound the oldest one still waiting on its client is
    closed for a newcomer; when all are busy, newcomers get 503 with ``Retry-After``."""

    max_sample_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Downloads above this are aborted (BFL images are a few MB at most)."""

    sample_ttl_seconds: float = Field(default=600.0, gt=0)
    """How long a signed URL lives when it does not say (``se=``): BFL documents 10 minutes."""

    run_worker: bool = True
    """Run downloads and handlers in this process; False makes an ingest-only replica."""

    inline_budget_seconds: float = Field(default=0.0, ge=0)
    """After recording a webhook, run that task's jobs (download, handlers) in the request for
    up to this long, then answer 200 whatever happened (``receiver.inline``); 0 is off. Capped
    at 20 s whatever is set: BFL wants an answer within 30 s, and resends after 1, 5 and 30 s."""

    download_workers: int = Field(default=32, ge=1, le=1024)
    """Downloads run at once. A pool of their own: hung handlers can never hold a download
    back until its signed URL dies."""

    handler_workers: int = Field(default=32, ge=1, le=1024)
    """Handler runs executed at once."""

    shutdown_grace_seconds: float = Field(default=25.0, ge=0)
    """On SIGTERM, how long running jobs may take to finish before they are handed back
    (queued again, the attempt not counted). 25 s fits inside Kubernetes' default 30 s."""

    job_lease_seconds: float = Field(default=30.0, gt=0)
    """A running job is renewed at a third of this; a crashed worker's jobs return after it."""

    handler_max_attempts: int = Field(default=5, ge=1)
    handler_backoff_seconds: float = Field(default=2.0, gt=0)
    """First retry delay for a failing handler; doubles each attempt, capped at 5 minutes."""

    handler_timeout_seconds: float = Field(default=300.0, gt=0)

    rate_limit_max_wait_seconds: float = Field(default=3600.0, ge=0)
    """How long in all a handler's job may wait out rate limits (``RateLimited``, a chat
    platform's 429) without using up attempts; past it, each wait counts as an attempt."""

    poll_interval_seconds: float = Field(default=1.0, gt=0)
    """How often idle workers look for due jobs that no wake-up announced (retries, replays)."""

    reconcile_after: float = Field(default=60.0, gt=0)
    """Seconds after submission before a task with no terminal webhook is polled instead."""

    bfl_api_key: SecretStr | None = Field(default=None, validation_alias="BFL_API_KEY")
    """Needed to poll ``get_result`` for tasks whose webhook never came."""

    bfl_api_url: str | None = Field(default=None, validation_alias="BFL_API_URL")
    """A BFL-compatible API other than BFL's (the local sandbox): its host may be polled too."""

    log_level: str = "info"

    @property
    def database_path(self) -> Path | None:
        """The SQLite file this receiver uses (absolute), or None for PostgreSQL."""
        return sqlite_file(self.database_url)

    @property
    def store_note(self) -> str | None:
        """``store /abs/data/receiver.db (relative paths are resolved against ...)`` when the
        ``.env`` read is in a parent folder: a line for commands that open the store to log."""
        return store_note(self.env_file, self.database_path)

    @property
    def poll_hosts(self) -> tuple[str, ...]:
        """Hosts whose polling URLs the reconciler may call with the API key."""
        if self.bfl_api_url is None:
            return BFL_API_HOSTS
        return (*BFL_API_HOSTS, urlsplit(self.bfl_api_url).netloc)

    @field_validator("handlers", "sample_hosts", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_commas(value)

    @model_validator(mode="before")
    @classmethod
    def _public_url_follows_port(cls, data: Any) -> Any:
        return default_public_url(data, ("public_url",), ("port",))

    @field_validator("database_url", "storage_url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return resolve_relative(value, base_folder())

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return split_commas(value)
