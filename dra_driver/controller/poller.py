"""Fetching backend agents' inventories over HTTP, concurrently, each with a timeout.

The poller only talks HTTP: it asks for the inventory (with ``If-None-Match`` an
unchanged one costs a 304), reads the body to its end (over a real network a body of
a few kilobytes arrives in several pieces) within a size limit, and validates it
whole. What an answer means for an agent (whose node it speaks for, what it may
claim) is the business of :mod:`agents`, which owns every agent's state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp

from dra_driver.models import (
    INVENTORY_PATH,
    MAX_INVENTORY_BYTES,
    Inventory,
    InventoryError,
    parse_inventory,
)


class UnreachableError(Exception):
    """No usable answer: refused, reset, timed out, cut short, or not a 200 or 304."""


class RejectedError(Exception):
    """An answer that is not an inventory to believe; ``reason`` is a metric label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Fetched:
    """An agent's answer: a new inventory, or None when unchanged (a 304)."""

    inventory: Inventory | None
    etag: str | None


class Poller:
    """Fetches inventories over one connection pool, a bounded number at a time."""

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

    async def fetch(self, *, url: str, etag: str | None) -> Fetched:
        """The agent's inventory at ``url``; ``etag`` from its last answer, if any.

        Raises:
            UnreachableError: no usable answer.
            RejectedError: the answer is too large or not a valid inventory.
        """
        async with self.limit:
            try:
                return await self._fetch(url=url, etag=etag)
            except (aiohttp.ClientError, OSError) as exc:
                detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise UnreachableError(detail) from exc
            except InventoryError as exc:
                raise RejectedError(str(exc), reason="invalid") from exc

    async def _fetch(self, *, url: str, etag: str | None) -> Fetched:
        headers = {"If-None-Match": etag} if etag else {}
        async with self.session.get(url + INVENTORY_PATH, headers=headers) as response:
            if response.status == 304:
                return Fetched(inventory=None, etag=etag)
            if response.status != 200:
                raise aiohttp.ClientResponseError(
                    response.request_info, (), status=response.status, message=response.reason or ""
                )
            body = await read_body(response, limit=MAX_INVENTORY_BYTES)
            return Fetched(inventory=parse_inventory(body), etag=response.headers.get("ETag"))


async def read_body(response: aiohttp.ClientResponse, *, limit: int) -> bytes:
    """The whole body of ``response``, read to its end, at most ``limit`` bytes.

    One ``read()`` returns only what has arrived so far, so this reads until the end
    of the body (its ``Content-Length``, the last chunk, or the connection closing).
    A body that declares more than ``limit`` is refused before any of it is read;
    one without a length is refused as soon as it passes ``limit``, so a hostile or
    broken agent never makes the controller buffer more than that.

    Raises:
        RejectedError: the body is larger than ``limit`` (reason ``too-large``).
        aiohttp.ClientPayloadError: the body ended before its declared length.
    """
    declared = response.content_length
    if declared is not None and declared > limit:
        raise RejectedError(
            f"inventory of {declared} bytes exceeds the limit of {limit}", reason="too-large"
        )
    body = bytearray()
    while len(body) <= limit:
        piece = await response.content.read(limit + 1 - len(body))
        if not piece:
            return bytes(body)
        body += piece
    raise RejectedError(
        f"inventory of more than {limit} bytes exceeds the limit of {limit}", reason="too-large"
    )
