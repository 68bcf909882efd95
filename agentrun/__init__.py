"""agentrun: a self-hosted, durable runtime platform for AI agents on Temporal.

This small package holds what every layer shares: the pydantic contracts, the
deployment settings and the command-line interface.
"""
