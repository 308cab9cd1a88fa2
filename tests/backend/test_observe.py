"""A backend seen through ``/proc`` (a tree built from captured kernel text)."""

from __future__ import annotations

import pathlib

import pytest

from backend.observe import Observation, Target, observe
from tests.backend.test_netstat import PORT, TCP, TCP6
from tests.backend.test_procfs import add_process

LISTENER, CLOSED_A, CLOSED_B, OPEN = 30901, 30903, 30905, 30907
PEERS = frozenset({(PORT, "0100007F", port) for port in (0x8CE2, 0x8CEA, 0x8CF6, 0x8CFA)})


def with_tables(root: pathlib.Path, pid: int, *, tcp: str = TCP) -> None:
    (root / str(pid) / "net").mkdir()
    (root / str(pid) / "net" / "tcp").write_text(tcp)
    (root / str(pid) / "net" / "tcp6").write_text(TCP6)


def sockets(*inodes: int) -> dict[str, str]:
    return {str(10 + i): f"socket:[{inode}]" for i, inode in enumerate(inodes)}


STD = {"0": "/dev/null", "1": "pipe:[5]", "2": "pipe:[5]"}


@pytest.fixture
def proc(tmp_path: pathlib.Path) -> pathlib.Path:
    # Backend 100: the parent waits, its child 101 serves the captured listener.
    add_process(tmp_path, 100, pgid=100, fds=STD)
    add_process(tmp_path, 101, pgid=100, fds={**STD, **sockets(LISTENER, CLOSED_A, CLOSED_B, OPEN)})
    # Backend 300: its server ended; only the waiting parent is left.
    add_process(tmp_path, 300, pgid=300, fds=STD)
    # Backend 400: serves some other port.
    add_process(tmp_path, 400, pgid=400, fds={**STD, **sockets(30480, 30482)})
    for pid in (100, 101, 300, 400):
        with_tables(tmp_path, pid)
    return tmp_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (
            Target(pgid=100, port=PORT),
            Observation(
                alive=True,
                listener_pid=101,
                accept_queue=3,
                open_files=7,
                open_files_limit=20000,
                established=4,
                close_wait=2,
                connections=frozenset({CLOSED_A, CLOSED_B, OPEN}),
                peers=PEERS,
            ),
        ),
        (
            Target(pgid=300, port=PORT),
            Observation(alive=True, port_taken=True, open_files=3, open_files_limit=20000),
        ),
        (
            Target(pgid=400, port=0xA367 + 1),
            Observation(alive=True, open_files=5, open_files_limit=20000),
        ),
        (Target(pgid=None, port=PORT), Observation()),
        (Target(pgid=999, port=PORT), Observation()),
    ],
    ids=["serving-child", "parent-only", "listens-elsewhere", "not-running", "group-gone"],
)
def test_a_backend_from_its_processes_and_tables(
    proc: pathlib.Path, target: Target, expected: Observation
) -> None:
    assert observe([target], root=proc) == [expected]


def test_the_ipv6_table_counts_too(proc: pathlib.Path) -> None:
    seen = observe([Target(pgid=400, port=0xA367)], root=proc)[0]
    assert (seen.listening, seen.established, seen.accept_queue) == (True, 1, 0)


# Sockets of other processes that share the port number on other addresses: an
# outgoing connection from 127.0.0.2, and one from 10.0.0.5 not yet accepted by a
# listener of someone else.
FOREIGN = (
    "  90: 0200007F:B5FB 0100007F:1F90 01 00000000:00000000 00:00000000 00000000"
    "     0        0 55555 1 0000000000000000 20 0 0 10 -1\n"
    "  91: 0500000A:B5FB 0100007F:1F91 01 00000000:00000000 00:00000000 00000000"
    "     0        0 0 1 0000000000000000 20 0 0 10 -1\n"
)


def test_other_processes_sharing_the_port_number_are_not_the_backend_s(
    tmp_path: pathlib.Path,
) -> None:
    add_process(tmp_path, 100, pgid=100, fds={**STD, **sockets(LISTENER, CLOSED_A, CLOSED_B, OPEN)})
    with_tables(tmp_path, 100, tcp=TCP + FOREIGN)
    seen = observe([Target(pgid=100, port=PORT)], root=tmp_path)[0]
    assert (seen.established, seen.close_wait, seen.peers) == (4, 2, PEERS)
