"""Sandbox settings: one object, read from the environment (``SANDBOX_*``) or ``.env``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from receiver.envfile import UpwardEnvSettings
from receiver.settings import split_commas
from sandbox.faults import parse_faults

#: Loopback only: a typo or a fuzzer never sends traffic off the machine.
LOOPBACK_HOSTS = ("127.0.0.0/8", "::1", "localhost")

CommaList = Annotated[tuple[str, ...], NoDecode]
FloatList = Annotated[tuple[float, ...], NoDecode]


class SandboxSettings(UpwardEnvSettings):
    """Everything the sandbox can be told; tests build one directly (``.env``: found upward,
    as the receiver's, see ``receiver.envfile``)."""

    model_config = SettingsConfigDict(
        env_prefix="SANDBOX_", env_file=".env", extra="ignore", frozen=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    public_url: str | None = None
    """Base URL of polling and delivery URLs; unset: the scheme and host each request came to."""

    task_seconds: float = Field(default=2.0, ge=0)
    """How long a task stays Pending before it reaches its final status."""

    finetune_seconds: float = Field(default=10.0, ge=0)
    """How long a finetune trains."""

    delivery_ttl_seconds: float = Field(default=600.0, gt=0)
    """Lifetime of a ``result.sample`` URL (BFL: 10 minutes); 403 after it."""

    webhook_shape: Literal["a", "b"] = "a"
    """``a``: ``{"id", "status": "Ready"}``; ``b``: ``{"task_id", "status": "SUCCESS"}``."""

    sign_webhooks: bool = False
    """Also send ``X-BFL-Signature: sha256=<HMAC of the body with webhook_secret>``."""

    webhook_retry_delays: FloatList = (1.0, 5.0, 30.0)
    """Seconds to wait before each retry of a failed webhook (one retry per entry); BFL's
    webhook guide: 1, 5 and 30 s, then the webhook is abandoned."""

    webhook_timeout_seconds: float = Field(default=30.0, gt=0)
    """Per attempt: a receiver that has not answered 2xx within this counts as failed (BFL's
    webhook guide: respond within 30 s)."""

    webhook_on_failure: bool = True
    """Send webhooks for Error and moderated tasks too, not only Ready ones."""

    submit_response: Literal["polling", "webhook"] = "polling"
    """With a webhook_url, answer ``{id, polling_url, cost}`` or the spec's
    ``{id, status, webhook_url, cost}`` (no polling_url)."""

    allowed_hosts: CommaList = LOOPBACK_HOSTS
    """Hosts (names or CIDR networks) webhooks go to and input images are fetched from."""

    api_keys: CommaList = ()
    """Accepted ``x-key`` values; empty: any non-empty key (each has its own credits)."""

    credits: float = Field(default=1000.0, ge=0)
    """Starting credit balance of every key (1 credit = 1 US cent at BFL)."""

    max_active_tasks: int = Field(default=24, ge=1)
    max_active_kontext_max: int = Field(default=6, ge=1)

    strict_regions: bool = True
    """A task is found only on the region host its polling_url names, as at BFL."""

    faults: CommaList = ()
    """Faults applied to every task, as in ``X-Sandbox-Fault`` (see README)."""

    fault_delay_seconds: float = Field(default=2.0, ge=0)
    """Default delay of delay-webhook, early-webhook and slow-delivery."""

    fault_failures: int = Field(default=2, ge=0)
    """Default number of failures of failing-delivery and get-result-5xx."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Request bodies above this are refused with 413 (base64 images are large)."""

    signing_key: SecretStr | None = None
    """HMAC key of delivery URLs; unset: a random one per process."""

    log_level: str = "warning"

    @field_validator("allowed_hosts", "api_keys", "faults", "webhook_retry_delays", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return split_commas(value)

    @field_validator("faults")
    @classmethod
    def _known_faults(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_faults(value)  # raises ValueError naming the unknown fault
        return value

    @field_validator("webhook_retry_delays")
    @classmethod
    def _non_negative(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays must be >= 0")
        return value
