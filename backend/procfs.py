"""What ``/proc`` tells about a backend's processes: members, descriptors, limits.

A ``gvirtus-backend`` is more than one process: it forks a child per endpoint, the
child listens and serves, and the parent waits for it (then pauses forever once it
is gone). The supervisor starts each backend in a session of its own, so its
process group holds every process of it. Each reader takes a ``root`` (``/proc`` on
a node, a directory of captured files in tests); a process that ends while it is
being read is simply gone.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

PROC = pathlib.Path("/proc")
SOCKET_PREFIX = "socket:["


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/<pid>/stat`` the agent needs."""

    pid: int
    state: str
    ppid: int
    pgid: int

    @property
    def zombie(self) -> bool:
        """Ended and not yet reaped: it holds no descriptors any more."""
        return self.state in ("Z", "X")


@dataclass(frozen=True)
class Descriptors:
    """How many descriptors a process has open, and which of them are sockets."""

    count: int
    socket_inodes: frozenset[int]


def parse_stat(text: str) -> Stat:
    """``/proc/<pid>/stat``; the command name may hold spaces and parentheses.

    Raises:
        ValueError: not shaped like a stat line.
    """
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    if not head or len(fields) < 3:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return Stat(
        pid=int(head.split("(", 1)[0]), state=fields[0], ppid=int(fields[1]), pgid=int(fields[2])
    )


def parse_open_files_limit(text: str) -> int | None:
    """The soft "Max open files" of ``/proc/<pid>/limits``; None when unlimited or absent."""
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files") :].split()[0]
            return None if soft == "unlimited" else int(soft)
    return None


def socket_inode(link: str) -> int | None:
    """The inode of a ``socket:[123]`` descriptor link; None for any other file."""
    if link.startswith(SOCKET_PREFIX) and link.endswith("]"):
        return int(link[len(SOCKET_PREFIX) : -1])
    return None


def process_groups(*, root: pathlib.Path = PROC) -> dict[int, list[Stat]]:
    """Every live (not zombie) process, by process group."""
    groups: dict[int, list[Stat]] = {}
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # ended meanwhile, or not ours to read
        if not stat.zombie:
            groups.setdefault(stat.pgid, []).append(stat)
    return groups


def descriptors(pid: int, *, root: pathlib.Path = PROC) -> Descriptors | None:
    """The open descriptors of ``pid``; None once it is gone."""
    folder = root / str(pid) / "fd"
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    inodes = set()
    for name in names:
        try:
            inode = socket_inode(os.readlink(folder / name))
        except OSError:
            continue  # closed meanwhile
        if inode is not None:
            inodes.add(inode)
    return Descriptors(count=len(names), socket_inodes=frozenset(inodes))


def open_files_limit(pid: int, *, root: pathlib.Path = PROC) -> int | None:
    """The soft limit on open descriptors of ``pid``; None when unlimited or gone."""
    try:
        return parse_open_files_limit((root / str(pid) / "limits").read_text())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def network_namespace(pid: int, *, root: pathlib.Path = PROC) -> str:
    """An identity of the network namespace of ``pid`` (``net:[4026531833]``).

    Processes of one namespace share one TCP table, so it is read once per sample.
    Without the link (a captured tree) the pid itself stands for its namespace.
    """
    try:
        return os.readlink(root / str(pid) / "ns" / "net")
    except OSError:
        return f"pid:{pid}"


def tcp_tables(pid: int, *, root: pathlib.Path = PROC) -> tuple[pathlib.Path, pathlib.Path]:
    """The IPv4 and IPv6 TCP tables of the network namespace of ``pid``."""
    return (root / str(pid) / "net" / "tcp", root / str(pid) / "net" / "tcp6")
