"""Tool execution activities: every tool call runs in the run's sandbox container.

These activities are synchronous (the Docker SDK is) and run in the worker's
thread pool; each heartbeats from a background thread for as long as it works
(`activities.heartbeat`), so a worker that dies holding one is noticed within the
heartbeat timeout. `dispatch_tool` is exactly-once per call id because the sandbox's
`exec` is: a retry after a worker crash re-attaches to the recorded call.

What the model sees of a result is a bounded text view; output larger than the
run's `max_tool_output_bytes` is stored whole as an artifact and the view says
so. Tool output is hostile input: it is only ever data in a tool message.
"""

from __future__ import annotations

import json
import mimetypes
from datetime import UTC, datetime

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating_in_background
from activities.tools import (
    FinishArgs,
    ListFilesArgs,
    ReadFileArgs,
    ShellArgs,
    ToolArgumentError,
    UnknownTool,
    WriteFileArgs,
    parse_arguments,
)
from agentrun.contracts import (
    ArtifactRef,
    DispatchToolInput,
    ErrorKind,
    Message,
    SandboxControlInput,
    StoreArtifactInput,
    StoreArtifactOutput,
    ToolResult,
)
from sandbox.base import (
    CollectedFile,
    ExecOutcome,
    RunRef,
    Sandbox,
    SandboxError,
    SandboxPathError,
    SandboxWorkspaceFull,
)
from store.artifacts import ArtifactStore, get_bytes
from store.conversation import ConversationStore

SUMMARY_CHARS = 500
FINAL_ANSWER_CHARS = 16_000
SPILL_MAX_BYTES = 64 << 20
TRANSCRIPT = "transcript.json"
"""Every run that reached the model leaves its conversation as this artifact."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _translate(exc: SandboxError) -> ApplicationError:
    """Sandbox failures → Temporal retry posture (transient or permanent)."""
    return ApplicationError(
        f"{type(exc).__name__}: {exc}", type=type(exc).__name__, non_retryable=not exc.retryable
    )


class ToolActivities:
    def __init__(
        self, sandbox: Sandbox, store: ArtifactStore, keep_workspace_default: bool = False
    ) -> None:
        self._sandbox = sandbox
        self._store = store
        self._conversations = ConversationStore(store)
        self._keep_default = keep_workspace_default

    @activity.defn(name="dispatch_tool")
    def dispatch_tool(self, inp: DispatchToolInput) -> ToolResult:
        # Heartbeats for the whole call, not only while the command runs: creating the
        # container (and pulling its image) can take long, and sends none by itself.
        with heartbeating_in_background():
            return self._dispatch(inp)

    def _dispatch(self, inp: DispatchToolInput) -> ToolResult:
        attempt = activity.info().attempt
        call = inp.call
        run = RunRef(inp.tenant_id, inp.run_id)
        result = ToolResult(call_id=call.id, name=call.name, ok=False, attempt=attempt)
        view: str
        if inp.denied_reason is not None:
            result.error_type = ErrorKind.DENIED
            view = f"Tool call not executed: {inp.denied_reason}"
        else:
            raw = _text(get_bytes(self._store, call.arguments_digest))
            try:
                args = parse_arguments(call.name, raw)
                view = self._execute(run, inp, args, result)
            except UnknownTool as exc:
                result.error_type = ErrorKind.UNKNOWN_TOOL
                view = f"Error: {exc}"
            except ToolArgumentError as exc:
                result.error_type = ErrorKind.BAD_ARGUMENTS
                view = f"Error: {exc}"
            except SandboxPathError as exc:
                result.error_type = ErrorKind.BAD_PATH
                view = f"Error: {exc}"
            except SandboxWorkspaceFull as exc:
                # The model asked for more than the workspace holds: its problem to solve
                # (delete files, write less), not a reason to fail the run.
                result.error_type = ErrorKind.DISK
                view = f"Error: {exc}"
            except SandboxError as exc:
                raise _translate(exc) from None
        result.summary = view[:SUMMARY_CHARS]
        message = Message(role="tool", tool_call_id=call.id, name=call.name, content=view)
        result.message_digest = self._conversations.put_message(message)
        return result

    def _execute(
        self, run: RunRef, inp: DispatchToolInput, args: object, result: ToolResult
    ) -> str:
        limit = inp.max_output_bytes
        if isinstance(args, FinishArgs):
            result.ok = True
            result.final_answer = args.answer[:FINAL_ANSWER_CHARS]
            return "Finished."
        if isinstance(args, ShellArgs):
            timeout = min(args.timeout_seconds or inp.timeout_seconds, inp.timeout_seconds)
            outcome = self._sandbox.exec(
                run,
                inp.call.id,
                args.command,
                policy=inp.sandbox,
                timeout_s=timeout,
                max_output_bytes=limit,
                heartbeat=activity.heartbeat,
            )
            return self._shell_view(run, inp, outcome, result)
        if isinstance(args, ReadFileArgs):
            data = self._sandbox.read_file(run, args.path, policy=inp.sandbox, max_bytes=limit + 1)
            result.ok = True
            if len(data) > limit:
                return _text(data[:limit]) + f"\n[truncated: file is larger than {limit} bytes]"
            return _text(data)
        if isinstance(args, WriteFileArgs):
            data = args.content.encode()
            self._sandbox.write_file(run, args.path, data, policy=inp.sandbox)
            result.ok = True
            return f"Wrote {len(data)} bytes to {args.path}."
        if isinstance(args, ListFilesArgs):
            entries = self._sandbox.list_files(run, args.path, policy=inp.sandbox)
            result.ok = True
            lines = [f"{e.path}{'/' if e.is_dir else ''}\t{e.size}" for e in entries]
            return "\n".join(lines) or "(empty)"
        raise ToolArgumentError(f"tool {inp.call.name!r} is not executable")

    def _shell_view(
        self, run: RunRef, inp: DispatchToolInput, outcome: ExecOutcome, result: ToolResult
    ) -> str:
        result.exit_code = outcome.exit_code
        result.duration_ms = outcome.duration_ms
        result.ok = outcome.exit_code == 0 and outcome.limit is None
        if outcome.limit is not None:
            # A limit's name is also an error kind (`LimitKind` values are `ErrorKind`
            # values); by value, so a plain-string limit converts as well.
            result.error_type = ErrorKind(outcome.limit)
        parts = [f"exit_code: {outcome.exit_code}"]
        if outcome.limit is not None:
            parts.append(f"stopped: the {outcome.limit} limit was reached")
        truncated = outcome.stdout_total > len(outcome.stdout) or outcome.stderr_total > len(
            outcome.stderr
        )
        if truncated:
            full = self._sandbox.read_call_output(run, inp.call.id, "stdout", SPILL_MAX_BYTES)
            err = self._sandbox.read_call_output(run, inp.call.id, "stderr", SPILL_MAX_BYTES)
            body = full + (b"\n--- stderr ---\n" + err if err else b"")
            digest = self._store.put(body)
            result.output_artifact = ArtifactRef(
                digest=digest,
                name=f"{inp.call.id}.output.txt",
                size=len(body),
                content_type="text/plain",
                created_at=datetime.now(UTC),
            )
            parts.append(
                f"[output truncated: stdout {outcome.stdout_total} bytes, stderr "
                f"{outcome.stderr_total} bytes; the full output is stored as artifact {digest}]"
            )
        parts.append("stdout:\n" + _text(outcome.stdout))
        if outcome.stderr:
            parts.append("stderr:\n" + _text(outcome.stderr))
        return "\n".join(parts)

    @activity.defn(name="sandbox_control")
    def sandbox_control(self, inp: SandboxControlInput) -> None:
        """Pause, resume or remove the run's container; Docker can be slow, so it heartbeats."""
        run = RunRef(inp.tenant_id, inp.run_id)
        try:
            with heartbeating_in_background():
                if inp.action == "pause":
                    self._sandbox.pause(run)
                elif inp.action == "resume":
                    self._sandbox.resume(run)
                else:
                    keep = self._keep_default if inp.keep_workspace is None else inp.keep_workspace
                    self._sandbox.destroy(run, keep_workspace=keep)
        except SandboxError as exc:
            raise _translate(exc) from None

    @activity.defn(name="store_artifact")
    def store_artifact(self, inp: StoreArtifactInput) -> StoreArtifactOutput:
        """Collect the workspace's files into the artifact store, heartbeating throughout."""
        with heartbeating_in_background():
            return self._store_artifact(inp)

    def _store_artifact(self, inp: StoreArtifactInput) -> StoreArtifactOutput:
        run = RunRef(inp.tenant_id, inp.run_id)
        files: list[CollectedFile] = []
        if inp.collect_workspace:
            try:
                files = self._sandbox.collect(run, inp.paths)
            except SandboxError as exc:
                raise _translate(exc) from None
        if inp.conversation_head is not None:
            conversation = self._conversations.load(inp.conversation_head)
            transcript = json.dumps(
                [m.model_dump(mode="json", exclude_none=True) for m in conversation],
                indent=1,
                ensure_ascii=False,
            )
            files.append(CollectedFile(TRANSCRIPT, transcript.encode()))
        out = StoreArtifactOutput()
        now = datetime.now(UTC)
        for f in files:
            digest = self._store.put(f.data)
            ctype = mimetypes.guess_type(f.path)[0] or "application/octet-stream"
            out.artifacts.append(
                ArtifactRef(
                    digest=digest, name=f.path, size=len(f.data), content_type=ctype, created_at=now
                )
            )
        return out
