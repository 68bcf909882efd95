"""How many tool calls of one model reply run, and what the model is told of the rest.

Why a cap: every tool call the workflow runs adds about six events to its history
(the activity's scheduled, started and completed events, and a workflow task), and
Temporal fails a run whose history reaches 51,200 events: one reply with ~8,400
calls would end the run. So `call_model` hands the workflow at most `cap` calls of
a reply; the others never reach the workflow's history.

The calls beyond the cap stay in the assistant message as the model made them, and
each gets a refusal *tool message* right after it: providers require an answer to
every call of an assistant message (OpenAI rejects the next request otherwise), and
the answer tells the model why the call did not run and what to do instead.

The cap is the smaller of the deployment's (`AGENTRUN_MAX_TOOL_CALLS_PER_TURN`) and
the run's (`Limits.max_tool_calls_per_turn`): a run may only lower it.

This module must not: do I/O (the activity stores what it builds), or decide how
the workflow runs the calls it keeps.
"""

from __future__ import annotations

from agentrun.contracts import Message, RawToolCall

__all__ = ["refusal", "refusal_text", "tool_call_cap"]


def tool_call_cap(run_limit: int | None, deployment_cap: int) -> int:
    """The calls of one reply that run: the run's limit, bounded by the deployment's."""
    return deployment_cap if run_limit is None else min(run_limit, deployment_cap)


def refusal_text(requested: int, cap: int) -> str:
    """What the model reads in place of the result of a call beyond the cap."""
    return (
        f"Tool call not executed: this reply made {requested} tool calls, and at most "
        f"{cap} run per reply (the first {cap} ran). Make the calls you still need in "
        f"your next reply, at most {cap} at a time."
    )


def refusal(call: RawToolCall, requested: int, cap: int) -> Message:
    """The tool message that answers `call`, a call beyond the cap."""
    return Message(
        role="tool",
        tool_call_id=call.id,
        name=call.name,
        content=refusal_text(requested, cap),
    )
