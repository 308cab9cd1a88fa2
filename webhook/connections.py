"""Connections to the HTTPS endpoint: how many, from whom, and for how long.

Any pod can open connections to the webhook, and each TLS connection costs about
280 KiB from the moment it is accepted (asyncio gives every TLS connection a 256 KiB
read buffer), so memory is bounded by bounding connections:

- This module runs the accept loop itself. A connection beyond ``max_connections``
  in all, or beyond ``max_per_address`` from one client address, is closed at
  accept with a reset, before any TLS work, and counted: turning one away costs
  an accept and a close, so a flood of them costs little CPU. The per-address
  share keeps one pod from taking every slot (the API server calls from its own
  address); many pods together can, which only a NetworkPolicy prevents.
- An accepted connection must finish its TLS handshake and send the headers of its
  first request within ``request_timeout`` of being accepted, or it is dropped.
- Between requests, aiohttp's keep-alive timeout (the caller sets it to the idle
  timeout) closes a connection that has not sent the next request's headers.
- The body of a request is read under ``request_timeout`` by the endpoint itself.

A connection the API server keeps alive is unaffected by any of this, so reviews
keep being answered on it while strangers are turned away.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import collections
import contextlib
import logging
import resource
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter, Gauge

from dra_driver.errors import StartupError

log = logging.getLogger(__name__)

OPEN = Gauge("gvirtus_dra_webhook_connections", "Open HTTPS connections, handshaking included.")
REFUSED = Counter(
    "gvirtus_dra_webhook_connections_refused_total",
    "Connections closed at accept, by the limit they were over.",
    ["limit"],
)
DROPPED = Counter(
    "gvirtus_dra_webhook_connections_dropped_total",
    "Accepted connections closed before a first request, by reason.",
    ["reason"],
)
for _limit in ("max_connections", "max_per_address"):
    REFUSED.labels(_limit)
for _reason in ("handshake_failed", "no_request"):
    DROPPED.labels(_reason)

TLS_BUFFER = 32 * 1024
"""Two TLS records (16 KiB of plaintext each at most) per read from the socket."""
_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close sends a reset and frees the socket at once."""


@dataclass(frozen=True)
class Limits:
    """How many connections, and how long each may take to say something."""

    max_connections: int
    max_per_address: int
    request_timeout: float


class Guard:
    """Accepts connections for an aiohttp server within :class:`Limits`."""

    def __init__(
        self,
        *,
        limits: Limits,
        protocol_factory: Callable[[], asyncio.Protocol],
        ssl_context: ssl.SSLContext,
    ) -> None:
        self.limits = limits
        self.protocol_factory = protocol_factory
        self.ssl_context = ssl_context
        self.open = 0
        self.by_address: collections.Counter[str] = collections.Counter()

    async def serve(self, listener: socket.socket) -> None:
        """Accept connections on ``listener`` until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors or buffers: let some close
                log.warning("accepting a connection failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            self.accept(connection, address=str(peer[0]))

    def accept(self, connection: socket.socket, *, address: str) -> None:
        """Admit ``connection`` within the limits, or reset it."""
        if self.open >= self.limits.max_connections:
            REFUSED.labels("max_connections").inc()
            _reset(connection)
            return
        if self.by_address[address] >= self.limits.max_per_address:
            REFUSED.labels("max_per_address").inc()
            _reset(connection)
            return
        self.open += 1
        self.by_address[address] += 1
        OPEN.set(self.open)
        Watched(self, address, self.protocol_factory()).start(connection)

    def release(self, watched: Watched) -> None:
        """Give back the slot of a connection that closed (through :meth:`Watched.release`)."""
        self.open -= 1
        self.by_address[watched.address] -= 1
        if not self.by_address[watched.address]:
            del self.by_address[watched.address]
        OPEN.set(self.open)


class Watched(asyncio.Protocol):
    """aiohttp's protocol for one connection, dropped if no request starts by the deadline.

    Created at accept, it owns the handshake task until the handshake is done, then
    the transport; either way the deadline can end it.
    """

    def __init__(self, guard: Guard, address: str, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.address = address
        self.inner = inner
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard.limits.request_timeout, self._expire)
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._handed = False
        self._released = False

    def start(self, connection: socket.socket) -> None:
        """Begin the TLS handshake, bounded by the first-request deadline."""
        self._handshake = asyncio.create_task(self._tls(connection))
        # A done callback runs even for a task cancelled before its first step.
        self._handshake.add_done_callback(lambda _: self._handshake_ended(connection))

    async def _tls(self, connection: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        # From here asyncio owns the socket and closes it whatever happens.
        self._handed = True
        try:
            await loop.connect_accepted_socket(
                lambda: self,
                connection,
                ssl=self.guard.ssl_context,
                # A backstop: the first-request deadline ends a handshake before this.
                ssl_handshake_timeout=self.guard.limits.request_timeout + 1,
            )
        except Exception as exc:  # bad TLS, a reset: this connection's problem only
            DROPPED.labels("handshake_failed").inc()
            log.debug("TLS handshake failed: %s", exc, extra={"remote": self.address})

    def _handshake_ended(self, connection: socket.socket) -> None:
        self._handshake = None
        if self._transport is None:  # failed, or past the deadline
            if not self._handed:  # cancelled before it began: nobody else closes it
                connection.close()
            self.release()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Passed on to aiohttp; the deadline keeps running."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Passed on to aiohttp."""
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        """Passed on to aiohttp."""
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        """Passed on to aiohttp."""
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        """Passed on to aiohttp."""
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """Free the slot, then tell aiohttp."""
        self.release()
        self.inner.connection_lost(exc)

    def release(self) -> None:
        """Give the connection's slot back, once."""
        self._timer.cancel()
        if not self._released:
            self._released = True
            self.guard.release(self)

    def started_request(self) -> None:
        """The headers of a request arrived: the first-request deadline no longer applies."""
        self._timer.cancel()

    def _expire(self) -> None:
        DROPPED.labels("no_request").inc()
        if self._transport is not None:
            self._transport.abort()
        elif self._handshake is not None:
            self._handshake.cancel()


@web.middleware
async def mark_request(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tell the connection's :class:`Watched` that a request arrived on it."""
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, Watched):
        protocol.started_request()
    return await handler(request)


def listen(address: str, port: int, *, backlog: int) -> socket.socket:
    """A non-blocking listening socket (SO_REUSEADDR, as aiohttp's sites set it)."""
    listener = socket.create_server((address, port), backlog=backlog)
    listener.setblocking(False)
    return listener


def small_tls_buffers(size: int = TLS_BUFFER) -> bool:
    """Make asyncio give each TLS connection a ``size``-byte receive buffer; whether it could.

    asyncio allocates and zero-fills ``SSLProtocol.max_size`` bytes (256 KiB) per TLS
    connection when it is accepted, before the handshake: three quarters of what an
    idle connection costs. The buffer only receives ciphertext from the socket, so a
    smaller one means more reads for a large body, nothing else. The attribute is
    CPython's (3.11 to 3.13), not a public API, hence the check: without it the cap
    still bounds memory, at the larger cost per connection.
    """
    if not isinstance(getattr(sslproto.SSLProtocol, "max_size", None), int):
        log.warning("cannot shrink asyncio's TLS buffers; each connection costs ~280 KiB")
        return False
    sslproto.SSLProtocol.max_size = size
    return True


def ensure_file_limit(needed: int) -> None:
    """Raise the soft limit on open files to ``needed`` if the hard limit allows.

    Raises:
        StartupError: the hard limit is lower; the cap could never be reached.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise StartupError(
            f"--max-connections needs {needed} open files but the hard limit is {hard}: "
            "lower --max-connections or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _reset(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    connection.close()
