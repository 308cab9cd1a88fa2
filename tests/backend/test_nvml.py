"""NVML answers become GPU identities; no NVML stops the agent with a reason."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from backend.nvml import NVMLSource, NVMLUnavailableError, cuda_version


class NVMLError(Exception):
    pass


class StandInNVML:
    """The few pynvml calls the agent makes, answering like two H100s would."""

    NVMLError = NVMLError

    def __init__(self, *, init_error: str | None = None) -> None:
        self.init_error = init_error
        self.shut_down = False

    def nvmlInit(self) -> None:  # noqa: N802
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.shut_down = True

    def nvmlSystemGetDriverVersion(self) -> bytes:  # noqa: N802
        return b"580.65.06"

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return 12060

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:  # noqa: N802
        return f"GPU-0000000{handle}-aaaa-bbbb-cccc-dddddddddddd"

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:  # noqa: N802
        return SimpleNamespace(total=85899345920, used=1024 * (handle + 1))

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:  # noqa: N802
        if handle == 1:
            raise NVMLError("GPU is lost")
        return SimpleNamespace(gpu=37)


def test_gpus_are_read_with_system_versions() -> None:
    source = NVMLSource(StandInNVML())
    gpus = source.discover()
    assert [
        (g.index, g.uuid[:13], g.model, g.memory_bytes, g.driver_version, g.cuda_version)
        for g in gpus
    ] == [
        (0, "GPU-00000000-", "NVIDIA H100 80GB HBM3", 85899345920, "580.65.06", "12.6"),
        (1, "GPU-00000001-", "NVIDIA H100 80GB HBM3", 85899345920, "580.65.06", "12.6"),
    ]
    assert source.usage(gpus[0]).utilization_percent == 37.0
    assert source.usage(gpus[0]).memory_used_bytes == 1024
    assert source.usage(gpus[1]).utilization_percent is None, (
        "a failing sample is unknown, not fatal"
    )


def test_without_nvml_the_agent_says_what_to_do() -> None:
    with pytest.raises(NVMLUnavailableError, match="pass --simulate-gpus N"):
        NVMLSource(StandInNVML(init_error="NVML Shared Library Not Found"))


@pytest.mark.parametrize(
    ("reported", "version"),
    [(12060, "12.6"), (11080, "11.8"), (13000, "13.0"), (12090, "12.9")],
    ids=["12.6", "11.8", "13.0", "12.9"],
)
def test_cuda_version_from_the_drivers_number(reported: int, version: str) -> None:
    assert cuda_version(reported) == version
