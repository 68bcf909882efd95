"""`agentrun`: the command line client of the REST API (plus `api` and `worker`).

    agentrun --version
    agentrun run --goal "Write hello.txt and finish" --follow
    agentrun run examples/approval.json --approve-tools shell,write_file --follow
    agentrun run spec.yaml --label team=docs --memory-mb 512 --temperature 0
    agentrun ls --status running
    agentrun show <run>
    agentrun logs -f <run>
    agentrun pause|resume|cancel <run> [--reason ...]
    agentrun approve|deny <run> [<approval-id> --digest <sha256>] [--yes]
    agentrun message <run> "Also add a README"
    agentrun tenants create|ls|quota …, keys create|ls|revoke …   # admin
    agentrun audit [verify], agentrun usage
    agentrun secrets put NAME [--from-file F] | ls | delete NAME   # value via stdin
    agentrun api        # serve the REST API (uvicorn)
    agentrun worker     # run a Temporal worker

Every client command talks HTTP to `AGENTRUN_API_URL` (default
http://127.0.0.1:8080) with an API key (`--api-key`, `AGENTRUN_API_KEY`,
`AGENTRUN_API_KEY_FILE`, else the dev stack's `.state/admin.key`; see
`cli.credentials`); it never talks to Temporal directly. Exit codes: 0 on
success (for `--follow`: the run completed), 1 when the API refused the request
or is unreachable, 2 for usage errors, 3 when a followed run failed or was
cancelled (`cli.errors`).

This module is the parser and the console entry point (`[project.scripts]`);
the rest of the CLI lives beside it: `commands` (what each command does),
`admin_commands` (tenants, keys, audit, usage), `secret_commands` (secrets),
`credentials` (which key), `spec_builder` (spec file and flags → the run's
spec), `api_client` (HTTP and the SSE stream), `follow` (a run, live), `spinner`
(what is in flight, on a terminal), `event_format` (events for people),
`event_json` (event JSON → the typed contracts) and `actor` (who is acting when
no key is sent).

This module must not: do a command's work, or import `api` or `worker` at
start-up (see `commands.cmd_api`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TextIO

from cli.actor import default_actor
from cli.admin_commands import add_admin_parsers, cmd_audit, cmd_keys, cmd_tenants, cmd_usage
from cli.api_client import ApiClient
from cli.commands import (
    cmd_api,
    cmd_control,
    cmd_decide,
    cmd_logs,
    cmd_ls,
    cmd_message,
    cmd_run,
    cmd_show,
    cmd_worker,
)
from cli.credentials import resolve_credentials
from cli.errors import CliError
from cli.secret_commands import add_secret_parsers, cmd_secrets
from cli.spec_builder import (
    APPROVAL_MODES,
    FINISH_MODES,
    PROVIDERS,
    TOOL_CHOICES,
    TOOLS,
    at_least_one,
    tool_list,
)

DEFAULT_API_URL = "http://127.0.0.1:8080"


def package_version() -> str:
    """The installed `agentrun` distribution's version (what `--version` prints)."""
    try:
        return version("agentrun")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrun", description="Launch, follow and control durable agent runs."
    )
    parser.add_argument(
        "--api-url",
        default=os.environ.get("AGENTRUN_API_URL", DEFAULT_API_URL),
        help="the REST API (env AGENTRUN_API_URL; default %(default)s)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument(
        "--api-key",
        help="the API key (default: $AGENTRUN_API_KEY, else the file $AGENTRUN_API_KEY_FILE, "
        "else the dev stack's .state/admin.key for an API on 127.0.0.1)",
    )
    parser.add_argument(
        "--on-behalf-of",
        metavar="USER",
        help="the end user a service key acts for (keys with --act-as only; your identity "
        "otherwise comes from the key)",
    )
    # The old `--actor`: the same as --on-behalf-of, hidden (identity comes from the key).
    parser.add_argument("--actor", dest="on_behalf_of", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="launch a run (prints its id)")
    run.add_argument(
        "spec",
        nargs="?",
        help="a RunSpec as a JSON or YAML file (`-`: stdin; see examples/); "
        "every flag below overrides its field",
    )
    run.add_argument("--goal", help="the goal (overrides the file's)")
    run.add_argument("--agent")
    run.add_argument("--instructions")
    run.add_argument("--tool", action="append", choices=TOOLS, help="repeatable")
    run.add_argument("--max-steps", type=at_least_one, metavar="N", help="at least 1")
    run.add_argument(
        "--finish", choices=FINISH_MODES, help="what ends the run (`text`: also a plain reply)"
    )
    run.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    model = run.add_argument_group("model")
    model.add_argument("--provider", choices=PROVIDERS)
    model.add_argument("--model", help="model name for the provider")
    model.add_argument("--temperature", type=float, metavar="T", help="0 to 2")
    model.add_argument("--tool-choice", choices=TOOL_CHOICES, help="must the model call a tool")
    approval = run.add_argument_group("approval (which tool calls wait for a human)")
    approval.add_argument("--approval", choices=APPROVAL_MODES, help="approval.mode")
    approval.add_argument(
        "--approve-tools",
        type=tool_list,
        action="append",
        metavar="TOOL,…",
        help="the tools that need approval, e.g. shell,write_file (implies --approval tools)",
    )
    approval.add_argument(
        "--approval-timeout", type=float, metavar="SECONDS", help="a pending approval expires"
    )
    sandbox = run.add_argument_group("sandbox (within the deployment's maxima)")
    sandbox.add_argument("--memory-mb", type=int, metavar="MB")
    sandbox.add_argument("--cpus", type=float)
    sandbox.add_argument("--pids", type=int, metavar="N", help="process limit")
    sandbox.add_argument("--workspace-mb", type=int, metavar="MB", help="workspace size")
    sandbox.add_argument(
        "--network",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="network access (where the deployment allows it)",
    )
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
        p = sub.add_parser(name, help=f"{name} the pending tool call (asks first)")
        p.add_argument("run")
        p.add_argument("approval_id", nargs="?", help="default: the pending one")
        p.add_argument("--digest", help="the call's arguments_digest (default: the pending one)")
        p.add_argument("--reason")
        p.add_argument(
            "-y", "--yes", action="store_true", help=f"{name} without asking for confirmation"
        )

    msg = sub.add_parser("message", help="send a steering message to a run")
    msg.add_argument("run")
    msg.add_argument("text")

    api = sub.add_parser("api", help="serve the REST API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument("--log-level", default="info")

    sub.add_parser("worker", help="run a Temporal worker (AGENTRUN_* settings)")
    add_admin_parsers(sub)
    add_secret_parsers(sub)
    return parser


COMMANDS: dict[str, Callable[[ApiClient, argparse.Namespace, TextIO], int]] = {
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
    "tenants": cmd_tenants,
    "keys": cmd_keys,
    "audit": cmd_audit,
    "usage": cmd_usage,
    "secrets": cmd_secrets,
}


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, inp: TextIO | None = None
) -> int:
    """`inp`: where `approve`/`deny` read the confirmation (default: stdin)."""
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    args.stdin = inp or sys.stdin
    try:
        if args.command == "api":
            return cmd_api(args)
        if args.command == "worker":
            return cmd_worker(args)
        credentials = resolve_credentials(args.api_key, args.api_url)
        # Without a key (an API with AGENTRUN_AUTH=off) the actor header still names you.
        actor = None if credentials.api_key else default_actor()
        api = ApiClient(args.api_url, credentials, on_behalf_of=args.on_behalf_of, actor=actor)
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
