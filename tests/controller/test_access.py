"""The controller publishes who may reach each backend: the pods holding a claim on its GPU.

Through the real controller against the test API server, with real agent processes
(access control off here: agents on this machine's own addresses must not change
its packet filter; ``tests/backend/test_access.py`` runs enforcing agents in
namespaces of their own). The test stands in for the scheduler and the kubelet: it
allocates claims, reserves them for pods and gives pods their addresses.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY

from dra_driver.controller.access import warning as access_warning
from dra_driver.models import GPU, AccessReport, GPUHealth, GPULoad, Inventory, parse_access
from tests.controller.conftest import Cluster
from tests.support import objects
from tests.support.objects import Result

pytestmark = pytest.mark.slow

NAMESPACE = "gvirtus-system"
CONFIG_MAPS = f"/api/v1/namespaces/{NAMESPACE}/configmaps"


def access_list(cluster: Cluster, node: str) -> dict[int, list[str]] | None:
    """The published list of ``node`` by port, None while there is none."""
    found = cluster.apiserver.get("configmaps", f"gvirtus-dra-access-{node}", NAMESPACE)
    if found is None:
        return None
    document = parse_access(found["data"]["access.json"])
    assert document.node_name == node
    return {p.port: list(p.addresses) for p in document.ports}


async def listed(cluster: Cluster, node: str, want: dict[int, list[str]]) -> None:
    await cluster.until(lambda: access_list(cluster, node) == want)


def ports(agent_inventory: dict[str, Any]) -> list[int]:
    return [int(g["port"]) for g in agent_inventory["gpus"]]


def claim(
    cluster: Cluster,
    name: str,
    *,
    device: str,
    pods: list[tuple[str, str]],
    node: str = "gpu-node-a",
) -> None:
    cluster.apiserver.put(
        objects.allocated_claim(name=name, results=[Result(node, device)], reserved_for=pods)
    )


async def more_rounds(cluster: Cluster, count: int) -> None:
    """Wait for ``count`` more poll rounds (the access owner looks once per round too)."""

    def rounds() -> float:
        found = REGISTRY.get_sample_value("gvirtus_dra_controller_reconcile_duration_seconds_count")
        return found or 0.0

    until = rounds() + count
    await cluster.until(lambda: rounds() >= until)


def config_map_writes(cluster: Cluster) -> list[Any]:
    return [r for r in cluster.apiserver.writes() if r.path.startswith(CONFIG_MAPS)]


async def test_each_backend_node_gets_a_list_of_its_ports_owned_by_its_node(
    cluster: Cluster,
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    cluster.start_controller()
    first, second = ports(await agent.inventory())

    await listed(cluster, "gpu-node-a", {first: [], second: []})

    stored = cluster.apiserver.get("configmaps", "gvirtus-dra-access-gpu-node-a", NAMESPACE)
    node = cluster.apiserver.get("nodes", "gpu-node-a")
    assert stored is not None and node is not None
    assert stored["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "gpu-node-a", "uid": node["metadata"]["uid"]}
    ]
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/part-of": "gvirtus-dra",
        "app.kubernetes.io/component": "backend-access",
    }
    managers = {(m["manager"], m["operation"]) for m in stored["metadata"]["managedFields"]}
    assert managers == {("gvirtus-dra-controller", "Apply")}


async def test_the_pods_holding_a_claim_are_admitted_to_its_gpu_alone(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    first, second = ports(await agent.inventory())
    pods = [
        objects.claim_pod(name="app", uid="uid-app", claim="shared", ip="10.244.1.5"),
        objects.claim_pod(
            name="host", uid="uid-host", claim="shared", host_network=True, host_ip="172.18.0.7"
        ),
        objects.claim_pod(name="starting", uid="uid-starting", claim="other"),
        objects.claim_pod(name="done", uid="uid-done", claim="other", ip="10.244.1.8"),
        objects.claim_pod(name="bystander", uid="uid-bystander", claim="mine", ip="10.244.1.9"),
    ]
    pods[3]["status"]["phase"] = "Succeeded"  # finished: its address may be another pod's
    for pod in pods:
        cluster.apiserver.put(pod)
    claim(cluster, "shared", device="gpu-1", pods=[("app", "uid-app"), ("host", "uid-host")])
    claim(
        cluster, "other", device="gpu-0", pods=[("starting", "uid-starting"), ("done", "uid-done")]
    )
    cluster.start_controller()

    await listed(cluster, "gpu-node-a", {first: [], second: ["10.244.1.5", "172.18.0.7"]})


async def test_a_pod_getting_its_address_is_admitted_without_waiting_for_a_round(
    cluster: Cluster,
) -> None:
    """Rounds are five minutes apart here: only the pod's watch event can bring it in."""
    agent = await cluster.add_backend("gpu-node-a")
    first, second = ports(await agent.inventory())
    cluster.start_controller(poll_interval=300)
    await cluster.until(lambda: cluster.pool("gpu-node-a"))  # the one round there will be
    cluster.apiserver.put(objects.claim_pod(name="app", uid="uid-app", claim="c"))
    claim(cluster, "c", device="gpu-0", pods=[("app", "uid-app")])
    await listed(cluster, "gpu-node-a", {first: [], second: []})

    def given_address(pod: dict[str, Any]) -> None:
        pod["status"].update(phase="Running", podIP="10.244.3.4", podIPs=[{"ip": "10.244.3.4"}])

    cluster.apiserver.mutate("pods", "app", objects.NAMESPACE, given_address)

    await listed(cluster, "gpu-node-a", {first: ["10.244.3.4"], second: []})


async def test_access_goes_away_when_the_claim_is_released(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    first, second = ports(await agent.inventory())
    for name in ("app", "other"):
        cluster.apiserver.put(
            objects.claim_pod(name=name, uid=f"uid-{name}", claim="c", ip=f"10.244.1.{len(name)}")
        )
    claim(cluster, "c", device="gpu-0", pods=[("app", "uid-app"), ("other", "uid-other")])
    cluster.start_controller(poll_interval=300)
    await listed(cluster, "gpu-node-a", {first: ["10.244.1.3", "10.244.1.5"], second: []})

    def unreserve_app(obj: dict[str, Any]) -> None:
        obj["status"]["reservedFor"] = [
            r for r in obj["status"]["reservedFor"] if r["name"] != "app"
        ]

    cluster.apiserver.mutate("resourceclaims", "c", objects.NAMESPACE, unreserve_app)
    await listed(cluster, "gpu-node-a", {first: ["10.244.1.5"], second: []})

    cluster.apiserver.remove("resourceclaims", "c", objects.NAMESPACE)
    await listed(cluster, "gpu-node-a", {first: [], second: []})


async def test_an_unchanged_list_is_never_written_again_not_even_by_a_new_leader(
    cluster: Cluster,
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    first, second = ports(await agent.inventory())
    cluster.apiserver.put(objects.claim_pod(name="app", uid="uid-app", claim="c", ip="10.244.1.5"))
    claim(cluster, "c", device="gpu-1", pods=[("app", "uid-app")])
    cluster.start_controller()
    await listed(cluster, "gpu-node-a", {first: [], second: ["10.244.1.5"]})
    await more_rounds(cluster, 3)
    assert len(config_map_writes(cluster)) == 1
    await cluster.stop_controllers()

    cluster.start_controller(pod_name="controller-1")
    await more_rounds(cluster, 3)

    assert len(config_map_writes(cluster)) == 1


async def test_a_node_whose_agent_does_not_enforce_gets_a_warning(cluster: Cluster) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    first, second = ports(await agent.inventory())
    cluster.start_controller()

    warned = await cluster.until(
        lambda: [e for e in cluster.events() if e["reason"] == "GVirtuSAccessControlOff"]
    )

    (event,) = warned
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Node"
    assert event["involvedObject"]["name"] == "gpu-node-a"
    assert event["message"] == (
        "backend access control is off on gpu-node-a (its agent runs with --access-control "
        f"off): any address that reaches ports {first}, {second} gets a GPU"
    )


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        ({"mode": "on", "synced": True}, None),
        ({"mode": "on", "synced": False}, None),
        (
            {"mode": "on", "error": "the access list is unusable: ..."},
            (
                "GVirtuSAccessNotApplied",
                "the agent on gpu-node-a cannot apply its access list: "
                "the access list is unusable: ...",
            ),
        ),
        (
            {"mode": "off"},
            (
                "GVirtuSAccessControlOff",
                "backend access control is off on gpu-node-a (its agent runs with "
                "--access-control off): any address that reaches ports 9999 gets a GPU",
            ),
        ),
        (
            None,
            (
                "GVirtuSAccessControlOff",
                "backend access control is off on gpu-node-a (its agent predates backend "
                "access control): any address that reaches ports 9999 gets a GPU",
            ),
        ),
    ],
    ids=["enforcing", "starting", "failing", "off", "older-agent"],
)
def test_an_agent_that_does_not_enforce_is_named_in_a_warning(
    access: dict[str, Any] | None, expected: tuple[str, str] | None
) -> None:
    inventory = Inventory(
        node_name="gpu-node-a",
        address="10.0.0.31",
        gpus=[
            GPU(
                index=0,
                uuid="GPU-0",
                model="NVIDIA H100 80GB HBM3",
                memory_bytes=1,
                driver_version="580.65.06",
                cuda_version="12.6",
                port=9999,
                health=GPUHealth(healthy=True),
                load=GPULoad(connections=0),
            )
        ],
        access=AccessReport(**access) if access is not None else None,
    )
    assert access_warning(inventory) == expected


async def test_node_addresses_are_admitted_too_where_the_network_masquerades(
    cluster: Cluster,
) -> None:
    agent = await cluster.add_backend("gpu-node-a")
    first, second = ports(await agent.inventory())
    cluster.apiserver.put(
        objects.claim_pod(
            name="app", uid="uid-app", claim="c", ip="10.244.1.5", host_ip="172.18.0.4"
        )
    )
    claim(cluster, "c", device="gpu-0", pods=[("app", "uid-app")])
    cluster.start_controller(access_node_addresses=True)

    await listed(cluster, "gpu-node-a", {first: ["10.244.1.5", "172.18.0.4"], second: []})
