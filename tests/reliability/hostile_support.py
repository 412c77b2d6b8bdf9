"""Hostile usage deliveries for the reliability tests, each with the dead-letter reason it
must get, and a producer that can put on the wire what well-behaved clients refuse to.

The strategies build bad messages by class (invalid UTF-8, invalid JSON, deep nesting, huge
bodies and strings, wrong types, absurd quantities, times out of range, missing or unknown
fields, wrong content types, NUL characters) so that the expected reason is known by
construction; headers and AMQP properties, hostile or not, ride on good and bad alike.
"""

from __future__ import annotations

import contextlib
import json
import signal
import string
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from hypothesis import strategies as st
from pamqp import encode

from billing_worker.consumers.usage import MAX_BODY_BYTES
from billing_worker.domain.periods import calendar_month_of
from tests.clock import child_env, now
from tests.e2e.conftest import Bus, http_get, wait_until

BOOK_EVENT_TYPES = frozenset(
    {
        "generator.website_generated",
        "generator.image_generated",
        "chat.tokens",
        "api.call",
        "api.call_premium",
        "storage.gb_month",
        "ai.inference",
    }
)
REQUIRED = ("specversion", "id", "source", "type", "subject", "time")
KNOWN_TOP_LEVEL = frozenset({*REQUIRED, "datacontenttype", "dataschema", "data"})


# -- what plain clients won't encode ------------------------------------------------------


class RawField(bytes):
    """A header value written to the wire exactly as these bytes (type tag included)."""


class RawShortStr(str):
    """A short string (a property, a header name) written as ``raw``, UTF-8 or not."""

    raw: bytes = b""

    @classmethod
    def of(cls, raw: bytes) -> RawShortStr:
        """The string standing for ``raw`` (its text is what a tolerant reader sees)."""
        value = cls(raw.decode("utf-8", "replace"))
        value.raw = raw
        return value


class RawTimestamp(datetime):
    """A ``timestamp`` property written as the largest 64-bit value, past any calendar."""


HUGE_TIMESTAMP = RawTimestamp(2000, 1, 1, tzinfo=UTC)


@contextlib.contextmanager
def raw_wire_values() -> Iterator[None]:
    """While open, this process's pamqp writes ``Raw*`` values byte for byte."""
    table_value = encode.encode_table_value
    short_or_long = encode._string
    stamp = encode.METHODS["timestamp"]

    def raw_table_value(value: Any) -> bytes:
        return bytes(value) if isinstance(value, RawField) else table_value(value)

    def raw_string(encoder: struct.Struct, value: str) -> bytes:
        if isinstance(value, RawShortStr):
            return encoder.pack(len(value.raw)) + value.raw
        return short_or_long(encoder, value)

    def raw_timestamp(value: Any) -> bytes:
        if isinstance(value, RawTimestamp):
            return struct.pack(">Q", 2**63 - 1)
        return stamp(value)

    encode.encode_table_value = raw_table_value
    encode._string = raw_string
    encode.METHODS["timestamp"] = raw_timestamp
    try:
        yield
    finally:
        encode.encode_table_value = table_value
        encode._string = short_or_long
        encode.METHODS["timestamp"] = stamp


# -- messages -----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Delivery:
    """One message to publish to the usage exchange."""

    body: bytes
    content_type: str | None = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    routing_key: str = "usage.hostile-tests.chat.tokens"
    kind: str = "good"

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 200 else self.body[:200] + b"..."
        return (
            f"{type(self).__name__}(kind={self.kind!r}, {len(self.body)} bytes: {body!r}, "
            f"content_type={self.content_type!r}, headers={sorted(map(str, self.headers))}, "
            f"timestamp={self.timestamp!r}, routing_key={self.routing_key!r})"
        )

    @property
    def received_content_type(self) -> str | None:
        """The content type as the worker reads it."""
        return str(self.content_type) if self.content_type is not None else None


@dataclass(frozen=True, repr=False)
class Hostile(Delivery):
    """A delivery that must be dead-lettered with ``reason``."""

    reason: str = ""


@dataclass(frozen=True)
class GoodTemplate:
    """A valid event but for its id, given at publish time (ids must be unique per run)."""

    fields: dict[str, Any]
    content_type: str | None = "application/json"
    headers: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None

    def with_id(self, event_id: str) -> Delivery:
        """The delivery carrying ``event_id``."""
        body = json.dumps({**self.fields, "id": event_id}).encode()
        return Delivery(body, self.content_type, self.headers, self.timestamp)


def past_time() -> str:
    """A moment safely in the worker's past, but in the open (calendar) period: five
    minutes ago, or the period's first instant when it began less than five minutes ago."""
    moment = now()
    return max(moment - timedelta(minutes=5), calendar_month_of(moment).start).isoformat()


def base_event(event_id: str = "bad-1", **overrides: Any) -> dict[str, Any]:
    """A valid usage event as a dict (the start of every bad one)."""
    body: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "hostile-tests",
        "type": "chat.tokens",
        "subject": "acct_hostile",
        "time": past_time(),
        "datacontenttype": "application/json",
        "data": {"quantity": 3, "model": "gpt-4"},
    }
    body.update(overrides)
    return body


def dumps(value: Any) -> bytes:
    """JSON as a producer would send it (NaN and Infinity written as JS literals)."""
    return json.dumps(value, allow_nan=True).encode()


def _hostile(reason: str, kind: str) -> Callable[[bytes], Hostile]:
    return lambda body: Hostile(body=body, reason=reason, kind=kind)


identifiers = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Hostile:
    """Bytes that are not UTF-8 inside an otherwise valid event."""
    bad = draw(
        st.sampled_from(
            [b"\x80", b"\xbf", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xff"]
        )
    )
    prefix = draw(st.text(string.ascii_letters, max_size=5)).encode()
    body = dumps(base_event(subject="@@")).replace(b"@@", prefix + bad)
    return Hostile(body=body, reason="invalid_json", kind="invalid_utf8")


@st.composite
def invalid_json(draw: st.DrawFn) -> Hostile:
    """Truncated, trailed, unquoted or otherwise broken JSON."""
    body = dumps(base_event())
    how = draw(st.sampled_from(["truncated", "trailing", "surrogate", "quotes", "empty"]))
    if how == "truncated":
        broken = body[: draw(st.integers(1, len(body) - 1))]
    elif how == "trailing":
        broken = body + draw(st.sampled_from([b"x", b",", b"}", b"{}", b" 1"]))
    elif how == "surrogate":
        broken = dumps(base_event(subject="@@")).replace(b'"@@"', b'"\\ud800"')
    elif how == "quotes":
        broken = body.replace(b'"', b"'")
    else:
        broken = b""
    return Hostile(body=broken, reason="invalid_json", kind=f"invalid_json/{how}")


@st.composite
def deep_nesting(draw: st.DrawFn) -> Hostile:
    """Documents nested past the parser's limit, and nested data fields under it."""
    depth = draw(st.integers(2, 3000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"n":', b"}")]))
    if depth > 150:
        closed = draw(st.booleans())
        body = opener * depth + b"1" + (closer * depth if closed else b"")
    else:
        body = dumps(base_event()).replace(
            b'"model": "gpt-4"', b'"model": ' + opener * depth + b"1" + closer * depth
        )
    return Hostile(body=body, reason="schema_violation", kind="deep_nesting")


@st.composite
def too_large(draw: st.DrawFn) -> Hostile:
    """Bodies over the 64 KiB limit, valid JSON or not."""
    size = draw(st.integers(MAX_BODY_BYTES + 1, 4 * MAX_BODY_BYTES))
    if draw(st.booleans()):
        body = dumps(base_event(data={"quantity": 1, "pad": "x" * size}))
    else:
        body = b"\xff" * size
    return Hostile(body=body, reason="too_large", kind="too_large")


@st.composite
def huge_strings(draw: st.DrawFn) -> Hostile:
    """Identifiers, dimension names and values past their bounds (body under 64 KiB)."""
    where = draw(st.sampled_from(["id", "source", "subject", "dimension", "dimension_name"]))
    char = draw(st.sampled_from(["x", "é", "💳"]))
    per_char = len(json.dumps(char)) - 2  # escaped: 1, 6 or 12 bytes
    length = draw(st.integers(257, 60_000 // per_char))  # the body stays under 64 KiB
    text = char * length
    if where == "dimension":
        event = base_event(data={"quantity": 1, "note": text})
    elif where == "dimension_name":
        event = base_event(data={"quantity": 1, text[:65]: 1})
    else:
        event = base_event(**{where: text})
    return Hostile(body=dumps(event), reason="schema_violation", kind=f"huge_string/{where}")


wrong_json_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.floats(allow_nan=False),
)


@st.composite
def wrong_types(draw: st.DrawFn) -> Hostile:
    """A field of the wrong JSON type."""
    where = draw(st.sampled_from(["id", "source", "subject", "type", "time", "data", "quantity"]))
    value = draw(wrong_json_values)
    if where == "quantity":
        value = draw(st.sampled_from([True, False, None, [1], {"v": 1}]))
        event = base_event(data={"quantity": value})
    elif where == "data":
        value = draw(st.sampled_from([None, [1], "x", 7, True]))
        event = base_event(data=value)
    else:
        event = base_event(**{where: value})
    return Hostile(body=dumps(event), reason="schema_violation", kind=f"wrong_type/{where}")


@st.composite
def absurd_quantities(draw: st.DrawFn) -> Hostile:
    """Negative, not-a-number, infinite, too precise or too large quantities."""
    negative = st.decimals(max_value=Decimal("-1e-18"), allow_nan=False, allow_infinity=False)
    raw_literal = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1", "1e999999999"])
    texts = st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "inf", "1e999999999", "-1"])
    too_precise = st.integers(19, 60).map(lambda n: "0." + "0" * (n - 1) + "1")
    too_long = st.integers(39, 80).map(lambda n: "9" * n)
    kind = draw(st.sampled_from(["negative", "literal", "text", "precise", "long"]))
    if kind == "literal":
        body = dumps(base_event(data={"quantity": 0})).replace(
            b'"quantity": 0', b'"quantity": ' + draw(raw_literal).encode()
        )
        return Hostile(body=body, reason="schema_violation", kind="quantity/literal")
    if kind == "negative":
        value: Any = str(draw(negative))
    elif kind == "text":
        value = draw(texts)
    else:
        value = draw(too_precise if kind == "precise" else too_long)
    as_number = draw(st.booleans()) and kind != "text"
    body = dumps(base_event(data={"quantity": "@@"})).replace(
        b'"@@"', value.encode() if as_number else json.dumps(value).encode()
    )
    return Hostile(body=body, reason="schema_violation", kind=f"quantity/{kind}")


@st.composite
def times_out_of_range(draw: st.DrawFn) -> Hostile:
    """Times in the future (beyond the skew), before 1970, after 9998, naive or garbled."""
    kind = draw(st.sampled_from(["future", "ancient", "far_future", "naive", "garbled"]))
    if kind == "future":
        ahead = draw(st.integers(600, 10**8))
        value = (now() + timedelta(seconds=ahead)).isoformat()
        return Hostile(
            body=dumps(base_event(time=value)), reason="time_in_future", kind="time/future"
        )
    if kind == "ancient":
        value = draw(
            st.integers(1, 1969).map(lambda year: f"{year:04d}-06-01T00:00:00Z")
            | st.just("1970-01-01T00:00:00+14:00")  # 1969 in UTC
        )
    elif kind == "far_future":
        value = "9999-06-01T00:00:00Z"
    elif kind == "naive":
        value = "2026-11-21T10:15:00"
    else:
        value = draw(
            st.sampled_from(
                ["yesterday", "", "2026-13-01T00:00:00Z", "1700000000", "1700000000000", "1.5"]
            )
        )
    return Hostile(
        body=dumps(base_event(time=value)), reason="schema_violation", kind=f"time/{kind}"
    )


@st.composite
def missing_or_unknown_fields(draw: st.DrawFn) -> Hostile:
    """A required attribute missing, an unknown one added, or too many dimensions."""
    kind = draw(st.sampled_from(["missing", "unknown", "dimensions", "specversion"]))
    event = base_event()
    if kind == "missing":
        del event[draw(st.sampled_from(REQUIRED))]
    elif kind == "unknown":
        name = draw(st.text(min_size=1, max_size=20).filter(lambda n: n not in KNOWN_TOP_LEVEL))
        event[name] = draw(wrong_json_values)
    elif kind == "dimensions":
        count = draw(st.integers(33, 60))
        event["data"] = {"quantity": 1, **{f"d{i}": i for i in range(count)}}
    else:
        event["specversion"] = draw(st.sampled_from(["0.3", "2.0", "1", "", "1.0 "]))
    return Hostile(body=dumps(event), reason="schema_violation", kind=f"fields/{kind}")


@st.composite
def unknown_event_types(draw: st.DrawFn) -> Hostile:
    """A well-formed type that no meter of the price book is fed by."""
    name = draw(
        st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,40}\Z").filter(
            lambda t: t not in BOOK_EVENT_TYPES
        )
    )
    return Hostile(
        body=dumps(base_event(type=name)), reason="unknown_event_type", kind="unknown_type"
    )


@st.composite
def wrong_content_types(draw: st.DrawFn) -> Hostile:
    """A valid body declared as something other than JSON (bytes not UTF-8 included)."""
    content_type: str = draw(
        st.sampled_from(
            [
                "text/plain",
                "application/xml",
                "application/octet-stream",
                "text/json",
                "application/jsonx",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "json",
                "application/json-patch+json",
            ]
        )
        | st.just(RawShortStr.of(b"application/json\xff"))
        | st.just(RawShortStr.of(b"\xc0\xafapplication/json"))
    )
    return Hostile(
        body=dumps(base_event()),
        content_type=content_type,
        reason="unsupported_content_type",
        kind="content_type",
    )


@st.composite
def nul_characters(draw: st.DrawFn) -> Hostile:
    """A NUL character in any string PostgreSQL would have to store."""
    where = draw(st.sampled_from(["id", "source", "subject", "dimension", "dimension_name"]))
    text = draw(st.text(string.ascii_letters, max_size=4)) + "\x00" + "x"
    if where == "dimension":
        event = base_event(data={"quantity": 1, "model": text})
    elif where == "dimension_name":
        event = base_event(data={"quantity": 1, text: "v"})
    else:
        event = base_event(**{where: text})
    return Hostile(body=dumps(event), reason="schema_violation", kind=f"nul/{where}")


BAD_BODIES = st.one_of(
    invalid_utf8(),
    invalid_json(),
    deep_nesting(),
    too_large(),
    huge_strings(),
    wrong_types(),
    absurd_quantities(),
    times_out_of_range(),
    missing_or_unknown_fields(),
    unknown_event_types(),
    wrong_content_types(),
    nul_characters(),
)


# -- headers and properties ---------------------------------------------------------------

plain_header_values = st.one_of(
    st.text(max_size=50),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.none(),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.lists(st.integers(-1000, 1000), max_size=3),
    st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=5), st.text(max_size=5)),
)
"""Header values every client writes and reads back unchanged."""


def _nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        table = {"n": table}
    return table


raw_header_values = st.sampled_from(
    [
        RawField(b"S" + struct.pack(">I", 3) + b"\xff\xfe\xfd"),  # long string, not UTF-8
        RawField(b"d" + struct.pack(">d", 1e300)),  # a double no 32-bit float holds
        RawField(b"T" + struct.pack(">Q", 2**63 - 1)),  # a timestamp past any calendar
        RawField(b"D" + struct.pack(">BI", 2, 0xFFFFFFFF)),  # decimal, unsigned mantissa
        "nested",
    ]
)
"""Header values other clients can send that the Python client reads awkwardly."""


@st.composite
def headers(draw: st.DrawFn) -> dict[str, Any]:
    """Missing, ordinary, forged or hostile headers."""
    result: dict[str, Any] = draw(
        st.dictionaries(
            st.text(string.ascii_letters + "-_", min_size=1, max_size=20).filter(
                lambda k: not k.lower().startswith("x-")
            ),
            plain_header_values,
            max_size=4,
        )
    )
    if draw(st.booleans()):
        result["x-billing-reason"] = "forged"  # the worker's reason replaces it
    for i in range(draw(st.integers(0, 2))):
        value = draw(raw_header_values)
        result[f"raw-{i}"] = _nested(draw(st.integers(33, 200))) if value == "nested" else value
    if draw(st.booleans()):
        result[RawShortStr.of(b"name-\xff")] = "v"
    return result


routing_keys = st.sampled_from(
    [
        "usage.hostile-tests.chat.tokens",
        "usage.",
        "usage.💳.'; DROP TABLE usage_ledger; --",
        RawShortStr.of(b"usage.\xff\xfe.x"),
    ]
)
"""Routing keys the usage binding (``usage.#``) takes, one of them not UTF-8."""


@st.composite
def hostile_deliveries(draw: st.DrawFn) -> Hostile:
    """A bad body with, perhaps, hostile headers and a timestamp past any calendar."""
    bad = draw(BAD_BODIES)
    return Hostile(
        body=bad.body,
        content_type=bad.content_type,
        headers=draw(headers()),
        timestamp=HUGE_TIMESTAMP if draw(st.booleans()) else None,
        routing_key=draw(routing_keys),
        reason=bad.reason,
        kind=bad.kind,
    )


@st.composite
def good_templates(draw: st.DrawFn) -> GoodTemplate:
    """Valid events at the edges: zero and 38-digit quantities, odd subjects, old times."""
    quantity = draw(
        st.sampled_from(
            [0, "0", 1, "1.5", "0.000000000000000001", "9" * 20 + "." + "9" * 18, 1e-3, 10**19]
        )
    )
    when = draw(
        st.sampled_from(
            ["1970-01-01T00:00:00Z", "1970-01-01T09:59:59+09:59", "2001-02-03T04:05:06.789-07:30"]
        )
        | st.just(past_time())
    )
    content_type = draw(
        st.sampled_from(
            [None, "application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
        )
    )
    fields = base_event(
        source=draw(identifiers),
        subject=draw(identifiers),
        time=when,
        data={"quantity": quantity, "model": draw(st.text(max_size=20).filter(_no_nul))},
    )
    timestamp = HUGE_TIMESTAMP if draw(st.booleans()) else None
    return GoodTemplate(fields, content_type, draw(headers()), timestamp)


def _no_nul(text: str) -> bool:
    return "\x00" not in text


async def publish(bus: Bus, delivery: Delivery) -> None:
    """Publish one delivery persistently and wait for the broker's confirm."""
    exchange = await bus.channel.get_exchange(bus.name("billing.usage"))
    message = aio_pika.Message(
        delivery.body,
        content_type=delivery.content_type,
        headers=delivery.headers,
        timestamp=delivery.timestamp,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
    with raw_wire_values():
        await exchange.publish(message, routing_key=delivery.routing_key)


# -- the real command as a child process --------------------------------------------------


class ChildProcess:
    """``billing-worker <command>`` with exactly the given ``BILLING_*`` variables, its
    stdout and stderr in one file (JSON log lines, or whatever else it prints)."""

    def __init__(self, command: str, variables: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        env = child_env()
        env.update(variables)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "billing_worker", *command.split()],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, port: int, path: str = "/readyz", timeout: float = 30) -> None:
        """Until ``path`` on ``port`` answers 200 (fails the test if the process exits)."""

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"exited early:\n{self.output()[-3000:]}")
            try:
                return http_get(f"http://127.0.0.1:{port}{path}")[0] == 200
            except OSError:
                return False

        await wait_until(ready, timeout, f"{path} on port {port}")

    async def wait_exit(self, timeout: float = 60) -> int:
        """Its exit code, once it exits."""
        await wait_until(lambda: self.process.poll() is not None, timeout, "the process to exit")
        return int(self.process.returncode)

    async def stop(self) -> int:
        """SIGTERM, then its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait_exit()

    def kill(self) -> None:
        """Make sure it is gone (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log_path.read_bytes().decode("utf-8", "replace")


# -- broker users -------------------------------------------------------------------------


def rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` (the tests run where the broker does); fail loudly."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {done.stderr.strip()}")


@contextlib.contextmanager
def broker_user(
    name: str, password: str, *, vhost: str = "/", permissions: tuple[str, str, str]
) -> Iterator[None]:
    """A RabbitMQ user with ``(configure, write, read)`` on ``vhost``, deleted afterwards."""
    rabbitmqctl("add_user", name, password)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, name, *permissions)
        yield
    finally:
        rabbitmqctl("delete_user", name)
