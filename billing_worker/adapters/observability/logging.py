"""JSON logs through structlog, one object per line on stdout."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import TextIO, cast
from urllib.parse import quote

import structlog

MIN_SECRET = 6
"""Shorter values (a password like ``guest``) are not masked: they would mask ordinary
words in every line, and are no secret anyway."""


class _StandardStream:
    """``sys.stdout`` or ``sys.stderr`` as it is at each write.

    Loggers cache their stream on first use; whoever swaps the standard streams later (a
    test capturing output, a tool redirecting it) still gets the lines.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        stream: TextIO = getattr(sys, self._name)
        return stream.write(text)

    def flush(self) -> None:
        stream: TextIO = getattr(sys, self._name)
        stream.flush()


def redactor(secrets: Iterable[str]) -> structlog.typing.Processor:
    """A processor that masks each of ``secrets`` (and its URL-quoted form) in every string
    field: the worker never logs a secret itself, but a library may quote one back (an API
    error that repeats the key it was given, a driver message with a connection string)."""
    forms = {form for s in secrets for form in (s, quote(s, safe="")) if len(s) >= MIN_SECRET}
    ordered = sorted(forms, key=len, reverse=True)

    def redact(
        logger: object, method: str, event_dict: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        for key, value in event_dict.items():
            if isinstance(value, str) and any(form in value for form in ordered):
                masked = value
                for form in ordered:
                    masked = masked.replace(form, "[redacted]")
                event_dict[key] = masked
        return event_dict

    return redact


def configure_logging(
    level: str = "info", stream: TextIO = sys.stdout, *, secrets: Iterable[str] = ()
) -> None:
    """Route structlog and the standard library (aio-pika, alembic) to JSON lines, with
    ``secrets`` masked wherever they would appear."""
    if stream is sys.stdout or stream is sys.stderr:
        stream = cast(TextIO, _StandardStream("stdout" if stream is sys.stdout else "stderr"))
    redact = redactor(secrets)
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    # alembic narrates every step at INFO; the worker logs the result itself. The Stripe SDK
    # logs each request and each error body at INFO and DEBUG (customer data, whatever the
    # API quotes back); the sync logs its outcome, redacted, itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("stripe").setLevel(logging.WARNING)
