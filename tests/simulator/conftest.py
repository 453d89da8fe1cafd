"""Shared fixtures: a running simulator and logged-in test clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import Any

import pytest
from simhelpers import BASE_CONFIG, GwsTestClient, MakeClient, StartSim

from batch_cancel.simulator import GwsSimulator


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Factory: ``await start_sim(faults=Faults(...), csrf=False)`` -> a running simulator."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> GwsSimulator:
            config = replace(BASE_CONFIG, **overrides)
            return await stack.enter_async_context(GwsSimulator(config))

        yield start


@pytest.fixture
async def sim(start_sim: StartSim) -> GwsSimulator:
    return await start_sim()


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Factory: ``await make_client(sim)`` -> a client that is logged in (and CometD-ready
    with ``ready=True``)."""
    clients: list[GwsTestClient] = []

    async def make(
        sim: GwsSimulator, *, ready: bool = False, user: str = "agent", password: str = "secret"
    ) -> GwsTestClient:
        client = GwsTestClient(sim, user, password)
        clients.append(client)
        if ready:
            await client.ready()
        else:
            await client.login()
        return client

    yield make
    await asyncio.gather(*(c.aclose() for c in clients))


@pytest.fixture
async def client(sim: GwsSimulator, make_client: MakeClient) -> GwsTestClient:
    return await make_client(sim, ready=True)
