"""Simulator mode: declared GPUs, each served by a stand-in ``gvirtus-backend`` process.

The same agent runs on GPU-less clusters and in CI. Only what needs a GPU is
replaced: NVML by GPUs declared with flags, ``gvirtus-backend`` by
:mod:`backend.standin_backend`, a real child process started with the real command
line by the same supervisor, which leaks descriptors, wedges at its own limit and
leaves a waiting parent behind when its server ends, as the real one does.
Everything above it (judging from ``/proc``, restarts, the inventory, the
controller, the kubelet plugin) runs unchanged. The inventory says
``simulated: true``.

The control endpoint changes a simulated GPU through :func:`set_listening` (stop a
backend and keep it down, or bring it back) and :func:`inject` (make it wedge, make
its server exit, or crash it), so tests and demos can show every judgement.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pathlib
import signal
import sys
import uuid
from dataclasses import dataclass, field

from backend import standin_backend
from backend.gpus import GPUInfo, Usage
from backend.supervisor import BackendCommand, BackendProcess

_NAMESPACE = uuid.UUID("6f1c9a3e-8b2d-4c5e-9f0a-1b2c3d4e5f60")
STANDIN = pathlib.Path(standin_backend.__file__)
STOPPED_MESSAGE = "stopped through the simulator control endpoint"


class Fault(enum.StrEnum):
    """What the control endpoint can do to a running stand-in."""

    WEDGE = "wedge"
    """Its server uses up its descriptors: it stops accepting and does not exit."""
    EXIT = "exit"
    """Its server exits; the parent stays, so the process runs and nothing listens."""
    CRASH = "crash"
    """Every process of it is killed by SIGSEGV."""


_SIGNALS = {Fault.WEDGE: signal.SIGUSR1, Fault.EXIT: signal.SIGUSR2, Fault.CRASH: signal.SIGSEGV}


class NotRunningError(Exception):
    """A fault was asked of a backend that is not running."""


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


def standin_command(
    *, base: BackendCommand, open_files: int, listen_address: str
) -> BackendCommand:
    """``base`` with the stand-in for ``gvirtus-backend``, run by this Python, isolated."""
    return dataclasses.replace(
        base,
        executable=STANDIN,
        interpreter=(sys.executable, "-I"),
        environment={standin_backend.LIMIT_VARIABLE: str(open_files)},
        listen_address=listen_address,
    )


async def set_listening(backend: BackendProcess, listening: bool) -> None:
    """Stop the backend and keep it down (``False``), or start it again (``True``)."""
    if listening and not backend.supervised:
        await backend.start()
    elif not listening and backend.supervised:
        await backend.stop(why=STOPPED_MESSAGE)


def inject(backend: BackendProcess, fault: Fault) -> None:
    """Send ``fault`` to every process of the running stand-in.

    Raises:
        NotRunningError: the backend is stopped or between two runs.
    """
    pid = backend.pid
    if pid is None:
        raise NotRunningError(f"the backend of GPU {backend.gpu.index} is not running")
    try:
        os.killpg(pid, _SIGNALS[fault])
    except ProcessLookupError as exc:
        raise NotRunningError(f"the backend of GPU {backend.gpu.index} just ended") from exc
