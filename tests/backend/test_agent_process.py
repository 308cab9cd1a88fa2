"""The backend agent as a real process, and its real-backend wiring in-process."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backend import app as agent_app
from backend import procfs, standin_backend
from backend.observe import Target, observe
from backend.settings import AgentSettings
from dra_driver.models import AccessMode, parse_inventory
from tests.backend.test_nvml import StandInNVML
from tests.support.processes import AgentProcess, backend_pids, free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def agents(short_tmp: pathlib.Path) -> Any:
    started: list[AgentProcess] = []

    async def launch(**kwargs: Any) -> AgentProcess:
        kwargs.setdefault("node", "gpu-node-1")
        kwargs.setdefault("loopback", "127.0.0.11")
        kwargs.setdefault("address", "10.0.0.11")
        agent = AgentProcess(root=short_tmp, **kwargs)
        started.append(agent)
        return await agent.ready()

    yield launch
    for agent in started:
        if agent.proc.poll() is None:
            agent.kill()


async def until(check: Callable[[], Any], timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.05)
    return result


async def test_simulated_inventory_is_valid_stable_and_says_so(agents: Any) -> None:
    agent = await agents(gpus=3)
    first = await agent.inventory()
    inventory = parse_inventory(json.dumps(first).encode())
    assert (inventory.node_name, inventory.address, inventory.simulated) == (
        "gpu-node-1",
        "10.0.0.11",
        True,
    )
    assert [(g.index, g.port, g.health.healthy) for g in inventory.gpus] == [
        (0, agent.base_port, True),
        (1, agent.base_port + 1, True),
        (2, agent.base_port + 2, True),
    ]
    assert inventory.gpus[0].memory_bytes == 80 * 1024**3
    assert agent.terminate() == 0
    again = await agents(gpus=3, port=agent.port, base_port=agent.base_port)
    assert [g["uuid"] for g in (await again.inventory())["gpus"]] == [
        g["uuid"] for g in first["gpus"]
    ]


async def test_unchanged_inventory_answers_304(agents: Any) -> None:
    agent = await agents()
    async with aiohttp.ClientSession() as http:
        async with http.get(agent.url + "/v1/inventory") as response:
            etag = response.headers["ETag"]
        async with http.get(
            agent.url + "/v1/inventory", headers={"If-None-Match": etag}
        ) as response:
            assert response.status == 304
        await agent.simulate(0, utilizationPercent=50)
        async with http.get(
            agent.url + "/v1/inventory", headers={"If-None-Match": etag}
        ) as response:
            assert response.status == 200
            assert (await response.json())["gpus"][0]["load"]["utilizationPercent"] == 50.0


async def test_a_stopped_listener_turns_unhealthy_and_recovers(agents: Any) -> None:
    agent = await agents()
    assert await agent.simulate(1, listening=False) == 200

    down = await until(lambda: _gpu(agent, 1, lambda g: not g["health"]["healthy"]))
    assert down["health"]["reason"] == "backend-down"
    assert (await agent.inventory())["gpus"][0]["health"]["healthy"] is True
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(agent.loopback, agent.base_port + 1)

    await agent.simulate(1, listening=True)
    back = await until(lambda: _gpu(agent, 1, lambda g: g["health"]["healthy"]))
    assert back["restarts"] == 1


async def _gpu(agent: AgentProcess, index: int, want: Callable[[dict[str, Any]], bool]) -> Any:
    gpu = (await agent.inventory())["gpus"][index]
    return gpu if want(gpu) else None


async def test_held_connections_count_as_load_and_fleeting_ones_do_not(agents: Any) -> None:
    agent = await agents()
    for _ in range(20):  # connecting and leaving at once
        _, writer = await asyncio.open_connection(agent.loopback, agent.base_port)
        writer.close()
    held = [await asyncio.open_connection(agent.loopback, agent.base_port) for _ in range(3)]
    try:
        gpu = await until(lambda: _gpu(agent, 0, lambda g: g["load"]["connections"] == 3))
        assert gpu["load"]["connections"] == 3
        assert (await agent.inventory())["gpus"][1]["load"]["connections"] == 0
    finally:
        for _, writer in held:
            writer.close()
    await until(lambda: _gpu(agent, 0, lambda g: g["load"]["connections"] == 0))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"listening": "no"}, "listening must be true or false"),
        ({"utilizationPercent": 250}, "utilizationPercent must be a number from 0 to 100"),
        ({"temperature": 80}, "expected an object with"),
        ({"fault": "melt"}, "fault must be one of wedge, exit, crash"),
        ({"fault": ["exit"]}, "fault must be one of"),
    ],
    ids=["not-bool", "out-of-range", "unknown-field", "unknown-fault", "fault-not-a-word"],
)
async def test_simulator_control_rejects_bad_changes(
    agents: Any, body: dict[str, Any], message: str
) -> None:
    agent = await agents()
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{agent.url}/v1/simulator/gpus/0", json=body) as response:
            assert response.status == 400
            assert message in await response.text()
        async with http.put(f"{agent.url}/v1/simulator/gpus/7", json={}) as response:
            assert response.status == 400
    assert (await agent.inventory())["gpus"][0]["health"]["healthy"] is True


async def test_metrics_and_health(agents: Any) -> None:
    agent = await agents()
    async with aiohttp.ClientSession() as http:
        async with http.get(agent.url + "/healthz") as response:
            assert (response.status, await response.text()) == (200, "ok\n")
        async with http.get(agent.url + "/metrics") as response:
            text = await response.text()
    assert 'gvirtus_dra_agent_backend_up{gpu="0"} 1.0' in text
    assert 'gvirtus_dra_agent_backend_connections{gpu="1"} 0.0' in text
    assert 'gvirtus_dra_agent_backend_close_wait{gpu="1"} 0.0' in text
    assert 'gvirtus_dra_agent_backend_established{gpu="1"} 0.0' in text
    assert 'gvirtus_dra_agent_backend_open_files_limit{gpu="0"} 64.0' in text


async def test_sigterm_closes_every_backend(agents: Any) -> None:
    agent = await agents()
    assert agent.terminate() == 0
    for port in (agent.port, agent.base_port, agent.base_port + 1):
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(agent.loopback, port)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--address", "127.0.0.1"],
            "--address (env GVIRTUS_DRA_ADDRESS): 127.0.0.1 cannot be reached",
        ),
        (["--address", "gpu-node-1.example"], "is not an IPv4 address"),
        (
            ["--address", "10.0.0.1", "--simulate-gpus", "2", "--backend-base-port", "65535"],
            "run past 65535",
        ),
    ],
    ids=["loopback", "hostname", "ports-overflow"],
)
def test_bad_settings_stop_the_agent_with_the_flag_named(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dra_driver", "backend-agent", "--node-name", "n", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr


def serving_pid(agent: AgentProcess, index: int) -> int:
    """The process of a GPU's backend that listens on its port (a child of the leader)."""
    port = agent.base_port + index
    leaders = [
        pid
        for pid in backend_pids(agent.state_dir, properties=f"gpu-{index}.properties.json")
        if _pgid(pid) == pid
    ]
    seen = observe([Target(pgid=leader, port=port) for leader in leaders])
    pids = [s.listener_pid for s in seen if s.listener_pid is not None]
    assert len(pids) == 1, f"expected one process listening on {port}, found {pids}"
    return pids[0]


def _pgid(pid: int) -> int | None:
    try:
        return procfs.parse_stat(pathlib.Path(f"/proc/{pid}/stat").read_text()).pgid
    except FileNotFoundError:
        return None


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def metric(agent: AgentProcess, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(agent.url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def samples_taken(agent: AgentProcess) -> float:
    return await metric(agent, "gvirtus_dra_agent_sample_duration_seconds_count")


async def after_samples(agent: AgentProcess, count: int) -> None:
    """Wait until the agent has judged its backends ``count`` more times."""
    start = await samples_taken(agent)
    await until(lambda: _at_least(samples_taken(agent), start + count), timeout=60)


async def _at_least(value: Any, wanted: float) -> bool:
    return bool(await value >= wanted)


async def test_judging_leaves_a_backend_s_descriptors_alone_and_a_connect_does_not(
    agents: Any,
) -> None:
    """The agent reads /proc only; one TCP connect, closed, costs the real backend a descriptor."""
    agent = await agents(gpus=1)
    server = serving_pid(agent, 0)
    before = open_files(server)

    await after_samples(agent, 25)
    assert open_files(server) == before

    _, writer = await asyncio.open_connection(agent.loopback, agent.base_port)
    writer.close()
    await writer.wait_closed()
    await until(lambda: _gpu(agent, 0, lambda g: g["backend"]["closeWait"] == 1))
    assert open_files(server) == before + 1
    await after_samples(agent, 10)
    assert open_files(server) == before + 1, "it never gives the descriptor back"


async def test_a_wedged_backend_is_reported_and_restarted(agents: Any) -> None:
    """Frontends that stay connected fill its descriptors: it stops accepting, as measured."""
    agent = await agents(
        gpus=1, extra_args=("--simulate-open-files", "16", "--restart-after-samples", "10")
    )
    server = serving_pid(agent, 0)
    frontends = [socket.socket() for _ in range(20)]
    try:
        for frontend in frontends:
            frontend.setblocking(False)
            frontend.connect_ex((agent.loopback, agent.base_port))
        wedged = await until(
            lambda: _gpu(agent, 0, lambda g: g["health"]["reason"] == "backend-wedged")
        )
        assert "16 of 16 open files in use" in wedged["health"]["message"]
        assert wedged["backend"]["openFiles"] == wedged["backend"]["openFilesLimit"] == 16

        back = await until(lambda: _gpu(agent, 0, lambda g: g["restarts"] == 1))
    finally:
        for frontend in frontends:
            frontend.close()
    assert back["lastRestart"] == "backend-wedged"
    assert back["lastExit"].startswith("restarted by the agent: 16 of 16 open files in use")
    assert (
        await metric(
            agent, "gvirtus_dra_agent_backend_restarts_total", gpu="0", reason="backend-wedged"
        )
        == 1
    )
    await until(lambda: _gpu(agent, 0, lambda g: g["health"]["healthy"]))
    assert serving_pid(agent, 0) != server
    assert "restarting it" in agent.logs()


async def test_leaks_restart_an_idle_backend_and_never_one_in_use(agents: Any) -> None:
    agent = await agents(gpus=1, extra_args=("--leak-restart-threshold", "5"))
    _, frontend = await asyncio.open_connection(agent.loopback, agent.base_port)
    for _ in range(6):
        _, writer = await asyncio.open_connection(agent.loopback, agent.base_port)
        writer.close()
        await writer.wait_closed()
    await until(lambda: _gpu(agent, 0, lambda g: g["backend"]["closeWait"] == 6))

    await after_samples(agent, 10)
    gpu = (await agent.inventory())["gpus"][0]
    assert (gpu["restarts"], gpu["health"]["healthy"], gpu["backend"]["established"]) == (
        0,
        True,
        1,
    )

    frontend.close()
    back = await until(lambda: _gpu(agent, 0, lambda g: g["restarts"] == 1))
    assert back["lastRestart"] == "leaked-descriptors"
    assert "holds 7 descriptors of closed connections" in back["lastExit"]
    assert (
        await metric(
            agent, "gvirtus_dra_agent_backend_restarts_total", gpu="0", reason="leaked-descriptors"
        )
        == 1
    )


@pytest.mark.parametrize(
    ("fault", "reason", "restart", "exit"),
    [
        ("wedge", "backend-wedged", "backend-wedged", "restarted by the agent: 64 of 64 open"),
        ("exit", "not-listening", "not-listening", "restarted by the agent: runs, but none"),
        ("crash", "backend-down", "exited", "killed by SIGSEGV"),
    ],
    ids=["wedge", "server-exits", "crash"],
)
async def test_simulated_faults_are_judged_and_restarted(
    agents: Any, fault: str, reason: str, restart: str, exit: str
) -> None:
    agent = await agents(extra_args=("--restart-after-samples", "10"))
    assert await agent.simulate(1, fault=fault) == 200

    await until(lambda: _gpu(agent, 1, lambda g: g["health"]["reason"] == reason))
    back = await until(lambda: _gpu(agent, 1, lambda g: g["restarts"] == 1))
    assert (back["lastRestart"], back["lastExit"][: len(exit)]) == (restart, exit)
    await until(lambda: _gpu(agent, 1, lambda g: g["health"]["healthy"]))
    assert (await agent.inventory())["gpus"][0]["restarts"] == 0


async def test_a_fault_for_a_stopped_backend_is_refused(agents: Any) -> None:
    agent = await agents()
    await agent.simulate(0, listening=False)
    assert await agent.simulate(0, fault="crash") == 409


@pytest.fixture
async def real_mode(
    short_tmp: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AgentSettings, asyncio.Event, asyncio.Task[None]]]:
    """The agent's non-simulated wiring, NVML and GVirtuS answered by stand-ins.

    The backend is the simulator's stand-in behind a ``gvirtus-backend`` script.
    """
    monkeypatch.setattr(
        agent_app, "NVMLSource", lambda: __import__("backend.nvml").nvml.NVMLSource(StandInNVML())
    )
    executable = short_tmp / "bin" / "gvirtus-backend"
    executable.parent.mkdir()
    executable.write_text(f'#!/bin/sh\nexec {sys.executable} -I {standin_backend.__file__} "$@"\n')
    executable.chmod(0o755)
    settings = AgentSettings(
        node_name="gpu-node-9",
        address="10.0.0.9",
        bind_address="127.0.0.19",
        port=free_port(),
        backend_base_port=free_port(),
        gvirtus_backend=executable,
        state_dir=short_tmp / "state",
        probe_interval=0.2,
        restart_backoff_max=1,
        # Never in the test machine's own network namespace (see tests/backend/test_access.py).
        access_control=AccessMode.OFF,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent_app.run(settings, stop=stop))
    yield settings, stop, task
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_real_mode_supervises_one_backend_per_nvml_gpu(
    real_mode: tuple[AgentSettings, asyncio.Event, asyncio.Task[None]],
) -> None:
    settings, _, _ = real_mode
    url = f"http://127.0.0.19:{settings.port}/v1/inventory"

    async def inventory() -> dict[str, Any]:
        try:
            async with aiohttp.ClientSession() as http, http.get(url) as response:
                return dict(await response.json()) if response.status == 200 else {}
        except aiohttp.ClientConnectionError:
            return {}  # not serving yet

    healthy = await until(lambda: _all(inventory, lambda g: g["health"]["healthy"]))
    assert [(g["index"], g["uuid"][:13], g["port"]) for g in healthy["gpus"]] == [
        (0, "GPU-00000000-", settings.backend_base_port),
        (1, "GPU-00000001-", settings.backend_base_port + 1),
    ]
    assert healthy["simulated"] is False
    assert healthy["gpus"][0]["load"]["utilizationPercent"] == 37.0
    leader = min(backend_pids(settings.state_dir, properties="gpu-0.properties.json"))
    os.kill(leader, signal.SIGKILL)
    down = await until(
        lambda: _all(inventory, lambda g: g["index"] != 0 or not g["health"]["healthy"])
    )
    assert down["gpus"][0]["health"]["reason"] == "backend-down"
    assert down["gpus"][0]["health"]["message"] == "killed by SIGKILL"
    back = await until(lambda: _all(inventory, lambda g: g["health"]["healthy"]))
    assert back["gpus"][0]["restarts"] == 1
    assert back["gpus"][0]["lastExit"] == "killed by SIGKILL"
    assert back["gpus"][0]["lastRestart"] == "exited"


async def _all(fetch: Callable[[], Any], want: Callable[[dict[str, Any]], bool]) -> Any:
    document = await fetch()
    return document if document and all(want(g) for g in document["gpus"]) else None
