"""The administration commands: tenants, keys, the audit trail and usage.

    agentrun tenants create team-a --name "Team A"
    agentrun tenants ls
    agentrun tenants quota team-a --max-concurrent-runs 4 --token-budget 2000000
    agentrun keys create --tenant team-a --role operator --subject ci-bot --expires-in 30d
    agentrun keys ls --tenant team-a
    agentrun keys revoke 3k9q2m7x1c4b
    agentrun audit --action run.cancel --since 24h    # --json: one entry per line
    agentrun audit verify
    agentrun usage --since 30d

Design (why it looks like this): each command is one call of the REST API's
admin routes (`/v1/admin/…`, `/v1/audit`, `/v1/usage`), so what the CLI may do
is exactly what its key may do, checked by the API. `keys create` prints the
new key alone on stdout (so `KEY=$(agentrun keys create …)` captures it) and
its warning on stderr: the key is shown once and the API keeps only its hash.
`tenants quota` changes only the limits it is given: it reads the tenant's
quota first and sends it back with those changed (`--clear` starts from none).
Times are ISO 8601 or a duration back from now (`--since 24h`).

This module must not: parse argv (`cli.main` does), or print a key anywhere but
the one line of `keys create`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from urllib.parse import quote

from cli.api_client import ApiClient
from cli.errors import EXIT_API, EXIT_OK, EXIT_USAGE, CliError
from cli.event_format import print_json, printable
from cli.spec_builder import at_least_one

ROLES = ("admin", "operator", "approver", "viewer")
BUDGET_PERIODS = ("day", "month")
QUOTA_FIELDS = (
    "max_concurrent_runs",
    "max_steps_per_run",
    "max_tokens_per_run",
    "token_budget",
    "cost_budget_usd",
    "budget_period",
    "queue_when_busy",
)
"""`accounts.tenants.Quota`'s fields, each a `--flag` of `tenants quota`."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` → a timedelta (argparse `type`)."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write a positive number and a unit, e.g. 30d, 12h, 90m"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def point_in_time(text: str) -> datetime:
    """An ISO 8601 time (UTC when it names no zone) or a duration back from now (`24h`)."""
    if _DURATION.match(text):
        return datetime.now(UTC) - duration(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a time (2031-01-02T03:04:05Z) nor a duration back (24h, 7d)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_admin_parsers(sub: Any) -> None:
    """Add `tenants`, `keys`, `audit` and `usage` to the `agentrun` subparsers."""
    tenants = sub.add_parser("tenants", help="manage tenants (admin)")
    tsub = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="create a tenant")
    create.add_argument("tenant", help="its id (lowercase letters, digits, - and _)")
    create.add_argument("--name", help="a display name")
    create.add_argument("--json", action="store_true")
    ls = tsub.add_parser("ls", help="list tenants")
    ls.add_argument("--json", action="store_true")
    quota = tsub.add_parser("quota", help="set a tenant's quota (only the limits given)")
    quota.add_argument("tenant")
    quota.add_argument("--max-concurrent-runs", type=at_least_one, metavar="N")
    quota.add_argument("--max-steps-per-run", type=at_least_one, metavar="N")
    quota.add_argument("--max-tokens-per-run", type=at_least_one, metavar="N")
    quota.add_argument("--token-budget", type=non_negative, metavar="N", help="per period")
    quota.add_argument("--cost-budget-usd", type=float, metavar="USD", help="per period")
    quota.add_argument("--budget-period", choices=BUDGET_PERIODS)
    quota.add_argument(
        "--queue-when-busy",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="over max concurrent runs: queue the launch instead of refusing it (429)",
    )
    quota.add_argument("--clear", action="store_true", help="start from no limits at all")
    quota.add_argument("--json", action="store_true")

    keys = sub.add_parser("keys", help="manage API keys (admin)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kcreate = ksub.add_parser("create", help="create a key (shown once)")
    kcreate.add_argument("--tenant", required=True)
    kcreate.add_argument("--role", required=True, choices=ROLES)
    kcreate.add_argument("--subject", required=True, help="who holds it, e.g. ci-bot or alice")
    kcreate.add_argument("--expires-in", type=duration, metavar="DURATION", help="e.g. 30d, 12h")
    kcreate.add_argument(
        "--act-as", action="store_true", help="may act on behalf of named users (--on-behalf-of)"
    )
    kcreate.add_argument("--json", action="store_true")
    kls = ksub.add_parser("ls", help="list a tenant's keys (never the keys themselves)")
    kls.add_argument("--tenant", required=True)
    kls.add_argument("--json", action="store_true")
    revoke = ksub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="its id (the part after ar_, or the whole key)")

    audit = sub.add_parser("audit", help="read the audit trail, or `audit verify` its chain")
    audit.add_argument("verify", nargs="?", choices=["verify"], help="check the hash chain")
    audit.add_argument("--action", help="e.g. run.cancel, key.create")
    audit.add_argument("--actor")
    audit.add_argument("--tenant", help="one tenant's entries (admins of the system tenant)")
    audit.add_argument("--since", type=point_in_time, help="ISO time or a duration back (24h)")
    audit.add_argument("--until", type=point_in_time)
    audit.add_argument("--after-seq", type=non_negative, default=0, metavar="SEQ")
    audit.add_argument("--limit", type=at_least_one, default=100, help="at most 1000")
    audit.add_argument("--json", action="store_true")

    usage = sub.add_parser("usage", help="tokens, cost and sandbox time of your tenant")
    usage.add_argument("--since", type=point_in_time, help="ISO time or a duration back (30d)")
    usage.add_argument("--until", type=point_in_time)
    usage.add_argument("--json", action="store_true")


# ------------------------------------------------------------------ tenants


def cmd_tenants(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.tenants_command == "create":
        body: dict[str, Any] = {"tenant_id": args.tenant}
        if args.name:
            body["name"] = args.name
        tenant = api.request("POST", "/v1/admin/tenants", json=body)
        if args.json:
            print_json(tenant, out)
        else:
            out.write(f"tenant {_tenant_id(tenant)} created\n")
        return EXIT_OK
    if args.tenants_command == "ls":
        tenants = _items(api.request("GET", "/v1/admin/tenants"), "tenants")
        if args.json:
            print_json(tenants, out)
            return EXIT_OK
        out.write(f"{'TENANT':<24} {'NAME':<24} QUOTA\n")
        for tenant in tenants:
            out.write(
                printable(
                    f"{_tenant_id(tenant):<24} {tenant.get('name') or '':<24} "
                    f"{quota_text(tenant.get('quota'))}"
                )
                + "\n"
            )
        return EXIT_OK
    return _set_quota(api, args, out)


def _set_quota(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    given = {f: getattr(args, f) for f in QUOTA_FIELDS if getattr(args, f) is not None}
    if not given and not args.clear:
        raise CliError(
            "name at least one limit, e.g. --max-concurrent-runs 4 (or --clear for none)",
            EXIT_USAGE,
        )
    quota: dict[str, Any] = {}
    if not args.clear:
        tenants = _items(api.request("GET", "/v1/admin/tenants"), "tenants")
        current = next((t for t in tenants if _tenant_id(t) == args.tenant), None)
        if current is None:
            raise CliError(f"no tenant {args.tenant} (see `agentrun tenants ls`)")
        quota = dict(current.get("quota") or {})
    quota.update(given)
    tenant = api.request("PUT", f"/v1/admin/tenants/{_seg(args.tenant)}/quota", json=quota)
    if args.json:
        print_json(tenant, out)
    else:
        shown = tenant.get("quota", tenant) if isinstance(tenant, dict) else quota
        out.write(f"tenant {args.tenant}: {quota_text(shown)}\n")
    return EXIT_OK


def quota_text(quota: dict[str, Any] | None) -> str:
    """The limits that are set, e.g. `max_concurrent_runs=4, token_budget=2000000/month`."""
    if not quota:
        return "no limits"
    period = quota.get("budget_period") or "month"
    parts = []
    for name in QUOTA_FIELDS:
        value = quota.get(name)
        if value is None or name == "budget_period" or value is False:
            continue
        if name in ("token_budget", "cost_budget_usd"):
            parts.append(f"{name}={value}/{period}")
        else:
            parts.append(name if value is True else f"{name}={value}")
    return ", ".join(parts) or "no limits"


# --------------------------------------------------------------------- keys


def cmd_keys(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.keys_command == "create":
        body: dict[str, Any] = {"role": args.role, "subject": args.subject, "act_as": args.act_as}
        if args.expires_in is not None:
            body["expires_at"] = (datetime.now(UTC) + args.expires_in).isoformat()
        created = api.request("POST", f"/v1/admin/tenants/{_seg(args.tenant)}/keys", json=body)
        plaintext = created.get("api_key")
        if not isinstance(plaintext, str):
            raise CliError("the API created a key but did not return it", EXIT_API)
        if args.json:
            print_json(created, out)
        else:
            out.write(plaintext + "\n")
            out.flush()
        record = created.get("key")
        key_id = record.get("key_id", "") if isinstance(record, dict) else ""
        print(
            f"agentrun: created key {key_id} ({args.role} of {args.tenant}, for "
            f"{args.subject}). This is the only time it is shown: store it now (a file "
            f"with mode 0600 for $AGENTRUN_API_KEY_FILE, or a secret store).",
            file=sys.stderr,
        )
        return EXIT_OK
    if args.keys_command == "ls":
        keys = _items(api.request("GET", f"/v1/admin/tenants/{_seg(args.tenant)}/keys"), "keys")
        if args.json:
            print_json(keys, out)
            return EXIT_OK
        out.write(
            f"{'KEY':<14} {'ROLE':<9} {'SUBJECT':<20} {'ACT_AS':<6} {'CREATED':<19}  "
            f"{'EXPIRES':<19}  {'LAST USED':<19}  STATE\n"
        )
        for key in keys:
            state = "revoked" if key.get("revoked_at") else "active"
            out.write(
                printable(
                    f"{key.get('key_id', ''):<14} {key.get('role', ''):<9} "
                    f"{key.get('subject', ''):<20} {'yes' if key.get('act_as') else 'no':<6} "
                    f"{_when(key.get('created_at')):<19}  {_when(key.get('expires_at')):<19}  "
                    f"{_when(key.get('last_used_at')):<19}  {state}"
                )
                + "\n"
            )
        return EXIT_OK
    key_id = key_id_of(args.key_id)
    api.request("DELETE", f"/v1/admin/keys/{_seg(key_id)}")
    out.write(f"key {key_id} revoked\n")
    return EXIT_OK


def key_id_of(text: str) -> str:
    """A key id from an id or a whole key (`ar_<key_id>_<secret>`): the secret stays here."""
    text = text.strip()
    if text.startswith("ar_") and text.count("_") >= 2:
        return text.split("_", 2)[1]
    return text


# -------------------------------------------------------------------- audit


def cmd_audit(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    if args.verify:
        result = api.request("GET", "/v1/audit/verify")
        if args.json:
            print_json(result, out)
        broken = result.get("first_broken_seq")
        if broken is None and result.get("ok", True):
            if not args.json:
                count = result.get("entries")
                if not isinstance(count, int):
                    count = _count_entries(api)
                out.write(f"chain verified: {count} entries\n")
            return EXIT_OK
        raise CliError(
            f"audit chain broken at entry {broken}: its hash does not match its content or "
            f"the entry before it (the log was altered there; entries before {broken} verify)"
        )
    params: list[tuple[str, str | int]] = [("after_seq", args.after_seq), ("limit", args.limit)]
    for name in ("action", "actor", "tenant"):
        if getattr(args, name):
            params.append((name, getattr(args, name)))
    for name in ("since", "until"):
        if getattr(args, name) is not None:
            params.append((name, getattr(args, name).isoformat()))
    entries = _items(api.request("GET", "/v1/audit", params=params), "entries")
    if args.json:  # one entry per line, as `logs --json`
        for entry in entries:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
        return EXIT_OK
    out.write(
        f"{'SEQ':>6}  {'AT':<19}  {'TENANT':<16} {'ACTOR':<20} {'ACTION':<18} TARGET  OUTCOME\n"
    )
    for entry in entries:
        actor = str(entry.get("actor", ""))
        if entry.get("on_behalf_of"):
            actor += f" for {entry['on_behalf_of']}"
        out.write(
            printable(
                f"{entry.get('seq', ''):>6}  {_when(entry.get('at')):<19}  "
                f"{entry.get('tenant_id', ''):<16} {actor:<20} {entry.get('action', ''):<18} "
                f"{entry.get('target', '')}  {entry.get('outcome', '')}"
            )
            + "\n"
        )
    return EXIT_OK


# -------------------------------------------------------------------- usage


def cmd_usage(api: ApiClient, args: argparse.Namespace, out: TextIO) -> int:
    params = [
        (name, getattr(args, name).isoformat())
        for name in ("since", "until")
        if getattr(args, name) is not None
    ]
    usage = api.request("GET", "/v1/usage", params=params)
    if args.json:
        print_json(usage, out)
        return EXIT_OK
    totals = usage
    runs = _items(usage, "by_run")
    out.write(
        f"tenant:     {totals.get('tenant_id', '')}\n"
        f"period:     {_when(totals.get('since')) if totals.get('since') else 'all time'}"
        f" to {_when(totals.get('until')) if totals.get('until') else 'now'}\n"
        f"runs:       {totals.get('runs', len(runs))}\n"
        f"tokens:     {totals.get('input_tokens', 0)} in, {totals.get('output_tokens', 0)} out\n"
        f"cost:       ${float(totals.get('cost_usd') or 0.0):.4f} (estimated, price table)\n"
        f"tool time:  {_seconds(totals.get('tool_seconds'))}   "
        f"sandbox time: {_seconds(totals.get('sandbox_seconds'))}\n"
    )
    if runs:
        out.write(
            f"\n{'RUN':<34} {'IN':>9} {'OUT':>9} {'COST USD':>10} {'TOOL S':>9} "
            f"{'SANDBOX S':>10}  FINISHED\n"
        )
        for run in runs:
            out.write(
                f"{run.get('run_id', ''):<34} {run.get('input_tokens', 0):>9} "
                f"{run.get('output_tokens', 0):>9} {float(run.get('cost_usd') or 0.0):>10.4f} "
                f"{float(run.get('tool_seconds') or 0.0):>9.1f} "
                f"{float(run.get('sandbox_seconds') or 0.0):>10.1f}  "
                f"{_when(run.get('finished_at'))}\n"
            )
    return EXIT_OK


def _seconds(value: Any) -> str:
    """Seconds as the API answers them (an API older than their tracking sent null)."""
    return "not tracked" if value is None else f"{float(value):.1f} s"


# ------------------------------------------------------------------ helpers


AUDIT_PAGE = 1000
"""The largest page `GET /v1/audit` serves."""


def _count_entries(api: ApiClient) -> int:
    """The audit entries this key may read (for an admin of the system tenant: all)."""
    count, after = 0, 0
    while True:
        page = api.request("GET", "/v1/audit", params={"after_seq": after, "limit": AUDIT_PAGE})
        count += len(_items(page, "entries"))
        if not isinstance(page, dict) or page.get("next_after_seq") is None:
            return count
        after = int(page["next_after_seq"])


def _items(body: Any, name: str) -> list[dict[str, Any]]:
    """A list answer, bare or wrapped as `{name: [...]}`."""
    items = body.get(name, []) if isinstance(body, dict) else body
    return [item for item in items or [] if isinstance(item, dict)]


def _tenant_id(tenant: dict[str, Any]) -> str:
    return str(tenant.get("tenant_id") or tenant.get("id") or "")


def _when(value: Any) -> str:
    return str(value)[:19].replace("T", " ") if value else "-"


def _seg(value: str) -> str:
    return quote(value, safe="")
