"""Traces: one per run, from the API request that launched it to every model and tool call.

    setup = install_tracing(resource, settings)      # via telemetry.setup_telemetry
    client = await connect(settings, plugins=client_plugins(setup))
    instrument_app(app)                               # FastAPI server spans, httpx client spans
    with model_call_span(provider="openai", model="gpt-4o", run=ref) as span:
        ...; record_model_reply(span, usage=..., finish_reason="stop")

The span tree of a run (names as a trace viewer shows them)::

    POST /v1/runs                                  API (FastAPI instrumentation), SERVER
    └─ StartWorkflow:AgentRunWorkflow              API's Temporal client, CLIENT
       └─ RunWorkflow:AgentRunWorkflow             the worker, the run's whole life
          ├─ agentrun.step                         one per step (`workflows.step_trace`)
          │  ├─ StartActivity:call_model           one per model call
          │  │  └─ RunActivity:call_model          the activity's execution (per attempt)
          │  │     └─ chat <model>                 GenAI span (gen_ai.* attributes)
          │  │        └─ POST https://…            the provider's HTTP call (httpx)
          │  └─ StartActivity:dispatch_tool        (an approval wait sits between these)
          │     └─ RunActivity:dispatch_tool
          │        └─ execute_tool <tool>          tool span: name, call id, exit code …
          └─ StartActivity:store_events …

A retried activity is one more `RunActivity` span (the `temporalActivityID` is the
same; the attempt is on the GenAI / tool span as `agentrun.attempt`). Signals and
updates (approve, pause) come from another API request: their `HandleUpdate:*`
spans belong to that request's trace, while the run's own work after them stays in
the run's trace (the workflow's spans are parented to `RunWorkflow`).

Design (why it looks like this):

* **The Temporal SDK's plugin, not hand-made context passing.**
  `temporalio.contrib.opentelemetry.OpenTelemetryPlugin` carries the W3C trace
  context in Temporal headers (start, signal, update, activity, continue-as-new),
  and its `create_tracer_provider` makes span ids inside workflows deterministic
  (`TemporalIdGenerator`) and drops span ends while history replays. A worker that
  dies mid-run and a new one replaying the history therefore emit each span once:
  the replaying worker re-creates `RunWorkflow` with the same ids and ends it when
  the run ends, and the spans ended before the crash are not ended again.
* **The plugin only when tracing is on.** Without an exporter the provider is still
  installed (so spans have ids that logs can carry) but clients get no plugin: no
  headers, no interceptor, no cost per step.
* **Exporters from the standard variables.** `OTEL_TRACES_EXPORTER` (`otlp`,
  `console`, `none`; a comma list); unset, `otlp` when `OTEL_EXPORTER_OTLP_ENDPOINT`
  or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. The OTLP exporter reads its
  endpoint, headers and timeouts itself; the protocol is `http/protobuf` (a `grpc`
  setting is refused with a message: no grpcio dependency for one transport); the
  sampler comes from `OTEL_TRACES_SAMPLER`.
* **Content is off by default.** Prompts and completions go on spans only with
  `AGENTRUN_TRACE_CONTENT=true`, and then through the run's redactor (the granted
  secrets' values and their encodings) and truncated: a trace backend is usually
  read by more people than a run's owner.

This module must not: put a secret value, a prompt or a tool's output on a span
unless content capture is on (and then only redacted), or make workflow code
depend on tracing being on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import TypeAdapter
from temporalio import workflow
from temporalio.contrib.opentelemetry import (
    OpenTelemetryPlugin,
    ReplaySafeTracerProvider,
    create_tracer_provider,
)

from agentrun.config import Settings

__all__ = [
    "CONTENT_CHARS",
    "TRACER_NAME",
    "TracingSetup",
    "capturing_content",
    "client_plugins",
    "current_trace_id",
    "install_tracing",
    "instrument_app",
    "model_call_span",
    "record_model_reply",
    "record_tool_result",
    "tool_span",
    "tracer",
    "untraced_http",
]

log = logging.getLogger("agentrun.telemetry")

TRACER_NAME = "agentrun"
CONTENT_CHARS = 8_000
"""Prompt / completion text kept on a span when content capture is on."""

_PRICES = TypeAdapter(dict[str, dict[str, float]])


@dataclass
class TracingSetup:
    """The process's tracer provider and what it exports to.

    `enabled` is True once a span exporter is attached (from the `OTEL_*`
    variables, or :meth:`add_exporter` in tests): only then do clients get the
    Temporal plugin."""

    provider: ReplaySafeTracerProvider
    exporters: list[str] = field(default_factory=list)
    capture_content: bool = False
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)

    def add_exporter(self, exporter: SpanExporter, *, batch: bool = False) -> None:
        """Attach one more exporter (a test's `InMemorySpanExporter`, say).

        `batch=False` exports each span as it ends (tests read them at once);
        production exporters are batched."""
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(_DropEvicted(processor))
        self.exporters.append(type(exporter).__name__)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        return self.provider.force_flush(timeout_millis)


class _DropEvicted(SpanProcessor):
    """Passes spans on to `inner`, except workflow spans ended by an eviction.

    A worker that stops (or drops a run from its cache) closes the workflow's
    coroutine, often later, from the garbage collector and outside the workflow:
    the SDK's replay-safe span then sees no replay and ends `RunWorkflow` (or an
    update's span) with the close's time. The worker that takes the run over
    replays it and ends the same span (same deterministic id) when the run really
    ends; exporting both would show the run twice. So a span started inside a
    workflow instance is exported only when that same instance ends it."""

    def __init__(self, inner: SpanProcessor) -> None:
        self._inner = inner
        # By the span's SpanContext (the one object on_start and on_end share; held
        # here so its id is not reused): the workflow instance that started it.
        self._owners: dict[int, tuple[object, weakref.ref[Any]]] = {}

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if workflow.in_workflow():
            context = span.get_span_context()
            self._owners[id(context)] = (context, weakref.ref(workflow.instance()))
        self._inner.on_start(span, parent_context)  # type: ignore[arg-type]

    def on_end(self, span: ReadableSpan) -> None:
        started = self._owners.pop(id(span.context), None)
        if started is not None and started[0] is span.context:
            owner = started[1]()
            if owner is None or not (workflow.in_workflow() and workflow.instance() is owner):
                return  # ended by the eviction of the instance that started it
        self._inner.on_end(span)

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


_lock = threading.Lock()
_setup: TracingSetup | None = None


def install_tracing(resource: Resource, settings: Settings) -> TracingSetup:
    """Make a replay-safe tracer provider the global one, with the configured exporters.

    Idempotent (one global provider per process). `OTEL_SDK_DISABLED=true` leaves
    every exporter off."""
    global _setup
    with _lock:
        if _setup is not None:
            return _setup
        provider = create_tracer_provider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER
        setup = TracingSetup(
            provider=provider,
            capture_content=settings.trace_content,
            prices=_PRICES.validate_json(settings.price_table) if settings.price_table else {},
        )
        for exporter in _configured_exporters():
            setup.add_exporter(exporter, batch=True)
        trace.set_tracer_provider(provider)
        logging.getLogger("opentelemetry.context").addFilter(_evicted_detach)
        _setup = setup
        return setup


def _evicted_detach(record: logging.LogRecord) -> bool:
    """Drop OpenTelemetry's "Failed to detach context" error for an evicted workflow.

    Closing an evicted workflow's coroutine (`GeneratorExit`, see `_DropEvicted`)
    unwinds its spans' context managers in another context than the one they were
    entered in; the SDK logs that at ERROR with a traceback on every eviction,
    though nothing is wrong. Any other detach failure still shows."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (
        record.getMessage() == "Failed to detach context"
        and isinstance(exc, ValueError)
        and isinstance(exc.__context__, GeneratorExit)
    )


def _configured_exporters() -> list[SpanExporter]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = os.environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        )
        names = "otlp" if endpoint else "none"
    exporters: list[SpanExporter] = []
    for name in {n.strip().lower() for n in names.split(",")} - {"", "none"}:
        if name == "otlp":
            exporters.append(_otlp_exporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s: unknown exporter, ignored (otlp, console)", name)
    return exporters


def _otlp_exporter() -> SpanExporter:
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    if protocol != "http/protobuf":
        # The gRPC exporter would pull grpcio into every process for one transport;
        # every collector (rotel, the OpenTelemetry Collector, Jaeger) speaks both.
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: agentrun exports traces over "
            "http/protobuf only; point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's "
            "HTTP receiver (port 4318) and unset the protocol"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracing_setup() -> TracingSetup | None:
    """The installed setup, if :func:`install_tracing` ran in this process."""
    return _setup


def client_plugins(setup: TracingSetup | None = None) -> list[Any]:
    """The Temporal client plugins for this process: the SDK's OpenTelemetry plugin
    when tracing is on (workers built on that client inherit it)."""
    setup = setup or _setup
    if setup is None or not setup.enabled:
        return []
    # add_temporal_spans: StartWorkflow / RunWorkflow / StartActivity / RunActivity spans.
    return [OpenTelemetryPlugin(add_temporal_spans=True)]


def instrument_app(app: Any) -> None:
    """FastAPI server spans for `app` and client spans for every httpx client.

    Called when tracing is on only; the health probe stays out of traces."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    instrument_httpx()


def instrument_httpx() -> None:
    """Client spans (and trace context headers) on every httpx request: model
    providers, webhooks, the egress broker. Idempotent."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    instrumentor = HTTPXClientInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def untraced_http() -> AbstractContextManager[None]:
    """No httpx span and no `traceparent` header for the requests made inside.

    For requests to destinations a tool chose (the egress broker): they must see
    what the tool sent plus the rule's credential, not this deployment's trace ids."""
    from opentelemetry.instrumentation.utils import suppress_http_instrumentation

    return suppress_http_instrumentation()


@functools.cache
def tracer() -> trace.Tracer:
    """agentrun's tracer, made once: `get_tracer` builds a new tracer per call.

    Made before the tracer provider is installed, it is OpenTelemetry's proxy,
    which hands its spans to the provider installed later."""
    return trace.get_tracer(TRACER_NAME)


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), None outside a recorded trace
    or when no exporter is configured: a run is given a trace id only when its
    trace goes somewhere an operator can open it."""
    if _setup is None or not _setup.enabled:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return format(context.trace_id, "032x")


# ------------------------------------------------------------------ span helpers


class RunScope(Protocol):
    """What spans say about the run they belong to (activity inputs have these)."""

    tenant_id: str
    run_id: str


class TextRedactor(Protocol):
    def redact(self, text: str) -> str: ...


def _capture() -> TracingSetup | None:
    return _setup if _setup is not None and _setup.capture_content else None


def capturing_content() -> bool:
    """Whether spans carry prompts, completions and tool results
    (`AGENTRUN_TRACE_CONTENT`): callers skip building them otherwise."""
    return _capture() is not None


def _run_attributes(run: RunScope | None, step: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    if run is not None:
        attributes["agentrun.run_id"] = run.run_id
        attributes["agentrun.tenant"] = run.tenant_id
    if step is not None:
        attributes["agentrun.step"] = step
    return attributes


@contextmanager
def model_call_span(
    *,
    provider: str,
    model: str | None,
    run: RunScope | None = None,
    step: int | None = None,
    attempt: int = 1,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> Iterator[Span]:
    """A GenAI `chat <model>` span (CLIENT) around one model call.

    Semantic conventions: `gen_ai.operation.name`, `gen_ai.provider.name`,
    `gen_ai.request.model`, `gen_ai.request.max_tokens`, `gen_ai.request.temperature`;
    :func:`record_model_reply` adds the usage, finish reasons and cost."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model or "default",
        "agentrun.attempt": attempt,
        **_run_attributes(run, step),
    }
    if max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = max_tokens
    if temperature is not None:
        attributes["gen_ai.request.temperature"] = temperature
    with tracer().start_as_current_span(
        f"chat {model or 'default'}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def estimated_cost(model: str | None, input_tokens: int, output_tokens: int) -> float | None:
    """USD from `AGENTRUN_PRICE_TABLE` (per million tokens); None for an unpriced model."""
    prices = (_setup.prices if _setup is not None else {}).get(model or "")
    if prices is None:
        return None
    return (
        input_tokens * prices.get("input", 0.0) + output_tokens * prices.get("output", 0.0)
    ) / 1e6


def record_model_reply(
    span: Span,
    *,
    model: str | None,
    input_tokens: int,
    output_tokens: int,
    finish_reason: str | None,
    estimated_usage: bool = False,
    prompt: Sequence[Mapping[str, Any]] | None = None,
    completion: str | None = None,
    redactor: TextRedactor | None = None,
) -> None:
    """Usage, finish reason and cost on a model span; content only when captured.

    `prompt` (role/content mappings) and `completion` are dropped unless
    `AGENTRUN_TRACE_CONTENT` is on, and then redacted by `redactor` and truncated."""
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    span.set_attribute("agentrun.usage.estimated", estimated_usage)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    cost = estimated_cost(model, input_tokens, output_tokens)
    if cost is not None:
        span.set_attribute("agentrun.cost.estimated_usd", cost)
    if _capture() is None:
        return
    if prompt is not None:
        span.set_attribute("gen_ai.input.messages", _content(json.dumps(list(prompt)), redactor))
    if completion is not None:
        output = [{"role": "assistant", "content": completion}]
        span.set_attribute("gen_ai.output.messages", _content(json.dumps(output), redactor))


def _content(text: str, redactor: TextRedactor | None) -> str:
    # Redact before truncating: a cut could split a value and let its head through.
    text = redactor.redact(text) if redactor is not None else text
    return text[:CONTENT_CHARS]


@contextmanager
def tool_span(
    *,
    tool: str,
    call_id: str,
    run: RunScope | None = None,
    step: int | None = None,
    attempt: int = 1,
    queue_wait_s: float | None = None,
) -> Iterator[Span]:
    """An `execute_tool <tool>` span (INTERNAL) around one tool call.

    `gen_ai.operation.name=execute_tool`, `gen_ai.tool.name`, `gen_ai.tool.call.id`;
    `agentrun.tool.queue_wait_s` (scheduled → started: waiting for a worker slot);
    :func:`record_tool_result` adds the exit code, the limit hit and durations."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": tool,
        "gen_ai.tool.call.id": call_id,
        "agentrun.attempt": attempt,
        **_run_attributes(run, step),
    }
    if queue_wait_s is not None:
        attributes["agentrun.tool.queue_wait_s"] = max(queue_wait_s, 0.0)
    with tracer().start_as_current_span(f"execute_tool {tool}", attributes=attributes) as span:
        yield span


def record_tool_result(
    span: Span,
    *,
    ok: bool,
    exit_code: int | None = None,
    limit_hit: str | None = None,
    error_type: str | None = None,
    sandbox_claim_s: float | None = None,
    exec_s: float | None = None,
    result: str | None = None,
    redactor: TextRedactor | None = None,
) -> None:
    """The outcome on a tool span: exit code, limit hit (`timeout`, `output`, `memory` …),
    the sandbox claim and exec durations; the result text only when content is captured."""
    if exit_code is not None:
        span.set_attribute("agentrun.tool.exit_code", exit_code)
    if limit_hit:
        span.set_attribute("agentrun.tool.limit_hit", limit_hit)
    if sandbox_claim_s is not None:
        span.set_attribute("agentrun.tool.sandbox_claim_s", sandbox_claim_s)
    if exec_s is not None:
        span.set_attribute("agentrun.tool.exec_s", exec_s)
    if error_type:
        span.set_attribute("error.type", error_type)
    if not ok:
        span.set_status(Status(StatusCode.ERROR, error_type or "tool failed"))
    if result is not None and _capture() is not None:
        span.set_attribute("gen_ai.tool.call.result", _content(result, redactor))


def finished_spans_by_trace(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    """Group spans by trace id (hex): a small helper for tests and debugging."""
    grouped: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        if span.context is not None:
            grouped.setdefault(format(span.context.trace_id, "032x"), []).append(span)
    return grouped
