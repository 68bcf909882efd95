"""Which API key the CLI sends, and from where it came.

    --api-key ar_…  >  $AGENTRUN_API_KEY  >  the file $AGENTRUN_API_KEY_FILE
                    >  the dev stack's bootstrap key (<state dir>/admin.key; loopback APIs only)

Design (why it looks like this):

* **The key names the caller.** The API takes identity from the key alone, so
  the CLI sends `Authorization: Bearer <key>` and no `X-Agentrun-Actor` when it
  has one; `--on-behalf-of` names an end user for keys with the `act_as` scope.
* **Files holding a key must be private**, as ssh insists for its keys: a key
  file that the group or others may read (or write) is refused with the
  `chmod` that fixes it, rather than used, because whoever else could read it
  holds the same powers.
* **The bootstrap key never leaves the machine.** The dev stack's admin key
  (`<state dir>/admin.key`, found as the dev stack finds it: `AGENTRUN_ADMIN_KEY_FILE`,
  else `AGENTRUN_STATE_DIR`, else `.state`) is offered only to an API on a
  loopback address, so pointing `--api-url` at a remote server never sends it
  the local admin key.
* **A refusal says where the CLI looked** (`Credentials.looked_at`), so a 401
  tells the user which of the four places to fill.

This module must not: print, log or put a key's value into an error message, or
talk to the API.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cli.errors import EXIT_USAGE, CliError

API_KEY_ENV = "AGENTRUN_API_KEY"
API_KEY_FILE_ENV = "AGENTRUN_API_KEY_FILE"
ADMIN_KEY_FILE_ENV = "AGENTRUN_ADMIN_KEY_FILE"
STATE_DIR_ENV = "AGENTRUN_STATE_DIR"
DEFAULT_STATE_DIR = Path(".state")
"""`agentrun.config.DEFAULT_STATE_DIR`, without importing the settings (~40 ms)."""
ADMIN_KEY_NAME = "admin.key"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class Credentials:
    """The key to send (None: none found) and what a refusal should tell the user."""

    api_key: str | None
    source: str | None
    """Where `api_key` came from, e.g. `$AGENTRUN_API_KEY` or `the file /x/admin.key`."""
    looked_at: list[str] = field(default_factory=list)
    """Every place the CLI looked, in order (for the 401 hint)."""

    def __repr__(self) -> str:  # never the key itself
        return f"Credentials(source={self.source!r}, looked_at={self.looked_at!r})"


def bootstrap_key_file(environ: Mapping[str, str] | None = None) -> Path:
    """The dev stack's admin key file, resolved as `Settings.admin_key_file` resolves it."""
    env = os.environ if environ is None else environ
    if explicit := _env(env, ADMIN_KEY_FILE_ENV):
        return Path(explicit)
    state = _env(env, STATE_DIR_ENV)
    return (Path(state) if state else DEFAULT_STATE_DIR) / ADMIN_KEY_NAME


def resolve_credentials(
    flag: str | None, api_url: str, environ: Mapping[str, str] | None = None
) -> Credentials:
    """The key to send to `api_url`: the flag, the environment, a key file, the bootstrap key.

    Raises `CliError` (exit 2) for a key file others may read, or that is empty.
    """
    env = os.environ if environ is None else environ
    looked = ["--api-key", f"${API_KEY_ENV}"]
    if flag is not None and flag.strip():
        return Credentials(flag.strip(), "--api-key", looked[:1])
    if value := _env(env, API_KEY_ENV):
        return Credentials(value, f"${API_KEY_ENV}", looked)
    looked.append(f"${API_KEY_FILE_ENV}")
    if path := _env(env, API_KEY_FILE_ENV):
        file = Path(path)
        return Credentials(read_key_file(file), f"the file {file} (${API_KEY_FILE_ENV})", looked)
    bootstrap = bootstrap_key_file(env)
    if not is_loopback(api_url):
        looked.append(f"{bootstrap} (skipped: only sent to an API on 127.0.0.1/localhost)")
        return Credentials(None, None, looked)
    looked.append(str(bootstrap))
    if not bootstrap.is_file():
        return Credentials(None, None, looked)
    return Credentials(read_key_file(bootstrap), f"the file {bootstrap}", looked)


def read_key_file(path: Path) -> str:
    """The key in `path`, refused unless only its owner may read it (mode 0600 or 0400)."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CliError(
                f"refusing to use the API key in {path}: its mode is "
                f"{stat.S_IMODE(mode):04o}, so others on this machine may read it; "
                f"make it private with `chmod 600 {path}`",
                EXIT_USAGE,
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(
            f"cannot read the API key file {path}: {exc.strerror or type(exc).__name__}",
            EXIT_USAGE,
        ) from None
    key = text.strip()
    if not key or any(ch.isspace() for ch in key):
        raise CliError(
            f"the API key file {path} must hold one key (ar_…) and nothing else", EXIT_USAGE
        )
    return key


def is_loopback(api_url: str) -> bool:
    """Whether `api_url` names this machine (a loopback address or `localhost`)."""
    host = (urlsplit(api_url).hostname or "").lower()
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None
