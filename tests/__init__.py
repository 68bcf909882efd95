"""agentrun test suite."""
