"""Connections per backend port come from the kernel's TCP tables."""

from __future__ import annotations

import pathlib
import socket

import pytest

from backend import netstat

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0500000A:270F 0700000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0500000A:270F 0800000A:C351 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0500000A:2710 0700000A:C352 06 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 20 4 30 10 -1
   4: 0500000A:C353 0700000A:270F 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 20 4 30 10 -1
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0000000000000000FFFF00000500000A:2710 0000000000000000FFFF00000700000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 20 4 30 10 -1
"""


@pytest.fixture
def tables(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    (tmp_path / "tcp").write_text(TCP)
    (tmp_path / "tcp6").write_text(TCP6)
    return [tmp_path / "tcp", tmp_path / "tcp6", tmp_path / "missing"]


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        ({9999}, {(9999, "0700000A", 0xC350), (9999, "0800000A", 0xC351)}),
        ({10000}, {(10000, "0000000000000000FFFF00000700000A", 0xD431)}),
        (
            {9999, 10000},
            {
                (9999, "0700000A", 0xC350),
                (9999, "0800000A", 0xC351),
                (10000, "0000000000000000FFFF00000700000A", 0xD431),
            },
        ),
        ({10001}, set()),
    ],
    ids=["ipv4-established-only", "ipv6", "both-ports", "idle-port"],
)
def test_only_established_connections_to_the_port_count(
    tables: list[pathlib.Path], ports: set[int], expected: set[netstat.Peer]
) -> None:
    assert netstat.established(ports, tables=tables) == expected


def test_reads_the_real_kernel_tables() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    try:
        peers = netstat.established({port})
    finally:
        for s in (client, accepted, server):
            s.close()
    assert [(p[0], p[1]) for p in peers] == [(port, "0100007F")]
