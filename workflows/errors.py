"""How failures inside the workflow become a run's outcome, in one place.

Exceptions the loop may end on::

    Abort              the in-flight step was abandoned: deadline, cancel (with abort)
    ActivityError      an activity failed for good (retries exhausted, non-retryable);
                       the real error is its innermost cause
    ApplicationError   raised by workflow code itself (e.g. `InternalError` below)

`outcome_of` turns each into the `TerminalReason` and error text the run finishes
with; `describe` names the innermost cause so the text says what actually failed
(`HttpStatusError: 401 ...`, not `ActivityError: activity error`). Anything else is
a bug in the workflow: it fails the workflow *task*, which Temporal retries after
a fix is deployed, instead of ending the run.

This module must not: call `temporalio.workflow`, or swallow an exception it was not
asked to translate.
"""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from agentrun.contracts import TerminalReason

INTERNAL_ERROR = "InternalError"
"""A broken invariant of the workflow itself: report it, with the run id, as a bug."""


class Abort(Exception):
    """The in-flight step was abandoned (deadline or cancel-with-abort)."""

    def __init__(self, reason: TerminalReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def internal_error(detail: str) -> ApplicationError:
    """An invariant the workflow relies on does not hold (retrying cannot fix it)."""
    return ApplicationError(detail, type=INTERNAL_ERROR, non_retryable=True)


def describe(err: BaseException) -> str:
    """The innermost cause's type and message (activity errors wrap the real one)."""
    cause: BaseException = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        return f"{cause.type or 'ApplicationError'}: {cause.message}"
    if isinstance(cause, CancelledError):
        return "cancelled"
    return f"{type(cause).__name__}: {cause}"


def outcome_of(
    err: Abort | ActivityError | ApplicationError,
) -> tuple[TerminalReason, str | None]:
    """The reason and error text a run ends with when the loop raised `err`."""
    if isinstance(err, Abort):
        return err.reason, None
    if isinstance(err, ActivityError):
        return TerminalReason.ERROR, describe(err)
    return TerminalReason.ERROR, f"{err.type}: {err.message}"
