"""What the agent knows about one GPU, wherever it came from (NVML or the simulator)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GPUInfo:
    """Identity of one GPU; stable across agent restarts."""

    index: int
    uuid: str
    model: str
    memory_bytes: int
    driver_version: str
    cuda_version: str


@dataclass(frozen=True)
class Usage:
    """A GPU's utilisation and memory use, when the source can tell."""

    utilization_percent: float | None = None
    memory_used_bytes: int | None = None


class GPUSource(Protocol):
    """Where GPUs and their usage come from."""

    def discover(self) -> list[GPUInfo]:
        """Every GPU of the node, in index order."""

    def usage(self, gpu: GPUInfo) -> Usage:
        """Current utilisation and memory use of ``gpu``."""

    def close(self) -> None:
        """Release the source."""
