"""Test networks behave like separate machines on a real link, and leave nothing behind."""

from __future__ import annotations

import asyncio
import pathlib
import re
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.support import netns
from tests.support.netns import ROOT, Host, Network

SEND = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
connection, _ = server.accept()
connection.sendall(b"x" * int(sys.argv[3]))
connection.recv(1)  # hold the connection until the client closes it
"""


@pytest.fixture
def root_only() -> None:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)


def namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def running(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def sender(network: Network, host: Host, address: str, size: int) -> subprocess.Popen[bytes]:
    return network.spawn(host, [sys.executable, "-c", SEND, address, "7000", str(size)])


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(30):
        while True:
            try:
                return await asyncio.open_connection(address, 7000)
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)


async def receive(address: str, size: int) -> list[int]:
    """Read ``size`` bytes from the sender at ``address``; the size of each read."""
    reader, writer = await connect(address)
    reads: list[int] = []
    while sum(reads) < size:
        reads.append(len(await reader.read(size)))
        assert reads[-1], "the sender closed early"
    writer.close()
    await writer.wait_closed()
    return reads


async def test_a_linked_host_is_reached_over_a_veth_of_mtu_1500(network: Network) -> None:
    host = network.host("far")
    link = network.link(ROOT, host)
    sender(network, host, link.end(host).address, 3000)

    reads = await receive(link.end(host).address, 3000)

    assert sum(reads) == 3000
    for end in link.ends:
        assert f"mtu {netns.MTU} " in end.host.ip("link", "show", end.name)


def test_a_host_reaches_only_what_its_links_reach(network: Network) -> None:
    near, far = network.host("near"), network.host("far")
    to_near = network.link(ROOT, near)
    behind = network.link(near, far)
    probe = "import socket, sys; socket.create_connection((sys.argv[1], 9), timeout=5)"

    with pytest.raises(netns.NetnsError, match="Network is unreachable"):
        far.run(sys.executable, "-c", probe, to_near.end(ROOT).address)
    with pytest.raises(netns.NetnsError, match="Connection refused"):
        far.run(sys.executable, "-c", probe, behind.end(near).address)


@pytest.mark.parametrize(
    ("rate", "mss", "size"),
    [(16_000, None, 3000), (None, 536, 3000), (16_000, 536, 3000), (320_000, 536, 85_000)],
    ids=["rate", "mss", "rate-and-mss", "large-body"],
)
async def test_shaping_makes_a_body_arrive_in_several_reads(
    network: Network, rate: int | None, mss: int | None, size: int
) -> None:
    host = network.host("far")
    link = network.link(ROOT, host)
    if rate:
        network.limit_rate(link.end(host), bits_per_second=rate)
    if mss:
        network.advertise_mss(link.end(ROOT), mss=mss)
    sender(network, host, link.end(host).address, size)

    reader, writer = await connect(link.end(host).address)
    first = await reader.read(size)
    segment = host.run("ss", "-tni", "state", "established")
    rest = await reader.readexactly(size - len(first))
    writer.close()
    await writer.wait_closed()

    assert len(first) + len(rest) == size
    if rate:
        assert len(first) < size, "a rate-limited body arrives over time"
    if mss:
        sent = re.search(r" mss:(\d+) ", segment)
        assert sent and int(sent.group(1)) <= mss, segment


def test_close_kills_processes_and_removes_everything_even_after_a_failure(
    root_only: None, short_tmp: pathlib.Path
) -> None:
    child_pid = short_tmp / "child"
    made: list[Any] = []

    def a_failing_test() -> None:
        with Network() as network:
            host = network.host("doomed")
            link = network.link(ROOT, host)
            parent = network.spawn(host, ["sh", "-c", f"sleep 300 & echo $! > {child_pid}; wait"])
            made.extend([host, link, parent])
            while not child_pid.exists() or not child_pid.read_text().strip():
                assert parent.poll() is None
                time.sleep(0.01)
            raise RuntimeError("the test failed")

    with pytest.raises(RuntimeError, match="the test failed"):
        a_failing_test()

    host, link, parent = made
    assert host.name not in namespaces()
    assert parent.poll() is not None
    assert not running(int(child_pid.read_text()))
    shown = subprocess.run(["ip", "link", "show", link.end(ROOT).name], capture_output=True)
    assert shown.returncode != 0, "the root end went with its peer's namespace"


def test_networks_made_at_once_do_not_collide(root_only: None) -> None:
    with Network() as first, Network() as second:
        hosts = [first.host("a"), second.host("a")]
        links = [first.link(ROOT, hosts[0]), second.link(ROOT, hosts[1])]

        assert hosts[0].name != hosts[1].name
        assert not links[0].ends[0].network.overlaps(links[1].ends[0].network)
        assert links[0].ends[0].network.subnet_of(netns.SUBNETS)


def test_a_namespace_left_by_a_dead_run_is_swept(root_only: None) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, alive = f"gdt{dead.pid}-000000-left", "gdt1-000000-init"
    for name in (stale, alive):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        with Network():
            assert stale not in namespaces()
            assert alive in namespaces(), "pid 1 lives: not a dead run's"
    finally:
        for name in (stale, alive):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n: n.host("Bad Role"), "lowercase letters or digits"),
        (lambda n: n.link(ROOT, ROOT), "two different hosts"),
    ],
    ids=["role", "self-link"],
)
def test_mistakes_are_named(root_only: None, call: object, message: str) -> None:
    with Network() as network, pytest.raises(ValueError, match=message):
        call(network)  # type: ignore[operator]
