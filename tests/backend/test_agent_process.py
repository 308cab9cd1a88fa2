"""The backend agent as a real process, and its real-backend wiring in-process."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from backend import app as agent_app
from backend.settings import AgentSettings
from dra_driver.models import parse_inventory
from tests.backend.test_nvml import StandInNVML
from tests.support.processes import AgentProcess, free_port

pytestmark = pytest.mark.slow

FAKE = pathlib.Path(__file__).resolve().parents[1] / "support" / "fake_gvirtus_backend.py"


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


async def test_held_connections_count_as_load_and_probes_do_not(agents: Any) -> None:
    agent = await agents()
    for _ in range(20):  # a prober connecting and leaving at once
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
    ],
    ids=["not-bool", "out-of-range", "unknown-field"],
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


@pytest.fixture
async def real_mode(
    short_tmp: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[AgentSettings, asyncio.Event, asyncio.Task[None]]]:
    """The agent's non-simulated wiring: NVML answered by a stand-in, GVirtuS by a fake."""
    monkeypatch.setattr(
        agent_app, "NVMLSource", lambda: __import__("backend.nvml").nvml.NVMLSource(StandInNVML())
    )
    record = short_tmp / "record"
    record.mkdir()
    monkeypatch.setenv("FAKE_BACKEND_RECORD", str(record))
    settings = AgentSettings(
        node_name="gpu-node-9",
        address="10.0.0.9",
        bind_address="127.0.0.19",
        port=free_port(),
        backend_base_port=free_port(),
        gvirtus_backend=FAKE,
        state_dir=short_tmp / "state",
        probe_interval=0.2,
        restart_backoff_max=1,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(agent_app.run(settings, stop=stop))
    yield settings, stop, task
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_real_mode_supervises_one_backend_per_nvml_gpu(
    real_mode: tuple[AgentSettings, asyncio.Event, asyncio.Task[None]], short_tmp: pathlib.Path
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
    pid = json.loads((short_tmp / "record" / f"{settings.backend_base_port}.json").read_text())[
        "pid"
    ]
    os.kill(pid, signal.SIGKILL)
    down = await until(
        lambda: _all(inventory, lambda g: g["index"] != 0 or not g["health"]["healthy"])
    )
    assert down["gpus"][0]["health"]["reason"] == "backend-down"
    assert down["gpus"][0]["health"]["message"] == "killed by SIGKILL"
    back = await until(lambda: _all(inventory, lambda g: g["health"]["healthy"]))
    assert back["gpus"][0]["restarts"] == 1
    assert back["gpus"][0]["lastExit"] == "killed by SIGKILL"


async def _all(fetch: Callable[[], Any], want: Callable[[dict[str, Any]], bool]) -> Any:
    document = await fetch()
    return document if document and all(want(g) for g in document["gpus"]) else None
