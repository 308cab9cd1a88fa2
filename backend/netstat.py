"""Established TCP connections per local port, from ``/proc/net/tcp`` and ``tcp6``.

GVirtuS has no way to ask a backend how busy it is; every frontend thread holds one
TCP connection to it, so the connections on its port are the load. Reading the
kernel's tables costs no connection to the backend.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

ESTABLISHED = "01"
TABLES = (pathlib.Path("/proc/net/tcp"), pathlib.Path("/proc/net/tcp6"))

Peer = tuple[int, str, int]
"""(local port, remote address in the table's hex form, remote port)."""


def established(ports: Iterable[int], *, tables: Iterable[pathlib.Path] = TABLES) -> set[Peer]:
    """Established connections whose local port is one of ``ports``."""
    wanted = set(ports)
    peers: set[Peer] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except FileNotFoundError:  # no IPv6 on this node
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != ESTABLISHED:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port in wanted:
                remote, _, remote_port = fields[2].rpartition(":")
                peers.add((local_port, remote, int(remote_port, 16)))
    return peers
