"""One gvirtus-backend per GPU: started with its own file, port and GPU, restarted when it dies."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
from collections.abc import AsyncIterator

import pytest

from backend.gpus import GPUInfo
from backend.supervisor import BackendCommand, BackendProcess, exit_reason
from tests.support.processes import free_port

FAKE = pathlib.Path(__file__).resolve().parents[1] / "support" / "fake_gvirtus_backend.py"
GPU = GPUInfo(
    index=3,
    uuid="GPU-3f1c2a9e-5b7d-4c1e-9a0b-000000000003",
    model="NVIDIA H100 80GB HBM3",
    memory_bytes=85899345920,
    driver_version="580.65.06",
    cuda_version="12.6",
)


def command(root: pathlib.Path, *, executable: pathlib.Path = FAKE) -> BackendCommand:
    return BackendCommand(
        executable=executable,
        gvirtus_home=pathlib.Path("/usr/local/gvirtus"),
        log_level=10000,
        plugins=("cudart", "cublas"),
        state_dir=root / "state",
        backoff_initial=0.1,
        backoff_max=0.4,
    )


@pytest.fixture
def record(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    folder = tmp_path / "record"
    folder.mkdir()
    monkeypatch.setenv("FAKE_BACKEND_RECORD", str(folder))
    return folder


@pytest.fixture
async def backend(tmp_path: pathlib.Path, record: pathlib.Path) -> AsyncIterator[BackendProcess]:
    process = BackendProcess(gpu=GPU, port=free_port(), command=command(tmp_path))
    await process.start()
    yield process
    await process.stop()


async def until(condition: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_backend_gets_its_file_its_port_and_only_its_gpu(
    backend: BackendProcess, record: pathlib.Path
) -> None:
    seen = record / f"{backend.port}.json"
    await until(seen.exists)
    started = json.loads(seen.read_text())
    assert started["argv"][1:] == [str(backend.properties)]
    assert started["properties"]["communicator"][0]["endpoint"] == {
        "suite": "tcp/ip",
        "protocol": "tcp",
        "server_address": "0.0.0.0",
        "port": str(backend.port),
    }
    assert started["properties"]["communicator"][0]["plugins"] == ["cudart", "cublas"]
    assert started["env"]["CUDA_VISIBLE_DEVICES"] == GPU.uuid
    assert started["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert started["env"]["GVIRTUS_HOME"] == "/usr/local/gvirtus"
    assert started["env"]["GVIRTUS_LOGLEVEL"] == "10000"
    assert started["env"]["LD_LIBRARY_PATH"].split(":")[0] == "/usr/local/gvirtus/lib"
    await until(lambda: backend.running)
    _, writer = await asyncio.open_connection("127.0.0.1", backend.port)
    writer.close()


async def test_dead_backend_is_restarted_and_its_end_reported(
    backend: BackendProcess, record: pathlib.Path
) -> None:
    seen = record / f"{backend.port}.json"
    await until(seen.exists)
    first = json.loads(seen.read_text())["pid"]
    os.kill(first, signal.SIGKILL)

    await until(lambda: backend.restarts == 1 and json.loads(seen.read_text())["pid"] != first)

    assert backend.last_exit == "killed by SIGKILL"
    await until(lambda: backend.running)


async def test_crashing_backend_backs_off(
    tmp_path: pathlib.Path, record: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_BACKEND_EXIT_AFTER", "0.05")
    process = BackendProcess(gpu=GPU, port=free_port(), command=command(tmp_path))
    await process.start()
    try:
        await asyncio.sleep(1.5)
    finally:
        await process.stop()
    # 0.1 + 0.2 + 0.4 + 0.4 ... seconds apart: a handful of restarts, not hundreds.
    assert 2 <= process.restarts <= 6
    assert process.last_exit == "exited with code 3"


async def test_missing_executable_is_reported_and_retried(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "bin" / "gvirtus-backend"
    process = BackendProcess(
        gpu=GPU, port=free_port(), command=command(tmp_path, executable=missing)
    )
    await process.start()
    try:
        await until(lambda: process.restarts >= 1)
    finally:
        await process.stop()
    assert process.last_exit == f"failed to start {missing}: No such file or directory"
    assert not process.running


async def test_stop_ends_the_process_group(backend: BackendProcess, record: pathlib.Path) -> None:
    seen = record / f"{backend.port}.json"
    await until(seen.exists)
    pid = json.loads(seen.read_text())["pid"]
    await backend.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1, "exited with code 1"),
        (0, "exited with code 0"),
        (-11, "killed by SIGSEGV"),
        (-200, "killed by signal 200"),
    ],
    ids=["error", "clean", "segfault", "unnamed-signal"],
)
def test_exit_reasons(code: int, reason: str) -> None:
    assert exit_reason(code) == reason
