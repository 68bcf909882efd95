"""The programs on top: the `agentrun` CLI, the dev stack and the embedded model launcher."""
