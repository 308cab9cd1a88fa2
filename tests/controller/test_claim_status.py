"""Claims bound to a backend: the controller records it, and confirms it before binding.

The test stands in for the scheduler: it writes allocations the way the 1.36
scheduler does (section 04 of the captures: results copy the device's binding
conditions, ``allocationTimestamp`` is set, ``reservedFor`` names a pod not yet
bound) and watches what the controller writes into ``status.devices``. The
controller never connects to a backend: it decides from its agent's reports.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import uuid
from typing import Any

import pytest

from tests.controller.conftest import Cluster
from tests.support.apiserver import fixture_object

pytestmark = pytest.mark.slow

DRIVER = "gpu.gvirtus.io"
READY = "gvirtus.io/BackendReady"
FAILURE = "gvirtus.io/BackendUnavailable"
NAMESPACE = "gvirtus-demo"


def allocate(
    cluster: Cluster,
    *,
    name: str,
    devices: list[tuple[str, str]],
    waits: bool,
    allocated_ago: float = 0.0,
    others: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Store a claim allocated as the scheduler would (and reserved for a pod)."""
    claim = copy.deepcopy(fixture_object("04-binding-claim-allocated-waiting-get.json"))
    meta = claim["metadata"]
    for server_owned in ("resourceVersion", "managedFields"):
        meta.pop(server_owned, None)
    meta.update(name=name, uid=str(uuid.uuid4()))
    gates = {"bindingConditions": [READY], "bindingFailureConditions": [FAILURE]} if waits else {}
    allocation = claim["status"]["allocation"]
    allocation["devices"]["results"] = [
        {"request": "gpu", "driver": DRIVER, "pool": pool, "device": device, **gates}
        for pool, device in devices
    ] + (others or [])
    allocation["allocationTimestamp"] = (
        datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=allocated_ago)
    ).strftime("%Y-%m-%dT%H:%M:%SZ")
    return cluster.apiserver.put(claim)


def status_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    claim = cluster.apiserver.get("resourceclaims", name, NAMESPACE)
    assert claim is not None
    return list((claim.get("status") or {}).get("devices") or [])


def ours(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [d for d in status_of(cluster, name) if d["driver"] == DRIVER]


def conditions(entry: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}


async def decided(cluster: Cluster, name: str, timeout: float = 15) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        entries = ours(cluster, name)
        return entries[0] if entries else None

    result: dict[str, Any] = await cluster.until(check, timeout)
    return result


def status_writes(cluster: Cluster) -> list[Any]:
    return [r for r in cluster.apiserver.writes() if r.path.endswith("/status")]


async def published(cluster: Cluster, node: str) -> dict[str, dict[str, Any]]:
    devices: dict[str, dict[str, Any]] = await cluster.until(lambda: cluster.devices(node))
    return devices


async def test_an_allocation_is_recorded_with_the_backend_it_is_bound_to(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=False)
    await published(cluster, "gpu-node-a")

    allocate(cluster, name="plain", devices=[("gpu-node-a", "gpu-1")], waits=False)
    entry = await decided(cluster, "plain")

    gpu = (await agent.inventory())["gpus"][1]
    assert entry["pool"] == "gpu-node-a" and entry["device"] == "gpu-1"
    assert conditions(entry) == {READY: ("True", "BackendServing")}
    (ready,) = entry["conditions"]
    assert (
        ready["message"] == f"GVirtuS backend 10.0.0.31:{gpu['port']} (GPU 1 of gpu-node-a) serves"
    )
    assert datetime.datetime.strptime(ready["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert entry["data"] == {
        "backendNode": "gpu-node-a",
        "backendAddress": "10.0.0.31",
        "backendPort": gpu["port"],
        "uuid": gpu["uuid"],
        "model": gpu["model"],
    }
    claim = cluster.apiserver.get("resourceclaims", "plain", NAMESPACE)
    assert claim is not None
    managers = {
        (m["manager"], m["operation"], m.get("subresource"))
        for m in claim["metadata"]["managedFields"]
    }
    assert ("gvirtus-dra-controller", "Apply", "status") in managers


async def test_another_drivers_entry_is_left_as_it_is(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=False)
    await published(cluster, "gpu-node-a")
    theirs = {
        "driver": "gpu.nvidia.com",
        "pool": "worker-2",
        "device": "gpu-3",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Attached",
                "message": "",
                "lastTransitionTime": "2026-11-23T01:00:00Z",
            }
        ],
        "data": {"pci": "0000:3b:00.0"},
    }
    claim = allocate(
        cluster,
        name="mixed",
        devices=[("gpu-node-a", "gpu-0")],
        waits=False,
        others=[
            {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "worker-2", "device": "gpu-3"}
        ],
    )
    claim["status"]["devices"] = [theirs]
    cluster.apiserver.put(claim)

    await decided(cluster, "mixed")

    assert status_of(cluster, "mixed")[0] == theirs
    assert [d["driver"] for d in status_of(cluster, "mixed")] == ["gpu.nvidia.com", DRIVER]


async def test_status_follows_the_backends_health_and_writes_nothing_while_it_holds(
    cluster: Cluster,
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=False, grace_period=0.5)
    await published(cluster, "gpu-node-a")
    allocate(cluster, name="live", devices=[("gpu-node-a", "gpu-0")], waits=False)
    await decided(cluster, "live")
    await asyncio.sleep(1.5)
    writes = len(status_writes(cluster))

    await agent.simulate(0, listening=False)
    down = await cluster.until(
        lambda: [e for e in ours(cluster, "live") if conditions(e)[READY][0] == "False"]
    )

    assert writes == 1, "a steady backend costs no status writes"
    assert conditions(down[0])[READY] == ("False", "BackendDown")
    await agent.simulate(0, listening=True)
    up = await cluster.until(
        lambda: [e for e in ours(cluster, "live") if conditions(e)[READY][0] == "True"]
    )
    assert conditions(up[0])[READY] == ("True", "BackendServing")


async def test_devices_are_published_without_binding_conditions_by_default(
    cluster: Cluster,
) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller()

    devices = await published(cluster, "gpu-node-a")

    assert all("bindingConditions" not in d for d in devices.values())


async def test_devices_are_published_with_binding_conditions_when_asked_for(
    cluster: Cluster,
) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True)

    devices = await published(cluster, "gpu-node-a")

    for device in devices.values():
        assert device["bindingConditions"] == [READY]
        assert device["bindingFailureConditions"] == [FAILURE]
        assert "bindsToNode" not in device


async def test_binds_to_node_is_published_when_asked_for(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True, binds_to_node=True)

    devices = await published(cluster, "gpu-node-a")

    assert all(d["bindsToNode"] is True for d in devices.values())


async def test_a_waiting_claim_is_confirmed_by_its_agents_next_report(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True)
    await published(cluster, "gpu-node-a")

    allocate(cluster, name="waiting", devices=[("gpu-node-a", "gpu-0")], waits=True)
    entry = await decided(cluster, "waiting")

    assert conditions(entry) == {READY: ("True", "BackendReady")}
    assert "reported after the allocation" in entry["conditions"][0]["message"]


@pytest.mark.parametrize(
    ("change", "settings", "reasons"),
    [
        pytest.param({"listening": False}, {}, {"BackendDown"}, id="listener-down"),
        pytest.param(
            {"utilizationPercent": 97},
            {"max_utilization": 90},
            {"BackendOverloaded"},
            id="overloaded",
        ),
    ],
)
async def test_a_backend_that_cannot_serve_fails_the_binding(
    cluster: Cluster, change: dict[str, Any], settings: dict[str, Any], reasons: set[str]
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True, **settings)
    await published(cluster, "gpu-node-a")
    await agent.simulate(0, **change)
    await cluster.until(lambda: cluster.devices("gpu-node-a")["gpu-0"].get("taints"))

    allocate(cluster, name="doomed", devices=[("gpu-node-a", "gpu-0")], waits=True)
    entry = await decided(cluster, "doomed")

    found = conditions(entry)
    assert found[FAILURE][0] == "True"
    assert found[READY][0] == "False"
    assert found[FAILURE][1] in reasons
    events = await cluster.until(
        lambda: [e for e in cluster.events() if e["reason"] == "GVirtuSBackendUnavailable"]
    )
    assert events[0]["involvedObject"]["name"] == "doomed"
    assert events[0]["involvedObject"]["kind"] == "ResourceClaim"
    assert cluster.devices("gpu-node-a")["gpu-0"]["taints"], "kept off scheduling"


async def test_a_claim_nobody_can_judge_fails_after_the_binding_timeout(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True, binding_timeout=2)
    await published(cluster, "gpu-node-a")

    allocate(cluster, name="orphan", devices=[("gone-node", "gpu-0")], waits=True)
    await asyncio.sleep(1.0)
    assert ours(cluster, "orphan") == [], "it waits first"
    entry = await decided(cluster, "orphan")

    assert conditions(entry)[FAILURE] == ("True", "BackendUnconfirmed")
    assert "not confirmed within 2s" in entry["conditions"][0]["message"]


async def test_an_allocation_older_than_the_timeout_fails_at_once(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True, binding_timeout=30)
    await published(cluster, "gpu-node-a")

    allocate(cluster, name="stale", devices=[("gone-node", "gpu-0")], waits=True, allocated_ago=120)
    entry = await decided(cluster, "stale", timeout=20)  # well before the 30 s timeout

    assert conditions(entry)[FAILURE] == ("True", "BackendUnconfirmed")


async def test_failed_writes_are_retried(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=False)
    await published(cluster, "gpu-node-a")
    cluster.apiserver.fail_next("PATCH", r"/resourceclaims/retried/status$", code=500, times=2)
    cluster.apiserver.fail_next("PATCH", r"/resourceclaims/retried/status$", code=409, times=1)

    allocate(cluster, name="retried", devices=[("gpu-node-a", "gpu-0")], waits=False)
    entry = await decided(cluster, "retried")

    assert conditions(entry)[READY][0] == "True"
    attempts = [r for r in cluster.apiserver.requests if r.path.endswith("/retried/status")]
    assert len(attempts) == 4


async def test_a_claim_deleted_meanwhile_is_dropped(cluster: Cluster) -> None:
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=False)
    await published(cluster, "gpu-node-a")
    cluster.apiserver.fail_next(
        "PATCH", r"/resourceclaims/short-lived/status$", code=0, delay=0.5, times=1
    )

    allocate(cluster, name="short-lived", devices=[("gpu-node-a", "gpu-0")], waits=False)
    await cluster.until(
        lambda: [r for r in cluster.apiserver.requests if r.path.endswith("/short-lived/status")]
    )
    cluster.apiserver.remove("resourceclaims", "short-lived", NAMESPACE)
    await asyncio.sleep(2.0)

    attempts = [r for r in cluster.apiserver.requests if r.path.endswith("/short-lived/status")]
    assert len(attempts) == 1
    assert cluster.apiserver.get("resourceclaims", "short-lived", NAMESPACE) is None


async def test_without_binding_conditions_on_the_server_claims_are_still_recorded(
    cluster: Cluster,
) -> None:
    cluster.apiserver.disabled_features = frozenset({"DRADeviceBindingConditions"})
    await cluster.add_backend("gpu-node-a")
    cluster.start_controller(binding_conditions=True, pod_name="controller-0")

    devices = await published(cluster, "gpu-node-a")
    allocate(cluster, name="old-server", devices=[("gpu-node-a", "gpu-0")], waits=False)
    entry = await decided(cluster, "old-server")

    assert all("bindingConditions" not in d for d in devices.values())
    assert conditions(entry) == {READY: ("True", "BackendServing")}
    warned = [e for e in cluster.events() if e["reason"] == "GVirtuSFeatureUnavailable"]
    assert warned and "binding conditions" in warned[0]["message"]
