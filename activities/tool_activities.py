"""Tool execution activities: every tool call runs in the run's sandbox container.

These activities are synchronous (the Docker SDK is) and run in the worker's
thread pool; each heartbeats from a background thread for as long as it works
(`activities.heartbeat`), so a worker that dies holding one is noticed within the
heartbeat timeout. `dispatch_tool` is exactly-once per call id because the sandbox's
`exec` is: a retry after a worker crash re-attaches to the recorded call.

What the model sees of a result is a bounded text view; output larger than the
run's `max_tool_output_bytes` is stored whole as an artifact and the view says
so. Tool output is hostile input: it is only ever data in a tool message.

Nothing leaves with a granted secret's value in it (`agentrun.redaction`): the view,
the result's fields, output stored as an artifact, collected files and errors are
redacted with the values of the run's `secrets`, resolved in the worker
(`activities.secret_values`) before the tool runs, so that a store that cannot
answer fails the call before anything is produced.

Every blob (tool arguments, the tool message, output stored whole, the workspace's
files, the transcript) is read and written through the run's tenant's view of the
store (the input's `tenant_id`; tenant prefixes: `store/artifacts.py`).

Each result carries the tool's wall time (`ToolResult.tool_seconds`, measured here
on the worker's monotonic clock, never in the workflow): the workflow adds it to the
run's usage as it stands in history, so a replay adds the same number.
"""

from __future__ import annotations

import json
import mimetypes
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime

from opentelemetry.trace import Span
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError

from activities.egress_broker import EgressBroker, EgressSecretError
from activities.heartbeat import beat, heartbeating_in_background
from activities.secret_values import SecretValues, redacted_errors
from activities.tools import (
    FinishArgs,
    HttpRequestArgs,
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
    LimitKind,
    Message,
    SandboxControlInput,
    StoreArtifactInput,
    StoreArtifactOutput,
    ToolResult,
)
from agentrun.redaction import Redactor
from sandbox.base import (
    CollectedFile,
    ExecOutcome,
    RunRef,
    Sandbox,
    SandboxError,
    SandboxPathError,
    SandboxWorkspaceFull,
)
from store.artifacts import TenantStores, get_bytes
from store.conversation import ConversationStore
from telemetry.metrics import record_tool_call
from telemetry.tracing import record_tool_result, tool_span

SUMMARY_CHARS = 500
FINAL_ANSWER_CHARS = 16_000
SPILL_MAX_BYTES = 64 << 20
TRANSCRIPT = "transcript.json"
"""Every run that reached the model leaves its conversation as this artifact."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _tool_seconds(elapsed: float, command_ms: int | None) -> float:
    """The call's wall time in this attempt (container start-up included), but never
    less than the command's own run time: a shell call re-attached after a worker
    crash ran mostly before this attempt began. Milliseconds are enough."""
    if command_ms is not None:
        elapsed = max(elapsed, command_ms / 1000)
    return round(max(elapsed, 0.0), 3)


def _traced(inp: DispatchToolInput) -> AbstractContextManager[Span]:
    """The call's `execute_tool <name>` span (`telemetry.tracing`), under the SDK's
    `RunActivity:dispatch_tool` span; queue wait = scheduled → started (a worker slot)."""
    info = activity.info()
    wait = (info.started_time - info.current_attempt_scheduled_time).total_seconds()
    return tool_span(
        tool=inp.call.name,
        call_id=inp.call.id,
        run=inp,
        step=inp.step,
        attempt=info.attempt,
        queue_wait_s=wait,
    )


def _record_span(span: Span, result: ToolResult, redactor: Redactor) -> None:
    limits = {kind.value for kind in LimitKind}
    error = str(result.error_type) if result.error_type is not None else None
    exec_s = result.duration_ms / 1000 if result.duration_ms is not None else None
    record_tool_result(
        span,
        ok=result.ok,
        exit_code=result.exit_code,
        limit_hit=error if error in limits else None,
        error_type=error,
        # Up to the command's start: claiming (or creating) the container, attaching.
        sandbox_claim_s=max(result.tool_seconds - exec_s, 0.0) if exec_s is not None else None,
        exec_s=exec_s,
        result=result.summary,  # already redacted; kept only with AGENTRUN_TRACE_CONTENT
        redactor=redactor,
    )


def _redacted(result: ToolResult, redactor: Redactor) -> ToolResult:
    """`result` with every granted value redacted from every field (the egress audit
    records, for one): a last pass over what leaves, after the view's own."""
    if not redactor:
        return result
    dumped = result.model_dump_json()
    if not redactor.found(dumped):
        return result
    return ToolResult.model_validate_json(redactor.redact(dumped))


def _translate(exc: SandboxError) -> ApplicationError:
    """Sandbox failures → Temporal retry posture (transient or permanent)."""
    return ApplicationError(
        f"{type(exc).__name__}: {exc}", type=type(exc).__name__, non_retryable=not exc.retryable
    )


class ToolActivities:
    def __init__(
        self,
        sandbox: Sandbox,
        store: TenantStores,
        keep_workspace_default: bool = False,
        egress: EgressBroker | None = None,
        secrets: SecretValues | None = None,
    ) -> None:
        self._sandbox = sandbox
        self._stores = store
        # Granted values, for redaction (the worker passes the one its broker uses too);
        # else the broker's, so what it injects is redacted; with neither, a run granted
        # secrets fails rather than run unredacted.
        self._secrets = secrets or SecretValues(egress.secret if egress is not None else None)
        # Without a broker of the worker's (no secret store, no operator allow-list),
        # rules still deny by default and refuse non-public destinations.
        self._egress = egress or EgressBroker()
        self._conversations = ConversationStore(store)
        self._keep_default = keep_workspace_default

    @activity.defn(name="dispatch_tool")
    def dispatch_tool(self, inp: DispatchToolInput) -> ToolResult:
        try:
            return self._dispatch_tool(inp)
        except CancelledError:
            if not activity.info().is_local:
                raise
            # A local first attempt out of its budget (`workflows.calls.start_tool_local`):
            # the SDK cancels it and a normal activity takes the call over, which is
            # expected, so it is not logged as a failure (a benign error is not).
            raise ApplicationError(
                "the local attempt's budget is spent: a normal activity takes the call over",
                type="HandedOver",
                category=ApplicationErrorCategory.BENIGN,
            ) from None

    def _dispatch_tool(self, inp: DispatchToolInput) -> ToolResult:
        # Heartbeats for the whole call, not only while the command runs: creating the
        # container (and pulling its image) can take long, and sends none by itself.
        with heartbeating_in_background():
            # Resolved before the tool runs: output that cannot be redacted is never made.
            redactor = self._redactor(inp.tenant_id, inp.secrets)
            with redacted_errors(redactor), _traced(inp) as span:
                result = self._dispatch(inp, redactor)
                _record_span(span, result, redactor)
                return result

    def _redactor(self, tenant: str, names: list[str]) -> Redactor:
        return self._secrets.redactor(tenant, names)

    def _dispatch(self, inp: DispatchToolInput, redactor: Redactor) -> ToolResult:
        attempt = activity.info().attempt
        call = inp.call
        run = RunRef(inp.tenant_id, inp.run_id)
        store = self._stores.for_tenant(inp.tenant_id)
        result = ToolResult(call_id=call.id, name=call.name, ok=False, attempt=attempt)
        view: str
        if inp.denied_reason is not None:
            result.error_type = ErrorKind.DENIED
            view = f"Tool call not executed: {inp.denied_reason}"
        else:
            raw = _text(get_bytes(store, call.arguments_digest))
            started: float | None = None
            try:
                args = parse_arguments(call.name, raw)
                if not isinstance(args, FinishArgs):  # `finish` executes nothing
                    started = time.monotonic()
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
            if started is not None:
                result.tool_seconds = _tool_seconds(time.monotonic() - started, result.duration_ms)
                outcome = "ok" if result.ok else str(result.error_type or "failed")
                record_tool_call(call.name, result.tool_seconds, outcome)
        # Redacted whole, then cut: a value cut in two would no longer be recognised.
        view = redactor.redact(view)
        if result.final_answer is not None:
            result.final_answer = redactor.redact(result.final_answer)[:FINAL_ANSWER_CHARS]
        result.summary = view[:SUMMARY_CHARS]
        message = Message(role="tool", tool_call_id=call.id, name=call.name, content=view)
        result.message_digest = self._conversations.put_message(inp.tenant_id, message)
        return _redacted(result, redactor)

    def _execute(
        self, run: RunRef, inp: DispatchToolInput, args: object, result: ToolResult
    ) -> str:
        limit = inp.max_output_bytes
        if isinstance(args, FinishArgs):
            result.ok = True
            result.final_answer = args.answer  # redacted, then cut, by `_dispatch`
            return "Finished."
        if isinstance(args, ShellArgs):
            timeout = min(args.timeout_seconds or inp.timeout_seconds, inp.timeout_seconds)
            # Egress and granted env values stay in this worker: the values go to the
            # executor over the attach stream, for this one command's process only.
            env = self._exec_env(inp, args)
            session = self._egress.session(inp) if inp.egress else None
            try:
                outcome = self._sandbox.exec(
                    run,
                    inp.call.id,
                    args.command,
                    policy=inp.sandbox,
                    timeout_s=timeout,
                    max_output_bytes=limit,
                    env=env or None,
                    heartbeat=beat,
                    egress=session.handle if session is not None else None,
                )
            finally:
                if session is not None:
                    result.egress = session.audits
            return self._shell_view(run, inp, outcome, result)
        if isinstance(args, HttpRequestArgs):
            return self._http_request(inp, args, result)
        if isinstance(args, ReadFileArgs):
            # Read past the cut by the longest value form, so that a value the cut
            # would split is replaced whole (`Redactor.redact_head`).
            redactor = self._redactor(inp.tenant_id, inp.secrets)
            extra = redactor.max_match_chars
            data = self._sandbox.read_file(
                run, args.path, policy=inp.sandbox, max_bytes=limit + 1 + extra
            )
            result.ok = True
            if len(data) > limit:
                head = redactor.redact_head(data, limit)
                return _text(head) + f"\n[truncated: file is larger than {limit} bytes]"
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

    def _exec_env(self, inp: DispatchToolInput, args: ShellArgs) -> dict[str, str]:
        """The granted secrets a shell call asked for, by variable name, resolved here."""
        env: dict[str, str] = {}
        for var in args.env_secrets:
            name = inp.exec_env.get(var)
            if name is None:
                granted = ", ".join(sorted(inp.exec_env)) or "none"
                raise ToolArgumentError(
                    f"env_secrets: {var!r} is not granted to this run (granted: {granted})"
                )
            try:
                env[var] = self._egress.secret(inp.tenant_id, name)
            except EgressSecretError as exc:
                raise ApplicationError(str(exc), type="SecretUnavailable") from None
        return env

    def _http_request(
        self, inp: DispatchToolInput, args: HttpRequestArgs, result: ToolResult
    ) -> str:
        """`http_request`: performed by the broker in the worker, same rules as the proxy."""
        session = self._egress.session(inp)
        body = args.body.encode() if args.body is not None else b""
        response = session.send(args.method, args.url, list(args.headers.items()), body)
        result.egress = session.audits
        allowed = bool(session.audits) and session.audits[-1].allowed
        result.ok = allowed and 200 <= response.status < 400
        if not allowed:
            result.error_type = ErrorKind.EGRESS_REFUSED
        limit = inp.max_output_bytes
        shown = {"content-type", "location", "content-length", "retry-after"}
        lines = [f"status: {response.status}"]
        lines += [f"{k}: {v}" for k, v in response.headers if k.lower() in shown]
        redactor = self._redactor(inp.tenant_id, inp.secrets)
        text = _text(redactor.redact_head(response.body, limit))
        if len(response.body) > limit:
            text += f"\n[truncated: the body is {len(response.body)} bytes, shown {limit}]"
        return "\n".join(lines) + "\n\n" + text

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
        stdout, stderr = outcome.stdout, outcome.stderr
        if truncated:
            full = self._sandbox.read_call_output(run, inp.call.id, "stdout", SPILL_MAX_BYTES)
            err = self._sandbox.read_call_output(run, inp.call.id, "stderr", SPILL_MAX_BYTES)
            redactor = self._redactor(inp.tenant_id, inp.secrets)
            # The heads the model sees are cut from the whole streams: a value the
            # executor's cut split in two would no longer be recognised in the head.
            stdout = redactor.redact_head(full, len(stdout)) if full else stdout
            stderr = redactor.redact_head(err, len(stderr)) if err else stderr
            body = redactor.redact_bytes(full + (b"\n--- stderr ---\n" + err if err else b""))
            digest = self._stores.for_tenant(inp.tenant_id).put(body)
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
        parts.append("stdout:\n" + _text(stdout))
        if stderr:
            parts.append("stderr:\n" + _text(stderr))
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
                elif inp.action == "stop":
                    self._sandbox.stop(run)
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
        # Every file leaves redacted: a tool may have written a granted value anywhere.
        redactor = self._redactor(inp.tenant_id, inp.secrets)
        with redacted_errors(redactor):
            return self._collect(inp, redactor)

    def _collect(self, inp: StoreArtifactInput, redactor: Redactor) -> StoreArtifactOutput:
        run = RunRef(inp.tenant_id, inp.run_id)
        files: list[CollectedFile] = []
        if inp.collect_workspace:
            try:
                files = self._sandbox.collect(run, inp.paths)
            except SandboxError as exc:
                raise _translate(exc) from None
        if inp.conversation_head is not None:
            conversation = self._conversations.load(inp.tenant_id, inp.conversation_head)
            transcript = json.dumps(
                [m.model_dump(mode="json", exclude_none=True) for m in conversation],
                indent=1,
                ensure_ascii=False,
            )
            files.append(CollectedFile(TRANSCRIPT, transcript.encode()))
        out = StoreArtifactOutput()
        now = datetime.now(UTC)
        store = self._stores.for_tenant(inp.tenant_id)
        for f in files:
            data, path = redactor.redact_bytes(f.data), redactor.redact(f.path)
            digest = store.put(data)
            ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
            out.artifacts.append(
                ArtifactRef(
                    digest=digest, name=path, size=len(data), content_type=ctype, created_at=now
                )
            )
        return out
