"""TCP sockets as the kernel lists them in ``/proc/<pid>/net/tcp`` and ``tcp6``.

Reading the tables costs the backend nothing, unlike a connect, which the real
``gvirtus-backend`` never closes (each one leaks a descriptor in CLOSE-WAIT). A row
gives the state, both ends, the queues and the socket's inode (0 while a connection
waits in a listener's accept queue, unowned by any descriptor). For a listening
socket ``rx_queue`` is the current length of its accept queue; ``tx_queue`` is 0
there, so the backlog itself is not in the table.
"""

from __future__ import annotations

import enum
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass


class State(enum.IntEnum):
    """The TCP states the agent tells apart (codes of the kernel's ``tcp_states.h``)."""

    ESTABLISHED = 0x01
    CLOSE_WAIT = 0x08
    LISTEN = 0x0A


Peer = tuple[int, str, int]
"""(local port, remote address in the table's hex form, remote port)."""


@dataclass(frozen=True)
class TCPSocket:
    """One row of a kernel TCP table."""

    local_address: str
    local_port: int
    remote_address: str
    remote_port: int
    state: int
    tx_queue: int
    rx_queue: int
    inode: int

    @property
    def wildcard(self) -> bool:
        """Bound to every address (0.0.0.0 or ::)."""
        return not self.local_address.strip("0")

    @property
    def peer(self) -> Peer:
        """Who is connected, as seen from the local port."""
        return (self.local_port, self.remote_address, self.remote_port)


def parse(text: str) -> list[TCPSocket]:
    """The rows of one table; the header and any line not shaped like a row are skipped."""
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10 or not fields[0].endswith(":") or ":" not in fields[4]:
            continue
        try:
            tx_queue, rx_queue = (int(part, 16) for part in fields[4].split(":", 1))
            local, _, local_port = fields[1].rpartition(":")
            remote, _, remote_port = fields[2].rpartition(":")
            rows.append(
                TCPSocket(
                    local_address=local,
                    local_port=int(local_port, 16),
                    remote_address=remote,
                    remote_port=int(remote_port, 16),
                    state=int(fields[3], 16),
                    tx_queue=tx_queue,
                    rx_queue=rx_queue,
                    inode=int(fields[9]),
                )
            )
        except ValueError:
            continue
    return rows


def read(tables: Iterable[pathlib.Path]) -> list[TCPSocket]:
    """Every row of ``tables``; a missing table (no IPv6 on the node) has none."""
    rows: list[TCPSocket] = []
    for table in tables:
        try:
            rows.extend(parse(table.read_text()))
        except FileNotFoundError:
            continue
    return rows
