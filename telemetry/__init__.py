"""Observability for every agentrun process: traces, metrics and correlated logs.

    telemetry = setup_telemetry("agentrun-worker", settings)   # once, at the edge
    client = await connect(settings, plugins=telemetry.client_plugins())
    instrument_app(app)                                         # the API (FastAPI + httpx)

What each part owns:

* `telemetry.tracing` — the replay-safe tracer provider, its exporters (from the
  standard `OTEL_*` variables), the Temporal SDK's OpenTelemetry plugin for clients
  and workers, the FastAPI and httpx instrumentations, and the span helpers the
  activities use (GenAI attributes on model calls, tool spans).
* `telemetry.metrics` — the meter provider, the Prometheus `/metrics` readers, the
  Temporal runtime whose SDK metrics join them.
* `telemetry.logs` — the JSON/text formatter carrying trace, span, run and tenant.

Design (why it looks like this):

* **One call per process, idempotent.** OpenTelemetry allows one global tracer and
  one global meter provider per process; tests build the API and workers in one
  process, so a second :func:`setup_telemetry` returns the first one's handles
  (the service name of the first call wins).
* **Configured by the standard variables, read by the SDK.** `OTEL_SERVICE_NAME`,
  `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_EXPORTER_OTLP_*`,
  `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`, `OTEL_SDK_DISABLED`. Nothing
  is exported unless they ask for it, so tests and a bare `agentrun dev` stay quiet.
* **Settings are passed in**, never read here from the environment by agentrun's
  own code (`AGENTRUN_LOG_FORMAT`, `AGENTRUN_TRACE_CONTENT` come in `settings`).

This package must not: import anything of the project but `agentrun` (it is a floor
every process's edge and the activities use), or start exporting at import time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from temporalio.runtime import Runtime

from agentrun.config import Settings
from telemetry import metrics, tracing
from telemetry.tracing import TracingSetup

__all__ = ["Telemetry", "current_telemetry", "setup_telemetry"]


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` installed in this process.

    `tracing` is always set (its `enabled` says whether spans leave the process);
    `metrics` is `telemetry.metrics.MetricsSetup` (part I) or None before it lands.
    """

    service: str
    resource: Resource
    tracing: TracingSetup
    metrics: Any = None
    extras: dict[str, Any] = field(default_factory=dict)

    def temporal_runtime(self) -> Runtime:
        """The Temporal runtime for clients: pass to `connect(..., runtime=)`. Its
        `temporal_*` series and the workflows' `workflow.metric_meter()` recordings
        join this process's metrics (`telemetry.metrics.temporal_runtime`)."""
        return metrics.temporal_runtime()

    def client_plugins(self) -> list[Any]:
        """Temporal client plugins: pass to `agentrun.temporal.connect(..., plugins=)`.

        The SDK's OpenTelemetry plugin when tracing is on (workers built on the
        client inherit it: never add it to the worker as well, or spans double);
        none when it is off, so a process without a collector pays nothing."""
        return tracing.client_plugins(self.tracing)


_lock = threading.Lock()
_installed: Telemetry | None = None


def setup_telemetry(service: str, settings: Settings) -> Telemetry:
    """Install tracing, metrics and logs for this process; return their handles.

    `service` is the default `service.name` (`agentrun-api`, `agentrun-worker`,
    `agentrun-cli`); `OTEL_SERVICE_NAME` overrides it, as the SDK does. Idempotent:
    later calls return the first call's :class:`Telemetry`."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over ours.
        resource = Resource.create({SERVICE_NAME: service})
        installed = Telemetry(
            service=service,
            resource=resource,
            tracing=tracing.install_tracing(resource, settings),
        )
        # Metrics: the meter provider (Prometheus reader, OTLP when asked). Logs are
        # configured by each process's entry point (`telemetry.logs.configure_logging`),
        # not here: tests build apps in a process whose log handlers are pytest's.
        installed.metrics = metrics.install_metrics(resource)
        _installed = installed
        return installed


def current_telemetry() -> Telemetry | None:
    """The process's telemetry if :func:`setup_telemetry` ran, else None."""
    return _installed
