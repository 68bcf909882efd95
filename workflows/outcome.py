"""How a run's outcome is recorded in Temporal, and read back: one encoding for both sides.

A run ends with a `RunResult` whatever happened; what Temporal shows for it must
say the same (the Web UI and `temporal workflow describe` colour runs by it):

    completed   the workflow returns the RunResult                  → Completed
    failed      it raises `ending_failure(result)`: a non-retryable → Failed
                ApplicationError whose type is the reason
                (`max_steps`, `deadline`, `budget`, `error`) and
                whose details[0] is the RunResult as JSON
    cancelled   it upserts the RunResult in the memo (`MEMO_RESULT`) → Canceled
                and ends as cancelled (a Temporal cancel carries no
                details, so the memo holds the outcome)

Readers (the API's run view when no worker answers, tests) get the RunResult back
with `result_from_failure` and the memo key, so every reader sees the same outcome
as before the run's Temporal status told the truth.

Design (why it looks like this): the encoding is pure data, shared by the workflow
that writes it and the clients that read it, so neither can drift from the other.

This module must not: do I/O or call `temporalio.workflow` (clients import it).
"""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from agentrun.contracts import RunResult, RunStatus

MEMO_RESULT = "result"
"""Memo key of a cancelled run's `RunResult` (a Temporal cancel carries no details)."""


def ending_failure(result: RunResult) -> ApplicationError:
    """The error a failed run ends with: its reason as the type, its result as details."""
    message = result.error or f"the run ended with reason {result.reason.value}"
    return ApplicationError(
        message, result.model_dump(mode="json"), type=result.reason.value, non_retryable=True
    )


def result_from_failure(cause: BaseException | None) -> RunResult | None:
    """The RunResult a failed run recorded (the cause of the client's
    `WorkflowFailureError`); None for a failure the workflow did not end with."""
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        result = RunResult.model_validate(cause.details[0])
    except ValueError:
        return None
    return result if result.status == RunStatus.FAILED else None
