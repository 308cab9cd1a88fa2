"""Rows of the kernel's TCP tables, read from text captured on Linux 6.18."""

from __future__ import annotations

import pathlib
import socket
import time

import pytest

from backend import netstat
from backend.netstat import State, TCPSocket

# A listener on 127.0.0.1:46587 with backlog 2: three connections accepted (the
# clients of two closed theirs: CLOSE-WAIT), three more waiting in the full accept
# queue (inode 0), two clients still in SYN-SENT, and the client ends of it all.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:B5FB 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 30901 4 00000000d80cff79 100 0 0 10 0
   7: 0100007F:B5FB 0100007F:8CD6 08 00000000:00000001 00:00000000 00000000     0        0 30905 1 00000000cd2ddf48 20 4 0 10 -1
  89: 0100007F:B5FB 0100007F:8CE2 01 00000000:00000000 00:00000000 00000000     0        0 30907 1 00000000d3fe6efc 20 0 0 10 -1
  99: 0100007F:B5FB 0100007F:8CCA 08 00000000:00000001 00:00000000 00000000     0        0 30903 1 00000000b7ec2d22 20 4 0 10 -1
 111: 0100007F:B5FB 0100007F:8CEA 01 00000000:00000000 00:00000000 00000000     0        0 0 1 00000000e7249ba6 20 0 0 10 -1
 161: 0100007F:B5FB 0100007F:8CF6 01 00000000:00000000 00:00000000 00000000     0        0 0 1 00000000815ad491 20 0 0 10 -1
 170: 0100007F:8CCA 0100007F:B5FB 05 00000000:00000000 03:00001752 00000000     0        0 0 3 0000000007bb7fa7
 171: 0100007F:8CD6 0100007F:B5FB 05 00000000:00000000 03:00001752 00000000     0        0 0 3 0000000002d26cb1
 172: 0100007F:8CE2 0100007F:B5FB 01 00000000:00000000 00:00000000 00000000     0        0 30906 2 000000006642d248 20 0 0 10 -1
 176: 0100007F:8CFC 0100007F:B5FB 02 00000001:00000000 01:00000045 00000000     0        0 30911 2 000000004f91dbec 100 0 0 10 -1
 178: 0100007F:B5FB 0100007F:8CFA 01 00000000:00000000 00:00000000 00000000     0        0 0 1 00000000121b48cd 20 0 0 10 -1
"""
# A listener on [::]:41831 and one connection it accepted from [::1].
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:A367 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 30480 1 00000000d22cf42e 100 0 0 10 0
   1: 00000000000000000000000001000000:A367 00000000000000000000000001000000:9876 01 00000000:00000000 00:00000000 00000000     0        0 30482 1 00000000578b6d8e 20 0 0 10 -1
"""
PORT, PORT6 = 0xB5FB, 0xA367


def on(port: int, rows: list[TCPSocket]) -> list[tuple[int, int, int]]:
    return sorted((r.state, r.inode, r.rx_queue) for r in rows if r.local_port == port)


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        (
            TCP,
            PORT,
            [
                (State.ESTABLISHED, 0, 0),
                (State.ESTABLISHED, 0, 0),
                (State.ESTABLISHED, 0, 0),
                (State.ESTABLISHED, 30907, 0),
                (State.CLOSE_WAIT, 30903, 1),
                (State.CLOSE_WAIT, 30905, 1),
                (State.LISTEN, 30901, 3),
            ],
        ),
        (TCP, 0x8CFC, [(2, 30911, 0)]),
        (TCP6, PORT6, [(State.ESTABLISHED, 30482, 0), (State.LISTEN, 30480, 0)]),
        (TCP, 9999, []),
        ("", PORT, []),
        ("garbage\n 0: not a row at all but has ten fields a b c d\n", PORT, []),
    ],
    ids=["full-accept-queue", "client-in-syn-sent", "ipv6", "idle-port", "empty", "garbage"],
)
def test_rows_of_a_port(text: str, port: int, expected: list[tuple[int, int, int]]) -> None:
    """The listener's rx_queue is its accept queue; queued connections have no inode."""
    assert on(port, netstat.parse(text)) == expected


@pytest.mark.parametrize(
    ("ports", "expected"),
    [({PORT}, {PORT}), ({PORT, 0x8CFC}, {PORT, 0x8CFC}), (set(), set())],
    ids=["one-port", "two-ports", "none"],
)
def test_rows_of_other_ports_are_dropped_unparsed(ports: set[int], expected: set[int]) -> None:
    rows = netstat.parse(TCP, ports=ports)
    assert {r.local_port for r in rows} == expected
    assert rows == [r for r in netstat.parse(TCP) if r.local_port in ports]


def test_both_ends_of_a_connection_are_told_apart() -> None:
    rows = netstat.parse(TCP)
    accepted = next(r for r in rows if r.inode == 30907)
    client = next(r for r in rows if r.inode == 30906)
    assert accepted.peer == (PORT, "0100007F", 0x8CE2)
    assert client.peer == (0x8CE2, "0100007F", PORT)
    assert next(r for r in rows if r.inode == 30901).tx_queue == 0  # no backlog in the table


def test_missing_tables_have_no_rows(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tcp").write_text(TCP)
    rows = netstat.read([tmp_path / "tcp", tmp_path / "tcp6"])
    assert len(rows) == len(netstat.parse(TCP))


def test_reads_the_real_kernel_tables() -> None:
    server = socket.create_server(("127.0.0.1", 0), backlog=1)
    port = server.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    accepted, _ = server.accept()
    clients[0].close()  # the accepted end of the first client turns CLOSE-WAIT
    expected = {(State.LISTEN, 1), (State.CLOSE_WAIT, 1), (State.ESTABLISHED, 0)}
    try:
        deadline = time.monotonic() + 10
        while (mine := _states(port)) != expected and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        for s in (clients[1], accepted, server):
            s.close()
    assert mine == expected


def _states(port: int) -> set[tuple[int, int]]:
    tables = [pathlib.Path("/proc/self/net/tcp"), pathlib.Path("/proc/self/net/tcp6")]
    return {(r.state, r.rx_queue) for r in netstat.read(tables) if r.local_port == port}
