"""The container sandbox: one hardened, isolated environment per run.

`sandbox.base` is the interface the tool activities program against;
`sandbox.docker_sandbox.DockerSandbox` implements it on Docker (imported lazily by the
worker, so importing this package needs no Docker SDK).
"""
