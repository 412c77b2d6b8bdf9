"""JSON logs through structlog, one object per line on stdout."""

from __future__ import annotations

import logging
import sys
from typing import TextIO, cast

import structlog


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


def configure_logging(level: str = "info", stream: TextIO = sys.stdout) -> None:
    """Route structlog and the standard library (aio-pika, alembic) to JSON lines."""
    if stream is sys.stdout or stream is sys.stderr:
        stream = cast(TextIO, _StandardStream("stdout" if stream is sys.stdout else "stderr"))
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
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO))
    # alembic narrates every step at INFO; the worker logs the result itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
