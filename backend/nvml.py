"""GPUs from NVML (``nvidia-ml-py``): identity at start, utilisation on every sample.

The bindings load ``libnvidia-ml.so`` at ``nvmlInit``; on a node without the NVIDIA
driver (or a container without the NVIDIA runtime) that fails, and the agent stops
with a message instead of publishing nothing.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from backend.gpus import GPUInfo, Usage
from dra_driver.errors import StartupError

log = logging.getLogger(__name__)


class NVMLUnavailableError(StartupError):
    """NVML cannot be loaded or initialised on this node."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_version(driver_cuda: int) -> str:
    """NVML reports the driver's CUDA version as ``major * 1000 + minor * 10``."""
    return f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10}"


class NVMLSource:
    """Reads GPUs through NVML; one instance holds NVML initialised."""

    def __init__(self, module: Any = None) -> None:
        # Imported here: only GPU nodes load it, and tests pass a stand-in.
        self._nvml = module if module is not None else importlib.import_module("pynvml")
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            raise NVMLUnavailableError(
                f"NVML is not available ({exc}): no NVIDIA driver is visible to the agent. "
                "Run it on GPU nodes with the NVIDIA container runtime, or pass "
                "--simulate-gpus N to simulate GPUs"
            ) from exc
        self._handles: dict[int, Any] = {}

    def discover(self) -> list[GPUInfo]:
        """Every GPU NVML sees, with the system's driver and CUDA versions."""
        nvml = self._nvml
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = cuda_version(int(nvml.nvmlSystemGetCudaDriverVersion()))
        found = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            self._handles[index] = handle
            found.append(
                GPUInfo(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    model=_text(nvml.nvmlDeviceGetName(handle))[:64],
                    memory_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                    driver_version=driver,
                    cuda_version=cuda,
                )
            )
        return found

    def usage(self, gpu: GPUInfo) -> Usage:
        """Utilisation and memory in use; empty when NVML cannot tell."""
        handle = self._handles.get(gpu.index)
        if handle is None:
            return Usage()
        try:
            utilization = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            used = int(self._nvml.nvmlDeviceGetMemoryInfo(handle).used)
        except self._nvml.NVMLError as exc:
            log.warning("NVML could not sample GPU %d: %s", gpu.index, exc)
            return Usage()
        return Usage(utilization_percent=utilization, memory_used_bytes=used)

    def close(self) -> None:
        """Shut NVML down."""
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as exc:
            log.debug("NVML shutdown: %s", exc)
