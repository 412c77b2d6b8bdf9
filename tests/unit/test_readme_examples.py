"""The README's producer and subscriber examples use the contract's names and settings (the
.NET ones can't be run here; the Node.js and Python ones also run in tests/e2e)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from billing_worker.client import DEFAULT_AMQP_URL
from schemas import EVENT_TYPES
from tests.readme_examples import README, readme_example

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = json.loads((ROOT / "schemas" / "asyncapi.json").read_text(encoding="utf-8"))

PUBLISHERS = [("node-publish-usage", "js"), ("dotnet-publish-usage", "csharp")]
SUBSCRIBERS = [("node-subscribe", "js"), ("dotnet-subscribe", "csharp")]


def exchange_of(channel: str) -> dict[str, Any]:
    """The exchange binding of an AsyncAPI channel."""
    exchange: dict[str, Any] = DOCUMENT["channels"][channel]["bindings"]["amqp"]["exchange"]
    return exchange


def envelope_attributes() -> list[str]:
    """The CloudEvents attributes a usage event is sent with."""
    schema = DOCUMENT["components"]["schemas"]["UsageEventV1"]
    return [*schema["required"], "datacontenttype", "data"]


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""
    regex = re.escape(pattern).replace(r"\*", r"[^.]+").replace(r"\#", r".*")
    return re.fullmatch(regex, key) is not None


def bound_keys(code: str) -> list[str]:
    """The routing keys an example binds its queue with (the list literal it loops over)."""
    match = re.search(r"[\[{]\s*((?:['\"][\w.*#]+['\"],?\s*)+)[\]}]", code)
    assert match, "the example should bind a list of event types"
    return re.findall(r"['\"]([\w.*#]+)['\"]", match.group(1))


@pytest.mark.parametrize(("name", "language"), PUBLISHERS + SUBSCRIBERS)
def test_examples_read_the_workers_environment(name: str, language: str) -> None:
    """Each example takes BILLING_AMQP_URL (defaulting to the worker's default) and prefixes
    names with BILLING_NAMESPACE, so it is copy-pasteable and testable on a namespace."""
    code = readme_example(name, language)
    assert "BILLING_AMQP_URL" in code
    assert "BILLING_NAMESPACE" in code
    assert f"'{DEFAULT_AMQP_URL}'" in code or f'"{DEFAULT_AMQP_URL}"' in code


class TestNodePublisher:
    def test_contract_exchange_key_and_properties(self) -> None:
        """The Node.js producer declares billing.usage as the worker does and publishes
        usage.<source>.<type>, persistent, mandatory, JSON, on a confirm channel."""
        code = readme_example("node-publish-usage", "js")
        usage = exchange_of("usage")
        assert usage["name"] == "billing.usage"
        assert "billing.usage`" in code
        assert f"assertExchange(exchange, '{usage['type']}', {{ durable: true }})" in code
        assert DOCUMENT["channels"]["usage"]["address"] == "usage.{source}.{type}"
        assert "`usage.${source}.${type}`" in code
        for setting in (
            "createConfirmChannel()",
            "persistent: true",
            "mandatory: true",
            "contentType: 'application/json'",
            "messageId",
            "on('return'",
        ):
            assert setting in code, setting

    def test_envelope_attributes(self) -> None:
        """The event object carries every CloudEvents attribute of the usage event."""
        code = readme_example("node-publish-usage", "js")
        for attribute in envelope_attributes():
            assert re.search(rf"\b{attribute}: ", code), attribute


class TestDotnetPublisher:
    def test_contract_exchange_key_and_properties(self) -> None:
        """The C# producer declares billing.usage as a durable topic exchange and publishes
        usage.<source>.<type>, persistent, mandatory, JSON, with confirmation tracking."""
        code = readme_example("dotnet-publish-usage", "csharp")
        usage = exchange_of("usage")
        assert f'prefix + "{usage["name"]}"' in code
        assert f"type: ExchangeType.{usage['type'].capitalize()}, durable: true" in code
        assert 'routingKey: $"usage.{source}.{eventType}"' in code
        for setting in (
            "publisherConfirmationsEnabled: true",
            "publisherConfirmationTrackingEnabled: true",
            "Persistent = true",
            "mandatory: true",
            'ContentType = "application/json"',
            "MessageId = eventId",
            "catch (PublishException e)",
            "e.IsReturn",
        ):
            assert setting in code, setting

    def test_envelope_attributes(self) -> None:
        """The anonymous event object carries every CloudEvents attribute of the usage event."""
        code = readme_example("dotnet-publish-usage", "csharp")
        for attribute in envelope_attributes():
            assert re.search(rf"^\s+{attribute} = ", code, re.MULTILINE), attribute

    def test_targets_the_async_client(self) -> None:
        """The .NET examples say which RabbitMQ.Client they target and use its 7.x async API."""
        assert 'Include="RabbitMQ.Client" Version="7.1.*"' in README.read_text(encoding="utf-8")
        publish = readme_example("dotnet-publish-usage", "csharp")
        subscribe = readme_example("dotnet-subscribe", "csharp")
        assert "await channel.BasicPublishAsync(" in publish
        assert "consumer.ReceivedAsync +=" in subscribe
        assert "BasicAckAsync(delivery.DeliveryTag" in subscribe


@pytest.mark.parametrize(("name", "language"), SUBSCRIBERS)
def test_subscribers_bind_billing_event_types(name: str, language: str) -> None:
    """Subscribers declare a durable quorum queue, bind it to billing.events with keys that
    each match real event types, and ack manually."""
    code = readme_example(name, language)
    assert exchange_of("quotaWarning")["name"] == "billing.events"
    assert "billing.events" in code
    assert re.search(r"""['"]x-queue-type['"]\]? ?[:=] ['"]quorum['"]""", code)
    keys = bound_keys(code)
    assert keys
    for key in keys:
        assert any(topic_matches(key, event_type) for event_type in EVENT_TYPES), key
    assert ("autoAck: false" in code) if language == "csharp" else ("channel.ack(message)" in code)


def test_python_subscriber_example_uses_real_names() -> None:
    """The Python subscriber snippet runs as a module: its imports exist and its bindings
    match real event types."""
    code = readme_example("python-subscribe", "python")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md:python-subscribe", "exec"), namespace)  # noqa: S102
    assert callable(namespace["follow_billing_events"])
    for key in bound_keys(code):
        assert any(topic_matches(key, event_type) for event_type in EVENT_TYPES), key
