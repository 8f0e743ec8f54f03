"""Submitter settings: one object, read from the environment or ``.env`` at the edge.

The names are the ones the receiver and ``make run`` use, so one ``.env`` serves both. It is
found, and relative paths are resolved, by the receiver's rule (``receiver.envfile``): the
first ``.env`` in the current folder or a parent; paths relative to its folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.correlation import (
    CorrelationError,
    MetadataError,
    MetadataTooLarge,
    webhook_link,
)
from receiver.envfile import (
    UpwardEnvSettings,
    base_folder,
    default_public_url,
    resolve_relative,
    sqlite_file,
)
from receiver.settings import split_commas
from submitter._errors import ValidationError

Region = Literal["global", "eu", "us"]
LegacyRegion = Literal["eu1", "us1"]

#: BFL's hosts. Generation runs anywhere; finetunes live only on the legacy regional hosts.
REGION_URLS: dict[str, str] = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}
LEGACY_URLS: dict[str, str] = {"eu1": "https://api.eu1.bfl.ai", "us1": "https://api.us1.bfl.ai"}
LEGACY_REGIONS: tuple[str, ...] = ("eu1", "us1")

#: Where ``bfl-sandbox serve`` (and ``make run`` without a key) listens.
SANDBOX_URL = "http://127.0.0.1:8001"
SANDBOX_KEY = "sandbox"  # the sandbox takes any key; this one is not a secret


class Settings(UpwardEnvSettings):
    """Everything the submitter reads from the environment; tests build one directly."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, populate_by_name=True
    )

    api_key: SecretStr | None = Field(default=None, validation_alias="BFL_API_KEY")
    """BFL's ``x-key``. Unset (and no ``BFL_API_URL``): the local sandbox is used."""

    api_url: str | None = Field(default=None, validation_alias="BFL_API_URL")
    """An explicit base URL (a proxy, the sandbox); overrides ``BFL_REGION``."""

    region: Region = Field(default="global", validation_alias="BFL_REGION")
    """``global`` (api.bfl.ai), ``eu`` or ``us``."""

    public_url: str = Field(default="http://127.0.0.1:8000", validation_alias="RECEIVER_PUBLIC_URL")
    """Where BFL reaches the receiver; webhooks go to ``<this>/webhooks/bfl``. Unset:
    ``http://127.0.0.1:<RECEIVER_PORT>``, as the receiver assumes."""

    receiver_port: int = Field(default=8000, ge=0, le=65535, validation_alias="RECEIVER_PORT")
    """The receiver's port, read only to default ``public_url``."""

    webhook_secret: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(), validation_alias="RECEIVER_WEBHOOK_SECRET"
    )
    """The receiver's secrets; the first is the master. Unset: no webhooks, polling only."""

    database_url: str = Field(
        default="sqlite:///./data/receiver.db",
        validation_alias="RECEIVER_DATABASE_URL",
        validate_default=True,
    )
    """The receiver's store, where submissions are recorded for the handlers. A relative SQLite
    path is resolved against the folder of the ``.env`` found (else the current folder)."""

    data_dir: Path = Field(
        default=Path("data"), validation_alias="BFL_SUBMIT_DATA_DIR", validate_default=True
    )
    """Where the submitter keeps its own small files (which region each finetune lives in);
    relative, as ``database_url``."""

    retry_attempts: int = Field(default=6, ge=1, le=100, validation_alias="BFL_RETRY_ATTEMPTS")
    """Tries per request, where a retry is safe (see ``submitter._http``)."""

    retry_timeout: float = Field(default=120.0, gt=0, validation_alias="BFL_RETRY_TIMEOUT")
    """Seconds one request may spend retrying, waits included."""

    finetune_webhook: bool = Field(default=True, validation_alias="BFL_FINETUNE_WEBHOOK")
    """Send ``webhook_url``/``webhook_secret`` with ``POST /v1/finetune`` too. On by default:
    BFL's API is FastAPI-generated and its models ignore unknown fields, so at worst training
    sends no webhook and the reconciler's polling tells the end. Switch it off if BFL answers
    422 to those fields; trainings are still recorded and polled."""

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        return split_commas(value)

    @model_validator(mode="before")
    @classmethod
    def _public_url_follows_port(cls, data: Any) -> Any:
        return default_public_url(
            data, ("RECEIVER_PUBLIC_URL", "public_url"), ("RECEIVER_PORT", "receiver_port")
        )

    @field_validator("database_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("must be sqlite:///PATH or postgresql://...")
        return resolve_relative(value, base_folder())

    @field_validator("data_dir")
    @classmethod
    def _absolute_dir(cls, value: Path) -> Path:
        return Path(resolve_relative(str(value), base_folder()))

    @property
    def database_path(self) -> Path | None:
        """The receiver's SQLite file (absolute), or None for PostgreSQL."""
        return sqlite_file(self.database_url)

    @field_validator("api_url", "public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value


@dataclass(frozen=True)
class Connection:
    """Where requests go and with which key, resolved once from settings and arguments."""

    base_url: str
    """Generation, get_result fallback and credits."""
    legacy_urls: dict[str, str]
    """``eu1`` / ``us1``: finetuning and finetuned inference."""
    api_key: SecretStr
    sandbox: bool
    """True when nothing was configured and the local sandbox is assumed."""


def resolve_connection(
    settings: Settings,
    *,
    api_key: str | None = None,
    region: Region | None = None,
    base_url: str | None = None,
) -> Connection:
    """The connection that arguments (first) and settings describe.

    An explicit base URL serves the legacy regions under ``/eu1`` and ``/us1``, as the sandbox
    does; BFL's own hosts are used otherwise.
    """
    key = SecretStr(api_key) if api_key is not None else settings.api_key
    url = base_url or settings.api_url
    if key is None and url is None:
        return Connection(
            SANDBOX_URL,
            {r: f"{SANDBOX_URL}/{r}" for r in LEGACY_REGIONS},
            SecretStr(SANDBOX_KEY),
            sandbox=True,
        )
    if url is not None:
        url = url.rstrip("/")
        legacy = {r: f"{url}/{r}" for r in LEGACY_REGIONS}
    else:
        url = REGION_URLS[region or settings.region]
        legacy = dict(LEGACY_URLS)
    # An explicit URL without a key: a sandbox or a proxy that adds the key itself.
    return Connection(url, legacy, key or SecretStr(SANDBOX_KEY), sandbox=False)


@dataclass(frozen=True)
class Webhook:
    """How submissions ask for a webhook: the receiver's URL and the master secret."""

    url: str
    """``RECEIVER_PUBLIC_URL`` + ``/webhooks/bfl``."""
    master: SecretStr

    def fields(
        self, ref: str, *, per_task: bool, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """``webhook_url`` and ``webhook_secret`` for the submission ``ref``.

        The URL carries the metadata (``receiver.correlation``), so it reaches the handlers
        even when no store is shared with the receiver; with ``per_task`` it carries the
        reference too, and the secret is derived from the master, the reference and the
        metadata, else the secret is the master itself. Raises ValidationError, before anything
        is sent, when the metadata is too large or unstorable, or the URL would not fit BFL's
        2083 characters.
        """
        master = self.master.get_secret_value()
        try:
            link = webhook_link(self.url, master, ref if per_task else None, metadata or {})
        except MetadataError as exc:
            kind = "too_long" if isinstance(exc, MetadataTooLarge) else "value_error"
            raise ValidationError.one(("metadata",), str(exc), kind) from None
        except CorrelationError as exc:
            raise ValidationError.one(("webhook_url",), str(exc), "too_long") from None
        return {"webhook_url": link.url, "webhook_secret": link.secret}


def resolve_webhook(settings: Settings) -> Webhook | None:
    """The webhook to request, or None (polling only) when no secret is configured."""
    if not settings.webhook_secret:
        return None
    return Webhook(settings.public_url.rstrip("/") + "/webhooks/bfl", settings.webhook_secret[0])
