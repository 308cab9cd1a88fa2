"""Binding conditions as a real scheduler experiences them: failures move pods elsewhere.

The scheduler here is the model in ``tests/support/scheduler.py``: like kube-scheduler
1.36 it takes an allocation back on a failure condition and then picks the same
device again unless that device is tainted or gone (dra-facts §0), and it keeps
``bindingConditions`` in the allocation after binding. Its check period is shorter
than the real 5 s only to keep the tests short.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.controller.conftest import Cluster
from tests.support import objects
from tests.support.scheduler import Attempt, Scheduler

pytestmark = pytest.mark.slow

NAMESPACE = "gvirtus-demo"
READY = "gvirtus.io/BackendReady"
FAILURE = "gvirtus.io/BackendUnavailable"
UNHEALTHY = "gvirtus.io/unhealthy"


def scheduler(cluster: Cluster) -> Scheduler:
    cluster.apiserver.put(objects.node(name="worker-1"))
    return Scheduler(cluster.apiserver, node="worker-1", period=0.3, backoff=0.1)


def claim_for(cluster: Cluster, name: str) -> None:
    cluster.apiserver.put(objects.unallocated_claim(name=name))


def conditions_of(cluster: Cluster, claim: str) -> dict[str, str]:
    stored = cluster.apiserver.get("resourceclaims", claim, NAMESPACE) or {}
    return {
        c["type"]: c["status"]
        for d in (stored.get("status") or {}).get("devices") or []
        for c in d.get("conditions") or []
    }


def taints(cluster: Cluster, node: str, device: str) -> list[tuple[str, str]]:
    found = cluster.devices(node).get(device) or {}
    return [(t["key"], t["value"]) for t in found.get("taints") or []]


def first_failure_rv(cluster: Cluster, claim: str) -> int:
    for version in cluster.apiserver.versions("resourceclaims", claim, NAMESPACE):
        for device in (version.get("status") or {}).get("devices") or []:
            if any(c["type"] == FAILURE and c["status"] == "True" for c in device["conditions"]):
                return int(version["metadata"]["resourceVersion"])
    raise AssertionError(f"claim {claim} never had the failure condition")


def first_taint_rv(cluster: Cluster, node: str, device: str, value: str) -> int:
    for version in cluster.apiserver.versions("resourceslices", f"gpu.gvirtus.io-{node}-0"):
        for found in version["spec"]["devices"]:
            if found["name"] == device and any(
                t["value"] == value for t in found.get("taints") or []
            ):
                return int(version["metadata"]["resourceVersion"])
    raise AssertionError(f"{node}/{device} was never tainted {value}")


async def test_a_failed_binding_is_tainted_first_and_the_next_attempt_goes_elsewhere(
    cluster: Cluster,
) -> None:
    """An agent partitioned from the controller: no report after the allocation."""
    silent = await cluster.add_backend("gpu-node-a", gpus=2)
    await cluster.add_backend("gpu-node-b", gpus=2)
    cluster.start_controller(binding_conditions=True, binding_timeout=2, grace_period=60)
    await cluster.until(lambda: cluster.devices("gpu-node-a") and cluster.devices("gpu-node-b"))
    model = scheduler(cluster)
    claim_for(cluster, "moved")
    model.pod(name="mover", claim="moved")
    os.kill(silent.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.wait_for(model.schedule(pod="mover", claim="moved"), 60)

        assert model.attempts == [
            Attempt("moved", "gpu-node-a", "gpu-0", "failed"),
            Attempt("moved", "gpu-node-a", "gpu-1", "failed"),
            Attempt("moved", "gpu-node-b", "gpu-0", "bound"),
        ]
        assert taints(cluster, "gpu-node-a", "gpu-0") == [(UNHEALTHY, "binding-failed")]
        assert first_taint_rv(cluster, "gpu-node-a", "gpu-0", "binding-failed") < (
            first_failure_rv(cluster, "moved")
        ), "the device is tainted before the scheduler learns the binding failed"
        assert conditions_of(cluster, "moved") == {READY: "True"}
    finally:
        os.kill(silent.proc.pid, signal.SIGCONT)

    await cluster.until(
        lambda: (
            cluster.devices("gpu-node-a")
            and all(not d.get("taints") for d in cluster.devices("gpu-node-a").values())
        )
    )


async def test_without_taints_a_failed_gpu_leaves_its_pool_until_it_recovers(
    cluster: Cluster,
) -> None:
    cluster.apiserver.disabled_features = frozenset({"DRADeviceTaints", "DRADeviceTaintRules"})
    agent = await cluster.add_backend("gpu-node-a", gpus=2)
    cluster.start_controller(binding_conditions=True, max_utilization=90)
    await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2)
    await agent.simulate(0, utilizationPercent=97)
    model = scheduler(cluster)
    claim_for(cluster, "busy")
    model.pod(name="busy-pod", claim="busy")

    await asyncio.wait_for(model.schedule(pod="busy-pod", claim="busy"), 60)

    assert model.attempts == [
        Attempt("busy", "gpu-node-a", "gpu-0", "failed"),
        Attempt("busy", "gpu-node-a", "gpu-1", "bound"),
    ]
    assert set(cluster.devices("gpu-node-a")) == {"gpu-1"}
    await agent.simulate(0, utilizationPercent=10)
    await cluster.until(lambda: set(cluster.devices("gpu-node-a")) == {"gpu-0", "gpu-1"})


async def test_a_running_pods_claim_never_fails_and_a_second_pod_still_gets_it(
    cluster: Cluster,
) -> None:
    agent = await cluster.add_backend("gpu-node-a", gpus=1)
    cluster.start_controller(binding_conditions=True, grace_period=0.5)
    await cluster.until(lambda: cluster.devices("gpu-node-a"))
    model = scheduler(cluster)
    claim_for(cluster, "shared")
    model.pod(name="first", claim="shared")
    await asyncio.wait_for(model.schedule(pod="first", claim="shared"), 60)

    await agent.simulate(0, listening=False)
    await cluster.until(lambda: conditions_of(cluster, "shared").get(READY) == "False")
    await agent.simulate(0, listening=True)
    await cluster.until(lambda: conditions_of(cluster, "shared") == {READY: "True"})
    model.pod(name="second", claim="shared")
    await asyncio.wait_for(model.schedule(pod="second", claim="shared"), 60)

    history: list[dict[str, Any]] = cluster.apiserver.versions(
        "resourceclaims", "shared", NAMESPACE
    )
    assert not any(
        c["type"] == FAILURE
        for version in history
        for d in (version.get("status") or {}).get("devices") or []
        for c in d["conditions"]
    ), "a claim whose pod is bound never gets the failure condition"
    assert [a.outcome for a in model.attempts] == ["bound", "bound"]
