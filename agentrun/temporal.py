"""Connecting to Temporal the one way every agentrun process does it.

Every client (API, worker, CLI, tests) must use the pydantic data converter, or
payloads written by one side cannot be read by the other; and every production
client (the API and the worker connect here) also the encrypting payload codec
(`agentrun.payload_codec`) unless `AGENTRUN_PAYLOAD_ENCRYPTION=off`. A worker and
the clients talking to it must share the codec and its key file: tests that build
their own clients either use :func:`data_converter` too or turn encryption off
for the processes they start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, Plugin
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime

from agentrun import search_attributes
from agentrun.config import Settings
from agentrun.payload_codec import encrypting_converter, load_key_ring


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic converter, with the encrypting codec unless encryption is off.

    Reads (on first use: creates) the payload key file; raises
    `agentrun.payload_codec.KeyFileError` saying how to fix a bad one."""
    if not settings.payload_encryption:
        return pydantic_data_converter
    return encrypting_converter(load_key_ring(settings))


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    plugins: Sequence[Plugin] = (),
) -> Client:
    """The production client. `runtime`: the process's Temporal runtime when its
    metrics are exported (`telemetry.metrics.temporal_runtime`); the SDK's default
    runtime (no metrics) otherwise. `plugins`: `telemetry.Telemetry.client_plugins()`,
    the SDK's OpenTelemetry plugin when tracing is on (workers built on this client
    inherit it; never add it to a worker as well, or every span doubles)."""
    converter = await asyncio.to_thread(data_converter, settings)  # reads the key file
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
        runtime=runtime,
        plugins=list(plugins),
    )


async def ensure_search_attributes(client: Client, namespace: str) -> list[str]:
    """Register agentrun's custom search attributes if missing; return those added."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    missing = {
        key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
        for key in search_attributes.ALL
        if key.name not in existing.custom_attributes
    }
    if missing:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    return sorted(missing)
