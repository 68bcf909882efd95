"""`agentrun secrets`: the tenant's secrets, by name (values go in, never come out).

    printf %s "$GITHUB_TOKEN" | agentrun secrets put GITHUB_TOKEN
    agentrun secrets put TLS_KEY --from-file key.pem
    agentrun secrets put GITHUB_TOKEN          # on a terminal: asks, without echo
    agentrun secrets ls                        # names, versions, times (--json)
    agentrun secrets delete GITHUB_TOKEN

Design (why it looks like this): a value never appears in argv (every user of
the machine reads other processes' arguments in `ps`, and shells keep history):
it comes from stdin, a file, or a prompt that does not echo. One trailing newline
(what `echo` and editors add) is dropped. Each command is one call of
`/v1/secrets`, so what the CLI may do is what its key may do.

This module must not: print, log or send a value anywhere but the PUT body.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from cli.api_client import ApiClient
from cli.errors import EXIT_OK, EXIT_USAGE, CliError
from cli.event_format import print_json, printable


def add_secret_parsers(sub: Any) -> None:
    """Add `secrets put|ls|delete` to the `agentrun` subparsers."""
    secrets = sub.add_parser("secrets", help="store, list and delete your tenant's secrets")
    ssub = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    put = ssub.add_parser(
        "put",
        help="store a secret (a new version if it exists); the value comes from stdin, "
        "--from-file, or a prompt on a terminal, never from the command line",
    )
    put.add_argument("name", help="e.g. GITHUB_TOKEN (a letter, then letters, digits, _ . -)")
    put.add_argument("--from-file", type=Path, metavar="PATH", help="read the value from a file")
    put.add_argument("--json", action="store_true")
    ls = ssub.add_parser("ls", aliases=["list"], help="list secrets (names and metadata only)")
    ls.add_argument("--json", action="store_true")
    delete = ssub.add_parser("delete", aliases=["rm"], help="delete a secret with every version")
    delete.add_argument("name")


def cmd_secrets(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.secrets_command == "put":
        value = read_value(args)
        meta = api.request("PUT", f"/v1/secrets/{_seg(args.name)}", json={"value": value})
        if args.json:
            print_json(meta, out)
        else:
            out.write(f"secret {args.name} stored (version {meta.get('version')})\n")
        return EXIT_OK
    if args.secrets_command in ("ls", "list"):
        body = api.request("GET", "/v1/secrets")
        items = body.get("secrets", []) if isinstance(body, dict) else []
        if args.json:
            print_json(items, out)
            return EXIT_OK
        out.write(f"{'NAME':<40} {'VERSION':>7}  UPDATED\n")
        for item in items:
            updated = str(item.get("updated_at") or "")[:19].replace("T", " ")
            row = f"{item.get('name', ''):<40} {item.get('version', ''):>7}  {updated}"
            out.write(printable(row) + "\n")
        return EXIT_OK
    api.request("DELETE", f"/v1/secrets/{_seg(args.name)}")
    out.write(f"secret {args.name} deleted\n")
    return EXIT_OK


def read_value(args: argparse.Namespace) -> str:
    """The value to store: `--from-file`, else stdin, else (a terminal) a silent prompt."""
    if args.from_file is not None:
        try:
            text: str = args.from_file.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {args.from_file}: {exc.strerror}", EXIT_USAGE) from None
        except UnicodeDecodeError:
            raise CliError(f"{args.from_file} is not UTF-8 text", EXIT_USAGE) from None
    else:
        stdin: TextIO = getattr(args, "stdin", None) or sys.stdin
        if _is_terminal(stdin):
            text = getpass.getpass(f"value of {args.name} (not echoed): ")
        else:
            text = stdin.read()
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise CliError(
            'no value: pipe it in (`printf %s "$TOKEN" | agentrun secrets put NAME`) or '
            "use --from-file PATH",
            EXIT_USAGE,
        )
    return value


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _seg(value: str) -> str:
    return quote(value, safe="")
