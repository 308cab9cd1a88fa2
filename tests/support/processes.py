"""Components run as real processes, the way a node runs them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from tests.support.kubelet import wait_for_socket
from tests.support.netns import Host


def free_port(count: int = 1) -> int:
    """The first of ``count`` consecutive ports nothing listens on, for a child to bind.

    Not a port the kernel picks for ``bind(0)``: those come from the ephemeral range,
    which every outgoing connection draws from too, so between the pick and the
    child's bind a client's connection could take it ("address already in use" in
    CI). These come from below that range, start at an offset of this process's id
    (so two test runs on one machine rarely meet), and are never handed out twice.
    """
    low, span = _PORTS_LOW, _ephemeral_low() - _PORTS_LOW
    for step in range(span):
        first = low + (os.getpid() * 97 + len(_HANDED_OUT) + step) % (span - count)
        ports = range(first, first + count)
        if _HANDED_OUT.intersection(ports) or not all(map(_bindable, ports)):
            continue
        _HANDED_OUT.update(ports)
        return first
    raise RuntimeError(f"no {count} consecutive free ports in {low}-{low + span}")


_PORTS_LOW = 10_000
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (32768 by default)."""
    try:
        return int(pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    """Whether nothing holds ``port`` on any address (a listener on one would clash)."""
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


@dataclass
class PluginDirs:
    """Host directories of one emulated node (kept short: socket paths max 107 chars).

    ``cdi`` may be put elsewhere, e.g. on a tmpfs as ``/var/run/cdi`` is on real nodes.
    """

    root: pathlib.Path
    cdi: pathlib.Path | None = None
    registry: pathlib.Path = field(init=False)
    plugins: pathlib.Path = field(init=False)

    def __post_init__(self) -> None:
        self.registry = self.root / "reg"
        self.plugins = self.root / "plugins"
        self.cdi = self.cdi or self.root / "cdi"
        for path in (self.registry, self.plugins, self.cdi):
            path.mkdir(parents=True, exist_ok=True)

    @property
    def data_dir(self) -> pathlib.Path:
        return self.plugins / "gpu.gvirtus.io"

    def args(self) -> list[str]:
        return [
            "--kubelet-registry-dir",
            str(self.registry),
            "--kubelet-plugins-dir",
            str(self.plugins),
            "--cdi-root",
            str(self.cdi),
        ]


class PluginProcess:
    """``gvirtus-dra kubelet-plugin`` in a child process, logging to a file."""

    def __init__(
        self,
        *,
        dirs: PluginDirs,
        kubeconfig: pathlib.Path,
        node: str = "worker-1",
        pod_uid: str | None = None,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.dirs = dirs
        self.pod_uid = pod_uid
        self.metrics_port = free_port()
        self.log_path = dirs.root / f"plugin-{pod_uid or 'default'}-{os.getpid()}-{id(self)}.log"
        args = [
            sys.executable,
            "-m",
            "dra_driver",
            "kubelet-plugin",
            "--node-name",
            node,
            "--kubeconfig",
            str(kubeconfig),
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-address",
            "127.0.0.1",
            "--log-format",
            "json",
            "--health-interval",
            "1",
            *dirs.args(),
            *extra_args,
        ]
        if pod_uid:
            args += ["--pod-uid", pod_uid]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("KUBECONFIG", None)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    @property
    def registration_socket_name(self) -> str:
        suffix = f"-{self.pod_uid}" if self.pod_uid else ""
        return f"gpu.gvirtus.io{suffix}-reg.sock"

    async def ready(self, timeout: float = 60) -> pathlib.Path:
        """Wait until the registration socket accepts connections; fail early if the process died.

        A socket file left by a killed predecessor exists but refuses connections.
        """
        async with asyncio.timeout(timeout):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"plugin exited with {self.proc.returncode}:\n{self.logs()}")
                path = await wait_for_socket(self.dirs.registry, name=self.registration_socket_name)
                try:
                    _, writer = await asyncio.open_unix_connection(path)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                writer.close()
                await writer.wait_closed()
                return path

    async def http_up(self, timeout: float = 60) -> None:
        """Wait until the HTTP endpoint answers; it starts after the API client connected."""
        import aiohttp

        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"plugin exited with {self.proc.returncode}:\n{self.logs()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.metrics_port}/healthz"):
                        return
                await asyncio.sleep(0.02)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait, as the kubelet stops a pod."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def kill(self) -> int:
        """SIGKILL and wait: a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(10)
        self._log.close()
        return code

    async def exited(self, timeout: float = 30) -> int:
        """Wait (without blocking the loop) for the process to end by itself."""
        for _ in range(int(timeout / 0.02)):
            if self.proc.poll() is not None:
                self._log.close()
                return self.proc.returncode
            await asyncio.sleep(0.02)
        raise TimeoutError("plugin did not exit")


def backend_pids(state_dir: pathlib.Path, *, properties: str = "") -> list[int]:
    """Live backend processes started with a file of ``state_dir`` (``properties``, if named)."""
    mark = f"{state_dir}/{properties}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return sorted(pids)


class AgentProcess:
    """``gvirtus-dra backend-agent`` in simulator mode, on an address of its own.

    ``loopback`` is the address it binds and is reached at: a loopback address of
    this host, or with ``host`` (a network namespace, see :mod:`tests.support.netns`)
    that host's address on a link, so the agent runs as a machine of its own.

    Access control is off unless a ``kubeconfig`` is given: an agent enforcing it
    changes the packet filter of the namespace it runs in, which only a namespace of
    the test's own may be (never the test machine's); it reads its access list with
    that kubeconfig.
    """

    def __init__(
        self,
        *,
        root: pathlib.Path,
        node: str,
        loopback: str,
        address: str,
        gpus: int = 2,
        port: int | None = None,
        base_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        host: Host | None = None,
        kubeconfig: pathlib.Path | None = None,
        env: Mapping[str, str] | None = None,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        if kubeconfig is not None and host is None:
            raise ValueError("an agent enforcing access control must run in a namespace")
        self.node = node
        self.loopback = loopback
        self.port = port or free_port()
        self.base_port = base_port or free_port(count=gpus)
        self.log_path = root / f"agent-{node}-{id(self)}.log"
        self.state_dir = root / f"agent-state-{node}"
        args = [
            sys.executable,
            "-m",
            "dra_driver",
            "backend-agent",
            "--node-name",
            node,
            "--address",
            address,
            "--bind-address",
            loopback,
            "--port",
            str(self.port),
            "--backend-base-port",
            str(self.base_port),
            "--simulate-gpus",
            str(gpus),
            "--probe-interval",
            "0.2",
            "--log-format",
            "json",
            "--state-dir",
            str(self.state_dir),
            *(
                ("--kubeconfig", str(kubeconfig), "--access-control", "on")
                if kubeconfig is not None
                else ("--access-control", "off")
            ),
            *extra_args,
        ]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("KUBECONFIG", None)
        args = [*wrapper, *args]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            host.command(*args) if host else args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def url(self) -> str:
        return f"http://{self.loopback}:{self.port}"

    async def ready(self, timeout: float = 60) -> AgentProcess:
        import aiohttp

        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.logs()}")
                try:
                    async with http.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

    async def inventory(self) -> dict[str, object]:
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.get(self.url + "/v1/inventory") as response,
        ):
            return dict(await response.json())

    async def simulate(self, index: int, **change: object) -> int:
        import aiohttp

        async with (
            aiohttp.ClientSession() as http,
            http.put(f"{self.url}/v1/simulator/gpus/{index}", json=change) as response,
        ):
            return response.status

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        self.end_backends()
        return code

    def kill(self) -> int:
        """SIGKILL the agent, and its backends, which run in sessions of their own."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(10)
        self._log.close()
        self.end_backends()
        return code

    def end_backends(self) -> None:
        """SIGKILL what a dead agent left behind (nothing after a clean stop)."""
        for pid in backend_pids(self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


class ComponentProcess:
    """``gvirtus-dra <command>`` in a child process, logging JSON to a file."""

    def __init__(
        self,
        *,
        command: str,
        root: pathlib.Path,
        kubeconfig: pathlib.Path,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = root / f"{command}-{id(self)}.log"
        self._log = self.log_path.open("ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("KUBECONFIG", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dra_driver",
                command,
                "--kubeconfig",
                str(kubeconfig),
                "--log-format",
                "json",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    @property
    def user_agent_pid(self) -> str:
        return f"pid {self.proc.pid})"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, object]]:
        """The JSON log lines (anything else the process printed is skipped)."""
        import json

        records = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    async def wait_ready(self, url: str, timeout: float = 60) -> None:
        """Poll ``url`` until it answers 200; fail early if the process died."""
        import aiohttp

        async with asyncio.timeout(timeout), aiohttp.ClientSession() as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode}:\n{self.logs()}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.05)

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(10)
        self._log.close()
        return code

    def terminate(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code


class ControllerProcess(ComponentProcess):
    """``gvirtus-dra controller`` in a child process."""

    def __init__(
        self, *, root: pathlib.Path, kubeconfig: pathlib.Path, args: tuple[str, ...]
    ) -> None:
        super().__init__(
            command="controller",
            root=root,
            kubeconfig=kubeconfig,
            args=("--metrics-port", "0", *args),
        )


class WebhookProcess(ComponentProcess):
    """``gvirtus-dra webhook`` on loopback ports of its own, stopping without delay."""

    def __init__(
        self, *, root: pathlib.Path, kubeconfig: pathlib.Path, args: tuple[str, ...] = ()
    ) -> None:
        self.port, self.metrics_port = free_port(), free_port()
        super().__init__(
            command="webhook",
            root=root,
            kubeconfig=kubeconfig,
            args=(
                "--address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--metrics-port",
                str(self.metrics_port),
                "--shutdown-delay",
                "0",
                *args,
            ),
        )

    async def ready(self, timeout: float = 60) -> WebhookProcess:
        """Wait until it serves with a certificate loaded."""
        await self.wait_ready(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout)
        return self


def standalone_apiserver(
    *,
    kubeconfig: pathlib.Path,
    seed: pathlib.Path | None = None,
    read_latency_ms: float = 0.0,
    write_latency_ms: float = 0.0,
) -> subprocess.Popen[bytes]:
    """The test API server in a process of its own; it writes ``kubeconfig`` once serving.

    The latencies model what a real server and etcd add (``apiserver.Latency``).
    """
    args = [sys.executable, "-m", "tests.support.apiserver", "--kubeconfig", str(kubeconfig)]
    if seed is not None:
        args += ["--seed", str(seed)]
    args += ["--read-latency-ms", str(read_latency_ms)]
    args += ["--write-latency-ms", str(write_latency_ms)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL)
