"""`dispatch_tool` on a real sandbox: what the model sees when a tool hits a limit.

Runs the activity through the SDK's `ActivityEnvironment` (a real activity context,
heartbeats included) with the real Docker sandbox and artifact store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from activities.tool_activities import ToolActivities
from agentrun.contracts import (
    DispatchToolInput,
    ErrorKind,
    SandboxPolicy,
    ToolCall,
    digest_of,
)
from sandbox.base import RunRef
from sandbox.docker_sandbox import DockerSandbox
from store.artifacts import LocalArtifactStore
from tests.sandbox_fixtures import docker_sandbox, run_ref, sandbox_config, sandbox_image

__all__ = ["docker_sandbox", "run_ref", "sandbox_config", "sandbox_image"]

pytestmark = pytest.mark.docker


def dispatch(
    sandbox: DockerSandbox, run: RunRef, store: LocalArtifactStore, name: str, **arguments: object
) -> object:
    raw = json.dumps(arguments).encode()
    digest = store.for_tenant(run.tenant_id).put(raw)
    assert digest == digest_of(raw)
    inp = DispatchToolInput(
        run_id=run.run_id,
        tenant_id=run.tenant_id,
        call=ToolCall(id="s1-c0", name=name, arguments_digest=digest),
        sandbox=SandboxPolicy(workspace_mb=8),
        timeout_seconds=60,
        max_output_bytes=4096,
    )
    return ActivityEnvironment().run(ToolActivities(sandbox, store).dispatch_tool, inp)


def test_a_file_larger_than_the_workspace_is_a_disk_error_the_model_sees(
    docker_sandbox: DockerSandbox, run_ref: RunRef, tmp_path: Path
) -> None:
    store = LocalArtifactStore(tmp_path / "artifacts")
    chunk = "x" * (4 << 20)  # the largest content one write_file takes; two overflow 8 MB
    first = dispatch(docker_sandbox, run_ref, store, "write_file", path="a.txt", content=chunk)
    assert first.ok is True  # type: ignore[attr-defined]
    result = dispatch(docker_sandbox, run_ref, store, "write_file", path="b.txt", content=chunk)
    # A tool error for the model to act on, not a failed activity that ends the run.
    assert result.ok is False  # type: ignore[attr-defined]
    assert result.error_type is ErrorKind.DISK  # type: ignore[attr-defined]
    assert result.message_digest is not None  # type: ignore[attr-defined]
    small = dispatch(docker_sandbox, run_ref, store, "write_file", path="ok.txt", content="fits")
    assert small.ok is True  # type: ignore[attr-defined]
