"""Steering a run: pause, resume, cancel, approval decisions and steering messages.

Each route sends one Temporal update through a typed reference on
`AgentRunWorkflow` and answers with the run's status after it applied. Invalid
transitions (resuming a completed run, an approval naming other arguments) come
back from the workflow as a 409 with the run's status; a worker that does not
answer in time is a 504 (the update may still apply later).

This module must not: change run state any other way than through the workflow's
updates (the workflow alone decides which transitions are valid).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Path, Request
from temporalio.client import Client

from agentrun.config import Settings
from agentrun.contracts import (
    ApprovalDecision,
    ControlAction,
    ControlRequest,
    ControlResult,
    UserMessage,
)
from api.auth import call_record
from api.deps import ActorDep, ClientDep, SettingsDep, TenantDep
from api.errors import problems
from api.launcher import run_handle
from api.routes.params import RunId, runs_router
from api.schemas import ApprovalBody, ControlBody, ControlResponse, MessageBody
from api.service import execute_control
from workflows.agent_run import AgentRunWorkflow

router = runs_router()

CONTROL_RESPONSES = problems(404, 409, 413, 422, 503, 504)


async def _control(
    client: Client,
    settings: Settings,
    tenant: str,
    run_id: str,
    update: Any,
    arg: Any,
    action: str,
) -> ControlResponse:
    """Send `update(arg)` to the run; `action` completes "cannot … a run that is …"."""
    handle = run_handle(client, tenant, run_id)
    result: ControlResult = await execute_control(
        handle, update, arg, settings.api_update_timeout_seconds, action
    )
    return ControlResponse(run_id=run_id, status=result.status, detail=result.detail)


def _add_control_route(action: ControlAction, update: Any, summary: str) -> None:
    """pause, resume and cancel differ only in the update they send (and cancel's
    `abort_in_flight`); each keeps its own path, summary and operation id."""

    async def control(
        run_id: RunId,
        client: ClientDep,
        settings: SettingsDep,
        tenant: TenantDep,
        actor: ActorDep,
        body: Annotated[ControlBody | None, Body()] = None,
    ) -> ControlResponse:
        body = body or ControlBody()
        abort = action == ControlAction.CANCEL and body.abort_in_flight
        req = ControlRequest(actor=actor, reason=body.reason, abort_in_flight=abort)
        return await _control(client, settings, tenant, run_id, update, req, action.value)

    router.post(
        f"/{{run_id}}/{action.value}",
        response_model=ControlResponse,
        summary=summary,
        responses=CONTROL_RESPONSES,
        name=f"{action.value}_run",
    )(control)


_add_control_route(
    ControlAction.PAUSE, AgentRunWorkflow.pause, "Pause a run (after its in-flight step)"
)
_add_control_route(ControlAction.RESUME, AgentRunWorkflow.resume, "Resume a paused run")
_add_control_route(ControlAction.CANCEL, AgentRunWorkflow.cancel, "Cancel a run")


@router.post(
    "/{run_id}/approvals/{approval_id}",
    response_model=ControlResponse,
    summary="Approve or deny a pending tool call",
    responses=CONTROL_RESPONSES,
)
async def decide_approval(
    run_id: RunId,
    approval_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_.\-]{1,200}$")],
    body: ApprovalBody,
    request: Request,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    actor: ActorDep,
) -> ControlResponse:
    """The decision must name the pending call's `arguments_digest`, so an approval
    can never apply to arguments the approver did not see."""
    decision = ApprovalDecision(
        approval_id=approval_id,
        arguments_digest=body.arguments_digest,
        actor=actor,
        reason=body.reason,
    )
    call_record(request).action = f"approval.{body.decision}"
    update = AgentRunWorkflow.approve if body.decision == "approve" else AgentRunWorkflow.deny
    return await _control(
        client, settings, tenant, run_id, update, decision, "decide on an approval of"
    )


@router.post(
    "/{run_id}/messages",
    response_model=ControlResponse,
    summary="Send a steering message (delivered with the next model call)",
    responses=CONTROL_RESPONSES,
)
async def send_message(
    run_id: RunId,
    body: MessageBody,
    client: ClientDep,
    settings: SettingsDep,
    tenant: TenantDep,
    actor: ActorDep,
) -> ControlResponse:
    msg = UserMessage(text=body.text, actor=actor)
    return await _control(
        client, settings, tenant, run_id, AgentRunWorkflow.send_message, msg, "send a message to"
    )
