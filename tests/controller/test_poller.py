"""The poller reads an agent's answer whole, within the size limit, however it is framed.

An HTTP server on loopback plays the agent byte by byte: it writes a scripted
answer in pieces with pauses, declares lengths it does not keep, or never ends, so
each framing a real network or a broken agent produces is met on a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from prometheus_client import REGISTRY

from dra_driver.controller.agents import AgentState, refresh
from dra_driver.controller.poller import Poller
from dra_driver.models import MAX_INVENTORY_BYTES
from tests.models.test_inventory import gpu, inventory

BODY = json.dumps(inventory(nodeName="gpu-node-1", gpus=[gpu(i) for i in range(8)])).encode()
HOLD = "hold"
"""A step that keeps the connection open without writing, until the client leaves."""


@dataclass
class ScriptedAgent:
    """Answers every request with ``steps``: bytes to write, pauses (floats), or HOLD."""

    steps: Sequence[bytes | float | str]
    requests: list[bytes] = field(default_factory=list)
    abandoned: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            for step in self.steps:
                if isinstance(step, bytes):
                    writer.write(step)
                    await writer.drain()
                elif isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    await reader.read()  # returns once the client closed its end
                    self.abandoned.set()
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.abandoned.set()
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def agent_at(agent: ScriptedAgent) -> AsyncIterator[str]:
    server = await asyncio.start_server(agent.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def head(*headers: str, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\n{''.join(h + chr(13) + chr(10) for h in headers)}\r\n".encode()


def pieces(body: bytes, *, size: int, pause: float) -> list[bytes | float]:
    steps: list[bytes | float] = []
    for start in range(0, len(body), size):
        steps += [body[start : start + size], pause]
    return steps


def chunked(body: bytes, *, size: int, pause: float) -> list[bytes | float]:
    steps: list[bytes | float] = []
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        steps += [f"{len(piece):x}\r\n".encode() + piece + b"\r\n", pause]
    return [*steps, b"0\r\n\r\n"]


def rejected(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "gvirtus_dra_controller_inventories_rejected_total", {"reason": reason}
    )
    return value or 0.0


async def poll_once(url: str) -> tuple[AgentState, bool]:
    poller = Poller(timeout=30, concurrency=1)
    state = AgentState(node="gpu-node-1", url=url, host_ip="10.0.0.5", seen_at=0.0)
    try:
        return state, await refresh(state, poller=poller, clock=time.monotonic)
    finally:
        await poller.close()


@pytest.mark.parametrize(
    "steps",
    [
        [head(f"Content-Length: {len(BODY)}"), *pieces(BODY, size=500, pause=0.05)],
        [head("Transfer-Encoding: chunked"), *chunked(BODY, size=700, pause=0.05)],
        [head("Connection: close"), *pieces(BODY, size=1000, pause=0.05)],
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_a_body_arriving_in_pieces_is_read_whole(steps: list[bytes | float]) -> None:
    agent = ScriptedAgent(steps)
    before = sum(rejected(r) for r in ("invalid", "too-large"))
    async with agent_at(agent) as url:
        state, changed = await poll_once(url)

    assert (changed, state.error, state.failing_since) == (True, "", None)
    assert state.inventory is not None and len(state.inventory.gpus) == 8
    assert sum(rejected(r) for r in ("invalid", "too-large")) == before


@pytest.mark.parametrize(
    ("steps", "error"),
    [
        pytest.param(
            [head(f"Content-Length: {MAX_INVENTORY_BYTES * 4}"), b"{", HOLD],
            f"rejected its inventory: inventory of {MAX_INVENTORY_BYTES * 4} bytes exceeds "
            f"the limit of {MAX_INVENTORY_BYTES}",
            id="declared-too-large",
        ),
        pytest.param(
            [
                head("Transfer-Encoding: chunked"),
                *[b"10000\r\n" + b" " * 0x10000 + b"\r\n"] * 64,
                HOLD,
            ],
            "rejected its inventory: inventory of more than "
            f"{MAX_INVENTORY_BYTES} bytes exceeds the limit of {MAX_INVENTORY_BYTES}",
            id="chunked-past-the-limit",
        ),
    ],
)
async def test_a_body_over_the_limit_is_refused_without_reading_it_all(
    steps: list[bytes | float | str], error: str
) -> None:
    agent = ScriptedAgent(steps)
    before = rejected("too-large")
    async with agent_at(agent) as url:
        state, changed = await poll_once(url)
        await asyncio.wait_for(agent.abandoned.wait(), 30)

    assert (changed, state.inventory, state.error) == (False, None, error)
    assert rejected("too-large") == before + 1


async def test_a_body_cut_short_is_a_transport_failure_not_an_invalid_inventory() -> None:
    agent = ScriptedAgent([head(f"Content-Length: {len(BODY)}"), BODY[:1000]])
    before = rejected("invalid")
    async with agent_at(agent) as url:
        state, changed = await poll_once(url)

    assert (changed, state.inventory) == (False, None)
    assert state.error.startswith("ClientPayloadError"), state.error
    assert rejected("invalid") == before


async def test_an_unchanged_inventory_costs_a_304_and_keeps_the_last_one() -> None:
    first = ScriptedAgent([head(f"Content-Length: {len(BODY)}", 'ETag: "v1"'), BODY])
    second = ScriptedAgent([head('ETag: "v1"', "Content-Length: 0", status="304 Not Modified")])
    poller = Poller(timeout=30, concurrency=1)
    try:
        async with agent_at(first) as url:
            state = AgentState(node="gpu-node-1", url=url, host_ip="10.0.0.5", seen_at=0.0)
            assert await refresh(state, poller=poller, clock=time.monotonic) is True
        async with agent_at(second) as url:
            state.url = url
            assert await refresh(state, poller=poller, clock=time.monotonic) is False
    finally:
        await poller.close()

    assert b'if-none-match: "v1"' in second.requests[0].lower()
    assert state.inventory is not None and len(state.inventory.gpus) == 8
    assert (state.error, state.failing_since) == ("", None)
