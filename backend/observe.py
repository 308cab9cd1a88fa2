"""One look at every backend, from ``/proc`` alone: nothing connects to a backend port.

For each backend (its process group and its port) this finds the process holding
the LISTEN socket on the port (by matching the socket inodes of its descriptors
against the TCP table of its network namespace), that socket's accept queue, the
listening process's descriptors against its own limit, and the connections on the
port: ESTABLISHED ones (frontends) and CLOSE-WAIT ones the backend still holds
(descriptors leaked by connections the frontend closed). The tables of a namespace
are read once per look, however many backends share it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from backend import netstat, procfs
from backend.netstat import State, TCPSocket


@dataclass(frozen=True)
class Target:
    """A backend to look at: its process group (None while not running) and port."""

    pgid: int | None
    port: int


@dataclass(frozen=True)
class Observation:
    """What ``/proc`` showed about one backend at one moment."""

    alive: bool = False
    listener_pid: int | None = None
    port_taken: bool = False
    accept_queue: int = 0
    open_files: int | None = None
    open_files_limit: int | None = None
    established: int = 0
    close_wait: int = 0
    connections: frozenset[int] = field(default_factory=frozenset)
    peers: frozenset[netstat.Peer] = field(default_factory=frozenset)

    @property
    def listening(self) -> bool:
        """Whether one of the backend's processes holds the LISTEN socket on its port."""
        return self.listener_pid is not None


def observe(targets: Sequence[Target], *, root: pathlib.Path = procfs.PROC) -> list[Observation]:
    """An observation per target, in order. Blocking: call it off the event loop."""
    groups = procfs.process_groups(root=root)
    tables: dict[str, list[TCPSocket]] = {}
    ports = {target.port for target in targets}
    return [_one(target, groups, tables, ports, root) for target in targets]


def _one(
    target: Target,
    groups: dict[int, list[procfs.Stat]],
    tables: dict[str, list[TCPSocket]],
    ports: set[int],
    root: pathlib.Path,
) -> Observation:
    members = groups.get(target.pgid, []) if target.pgid is not None else []
    held = {s.pid: d for s in members if (d := procfs.descriptors(s.pid, root=root)) is not None}
    if not held:
        return Observation()
    first = next(iter(held))
    namespace = procfs.network_namespace(first, root=root)
    if namespace not in tables:
        tables[namespace] = netstat.read(procfs.tcp_tables(first, root=root), ports=ports)
    on_port = [s for s in tables[namespace] if s.local_port == target.port]
    inodes = frozenset().union(*(d.socket_inodes for d in held.values()))
    listeners = [s for s in on_port if s.state == State.LISTEN]
    own = [s for s in listeners if s.inode in inodes]
    listener_pid = next(
        (pid for pid, d in held.items() if own and own[0].inode in d.socket_inodes), None
    )
    # Judge descriptors by the process that serves; before it listens, by the leader.
    judged = listener_pid if listener_pid is not None else target.pgid
    descriptors = held.get(judged) if judged is not None else None
    # Another process's socket may share the port number on another address: a
    # connection is the backend's when it holds it, or when it waits in its queue.
    owned = [s for s in on_port if s.inode in inodes]
    queued = [s for s in on_port if s.inode == 0 and own and _queued_at(s, own[0])]
    established = [s for s in owned + queued if s.state == State.ESTABLISHED]
    accepted = [s for s in owned if s.state in (State.ESTABLISHED, State.CLOSE_WAIT)]
    return Observation(
        alive=True,
        listener_pid=listener_pid,
        port_taken=bool(listeners) and not own,
        accept_queue=sum(s.rx_queue for s in own),
        open_files=descriptors.count if descriptors is not None else None,
        open_files_limit=(
            procfs.open_files_limit(judged, root=root) if judged is not None else None
        ),
        established=len(established),
        close_wait=sum(1 for s in accepted if s.state == State.CLOSE_WAIT),
        connections=frozenset(s.inode for s in accepted),
        peers=frozenset(s.peer for s in established),
    )


def _queued_at(connection: TCPSocket, listener: TCPSocket) -> bool:
    return listener.wildcard or connection.local_address == listener.local_address
