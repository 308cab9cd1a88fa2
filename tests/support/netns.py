"""Network namespaces as separate hosts for tests: veth links, addresses, shaping, processes.

Loopback hands a whole HTTP answer to the reader at once, so code that reads a body
with one ``read()`` passes on loopback and fails on the first real network. A
network namespace has its own interfaces, addresses, routes, ports and packet
filter; a veth pair between two of them (MTU 1500, like a node's NIC) is a real
link whose traffic the kernel segments, queues and shapes like any other. This
kernel has no ``netem``; what shapes traffic here is ``tbf`` (a rate limit on an
interface's egress) and ``advmss`` on a route (the largest segment peers send).

Contract:

- A :class:`Network` owns everything it made: namespaces (``gdt<pid>-<token>-<role>``),
  veth pairs (random ``gd<hex>`` names) and the processes it spawned.
  :meth:`Network.close` kills every process still running in each namespace, then
  deletes the namespaces, which takes their veth ends (and the peers of those
  ends) along; it tries every step and raises once at the end if any failed.
- :data:`ROOT` is the test process's own namespace: a link to it lets code running
  in the test (a controller, an HTTP client) reach a host over the veth. Its
  subnets come from 198.18.0.0/15 (reserved for network tests, never a real
  network's), chosen under a file lock so parallel runs never collide.
- A namespace left by a killed test run (its pid no longer lives) is deleted by
  the next :class:`Network` once nothing runs in it; processes are never killed
  except those in this network's own namespaces.
- Needs root (CAP_NET_ADMIN): :func:`unavailable` says why tests must skip. A
  missing ``ip`` or ``tc`` is an error, not a skip (``make test`` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

SUBNETS = ipaddress.IPv4Network("198.18.0.0/15")
"""Where link addresses come from (RFC 2544: for testing network devices)."""

MTU = 1500
"""A node's usual Ethernet MTU."""

_PREFIX = "gdt"
_LOCK = os.path.join(tempfile.gettempdir(), "gvirtus-dra-netns.lock")
_STALE = re.compile(rf"^{_PREFIX}(\d+)-")


class NetnsError(RuntimeError):
    """A command that builds or tears down a test network failed."""


def unavailable() -> str | None:
    """Why network namespace tests cannot run here (None when they can).

    Raises:
        NetnsError: running as root, but iproute2 is missing: that is a broken setup,
            not a reason to skip.
    """
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN); CI runs as root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise NetnsError(
            f"{' and '.join(missing)} not found: install iproute2 "
            "(apt-get install -y iproute2; `make test` does it)"
        )
    return None


def _run(args: Sequence[str], *, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    """One network namespace seen as a machine; ``name`` "" is the test's own."""

    name: str

    def command(self, *args: str) -> list[str]:
        """``args`` as a command line that runs inside this host."""
        return ["ip", "netns", "exec", self.name, *args] if self.name else list(args)

    def ip(self, *args: str) -> str:
        """Run ``ip args`` against this host's network stack; returns its output."""
        return _run(["ip", *(("-n", self.name) if self.name else ()), *args])

    def tc(self, *args: str) -> str:
        """Run ``tc args`` against this host's network stack; returns its output."""
        return _run(["tc", *(("-n", self.name) if self.name else ()), *args])

    def run(self, *args: str) -> str:
        """Run a command inside this host to its end; returns its standard output."""
        return _run(self.command(*args))

    async def connect(self, address: str, port: int, *, timeout: float) -> str:
        """A frontend's first step from this host: ``connected``, ``timeout`` or ``refused``.

        The connection is left for the process's exit to close, as a frontend's is.
        """
        process = await asyncio.create_subprocess_exec(
            *self.command(sys.executable, "-c", _CONNECT, address, str(port), str(timeout)),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        return out.decode().strip()


_CONNECT = """
import socket, sys
client = socket.socket()
client.settimeout(float(sys.argv[3]))
try:
    client.connect((sys.argv[1], int(sys.argv[2])))
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
else:
    print("connected")
"""


ROOT = Host("")
"""The namespace the test process runs in."""


@dataclass(frozen=True)
class Interface:
    """One end of a link: the host it is in, its name and its address."""

    host: Host
    name: str
    address: str
    network: ipaddress.IPv4Network


@dataclass(frozen=True)
class Link:
    """A veth pair between two hosts, one address at each end of a /30."""

    ends: tuple[Interface, Interface]
    mtu: int

    def end(self, host: Host) -> Interface:
        """The end of this link that lies in ``host``."""
        for interface in self.ends:
            if interface.host == host:
                return interface
        raise ValueError(f"the link does not reach {host.name or 'the root namespace'}")

    def peer(self, host: Host) -> Interface:
        """The end of this link opposite ``host``."""
        mine = self.end(host)
        return self.ends[1] if mine is self.ends[0] else self.ends[0]


class Network:
    """Hosts, links between them, shaping and processes, all undone by :meth:`close`."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.hosts: list[Host] = []
        self.links: list[Link] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        _sweep_stale()

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def host(self, role: str) -> Host:
        """A new namespace with its loopback up; ``role`` only makes its name readable."""
        if not re.fullmatch(r"[a-z0-9]{1,16}", role):
            raise ValueError(f"role {role!r}: use 1-16 lowercase letters or digits")
        host = Host(f"{_PREFIX}{os.getpid()}-{self.token}-{role}")
        _run(["ip", "netns", "add", host.name])
        self.hosts.append(host)
        host.ip("link", "set", "lo", "up")
        return host

    def link(self, left: Host, right: Host, *, mtu: int = MTU) -> Link:
        """Connect two hosts with a veth pair, addressed and up."""
        if left == right:
            raise ValueError("a link needs two different hosts")
        name = f"gd{secrets.token_hex(4)}"
        with _subnet_lock():
            subnet = _free_subnet()
            first, second = (str(a) for a in subnet.hosts())
            _run(
                [
                    "ip",
                    "link",
                    "add",
                    f"{name}a",
                    *_netns_arg(left),
                    "mtu",
                    str(mtu),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    f"{name}b",
                    *_netns_arg(right),
                    "mtu",
                    str(mtu),
                ]
            )
            ends = (
                Interface(left, f"{name}a", first, subnet),
                Interface(right, f"{name}b", second, subnet),
            )
            for end in ends:
                end.host.ip("addr", "add", f"{end.address}/{subnet.prefixlen}", "dev", end.name)
        for end in ends:
            end.host.ip("link", "set", end.name, "up")
        self.links.append(Link(ends, mtu))
        return self.links[-1]

    def limit_rate(self, interface: Interface, *, bits_per_second: int, burst: int = 1600) -> None:
        """Let ``interface`` send at most ``bits_per_second`` (tbf on its egress).

        ``burst`` bytes may leave at line rate after an idle spell; it must hold the
        largest packet sent. The queue is deep, so shaping delays and never drops.
        """
        interface.host.tc(
            "qdisc",
            "replace",
            "dev",
            interface.name,
            "root",
            "tbf",
            "rate",
            f"{bits_per_second}bit",
            "burst",
            str(burst),
            "limit",
            str(4 * 1024 * 1024),
        )

    def advertise_mss(self, interface: Interface, *, mss: int) -> None:
        """Make peers send TCP segments of at most ``mss`` bytes to this end of the link.

        Sets ``advmss`` on the link's route on this side: connections made or
        accepted over it announce ``mss``, and the peer segments what it sends.
        """
        interface.host.ip(
            "route",
            "replace",
            str(interface.network),
            "dev",
            interface.name,
            "proto",
            "kernel",
            "scope",
            "link",
            "src",
            interface.address,
            "advmss",
            str(mss),
        )

    def spawn(
        self,
        host: Host,
        args: Sequence[str],
        *,
        log: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``args`` inside ``host``; it is killed by :meth:`close` if still running."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if log is not None:
            out = open(log, "ab")  # noqa: SIM115 (closed by close())
            self._logs.append(out)
        process = subprocess.Popen(
            host.command(*args),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Kill this network's processes, delete its namespaces; raise once if a step failed."""
        failures: list[str] = []
        for process in self.processes:
            _stop(process)
        for link in self.links:
            # The kernel removes a veth end with its namespace, but later and on its
            # own: delete the root namespace's ends now, so nothing outlives close().
            for end in link.ends:
                if end.host == ROOT:
                    subprocess.run(["ip", "link", "del", end.name], capture_output=True)
        for host in reversed(self.hosts):
            try:
                _kill_inside(host)
                _run(["ip", "netns", "del", host.name])
            except (NetnsError, OSError) as exc:
                failures.append(str(exc))
        for log in self._logs:
            log.close()
        self.hosts.clear()
        self.links.clear()
        self.processes.clear()
        self._logs.clear()
        if failures:
            raise NetnsError("could not tear the test network down: " + "; ".join(failures))


def _netns_arg(host: Host) -> tuple[str, ...]:
    return ("netns", host.name) if host.name else ()


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def _kill_inside(host: Host) -> None:
    """SIGKILL whatever still runs in ``host`` (children of processes this test started)."""
    for pid in _run(["ip", "netns", "pids", host.name]).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """Serialise choosing and taking a subnet across processes (parallel test runs)."""
    with open(_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of :data:`SUBNETS` that no address or route of the root namespace overlaps."""
    taken = [
        ipaddress.IPv4Network(word, strict=False)
        for line in (ROOT.ip("-4", "-o", "addr", "show") + ROOT.ip("-4", "route", "show")).split(
            "\n"
        )
        for word in line.split()
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", word)
    ]
    subnets = SUBNETS.num_addresses // 4
    for _ in range(100):
        candidate = ipaddress.IPv4Network(
            (int(SUBNETS.network_address) + 4 * random.randrange(subnets), 30)
        )
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    raise NetnsError(f"no free /30 left in {SUBNETS} after 100 tries")


def _sweep_stale() -> None:
    """Delete namespaces of test runs that died, once nothing runs in them any more."""
    for line in _run(["ip", "netns", "list"]).splitlines():
        name = line.split()[0] if line.split() else ""
        found = _STALE.match(name)
        if not found or _alive(int(found.group(1))):
            continue
        if not _run(["ip", "netns", "pids", name], check=False).split():
            _run(["ip", "netns", "del", name], check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
