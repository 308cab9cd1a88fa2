"""The controller against agents run as real processes in simulator mode.

Each test starts simulated backend agents on loopback addresses of their own, the
pods that point the controller at them, and the controller in this process, then
watches what it publishes in the test API server.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from dra_driver.controller.settings import Sharing
from tests.controller.conftest import Cluster
from tests.models.test_inventory import gpu, inventory
from tests.support import objects
from tests.support.apiserver import APIServer, fixture_object
from tests.support.processes import ControllerProcess, free_port

pytestmark = pytest.mark.slow


def taint(devices: dict[str, Any], name: str) -> tuple[str, str, str] | None:
    taints = devices.get(name, {}).get("taints") or []
    return (taints[0]["key"], taints[0]["value"], taints[0]["effect"]) if taints else None


async def test_slices_appear_with_the_agents_gpus(cluster: Cluster) -> None:
    agent = await cluster.add_backend(
        "gpu-node-a", gpus=2, labels={"topology.kubernetes.io/zone": "zone-a"}
    )
    cluster.start_controller()

    (published,) = await cluster.until(lambda: cluster.pool("gpu-node-a"))

    inventory_now = await agent.inventory()
    node = cluster.apiserver.get("nodes", "gpu-node-a")
    assert node is not None
    assert published["metadata"]["name"] == "gpu.gvirtus.io-gpu-node-a-0"
    assert published["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": "gpu-node-a",
            "uid": node["metadata"]["uid"],
            "controller": True,
        }
    ]
    spec = published["spec"]
    assert spec["driver"] == "gpu.gvirtus.io"
    assert spec["pool"] == {"name": "gpu-node-a", "generation": 1, "resourceSliceCount": 1}
    assert (
        spec["nodeSelector"] == fixture_object("01-resourceslice-get.json")["spec"]["nodeSelector"]
    )
    assert [d["name"] for d in spec["devices"]] == ["gpu-0", "gpu-1"]
    first = spec["devices"][1]["attributes"]
    assert first["uuid"] == {"string": inventory_now["gpus"][1]["uuid"]}
    assert first["backendAddress"] == {
        "string": agent.proc.args[agent.proc.args.index("--address") + 1]
    }
    assert first["backendPort"] == {"int": agent.base_port + 1}
    assert first["backendNode"] == {"string": "gpu-node-a"}
    assert first["simulated"] == {"bool": True}
    assert first["zone"] == {"string": "zone-a"}
    assert first["cudaVersion"] == {"version": "12.6.0"}
    assert spec["devices"][1]["capacity"] == {"memory": {"value": "80Gi"}}


async def test_a_second_agent_adds_a_pool(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller()
    await cluster.until(lambda: cluster.pool("gpu-node-a"))

    await cluster.add_backend("gpu-node-b", gpus=3)

    await cluster.until(lambda: len(cluster.devices("gpu-node-b")) == 3)
    assert len(cluster.devices("gpu-node-a")) == 2


async def test_a_dead_backend_is_tainted_then_evicted_and_returns(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller()
    await cluster.until(lambda: cluster.pool("gpu-node-a"))

    await agent.simulate(1, listening=False)
    await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-1"))
    assert taint(cluster.devices("gpu-node-a"), "gpu-1") == (
        "gvirtus.io/unhealthy",
        "backend-down",
        "NoSchedule",
    )
    assert taint(cluster.devices("gpu-node-a"), "gpu-0") is None
    await cluster.until(
        lambda: (taint(cluster.devices("gpu-node-a"), "gpu-1") or ("", "", ""))[2] == "NoExecute"
    )

    await agent.simulate(1, listening=True)
    await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-1") is None)
    reasons = [e["reason"] for e in cluster.backend_events()]
    assert reasons == [
        "GVirtuSBackendUnhealthy",
        "GVirtuSBackendEvicting",
        "GVirtuSBackendRecovered",
    ]


async def test_an_agent_that_stops_answering_is_tolerated_for_the_grace_period(
    cluster: Cluster,
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller()
    await cluster.until(lambda: cluster.pool("gpu-node-a"))
    writes = len(cluster.slice_writes())

    agent.kill()
    await asyncio.sleep(1.0)
    assert len(cluster.slice_writes()) == writes, "one missed poll is not a failure"

    devices = await cluster.until(
        lambda: taint(cluster.devices("gpu-node-a"), "gpu-0") and cluster.devices("gpu-node-a")
    )
    assert taint(devices, "gpu-0") == ("gvirtus.io/unhealthy", "agent-unreachable", "NoSchedule")
    assert taint(devices, "gpu-1") == ("gvirtus.io/unhealthy", "agent-unreachable", "NoSchedule")


async def test_an_agent_that_vanishes_takes_its_pool_along(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    await cluster.add_backend("gpu-node-b")
    cluster.start_controller()
    await cluster.until(lambda: cluster.pool("gpu-node-a") and cluster.pool("gpu-node-b"))

    agent.terminate()
    cluster.apiserver.remove("pods", "backend-agent-gpu-node-a", "gvirtus-system")

    await cluster.until(lambda: not cluster.pool("gpu-node-a"))
    assert cluster.pool("gpu-node-b")
    events = await cluster.until(cluster.backend_events)  # recorded once the slices are deleted
    assert [(e["reason"], e["involvedObject"]["name"]) for e in events] == [
        ("GVirtuSPoolRemoved", "gpu-node-a")
    ]


async def test_a_restarted_controller_writes_nothing(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a", gpus=3)
    cluster.start_controller()
    await agent.simulate(2, listening=False)
    await cluster.until(
        lambda: (taint(cluster.devices("gpu-node-a"), "gpu-2") or ("", "", ""))[2] == "NoExecute"
    )
    await cluster.stop_controllers()
    writes = len(cluster.slice_writes())

    cluster.start_controller(pod_name="controller-1")
    await asyncio.sleep(2.5)

    assert cluster.slice_writes()[writes:] == []


async def test_two_controllers_never_both_publish(cluster: Cluster, apiserver: APIServer) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    first = cluster.start_controller(pod_name="controller-a")
    await cluster.until(lambda: cluster.pool("gpu-node-a"))
    cluster.start_controller(pod_name="controller-b")
    await asyncio.sleep(1)
    leases = [r for r in apiserver.writes() if "/leases" in r.path]

    first.set()  # the leader stops and releases; the standby takes over
    await asyncio.sleep(1)
    await agent.simulate(0, listening=False)
    await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-0"))

    lease = apiserver.get("leases", "gvirtus-dra-controller", "gvirtus-system")
    assert lease is not None
    assert lease["spec"]["holderIdentity"].startswith("controller-b_")
    assert lease["spec"]["leaseTransitions"] == 1
    assert len(leases) >= 2


@pytest.mark.parametrize(
    ("sharing", "names", "extra"),
    [
        (
            Sharing.SLOTS,
            ["gpu-0-s0", "gpu-0-s1", "gpu-0-s2", "gpu-0-s3"],
            {"capacity": {"memory": {"value": "20Gi"}}},
        ),
        (
            Sharing.CAPACITY,
            ["gpu-0"],
            {
                "allowMultipleAllocations": True,
                "capacity": fixture_object("02-shared-resourceslice-get.json")["spec"]["devices"][
                    0
                ]["capacity"],
            },
        ),
    ],
    ids=["slots", "capacity"],
)
async def test_each_sharing_mode_publishes_its_shape(
    cluster: Cluster, sharing: Sharing, names: list[str], extra: dict[str, Any]
) -> None:
    await cluster.add_backend("gpu-node-a", gpus=1)
    cluster.start_controller(sharing=sharing)

    devices = await cluster.until(lambda: cluster.devices("gpu-node-a"))

    assert list(devices) == names
    for device in devices.values():
        assert {k: device[k] for k in extra} == extra


async def test_a_large_node_is_split_into_slices_within_the_limit(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a", gpus=70)
    cluster.start_controller()

    slices = await cluster.until(
        lambda: len(cluster.pool("gpu-node-a")) == 2 and cluster.pool("gpu-node-a")
    )

    assert sorted(len(s["spec"]["devices"]) for s in slices) == [6, 64]
    assert {
        (s["spec"]["pool"]["generation"], s["spec"]["pool"]["resourceSliceCount"]) for s in slices
    } == {(1, 2)}
    assert {s["metadata"]["name"] for s in slices} == {
        "gpu.gvirtus.io-gpu-node-a-0",
        "gpu.gvirtus.io-gpu-node-a-1",
    }


@pytest.fixture
def gated_cluster(short_tmp: Any) -> Any:
    started: list[Cluster] = []

    def build(*gates: str) -> Cluster:
        server = APIServer(
            tls_dir=short_tmp / f"tls-{len(started)}", disabled_features=frozenset(gates)
        ).start()
        world = Cluster(
            server, server.write_kubeconfig(short_tmp / f"kc-{len(started)}"), short_tmp
        )
        started.append(world)
        return world

    yield build
    for world in started:
        for agent in world.agents.values():
            agent.kill()
        world.apiserver.stop()


async def test_without_consumable_capacity_the_controller_falls_back_once(
    gated_cluster: Any,
) -> None:
    cluster = gated_cluster("DRAConsumableCapacity")
    try:
        await cluster.add_backend("gpu-node-a", gpus=2)
        cluster.start_controller(sharing=Sharing.CAPACITY, capacity_fallback=Sharing.SLOTS, slots=2)
        devices = await cluster.until(
            lambda: len(cluster.devices("gpu-node-a")) == 4 and cluster.devices("gpu-node-a")
        )
        writes = len(cluster.slice_writes())
        await asyncio.sleep(1.5)
    finally:
        await cluster.stop_controllers()
    assert list(devices) == ["gpu-0-s0", "gpu-0-s1", "gpu-1-s0", "gpu-1-s1"]
    assert len(cluster.slice_writes()) == writes, "no rewriting in a loop"
    assert writes == 1, "the dry-run probe found out before the first write"
    events = [
        e for e in cluster.apiserver.list("events") if e["reason"] == "GVirtuSFeatureUnavailable"
    ]
    assert len(events) == 1
    assert "sharing falls back to slots" in events[0]["message"]


async def test_without_taints_an_unhealthy_gpu_leaves_the_pool(gated_cluster: Any) -> None:
    cluster = gated_cluster("DRADeviceTaints", "DRADeviceTaintRules")
    try:
        agent = await cluster.add_backend("gpu-node-a", gpus=2)
        cluster.start_controller()
        await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2)
        await agent.simulate(0, listening=False)
        devices = await cluster.until(
            lambda: len(cluster.devices("gpu-node-a")) == 1 and cluster.devices("gpu-node-a")
        )
        await agent.simulate(0, listening=True)
        await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2)
    finally:
        await cluster.stop_controllers()
    assert list(devices) == ["gpu-1"]


BAD_INVENTORIES = {
    "wrong-types": inventory(nodeName="bad-node", gpus=[gpu(0, port="9999")]),
    "non-ipv4-address": inventory(nodeName="bad-node", address="gpu.example.com"),
    "wrong-node": inventory(nodeName="another-node"),
    "huge": {**inventory(nodeName="bad-node"), "padding": "x" * 2_000_000},
}


@pytest.mark.parametrize("kind", list(BAD_INVENTORIES), ids=list(BAD_INVENTORIES))
async def test_malformed_inventories_are_never_published(
    cluster: Cluster, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(
            body=json.dumps(BAD_INVENTORIES[kind]).encode(), content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/v1/inventory", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.99", cluster.agent_port).start()
    try:
        cluster.apiserver.put(objects.node(name="bad-node", frontend=False))
        cluster.apiserver.put(objects.agent_pod(node="bad-node", ip="127.0.0.99"))
        await cluster.add_backend("good-node")
        cluster.start_controller()
        await cluster.until(lambda: cluster.pool("good-node"))
        await asyncio.sleep(0.5)
    finally:
        await cluster.stop_controllers()
        await runner.cleanup()
    assert not cluster.pool("bad-node")
    rejected = [
        r.getMessage()
        for r in caplog.records
        if "rejected the inventory of bad-node" in r.getMessage()
    ]
    assert rejected, "the reason is logged"


async def test_a_killed_leader_is_replaced_and_two_never_write_together(
    cluster: Cluster, short_tmp: Any
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    args = (
        "--agent-port",
        str(cluster.agent_port),
        "--poll-interval",
        "0.3",
        "--grace-period",
        "1.5",
        "--lease-duration",
        "3",
        "--renew-deadline",
        "2",
        "--retry-period",
        "0.3",
    )
    first = ControllerProcess(
        root=short_tmp, kubeconfig=cluster.kubeconfig, args=(*args, "--pod-name", "controller-a")
    )
    await cluster.until(lambda: cluster.pool("gpu-node-a"))
    second = ControllerProcess(
        root=short_tmp, kubeconfig=cluster.kubeconfig, args=(*args, "--pod-name", "controller-b")
    )
    try:
        await asyncio.sleep(1.5)
        await agent.simulate(0, listening=False)
        await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-0"))
        killed = asyncio.get_running_loop().time()
        first.kill()
        await agent.simulate(0, listening=True)
        # The standby takes over once the Lease expires (3 s), then sees the recovery.
        await cluster.until(
            lambda: taint(cluster.devices("gpu-node-a"), "gpu-0") is None, timeout=60
        )
    finally:
        first.kill()
        second.terminate()
    writes = cluster.slice_writes()
    by_first = [w.at for w in writes if w.user_agent.endswith(first.user_agent_pid)]
    by_second = [w.at for w in writes if w.user_agent.endswith(second.user_agent_pid)]
    assert len(by_first) == 2, "the first leader published the pool and the taint"
    assert len(by_second) == 1, "the second only the recovery, after taking over"
    assert max(by_first) < killed < min(by_second)


async def test_metrics_and_health(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    port = free_port()
    cluster.start_controller(metrics_port=port, metrics_address="127.0.0.1")
    await cluster.until(lambda: cluster.pool("gpu-node-a"))
    await agent.simulate(1, listening=False)
    await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-1"))
    await asyncio.sleep(0.5)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert (response.status, await response.text()) == (200, "ok\n")
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    for line in (
        'gvirtus_dra_controller_backends{state="answering"} 1.0',
        'gvirtus_dra_controller_gpus{verdict="healthy"} 1.0',
        'gvirtus_dra_controller_gpus{verdict="unhealthy"} 1.0',
        "gvirtus_dra_controller_leader 1.0",
    ):
        assert line in text
    assert 'gvirtus_dra_controller_slice_writes_total{verb="update"}' in text
    assert 'gvirtus_dra_controller_poll_duration_seconds_count{outcome="changed"}' in text
    assert "gvirtus_dra_controller_reconcile_duration_seconds_count" in text


async def test_an_overloaded_gpu_takes_no_new_claims_until_load_drops(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller(max_connections=2)
    await cluster.until(lambda: cluster.pool("gpu-node-a"))

    held = [await asyncio.open_connection(agent.loopback, agent.base_port) for _ in range(2)]
    try:
        await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-0"))
        assert taint(cluster.devices("gpu-node-a"), "gpu-0") == (
            "gvirtus.io/overloaded",
            "connections",
            "NoSchedule",
        )
        assert taint(cluster.devices("gpu-node-a"), "gpu-1") is None
    finally:
        for _, writer in held:
            writer.close()
    await cluster.until(lambda: taint(cluster.devices("gpu-node-a"), "gpu-0") is None)


def rounds() -> float:
    return REGISTRY.get_sample_value("gvirtus_dra_controller_reconcile_duration_seconds_count") or 0


@pytest.mark.parametrize(
    ("change", "rejected"),
    [
        pytest.param({"daemonset": None}, False, id="no-owner"),
        pytest.param({"daemonset": "someone-elses"}, False, id="another-daemonset"),
        pytest.param({"mirror": True}, False, id="mirror-pod"),
        pytest.param({"host_ip": "10.9.9.9"}, True, id="inventory-names-another-address"),
    ],
)
async def test_only_the_agent_daemonsets_pods_speak_for_their_node(
    cluster: Cluster, change: dict[str, Any], rejected: bool
) -> None:
    await cluster.add_backend("forged-node")
    await cluster.add_backend("good-node")
    mirror = change.pop("mirror", False)
    pod = objects.agent_pod(
        node="forged-node", ip="127.0.0.31", **{"host_ip": "10.0.0.31", **change}
    )
    if mirror:
        pod["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "0123abcd"}
    cluster.apiserver.put(pod)
    before = REGISTRY.get_sample_value(
        "gvirtus_dra_controller_inventories_rejected_total", {"reason": "address"}
    )
    cluster.start_controller()

    await cluster.until(lambda: cluster.pool("good-node"))
    seen = rounds()
    await cluster.until(lambda: rounds() >= seen + 3)

    assert not cluster.pool("forged-node")
    after = REGISTRY.get_sample_value(
        "gvirtus_dra_controller_inventories_rejected_total", {"reason": "address"}
    )
    assert ((after or 0) > (before or 0)) is rejected
