"""One gvirtus-backend per GPU: started with its own file, port and GPU, restarted when it dies.

The backend is the simulator's stand-in, a real process with the real command line
that forks a serving child as the real backend does.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import pathlib
import signal
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import REGISTRY

from backend import procfs
from backend.gpus import GPUInfo
from backend.observe import Target, observe
from backend.simulator import standin_command
from backend.supervisor import BackendCommand, BackendProcess, exit_reason
from tests.support.processes import free_port

GPU = GPUInfo(
    index=3,
    uuid="GPU-3f1c2a9e-5b7d-4c1e-9a0b-000000000003",
    model="NVIDIA H100 80GB HBM3",
    memory_bytes=85899345920,
    driver_version="580.65.06",
    cuda_version="12.6",
)


def command(root: pathlib.Path, *, executable: pathlib.Path | None = None) -> BackendCommand:
    base = BackendCommand(
        executable=executable or pathlib.Path("/nonexistent"),
        gvirtus_home=pathlib.Path("/usr/local/gvirtus"),
        log_level=10000,
        plugins=("cudart", "cublas"),
        state_dir=root / "state",
        backoff_initial=0.1,
        backoff_max=0.4,
    )
    if executable is not None:
        return base
    return standin_command(base=base, open_files=32, listen_address="127.0.0.1")


@pytest.fixture
async def backend(tmp_path: pathlib.Path) -> AsyncIterator[BackendProcess]:
    process = BackendProcess(gpu=GPU, port=free_port(), command=command(tmp_path))
    await process.start()
    yield process
    await process.stop()


async def until(condition: Callable[[], object], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def proc_list(pid: int, name: str) -> list[str]:
    """A NUL-separated file of /proc/<pid>, such as its command line or environment."""
    return pathlib.Path(f"/proc/{pid}/{name}").read_text().split("\0")[:-1]


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie left for whoever adopted it to reap."""
    try:
        return procfs.parse_stat(pathlib.Path(f"/proc/{pid}/stat").read_text()).zombie
    except FileNotFoundError:
        return True


def restarts(reason: str) -> float:
    labels = {"gpu": str(GPU.index), "reason": reason}
    return REGISTRY.get_sample_value("gvirtus_dra_agent_backend_restarts_total", labels) or 0.0


def listener(backend: BackendProcess) -> int | None:
    """The pid of the backend's process that listens on its port, if any."""
    return observe([Target(pgid=backend.pid, port=backend.port)])[0].listener_pid


async def test_backend_gets_its_file_its_port_and_only_its_gpu(backend: BackendProcess) -> None:
    await until(lambda: listener(backend))
    assert backend.pid is not None
    argv = proc_list(backend.pid, "cmdline")
    env = dict(item.split("=", 1) for item in proc_list(backend.pid, "environ") if "=" in item)
    assert argv[-1] == str(backend.properties)
    properties = json.loads(backend.properties.read_text())
    assert properties["communicator"][0]["endpoint"] == {
        "suite": "tcp/ip",
        "protocol": "tcp",
        "server_address": "127.0.0.1",
        "port": str(backend.port),
    }
    assert properties["communicator"][0]["plugins"] == ["cudart", "cublas"]
    assert env["CUDA_VISIBLE_DEVICES"] == GPU.uuid
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["GVIRTUS_HOME"] == "/usr/local/gvirtus"
    assert env["GVIRTUS_LOGLEVEL"] == "10000"
    assert env["LD_LIBRARY_PATH"].split(":")[0] == "/usr/local/gvirtus/lib"
    assert listener(backend) != backend.pid, "a forked child serves, as in the real backend"


async def test_a_dead_backend_is_restarted_and_its_server_does_not_outlive_it(
    backend: BackendProcess,
) -> None:
    await until(lambda: listener(backend))
    first, server = backend.pid, listener(backend)
    assert first is not None
    assert server is not None
    os.kill(first, signal.SIGKILL)  # the leader only: its serving child is left behind

    await until(lambda: backend.restarts == 1 and listener(backend))

    assert backend.pid != first
    assert (backend.last_exit, backend.last_restart) == ("killed by SIGKILL", "exited")
    assert gone(server)


async def test_a_restart_on_request_ends_the_whole_group_and_says_why(
    backend: BackendProcess,
) -> None:
    await until(lambda: listener(backend))
    first, server = backend.pid, listener(backend)
    assert server is not None
    before = restarts("backend-wedged")
    os.kill(server, signal.SIGSTOP)  # a hung server: SIGTERM alone would wait for SIGCONT

    backend.restart(reason="backend-wedged", message="64 of 64 open files in use")
    await until(lambda: backend.restarts == 1 and listener(backend))

    assert backend.pid != first
    assert backend.last_exit == "restarted by the agent: 64 of 64 open files in use"
    assert backend.last_restart == "backend-wedged"
    assert restarts("backend-wedged") == before + 1
    assert gone(server)


async def test_a_crashing_backend_backs_off(tmp_path: pathlib.Path) -> None:
    """Runs start further and further apart: 0.1, 0.2, 0.4, 0.4 s at least."""
    starts = tmp_path / "starts"
    script = tmp_path / "gvirtus-backend"
    script.write_text(f"#!/bin/sh\ndate +%s.%N >> {starts}\nexit 3\n")
    script.chmod(0o755)
    process = BackendProcess(
        gpu=GPU, port=free_port(), command=command(tmp_path, executable=script)
    )
    await process.start()
    try:
        await until(lambda: starts.exists() and len(starts.read_text().split()) >= 5)
    finally:
        await process.stop()
    times = [float(t) for t in starts.read_text().split()]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= wait for gap, wait in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=False))
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


async def test_stop_ends_the_process_group_and_start_counts_a_restart(
    backend: BackendProcess,
) -> None:
    await until(lambda: listener(backend))
    leader, server = backend.pid, listener(backend)
    assert leader is not None
    assert server is not None

    await backend.stop(why="stopped for a test")

    assert gone(leader)
    assert gone(server)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", backend.port)).close()
    assert (backend.running, backend.last_exit) == (False, "stopped for a test")
    await backend.start()
    await until(lambda: listener(backend))
    assert (backend.restarts, backend.last_restart) == (1, "stopped")


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
