"""The AsyncAPI document: committed as generated, valid AsyncAPI 3.0, true to the topology the
worker declares and to the models it validates with."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry
from referencing.jsonschema import DRAFT7

from billing_worker.adapters.amqp.topology import (
    Topology,
    declare_quota_check_queue,
    declare_stripe_exchange,
    declare_stripe_topology,
    declare_usage_topology,
)
from billing_worker.contract.asyncapi import DOCUMENT_PATH, REGENERATE_COMMAND, render_document
from billing_worker.contract.messages import USAGE_EXAMPLE, message_id
from billing_worker.entrypoints import cli
from schemas import EVENT_TYPES
from schemas.export import JSON_DIR, MODELS
from tests.fakes import usage_body
from tests.unit.test_event_schemas import CONTRACT_REPLY, CONTRACT_REQUEST, example_events

ROOT = Path(__file__).resolve().parents[2]
SPEC_SCHEMA = ROOT / "tests" / "vendor" / "asyncapi" / "asyncapi-3.0.0.schema.json"
DOC_URI = "urn:billing-worker:asyncapi"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document as a reader parses it."""
    parsed: dict[str, Any] = json.loads(render_document())
    return parsed


@pytest.fixture(scope="module")
def spec_validator() -> Draft7Validator:
    """The official AsyncAPI 3.0.0 JSON Schema (vendored, see its README)."""
    return Draft7Validator(json.loads(SPEC_SCHEMA.read_text(encoding="utf-8")))


def payload_validator(document: dict[str, Any], message: str) -> Draft7Validator:
    """A validator for ``message``'s payload, resolving references inside the document."""
    registry: Registry[Any] = Registry().with_resource(DOC_URI, DRAFT7.create_resource(document))
    payload_ref = document["components"]["messages"][message]["payload"]["$ref"]
    return Draft7Validator({"$ref": DOC_URI + payload_ref}, registry=registry)


def refs_in(node: object) -> Iterator[str]:
    """Every ``$ref`` value anywhere under ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs_in(item)


def resolve(document: dict[str, Any], ref: str) -> object:
    """The node a local JSON reference points at (KeyError if none)."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


class TestCommittedDocument:
    def test_committed_file_is_what_the_models_generate(self) -> None:
        """schemas/asyncapi.json equals the generated document; the failure says how to fix it."""
        committed = (ROOT / DOCUMENT_PATH).read_text(encoding="utf-8")
        assert committed == render_document(), (
            f"{DOCUMENT_PATH} is out of date with the models or the topology: "
            f"run `{REGENERATE_COMMAND}`"
        )

    def test_command_prints_it(
        self, capsys: pytest.CaptureFixture[str], restore_logging: None
    ) -> None:
        """`billing-worker asyncapi` prints the document on stdout and nothing else there."""
        assert cli.main(["asyncapi"]) == 0
        assert capsys.readouterr().out == render_document()

    def test_command_writes_output_file(self, tmp_path: Path, restore_logging: None) -> None:
        """`billing-worker asyncapi --output FILE` writes the document to FILE."""
        target = tmp_path / "asyncapi.json"
        assert cli.main(["asyncapi", "--output", str(target)]) == 0
        assert target.read_text(encoding="utf-8") == render_document()


class TestAsyncApiSpecification:
    def test_document_is_valid_asyncapi_3(
        self, document: dict[str, Any], spec_validator: Draft7Validator
    ) -> None:
        """The document validates against the official AsyncAPI 3.0.0 schema, AMQP bindings
        included."""
        errors = [
            f"{list(e.absolute_path)}: {e.message[:200]}"
            for e in spec_validator.iter_errors(document)
        ]
        assert errors == []

    @pytest.mark.parametrize(
        "break_it",
        [
            lambda d: d["operations"]["receiveUsage"].update(action="publish"),
            lambda d: d["channels"]["usage"]["bindings"]["amqp"].update(queue={"name": "q"}),
            lambda d: d["channels"]["usage"]["bindings"]["amqp"]["exchange"].update(type="quorum"),
            lambda d: d["channels"]["usageQueue"]["bindings"]["amqp"].update(arguments={}),
            lambda d: d["operations"]["sendQuotaWarning"]["bindings"]["amqp"].update(
                deliveryMode=3
            ),
            lambda d: d.update(asyncapi="2.6.0"),
        ],
        ids=[
            "v2-action",
            "queue-and-exchange",
            "exchange-type",
            "binding-field",
            "delivery-mode",
            "version",
        ],
    )
    def test_specification_check_catches_mistakes(
        self,
        document: dict[str, Any],
        spec_validator: Draft7Validator,
        break_it: Callable[[dict[str, Any]], None],
    ) -> None:
        """The vendored schema really checks: typical mistakes make the document invalid."""
        broken = copy.deepcopy(document)
        break_it(broken)
        assert list(spec_validator.iter_errors(broken))

    def test_every_reference_resolves(self, document: dict[str, Any]) -> None:
        """Each $ref (channels, messages, schemas, operation messages) points at something."""
        refs = set(refs_in(document))
        assert len(refs) > 40
        for ref in refs:
            resolve(document, ref)

    def test_operation_messages_belong_to_their_channel(self, document: dict[str, Any]) -> None:
        """An operation lists only messages of the channel it acts on, as AsyncAPI 3 requires."""
        for name, operation in document["operations"].items():
            channel = operation["channel"]["$ref"]
            for message in operation["messages"]:
                assert message["$ref"].startswith(channel + "/messages/"), name


class RecordingQueue:
    """A declared queue that records what it is bound to."""

    def __init__(self, name: str, bindings: list[tuple[str, str, str]]) -> None:
        self.name = name
        self._bindings = bindings

    async def bind(self, exchange: RecordingExchange, routing_key: str = "") -> None:
        self._bindings.append((self.name, exchange.name, routing_key))


class RecordingExchange:
    def __init__(self, name: str) -> None:
        self.name = name


class RecordingChannel:
    """Stands in for an aio-pika channel: records every declaration the topology makes."""

    def __init__(self) -> None:
        self.exchanges: dict[str, tuple[str, bool]] = {}
        self.queues: dict[str, tuple[bool, dict[str, object]]] = {}
        self.bindings: list[tuple[str, str, str]] = []

    async def declare_exchange(
        self, name: str, exchange_type: object, *, durable: bool = False
    ) -> RecordingExchange:
        self.exchanges[name] = (str(getattr(exchange_type, "value", exchange_type)), durable)
        return RecordingExchange(name)

    async def declare_queue(
        self, name: str, *, durable: bool = False, arguments: dict[str, object] | None = None
    ) -> RecordingQueue:
        self.queues[name] = (durable, dict(arguments or {}))
        return RecordingQueue(name, self.bindings)


async def declared_topology() -> RecordingChannel:
    """Everything the worker and the Stripe relay declare, with the default names."""
    channel = RecordingChannel()
    topology = Topology()
    await declare_usage_topology(channel, topology)  # type: ignore[arg-type]
    await declare_quota_check_queue(channel, topology)  # type: ignore[arg-type]
    await declare_stripe_topology(channel, topology)  # type: ignore[arg-type]
    await declare_stripe_exchange(channel, topology)  # type: ignore[arg-type]
    return channel


def amqp_bindings(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [c["bindings"]["amqp"] for c in document["channels"].values()]


class TestTrueToTopology:
    async def test_exchanges_match_declarations(self, document: dict[str, Any]) -> None:
        """Every exchange the worker declares is in the document with its real type and
        durability, and the document names no other (but the default exchange)."""
        declared = (await declared_topology()).exchanges
        documented = {
            b["exchange"]["name"]: (b["exchange"]["type"], b["exchange"]["durable"])
            for b in amqp_bindings(document)
            if b["is"] == "routingKey" and b["exchange"]["name"] != ""
        }
        assert documented == declared

    async def test_queues_match_declarations(self, document: dict[str, Any]) -> None:
        """Every queue is documented durable with exactly the arguments it is declared with
        (quorum type, dead-letter settings, TTL), and bound as declared."""
        channel = await declared_topology()
        documented = {
            b["queue"]["name"]: (b["queue"]["durable"], b["x-arguments"])
            for b in amqp_bindings(document)
            if b["is"] == "queue"
        }
        assert documented == channel.queues
        bound = {
            (b["queue"]["name"], b["x-bound-to"]["exchange"], b["x-bound-to"]["routingKey"])
            for b in amqp_bindings(document)
            if "x-bound-to" in b
        }
        assert bound == set(channel.bindings)

    def test_every_billing_event_type_has_its_channel(self, document: dict[str, Any]) -> None:
        """Each event type is a channel on billing.events whose address (routing key) is the
        type, whose message is that type's envelope, with a send operation."""
        schemas = document["components"]["schemas"]
        for event_type, envelope in EVENT_TYPES.items():
            channel = document["channels"][message_id(event_type)]
            assert channel["address"] == event_type
            assert channel["bindings"]["amqp"]["exchange"]["name"] == "billing.events"
            (message_ref,) = channel["messages"].values()
            message = resolve(document, message_ref["$ref"])
            assert isinstance(message, dict)
            payload = resolve(document, message["payload"]["$ref"])
            assert payload == schemas[envelope.model_json_schema()["title"]]
            sends = [
                o
                for o in document["operations"].values()
                if o["channel"]["$ref"] == f"#/channels/{message_id(event_type)}"
            ]
            assert [o["action"] for o in sends] == ["send"]
            assert sends[0]["bindings"]["amqp"]["deliveryMode"] == 2


class TestPayloadSchemas:
    def test_contract_usage_event_is_valid(self, document: dict[str, Any]) -> None:
        """The usage event of the contract validates against the documented payload."""
        validator = payload_validator(document, "usageEvent")
        assert list(validator.iter_errors(json.loads(usage_body()))) == []
        assert list(validator.iter_errors(USAGE_EXAMPLE)) == []

    @pytest.mark.parametrize(
        "override",
        [
            {"plan": "PRO"},
            {"specversion": "0.3"},
            {"subject": ""},
            {"data": {"quantity": -1}},
            {"data": {"model": {"nested": 1}}},
        ],
    )
    def test_invalid_usage_events_are_refused(
        self, document: dict[str, Any], override: dict[str, Any]
    ) -> None:
        """Unknown attributes, wrong versions, empty subjects, negative quantities and nested
        dimensions are refused by the documented schema, as by the model."""
        validator = payload_validator(document, "usageEvent")
        assert list(validator.iter_errors(json.loads(usage_body(**override))))

    @pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
    def test_billing_events_are_valid(self, document: dict[str, Any], event_type: str) -> None:
        """An event as the worker writes it validates against its documented payload, and
        not against another type's."""
        body = json.loads(example_events()[event_type].model_dump_json())
        assert list(payload_validator(document, message_id(event_type)).iter_errors(body)) == []
        other = "credits.low" if event_type != "credits.low" else "quota.warning"
        assert list(payload_validator(document, message_id(other)).iter_errors(body))

    def test_quota_check_messages_are_valid(self, document: dict[str, Any]) -> None:
        """The contract's quota-check request and reply validate against their payloads."""
        request = payload_validator(document, "quotaCheckRequest")
        assert list(request.iter_errors(json.loads(CONTRACT_REQUEST))) == []
        reply = payload_validator(document, "quotaCheckReply")
        assert list(reply.iter_errors(json.loads(CONTRACT_REPLY))) == []

    def test_component_schemas_are_the_published_ones(self, document: dict[str, Any]) -> None:
        """Each published JSON Schema file appears as a component with the same $id, fields
        and required fields."""
        by_id = {
            s["x-schema-id"]: s
            for s in document["components"]["schemas"].values()
            if "x-schema-id" in s
        }
        assert len(by_id) == len(MODELS)
        for filename in MODELS:
            published = json.loads((JSON_DIR / filename).read_text(encoding="utf-8"))
            component = by_id[published["$id"]]
            assert component["properties"].keys() == published["properties"].keys(), filename
            assert component.get("required") == published.get("required"), filename
