"""docker-compose.yml and its collector config hold together.

The compose deployment cannot be brought up here (no image registry), so what can
be checked without images is checked with the real tool: `docker-compose config`
(Debian's docker-compose, installed by scripts/setup.sh) must accept the file and
resolve it; then, on its resolved output:

* it refuses to start without the secrets it needs, naming them;
* the API and the worker send OTLP to a service of the file, on the port the
  collector's config (deploy/otel-collector.yaml) listens on, and the collector's
  trace pipeline exports to the trace viewer, another service of the file;
* every pipeline names only receivers, processors and exporters the config defines;
* every `AGENTRUN_*` variable the services set is a setting agentrun knows (a typo
  would be ignored silently at start-up);
* the search-attribute registration it documents lists exactly agentrun's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from agentrun import search_attributes
from agentrun.config import Settings
from agentrun.config_docs import env_var

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COLLECTOR = ROOT / "deploy" / "otel-collector.yaml"
REQUIRED = {"AGENTRUN_VAULT_TOKEN": "test-token-value", "AGENTRUN_WEBHOOK_SECRET": "s" * 32}


def _compose(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is missing: scripts/setup.sh installs it (Debian)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRUN_", "OTEL_"))}
    return subprocess.run(
        [tool, "-f", str(COMPOSE), "config"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    done = _compose(REQUIRED)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(COLLECTOR.read_text())
    return config


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_it_refuses_to_resolve_without_a_required_secret_naming_it(missing: str) -> None:
    done = _compose({k: v for k, v in REQUIRED.items() if k != missing})
    assert done.returncode != 0
    assert missing in done.stderr or "set a" in done.stderr, done.stderr


def test_the_services_a_deployment_needs_are_there(resolved: dict[str, Any]) -> None:
    services = set(resolved["services"])
    assert {"temporal", "postgresql", "openbao", "api", "worker"} <= services
    assert {"otel-collector", "jaeger"} <= services


@pytest.mark.parametrize("service", ["api", "worker"])
def test_api_and_worker_export_otlp_to_the_collector_service(
    resolved: dict[str, Any], collector: dict[str, Any], service: str
) -> None:
    env = resolved["services"][service]["environment"]
    target = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert target.hostname in resolved["services"]
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert target.port == int(http.rsplit(":", 1)[1])
    volumes = resolved["services"][target.hostname]["volumes"]
    assert any(str(COLLECTOR) in str(v) for v in volumes), volumes


def test_the_collector_sends_traces_to_the_trace_viewer_service(
    resolved: dict[str, Any], collector: dict[str, Any]
) -> None:
    exporters = collector["service"]["pipelines"]["traces"]["exporters"]
    hosts = {
        collector["exporters"][name]["endpoint"].rsplit(":", 1)[0]
        for name in exporters
        if "endpoint" in collector["exporters"][name]
    }
    assert hosts and hosts <= set(resolved["services"]), hosts
    viewer = resolved["services"]["jaeger"]
    assert viewer["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_every_pipeline_names_only_defined_components(collector: dict[str, Any]) -> None:
    for name, pipeline in collector["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], f"{name}: {kind} {component} undefined"


@pytest.mark.parametrize("service", ["api", "worker"])
def test_every_agentrun_variable_set_is_a_known_setting(
    resolved: dict[str, Any], service: str
) -> None:
    known = {env_var(name) for name in Settings.model_fields}
    used = {k for k in resolved["services"][service]["environment"] if k.startswith("AGENTRUN_")}
    assert used and used <= known, sorted(used - known)


def test_the_documented_search_attributes_are_agentruns() -> None:
    documented = dict(re.findall(r"(AgentRun\w+):(\w+)", COMPOSE.read_text()))
    expected = {key.name: search_attributes.index_kind(key) for key in search_attributes.ALL}
    assert documented == expected
