"""The container sandbox: one hardened, isolated environment per run.

`sandbox.base` is the interface the tool activities program against;
`sandbox.docker_sandbox.DockerSandbox` implements it on Docker, configured by a
`sandbox.config.SandboxConfig` the worker builds (importing this package itself needs
no Docker SDK).
"""
