"""`agentrun`: the command line client of the REST API (plus `api` and `worker`).

    agentrun run --goal "Write hello.txt and finish" --follow
    agentrun run spec.yaml --label team=docs
    agentrun ls --status running
    agentrun show <run>
    agentrun logs -f <run>
    agentrun pause|resume|cancel <run> [--reason ...]
    agentrun approve|deny <run> [<approval-id> --digest <sha256>]
    agentrun message <run> "Also add a README"
    agentrun api        # serve the REST API (uvicorn)
    agentrun worker     # run a Temporal worker

Every client command talks HTTP to `AGENTRUN_API_URL` (default
http://127.0.0.1:8080); it never talks to Temporal directly. Exit codes: 0 on
success (for `--follow`: the run completed), 1 when the API refused the request
or is unreachable, 2 for usage errors, 3 when a followed run failed or was
cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from agentrun.sse_wire import SseDecoder, SseMessage

DEFAULT_API_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_API, EXIT_USAGE, EXIT_RUN_FAILED = 0, 1, 2, 3
DELTA_EVENT = "model.delta"
TOOLS = ["shell", "read_file", "write_file", "list_files", "finish"]


class CliError(Exception):
    """A message for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_API) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------- HTTP


class ApiClient:
    def __init__(self, base_url: str, actor: str | None, timeout: float = 30.0) -> None:
        headers = {"X-Agentrun-Actor": actor} if actor else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: Sequence[int] = (200, 201),
        **kw: Any,
    ) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the agentrun API at {self.base_url} ({type(exc).__name__}); "
                "is `agentrun api` running? (set AGENTRUN_API_URL to point elsewhere)"
            ) from None
        if resp.status_code not in ok:
            raise CliError(_problem_text(resp))
        return resp.json()

    def stream_events(self, run_id: str, after: int) -> Iterator[dict[str, Any]]:
        """Follow the SSE stream, reconnecting with `Last-Event-ID` if it drops.

        Yields durable events, and token deltas as ``{"type": "model.delta", ...}``.
        """
        cursor = str(after)
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/runs/{run_id}/events/stream",
                    headers={"Accept": "text/event-stream", "Last-Event-ID": cursor},
                    timeout=httpx.Timeout(30.0, read=None),
                ) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        raise CliError(_problem_text(resp))
                    failures = 0
                    for sse in _sse_messages(resp.iter_lines()):
                        if sse.event == "end":
                            return
                        message = json.loads(sse.data)
                        if sse.event == DELTA_EVENT:
                            message = {"type": DELTA_EVENT, **message}
                        if sse.id is not None:
                            cursor = sse.id
                        yield message
            except (httpx.TransportError, httpx.RemoteProtocolError):
                failures += 1
                if failures > 5:
                    raise CliError(f"lost the event stream of {run_id}; retry later") from None
                time.sleep(min(2.0, 0.2 * 2**failures))


def _sse_messages(lines: Iterator[str]) -> Iterator[SseMessage]:
    decoder = SseDecoder()
    for line in lines:
        if (message := decoder.line(line)) is not None:
            yield message


def _problem_text(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code}: {resp.text[:300]}"
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("title") or ""
        text = f"HTTP {resp.status_code} {body.get('title', '')}: {detail}"
        if body.get("run_status"):
            text += f" (run status: {body['run_status']})"
        return text
    return f"HTTP {resp.status_code}: {body}"


# ------------------------------------------------------------------- output


def format_event(event: dict[str, Any]) -> str:
    """One line per event: `#seq  HH:MM:SS  type  summary`."""
    payload = event.get("payload") or {}
    kind = event.get("type", "?")
    at = str(event.get("at", ""))[11:19]
    summary = ""
    if kind == "run.started":
        summary = f"goal: {payload.get('goal', '')}"
    elif kind == "model.called":
        tools = ", ".join(payload.get("tool_calls") or []) or "-"
        summary = (
            f"step {payload.get('step')} · {payload.get('input_tokens')}→"
            f"{payload.get('output_tokens')} tokens · tools: {tools}"
        )
        if payload.get("text"):
            summary += f" · {payload['text']}"
    elif kind == "tool.called":
        summary = f"{payload.get('tool')} {payload.get('arguments', '')}"
    elif kind == "tool.result":
        mark = "ok" if payload.get("ok") else f"failed ({payload.get('error_type', 'error')})"
        summary = f"{payload.get('tool')} {mark}: {payload.get('summary', '')}"
    elif kind == "approval.requested":
        summary = (
            f"{payload.get('tool')} needs approval: {payload.get('arguments', '')}\n"
            f"      approve: agentrun approve <run> {payload.get('approval_id')} "
            f"--digest {payload.get('arguments_digest')}"
        )
    elif kind == "approval.resolved":
        verdict = "approved" if payload.get("approved") else "denied"
        summary = f"{payload.get('approval_id')} {verdict} by {payload.get('actor')}"
    elif kind == "run.finished":
        summary = f"{payload.get('status')} ({payload.get('reason')})"
        if payload.get("final_answer"):
            summary += f": {payload['final_answer']}"
        if payload.get("error"):
            summary += f": {payload['error']}"
    else:
        summary = ", ".join(f"{k}={v}" for k, v in payload.items() if v is not None)
    return printable(f"#{event.get('seq', '?'):<4} {at}  {kind:<22} {summary}".rstrip())


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")


def printable(text: str) -> str:
    """Model and tool output is hostile: no escape sequences reach the terminal."""
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------- commands


def _parse_labels(items: Sequence[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--label {item!r}: expected key=value", EXIT_USAGE)
        labels[key] = value
    return labels


def _load_spec_file(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else _read(path)
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped, unused-ignore]
        except ImportError:
            raise CliError("YAML specs need PyYAML: pip install pyyaml", EXIT_USAGE) from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CliError(f"{path}: not valid JSON ({exc})", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: a run spec must be a JSON/YAML object", EXIT_USAGE)
    return data


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", EXIT_USAGE) from None


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = _load_spec_file(args.spec) if args.spec else {}
    if args.goal:
        spec["goal"] = args.goal
    if not spec.get("goal"):
        raise CliError("a run needs a goal: pass --goal or a spec file with `goal`", EXIT_USAGE)
    if args.agent:
        spec["agent"] = args.agent
    if args.instructions:
        spec["instructions"] = args.instructions
    if args.tool:
        spec["tools"] = args.tool
    if args.max_steps:
        spec.setdefault("limits", {})["max_steps"] = args.max_steps
    if args.provider or args.model:
        model = spec.setdefault("model", {})
        if args.provider:
            model["provider"] = args.provider
        if args.model:
            model["name"] = args.model
    if args.label:
        spec["labels"] = {**spec.get("labels", {}), **_parse_labels(args.label)}
    return spec


class _LiveLine:
    """Prints a model call's token deltas as they arrive, on one indented line."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._attempt: int | None = None

    def delta(self, delta: dict[str, Any]) -> None:
        attempt = delta.get("attempt")
        if self._attempt is None:
            self._out.write("      ▸ ")
        elif attempt != self._attempt:
            self._out.write(f"\n      ▸ (attempt {attempt}, the previous one failed) ")
        self._attempt = attempt
        self._out.write(printable(str(delta.get("text", ""))))

    def end(self) -> None:
        if self._attempt is not None:
            self._out.write("\n")
            self._attempt = None


def follow(api: ApiClient, run_id: str, after: int, out: TextIO, as_json: bool) -> int:
    status = None
    live = _LiveLine(out)
    for event in api.stream_events(run_id, after):
        if as_json:
            out.write(json.dumps(event, sort_keys=True) + "\n")
        elif event.get("type") == DELTA_EVENT:
            live.delta(event)
        else:
            live.end()
            out.write(format_event(event) + "\n")
        out.flush()
        if event.get("type") == "run.finished":
            status = (event.get("payload") or {}).get("status")
    live.end()
    if status is None:
        status = api.request("GET", f"/v1/runs/{run_id}")["status"]
    return EXIT_OK if status == "completed" else EXIT_RUN_FAILED


def cmd_run(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    created = api.request("POST", "/v1/runs", json=build_spec(args), headers=headers)
    if args.json and not args.follow:
        _print_json(created, out)
    else:
        out.write(created["run_id"] + "\n")
        out.flush()
    if args.follow:
        return follow(api, created["run_id"], 0, out, args.json)
    return EXIT_OK


def cmd_ls(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    params: list[tuple[str, str | int]] = [("limit", args.limit)]
    params += [("status", s) for s in args.status or []]
    params += [("label", item) for item in args.label or []]
    if args.agent:
        params.append(("agent", args.agent))
    if args.cursor:
        params.append(("cursor", args.cursor))
    page = api.request("GET", "/v1/runs", params=params)
    if args.json:
        _print_json(page, out)
        return EXIT_OK
    out.write(f"{'RUN':<34} {'STATUS':<18} {'STEPS':>5}  {'CREATED':<19}  GOAL\n")
    for run in page["runs"]:
        goal = (run.get("goal") or "").replace("\n", " ")[:60]
        created = str(run.get("created_at", ""))[:19].replace("T", " ")
        out.write(
            f"{run['run_id']:<34} {run['status']:<18} {run.get('steps', 0):>5}  "
            f"{created:<19}  {goal}\n"
        )
    if page.get("next_cursor"):
        out.write(f"(more: agentrun ls --cursor {page['next_cursor']})\n")
    return EXIT_OK


def cmd_show(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    run = api.request("GET", f"/v1/runs/{args.run}")
    if args.json:
        _print_json(run, out)
        return EXIT_OK
    usage = run.get("usage") or {}
    lines = [
        f"run:        {run['run_id']}",
        f"status:     {run['status']}" + (f" ({run['reason']})" if run.get("reason") else ""),
        f"goal:       {run.get('goal') or ''}",
        f"agent:      {run.get('agent')}   model: {run.get('model')}",
        f"steps:      {run.get('steps', 0)}   tokens: {usage.get('input_tokens', 0)} in, "
        f"{usage.get('output_tokens', 0)} out",
        f"created:    {run.get('created_at')} by {run.get('created_by')}",
    ]
    if run.get("labels"):
        lines.append("labels:     " + ", ".join(f"{k}={v}" for k, v in run["labels"].items()))
    if run.get("finished_at"):
        lines.append(f"finished:   {run['finished_at']}")
    pending = run.get("pending_approval")
    if pending:
        call = pending["call"]
        lines.append(
            f"approval:   {pending['approval_id']} for {call['name']} {call.get('preview', '')}\n"
            f"            agentrun approve {run['run_id']}   (or deny)"
        )
    if run.get("final_answer"):
        lines.append(f"answer:     {run['final_answer']}")
    if run.get("error"):
        lines.append(f"error:      {run['error']}")
    for art in run.get("artifacts") or []:
        lines.append(f"artifact:   {art['name']} ({art['size']} bytes) {art['digest']}")
    out.write("\n".join(lines) + "\n")
    return EXIT_OK


def cmd_logs(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.follow:
        return follow(api, args.run, args.after, out, args.json)
    after = args.after
    while True:
        page = api.request("GET", f"/v1/runs/{args.run}/events", params={"after": after})
        for event in page["events"]:
            out.write(
                (json.dumps(event, sort_keys=True) if args.json else format_event(event)) + "\n"
            )
        if page["next_after"] == after:
            return EXIT_OK
        after = page["next_after"]


def cmd_control(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    body: dict[str, Any] = {}
    if args.reason:
        body["reason"] = args.reason
    if getattr(args, "abort", False):
        body["abort_in_flight"] = True
    result = api.request("POST", f"/v1/runs/{args.run}/{args.command}", json=body)
    out.write(
        f"{args.run}: {result['status']}"
        + (f" ({result['detail']})" if result.get("detail") else "")
        + "\n"
    )
    return EXIT_OK


def cmd_decide(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    approval_id, digest = args.approval_id, args.digest
    if not approval_id or not digest:
        run = api.request("GET", f"/v1/runs/{args.run}")
        pending = run.get("pending_approval")
        if not pending:
            raise CliError(f"run {args.run} has no pending approval (status: {run['status']})")
        if approval_id and approval_id != pending["approval_id"]:
            raise CliError(f"approval {approval_id} is not pending ({pending['approval_id']} is)")
        approval_id = pending["approval_id"]
        digest = digest or pending["call"]["arguments_digest"]
        out.write(
            f"{args.command} {pending['call']['name']} {pending['call'].get('preview', '')}\n"
        )
    body = {"decision": args.command, "arguments_digest": digest}
    if args.reason:
        body["reason"] = args.reason
    result = api.request("POST", f"/v1/runs/{args.run}/approvals/{approval_id}", json=body)
    out.write(f"{args.run}: {result['detail'] or args.command} ({result['status']})\n")
    return EXIT_OK


def cmd_message(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    result = api.request("POST", f"/v1/runs/{args.run}/messages", json={"text": args.text})
    out.write(f"{args.run}: {result['detail']} ({result['status']})\n")
    return EXIT_OK


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from agentrun.config import ConfigError, load_settings
    from api.app import create_app

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=args.log_level,
    )
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    import worker

    return worker.main()


# ------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrun", description="Launch, follow and control durable agent runs."
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("AGENTRUN_API_URL", DEFAULT_API_URL),
        help="the REST API (env AGENTRUN_API_URL; default %(default)s)",
    )
    parser.add_argument(
        "--actor",
        default=os.environ.get("AGENTRUN_ACTOR") or os.environ.get("USER"),
        help="who you are, for the audit trail (env AGENTRUN_ACTOR, else $USER)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="launch a run (prints its id)")
    run.add_argument("spec", nargs="?", help="a RunSpec as a JSON or YAML file (`-`: stdin)")
    run.add_argument("--goal", help="the goal (overrides the file's)")
    run.add_argument("--agent")
    run.add_argument("--instructions")
    run.add_argument("--tool", action="append", choices=TOOLS, help="repeatable")
    run.add_argument("--max-steps", type=int)
    run.add_argument("--provider", choices=["default", "openai", "anthropic", "scripted"])
    run.add_argument("--model", help="model name for the provider")
    run.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    run.add_argument("--idempotency-key", help="retry-safe launch: same key, same run")
    run.add_argument("-f", "--follow", action="store_true", help="stream events until it ends")
    run.add_argument("--json", action="store_true")

    ls = sub.add_parser("ls", help="list runs")
    ls.add_argument("--status", action="append", help="repeatable")
    ls.add_argument("--agent")
    ls.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--cursor")
    ls.add_argument("--json", action="store_true")

    show = sub.add_parser("show", help="show a run")
    show.add_argument("run")
    show.add_argument("--json", action="store_true")

    logs = sub.add_parser("logs", help="print a run's events")
    logs.add_argument("run")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until the run ends")
    logs.add_argument("--after", type=int, default=0, help="start after this seq")
    logs.add_argument("--json", action="store_true", help="one JSON event per line")

    for name, text in (("pause", "pause a run"), ("resume", "resume"), ("cancel", "cancel")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run")
        p.add_argument("--reason")
        if name == "cancel":
            p.add_argument("--abort", action="store_true", help="abort the in-flight step")

    for name in ("approve", "deny"):
        p = sub.add_parser(name, help=f"{name} the pending tool call")
        p.add_argument("run")
        p.add_argument("approval_id", nargs="?", help="default: the pending one")
        p.add_argument("--digest", help="the call's arguments_digest (default: the pending one)")
        p.add_argument("--reason")

    msg = sub.add_parser("message", help="send a steering message to a run")
    msg.add_argument("run")
    msg.add_argument("text")

    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--log-level", default="info")

    sub.add_parser("worker", help="run a Temporal worker (AGENTRUN_* settings)")
    return parser


COMMANDS = {
    "run": cmd_run,
    "ls": cmd_ls,
    "show": cmd_show,
    "logs": cmd_logs,
    "pause": cmd_control,
    "resume": cmd_control,
    "cancel": cmd_control,
    "approve": cmd_decide,
    "deny": cmd_decide,
    "message": cmd_message,
}


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    try:
        if args.command == "api":
            return cmd_api(args)
        if args.command == "worker":
            return cmd_worker(args)
        api = ApiClient(args.api_url, args.actor)
        try:
            return COMMANDS[args.command](api, args, out)
        finally:
            api.close()
    except CliError as exc:
        print(f"agentrun: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
