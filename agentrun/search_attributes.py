"""The custom search attributes every run carries: the one place they are named.

Operators find runs in the Temporal Web UI (and the API lists them) by these
attributes. The workflow upserts them, the launcher sets them at start, the dev
stack and the tests register them on the server, and the API's visibility queries
name them: all of them read the keys below, so a rename is a one-line change.

Safe inside the workflow sandbox: `temporalio.common`, the contracts and the standard
library only.
"""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey

from agentrun.contracts import RunSpec

__all__ = [
    "ALL",
    "SA_AGENT",
    "SA_CREATED_BY",
    "SA_LABELS",
    "SA_MODEL",
    "SA_STATUS",
    "SA_STEPS",
    "SA_TENANT",
    "SA_TRACE_ID",
    "WORKFLOW_TYPE",
    "index_kind",
    "label_values",
    "model_label",
]

WORKFLOW_TYPE = "AgentRunWorkflow"
"""The workflow type name, as visibility queries and the Web UI show it."""

SA_TENANT = SearchAttributeKey.for_keyword("AgentRunTenant")
SA_STATUS = SearchAttributeKey.for_keyword("AgentRunStatus")
SA_AGENT = SearchAttributeKey.for_keyword("AgentRunAgent")
SA_MODEL = SearchAttributeKey.for_keyword("AgentRunModel")
SA_LABELS = SearchAttributeKey.for_keyword_list("AgentRunLabels")
SA_STEPS = SearchAttributeKey.for_int("AgentRunSteps")
SA_CREATED_BY = SearchAttributeKey.for_keyword("AgentRunCreatedBy")
SA_TRACE_ID = SearchAttributeKey.for_keyword("AgentRunTraceId")
"""The run's OpenTelemetry trace id (32 hex digits), set at launch when tracing is on:
the Web UI's way to the run's trace (`telemetry.tracing`)."""

ALL: tuple[SearchAttributeKey[Any], ...] = (
    SA_TENANT,
    SA_STATUS,
    SA_AGENT,
    SA_MODEL,
    SA_LABELS,
    SA_STEPS,
    SA_CREATED_BY,
    SA_TRACE_ID,
)
"""Every custom search attribute, in registration order."""

_KIND_NAMES = {
    "KEYWORD": "Keyword",
    "KEYWORD_LIST": "KeywordList",
    "INT": "Int",
    "TEXT": "Text",
    "DATETIME": "Datetime",
    "FLOAT": "Double",
    "BOOL": "Bool",
}


def model_label(spec: RunSpec) -> str:
    """The `AgentRunModel` value: `provider:name` (`name` empty for the default)."""
    return f"{spec.model.provider}:{spec.model.name or ''}"


def label_values(spec: RunSpec) -> list[str]:
    """The `AgentRunLabels` values: one `key=value` keyword per label."""
    return [f"{key}={value}" for key, value in spec.labels.items()]


def index_kind(key: SearchAttributeKey[Any]) -> str:
    """The type name `temporal operator search-attribute create --type` expects."""
    return _KIND_NAMES[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
