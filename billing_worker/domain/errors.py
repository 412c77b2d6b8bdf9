"""The two error roots: permanent (dead-letter at once) and transient (retry, then requeue)."""

from __future__ import annotations


class PermanentError(Exception):
    """Input that can never succeed; the message is dead-lettered with ``reason``.

    ``reason`` is a short machine-readable code (it becomes ``x-billing-reason``);
    ``detail`` is for humans (``x-billing-detail``).
    """

    reason: str = "rejected"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class InvalidJson(PermanentError):
    """The body is not a UTF-8 JSON document."""

    reason = "invalid_json"


class SchemaViolation(PermanentError):
    """The body is JSON but not a valid message of the contract."""

    reason = "schema_violation"


class UnknownEventType(PermanentError):
    """No meter is fed by this event type."""

    reason = "unknown_event_type"


class EventTimeInFuture(PermanentError):
    """The event claims to have happened later than the clock-skew allowance permits."""

    reason = "time_in_future"


class IdempotencyConflict(PermanentError):
    """The idempotency key was already used for different content."""

    reason = "idempotency_conflict"


class UnprocessableEvent(PermanentError):
    """Valid on the wire, yet the store refuses it (isolated from its batch)."""

    reason = "unprocessable"


class TransientError(Exception):
    """A failure that may pass by itself (lost connection, deadlock, serialization failure)."""
