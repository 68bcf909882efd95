"""Structured logs: every line carries the trace id, span id, run id and tenant.

    configure_logging("json")                   # the process's root handler (worker, API)
    uvicorn.Config(app, log_config=None, ...)   # uvicorn's loggers then reach that handler
    with bind_run(run_id="r-1", tenant="acme"):  # lines written inside name the run
        log.info("started")

A JSON line (`AGENTRUN_LOG_FORMAT=json`)::

    {"time": "2026-11-22T05:40:01.123Z", "level": "INFO", "logger": "agentrun.api",
     "message": "…", "trace_id": "4bf92f35…", "span_id": "00f067aa…",
     "run_id": "r-1", "tenant": "acme"}

The four correlation keys are on every line, `null` when the line belongs to no
trace or run (start-up, the janitor). `text` (the default) appends them to the
classic `time level logger message` line when known.

Where the run and tenant come from, first found wins:

1. the record itself (`log.info(..., extra={"run_id": …, "tenant": …})`);
2. the context (:func:`bind_run`, or :func:`bind_lookup` for a value known later:
   the API binds the request's scope, read when the line is written, so the access
   line of a launch names the run it created);
3. the Temporal activity or workflow the line is written in (its workflow id is
   `agentrun/<tenant>/<run>`).

The trace and span are the current OpenTelemetry span's (the API's server span,
an activity's span under the Temporal interceptor).

Design (why it looks like this): a filter on the handler, not on loggers, so a
record from any logger (uvicorn's, httpx's, the SDK's) gains the keys on the way
out; uvicorn keeps its own handlers only when it configures logging itself, so the
API is served with `log_config=None` and its loggers propagate here.

This module must not: write a value it was not given (no argument of a log call is
inspected), or replace the secret redaction filter other modules add to handlers
(`agentrun.redaction.install_log_redaction`); it configures the root handler
before they add theirs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace
from temporalio import activity, workflow

from agentrun.contracts import run_ref_from_workflow_id

__all__ = [
    "LOG_FIELDS",
    "ContextFilter",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "bind_lookup",
    "bind_run",
    "configure_logging",
    "uvicorn_log_config",
]

LogFormat = Literal["text", "json"]
LOG_FIELDS = ("trace_id", "span_id", "run_id", "tenant")
"""The correlation keys every line carries."""

RunLookup = Callable[[], tuple[str | None, str | None]]
"""() → (run_id, tenant), called when a line is written."""

_bound: ContextVar[RunLookup | None] = ContextVar("agentrun_log_run", default=None)


@contextlib.contextmanager
def bind_run(run_id: str | None, tenant: str | None) -> Iterator[None]:
    """Lines written inside name this run and tenant."""
    with bind_lookup(lambda: (run_id, tenant)):
        yield


@contextlib.contextmanager
def bind_lookup(lookup: RunLookup) -> Iterator[None]:
    """Lines written inside ask `lookup` for their run and tenant (a request's scope,
    filled in while the request runs)."""
    token = _bound.set(lookup)
    try:
        yield
    finally:
        _bound.reset(token)


def _temporal_run() -> tuple[str | None, str | None]:
    """The run of the activity or workflow this line is written in."""
    workflow_id: str | None = None
    if activity.in_activity():
        workflow_id = activity.info().workflow_id
    elif workflow.in_workflow():
        workflow_id = workflow.info().workflow_id
    if not workflow_id:
        return None, None
    try:
        tenant, run_id = run_ref_from_workflow_id(workflow_id)
    except ValueError:  # a slots workflow and the like: not one run's
        return None, None
    return run_id, tenant


class ContextFilter(logging.Filter):
    """Sets `trace_id`, `span_id`, `run_id` and `tenant` on every record (None when
    unknown); never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        else:
            record.trace_id = getattr(record, "trace_id", None)
            record.span_id = getattr(record, "span_id", None)
        run_id: str | None = getattr(record, "run_id", None)
        tenant: str | None = getattr(record, "tenant", None)
        if run_id is None or tenant is None:
            lookup = _bound.get()
            found = lookup() if lookup is not None else (None, None)
            if found == (None, None):
                found = _temporal_run()
            run_id, tenant = run_id or found[0], tenant or found[1]
        record.run_id, record.tenant = run_id, tenant
        return True


def _utc(record: logging.LogRecord) -> str:
    stamp = datetime.fromtimestamp(record.created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the correlation keys,
    and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in LOG_FIELDS:
            line[key] = getattr(record, key, None)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            line["http"] = _access_fields(record.args)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _access_fields(args: tuple[Any, ...]) -> dict[str, Any]:
    """uvicorn's access line arguments: client, method, path, HTTP version, status."""
    if len(args) != 5:
        return {}
    client, method, path, version, status = args
    return {"client": client, "method": method, "path": path, "version": version, "status": status}


class TextFormatter(logging.Formatter):
    """`time level logger message`, then `trace=… span=… run=… tenant=…` when known."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        known = [
            f"{key.removesuffix('_id')}={value}"
            for key in LOG_FIELDS
            if (value := getattr(record, key, None))
        ]
        if not known:
            return text
        first, _, rest = text.partition("\n")
        return f"{first} [{' '.join(known)}]" + (f"\n{rest}" if rest else "")


def formatter_for(fmt: LogFormat) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else TextFormatter()


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def configure_logging(fmt: LogFormat = "text", level: int = logging.INFO) -> logging.Handler:
    """The root handler (stderr) with the correlation keys and `fmt`, for a process's
    entry point (the worker, `python -m api.server`). Replaces a plain stream handler
    (`logging.basicConfig`'s) and sends uvicorn's loggers through it; other handlers
    (a test runner's capture) stay."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(formatter_for(fmt))
    root = logging.getLogger()
    for old in list(root.handlers):
        if type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


def uvicorn_log_config(fmt: LogFormat = "text") -> dict[str, Any]:
    """uvicorn's `log_config`: its loggers write through this module's filter and
    formatter (access lines included) to stderr, whatever the root logger does."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"agentrun": {"()": formatter_for, "fmt": fmt}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "filters": ["context"],
                "formatter": "agentrun",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
    }
