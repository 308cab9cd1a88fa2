"""Clients that hold connections to the webhook without asking anything, as an attacker would.

Each holder keeps one connection open from a loopback address of its own choosing
(the kernel accepts any 127.0.0.0/8 source), and opens a new one whenever the
webhook closes it, until told to stop, so the webhook sees the pressure for the
whole time. Kinds:

- ``tcp``: connects and never starts TLS (the cheapest connection to hold);
- ``tls``: finishes the TLS handshake and never sends a request;
- ``slow``: finishes the handshake and sends request headers one byte at a time.

Only loopback addresses are used, every loop stops by itself when ``stop`` is set,
and a lost connection is opened again after a pause, never in a tight loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import pathlib
import resource
import ssl
import sys
from dataclasses import dataclass, field

SERVER_NAME = "gvirtus-dra-webhook.gvirtus-system.svc"
SLOW_HEAD = (
    b"POST /mutate?timeout=5s HTTP/1.1\r\nHost: " + SERVER_NAME.encode() + b"\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
)


@dataclass
class Tally:
    """What the holders saw."""

    opened: int = 0
    closed_by_server: int = 0
    refused: int = 0
    live: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def raise_file_limit(needed: int) -> None:
    """Let this process hold ``needed`` descriptors (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def loopback(index: int) -> str:
    """The ``index``-th source address, from 127.0.1.1 on (127.0.0.1 is the API server's)."""
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


async def hold(
    *,
    port: int,
    context: ssl.SSLContext,
    source: str,
    kind: str,
    stop: asyncio.Event,
    tally: Tally,
    pause: float = 1.0,
) -> None:
    """Keep one connection of ``kind`` to ``port`` open from ``source`` until ``stop``.

    A connection that is refused or closed is opened again ``pause`` seconds later:
    the holders hold connections, they do not flood the port with new ones.
    """
    while not stop.is_set():
        try:
            reader, writer = await _open(port=port, context=context, source=source, kind=kind)
        except (OSError, ssl.SSLError, TimeoutError):
            tally.refused += 1
            await _sleep(stop, pause)
            continue
        tally.opened += 1
        tally.live += 1
        tally.kinds[kind] = tally.kinds.get(kind, 0) + 1
        try:
            if await _idle(reader, writer, kind=kind, stop=stop):
                tally.closed_by_server += 1
        finally:
            tally.live -= 1
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        await _sleep(stop, pause)


async def _open(
    *, port: int, context: ssl.SSLContext, source: str, kind: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(30):
        return await asyncio.open_connection(
            "127.0.0.1",
            port,
            local_addr=(source, 0),
            ssl=None if kind == "tcp" else context,
            server_hostname=None if kind == "tcp" else SERVER_NAME,
        )


async def _idle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, kind: str, stop: asyncio.Event
) -> bool:
    """Say nothing (or next to nothing) until the server closes; whether it did."""
    sent = 0
    while not stop.is_set():
        if kind == "slow" and sent < len(SLOW_HEAD):
            writer.write(SLOW_HEAD[sent : sent + 1])
            sent += 1
        try:
            async with asyncio.timeout(0.5):
                if not await reader.read(1024):
                    return True
        except TimeoutError:
            continue
        except (OSError, ssl.SSLError):
            return True
    return False


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def review_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
) -> tuple[int, bytes]:
    """POST one review on a kept-alive connection; the status and the body of the answer."""
    writer.write(
        b"POST /mutate?timeout=5s HTTP/1.1\r\nHost: " + SERVER_NAME.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return int(head.split(b" ", 2)[1]), await reader.readexactly(length)


async def connect_tls(
    port: int, context: ssl.SSLContext, *, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection as the API server makes it."""
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=SERVER_NAME, local_addr=(source, 0)
    )


async def _hold_for(*, port: int, ca_pem: str, count: int, addresses: int, seconds: float) -> Tally:
    raise_file_limit(count + 1000)
    context = ssl.create_default_context(cadata=ca_pem)
    stop, tally = asyncio.Event(), Tally()
    kinds = ("tcp", "tls", "slow")
    holders = [
        asyncio.create_task(
            hold(
                port=port,
                context=context,
                source=loopback(i * addresses // count),
                kind=kinds[i % len(kinds)],
                stop=stop,
                tally=tally,
            )
        )
        for i in range(count)
    ]
    await _sleep(stop, seconds)
    stop.set()
    await asyncio.gather(*holders)
    return tally


def main(argv: list[str] | None = None) -> int:
    """Hold connections from a process of their own (the benchmark's attacker)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca-file", type=pathlib.Path, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--addresses", type=int, default=20)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    tally = asyncio.run(
        _hold_for(
            port=args.port,
            ca_pem=args.ca_file.read_text(),
            count=args.count,
            addresses=args.addresses,
            seconds=args.seconds,
        )
    )
    print(json.dumps(dataclasses.asdict(tally)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
