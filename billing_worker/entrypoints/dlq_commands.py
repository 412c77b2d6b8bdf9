"""``billing-worker dlq list|show|replay|purge``: dead letters by reason, replayed after a fix.

Each prints a table on a terminal, or JSON with ``--json``. The broker work is in
``adapters/amqp/dlq_actions.py``; this module checks the input and renders the results.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from aio_pika.abc import AbstractConnection

from billing_worker.adapters.amqp.dlq import DeadLetter, DeadLetterSource
from billing_worker.adapters.amqp.dlq_actions import (
    Purge,
    Replay,
    Survey,
    purge,
    replay,
    survey,
)
from billing_worker.entrypoints.cli_support import table
from billing_worker.entrypoints.progress import progress

KNOWN_REASONS = frozenset(
    {
        # usage events
        "invalid_json", "schema_violation", "unknown_event_type", "idempotency_conflict",
        "time_in_future", "unsupported_content_type", "too_large", "unprocessable",
        "undecodable", "late_event",
        # relayed Stripe events
        "bad_signature", "stale_signature", "invalid_stripe_event", "unknown_account",
        "unknown_price", "unknown_plan",
        # dead-lettered by the broker itself (x-death), or without any reason
        "broker:rejected", "broker:expired", "broker:maxlen", "broker:delivery_limit",
        "rejected", "unknown",
    }
)  # fmt: skip
SHOW_BODY_BYTES = 4096
"""Most of a body ``show`` reads; the table shows the first ``TABLE_BODY_CHARS`` of it."""
TABLE_BODY_CHARS = 300
TABLE_DETAIL_CHARS = 200


class UnknownReason(Exception):
    """A ``--reason`` the worker never gives and no dead letter of the queue has."""


async def check_reason(
    connection: AbstractConnection, source: DeadLetterSource, reason: str | None
) -> None:
    """Refuse a reason that is neither one the worker gives nor present in the DLQ (a typo
    would otherwise select nothing and look like an empty queue)."""
    if reason is None or reason in KNOWN_REASONS:
        return
    present = (await survey(connection, source)).reasons
    if reason not in present:
        seen = ", ".join(sorted(present)) or "none"
        raise UnknownReason(
            f"unknown reason {reason!r}: not one the worker gives, and no dead letter in "
            f"{source.dead_letter_queue} has it (reasons there: {seen}; known reasons: "
            f"{', '.join(sorted(KNOWN_REASONS))})"
        )


async def run_dlq_command(
    args: argparse.Namespace, connection: AbstractConnection, source: DeadLetterSource
) -> int:
    """Dispatch one ``dlq`` action; return the exit status."""
    out = sys.stdout
    if args.action == "list":
        found = await survey(connection, source, reason=args.reason)
        _print_list(source, found.size, found.letters, args.reason, as_json=args.json, out=out)
        return 0
    if args.action == "show":
        found = await survey(
            connection, source, reason=args.reason, limit=args.limit, body_limit=SHOW_BODY_BYTES
        )
        _print_show(source, found, args.reason, as_json=args.json, out=out)
        return 0
    if args.action == "replay":
        with progress("replaying dead letters", unit="msg") as bar:
            done = await replay(
                connection,
                source,
                reason=args.reason,
                limit=args.limit,
                dry_run=args.dry_run,
                advance=bar.update,
                sized=lambda n: setattr(bar, "total", n),
            )
        _print_replay(source, done, dry_run=args.dry_run, as_json=args.json, out=out)
        return 1 if done.failed else 0
    if not args.yes:
        found = await survey(connection, source, reason=args.reason)
        sys.stderr.write(
            f"billing-worker: dlq purge deletes dead letters for good: it would delete "
            f"{len(found.letters)} of the {found.size} in {source.dead_letter_queue}"
            f"{_reason_text(args.reason)}. Add --yes to delete them (look first with "
            "`billing-worker dlq show`).\n"
        )
        return 2
    with progress("purging dead letters", unit="msg") as bar:
        purged = await purge(
            connection,
            source,
            reason=args.reason,
            advance=bar.update,
            sized=lambda n: setattr(bar, "total", n),
        )
    _print_purge(source, purged, args.reason, as_json=args.json, out=out)
    return 0


def _reason_text(reason: str | None) -> str:
    return f" with reason {reason}" if reason else ""


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _short(moment: datetime | None) -> str:
    """A time for a table: to the second."""
    return moment.isoformat(timespec="seconds") if moment is not None else "-"


def _print_list(
    source: DeadLetterSource,
    size: int,
    letters: list[DeadLetter],
    reason: str | None,
    *,
    as_json: bool,
    out: TextIO,
) -> None:
    by_reason: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_reason.setdefault(letter.reason, []).append(letter)
    routes = Counter((letter.reason, letter.routing_key or "") for letter in letters)
    stamps = [letter.rejected_at for letter in letters if letter.rejected_at is not None]
    reasons = [
        {
            "reason": name,
            "count": len(group),
            "oldest": _iso(_oldest(group)),
            "newest": _iso(_newest(group)),
        }
        for name, group in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0]))
    ]
    by_route = [
        {"reason": r, "routing_key": key, "count": n}
        for (r, key), n in sorted(routes.items(), key=lambda item: (-item[1], item[0]))
    ]
    report: dict[str, Any] = {
        "queue": source.queue,
        "dead_letter_queue": source.dead_letter_queue,
        "total": size,
        "selected": len(letters),
        "reason": reason,
        "oldest": _iso(min(stamps, default=None)),
        "newest": _iso(max(stamps, default=None)),
        "reasons": reasons,
        "routing_keys": by_route,
    }
    if as_json:
        out.write(json.dumps(report, indent=2) + "\n")
        return
    if not letters:
        out.write(f"{source.dead_letter_queue}: no dead letters{_reason_text(reason)}")
        out.write(f" ({size} in all)\n" if reason and size else "\n")
        return
    out.write(f"{source.dead_letter_queue}: {len(letters)} dead letter(s){_reason_text(reason)}")
    out.write(f" of {size}" if reason else "")
    out.write(f", oldest {_short(min(stamps, default=None))}, ")
    out.write(f"newest {_short(max(stamps, default=None))}\n\n")
    table(
        out,
        ["reason", "count", "oldest", "newest"],
        [
            [name, len(group), _short(_oldest(group)), _short(_newest(group))]
            for name, group in sorted(by_reason.items(), key=lambda item: (-len(item[1]), item[0]))
        ],
    )
    out.write("\n")
    table(
        out,
        ["reason", "routing key", "count"],
        [[r["reason"], r["routing_key"] or "(none)", r["count"]] for r in by_route],
    )


def _oldest(letters: list[DeadLetter]) -> datetime | None:
    return min((d.rejected_at for d in letters if d.rejected_at is not None), default=None)


def _newest(letters: list[DeadLetter]) -> datetime | None:
    return max((d.rejected_at for d in letters if d.rejected_at is not None), default=None)


def _print_show(
    source: DeadLetterSource, found: Survey, reason: str | None, *, as_json: bool, out: TextIO
) -> None:
    letters = found.letters
    if as_json:
        out.write(json.dumps([_letter_json(letter) for letter in letters], indent=2) + "\n")
        return
    matching = found.reasons[reason] if reason else found.size
    out.write(f"{source.dead_letter_queue}: showing {len(letters)} of {matching} dead letter(s)")
    out.write(f"{_reason_text(reason)} ({found.size} in all)\n" if reason else "\n")
    for letter in letters:
        out.write(
            f"\n#{letter.position}  {letter.reason}  {_short(letter.rejected_at)}  "
            f"{letter.routing_key if letter.routing_key is not None else '(no routing key)'}\n"
        )
        out.write(f"    detail: {_cut(letter.detail, TABLE_DETAIL_CHARS) or '-'}\n")
        out.write(
            f"    message id: {letter.message_id or '-'}, "
            f"content type: {letter.content_type or '-'}\n"
        )
        others = {k: v for k, v in letter.headers.items() if not k.startswith("x-billing-")}
        if others:
            shown = ", ".join(f"{k}={_cut(str(_plain(v)), 80)}" for k, v in sorted(others.items()))
            out.write(f"    headers: {shown}\n")
        text = letter.body.decode("utf-8", "replace")
        out.write(f"    body ({letter.body_size} bytes): {_cut(text, TABLE_BODY_CHARS)}\n")


def _cut(text: str, limit: int) -> str:
    """One line, at most ``limit`` characters (an ellipsis says it was cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    try:
        body: str = letter.body.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(letter.body).decode(), "base64"
    return {
        "position": letter.position,
        "reason": letter.reason,
        "detail": letter.detail,
        "queue": letter.queue,
        "routing_key": letter.routing_key,
        "exchange": letter.exchange,
        "rejected_at": _iso(letter.rejected_at),
        "message_id": letter.message_id,
        "content_type": letter.content_type,
        "headers": _plain(letter.headers),
        "body": body,
        "body_encoding": encoding,
        "body_bytes": letter.body_size,
        "body_truncated": letter.body_size > len(letter.body),
    }


def _plain(value: Any) -> Any:
    """AMQP header values as JSON: tables, arrays, times, decimals and bytes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _print_replay(
    source: DeadLetterSource, done: Replay, *, dry_run: bool, as_json: bool, out: TextIO
) -> None:
    skipped = sum(done.skipped.values())
    if as_json:
        report = {
            "dead_letter_queue": source.dead_letter_queue,
            "exchange": source.exchange,
            "dry_run": dry_run,
            "examined": done.size,
            "replayed": done.replayed,
            "replayed_by_reason": dict(sorted(done.reasons.items())),
            "skipped": skipped,
            "skipped_by_cause": dict(sorted(done.skipped.items())),
            "not_confirmed": done.failed,
        }
        out.write(json.dumps(report, indent=2) + "\n")
        return
    verb = "would replay" if dry_run else "replayed"
    target = source.exchange or "the exchanges x-death names"
    out.write(f"{verb} {done.replayed} of {done.size} dead letter(s) from ")
    out.write(f"{source.dead_letter_queue} to {target}")
    if done.reasons:
        out.write(" (" + ", ".join(f"{r}: {n}" for r, n in sorted(done.reasons.items())) + ")")
    out.write(f"; skipped {skipped}")
    if skipped:
        out.write(" (" + ", ".join(f"{c}: {n}" for c, n in sorted(done.skipped.items())) + ")")
    out.write(", left in the DLQ\n")
    if dry_run:
        out.write("dry run: nothing was published or removed\n")
    if done.failed:
        out.write(
            f"{done.failed} replay(s) were not confirmed by the broker (unroutable or "
            "refused): those dead letters are still in the DLQ\n"
        )


def _print_purge(
    source: DeadLetterSource, purged: Purge, reason: str | None, *, as_json: bool, out: TextIO
) -> None:
    count = sum(purged.purged.values())
    if as_json:
        report = {
            "dead_letter_queue": source.dead_letter_queue,
            "reason": reason,
            "purged": count,
            "purged_by_reason": dict(sorted(purged.purged.items())),
            "left": purged.kept,
        }
        out.write(json.dumps(report, indent=2) + "\n")
        return
    out.write(f"purged {count} dead letter(s){_reason_text(reason)} from ")
    out.write(f"{source.dead_letter_queue}; {purged.kept} left\n")
