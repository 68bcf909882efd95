"""What this deployment admits at launch: the checks a `RunSpec` passes before a run starts.

A spec that pydantic accepts is well formed; whether *this deployment* runs it
depends on its settings. :func:`refusals` lists what it would refuse, each with
the field, the limit and the setting that sets it; `POST /v1/runs` answers them
with one 422 before anything starts. :func:`document` writes the same limits
into the deployment's OpenAPI document, so what a client reads there is what it
is held to.

    refusals(settings, spec)   # [] or [Refusal(loc=("sandbox", "memory_mb"), ...)]
    document(openapi, settings)

Design (why it looks like this):

* **Refuse, do not clamp** (the worker's rule too, `sandbox/_resources.py`): a run
  given less memory than it asked for hits the limit later and somewhere else.
  Without this check the worker is the first to refuse, at the run's first tool
  call, after the run was accepted with a 201.
* **The limits come from `Settings`**, the same ones `worker.sandbox_config` hands
  the sandbox; one process's settings can only vouch for workers configured alike
  (the worker still checks, so a worker with lower maxima still refuses).
* **Token ceilings live here, not in the contracts.** `RunSpec` is also the
  workflow's input, decoded again on every replay: a bound added to the model
  would make the history of a run launched before it unreadable. The API admits
  at most :data:`MAX_TOKEN_BUDGET` and :data:`MAX_TURN_TOKENS`; the model keeps
  reading whatever was ever admitted.

This module must not: talk to Temporal, Docker or the network, or read the environment.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentrun.config import Settings
from agentrun.contracts import RunSpec
from agentrun.webhook_destinations import WebhookAllowList, launch_refusal, parse_destination

__all__ = [
    "MAX_TOKEN_BUDGET",
    "MAX_TURN_TOKENS",
    "Refusal",
    "document",
    "refusals",
]

MAX_TOKEN_BUDGET = 10**12
"""The largest `limits.max_tokens` the API admits: no real budget comes near a
trillion tokens, and every JSON parser reads it exactly (it is below 2**53)."""
MAX_TURN_TOKENS = 10**9
"""The largest token count a scripted turn may report (`input_tokens`,
`output_tokens`): far over any context window, and its sums over the longest run
stay exact in every JSON parser."""
LABEL_KEY_PATTERN = "^[A-Za-z0-9_.-]{1,63}$"
LABEL_VALUE_PATTERN = "^[^\\n]{0,200}$"
"""`RunSpec.labels`, as its validator reads them, for the document. A key is also
matched whole here: the validator's `re.match` lets a final newline through (Python's
`$` matches before one), which the durable model keeps accepting for old histories."""

_SANDBOX_MAXIMA: tuple[tuple[str, Callable[[Settings], float], str], ...] = (
    ("memory_mb", lambda s: s.sandbox_max_memory_mb, "AGENTRUN_SANDBOX_MAX_MEMORY_MB"),
    ("cpus", lambda s: s.sandbox_max_cpus, "AGENTRUN_SANDBOX_MAX_CPUS"),
    ("pids", lambda s: s.sandbox_max_pids, "AGENTRUN_SANDBOX_MAX_PIDS"),
    ("workspace_mb", lambda s: s.sandbox_max_workspace_mb, "AGENTRUN_SANDBOX_MAX_WORKSPACE_MB"),
)
"""`SandboxPolicy` field → the deployment's maximum for it → the setting that sets it."""


@dataclass(frozen=True)
class Refusal:
    """One reason the deployment does not run a spec, shaped like a field error."""

    loc: tuple[str | int, ...]
    """Where in the spec, e.g. `("sandbox", "memory_mb")`."""
    msg: str
    """What is wrong, the limit and how to fix it."""
    type: str
    """`less_than_equal` (over a maximum), `not_allowed`, `needs_webhook_secret`, …"""

    def as_error(self) -> dict[str, Any]:
        """The entry in the 422 problem's `errors` (as a validation error's)."""
        return {"loc": ["body", *map(str, self.loc)], "msg": self.msg, "type": self.type}


def _egress_refusals(settings: Settings, spec: RunSpec) -> list[Refusal]:
    """Egress rules whose host the broker would refuse whatever it resolves to: an IP
    literal or a `localhost` name outside the operator's allow-list (other names are
    checked after DNS, by the broker, on every request)."""
    allow = WebhookAllowList.of(settings.egress_allow_hosts, settings.egress_allow_networks)
    out: list[Refusal] = []
    for index, rule in enumerate(spec.egress):
        try:
            destination = parse_destination(f"{rule.scheme}://{rule.host}:{rule.effective_port}/")
        except ValueError as exc:
            out.append(Refusal(("egress", index, "host"), str(exc), "egress_destination_refused"))
            continue
        if destination.address is not None:
            reason = allow.refusal(destination.host, destination.address)
        elif destination.host == "localhost" or destination.host.endswith(".localhost"):
            reason = None if destination.host in allow.hosts else "a loopback address"
        else:
            reason = None
        if reason is not None:
            out.append(
                Refusal(
                    ("egress", index, "host"),
                    f"egress host {rule.host} is {reason}; the egress broker reaches only "
                    "public addresses unless the operator allow-lists the host "
                    "(AGENTRUN_EGRESS_ALLOW_HOSTS) or its network "
                    "(AGENTRUN_EGRESS_ALLOW_NETWORKS)",
                    "egress_destination_refused",
                )
            )
    return out


def refusals(settings: Settings, spec: RunSpec) -> list[Refusal]:
    """Everything in `spec` this deployment would refuse; empty when it runs it."""
    out = _sandbox_refusals(settings, spec)
    if spec.webhook is not None and not settings.webhook_secret:
        out.append(
            Refusal(
                ("webhook",),
                "the spec names a webhook but this deployment has no AGENTRUN_WEBHOOK_SECRET "
                "to sign deliveries with; ask the operator to set it, or drop `webhook`",
                "needs_webhook_secret",
            )
        )
    if spec.webhook is not None:
        # The URL rules and any IP literal or `localhost` host; a name is checked after
        # DNS, at delivery (this module does no network I/O).
        problem = launch_refusal(spec.webhook.url, WebhookAllowList.from_settings(settings))
        if problem is not None:
            out.append(Refusal(("webhook", "url"), problem, "webhook_destination_refused"))
    out += _egress_refusals(settings, spec)
    out += [
        Refusal(
            ("labels", key),
            f"label key {key!r} must be 1-63 of A-Z a-z 0-9 _ . - (nothing after them)",
            "string_pattern_mismatch",
        )
        for key in spec.labels
        if not re.fullmatch(LABEL_KEY_PATTERN, key)
    ]
    budget = spec.limits.max_tokens
    if budget is not None and budget > MAX_TOKEN_BUDGET:
        out.append(_over(("limits", "max_tokens"), budget, MAX_TOKEN_BUDGET, None))
    for index, turn in enumerate(spec.model.script or []):
        for name in ("input_tokens", "output_tokens"):
            value = getattr(turn, name)
            if value > MAX_TURN_TOKENS:
                out.append(_over(("model", "script", index, name), value, MAX_TURN_TOKENS, None))
    return out


def _sandbox_refusals(settings: Settings, spec: RunSpec) -> list[Refusal]:
    policy = spec.sandbox
    out: list[Refusal] = []
    allowed = settings.allowed_images()
    if policy.image is not None and policy.image not in allowed:
        out.append(
            Refusal(
                ("sandbox", "image"),
                f"image {policy.image!r} is not in this deployment's allow-list {allowed} "
                "(operators extend it with AGENTRUN_SANDBOX_IMAGE_ALLOWLIST)",
                "not_allowed",
            )
        )
    if policy.network and not settings.sandbox_allow_network:
        out.append(
            Refusal(
                ("sandbox", "network"),
                "this deployment does not allow sandbox network access "
                "(operators enable it with AGENTRUN_SANDBOX_ALLOW_NETWORK=true)",
                "not_allowed",
            )
        )
    for name, maximum_of, variable in _SANDBOX_MAXIMA:
        asked = getattr(policy, name)
        maximum = maximum_of(settings)
        if asked is not None and asked > maximum:
            out.append(_over(("sandbox", name), asked, maximum, variable))
    return out


def _over(
    loc: tuple[str | int, ...], asked: float, maximum: float, variable: str | None
) -> Refusal:
    field = ".".join(map(str, loc))
    most = _number(maximum)
    if variable:
        where = f"this deployment's maximum of {most} ({variable})"
    else:
        where = f"the API's maximum of {most}"
    return Refusal(
        loc, f"{field}={_number(asked)} exceeds {where}; ask for at most {most}", "less_than_equal"
    )


def _number(value: float) -> str:
    """As the client wrote it: `1048576`, not `1.04858e+06`; `0.5` stays `0.5`."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# ------------------------------------------------------------------ the document


WEBHOOK_RULE = (
    "Signed deliveries of the run's events (see docs/api.md, Webhooks). Refused (422) "
    "unless the deployment has a signing secret (AGENTRUN_WEBHOOK_SECRET)."
)


def document(openapi: dict[str, Any], settings: Settings) -> None:
    """Write this deployment's admission limits into its OpenAPI document (in place).

    The components of `RunSpec` get the sandbox maxima, the allowed images, the
    network switch and the token ceilings as `maximum`/`enum`/`const`, and the
    label rules as patterns; `webhook` says that it needs a secret, and is `null`
    only where there is none.
    """
    schemas = openapi["components"]["schemas"]
    policy = schemas["SandboxPolicy"]["properties"]
    _branch(policy["image"], "string")["enum"] = settings.allowed_images()
    if not settings.sandbox_allow_network:
        policy["network"]["const"] = False
        policy["network"]["description"] = (
            "This deployment does not allow sandbox network access "
            "(AGENTRUN_SANDBOX_ALLOW_NETWORK)."
        )
    for name, maximum_of, variable in _SANDBOX_MAXIMA:
        branch = _branch(policy[name], "integer", "number")
        maximum = maximum_of(settings)
        branch["maximum"] = min(branch.get("maximum", maximum), maximum)
        policy[name]["description"] = f"At most {_number(maximum)} in this deployment ({variable})."
    _branch(schemas["Limits"]["properties"]["max_tokens"], "integer")["maximum"] = MAX_TOKEN_BUDGET
    turn = schemas["ScriptedTurn"]["properties"]
    for name in ("input_tokens", "output_tokens"):
        turn[name]["maximum"] = MAX_TURN_TOKENS
    labels = schemas["RunSpec"]["properties"]["labels"]
    labels["propertyNames"] = {"pattern": LABEL_KEY_PATTERN}
    labels["additionalProperties"] = {"type": "string", "pattern": LABEL_VALUE_PATTERN}
    webhook = schemas["RunSpec"]["properties"]["webhook"]
    if settings.webhook_secret:
        webhook["description"] = WEBHOOK_RULE
    else:
        schemas["RunSpec"]["properties"]["webhook"] = {
            "type": "null",
            "default": None,
            "description": WEBHOOK_RULE + " This deployment has none: `webhook` must be null.",
        }


def _branch(prop: dict[str, Any], *types: str) -> dict[str, Any]:
    """The schema of `prop` (or of its `anyOf` branch) whose type is one of `types`."""
    for candidate in [prop, *prop.get("anyOf", [])]:
        if candidate.get("type") in types:
            found: dict[str, Any] = candidate
            return found
    raise KeyError(f"no {types} branch in {prop}")
