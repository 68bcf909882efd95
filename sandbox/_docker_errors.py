"""Docker failures translated into the sandbox's retry postures, in one place.

Every Docker call of the sandbox runs inside `docker_errors(what)`, so the activity
above sees only `SandboxUnavailable` (transient: retry) or `SandboxPolicyError`
(permanent: the operator or the run must change something), with the cause kept.

This module must not: swallow an error (callers catch the `NotFound` and 409
conflicts they expect *inside* the block), or retry anything itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker.errors
import requests.exceptions

from sandbox.base import SandboxPolicyError, SandboxUnavailable


@contextlib.contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Translate what Docker raises in the block; `what` names the step for the message."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise SandboxPolicyError(
            f"{what}: image not found ({exc.explanation}); build it with "
            "scripts/build-sandbox-image.sh or fix AGENTRUN_SANDBOX_IMAGE"
        ) from exc
    except docker.errors.APIError as exc:
        status = exc.status_code or 500
        if status >= 500 or status in (408, 409, 429):
            raise SandboxUnavailable(f"{what}: Docker error {status}: {exc.explanation}") from exc
        raise SandboxPolicyError(f"{what}: Docker refused ({status}): {exc.explanation}") from exc
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        raise SandboxUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc
