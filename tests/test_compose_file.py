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
* the one-shot `temporal-setup` registers exactly agentrun's search attributes;
* every service a multi-host deployment needs is there, every long-running one has
  a restart policy and (where its image has a tool to run one) a health check, and
  every `depends_on` condition can be met;
* the worker scales (no fixed name or host port) and drains within its stop grace;
  the API and the worker share S3, Redis, the accounts database and the key file
  with identical values; the bucket, the database and the sandbox image they name
  are the ones the setup services create; the files it mounts from the checkout exist.
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
REQUIRED = {
    "AGENTRUN_VAULT_TOKEN": "test-token-value",
    "AGENTRUN_WEBHOOK_SECRET": "s" * 32,
    "AGENTRUN_S3_SECRET_ACCESS_KEY": "test-s3-secret",
}
NO_HEALTH_CHECK = {
    "otel-collector": "distroless image: no shell or client to run a check with",
    "jaeger": "distroless image: no shell or client to run a check with",
    "temporal-ui": "nothing depends on it; its state shows in the browser",
    "llm": "an optional profile; the model server's own image",
}
ONE_SHOT = {"temporal-setup", "s3-setup", "sandbox-image"}
SHARED = (
    "AGENTRUN_TEMPORAL_ADDRESS",
    "AGENTRUN_TASK_QUEUE",
    "AGENTRUN_DATABASE_URL",
    "AGENTRUN_PAYLOAD_KEYS_FILE",
    "AGENTRUN_ARTIFACT_STORE",
    "AGENTRUN_S3_ENDPOINT",
    "AGENTRUN_S3_BUCKET",
    "AGENTRUN_S3_ACCESS_KEY_ID",
    "AGENTRUN_S3_SECRET_ACCESS_KEY",
    "AGENTRUN_DELTA_STORE",
    "AGENTRUN_REDIS_URL",
    "AGENTRUN_SECRET_BACKEND",
    "AGENTRUN_VAULT_ADDR",
)
"""What every API server and worker must agree on (README, "Many workers")."""


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
    assert {"temporal", "temporal-ui", "temporal-setup", "postgresql", "openbao"} <= services
    assert {"seaweedfs", "s3-setup", "redis", "sandbox-image", "api", "worker"} <= services
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


def test_the_setup_service_registers_exactly_agentruns_search_attributes(
    resolved: dict[str, Any],
) -> None:
    setup = resolved["services"]["temporal-setup"]
    listed = dict(a.split(":") for a in setup["environment"]["SEARCH_ATTRIBUTES"].split())
    expected = {key.name: search_attributes.index_kind(key) for key in search_attributes.ALL}
    assert listed == expected
    assert "search-attribute create" in " ".join(setup["command"])
    # The comment above the service says the same.
    documented = dict(re.findall(r"(AgentRun\w+):(\w+)", COMPOSE.read_text()))
    assert documented == expected


def _long_running(resolved: dict[str, Any]) -> list[str]:
    return [name for name in resolved["services"] if name not in ONE_SHOT]


def test_every_long_running_service_restarts_and_is_health_checked(
    resolved: dict[str, Any],
) -> None:
    for name in _long_running(resolved):
        service = resolved["services"][name]
        assert service.get("restart") in ("always", "unless-stopped"), name
        if name not in NO_HEALTH_CHECK:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name in ONE_SHOT:  # one-shot services must not be restarted once done
        assert resolved["services"][name].get("restart", "no") == "no", name


def test_every_dependency_condition_can_be_met(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    for name, service in services.items():
        for target, how in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = how["condition"]
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name}: {target} has no check"
            elif condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{name}: {target} never completes"


def test_the_worker_scales_and_drains_within_its_stop_grace(resolved: dict[str, Any]) -> None:
    worker = resolved["services"]["worker"]
    assert "container_name" not in worker and not worker.get("ports")
    drain = float(worker["environment"]["AGENTRUN_WORKER_DRAIN_SECONDS"])
    grace = worker["stop_grace_period"]
    grace_s = int(grace.rstrip("s")) if grace.endswith("s") else int(grace.rstrip("m")) * 60
    assert grace_s > drain, (grace, drain)


def test_api_and_worker_share_what_every_host_must_share(resolved: dict[str, Any]) -> None:
    api = resolved["services"]["api"]["environment"]
    worker = resolved["services"]["worker"]["environment"]
    for key in SHARED:
        assert api.get(key) is not None and api.get(key) == worker.get(key), key
    assert api["AGENTRUN_ARTIFACT_STORE"] == "s3" and api["AGENTRUN_DELTA_STORE"] == "redis"
    # The key file is the same secret in both.
    for name in ("api", "worker"):
        sources = [s["source"] for s in resolved["services"][name]["secrets"]]
        assert sources == ["payload-keys"], sources
    assert api["AGENTRUN_PAYLOAD_KEYS_FILE"] == "/run/secrets/payload-keys"


def test_the_stores_they_name_are_the_ones_the_setup_creates(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    env = services["api"]["environment"]
    # The bucket, created by s3-setup on the seaweedfs service the endpoint names.
    assert urlsplit(env["AGENTRUN_S3_ENDPOINT"]).hostname == "seaweedfs"
    assert f"-name {env['AGENTRUN_S3_BUCKET']}" in " ".join(services["s3-setup"]["command"])
    # The S3 identity: the access key in its config, the secret from the same variable.
    weed = services["seaweedfs"]
    assert f'"accessKey":"{env["AGENTRUN_S3_ACCESS_KEY_ID"]}"' in " ".join(weed["command"])
    assert weed["environment"]["S3_SECRET_KEY"] == env["AGENTRUN_S3_SECRET_ACCESS_KEY"]
    # The accounts database and its user, made by the init script PostgreSQL runs.
    url = urlsplit(env["AGENTRUN_DATABASE_URL"].replace("postgresql+psycopg", "postgresql"))
    init = (ROOT / "deploy" / "postgres-init.sql").read_text()
    assert f"CREATE DATABASE {url.path.lstrip('/')} OWNER {url.username};" in init
    assert f"CREATE USER {url.username} WITH PASSWORD '{url.password}';" in init
    assert url.hostname == "postgresql"
    # Redis and the sandbox image.
    assert urlsplit(env["AGENTRUN_REDIS_URL"]).hostname == "redis"
    image = services["worker"]["environment"]["AGENTRUN_SANDBOX_IMAGE"]
    assert services["sandbox-image"]["image"] == image
    dockerfile = Path(services["sandbox-image"]["build"]["context"]) / "Dockerfile"
    assert dockerfile.is_file(), dockerfile


def test_every_file_it_mounts_from_the_checkout_exists(resolved: dict[str, Any]) -> None:
    # docker-compose v1 resolves short-syntax binds to `/abs/source:target[:mode]`.
    mounted = [
        str(volume).split(":", 1)[0]
        for service in resolved["services"].values()
        for volume in service.get("volumes", [])
        if str(volume).startswith(str(ROOT / "deploy"))
    ]
    assert len(mounted) >= 3, mounted  # the collector, PostgreSQL and Temporal configs
    for source in mounted:
        assert Path(source).is_file(), source


@pytest.mark.docker
def test_the_app_image_build_context_is_what_its_dockerfile_copies(tmp_path: Path) -> None:
    """`.dockerignore` keeps the checkout's state out of the image build's context
    (the virtualenv, the models, a payload key file, a local state directory), and
    still sends every path the Dockerfile copies. Asked of the real Docker builder:
    a `FROM scratch` build copying the whole context, whose files are then listed."""
    for stray in ("payload-keys.json", "models/stray.gguf", ".agentrun/agentrun.db"):
        planted = ROOT / "deploy" / "__context_probe__" / stray
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_text("must not reach the build context")
    tag = f"agentrun-context-probe:{os.getpid()}"
    try:
        build = subprocess.run(
            ["docker", "build", "-q", "-t", tag, "-f", "-", str(ROOT)],
            input="FROM scratch\nCOPY . /context/\n",
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert build.returncode == 0, build.stderr
        created = subprocess.run(
            ["docker", "create", tag, "/none"], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            listing = subprocess.run(
                ["sh", "-c", f"docker export {created} | tar -t"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
        finally:
            subprocess.run(["docker", "rm", "-f", created], capture_output=True, check=False)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(ROOT / "deploy" / "__context_probe__")], check=False)
    sent = {p.removeprefix("context/").rstrip("/") for p in listing if p.startswith("context/")}
    copied = re.findall(r"^COPY (.+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    for source in " ".join(copied).split():
        assert source in sent, f"{source} is copied by the Dockerfile but not in the context"
    assert "agentrun/config.py" in sent
    for kept_out in (".venv", "models", "tests", "deploy", ".git", "docs"):
        assert not any(p == kept_out or p.startswith(f"{kept_out}/") for p in sent), kept_out
    assert not any(p.endswith(("payload-keys.json", ".gguf", ".db")) for p in sent), sent
