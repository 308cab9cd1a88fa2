"""The real controller's pools, and the KAI overlay's classes, against the KAI-Scheduler model.

Backend agents run as real processes, the controller publishes into the test API
server, and ``tests/support/kai.py`` (KAI v0.17.0 as read from its code, or a later
KAI with the gates it was given) tries to place pods on what was published. In KAI
mode every healthy GPU must be allocatable and an unhealthy one must not be; in the
default mode the same model shows why KAI would fail, so the model is exercised
both ways. The DeviceClasses are the ones ``manifests/overlays/kai`` renders.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.controller.conftest import Cluster
from tests.support import kai, manifests, objects

pytestmark = pytest.mark.slow

REMOTE = "remote.gvirtus.io"
MEMORY_16GI = {"capacity": {"requests": {"memory": "16Gi"}}}


def overlay_classes() -> dict[str, dict[str, Any]]:
    return manifests.named(manifests.render("manifests/overlays/kai"), "DeviceClass")


def model(cluster: Cluster, gates: frozenset[str] = kai.V0_17_0) -> kai.KAI:
    """KAI as it would see the cluster now (a frontend node ``worker-1`` included)."""
    if cluster.apiserver.get("nodes", "worker-1") is None:
        cluster.apiserver.put(objects.node(name="worker-1"))
    return kai.KAI(
        slices=cluster.slices(),
        classes=overlay_classes(),
        nodes=cluster.apiserver.list("nodes"),
        gates=gates,
    )


def published(cluster: Cluster, *nodes: str) -> set[tuple[str, str]]:
    return {(node, name) for node in nodes for name in cluster.devices(node)}


def fill(
    cluster: Cluster, gates: frozenset[str] = kai.V0_17_0, request: dict[str, Any] | None = None
) -> tuple[list[str], set[str]]:
    """Devices (``pool/device``) pods of remote.gvirtus.io get, in order, and why no more."""
    placed, refusal = model(cluster, gates).fill(device_class=REMOTE, request=request)
    return [f"{r.pool}/{r.device}" for p in placed for r in p.results], refusal.rules


def no_gated_fields(cluster: Cluster) -> bool:
    gated = {"taints", "bindingConditions", "bindingFailureConditions", "allowMultipleAllocations"}
    return not any(gated & set(d) for s in cluster.slices() for d in s["spec"]["devices"])


@pytest.mark.parametrize(
    ("overrides", "per_gpu"),
    [({}, 1), ({"sharing": "slots", "slots": 2}, 2)],
    ids=["exclusive", "slots"],
)
async def test_under_kai_every_healthy_gpu_is_allocatable_and_an_unhealthy_one_is_not(
    cluster: Cluster, overrides: dict[str, Any], per_gpu: int
) -> None:
    agent = await cluster.add_backend("gpu-node-a", gpus=2)
    await cluster.add_backend("gpu-node-b", gpus=1)
    cluster.start_controller(scheduler="kai", **overrides)
    await cluster.until(lambda: len(published(cluster, "gpu-node-a", "gpu-node-b")) == 3 * per_gpu)

    placed, refusal = fill(cluster)

    assert sorted(placed) == sorted(
        f"{p}/{d}" for p, d in published(cluster, "gpu-node-a", "gpu-node-b")
    )
    assert len(placed) == 3 * per_gpu
    assert refusal == {"no-device"}, "full, not refused for another reason"
    assert no_gated_fields(cluster)

    await agent.simulate(1, listening=False)
    await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == per_gpu)
    placed, _ = fill(cluster)

    assert len(placed) == 2 * per_gpu
    assert not [p for p in placed if p.startswith("gpu-node-a/gpu-1")], (
        "the dead GPU is never given"
    )
    assert no_gated_fields(cluster)

    await agent.simulate(1, listening=True)
    await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2 * per_gpu)
    assert len(fill(cluster)[0]) == 3 * per_gpu


@pytest.mark.parametrize(
    ("device_class", "resource", "outcome"),
    [
        (REMOTE, None, "placed"),
        ("gpu.gvirtus.io", None, "gpu-accounting"),
        ("gpu.gvirtus.io-legacy", "gvirtus.io/gpu", "extended-resource"),
    ],
    ids=["remote", "gpu-class", "legacy-extended-resource"],
)
async def test_of_the_overlays_classes_kai_places_claims_of_remote_gvirtus_io_only(
    cluster: Cluster, device_class: str, resource: str | None, outcome: str
) -> None:
    await cluster.add_backend("gpu-node-a", gpus=1)
    cluster.start_controller(scheduler="kai")
    await cluster.until(lambda: cluster.devices("gpu-node-a"))
    kai_now = model(cluster)
    assert device_class in kai_now.classes
    pod, claims = (
        kai.pod_asking_for("app", resource=resource)
        if resource
        else kai.pod_with_claim("app", device_class=device_class)
    )

    result = kai_now.attempt(pod, claims)

    if isinstance(result, kai.UnschedulableError):
        assert result.rules == {outcome}, str(result)
    else:
        assert outcome == "placed"
        assert result.devices == {("gpu-node-a", "gpu-0")}
        assert result.node == "worker-1"


async def test_default_mode_binding_conditions_leave_kai_nothing_to_allocate(
    cluster: Cluster,
) -> None:
    await cluster.add_backend("gpu-node-a", gpus=2)
    cluster.start_controller(binding_conditions=True)
    await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2)

    assert fill(cluster) == ([], {"no-device"})
    placed, _ = fill(cluster, gates=frozenset({kai.BINDING}))
    assert placed == ["gpu-node-a/gpu-0", "gpu-node-a/gpu-1"], "a later KAI with the gate would"


@pytest.mark.parametrize(
    ("overrides", "gates", "dead_gpu_given"),
    [
        ({}, kai.V0_17_0, True),
        ({"scheduler": "kai"}, kai.V0_17_0, False),
        ({"scheduler": "kai", "kai_feature_gates": "DRADeviceTaints=true"}, {kai.TAINTS}, False),
        ({"scheduler": "kai", "kai_feature_gates": "DRADeviceTaints=true"}, kai.V0_17_0, True),
    ],
    ids=[
        "default-mode-taint-ignored-by-kai",
        "kai-mode-gpu-left-out",
        "kai-told-taints-and-kai-honours-them",
        "kai-told-taints-that-kai-lacks",
    ],
)
async def test_an_unhealthy_gpu_reaches_kai_only_where_its_taint_is_ignored(
    cluster: Cluster, overrides: dict[str, Any], gates: frozenset[str], dead_gpu_given: bool
) -> None:
    agent = await cluster.add_backend("gpu-node-a", gpus=2)
    cluster.start_controller(**overrides)
    await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2)
    await agent.simulate(1, listening=False)
    await cluster.until(
        lambda: (
            "gpu-1" not in cluster.devices("gpu-node-a")
            or cluster.devices("gpu-node-a")["gpu-1"].get("taints")
        )
    )

    placed, refusal = fill(cluster, gates=frozenset(gates))

    assert ("gpu-node-a/gpu-1" in placed) is dead_gpu_given
    assert "gpu-node-a/gpu-0" in placed
    assert refusal == {"no-device"}


@pytest.mark.parametrize(
    ("overrides", "gates", "placed"),
    [
        ({"sharing": "capacity"}, kai.V0_17_0, 1),
        ({"sharing": "capacity"}, {kai.CAPACITY}, 5),
        (
            {
                "scheduler": "kai",
                "sharing": "capacity",
                "kai_feature_gates": "DRAConsumableCapacity=true",
            },
            {kai.CAPACITY},
            5,
        ),
    ],
    ids=[
        "default-mode-kai-v0.17.0-gives-the-gpu-to-one-claim",
        "default-mode-a-later-kai-shares",
        "kai-mode-told-capacity",
    ],
)
async def test_capacity_sharing_needs_a_kai_that_handles_it(
    cluster: Cluster, overrides: dict[str, Any], gates: frozenset[str], placed: int
) -> None:
    await cluster.add_backend("gpu-node-a", gpus=1)
    cluster.start_controller(**overrides)
    await cluster.until(lambda: cluster.devices("gpu-node-a"))

    got, refusal = fill(cluster, gates=frozenset(gates), request=MEMORY_16GI)

    assert got == ["gpu-node-a/gpu-0"] * placed, "80Gi shared 16Gi at a time, or not at all"
    assert refusal == {"no-device"}
