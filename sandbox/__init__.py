"""The container sandbox: one hardened, isolated environment per run."""
