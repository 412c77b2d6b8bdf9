"""One settings object from ``BILLING_*`` environment variables, validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from billing_worker.adapters.clock import SystemClock

ENV_PREFIX = "BILLING_"
MAX_CLOCK_OFFSET = 20 * 366 * 86_400  # twenty years either way


class ConfigError(Exception):
    """A configuration value is wrong; the message names the variable."""


class Settings(BaseSettings):
    """Every knob of the worker. Defaults target a local RabbitMQ and PostgreSQL."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    amqp_url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    database_url: SecretStr = SecretStr("postgresql+psycopg://postgres@127.0.0.1:5432/billing")
    namespace: str = Field(default="", max_length=64, pattern=r"^([A-Za-z0-9][A-Za-z0-9_-]*)?$")
    pricebook: Path | None = None
    http_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the container
    http_port: int = Field(default=9464, ge=0, le=65535)
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str | None = None
    close_grace_seconds: int = Field(default=3600, ge=0, le=31 * 86_400)
    close_interval_seconds: float = Field(default=300.0, gt=0, le=86_400)
    invoice_review: bool = False
    stripe_signature_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)
    stripe_relay_host: str = "0.0.0.0"  # noqa: S104 - Stripe (or a proxy) calls in from outside
    stripe_relay_port: int = Field(default=8080, ge=0, le=65535)
    stripe_relay_max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)

    batch_size: int = Field(default=500, ge=1, le=10_000)
    batch_max_wait_ms: int = Field(default=5, ge=0, le=10_000)
    prefetch: int | None = Field(default=None, ge=1, le=65_535)
    batches_in_flight: int = Field(default=2, ge=1, le=16)
    db_pool_size: int = Field(default=4, ge=1, le=100)
    db_retry_attempts: int = Field(default=6, ge=1, le=100)
    db_retry_max_wait_seconds: float = Field(default=5.0, gt=0, le=300)
    requeue_pause_seconds: float = Field(default=5.0, ge=0, le=600)
    max_clock_skew_seconds: int = Field(default=300, ge=0)
    shutdown_grace_seconds: float = Field(default=30.0, gt=0, le=3600)
    startup_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    rejected_retention_days: int = Field(default=30, ge=1, le=3650)
    api_host: str = "0.0.0.0"  # noqa: S104 - product backends call in from outside
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_token_secret: SecretStr | None = None
    api_max_body_bytes: int = Field(default=4 * 1_048_576, ge=1024, le=256 * 1_048_576)
    seller_name: str = Field(default="", max_length=200)
    seller_address: str = Field(default="", max_length=1000)
    """Lines separated by ``|`` (or newlines)."""
    seller_tax_id: str = Field(default="", max_length=100)
    seller_logo: Path | None = None
    """A PNG or JPEG printed at the top of invoice PDFs."""
    clock_offset_seconds: float = Field(default=0.0, ge=-MAX_CLOCK_OFFSET, le=MAX_CLOCK_OFFSET)
    """Shift the worker's clock (tests and rehearsals of another day; 0 in production)."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("stripe_api_key", "stripe_webhook_secret", "api_token_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``BILLING_STRIPE_API_KEY=`` (empty) turns the feature off, as leaving it unset
        does: every part of the worker agrees on whether it is on."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("seller_logo")
    @classmethod
    def _readable_image(cls, value: Path | None) -> Path | None:
        if value is None or not str(value):
            return None
        try:
            head = value.read_bytes()[:8]
        except OSError as exc:
            raise ValueError(f"can't read {value}: {exc.strerror or exc}") from None
        if not head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
            raise ValueError(f"{value} is not a PNG or JPEG image")
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be a postgresql+psycopg:// (or postgresql://) URL")
        return SecretStr(url.replace("postgresql://", "postgresql+psycopg://", 1))

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        return value

    @property
    def secret_values(self) -> list[str]:
        """Every secret the settings hold (passwords of the URLs, Stripe's key and signing
        secret), for masking in logs."""
        values = [
            urlsplit(self.amqp_url.get_secret_value()).password,
            urlsplit(self.database_url.get_secret_value()).password,
            *(
                s.get_secret_value()
                for s in (self.stripe_api_key, self.stripe_webhook_secret, self.api_token_secret)
                if s
            ),
        ]
        return [unquote(v) for v in values if v]

    @property
    def seller_address_lines(self) -> tuple[str, ...]:
        """The seller's address, one line each."""
        lines = self.seller_address.replace("\n", "|").split("|")
        return tuple(line.strip() for line in lines if line.strip())

    @property
    def clock(self) -> SystemClock:
        """The clock every part of this process reads the time from."""
        return SystemClock.shifted_by(self.clock_offset_seconds)

    @property
    def effective_prefetch(self) -> int:
        """Unacked deliveries the broker may push: room for every batch in flight plus a full
        one filling up (deliveries in unsettled batches count against the window)."""
        if self.prefetch is not None:
            return self.prefetch
        return (self.batches_in_flight + 1) * self.batch_size


def load_settings() -> Settings:
    """Read the environment; raise ``ConfigError`` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            name = f"{ENV_PREFIX}{field.upper()}" if field else "configuration"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if not message.startswith(name) else message)
        raise ConfigError("; ".join(problems)) from exc
