"""Every side effect of a run: model calls, tool calls, artifacts, webhooks."""
