"""What each `agentrun` command does (the parser in `cli.main` picks one).

A client command takes the API client, the parsed flags and the stream to write
to, and returns its exit code; it raises `CliError` for anything the user must
hear about. `api` and `worker` serve instead of calling the API.

Design (why it looks like this): `approve` and `deny` act on someone else's
run, so they show the call and ask first, as `gh` does (`--yes` skips the
question; without a terminal to ask on and without `--yes` they refuse rather
than hang or guess). `logs` of an ended run whose event log no worker can read
(a 503: the log lives in the workflow, and only a worker replays it) prints the
outcome Temporal recorded instead, as `show` does, and says why.

This module must not: talk to Temporal (the client commands go through the
REST API, so they work from anywhere the API is reachable), or parse argv.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from agentrun.contracts import RunStatus
from cli.api_client import ApiClient
from cli.errors import EXIT_OK, EXIT_USAGE, ApiRefused, CliError
from cli.event_format import format_event, print_json, printable, tokens
from cli.follow import follow
from cli.spec_builder import build_spec


def cmd_run(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    # 202: the tenant runs its maximum of concurrent runs and queues launches.
    created = api.request(
        "POST", "/v1/runs", json=build_spec(args), headers=headers, ok=(200, 201, 202)
    )
    if args.json and not args.follow:
        print_json(created, out)
    else:
        out.write(created["run_id"] + "\n")
        out.flush()
        if created.get("queued"):
            print("queued: it starts when a run of this tenant ends", file=sys.stderr)
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
        print_json(page, out)
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
        print_json(run, out)
        return EXIT_OK
    usage = run.get("usage") or {}
    estimated = bool(usage.get("estimated"))
    lines = [
        f"run:        {run['run_id']}",
        f"status:     {run['status']}" + (f" ({run['reason']})" if run.get("reason") else ""),
        f"goal:       {run.get('goal') or ''}",
        f"agent:      {run.get('agent')}   model: {run.get('model')}",
        f"steps:      {run.get('steps', 0)}   tokens: "
        f"{tokens(usage.get('input_tokens', 0), estimated)} in, "
        f"{tokens(usage.get('output_tokens', 0), estimated)} out"
        + (" (estimated)" if estimated else ""),
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


TERMINAL = {status.value for status in RunStatus if status.terminal}
NO_WORKER = 503
"""What `GET …/events` answers when no worker answered the events query in time."""


def cmd_logs(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.follow:
        # The stream of an ended run no worker can replay would wait for one forever:
        # ask first (the run view says whether a worker answered, in `source`).
        run = api.request("GET", f"/v1/runs/{args.run}")
        if run["status"] in TERMINAL and run.get("source") != "query":
            return _recorded_outcome(run, out, args.json)
        return follow(api, args.run, args.after, out, args.json)
    after = args.after
    while True:
        try:
            page = api.request("GET", f"/v1/runs/{args.run}/events", params={"after": after})
        except ApiRefused as exc:
            if exc.status != NO_WORKER:
                raise
            run = api.request("GET", f"/v1/runs/{args.run}")
            if run["status"] not in TERMINAL:
                raise  # a live run: the 503 already says to start a worker
            return _recorded_outcome(run, out, args.json)
        for event in page["events"]:
            line = json.dumps(event, sort_keys=True) if args.json else format_event(event, args.run)
            out.write(line + "\n")
        if page["next_after"] == after:
            return EXIT_OK
        after = page["next_after"]


def _recorded_outcome(run: dict[str, Any], out: TextIO, as_json: bool) -> int:
    """An ended run's outcome as Temporal recorded it, for when its events are unreadable."""
    print(
        f"agentrun: the events of {run['run_id']} cannot be read now: reading a run's "
        "event log needs an agentrun worker polling its task queue; its recorded outcome:",
        file=sys.stderr,
    )
    if as_json:
        out.write(json.dumps(run, sort_keys=True) + "\n")
        return EXIT_OK
    reason = f" ({run['reason']})" if run.get("reason") else ""
    lines = [f"status:     {run['status']}{reason}", f"steps:      {run.get('steps', 0)}"]
    if run.get("final_answer"):
        lines.append(f"answer:     {run['final_answer']}")
    if run.get("error"):
        lines.append(f"error:      {run['error']}")
    if run.get("finished_at"):
        lines.append(f"finished:   {run['finished_at']}")
    out.write(printable("\n".join(lines)) + "\n")
    return EXIT_OK


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
    if not args.yes and not _is_terminal(args.stdin):
        raise CliError(
            f"refusing to {args.command} without a confirmation, and stdin is not a "
            f"terminal to ask on: pass --yes to {args.command} without one",
            EXIT_USAGE,
        )
    run = api.request("GET", f"/v1/runs/{args.run}")
    pending = run.get("pending_approval")
    if not approval_id or not digest:
        if not pending:
            raise CliError(f"run {args.run} has no pending approval (status: {run['status']})")
        if approval_id and approval_id != pending["approval_id"]:
            raise CliError(f"approval {approval_id} is not pending ({pending['approval_id']} is)")
        approval_id = pending["approval_id"]
        digest = digest or pending["call"]["arguments_digest"]
    call = pending["call"] if pending and pending["approval_id"] == approval_id else None
    if call is not None and call["arguments_digest"] == digest:
        out.write(printable(f"{args.command} {call['name']} {call.get('preview', '')}") + "\n")
    else:  # not the pending call (the API will say so): show what was named
        out.write(f"{args.command} {approval_id} with arguments digest {digest}\n")
    if not args.yes and not _confirm(f"{args.command.capitalize()} this call?", args.stdin, out):
        out.write(f"{args.run}: nothing done\n")
        return EXIT_OK
    body = {"decision": args.command, "arguments_digest": digest}
    if args.reason:
        body["reason"] = args.reason
    result = api.request("POST", f"/v1/runs/{args.run}/approvals/{approval_id}", json=body)
    out.write(f"{args.run}: {result['detail'] or args.command} ({result['status']})\n")
    return EXIT_OK


def _confirm(question: str, stdin: TextIO, out: TextIO) -> bool:
    out.write(f"{question} [y/N] ")
    out.flush()
    answer = stdin.readline()
    if not answer.endswith("\n"):
        out.write("\n")  # end of input: the answer is no
    return answer.strip().lower() in ("y", "yes")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a file-like stream
        return False


def cmd_message(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    result = api.request("POST", f"/v1/runs/{args.run}/messages", json={"text": args.text})
    out.write(f"{args.run}: {result['detail']} ({result['status']})\n")
    return EXIT_OK


# `api.app` with uvicorn (~1 s to import: FastAPI, the Temporal client, the
# workflows) and `worker` (~0.7 s) are imported only by the command that serves
# them, and so are the settings (~40 ms, pydantic-settings), which only `api`
# reads: every client command would otherwise pay that at start-up, against
# ~0.3 s for the whole client side of the CLI.


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from agentrun.config import ConfigError, load_settings
    from api.app import create_app
    from api.server import uvicorn_config

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    config = uvicorn_config(
        create_app(settings),
        settings,
        host=args.host,
        port=args.port or None,
        log_level=args.log_level,
    )
    uvicorn.Server(config).run()
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> int:
    import worker

    return worker.main()
