"""Metrics: the series agentrun exports, the meter provider, and the Temporal SDK's own.

    metrics = install_metrics(resource)        # once per process (`telemetry.setup_telemetry`)
    instruments().tool_duration.record(0.4, {"tool": "shell", "outcome": "ok"})
    render_prometheus()                        # the /metrics body (API route, worker server)
    serve_prometheus("127.0.0.1", 9464)        # the worker's endpoint

Every series, where it is recorded, and its attributes (the OTel names use dots,
`agentrun.runs.finished`; the Prometheus exposition adds `_total` and the unit)::

    series (Prometheus name)              kind       attributes            recorded in
    agentrun_runs_started_total           counter    -                     workflow (1st run)
    agentrun_runs_finished_total          counter    status, reason        workflow, at its end
    agentrun_step_duration_seconds        histogram  -                     workflow, per step
    agentrun_approvals_requested_total    counter    -                     workflow
    agentrun_approval_wait_seconds        histogram  decision              workflow
    agentrun_approvals_pending            gauge      -                     API, per scrape
    agentrun_runs_launched_total          counter    outcome               API, per launch
    agentrun_model_duration_seconds       histogram  model, outcome        model router
    agentrun_model_tokens_total           counter    model, type           model router
    agentrun_tool_duration_seconds        histogram  tool, outcome         dispatch_tool
    agentrun_sandbox_pool_size            gauge      -                     sandbox pool
    agentrun_sandbox_claims_total         counter    source (pool, cold)   sandbox
    agentrun_sandbox_cold_starts_total    counter    -                     sandbox
    agentrun_sse_followers                gauge      -                     API (open streams)
    agentrun_webhook_deliveries_total     counter    outcome, error        deliver_webhook
    temporal_*                            (SDK's)    (SDK's)               Temporal runtime

The workflow's series also carry the SDK's `namespace`, `task_queue` and
`workflow_type`; `decision` is approved, denied or expired; `outcome` is `ok` or
an error type (model, tool), delivered, failed or refused (webhook), started,
queued or existing (a launch: `existing` is an idempotent repeat).

Design (why it looks like this):

* **The OpenTelemetry SDK is the one pipeline.** Instruments are created from the
  global meter (`opentelemetry.metrics.get_meter`): before :func:`install_metrics`
  runs they are proxies that bind to the provider once it is set, so a module may
  take its instruments at import. The provider has a Prometheus reader (pulled by
  `/metrics`) and, when the standard `OTEL_*` variables ask for it, an OTLP
  exporter; both see the same series.
* **Workflow code records only through `workflow.metric_meter()`**, the SDK's
  replay-safe meter (a replay after a worker crash records nothing twice). Those
  recordings, and the SDK's own `temporal_*` series, reach the Temporal runtime:
  :func:`temporal_runtime` gives it a `MetricBuffer` drained into this provider
  every second (and at each `/metrics` render), so they leave by the same readers.
* **No tenant in any attribute.** A scrape is one deployment's numbers; a tenant or
  run id label would leak who runs what to whoever reads `/metrics`, and would
  explode the series count. Per-tenant numbers are in `GET /v1/usage`.
* **Histograms of seconds** get explicit buckets from 5 ms to an hour (a view):
  the SDK's default buckets are milliseconds-shaped.

This module must not: label a series with a tenant, a run id, a user or any value a
tenant chose freely (a tool's name is the platform's; a model name is bounded by the
providers configured).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import Any
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_HISTOGRAM,
    BufferedMetric,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

__all__ = [
    "PROMETHEUS_CONTENT_TYPE",
    "SECONDS_BUCKETS",
    "Instruments",
    "MetricsSetup",
    "bounded",
    "drain_temporal_metrics",
    "install_metrics",
    "instruments",
    "metrics_setup",
    "record_model_call",
    "record_tool_call",
    "render_prometheus",
    "serve_prometheus",
    "temporal_runtime",
]

log = logging.getLogger("agentrun.telemetry")

METER_NAME = "agentrun"
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
"""Bucket bounds of every histogram in seconds: a tool exec, a model call, a step,
an approval wait (minutes to an hour) all fall inside."""
BUFFER_SIZE = 100_000
"""The Temporal runtime's metric buffer (updates between two drains, one per second)."""


@dataclass(frozen=True)
class Instruments:
    """The instruments recorded outside workflow code (activities, sandbox, API)."""

    model_duration: otel_metrics.Histogram
    model_tokens: otel_metrics.Counter
    tool_duration: otel_metrics.Histogram
    sandbox_pool_size: otel_metrics._Gauge
    sandbox_claims: otel_metrics.Counter
    sandbox_cold_starts: otel_metrics.Counter
    sse_followers: otel_metrics.UpDownCounter
    webhook_deliveries: otel_metrics.Counter
    approvals_pending: otel_metrics._Gauge
    runs_launched: otel_metrics.Counter


@cache
def instruments() -> Instruments:
    """The process's instruments (proxies until :func:`install_metrics` sets a provider)."""
    meter = otel_metrics.get_meter(METER_NAME)
    return Instruments(
        model_duration=meter.create_histogram(
            "agentrun.model.duration", unit="s", description="Model call latency by model"
        ),
        model_tokens=meter.create_counter(
            "agentrun.model.tokens", description="Tokens by model and type (input, output)"
        ),
        tool_duration=meter.create_histogram(
            "agentrun.tool.duration", unit="s", description="Tool call latency by tool"
        ),
        sandbox_pool_size=meter.create_gauge(
            "agentrun.sandbox.pool.size",
            description="Warm sandbox containers ready to claim (as this worker last saw them)",
        ),
        sandbox_claims=meter.create_counter(
            "agentrun.sandbox.claims",
            description="Sandboxes given to runs, by source (pool: warm, cold: created)",
        ),
        sandbox_cold_starts=meter.create_counter(
            "agentrun.sandbox.cold_starts",
            description="Sandboxes created for a run because the pool had none ready",
        ),
        sse_followers=meter.create_up_down_counter(
            "agentrun.sse.followers", description="Open event streams (SSE) on this API"
        ),
        webhook_deliveries=meter.create_counter(
            "agentrun.webhook.deliveries",
            description="Webhook delivery attempts by outcome (delivered, failed, refused)",
        ),
        approvals_pending=meter.create_gauge(
            "agentrun.approvals.pending",
            description="Runs waiting for an approval (a visibility count per scrape)",
        ),
        runs_launched=meter.create_counter(
            "agentrun.runs.launched",
            description="POST /v1/runs answers by outcome (started, queued, existing)",
        ),
    )


@dataclass
class MetricsSetup:
    """What :func:`install_metrics` built: the provider and the Prometheus registry."""

    provider: MeterProvider
    registry: CollectorRegistry
    servers: list[WSGIServer]

    def shutdown(self) -> None:
        for server in self.servers:
            server.shutdown()
        self.provider.shutdown()


_lock = threading.Lock()
_setup: MetricsSetup | None = None


def install_metrics(resource: Resource | None = None) -> MetricsSetup:
    """Build the meter provider once per process and make it the global one.

    Idempotent: a second call returns the first setup (tests build the API and a
    worker in one process; OpenTelemetry allows one global provider)."""
    global _setup
    with _lock:
        if _setup is not None:
            return _setup
        registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [PrometheusMetricReader(registry=registry)]
        readers += _otlp_readers()
        provider = MeterProvider(
            metric_readers=readers,
            resource=resource or Resource.create(),
            views=[
                View(
                    instrument_type=SdkHistogram,
                    instrument_name=pattern,
                    aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
                )
                for pattern in ("agentrun.*", "agentrun_*", "temporal_*")
            ],
        )
        otel_metrics.set_meter_provider(provider)
        _setup = MetricsSetup(provider=provider, registry=registry, servers=[])
        return _setup


def metrics_setup() -> MetricsSetup | None:
    """The installed setup, if :func:`install_metrics` ran in this process."""
    return _setup


def _otlp_readers() -> list[MetricReader]:
    """An OTLP exporter when the standard variables ask for one.

    `OTEL_METRICS_EXPORTER` (a comma list: `otlp`, `none`) decides; unset, metrics
    go out by OTLP when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
    `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`), and only by `/metrics` otherwise;
    `OTEL_SDK_DISABLED=true` turns it off. http/protobuf only, as for traces
    (`telemetry.tracing`); `OTEL_METRIC_EXPORT_INTERVAL` is read by the SDK."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = os.environ.get("OTEL_METRICS_EXPORTER")
    if names is None:
        configured = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
        )
        names = "otlp" if configured else "none"
    if "otlp" not in {name.strip().lower() for name in names.split(",")}:
        return []
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    if protocol != "http/protobuf":
        raise RuntimeError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: agentrun exports metrics over "
            "http/protobuf only; point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's "
            "HTTP receiver (port 4318) and unset the protocol"
        )
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return [PeriodicExportingMetricReader(OTLPMetricExporter())]


def render_prometheus() -> bytes:
    """The Prometheus text exposition of every series of this process."""
    setup = _setup or install_metrics()
    drain_temporal_metrics()
    return generate_latest(setup.registry)


def serve_prometheus(host: str, port: int) -> WSGIServer:
    """Serve `/metrics` (any path, as prometheus_client does) on a daemon thread.

    The worker's endpoint; bind a loopback address unless a scraper elsewhere must
    reach it (the series carry no tenant data, but nothing authenticates here)."""
    setup = _setup or install_metrics()
    server, _thread = start_http_server(port, addr=host, registry=setup.registry)
    setup.servers.append(server)
    return server


# ------------------------------------------------------------ Temporal runtime


class _RuntimeDrain:
    """Moves the runtime buffer's updates into OpenTelemetry instruments, every period.

    Not the SDK's `temporalio.contrib.opentelemetry.MetricsExporter`: it caches
    instruments and attribute sets by `id()` of the buffer's objects, which are freed
    and their ids reused when a metric is created per call (as `workflow.metric_meter()`
    instruments are, per workflow): a run's counter then landed on another series with
    another series' labels. Here instruments are keyed by name and kind, and each
    update's attributes are copied.
    """

    def __init__(self, buffer: MetricBuffer, provider: MeterProvider) -> None:
        self._buffer = buffer
        self._meter = provider.get_meter("temporalio")
        self._counters: dict[str, otel_metrics.Counter] = {}
        self._histograms: dict[str, otel_metrics.Histogram] = {}
        self._gauges: dict[str, otel_metrics._Gauge] = {}
        self._lock = threading.Lock()

    def drain(self) -> None:
        """Apply the buffered updates: each counter series once with its sum, each
        gauge series once with its last value, every histogram value.

        The SDK core reports every RPC and every slot change (thousands of updates
        a second under load); one OpenTelemetry call per update cost a fifth of a
        busy worker's CPU. Within one batch the buffer's objects are alive, so
        their ids are safe keys here (and only here)."""
        with self._lock:
            updates = self._buffer.retrieve_updates()
            sums: dict[tuple[int, int], float] = {}
            last: dict[tuple[int, int], float] = {}
            seen: dict[tuple[int, int], tuple[BufferedMetric, dict[str, Any]]] = {}
            attributes: dict[int, dict[str, Any]] = {}
            for update in updates:
                metric = update.metric
                key = (id(metric), id(update.attributes))
                if key not in seen:
                    found = attributes.get(key[1])
                    if found is None:
                        found = attributes[key[1]] = dict(update.attributes)
                    seen[key] = (metric, found)
                if metric.kind == BUFFERED_METRIC_KIND_COUNTER:
                    sums[key] = sums.get(key, 0) + update.value
                elif metric.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
                    self._histogram(metric).record(update.value, seen[key][1])
                else:
                    last[key] = update.value
            for key, total in sums.items():
                metric, labels = seen[key]
                self._counter(metric).add(total, labels)
            for key, value in last.items():
                metric, labels = seen[key]
                self._gauge(metric).set(value, labels)

    def _counter(self, metric: BufferedMetric) -> otel_metrics.Counter:
        found = self._counters.get(metric.name)
        if found is None:
            found = self._counters[metric.name] = self._meter.create_counter(
                metric.name, metric.unit or "", metric.description or ""
            )
        return found

    def _histogram(self, metric: BufferedMetric) -> otel_metrics.Histogram:
        found = self._histograms.get(metric.name)
        if found is None:
            found = self._histograms[metric.name] = self._meter.create_histogram(
                metric.name, metric.unit or "", metric.description or ""
            )
        return found

    def _gauge(self, metric: BufferedMetric) -> otel_metrics._Gauge:
        found = self._gauges.get(metric.name)
        if found is None:
            found = self._gauges[metric.name] = self._meter.create_gauge(
                metric.name, metric.unit or "", metric.description or ""
            )
        return found

    def run(self, period: float) -> None:
        while True:
            try:
                self.drain()
            except Exception:  # a bad update must not stop the drain for good
                log.exception("draining the Temporal runtime's metrics failed")
            time.sleep(period)


@dataclass
class _RuntimeHolder:
    runtime: Runtime
    drain: _RuntimeDrain


_runtime: _RuntimeHolder | None = None


def temporal_runtime(*, poll: timedelta = timedelta(seconds=1)) -> Runtime:
    """The process's Temporal runtime, its metrics drained into the meter provider.

    Clients connected with it (and the workers built on those clients) report the
    SDK's `temporal_*` series and every `workflow.metric_meter()` /
    `activity.metric_meter()` recording; the buffer is drained every `poll` on a
    daemon thread of its own, so no event loop has to own it.
    """
    global _runtime
    setup = _setup or install_metrics()
    with _lock:
        if _runtime is not None:
            return _runtime.runtime
        buffer = MetricBuffer(BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
        # No `service_name="temporal-core-sdk"` label: the provider's resource names
        # the service (`agentrun-worker`, `agentrun-api`) for every series alike.
        runtime = Runtime(telemetry=TelemetryConfig(metrics=buffer, attach_service_name=False))
        drain = _RuntimeDrain(buffer, setup.provider)
        threading.Thread(
            target=drain.run,
            args=(poll.total_seconds(),),
            name="temporal-metrics-drain",
            daemon=True,
        ).start()
        _runtime = _RuntimeHolder(runtime, drain)
        return runtime


def drain_temporal_metrics() -> None:
    """Move the runtime's buffered updates now (a scrape sees them at once)."""
    if _runtime is not None:
        _runtime.drain.drain()


# ------------------------------------------------------------ recording helpers

LABEL_VALUES_LIMIT = 64
"""Distinct values one attribute may take in this process before the rest read
`other`: a run chooses its model name (and a model its tool names), so without a
bound a caller could mint series at will."""

_seen: dict[str, set[str]] = {}


def bounded(attribute: str, value: str) -> str:
    """`value`, or `other` once `attribute` has had `LABEL_VALUES_LIMIT` others."""
    with _lock:
        seen = _seen.setdefault(attribute, set())
        if value in seen:
            return value
        if len(seen) >= LABEL_VALUES_LIMIT:
            return "other"
        seen.add(value)
        return value


def record_model_call(
    model: str, seconds: float, outcome: str, *, input_tokens: int = 0, output_tokens: int = 0
) -> None:
    """One model call: its latency by model and outcome (`ok` or the error type), and
    its tokens by model."""
    found = instruments()
    label = bounded("model", model)
    found.model_duration.record(seconds, {"model": label, "outcome": bounded("outcome", outcome)})
    if input_tokens:
        found.model_tokens.add(input_tokens, {"model": label, "type": "input"})
    if output_tokens:
        found.model_tokens.add(output_tokens, {"model": label, "type": "output"})


def record_tool_call(tool: str, seconds: float, outcome: str) -> None:
    """One tool call: its latency by tool and outcome (`ok`, `failed`, the error type)."""
    instruments().tool_duration.record(
        seconds, {"tool": bounded("tool", tool), "outcome": bounded("outcome", outcome)}
    )
