"""The kubelet plugin as a real process, driven by the kubelet emulator over its sockets.

Each test starts ``gvirtus-dra kubelet-plugin`` with node directories of its own and
the test API server holding real-shaped claims and slices, then does what a kubelet
does: find the registration socket, register, prepare, unprepare, watch health,
restart or kill the plugin.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2 as health_pb
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2 as reg_pb
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2_grpc as reg_grpc
from dra_driver.models import parse_config
from dra_driver.plugin.checkpoint import CheckpointFile
from dra_driver.plugin.faults import POINTS
from tests.support import cdi_check, components, gvirtus, kubelet, manifests, objects
from tests.support.apiserver import APIServer
from tests.support.kubelet import Claim, Plugin
from tests.support.objects import Config, Device, Result, gvirtus_config
from tests.support.processes import PluginDirs, PluginProcess

pytestmark = pytest.mark.slow

BACKEND_A = objects.backend_slice(
    pool="backend-node-a",
    devices=[Device("gpu-0", uuid="GPU-aaaa-0"), Device("gpu-1", port=10000, uuid="GPU-aaaa-1")],
)


def claim_of(obj: dict[str, Any]) -> Claim:
    meta = obj["metadata"]
    return Claim(namespace=meta["namespace"], uid=meta["uid"], name=meta["name"])


@pytest.fixture
def start(
    apiserver: APIServer, kubeconfig: pathlib.Path, node_dirs: PluginDirs
) -> AsyncIterator[Callable[..., Any]]:
    """Start plugin processes on the test node; every one is stopped afterwards."""
    apiserver.put(BACKEND_A)
    apiserver.put(objects.node(name="worker-1"))
    started: list[PluginProcess] = []

    async def launch(**kwargs: Any) -> PluginProcess:
        process = PluginProcess(dirs=node_dirs, kubeconfig=kubeconfig, **kwargs)
        started.append(process)
        await process.ready()
        return process

    yield launch
    for process in started:
        if process.proc.poll() is None:
            process.kill()


async def register(process: PluginProcess, *, kubelet_version: str = "1.37") -> Plugin:
    return await kubelet.register(
        process.dirs.registry / process.registration_socket_name, kubelet=kubelet_version
    )


async def recovered(plugin: Plugin) -> None:
    """Return once the plugin's start-up recovery finished (every unprepare waits for it).

    The sockets serve before the recovery: checking the disk right after registering
    would race with it.
    """
    nobody = Claim(namespace="gvirtus-demo", uid=str(uuid.uuid4()), name="nobody")
    assert await plugin.unprepare([nobody]) == {nobody.uid: ""}


def invariants(dirs: PluginDirs) -> dict[str, Any]:
    """Disk and checkpoint agree: what a restarted node must always find."""
    checkpoint = CheckpointFile(path=dirs.data_dir / "checkpoint.json", driver="gpu.gvirtus.io")
    recorded = checkpoint.read().model_dump(by_alias=True)["claims"]
    claim_dirs = {p.name for p in (dirs.data_dir / "claims").iterdir()}
    specs = {
        p.name.removeprefix("gvirtus.io-gpu_").removesuffix(".json") for p in dirs.cdi.iterdir()
    }
    assert claim_dirs == set(recorded), "claim directories match the checkpoint"
    assert specs == set(recorded), "CDI specs match the checkpoint"
    for uid in recorded:
        cdi_check.validate(dirs.cdi / f"gvirtus.io-gpu_{uid}.json")
        for path in (dirs.data_dir / "claims" / uid).iterdir():
            gvirtus.parse(path.read_bytes())
    assert not [p for p in dirs.root.rglob("*") if "tmp-" in p.name], "no temporary files"
    return dict(recorded)


async def test_registers_like_the_kubelet_expects(
    start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    process = await start()
    assert kubelet.find_sockets(node_dirs.registry) == [
        node_dirs.registry / "gpu.gvirtus.io-reg.sock"
    ]

    plugin = await register(process)

    assert plugin.info.type == "DRAPlugin"
    assert plugin.info.name == "gpu.gvirtus.io"
    assert plugin.info.endpoint == str(node_dirs.data_dir / "dra.sock")
    assert list(plugin.info.supported_versions) == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth",
    ]
    assert plugin.service == "v1.DRAPlugin"
    assert await plugin.prepare([]) == {}
    await plugin.close()


async def test_dra_socket_answers_before_the_registration_socket_appears(
    apiserver: APIServer, kubeconfig: pathlib.Path, node_dirs: PluginDirs
) -> None:
    process = PluginProcess(dirs=node_dirs, kubeconfig=kubeconfig)
    try:
        registration = await kubelet.wait_for_socket(node_dirs.registry, timeout=30)
        # The plugin watcher dials the endpoint right after GetInfo; it must answer now.
        plugin = await kubelet.register(registration)
        assert await plugin.prepare([], timeout=1) == {}
        await plugin.close()
    finally:
        process.kill()


async def test_a_prepare_sent_as_soon_as_the_dra_socket_accepts_succeeds(
    apiserver: APIServer, start: Callable[..., Any], kubeconfig: pathlib.Path, node_dirs: PluginDirs
) -> None:
    claim = objects.allocated_claim(name="c1")
    apiserver.put(claim)
    crashed = await start()
    crashed.kill()  # its socket files stay behind and refuse connections

    restarted = PluginProcess(dirs=node_dirs, kubeconfig=kubeconfig)
    try:
        await kubelet.accepting(node_dirs.data_dir / "dra.sock")
        plugin = kubelet.dial(node_dirs.data_dir / "dra.sock")
        result = (await plugin.prepare([claim_of(claim)]))[claim["metadata"]["uid"]]
        assert result.error == ""
        assert [d.device_name for d in result.devices] == ["gpu-0"]
        await plugin.close()
    finally:
        restarted.kill()


async def test_calls_during_start_up_wait_for_what_they_need_instead_of_failing(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    known, new = objects.allocated_claim(name="known"), objects.allocated_claim(name="new")
    for obj in (known, new):
        apiserver.put(obj)
    first = await start()
    plugin = await register(first)
    prepared = (await plugin.prepare([claim_of(known)]))[known["metadata"]["uid"]]
    await plugin.close()
    first.kill()
    release = node_dirs.root / "release-api-client"

    # Held after recovery, before the API client: the window in which a kubelet
    # that found the new registration socket sends its calls.
    restarted = await start(env={"GVIRTUS_DRA_PAUSE_AT": f"startup:api-client={release}"})
    plugin = await register(restarted)
    waiting = asyncio.create_task(plugin.prepare([claim_of(new)]))
    async with asyncio.timeout(30):
        while "call waits for start-up: the API client" not in restarted.logs():
            await asyncio.sleep(0.02)
    again = (await plugin.prepare([claim_of(known)]))[known["metadata"]["uid"]]
    assert again == prepared, "a prepared claim is answered from the checkpoint meanwhile"
    assert not waiting.done()
    release.touch()

    result = (await waiting)[new["metadata"]["uid"]]
    assert result.error == ""
    assert sorted(invariants(node_dirs)) == sorted(c["metadata"]["uid"] for c in (known, new))
    await plugin.close()


async def test_rejected_registration_is_logged_and_answered_with_an_error(
    start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    process = await start()
    async with grpc.aio.insecure_channel(
        f"unix://{node_dirs.registry / 'gpu.gvirtus.io-reg.sock'}"
    ) as channel:
        stub = reg_grpc.RegistrationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.NotifyRegistrationStatus(
                reg_pb.RegistrationStatus(
                    plugin_registered=False, error="endpoint already registered"
                ),
                timeout=5,
            )
    assert caught.value.details() == "failed registration process: endpoint already registered"
    await asyncio.sleep(0.2)
    assert "the kubelet rejected the registration: endpoint already registered" in process.logs()


async def test_prepared_files_are_byte_for_byte_what_gvirtus_and_cdi_expect(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    uid = "0c1f7d2a-5b6e-4f3a-9d8c-7b6a5f4e3d2c"
    claim = objects.allocated_claim(
        name="gvirtus-pod-gpu-nwzm2",
        uid=uid,
        results=[Result("backend-node-a", "gpu-1")],
        configs=[
            Config(
                gvirtus_config(
                    logLevel="debug",
                    gvirtusHome="/usr/local/gvirtus",
                    libraryPath="/usr/local/gvirtus/lib/frontend:/usr/local/gvirtus/lib",
                )
            )
        ],
    )
    apiserver.put(claim)
    plugin = await register(await start())

    result = (await plugin.prepare([claim_of(claim)]))[uid]

    assert result.error == ""
    (device,) = result.devices
    assert (
        list(device.request_names),
        device.pool_name,
        device.device_name,
        list(device.cdi_device_ids),
    ) == (
        ["gpu"],
        "backend-node-a",
        "gpu-1",
        [f"gvirtus.io/gpu={uid}-gpu-1"],
    )
    assert not device.HasField("share_id")
    properties = node_dirs.data_dir / "claims" / uid / "0-gpu-1.json"
    assert properties.read_bytes() == (
        b'{\n    "communicator": [\n        {\n            "endpoint": {\n'
        b'                "suite": "tcp/ip",\n                "protocol": "tcp",\n'
        b'                "server_address": "10.0.0.5",\n                "port": "10000"\n'
        b'            }\n        }\n    ],\n    "secure_application": false\n}\n'
    )
    expected_spec = {
        "cdiVersion": "0.5.0",  # the claim UID starts with a digit
        "kind": "gvirtus.io/gpu",
        "devices": [
            {
                "name": f"{uid}-gpu-1",
                "containerEdits": {
                    "env": [
                        "GVIRTUS_CONFIG=/etc/gvirtus/properties.json",
                        "GVIRTUS_BACKEND=10.0.0.5:10000",
                        "GVIRTUS_GPU_UUID=GPU-aaaa-1",
                        "GVIRTUS_GPU_MODEL=NVIDIA H100 80GB HBM3",
                        "GVIRTUS_LOGLEVEL=10000",
                        "GVIRTUS_HOME=/usr/local/gvirtus",
                        "LD_LIBRARY_PATH=/usr/local/gvirtus/lib/frontend:/usr/local/gvirtus/lib",
                    ],
                    "mounts": [
                        {
                            "hostPath": str(properties),
                            "containerPath": "/etc/gvirtus/properties.json",
                            "options": ["ro", "nosuid", "nodev", "bind"],
                        }
                    ],
                },
            }
        ],
    }
    spec_path = node_dirs.cdi / f"gvirtus.io-gpu_{uid}.json"
    assert spec_path.read_bytes() == (json.dumps(expected_spec, indent=2) + "\n").encode()
    cdi_check.validate(spec_path)
    assert gvirtus.parse(properties.read_bytes()).host == "10.0.0.5"
    assert oct(properties.stat().st_mode & 0o777) == "0o644", (
        "containers running as any user can read it"
    )
    await plugin.close()


async def test_v1beta1_kubelets_get_the_same_preparation(
    apiserver: APIServer, start: Callable[..., Any]
) -> None:
    shared = objects.backend_slice(pool="backend-node-b", devices=[Device("gpu-0")])
    claim = objects.allocated_claim(
        name="c1", results=[Result("backend-node-b", "gpu-0", share_id=str(uuid.uuid4()))]
    )
    apiserver.put(shared)
    apiserver.put(claim)
    plugin = await register(await start())

    beta = (await plugin.prepare([claim_of(claim)], version="v1beta1"))[claim["metadata"]["uid"]]
    v1 = (await plugin.prepare([claim_of(claim)], version="v1"))[claim["metadata"]["uid"]]

    assert beta.error == v1.error == ""
    assert list(beta.devices[0].cdi_device_ids) == list(v1.devices[0].cdi_device_ids)
    assert (
        v1.devices[0].share_id == claim["status"]["allocation"]["devices"]["results"][0]["shareID"]
    )
    assert "share_id" not in {f.name for f, _ in beta.devices[0].ListFields()}
    assert await plugin.unprepare([claim_of(claim)], version="v1beta1") == {
        claim["metadata"]["uid"]: ""
    }
    await plugin.close()


async def test_one_bad_claim_does_not_fail_the_others(
    apiserver: APIServer, start: Callable[..., Any]
) -> None:
    good = objects.allocated_claim(name="good")
    bad_config = objects.allocated_claim(
        name="bad-config", configs=[Config(gvirtus_config(logLevl="debug"))]
    )
    missing = objects.allocated_claim(name="missing")
    for obj in (good, bad_config):
        apiserver.put(obj)
    plugin = await register(await start())

    results = await plugin.prepare([claim_of(good), claim_of(bad_config), claim_of(missing)])

    assert results[good["metadata"]["uid"]].error == ""
    assert "gvirtus-demo/bad-config" in results[bad_config["metadata"]["uid"]].error
    assert "unknown field 'logLevl'" in results[bad_config["metadata"]["uid"]].error
    assert "gvirtus-demo/missing" in results[missing["metadata"]["uid"]].error
    assert await plugin.prepare([]) == {}, "the server keeps serving"
    await plugin.close()


async def test_idempotent_prepare_and_unprepare_of_unknown_claims(
    apiserver: APIServer, start: Callable[..., Any]
) -> None:
    claim = objects.allocated_claim(name="c1")
    apiserver.put(claim)
    plugin = await register(await start())
    uid = claim["metadata"]["uid"]

    first = await plugin.prepare([claim_of(claim)])
    second = await plugin.prepare([claim_of(claim)])
    never = Claim("gvirtus-demo", str(uuid.uuid4()), "never")

    assert first[uid] == second[uid]
    assert await plugin.unprepare([claim_of(claim), never]) == {uid: "", never.uid: ""}
    assert await plugin.unprepare([claim_of(claim)]) == {uid: ""}
    await plugin.close()


async def test_prepared_claims_survive_a_restart(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    claim = objects.allocated_claim(name="c1")
    apiserver.put(claim)
    process = await start()
    plugin = await register(process)
    before = await plugin.prepare([claim_of(claim)])
    await plugin.close()
    assert process.terminate() == 0
    (
        node_dirs.cdi / f"gvirtus.io-gpu_{claim['metadata']['uid']}.json"
    ).unlink()  # tmpfs lost in a reboot
    apiserver.remove("resourceclaims", "c1", "gvirtus-demo")

    plugin = await register(await start())
    after = await plugin.prepare([claim_of(claim)])

    assert after == before
    invariants(node_dirs)
    assert await plugin.unprepare([claim_of(claim)]) == {claim["metadata"]["uid"]: ""}
    assert invariants(node_dirs) == {}
    await plugin.close()


@pytest.mark.parametrize("point", POINTS)
async def test_crash_at_any_point_leaves_a_consistent_node(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs, point: str
) -> None:
    claim = objects.allocated_claim(name="c1")
    apiserver.put(claim)
    uid = claim["metadata"]["uid"]
    if point.startswith("unprepare"):
        healthy = await start()
        plugin = await register(healthy)
        await plugin.prepare([claim_of(claim)])
        await plugin.close()
        healthy.terminate()
    crashing = await start(env={"GVIRTUS_DRA_CRASH_AT": point})
    plugin = await register(crashing)

    call = plugin.prepare if point.startswith("prepare") else plugin.unprepare
    with pytest.raises(grpc.aio.AioRpcError):
        await call([claim_of(claim)])
    assert await crashing.exited() == -9
    await plugin.close()

    plugin = await register(await start())
    await recovered(plugin)
    recorded = invariants(node_dirs)
    assert list(recorded) == ([uid] if point == "prepare:checkpointed" else [])
    # The kubelet retries the call it saw fail; it succeeds and the node stays consistent.
    if point.startswith("prepare"):
        assert (await plugin.prepare([claim_of(claim)]))[uid].error == ""
        assert list(invariants(node_dirs)) == [uid]
    else:
        assert await plugin.unprepare([claim_of(claim)]) == {uid: ""}
        assert invariants(node_dirs) == {}
    await plugin.close()


async def test_prepare_the_kubelet_gave_up_on_does_not_come_back(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    claim = objects.allocated_claim(name="c1")
    apiserver.put(claim)
    plugin = await register(await start())
    apiserver.fail_next("GET", "/resourceclaims/c1", code=0, delay=1.0)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await plugin.prepare([claim_of(claim)], timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await plugin.unprepare([claim_of(claim)]) == {claim["metadata"]["uid"]: ""}
    await asyncio.sleep(1.2)  # the slow read has answered by now

    assert invariants(node_dirs) == {}
    await plugin.close()


async def test_random_kills_during_concurrent_prepares_never_leave_orphans(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    claims = [
        objects.allocated_claim(name=f"c{i}", results=[Result("backend-node-a", f"gpu-{i % 2}")])
        for i in range(30)
    ]
    for obj in claims:
        apiserver.put(obj)
    rng = random.Random(20261123)
    for _ in range(4):
        process = await start()
        plugin = await register(process)
        batch = rng.sample(claims, 15)
        calls = [asyncio.create_task(plugin.prepare([claim_of(c)])) for c in batch]
        calls += [
            asyncio.create_task(plugin.unprepare([claim_of(c)])) for c in rng.sample(claims, 5)
        ]
        await asyncio.sleep(rng.uniform(0.005, 0.06))
        process.kill()
        await asyncio.gather(*calls, return_exceptions=True)
        await plugin.close()
        checker = await start()
        plugin = await register(checker)
        await recovered(plugin)
        invariants(node_dirs)
        await plugin.close()
        checker.terminate()  # one plugin at a time, as on a node without a rolling update


async def test_the_health_stream_and_other_calls_are_answered_during_a_large_prepare(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    running = objects.allocated_claim(name="running", results=[Result("backend-node-a", "gpu-0")])
    claims = [
        objects.allocated_claim(name=f"c{i}", results=[Result("backend-node-a", f"gpu-{i % 2}")])
        for i in range(200)
    ]
    for obj in (running, *claims):
        apiserver.put(obj)
    release = node_dirs.root / "release-writing"
    process = await start(env={"GVIRTUS_DRA_PAUSE_AT": f"prepare:writing={release}"})
    plugin = await register(process)
    release.touch()  # the running pod's claim is prepared without a hold
    assert (await plugin.prepare([claim_of(running)]))[running["metadata"]["uid"]].error == ""
    release.unlink()
    stream = plugin.watch_health()
    key = ("backend-node-a", "gpu-0")
    await next_health(stream, lambda r: health_of(r).get(key, ("",))[0] == "HEALTHY")

    large = asyncio.create_task(plugin.prepare([claim_of(c) for c in claims]))
    async with asyncio.timeout(60):
        while "paused at prepare:writing" not in process.logs():
            await asyncio.sleep(0.02)
    # The worker thread writing the claims' files is held; the event loop is not: it
    # follows a slice change to the health stream and answers another call.
    apiserver.put(
        objects.backend_slice(
            pool="backend-node-a",
            generation=2,
            devices=[
                Device("gpu-0", taints=(("gvirtus.io/unhealthy", "backend-down", "NoSchedule"),)),
                Device("gpu-1", port=10000),
            ],
        )
    )
    await next_health(stream, lambda r: health_of(r).get(key, ("",))[0] == "UNHEALTHY")
    assert await plugin.prepare([]) == {}
    assert not large.done(), "the large prepare is still held in its worker thread"
    release.touch()

    results = await large
    assert len(results) == len(claims)
    assert {r.error for r in results.values()} == {""}, "prepared before gpu-0 turned unhealthy"
    assert len(invariants(node_dirs)) == len(claims) + 1
    await stream.aclose()
    await plugin.close()


async def test_concurrent_prepares_from_many_pods(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    claims = [
        objects.allocated_claim(name=f"c{i}", results=[Result("backend-node-a", f"gpu-{i % 2}")])
        for i in range(50)
    ]
    for obj in claims:
        apiserver.put(obj)
    plugin = await register(await start())

    outcomes = await asyncio.gather(*(plugin.prepare([claim_of(c)]) for c in claims))

    assert all(r.error == "" for outcome in outcomes for r in outcome.values())
    assert sorted(invariants(node_dirs)) == sorted(c["metadata"]["uid"] for c in claims)
    await plugin.close()


async def test_rolling_update_runs_two_plugins_on_one_state(
    apiserver: APIServer, start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    first, second = objects.allocated_claim(name="first"), objects.allocated_claim(name="second")
    many = [objects.allocated_claim(name=f"m{i}") for i in range(20)]
    for obj in (first, second, *many):
        apiserver.put(obj)
    old_uid, new_uid = str(uuid.uuid4()), str(uuid.uuid4())
    old = await start(pod_uid=old_uid)
    old_plugin = await register(old)
    assert (await old_plugin.prepare([claim_of(first)]))[first["metadata"]["uid"]].error == ""

    new = await start(pod_uid=new_uid)
    new_plugin = await register(new)
    assert {p.name for p in kubelet.find_sockets(node_dirs.registry)} == {
        f"gpu.gvirtus.io-{old_uid}-reg.sock",
        f"gpu.gvirtus.io-{new_uid}-reg.sock",
    }
    assert new_plugin.endpoint == node_dirs.data_dir / f"dra-{new_uid}.sock"
    # The kubelet may call either instance for anything.
    assert await new_plugin.unprepare([claim_of(first)]) == {first["metadata"]["uid"]: ""}
    halves = [old_plugin if i % 2 else new_plugin for i in range(len(many))]
    outcomes = await asyncio.gather(
        *(p.prepare([claim_of(c)]) for p, c in zip(halves, many, strict=True))
    )
    assert all(r.error == "" for outcome in outcomes for r in outcome.values())
    assert (await old_plugin.prepare([claim_of(second)]))[second["metadata"]["uid"]].error == ""

    assert old.terminate() == 0
    assert {p.name for p in kubelet.find_sockets(node_dirs.registry)} == {
        f"gpu.gvirtus.io-{new_uid}-reg.sock"
    }
    assert (node_dirs.data_dir / f"dra-{new_uid}.sock").exists()
    assert not (node_dirs.data_dir / f"dra-{old_uid}.sock").exists()
    assert await new_plugin.unprepare([claim_of(second)]) == {second["metadata"]["uid"]: ""}
    assert sorted(invariants(node_dirs)) == sorted(c["metadata"]["uid"] for c in many)
    await old_plugin.close()
    await new_plugin.close()


@pytest.mark.parametrize(
    ("node", "warning"),
    [
        (
            objects.node(name="worker-9", frontend=False),
            "node worker-9 lacks label gvirtus.io/frontend.allowed=true",
        ),
        (None, "node worker-9 does not exist; check --node-name"),
    ],
    ids=["unlabelled", "missing"],
)
async def test_start_warns_about_a_node_no_allocation_can_reach(
    apiserver: APIServer, start: Callable[..., Any], node: dict[str, Any] | None, warning: str
) -> None:
    if node is not None:
        apiserver.put(node)
    process = await start(node="worker-9")
    async with asyncio.timeout(10):
        while warning not in process.logs():
            await asyncio.sleep(0.05)
    assert process.terminate() == 0


async def test_sigterm_removes_own_sockets(
    start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    process = await start()
    assert process.terminate() == 0
    assert kubelet.find_sockets(node_dirs.registry) == []
    assert not (node_dirs.data_dir / "dra.sock").exists()
    assert "withdrawing registration and removing sockets" in process.logs()


async def test_stale_sockets_are_replaced_at_start(
    start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    for path in (node_dirs.registry / "gpu.gvirtus.io-reg.sock", node_dirs.data_dir / "dra.sock"):
        path.parent.mkdir(parents=True, exist_ok=True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()  # the file stays: a plugin that died without cleaning up
    plugin = await register(await start())
    assert await plugin.prepare([]) == {}
    await plugin.close()


async def test_something_else_at_the_socket_path_stops_the_start_with_a_reason(
    kubeconfig: pathlib.Path, node_dirs: PluginDirs
) -> None:
    node_dirs.data_dir.mkdir(parents=True)
    (node_dirs.data_dir / "dra.sock").write_text("not a socket")
    process = PluginProcess(dirs=node_dirs, kubeconfig=kubeconfig)
    assert await process.exited() == 1
    assert "exists and is not a socket" in process.logs()
    assert (node_dirs.data_dir / "dra.sock").read_text() == "not a socket"


async def next_health(
    stream: AsyncIterator[Any], want: Callable[[Any], bool], timeout: float = 10
) -> Any:
    async with asyncio.timeout(timeout):
        async for response in stream:
            if want(response):
                return response
    raise AssertionError("health stream ended")


def health_of(response: Any) -> dict[tuple[str, str], tuple[str, str]]:
    return {
        (d.device.pool_name, d.device.device_name): (
            health_pb.HealthStatus.Name(d.health),
            d.message,
        )
        for d in response.devices
    }


async def test_health_follows_taints_and_pool_membership(
    apiserver: APIServer, start: Callable[..., Any]
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-0")])
    apiserver.put(claim)
    before = int(time.time())
    plugin = await register(await start())
    await plugin.prepare([claim_of(claim)])
    stream = plugin.watch_health()
    key = ("backend-node-a", "gpu-0")

    first = await next_health(stream, lambda r: key in health_of(r))
    assert health_of(first)[key] == ("HEALTHY", "")
    assert first.devices[0].health_check_timeout_seconds > 1
    assert before <= first.devices[0].last_updated_time <= time.time(), "seconds since the epoch"

    tainted = objects.backend_slice(
        pool="backend-node-a",
        generation=2,
        devices=[
            Device("gpu-0", taints=(("gvirtus.io/unhealthy", "backend-down", "NoSchedule"),)),
            Device("gpu-1", port=10000),
        ],
    )
    apiserver.put(tainted)
    down = await next_health(stream, lambda r: health_of(r).get(key, ("",))[0] == "UNHEALTHY")
    assert health_of(down)[key] == ("UNHEALTHY", "backend unhealthy: backend-down (NoSchedule)")

    apiserver.put(
        objects.backend_slice(
            pool="backend-node-a", generation=3, devices=[Device("gpu-1", port=10000)]
        )
    )
    gone = await next_health(stream, lambda r: "left pool" in health_of(r).get(key, ("", ""))[1])
    assert health_of(gone)[key] == ("UNHEALTHY", "device gpu-0 left pool backend-node-a")

    apiserver.remove("resourceslices", "gpu.gvirtus.io-backend-node-a-0")
    await next_health(stream, lambda r: "no longer published" in health_of(r).get(key, ("", ""))[1])

    apiserver.put(
        objects.backend_slice(pool="backend-node-a", generation=4, devices=[Device("gpu-0")])
    )
    back = await next_health(stream, lambda r: health_of(r).get(key, ("",))[0] == "HEALTHY")
    assert health_of(back)[key] == ("HEALTHY", "")
    await stream.aclose()
    await plugin.close()


def reported(response: Any) -> list[tuple[str, str, str, str, int]]:
    """A response as the kubelet reads it, whichever proto version carried it."""
    return sorted(
        (
            d.device.pool_name,
            d.device.device_name,
            health_pb.HealthStatus.Name(d.health),
            d.message,
            d.health_check_timeout_seconds,
        )
        for d in response.devices
    )


KUBELET_HEALTH = [
    ("1.35", None),
    ("1.36", kubelet.HEALTH_V1ALPHA1),
    ("1.37", kubelet.HEALTH_V1),
]


async def test_every_kubelet_version_hears_the_same_health_on_its_own_service(
    apiserver: APIServer, start: Callable[..., Any]
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-0")])
    apiserver.put(claim)
    process = await start()
    plugins = {
        version: await register(process, kubelet_version=version) for version, _ in KUBELET_HEALTH
    }
    assert {v: p.health_service for v, p in plugins.items()} == dict(KUBELET_HEALTH)
    with pytest.raises(kubelet.KubeletError, match="ResourceHealthStatus is off"):
        await anext(plugins["1.35"].watch_health())
    await plugins["1.37"].prepare([claim_of(claim)])
    streams = {v: plugins[v].watch_health() for v in ("1.36", "1.37")}
    key = ("backend-node-a", "gpu-0")

    healthy = {v: await next_health(s, lambda r: key in health_of(r)) for v, s in streams.items()}
    apiserver.put(
        objects.backend_slice(
            pool="backend-node-a",
            generation=2,
            devices=[
                Device("gpu-0", taints=(("gvirtus.io/unhealthy", "backend-down", "NoExecute"),)),
                Device("gpu-1", port=10000),
            ],
        )
    )
    down = {
        v: await next_health(s, lambda r: health_of(r).get(key, ("",))[0] == "UNHEALTHY")
        for v, s in streams.items()
    }

    assert reported(healthy["1.36"]) == reported(healthy["1.37"])
    assert reported(down["1.36"]) == reported(down["1.37"])
    assert health_of(down["1.37"])[key] == (
        "UNHEALTHY",
        "backend unhealthy: backend-down (NoExecute)",
    )
    assert type(down["1.37"]).DESCRIPTOR.full_name == "v1.NodeWatchResourcesResponse"
    assert type(down["1.36"]).DESCRIPTOR.full_name == "v1alpha1.NodeWatchResourcesResponse"
    for stream in streams.values():
        await stream.aclose()
    for plugin in plugins.values():
        await plugin.close()


@pytest.mark.parametrize(
    ("apiserver", "api_version"),
    [(("1.36", frozenset()), "resource.k8s.io/v1beta2"), ("1.37", "resource.k8s.io/v1")],
    ids=["1.36-gate-on", "1.37"],
    indirect=["apiserver"],
)
async def test_a_drained_device_stays_healthy_and_is_still_prepared(
    apiserver: APIServer, start: Callable[..., Any], api_version: str
) -> None:
    """A DeviceTaintRule is an admin's policy, not a failure: the plugin's answers stay."""
    first, second = (
        objects.allocated_claim(name=name, results=[Result("backend-node-a", "gpu-0")])
        for name in ("before-drain", "after-drain")
    )
    for claim in (first, second):
        apiserver.put(claim)
    plugin = await register(await start())
    await plugin.prepare([claim_of(first)])
    stream = plugin.watch_health()
    key = ("backend-node-a", "gpu-0")
    await next_health(stream, lambda r: key in health_of(r))

    apiserver.put(
        objects.device_taint_rule(
            name="drain-backend-node-a",
            api_version=api_version,
            pool="backend-node-a",
            effect="NoExecute",
        )
    )
    later = [await next_health(stream, lambda r: key in health_of(r)) for _ in range(3)]
    prepared = await plugin.prepare([claim_of(second)])

    assert [health_of(r)[key] for r in later] == [("HEALTHY", "")] * 3
    assert prepared[second["metadata"]["uid"]].error == ""
    assert apiserver.list("devicetaintrules"), "the rule is there to be read, by whoever reads"
    await stream.aclose()
    await plugin.close()


async def test_health_repeats_the_full_list_while_nothing_changes(
    apiserver: APIServer, start: Callable[..., Any]
) -> None:
    claims = [
        objects.allocated_claim(name=f"c{i}", results=[Result("backend-node-a", f"gpu-{i}")])
        for i in range(2)
    ]
    for obj in claims:
        apiserver.put(obj)
    plugin = await register(await start())
    await plugin.prepare([claim_of(c) for c in claims])
    stream = plugin.watch_health()
    both = {("backend-node-a", "gpu-0"), ("backend-node-a", "gpu-1")}
    full = 0
    async with asyncio.timeout(60):  # a safety net: the plugin runs with --health-interval 1
        async for response in stream:
            full += set(health_of(response)) == both
            if full == 3:
                break
    await stream.aclose()
    assert full == 3, "the whole list again and again, though nothing changed"
    await plugin.close()


async def test_probes_and_metrics(apiserver: APIServer, start: Callable[..., Any]) -> None:
    claim = objects.allocated_claim(name="c1")
    apiserver.put(claim)
    process = await start()
    plugin = await register(process)
    await plugin.prepare([claim_of(claim)])
    await plugin.prepare([Claim("gvirtus-demo", str(uuid.uuid4()), "missing")])
    await process.http_up()
    base = f"http://127.0.0.1:{process.metrics_port}"
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(base + path) as response:
                assert (response.status, await response.text()) == (200, "ok\n")
        async with http.get(base + "/metrics") as response:
            metrics = await response.text()
    assert 'gvirtus_dra_prepare_claims_total{result="success"} 1.0' in metrics
    assert 'gvirtus_dra_prepare_claims_total{result="error"} 1.0' in metrics
    assert 'gvirtus_dra_unprepare_claims_total{result="error"} 0.0' in metrics
    assert "gvirtus_dra_prepared_claims 1.0" in metrics
    assert "gvirtus_dra_kubelet_registered 1.0" in metrics
    assert (
        'gvirtus_dra_grpc_operations_duration_seconds_count{grpc_status_code="OK",'
        'method_name="/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources"}'
    ) in metrics
    others = {
        name
        for command in components.OWNERS
        if command != "kubelet-plugin"
        for name, module in components.series(command).items()
        if components.owner(module) == command
    }
    exported = {family.name for family in text_string_to_metric_families(metrics)}
    assert others and exported & others == set(), "only the plugin's own series"
    await plugin.close()


async def test_health_probe_fails_when_a_socket_is_gone(
    start: Callable[..., Any], node_dirs: PluginDirs
) -> None:
    process = await start()
    await process.http_up()
    os.unlink(node_dirs.data_dir / "dra.sock")
    await asyncio.sleep(2.1)  # past the probe cache
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{process.metrics_port}/healthz") as response,
    ):
        assert response.status == 503
        assert "DRA socket: " in await response.text()
        assert "is no longer a socket; the kubelet cannot dial it" in await response.text()


def installed_class_config(install: str, device_class: str) -> list[Config]:
    """What the scheduler copies into an allocation from an installed DeviceClass."""
    found = manifests.pick(manifests.render(install), "DeviceClass", device_class)
    return [
        Config(
            entry["opaque"]["parameters"],
            source="FromClass",
            requests=("gpu",),
            driver=entry["opaque"]["driver"],
        )
        for entry in found["spec"].get("config") or []
    ]


GVIRTUS_IMAGE_ENV = {
    "GVIRTUS_HOME": "/usr/local/gvirtus",
    "LD_LIBRARY_PATH": "/usr/local/gvirtus/lib/frontend:/usr/local/gvirtus/lib",
}


@pytest.mark.parametrize(
    ("device_class", "claim_config", "expected"),
    [
        ("gpu.gvirtus.io", None, GVIRTUS_IMAGE_ENV),
        ("gpu.gvirtus.io-legacy", None, GVIRTUS_IMAGE_ENV),
        (
            "gpu.gvirtus.io",
            gvirtus_config(gvirtusHome="/opt/gvirtus"),
            {**GVIRTUS_IMAGE_ENV, "GVIRTUS_HOME": "/opt/gvirtus"},
        ),
        (
            "gpu.gvirtus.io",
            gvirtus_config(libraryPath="/opt/gvirtus/lib/frontend:/opt/gvirtus/lib"),
            {**GVIRTUS_IMAGE_ENV, "LD_LIBRARY_PATH": "/opt/gvirtus/lib/frontend:/opt/gvirtus/lib"},
        ),
    ],
    ids=["default-class", "legacy-class", "claim-sets-home", "claim-sets-library-path"],
)
async def test_the_default_install_gives_containers_the_gvirtus_image_layout(
    apiserver: APIServer,
    start: Callable[..., Any],
    node_dirs: PluginDirs,
    device_class: str,
    claim_config: dict[str, Any] | None,
    expected: dict[str, str],
) -> None:
    configs = installed_class_config("manifests", device_class)
    if claim_config is not None:
        configs.append(Config(claim_config))
    claim = objects.allocated_claim(name="c1", configs=configs)
    apiserver.put(claim)
    uid = claim["metadata"]["uid"]
    plugin = await register(await start())

    result = (await plugin.prepare([claim_of(claim)]))[uid]

    assert result.error == ""
    spec = cdi_check.validate(node_dirs.cdi / f"gvirtus.io-gpu_{uid}.json")
    env = cdi_check.env_of(spec, f"{uid}-gpu-0")
    assert {k: env.get(k) for k in expected} == expected
    await plugin.close()


@pytest.mark.parametrize("install", manifests.INSTALLS)
def test_every_install_configures_both_classes_for_the_gvirtus_image_layout(install: str) -> None:
    for device_class in ("gpu.gvirtus.io", "gpu.gvirtus.io-legacy"):
        (config,) = installed_class_config(install, device_class)
        assert parse_config(config.parameters).environment() == GVIRTUS_IMAGE_ENV
