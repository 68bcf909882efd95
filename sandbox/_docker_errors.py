"""Docker failures translated into the sandbox's retry postures, in one place.

Every Docker call of the sandbox runs inside `docker_errors(what)`, so the activity
above sees only `SandboxUnavailable` (transient: retry) or `SandboxPolicyError`
(permanent: the operator or the run must change something), with the cause kept.

The table (`docker_errors` implements it, top to bottom):

    Docker answer                            raised               retried
    404 naming the image (`ImageNotFound`)   SandboxPolicyError   no: build it, fix the setting
    any other 404 (container, volume)        SandboxUnavailable   yes: it was removed meanwhile
    408, 409, 429, 5xx                       SandboxUnavailable   yes
    any other 4xx                            SandboxPolicyError   no
    no answer (socket, timeout)              SandboxUnavailable   yes

Why a container's 404 is transient: containers come and go under load (a run ends and
removes its own, the janitor removes what nobody needs, a pool container is claimed
and renamed), so a container that vanished between two Docker calls says nothing
about the run; looking it up again finds, claims or creates the right one. Only the
image's 404 is the operator's to fix. Code that can tell "gone" apart from failure
(a listing, a claim, a sweep) catches `NotFound` inside the block and skips it.

This module must not: swallow an error (callers catch the `NotFound` and 409
conflicts they expect *inside* the block), or retry anything itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker.errors
import requests.exceptions

from sandbox.base import SandboxPolicyError, SandboxUnavailable


def removal_raced(exc: docker.errors.APIError) -> bool:
    """Whether a failed removal means someone else removed the object (or is removing it).

    Docker answers 404 when it is gone and 409 when another removal is under way;
    either way the object is no one's any more, which is all a removal wanted. (Not for
    renames: there a 409 means the new name is taken.)
    """
    if isinstance(exc, docker.errors.ImageNotFound):
        return False
    return exc.status_code in (404, 409)


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
    except docker.errors.NotFound as exc:
        raise SandboxUnavailable(
            f"{what}: gone from Docker (404): {exc.explanation}; it was removed meanwhile "
            "and is looked up again on retry"
        ) from exc
    except docker.errors.APIError as exc:
        status = exc.status_code or 500
        if status >= 500 or status in (408, 409, 429):
            raise SandboxUnavailable(f"{what}: Docker error {status}: {exc.explanation}") from exc
        raise SandboxPolicyError(f"{what}: Docker refused ({status}): {exc.explanation}") from exc
    except (requests.exceptions.RequestException, docker.errors.DockerException, OSError) as exc:
        raise SandboxUnavailable(f"{what}: Docker engine unreachable: {exc}") from exc
