"""Decode any well-framed AMQP content header, however odd its values, without raising.

pamqp (under aiormq) decodes each delivery's properties and header table inside the
connection's frame reader. Some values a producer can send, and RabbitMQ passes on, make
it raise there: a short string (``content_type``, ``message_id``, a header name) that is
not UTF-8, a timestamp past the year 9999, a table nested deeper than the interpreter's
recursion limit. aiormq then closes the whole connection; the broker hands the same
message to the next connection, and the next, for ever: one such message stops every
consumer of the process, with nothing dead-lettered. The decoders installed here are total
instead, and keep what they can: invalid UTF-8 becomes U+FFFD, an out-of-range timestamp
the latest one ``datetime`` holds, and a table or array nested deeper than
``MAX_NESTING`` its raw bytes (a byte array). The message is then read, and its consumer
decides (the usage consumer dead-letters it with its reason, headers kept).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from pamqp import decode

MAX_NESTING = 32
"""Tables and arrays nested deeper than this are kept as raw bytes, not decoded."""

LATEST = datetime.max.replace(tzinfo=UTC)
"""What a timestamp past ``datetime``'s range decodes as."""

_LENGTH = struct.Struct(">I")
_TIMESTAMP = struct.Struct(">Q")


def _length(value: bytes, offset: int = 0) -> int:
    try:
        return int(_LENGTH.unpack_from(value, offset)[0])
    except struct.error as exc:
        raise ValueError("Could not unpack length") from exc


def short_str(value: bytes) -> tuple[int, str]:
    """A short string; bytes that are not UTF-8 become U+FFFD."""
    if not value:
        raise ValueError("Could not unpack short string value")
    length = value[0]
    return length + 1, value[1 : length + 1].decode("utf-8", "replace")


def timestamp(value: bytes) -> tuple[int, datetime]:
    """A timestamp (seconds; pamqp reads values past 2106 as milliseconds), clamped."""
    try:
        seconds: float = _TIMESTAMP.unpack_from(value)[0]
    except struct.error as exc:
        raise ValueError("Could not unpack timestamp value") from exc
    if seconds > 0xFFFFFFFF:
        seconds /= 1000.0
    try:
        return 8, datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return 8, LATEST


def _embedded(value: bytes, depth: int) -> tuple[int, Any]:
    kind = value[0:1]
    if kind == b"F":
        consumed, table = _table(value[1:], depth + 1)
        return consumed + 1, table
    if kind == b"A":
        consumed, array = _array(value[1:], depth + 1)
        return consumed + 1, array
    return decode.embedded_value(value)


def _raw(value: bytes) -> tuple[int, bytearray]:
    end = 4 + _length(value)
    return end, bytearray(value[4:end])


def _table(value: bytes, depth: int) -> tuple[int, dict[str, Any] | bytearray]:
    if depth > MAX_NESTING:
        return _raw(value)
    end = 4 + _length(value)
    if end > len(value):
        raise ValueError("Field table length exceeds available data")
    table: dict[str, Any] = {}
    offset = 4
    while offset < end:
        consumed, key = short_str(value[offset:end])
        offset += consumed
        consumed, table[key] = _embedded(value[offset:end], depth)
        offset += consumed
    return end, table


def _array(value: bytes, depth: int) -> tuple[int, list[Any] | bytearray]:
    if depth > MAX_NESTING:
        return _raw(value)
    end = 4 + _length(value)
    if end > len(value):
        raise ValueError("Field array length exceeds available data")
    items: list[Any] = []
    offset = 4
    while offset < end:
        consumed, item = _embedded(value[offset:end], depth)
        offset += consumed
        items.append(item)
    return end, items


def field_table(value: bytes) -> tuple[int, dict[str, Any] | bytearray]:
    """A field table (the ``headers`` property, or a table inside one)."""
    return _table(value, 1)


def field_array(value: bytes) -> tuple[int, list[Any] | bytearray]:
    """A field array inside a header table."""
    return _array(value, 1)


def install_total_decoders() -> None:
    """Make pamqp use these decoders, for properties and header values alike (idempotent)."""
    decode.METHODS["shortstr"] = short_str
    decode.METHODS["timestamp"] = timestamp
    decode.METHODS["table"] = field_table
    decode.METHODS["array"] = field_array
    decode.TABLE_MAPPING[b"T"] = timestamp
    decode.TABLE_MAPPING[b"F"] = field_table
    decode.TABLE_MAPPING[b"A"] = field_array
