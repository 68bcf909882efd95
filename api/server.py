"""Serving the API with uvicorn: the one place its server settings are made.

    python -m api.server [--host H] [--port P] [--log-level L]   # reads AGENTRUN_*
    uvicorn.Server(uvicorn_config(app, settings, port=port))    # tests: same settings

Design (why it looks like this):

* **Keep-alive outlives the clients' pools.** A client pool reuses an idle
  connection until its own expiry (httpx: 5 s; nginx upstreams and cloud load
  balancers: 60 s). uvicorn closes idle connections after 5 s by default: a
  client that reuses a connection at the moment the server closes it sends its
  request into a closing socket and reads nothing back (`httpx.ReadError`, or a
  502 from a proxy). The server must be the last to close, so its keep-alive is
  `AGENTRUN_API_KEEP_ALIVE_SECONDS` (75 s), longer than any of them.
* **No authentication only on loopback.** `AGENTRUN_AUTH=off` makes every caller
  an admin; :func:`uvicorn_config` refuses it (:class:`ConfigError`) on any
  address but a loopback one, whoever serves the API.
* **One config for every way the API is served** (the CLI, the dev stack, the
  container, the tests): a server started any other way would silently get
  uvicorn's defaults back.

This module must not: build the app's routes or read the environment anywhere
but :func:`main`.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from typing import Any

import uvicorn
from fastapi import FastAPI

from agentrun.config import ConfigError, Settings, load_settings
from api.app import create_app
from telemetry.logs import configure_logging, uvicorn_log_config

__all__ = ["is_loopback", "main", "uvicorn_config"]


def is_loopback(host: str) -> bool:
    """`localhost`, `127.0.0.0/8` or `::1` (brackets allowed); a name or `0.0.0.0` is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def uvicorn_config(
    app: FastAPI,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    **extra: Any,
) -> uvicorn.Config:
    """The uvicorn config the API is served with (`extra`: e.g. `log_level`).

    Raises :class:`ConfigError` for `AGENTRUN_AUTH=off` on a non-loopback address."""
    bind = host or settings.api_host
    if settings.auth == "off" and not is_loopback(bind):
        raise ConfigError(
            f"AGENTRUN_AUTH=off serves the API without authentication, which is allowed on a "
            f"loopback address only, not {bind!r}: bind 127.0.0.1 (AGENTRUN_API_HOST) or turn "
            "authentication back on (AGENTRUN_AUTH=keys)"
        )
    # uvicorn's lines (access lines included) in the API's format, with the trace,
    # run and tenant of the request they belong to (`telemetry.logs`).
    extra.setdefault("log_config", uvicorn_log_config(settings.log_format))
    return uvicorn.Config(
        app,
        host=bind,
        port=settings.api_port if port is None else port,
        timeout_keep_alive=settings.api_keep_alive_seconds,
        **extra,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the API from the environment's settings until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m api.server", description="Serve the agentrun REST API."
    )
    parser.add_argument("--host", help="default: AGENTRUN_API_HOST")
    parser.add_argument("--port", type=int, help="default: AGENTRUN_API_PORT")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    configure_logging(settings.log_format)
    try:
        config = uvicorn_config(
            create_app(settings), settings, host=args.host, port=args.port, log_level=args.log_level
        )
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
