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
from collections.abc import Collection, Iterable
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


def parse(text: str, *, ports: Collection[int] | None = None) -> list[TCPSocket]:
    """The rows of one table (only those whose local port is in ``ports``, if given).

    The header and any line not shaped like a row are skipped. A node's table can
    hold thousands of rows (TIME-WAIT ones of other programs among them), so rows on
    other ports are dropped before they are parsed.
    """
    wanted = None if ports is None else {f":{port:04X}" for port in ports}
    rows = []
    for line in text.splitlines():
        head = line.split(None, 2)
        if len(head) < 3 or (wanted is not None and head[1][-5:] not in wanted):
            continue
        if (row := _row(line.split())) is not None:
            rows.append(row)
    return rows


def _row(fields: list[str]) -> TCPSocket | None:
    if len(fields) < 10 or not fields[0].endswith(":") or ":" not in fields[4]:
        return None
    try:
        tx_queue, rx_queue = (int(part, 16) for part in fields[4].split(":", 1))
        local, _, local_port = fields[1].rpartition(":")
        remote, _, remote_port = fields[2].rpartition(":")
        return TCPSocket(
            local_address=local,
            local_port=int(local_port, 16),
            remote_address=remote,
            remote_port=int(remote_port, 16),
            state=int(fields[3], 16),
            tx_queue=tx_queue,
            rx_queue=rx_queue,
            inode=int(fields[9]),
        )
    except ValueError:
        return None


def read(
    tables: Iterable[pathlib.Path], *, ports: Collection[int] | None = None
) -> list[TCPSocket]:
    """Every row of ``tables`` (on ``ports``, if given); a missing table (no IPv6) has none."""
    rows: list[TCPSocket] = []
    for table in tables:
        try:
            rows.extend(parse(table.read_text(), ports=ports))
        except FileNotFoundError:
            continue
    return rows
