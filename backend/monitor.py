"""Health and load of every backend, sampled on an interval into an inventory.

Nothing here connects to a backend: the real ``gvirtus-backend`` never closes an
accepted socket, so a probe every 2 s would leak 43,200 descriptors a day until it
wedged. Each sample reads ``/proc`` instead (:mod:`backend.observe`), judges each
backend (:mod:`backend.health`) and asks the supervisor to restart one that no
longer serves, or that leaks while nobody uses it. Load: established connections on
the port, counted only when seen in two consecutive samples, so a connection that
comes and goes at once is not load; plus GPU utilisation and memory in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import pathlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Gauge, Histogram

from backend import health, netstat, procfs
from backend.gpus import GPUSource, Usage
from backend.observe import Observation, Target, observe
from backend.supervisor import BackendProcess
from dra_driver import __version__
from dra_driver.models import GPU, AccessReport, BackendState, GPUHealth, GPULoad, Inventory

log = logging.getLogger(__name__)

UP = Gauge("gvirtus_dra_agent_backend_up", "1 when the GPU's backend serves, 0 otherwise.", ["gpu"])
CONNECTIONS = Gauge(
    "gvirtus_dra_agent_backend_connections", "Lasting frontend connections per backend.", ["gpu"]
)
ESTABLISHED = Gauge(
    "gvirtus_dra_agent_backend_established",
    "ESTABLISHED connections on the backend's port in the latest sample.",
    ["gpu"],
)
CLOSE_WAIT = Gauge(
    "gvirtus_dra_agent_backend_close_wait",
    "Descriptors the backend holds for connections its frontends closed (CLOSE-WAIT).",
    ["gpu"],
)
OPEN_FILES = Gauge(
    "gvirtus_dra_agent_backend_open_files", "Descriptors open in the serving process.", ["gpu"]
)
OPEN_FILES_LIMIT = Gauge(
    "gvirtus_dra_agent_backend_open_files_limit",
    "The serving process's own limit of open descriptors.",
    ["gpu"],
)
ACCEPT_QUEUE = Gauge(
    "gvirtus_dra_agent_backend_accept_queue",
    "Connections waiting in the backend's accept queue.",
    ["gpu"],
)
UTILIZATION = Gauge("gvirtus_dra_agent_gpu_utilization_ratio", "GPU utilisation, 0 to 1.", ["gpu"])
MEMORY_USED = Gauge("gvirtus_dra_agent_gpu_memory_used_bytes", "GPU memory in use.", ["gpu"])
SAMPLE_SECONDS = Histogram(
    "gvirtus_dra_agent_sample_duration_seconds",
    "Time to sample every backend once.",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5),
)


@dataclass(frozen=True)
class Snapshot:
    """The latest inventory, encoded once for every reader, and its ETag."""

    inventory: Inventory
    body: bytes
    etag: str


class Monitor:
    """Samples every backend, restarts those that no longer serve, keeps the latest snapshot."""

    def __init__(
        self,
        *,
        node: str,
        address: str,
        simulated: bool,
        backends: Sequence[BackendProcess],
        source: GPUSource,
        limits: health.Limits,
        access: Callable[[], AccessReport] | None = None,
        proc: pathlib.Path = procfs.PROC,
    ) -> None:
        self.node = node
        self.address = address
        self.simulated = simulated
        self.backends = list(backends)
        self.source = source
        self.limits = limits
        self.access = access
        self.proc = proc
        self.snapshot: Snapshot | None = None
        self.last_sample = 0.0
        self._tracks: dict[int, health.Track] = {}
        self._previous_peers: set[netstat.Peer] = set()
        self._lock = asyncio.Lock()

    async def settle(self, *, timeout: float) -> None:
        """Wait until every backend listens or has ended, at most ``timeout`` seconds.

        Taken before the first sample, so an agent that just started does not report
        backends that are merely starting as unhealthy.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            observations = await asyncio.to_thread(observe, self._targets(), root=self.proc)
            if all(
                seen.listening or (backend.pid is None and backend.last_exit)
                for backend, seen in zip(self.backends, observations, strict=True)
            ):
                return
            await asyncio.sleep(0.05)

    async def sample(self) -> Snapshot:
        """Look at, judge and measure every backend once; publish the result."""
        async with self._lock:  # the loop and the simulator's control endpoint both sample
            started = time.perf_counter()
            observations, usages = await asyncio.to_thread(self._read)
            peers = set().union(*(seen.peers for seen in observations))
            lasting, self._previous_peers = peers & self._previous_peers, peers
            gpus = [
                self._gpu(backend, seen, usage, lasting=lasting)
                for backend, seen, usage in zip(self.backends, observations, usages, strict=True)
            ]
            inventory = Inventory(
                node_name=self.node,
                address=self.address,
                simulated=self.simulated,
                agent_version=__version__,
                gpus=gpus,
                access=self.access() if self.access is not None else None,
            )
            body = inventory.encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self.snapshot = Snapshot(inventory, body, etag)
            self.last_sample = time.monotonic()
            SAMPLE_SECONDS.observe(time.perf_counter() - started)
            return self.snapshot

    def _targets(self) -> list[Target]:
        return [Target(pgid=backend.pid, port=backend.port) for backend in self.backends]

    def _read(self) -> tuple[list[Observation], list[Usage]]:
        observations = observe(self._targets(), root=self.proc)
        return observations, [self.source.usage(backend.gpu) for backend in self.backends]

    def _gpu(
        self,
        backend: BackendProcess,
        seen: Observation,
        usage: Usage,
        *,
        lasting: set[netstat.Peer],
    ) -> GPU:
        gpu = backend.gpu
        verdict = self._judge(backend, seen)
        connections = sum(1 for peer in lasting if peer[0] == backend.port)
        _export(str(gpu.index), verdict.health, seen, usage, connections=connections)
        return GPU(
            index=gpu.index,
            uuid=gpu.uuid,
            model=gpu.model,
            memory_bytes=gpu.memory_bytes,
            driver_version=gpu.driver_version,
            cuda_version=gpu.cuda_version,
            port=backend.port,
            health=verdict.health,
            load=GPULoad(
                connections=connections,
                utilization_percent=usage.utilization_percent,
                memory_used_bytes=usage.memory_used_bytes,
            ),
            restarts=backend.restarts,
            last_exit=backend.last_exit[:1024],
            last_restart=backend.last_restart,
            backend=_state(seen),
        )

    def _judge(self, backend: BackendProcess, seen: Observation) -> health.Judgement:
        pid = backend.pid
        track = health.Track.of(self._tracks.get(backend.gpu.index), pid=pid)
        self._tracks[backend.gpu.index] = track
        verdict = health.judge(
            seen,
            pid=pid,
            uptime=time.monotonic() - backend.started_at,
            port=backend.port,
            down_because=backend.last_exit or "not running",
            track=track,
            limits=self.limits,
        )
        if verdict.restart is not None:
            log.warning(
                "gvirtus-backend for GPU %d: %s; restarting it",
                backend.gpu.index,
                verdict.restart.message,
                extra={"gpu": backend.gpu.index, "reason": verdict.restart.reason},
            )
            backend.restart(reason=verdict.restart.reason, message=verdict.restart.message)
        return verdict


def _state(seen: Observation) -> BackendState | None:
    if not seen.alive:
        return None
    return BackendState(
        open_files=seen.open_files,
        open_files_limit=seen.open_files_limit,
        established=seen.established,
        close_wait=seen.close_wait,
        accept_queue=seen.accept_queue,
    )


def _export(
    label: str, state: GPUHealth, seen: Observation, usage: Usage, *, connections: int
) -> None:
    UP.labels(label).set(1 if state.healthy else 0)
    CONNECTIONS.labels(label).set(connections)
    ESTABLISHED.labels(label).set(seen.established)
    CLOSE_WAIT.labels(label).set(seen.close_wait)
    ACCEPT_QUEUE.labels(label).set(seen.accept_queue)
    for gauge, value in ((OPEN_FILES, seen.open_files), (OPEN_FILES_LIMIT, seen.open_files_limit)):
        if value is not None:
            gauge.labels(label).set(value)
        else:  # not running: no number beats a stale one
            with contextlib.suppress(KeyError):
                gauge.remove(label)
    if usage.utilization_percent is not None:
        UTILIZATION.labels(label).set(usage.utilization_percent / 100)
    if usage.memory_used_bytes is not None:
        MEMORY_USED.labels(label).set(usage.memory_used_bytes)
