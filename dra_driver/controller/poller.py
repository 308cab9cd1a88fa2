"""Polling backend agents for their inventories, concurrently, each with a timeout.

Each agent keeps its last good inventory and when it last answered; one failure
is only a failure (the health verdict waits for the grace period). An answer is
read to its end (over a real network a body of a few kilobytes arrives in several
pieces), up to a size limit, validated whole, and must come from the node the
agent's pod runs on and name that pod's host IP as the backend address; anything
else is rejected with the reason logged, and the last good inventory stays. With
``If-None-Match`` an unchanged inventory costs a 304.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from prometheus_client import Counter, Histogram

from dra_driver.models import (
    INVENTORY_PATH,
    MAX_INVENTORY_BYTES,
    Inventory,
    InventoryError,
    parse_inventory,
)

log = logging.getLogger(__name__)

POLL_SECONDS = Histogram(
    "gvirtus_dra_controller_poll_duration_seconds",
    "Time to poll one agent, by outcome.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REJECTED = Counter(
    "gvirtus_dra_controller_inventories_rejected_total",
    "Agent answers rejected, by reason.",
    ["reason"],
)


@dataclass
class AgentState:
    """What the controller knows of one node's agent."""

    node: str
    url: str
    seen_at: float
    host_ip: str = ""
    """The agent pod's host IP: the only backend address its inventory may name."""
    inventory: Inventory | None = None
    etag: str | None = None
    answered_at: float | None = None
    failing_since: float | None = None
    error: str = ""

    def problem(self, *, now: float, grace: float) -> str:
        """Why the agent counts as gone (failing past ``grace``), or empty."""
        if self.failing_since is not None and now - self.failing_since >= grace:
            return f"agent not answering for {now - self.failing_since:.0f}s: {self.error}"
        return ""


class Poller:
    """Fetches inventories over one connection pool."""

    def __init__(self, *, timeout: float, concurrency: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.limit = asyncio.Semaphore(concurrency)
        # One kept-alive connection per agent: the pool is not capped, concurrency is,
        # so polling a thousand agents does not reconnect to most of them every round.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=60),
            timeout=self.timeout,
            trust_env=False,
        )

    async def close(self) -> None:
        """Close every connection."""
        await self.session.close()
        await asyncio.sleep(0)

    async def poll(self, state: AgentState) -> bool:
        """Refresh ``state``; return whether its inventory changed."""
        async with self.limit:
            return await self._poll(state)

    async def _poll(self, state: AgentState) -> bool:
        started = time.perf_counter()
        try:
            changed = await self._fetch(state)
        except (aiohttp.ClientError, OSError) as exc:
            self._failed(state, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            POLL_SECONDS.labels("unreachable").observe(time.perf_counter() - started)
            return False
        except InventoryError as exc:
            REJECTED.labels(_reason(exc)).inc()
            self._failed(state, f"rejected its inventory: {exc}")
            log.warning(
                "rejected the inventory of %s: %s", state.node, exc, extra={"agent": state.url}
            )
            POLL_SECONDS.labels("rejected").observe(time.perf_counter() - started)
            return False
        if state.failing_since is not None:
            log.info("agent of %s answers again", state.node)
        state.failing_since, state.error, state.answered_at = None, "", time.monotonic()
        POLL_SECONDS.labels("changed" if changed else "unchanged").observe(
            time.perf_counter() - started
        )
        return changed

    async def _fetch(self, state: AgentState) -> bool:
        headers = {"If-None-Match": state.etag} if state.etag and state.inventory else {}
        async with self.session.get(state.url + INVENTORY_PATH, headers=headers) as response:
            if response.status == 304:
                return False
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=response.reason or ""
                )
            inventory = parse_inventory(await read_body(response, limit=MAX_INVENTORY_BYTES))
            if inventory.node_name != state.node:
                where = f"the node its pod runs on ({state.node!r})"
                raise InventoryError(f"nodeName {inventory.node_name!r} is not {where}")
            if inventory.address != state.host_ip:
                where = f"the host IP of its pod ({state.host_ip or 'none yet'})"
                raise InventoryError(f"address {inventory.address} is not {where}")
            changed = inventory != state.inventory
            state.inventory, state.etag = inventory, response.headers.get("ETag")
            return changed

    def _failed(self, state: AgentState, error: str) -> None:
        if state.failing_since is None:
            state.failing_since = time.monotonic()
            log.warning("agent of %s failed: %s", state.node, error)
        state.error = error


async def read_body(response: aiohttp.ClientResponse, *, limit: int) -> bytes:
    """The whole body of ``response``, read to its end, at most ``limit`` bytes.

    One ``read()`` returns only what has arrived so far, so this reads until the end
    of the body (its ``Content-Length``, the last chunk, or the connection closing).
    A body that declares more than ``limit`` is refused before any of it is read;
    one without a length is refused as soon as it passes ``limit``, so a hostile or
    broken agent never makes the controller buffer more than that.

    Raises:
        InventoryError: the body is larger than ``limit``.
        aiohttp.ClientPayloadError: the body ended before its declared length.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        raise InventoryError(f"inventory of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    while len(body) <= limit:
        piece = await response.content.read(limit + 1 - len(body))
        if not piece:
            return bytes(body)
        body += piece
    raise InventoryError(f"inventory of more than {limit} bytes exceeds the limit of {limit}")


def _reason(exc: InventoryError) -> str:
    text = str(exc)
    if "exceeds the limit" in text:
        return "too-large"
    if "is not the node" in text:
        return "wrong-node"
    if "address" in text:
        return "address"
    return "invalid"
