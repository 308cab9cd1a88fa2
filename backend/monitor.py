"""Health and load of every backend, sampled on an interval into an inventory.

Health: the backend process runs and its port accepts a TCP connection (GVirtuS has
no health call; a connect is the cheapest proof it serves). Load: established
connections on the port, counted only when seen in two consecutive samples, so
probes (the agent's own and anyone else's, which close at once) are not load; plus
GPU utilisation and memory in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Gauge, Histogram

from backend import netstat
from backend.gpus import GPUInfo, GPUSource
from dra_driver import __version__
from dra_driver.models import GPU, GPUHealth, GPULoad, Inventory

log = logging.getLogger(__name__)

UP = Gauge("gvirtus_dra_agent_backend_up", "1 when the GPU's backend serves, 0 otherwise.", ["gpu"])
CONNECTIONS = Gauge(
    "gvirtus_dra_agent_backend_connections", "Frontend connections per backend.", ["gpu"]
)
UTILIZATION = Gauge("gvirtus_dra_agent_gpu_utilization_ratio", "GPU utilisation, 0 to 1.", ["gpu"])
MEMORY_USED = Gauge("gvirtus_dra_agent_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"])
SAMPLE_SECONDS = Histogram(
    "gvirtus_dra_agent_sample_duration_seconds",
    "Time to sample every backend once.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5),
)


class Backend(Protocol):
    """A GPU's backend: a supervised ``gvirtus-backend`` or a simulated listener."""

    gpu: GPUInfo
    port: int
    restarts: int
    last_exit: str

    @property
    def running(self) -> bool:
        """Whether the process (or listener) is up."""

    async def start(self) -> None:
        """Start serving."""

    async def stop(self) -> None:
        """Stop serving."""


@dataclass(frozen=True)
class Snapshot:
    """The latest inventory, encoded once for every reader, and its ETag."""

    inventory: Inventory
    body: bytes
    etag: str


class Monitor:
    """Samples every backend and keeps the latest :class:`Snapshot`."""

    def __init__(
        self,
        *,
        node: str,
        address: str,
        simulated: bool,
        backends: Sequence[Backend],
        source: GPUSource,
        probe_host: str,
        probe_timeout: float,
        connections: Callable[[set[int]], set[netstat.Peer]] = netstat.established,
    ) -> None:
        self.node = node
        self.address = address
        self.simulated = simulated
        self.backends = list(backends)
        self.source = source
        self.probe_host = probe_host
        self.probe_timeout = probe_timeout
        self.connections = connections
        self.snapshot: Snapshot | None = None
        self.last_sample = 0.0
        self._previous_peers: set[netstat.Peer] = set()

    async def sample(self) -> Snapshot:
        """Probe, count and measure every backend once; publish the result."""
        started = time.perf_counter()
        open_ports = await asyncio.gather(*(self._probe(b) for b in self.backends))
        peers = self.connections({b.port for b in self.backends})
        lasting = peers & self._previous_peers
        self._previous_peers = peers
        gpus = [
            self._gpu(backend, port_open=open_, lasting=lasting)
            for backend, open_ in zip(self.backends, open_ports, strict=True)
        ]
        inventory = Inventory(
            node_name=self.node,
            address=self.address,
            simulated=self.simulated,
            agent_version=__version__,
            gpus=gpus,
        )
        body = inventory.encode()
        self.snapshot = Snapshot(inventory, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        self.last_sample = time.monotonic()
        SAMPLE_SECONDS.observe(time.perf_counter() - started)
        return self.snapshot

    def _gpu(self, backend: Backend, *, port_open: bool, lasting: set[netstat.Peer]) -> GPU:
        gpu, label = backend.gpu, str(backend.gpu.index)
        if not backend.running:
            health = GPUHealth(
                healthy=False, reason="backend-down", message=backend.last_exit or "not running"
            )
        elif not port_open:
            health = GPUHealth(
                healthy=False,
                reason="port-closed",
                message=f"port {backend.port} refused a probe or took over {self.probe_timeout}s",
            )
        else:
            health = GPUHealth(healthy=True)
        usage = self.source.usage(gpu)
        connections = sum(1 for peer in lasting if peer[0] == backend.port)
        UP.labels(label).set(1 if health.healthy else 0)
        CONNECTIONS.labels(label).set(connections)
        if usage.utilization_percent is not None:
            UTILIZATION.labels(label).set(usage.utilization_percent / 100)
        if usage.memory_used_bytes is not None:
            MEMORY_USED.labels(label).set(usage.memory_used_bytes)
        return GPU(
            index=gpu.index,
            uuid=gpu.uuid,
            model=gpu.model,
            memory_bytes=gpu.memory_bytes,
            driver_version=gpu.driver_version,
            cuda_version=gpu.cuda_version,
            port=backend.port,
            health=health,
            load=GPULoad(
                connections=connections,
                utilization_percent=usage.utilization_percent,
                memory_used_bytes=usage.memory_used_bytes,
            ),
            restarts=backend.restarts,
            last_exit=backend.last_exit,
        )

    async def _probe(self, backend: Backend) -> bool:
        if not backend.running:
            return False
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.probe_host, backend.port), self.probe_timeout
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
