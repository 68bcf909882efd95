"""Deployment configuration, read once at the edges (worker, API lifespan, CLI).

Every setting is an environment variable with the `AGENTRUN_` prefix. Nothing reads
the environment at import time: call :func:`load_settings` where the process starts
and inject what it returns.

Design (why it looks like this):

* **Each field's docstring is its documentation.** `docs/configuration.md` is
  generated from this class (`python -m agentrun.config_docs`), and a test fails
  when a field has no docstring or the committed reference is out of date.
* **Settings that only make sense together are checked together** (`_coherent`): a
  sandbox default over its maximum, or a `/tmp` as large as the memory it counts
  against, would otherwise pass start-up and then fail every run, blaming the run.
  The message names both variables and their values.

This module must not: read the environment outside :func:`load_settings`, or print a
secret's value (errors show `<hidden>` for keys and secrets).
"""

from __future__ import annotations

import json
import os
import re
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agentrun.contracts import NAME_PATTERN
from agentrun.webhook_destinations import allow_list_host

DEFAULT_STATE_DIR = Path(".state")
DEFAULT_MAX_TOOL_CALLS_PER_TURN = 32
"""`AGENTRUN_MAX_TOOL_CALLS_PER_TURN` when unset (also the activity's default)."""


_PAIRS: tuple[tuple[str, str, bool, str, str], ...] = (
    *(
        (
            f"sandbox_{r}",
            f"sandbox_max_{r}",
            True,
            "above",
            "lower the default or raise the maximum (every run asking for nothing would "
            "be refused)",
        )
        for r in ("memory_mb", "cpus", "pids", "workspace_mb")
    ),
    (
        "sandbox_tmp_mb",
        "sandbox_memory_mb",
        False,
        "not below",
        "the sandbox's tmpfs is memory, so a run filling it would be killed for memory "
        "before the tmpfs size applies; make it smaller",
    ),
)
"""Settings that must hold together: (lower, upper, may be equal, relation, fix)."""


class _ModelPrice(BaseModel):
    """One model's price in `AGENTRUN_PRICE_TABLE` (`accounts.usage.ModelPrice`)."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)


_PRICES = TypeAdapter(dict[str, _ModelPrice])


class ConfigError(Exception):
    """Configuration is invalid; the message says which variable and how to fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENTRUN_", extra="ignore", use_attribute_docstrings=True
    )

    # Temporal
    temporal_address: str = "127.0.0.1:7233"
    """Temporal frontend, `host:port`."""
    temporal_namespace: str = "default"
    """Temporal namespace the runs live in."""
    task_queue: str = "agentrun"
    """Task queue the worker polls and the API starts runs on."""

    # Worker
    max_concurrent_activities: int = Field(default=20, ge=1, le=10_000)
    """Activity slots per worker, and as many local activity slots (tool calls' first
    attempts: `AGENTRUN_LOCAL_TOOL_CALL_SECONDS`); sandbox calls run in twice as many
    threads, one per slot."""
    max_concurrent_workflow_tasks: int = Field(default=20, ge=1, le=10_000)
    """Workflow task slots per worker."""
    local_tool_call_seconds: float = Field(default=2.0, ge=0, le=5)
    """A sandbox tool call (and a denied one's answer) first runs as a Temporal local
    activity, inside the workflow task that asked for it: one server round trip and one
    workflow task less per step. A call still running after this long is handed to a
    normal activity, which re-attaches to it in the sandbox (a call id runs once). Set
    at launch, in the run's input; 0: every call is a normal activity. At most 5 s: a
    workflow task waits on it (Temporal's workflow task timeout is 10 s)."""
    max_cached_workflows: int = Field(default=1000, ge=0)
    """Runs the worker keeps in memory between their tasks (Temporal's sticky cache);
    a run beyond it is replayed from history when it goes on: less memory per waiting
    run, more CPU when it wakes. 0 turns the cache off."""
    worker_deployment_name: str | None = Field(default=None, min_length=1, max_length=200)
    """Temporal worker versioning: the Worker Deployment this worker belongs to (with
    `AGENTRUN_WORKER_BUILD_ID`). Unset: an unversioned worker, which serves any run.
    Set: a run stays on the build it started on (pinned) until it ends, so a new
    build rolls out while old runs finish on the old code (README, "Stopping and
    upgrading workers"); the build serves runs once it is made the deployment's
    current version (`temporal worker deployment set-current-version`)."""
    worker_build_id: str | None = Field(default=None, min_length=1, max_length=200)
    """The build of this worker's code in `AGENTRUN_WORKER_DEPLOYMENT_NAME` (a release
    tag or a commit): workers with the same build id run the same code."""
    worker_drain_seconds: float = Field(default=60.0, ge=0, le=3600)
    """On SIGTERM or SIGINT the worker stops taking tasks and gives the activities it
    is running (a model call, a tool call in the sandbox) this long to finish, then
    cancels what is left, which Temporal retries on another worker (a tool call already
    started in the sandbox is reattached there, not run again). A second signal stops
    it at once. Whatever stops workers must wait longer before it kills them:
    Kubernetes' `terminationGracePeriodSeconds`, Compose's `stop_grace_period`."""
    continue_as_new_after_steps: int = Field(default=200, ge=1)
    """Continue-as-new after this many steps even if the SDK does not suggest it yet."""
    max_tool_calls_per_turn: int = Field(default=DEFAULT_MAX_TOOL_CALLS_PER_TURN, ge=1, le=1000)
    """Tool calls one model reply may make; the rest are refused (the model is told).
    A run may ask for fewer (`limits.max_tool_calls_per_turn`), never more: each call
    costs ~6 history events, and Temporal fails a run at 51,200."""

    # State and artifacts
    state_dir: Path = DEFAULT_STATE_DIR
    """Local state: the dev stack's Temporal database and logs, artifacts, deltas."""
    artifact_dir: Path | None = None
    """Root of the local artifact store; defaults to `<state_dir>/artifacts`. The API
    and the workers must share it."""
    delta_dir: Path | None = None
    """Where model token deltas are logged; defaults to `<state_dir>/deltas`. The API
    and the workers must share it, as they share the artifact directory."""
    delta_store: Literal["local", "redis"] = "local"
    """Where live model token deltas go between a worker and the API servers: `local`
    (files in `AGENTRUN_DELTA_DIR`, shared by every process: one machine) or `redis`
    (Redis Streams at `AGENTRUN_REDIS_URL`, for workers and API servers on different
    hosts; Redis 7.0 or later)."""
    redis_url: str | None = Field(default=None, repr=False)
    """The Redis server of `AGENTRUN_DELTA_STORE=redis`: `redis://[user:password@]host:6379/0`,
    `rediss://…` for TLS, or `unix:///path/redis.sock`. The API and every worker use the same."""
    delta_retention_seconds: int = Field(default=86_400, ge=60, le=30 * 86_400)
    """Redis delta store: a step's stream expires this long after its last delta, so a
    finished run's deltas are gone this long after its last model call (the durable
    events and the conversation stay). Longer than the longest pause of a run whose
    deltas a client may still replay."""

    # Artifact storage backend (`store/backends.py`)
    artifact_store: Literal["local", "s3"] = "local"
    """Where blobs live (conversation, event segments, tool output, artifacts): `local`
    (`AGENTRUN_ARTIFACT_DIR`, shared by the API and the workers on one machine) or
    `s3` (an S3-compatible bucket: AWS S3, SeaweedFS, MinIO; then nothing reads the
    local artifact directory, and workers and API servers may run on any host)."""
    artifact_legacy_reads: bool = True
    """A tenant's blob missing from its own prefix is also looked for where blobs were
    written before tenant prefixes (`<artifact_dir>/ab/cd/…`, `<s3_prefix>blobs/…`), so
    runs and artifacts from before still read. Writes never go there. Turn it off
    when the deployment has no such blobs (new, or retired them): a miss then costs
    one lookup instead of two, and no tenant reads the shared unscoped area."""
    s3_endpoint: str | None = None
    """S3 store: the endpoint URL (`http://seaweedfs:8333`); unset: AWS S3 in
    `AGENTRUN_S3_REGION`. With an endpoint, buckets are addressed as paths."""
    s3_bucket: str | None = None
    """S3 store: the bucket (created by the operator; agentrun never creates it).
    Needs GetObject, PutObject and the multipart upload permissions."""
    s3_region: str = "us-east-1"
    """S3 store: the region to sign requests for."""
    s3_prefix: str = "agentrun/"
    """S3 store: key prefix, so deployments can share a bucket; a tenant's blobs go
    under `<prefix>tenants/<tenant>/blobs/<d[:2]>/<d[2:4]>/<sha256>`."""
    s3_access_key_id: str | None = Field(default=None, repr=False)
    """S3 store: access key id. Unset (with the secret): boto3's own chain (`AWS_*`
    variables, shared config, an instance or pod role)."""
    s3_secret_access_key: str | None = Field(default=None, repr=False)
    """S3 store: secret access key (never logged)."""
    s3_multipart_threshold_mb: int = Field(default=8, ge=5)
    """S3 store: blobs at least this large (MiB) are uploaded in parts of this size
    (S3's smallest part is 5 MiB)."""
    database_url: str | None = Field(default=None, repr=False)
    """The accounts database (tenants, API keys, usage, audit trail), a SQLAlchemy URL:
    `postgresql://user:password@host/agentrun` in production (psycopg 3); unset, the
    SQLite file `<state_dir>/agentrun.db`. The API and the workers must share it."""

    # Payload encryption
    payload_encryption: bool = True
    """Encrypt every Temporal payload (inputs, results, memos, failure messages) with
    AES-256-GCM before it reaches the Temporal server (`on`/`off`). Every worker and
    API of a deployment must agree; payloads written unencrypted stay readable."""
    payload_keys_file: Path | None = None
    """The payload key file (JSON, mode 0600: `{"current": id, "keys": {id: base64}}`,
    docs/api.md, "Payload encryption"), shared by every worker and API. Unset:
    `<state_dir>/payload-keys.json`, created with one new key on first start; a file
    named here is never created."""
    codec_cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8233", "http://localhost:8233"]
    )
    """Browser origins (comma-separated) allowed to call the codec server routes
    (`/codec/encode`, `/codec/decode`) cross-site: the Temporal Web UI's. The default
    is the dev server's UI; these origins reach nothing else."""

    # Secret store (`secretstore`)
    secret_backend: Literal["embedded", "vault"] = "embedded"  # noqa: S105 (a backend's name)
    """Where tenants' secrets live: `embedded` (AES-256-GCM ciphertext in the accounts
    database, key from `AGENTRUN_SECRETS_KEY` or its key file) or `vault` (a
    HashiCorp Vault or OpenBao server's KV v2 engine, `AGENTRUN_VAULT_*`)."""
    secrets_key: str | None = Field(default=None, repr=False)
    """Embedded backend: the AES-256 key, base64 of 32 random bytes. Unset, the key
    file is used (created once). The API and every worker need the same key."""
    secrets_key_file: Path | None = None
    """Embedded backend: file holding the base64 key (mode 0600; a file others may
    read is refused); created on first use when missing. Defaults to
    `<state_dir>/secrets.key`."""
    vault_addr: str = "http://127.0.0.1:8200"
    """Vault backend: the server's address (`https://vault.example.com:8200`)."""
    vault_token: str | None = Field(default=None, repr=False)
    """Vault backend: a token (token auth). Unset: AppRole auth with
    `AGENTRUN_VAULT_ROLE_ID` and `AGENTRUN_VAULT_SECRET_ID`."""
    vault_role_id: str | None = Field(default=None, repr=False)
    """Vault backend, AppRole auth: the role id."""
    vault_secret_id: str | None = Field(default=None, repr=False)
    """Vault backend, AppRole auth: the secret id."""
    vault_approle_mount: str = "approle"
    """Vault backend, AppRole auth: where the AppRole auth method is mounted."""
    vault_mount: str = "secret"
    """Vault backend: the KV version 2 mount; secrets live at
    `<mount>/data/agentrun/<tenant>/<name>` (grant agentrun's policy
    `<mount>/data/agentrun/*` and `<mount>/metadata/agentrun/*`)."""
    vault_namespace: str | None = None
    """Vault backend: a Vault Enterprise / OpenBao namespace, if any."""
    vault_ca_cert: Path | None = None
    """Vault backend: CA certificate (PEM) to verify the server with, when it is not
    signed by a public CA."""
    vault_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    """Vault backend: timeout of one request to the server."""

    # Models
    default_provider: Literal["openai", "anthropic", "scripted"] = "openai"
    """Provider of runs whose spec says `model.provider = "default"`."""
    default_model: str = "smollm2-135m-instruct"
    """Model name for runs on the default provider whose spec names none."""
    model_stream: bool = True
    """Ask providers for streamed replies and log their token deltas for SSE clients."""
    openai_base_url: str = "http://127.0.0.1:8081/v1"
    """OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server …); when
    unset, `OPENAI_BASE_URL`, then the embedded model."""
    openai_api_key: str | None = Field(default=None, repr=False)
    """Key for the OpenAI-compatible endpoint; when unset, `OPENAI_API_KEY`, but only
    for OpenAI's own URL or one from `OPENAI_BASE_URL` (never sent elsewhere)."""
    openai_api_key_secret: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    """Name of a secret of the system tenant (`AGENTRUN_DEV_TENANT`) in the secret
    store holding the OpenAI-compatible key; read by the worker at start, it takes
    the place of `openai_api_key` (so the key lives in the store, not in the
    environment). Restart the worker after rotating it."""
    openai_json_schema_tools: bool = True
    """Constrain output to the tool-call JSON schema (llama.cpp, vLLM) instead of native tools."""
    openai_schema_format: Literal["json_object", "json_schema"] = "json_object"
    """How the schema is sent when `openai_json_schema_tools` is on. `json_object` sends
    `{"type": "json_object", "schema": ...}` (llama-cpp-python's server, the embedded
    default; it rejects `json_schema`); `json_schema` sends OpenAI's structured-outputs
    form `{"type": "json_schema", "json_schema": {"name": ..., "schema": ...}}`
    (vLLM, Ollama, llama.cpp's C++ `llama-server`)."""
    tool_choice: Literal["auto", "required", "none"] = "auto"
    """Whether models must call a tool (`required`), may (`auto`) or may not (`none`),
    for runs whose `model.tool_choice` is unset."""
    anthropic_base_url: str = "https://api.anthropic.com"
    """Anthropic Messages API endpoint; when unset, `ANTHROPIC_BASE_URL`, then this."""
    anthropic_api_key: str | None = Field(default=None, repr=False)
    """Anthropic key; when unset, `ANTHROPIC_API_KEY` (same pairing rule as OpenAI's)."""
    anthropic_api_key_secret: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    """Name of a secret of the system tenant holding the Anthropic key (as
    `openai_api_key_secret`)."""
    model_timeout_seconds: float = Field(default=300.0, gt=0)
    """Timeout of one model call."""

    # Sandbox
    sandbox_image: str = "agentrun-sandbox:latest"
    """The default sandbox image (the one pool containers run)."""
    sandbox_image_allowlist: list[str] = Field(default_factory=list)
    """Further images runs may ask for (a JSON list)."""
    sandbox_runtime: str | None = None
    """e.g. `runsc` (gVisor) or `kata-runtime` when the host has it."""
    sandbox_pool_size: int = Field(default=2, ge=0, le=100)
    """Started, unassigned containers kept ready for a fast first tool call; 0 turns
    the pool off. Workers with the same pool size and sandbox defaults share a pool;
    others keep pools of their own."""
    sandbox_memory_mb: int = Field(default=512, ge=16)
    """Memory of a run's sandbox when its spec asks for none."""
    sandbox_max_memory_mb: int = Field(default=4096, ge=16)
    """Most memory a run may ask for; a run asking more is refused at launch (422)."""
    sandbox_cpus: float = Field(default=1.0, gt=0)
    """CPUs of a run's sandbox when its spec asks for none (at most the host's)."""
    sandbox_max_cpus: float = Field(default=2.0, gt=0)
    """Most CPUs a run may ask for; a run asking more is refused at launch (422)."""
    sandbox_pids: int = Field(default=256, ge=8)
    """Process limit of a run's sandbox when its spec asks for none."""
    sandbox_max_pids: int = Field(default=4096, ge=8)
    """Highest process limit a run may ask for; more is refused at launch (422)."""
    sandbox_workspace_mb: int = Field(default=1024, ge=1)
    """Workspace size of a run's sandbox when its spec asks for none."""
    sandbox_max_workspace_mb: int = Field(default=16384, ge=1)
    """Largest workspace a run may ask for; more is refused at launch (422)."""
    sandbox_allow_network: bool = False
    """Operator switch: without it, no run may ask for egress."""
    sandbox_keep_workspace: bool = False
    """Keep a run's workspace volume after it ends (runs may ask for it too); the
    janitor still removes it after `AGENTRUN_SANDBOX_RETENTION_HOURS`."""
    sandbox_retention_hours: float = Field(default=1.0, ge=0)
    """How long the janitor leaves the sandbox of an ended run (kept workspaces included)."""
    sandbox_idle_stop_seconds: float = Field(default=300.0, ge=0)
    """A run waiting for an approval, or paused, this long has its sandbox container
    stopped (its memory freed, the workspace kept) until it goes on; 0: never."""
    sandbox_janitor_seconds: float = Field(default=300.0, ge=0)
    """How often each worker sweeps its Docker host; 0 turns the janitor off."""
    sandbox_namespace: str = Field(default="agentrun", pattern=r"^[a-z0-9][a-z0-9.-]{0,30}$")
    """Prefix of sandbox container/volume names and value of their `agentrun.namespace`
    label; the janitor and the pool only touch their own namespace."""
    sandbox_output_store_bytes: int = Field(default=16 << 20, ge=4096)
    """Per stream, what a call's record keeps; a command writing more is killed (`output`)."""
    sandbox_tmp_mb: int = Field(default=64, ge=1)
    """Size of the sandbox's tmpfs `/tmp` (counts against the run's memory)."""
    sandbox_workspace_quota: Literal["loop", "off"] = "loop"
    """`loop`: each workspace is an ext4 image of its size on a loop device, so the
    kernel refuses writes past it (needs a root worker on the Docker host). `off`: no
    workspace size limit at all (for Docker Desktop or a remote engine). `loop` needs
    `losetup`, `mkfs.ext4` and `debugfs` on the worker's host; the worker checks at
    start that its engine mounts a probe workspace, and stops naming this setting
    when it cannot (README, "Remote sandbox hosts")."""
    sandbox_workspace_dir: Path | None = None
    """Where the workspace images live on the Docker host (sparse files, each at most
    its workspace's size); defaults to `<state_dir>/workspaces`."""

    # API
    api_host: str = "127.0.0.1"
    """Address the API listens on."""
    api_port: int = Field(default=8080, ge=1, le=65535)
    """Port the API listens on."""
    api_keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    """How long the API keeps an idle keep-alive connection open. Longer than any
    client pool or proxy keeps one idle (httpx 5 s, nginx upstream and cloud load
    balancers 60 s): a client reusing a connection the server closes at that same
    moment reads nothing back (`httpx.ReadError`)."""
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body the API reads; larger ones are refused with a 413."""
    webhook_secret: str | None = Field(default=None, repr=False)
    """HMAC-SHA256 key for webhook signatures (required when a run names a webhook)."""
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    """Exact host names webhooks may reach even when they resolve to non-public
    addresses (a JSON list; no wildcards). Public destinations need no entry."""
    webhook_allow_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    """Networks (CIDRs, a JSON list) whose non-public addresses webhooks may reach,
    e.g. `["10.20.0.0/16"]` for in-house receivers; tests list `127.0.0.1/32`."""
    egress_allow_hosts: list[str] = Field(default_factory=list)
    """Exact host names the egress broker may reach even when they resolve to
    non-public addresses (a JSON list). Runs still need their own `egress` rule."""
    egress_allow_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    """Networks (CIDRs, a JSON list) whose non-public addresses the egress broker may
    reach, e.g. `["10.20.0.0/16"]` for in-house APIs; tests list `127.0.0.1/32`.
    Public destinations need no entry; runs still need their own `egress` rule."""
    egress_timeout_seconds: float = Field(default=30.0, gt=0, le=90)
    """Timeout of one request the egress broker makes for a tool (at most 90 s: the
    in-container proxy gives the broker 120 s to answer)."""
    egress_max_response_bytes: int = Field(default=8 << 20, ge=1024, le=64 << 20)
    """The largest response body the egress broker passes back to a tool (larger: 502);
    it travels to the sandbox over the attach stream, in 2 KiB frames."""
    dev_tenant: str = Field(default="default", pattern=NAME_PATTERN)
    """Tenant used when the API runs without API keys (local embedded default), and the
    system tenant the first start creates with the bootstrap admin key; its admins
    manage every tenant."""
    auth: Literal["keys", "off"] = "keys"
    """`keys`: every route but `/healthz` and `/readyz` needs an API key
    (`Authorization: Bearer ar_…`). `off`: no authentication, every caller acts in
    `AGENTRUN_DEV_TENANT`; for loopback-only development: the API refuses to start
    with it on a non-loopback `AGENTRUN_API_HOST`, and warns on every start."""
    api_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1", "[::1]"]
    )
    """Host names the API answers to (comma-separated; ports ignored): a request
    with any other `Host` header is refused (400), against DNS rebinding. Add the
    names clients and proxies use for the API."""
    api_cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Browser origins allowed to call the API cross-site (comma-separated, e.g.
    `https://ui.example.com`); none by default. A state-changing request whose
    `Origin` is not listed is refused (403)."""
    api_public_docs: bool = False
    """Serve the API's documentation (`/docs`, `/redoc`, `/openapi.json`) without a
    key, for reading it in a browser, which cannot send one. Off by default: like
    every route but the health checks, the pages need a key (`docs/api.md` documents
    the same API). They hold no run data either way."""
    api_rate_limit_per_minute: int = Field(default=600, ge=1)
    """Requests per minute each API key may make on average (counted per API process)."""
    api_rate_limit_burst: int = Field(default=120, ge=1)
    """Requests a key may make at once before the per-minute rate applies."""
    admin_key_file: Path | None = None
    """Where the first start writes the bootstrap admin key (mode 0600) and the CLI
    reads it; defaults to `<state_dir>/admin.key`."""
    price_table: str | None = None
    """Model prices for usage cost estimates, JSON in USD per million tokens:
    `{"gpt-4o": {"input": 2.5, "output": 10}}`; a model not listed costs 0."""
    api_query_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    """How long the API waits for a worker to answer a query before falling back to
    the run's recorded state."""
    api_update_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """How long the API waits for a control update (pause, approve …) to complete;
    past it the call answers 504."""
    api_sse_poll_seconds: float = Field(default=0.2, gt=0, le=10)
    """How often an SSE stream polls the run's `events` query for new events."""
    api_sse_keepalive_seconds: float = Field(default=15.0, gt=0, le=300)
    """Idle SSE streams send a comment line this often so proxies keep them open."""
    api_sse_shared_feed: bool = True
    """One events poller per followed run, shared by its SSE connections (`api.feed`);
    false gives every connection its own (the benchmark's baseline)."""
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object per log line (API, worker, uvicorn's access lines), with
    `trace_id`, `span_id`, `run_id` and `tenant` on every line (`null` when the line
    belongs to none); `text`: the classic line, those keys appended when known."""
    trace_content: bool = False
    """Put prompts, completions and tool results on trace spans (`gen_ai.input.messages`,
    `gen_ai.output.messages`, `gen_ai.tool.call.result`), redacted of the run's granted
    secrets and truncated. Off by default: a trace backend is often read by more people
    than a run's owner. Where traces go is set by the standard `OTEL_*` variables."""
    metrics_public: bool = False
    """Serve the API's Prometheus `/metrics` without a key, for a scraper on a private
    network. Off by default: it then needs an admin key of the system tenant. The
    series hold no tenant, run or user names, only the deployment's totals."""
    worker_metrics_host: str = "127.0.0.1"
    """Address of the worker's Prometheus endpoint; loopback by default (it has no
    authentication): bind `0.0.0.0` only where a scraper on the network must reach it."""
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    """Port of the worker's Prometheus endpoint (`http://<host>:<port>/metrics`: the
    worker's series and the Temporal SDK's `temporal_*`); 0 turns it off. A port in
    use is logged and skipped, the worker runs on."""

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        # Each pair passes field by field, then fails every run (blaming the run).
        problems = [
            f"{_var(low)}={_shown(getattr(self, low))} is {relation} "
            f"{_var(high)}={_shown(getattr(self, high))}: {fix}"
            for low, high, allow_equal, relation, fix in _PAIRS
            if getattr(self, low) > getattr(self, high)
            or (not allow_equal and getattr(self, low) == getattr(self, high))
        ]
        if (self.worker_deployment_name is None) != (self.worker_build_id is None):
            problems.append(
                f"{_var('worker_deployment_name')} and {_var('worker_build_id')} go together: "
                "set both for a versioned worker, or neither"
            )
        kept = 2 * self.sandbox_output_store_bytes  # stdout and stderr, in the workspace
        if kept >= self.sandbox_workspace_mb << 20:
            problems.append(
                f"{_var('sandbox_output_store_bytes')}={self.sandbox_output_store_bytes} keeps "
                f"up to {kept} bytes of each call's output (2 streams) in the workspace, "
                f"which {_var('sandbox_workspace_mb')}={self.sandbox_workspace_mb} cannot "
                "hold: lower the first or raise the second"
            )
        if self.artifact_store == "s3" and not self.s3_bucket:
            problems.append(f"{_var('artifact_store')}=s3 needs {_var('s3_bucket')}")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            problems.append(
                f"{_var('s3_access_key_id')} and {_var('s3_secret_access_key')} go together: "
                "set both, or neither (boto3's own credential chain)"
            )
        if self.secret_backend == "vault" and not (  # noqa: S105 (a backend's name)
            self.vault_token or (self.vault_role_id and self.vault_secret_id)
        ):
            problems.append(
                f"{_var('secret_backend')}=vault needs {_var('vault_token')}, or "
                f"{_var('vault_role_id')} and {_var('vault_secret_id')} (AppRole auth)"
            )
        if self.delta_store == "redis" and not (
            self.redis_url and self.redis_url.startswith(("redis://", "rediss://", "unix://"))
        ):
            problems.append(
                f"{_var('delta_store')}=redis needs {_var('redis_url')}: "
                "redis://host:6379/0, rediss://… (TLS) or unix:///path/redis.sock"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @field_validator("temporal_address")
    @classmethod
    def _address(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError("must be host:port, e.g. 127.0.0.1:7233")
        return value

    @field_validator("api_allowed_hosts", "api_cors_origins", "codec_cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # From the environment: `a,b` (or a JSON list, as the other list settings take).
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]

    @field_validator("api_allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        hosts = []
        for host in value:
            host = host.strip().lower()
            if host.startswith("[") and "]" in host:  # [::1]:8080 -> [::1]
                host = host[: host.index("]") + 1]
            elif host.count(":") == 1:  # example.com:8080 -> example.com
                host = host.split(":", 1)[0]
            if not host or "/" in host:
                raise ValueError(f"{host!r} is not a host name: list names like api.example.com")
            hosts.append(host)
        return hosts

    @field_validator("api_cors_origins", "codec_cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = [o.strip().rstrip("/") for o in value]
        bad = [o for o in origins if not re.fullmatch(r"https?://[^/\s*]+", o)]
        if bad:
            raise ValueError(
                f"{bad} are not origins: list each as scheme://host[:port], e.g. "
                "https://ui.example.com (no path, no wildcard)"
            )
        return origins

    @field_validator("price_table")
    @classmethod
    def _price_table(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _PRICES.validate_json(value)
            except ValidationError:
                raise ValueError(
                    'must be JSON like {"gpt-4o": {"input": 2.5, "output": 10}} '
                    "(USD per million input/output tokens, not negative)"
                ) from None
        return value

    @field_validator("webhook_allow_hosts", "egress_allow_hosts")
    @classmethod
    def _webhook_hosts(cls, value: list[str]) -> list[str]:
        return [allow_list_host(host) for host in value]

    @field_validator("webhook_allow_networks", "egress_allow_networks", mode="before")
    @classmethod
    def _webhook_networks(cls, value: object) -> object:
        # Host bits are forgiven (`10.0.0.1/8` means 10.0.0.0/8); a bare address is a /32.
        if not isinstance(value, list):
            return value
        networks: list[IPv4Network | IPv6Network] = []
        for item in value:
            try:
                networks.append(ip_network(item, strict=False))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{item!r} is not a network: write CIDRs like 10.20.0.0/16 or fd00::/8"
                ) from None
        return networks

    @property
    def artifacts_path(self) -> Path:
        return self.artifact_dir or (self.state_dir / "artifacts")

    @property
    def deltas_path(self) -> Path:
        return self.delta_dir or (self.state_dir / "deltas")

    @property
    def admin_key_path(self) -> Path:
        return self.admin_key_file or (self.state_dir / "admin.key")

    @property
    def payload_keys_path(self) -> Path:
        return self.payload_keys_file or (self.state_dir / "payload-keys.json")

    def allowed_images(self) -> list[str]:
        return [self.sandbox_image, *self.sandbox_image_allowlist]


def _var(field: str) -> str:
    return f"AGENTRUN_{field.upper()}"


def _shown(value: object) -> str:
    """A value as an operator writes it (`4`, not `4.0`)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def load_settings(**overrides: object) -> Settings:
    """Read and validate settings; raise :class:`ConfigError` with a readable message.

    One problem gives one line (`invalid configuration: AGENTRUN_X=…: why`), so a
    process that stops on it says so in one line.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if not field:  # a check across fields: its message names the variables
                lines.append(message)
                continue
            var = _var(field)
            shown = os.environ.get(var, "<unset>")
            if any(w in field for w in ("key", "secret", "token", "role_id")) or field == (
                "database_url"
            ):
                shown = "<hidden>"
            lines.append(f"{var}={shown}: {message}")
        if len(lines) == 1:
            raise ConfigError(f"invalid configuration: {lines[0]}") from None
        raise ConfigError(
            "invalid configuration:\n" + "\n".join(f"  {ln}" for ln in lines)
        ) from None
