"""Simulator mode: declared GPUs and a real TCP listener per GPU instead of GVirtuS.

The same agent runs on GPU-less clusters and in CI: everything above the backend
process (probing, connection counting, the inventory, the controller, the kubelet
plugin) works on real sockets. A listener accepts and holds connections like a
backend would. The inventory says ``simulated: true``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

from backend.gpus import GPUInfo, Usage

_NAMESPACE = uuid.UUID("6f1c9a3e-8b2d-4c5e-9f0a-1b2c3d4e5f60")


@dataclass
class SimulatedGPUs:
    """GPUs declared by flags; their usage is whatever the control endpoint last set."""

    node: str
    count: int
    model: str
    memory_bytes: int
    driver_version: str
    cuda_version: str
    usage_by_index: dict[int, Usage] = field(default_factory=dict)

    def discover(self) -> list[GPUInfo]:
        """GPUs with UUIDs derived from node and index, so restarts keep identities."""
        return [
            GPUInfo(
                index=i,
                uuid=f"GPU-{uuid.uuid5(_NAMESPACE, f'{self.node}/{i}')}",
                model=self.model,
                memory_bytes=self.memory_bytes,
                driver_version=self.driver_version,
                cuda_version=self.cuda_version,
            )
            for i in range(self.count)
        ]

    def usage(self, gpu: GPUInfo) -> Usage:
        """What the control endpoint last set (idle until then)."""
        return self.usage_by_index.get(
            gpu.index, Usage(utilization_percent=0.0, memory_used_bytes=0)
        )

    def close(self) -> None:
        """Nothing to release."""


class FakeBackend:
    """A TCP listener standing in for one ``gvirtus-backend``."""

    def __init__(self, *, gpu: GPUInfo, host: str, port: int) -> None:
        self.gpu = gpu
        self.host = host
        self.port = port
        self.restarts = 0
        self.last_exit = ""
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def running(self) -> bool:
        """Whether the listener accepts connections."""
        return self._server is not None and self._server.is_serving()

    async def start(self) -> None:
        """Listen; holding connections open until the client closes them."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop listening and drop every connection, as a dying backend would."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
            self.last_exit = "stopped through the simulator control endpoint"

    async def set_listening(self, listening: bool) -> None:
        """Open or close the listener (the simulator's stand-in for a crash and a restart)."""
        if listening and not self.running:
            self.restarts += 1
            await self.start()
        elif not listening and self.running:
            await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
