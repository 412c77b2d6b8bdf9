"""Settings come from BILLING_* variables; a bad value fails at start naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from billing_worker.config import ConfigError, Settings, load_settings
from billing_worker.entrypoints.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BILLING_* variable from the outer environment leaks into these tests."""
    import os  # noqa: PLC0415 - only for listing

    for name in list(os.environ):
        if name.startswith("BILLING_"):
            monkeypatch.delenv(name)


class TestSettings:
    def test_defaults_target_local_services(self) -> None:
        """With nothing set, the worker talks to local RabbitMQ and PostgreSQL (CONTRACTS.md)."""
        s = load_settings()
        assert s.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
        assert s.database_url.get_secret_value() == (
            "postgresql+psycopg://postgres@127.0.0.1:5432/billing"
        )
        assert s.namespace == ""
        assert s.http_port == 9464
        assert s.stripe_webhook_secret is None

    def test_prefetch_covers_batches_in_flight(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Prefetch leaves room for every batch in flight plus one filling, unless set."""
        monkeypatch.setenv("BILLING_BATCH_SIZE", "300")
        assert load_settings().effective_prefetch == 900
        monkeypatch.setenv("BILLING_BATCHES_IN_FLIGHT", "3")
        assert load_settings().effective_prefetch == 1200
        monkeypatch.setenv("BILLING_PREFETCH", "50")
        assert load_settings().effective_prefetch == 50

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("BILLING_HTTP_PORT", "70000"),
            ("BILLING_BATCH_SIZE", "many"),
            ("BILLING_NAMESPACE", "has space"),
            ("BILLING_DATABASE_URL", "mysql://x/y"),
            ("BILLING_AMQP_URL", "http://broker"),
            ("BILLING_LOG_LEVEL", "chatty"),
            ("BILLING_BATCH_MAX_WAIT_MS", "-1"),
        ],
    )
    def test_bad_value_names_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        """The error message starts from the variable the operator has to fix."""
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            load_settings()

    def test_plain_postgresql_url_uses_psycopg(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A postgresql:// URL is accepted and driven by psycopg 3."""
        monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://u@h/db")
        assert load_settings().database_url.get_secret_value() == "postgresql+psycopg://u@h/db"

    def test_secrets_are_not_printed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """URLs and Stripe secrets never show up in the settings' repr."""
        monkeypatch.setenv("BILLING_AMQP_URL", "amqp://user:hunter2@broker/")
        monkeypatch.setenv("BILLING_STRIPE_WEBHOOK_SECRET", "whsec_topsecret")
        text = repr(load_settings())
        assert "hunter2" not in text
        assert "whsec_topsecret" not in text

    def test_price_book_path_is_read(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """BILLING_PRICEBOOK is taken as a path; unset means the built-in price book."""
        assert load_settings().pricebook is None
        monkeypatch.setenv("BILLING_PRICEBOOK", "prices/acme.toml")
        assert load_settings().pricebook == Path("prices/acme.toml")


def test_cli_exits_2_with_the_variable_on_bad_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`billing-worker run` with a bad variable exits 2 and names it on stderr."""
    monkeypatch.setenv("BILLING_HTTP_PORT", "not-a-port")
    assert main(["run"]) == 2
    assert "BILLING_HTTP_PORT" in capsys.readouterr().err


def test_an_empty_secret_is_the_same_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """BILLING_STRIPE_API_KEY= (empty) turns Stripe off for every part, as unset does."""
    monkeypatch.setenv("BILLING_STRIPE_API_KEY", "")
    monkeypatch.setenv("BILLING_STRIPE_WEBHOOK_SECRET", "  ")
    settings = Settings()
    assert (settings.stripe_api_key, settings.stripe_webhook_secret) == (None, None)


def test_the_seller_logo_must_be_a_readable_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing file or one that is no PNG/JPEG is a configuration error naming the
    variable; a PNG is taken; the address splits on | into lines."""
    monkeypatch.setenv("BILLING_SELLER_LOGO", str(tmp_path / "missing.png"))
    with pytest.raises(ConfigError, match="BILLING_SELLER_LOGO: can't read"):
        load_settings()
    text = tmp_path / "logo.txt"
    text.write_text("not an image")
    monkeypatch.setenv("BILLING_SELLER_LOGO", str(text))
    with pytest.raises(ConfigError, match="is not a PNG or JPEG"):
        load_settings()
    png = tmp_path / "logo.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(16))
    monkeypatch.setenv("BILLING_SELLER_LOGO", str(png))
    monkeypatch.setenv("BILLING_SELLER_ADDRESS", "Hauptstrasse 1 | 10115 Berlin|")
    settings = load_settings()
    assert settings.seller_logo == png
    assert settings.seller_address_lines == ("Hauptstrasse 1", "10115 Berlin")
