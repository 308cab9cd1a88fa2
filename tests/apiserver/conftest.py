"""An HTTPS client of the test API server, trusting its CA and holding its token."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.apiserver import APIServer


@pytest.fixture
async def http(apiserver: APIServer) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cadata=apiserver.ca_pem.decode())
    async with aiohttp.ClientSession(
        base_url=apiserver.url,
        headers={"Authorization": f"Bearer {apiserver.token}"},
        connector=aiohttp.TCPConnector(ssl=context),
    ) as session:
        yield session
    # TLS transports of streams closed mid-way finish closing on the next loop turns.
    await asyncio.sleep(0.05)
