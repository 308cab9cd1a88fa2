"""From inventories to slices: each sharing mode's shape, health as taints, limits, names."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from dra_driver.controller import pools
from dra_driver.controller.features import Features
from dra_driver.controller.health import Verdict
from dra_driver.controller.pools import DevicePolicy, NodeInfo
from dra_driver.controller.settings import Sharing
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import RESOURCE_SLICES
from dra_driver.models import Inventory
from tests.models.test_inventory import gpu, inventory
from tests.support.apiserver import fixture_object

NODE = NodeInfo(name="backend-node-b", uid="0e6f0000-0000-0000-0000-000000000001", zone="zone-a")
NOW = "2026-11-23T03:00:00Z"
ALL_FEATURES = Features()


def render(
    *,
    sharing: Sharing = Sharing.EXCLUSIVE,
    features: Features = ALL_FEATURES,
    verdicts: dict[int, Verdict] | None = None,
    gpus: int = 2,
    times: dict[tuple[str, str, str], str] | None = None,
    **policy: Any,
) -> list[dict[str, Any]]:
    document = inventory(
        nodeName="backend-node-b", address="10.0.0.6", gpus=[gpu(i) for i in range(gpus)]
    )
    return pools.devices(
        inventory=Inventory.model_validate(document),
        node=NODE,
        verdicts=verdicts or {},
        policy=DevicePolicy(sharing=sharing, **policy),
        features=features,
        taint_times=times or {},
        now=NOW,
    )


def test_exclusive_devices_carry_every_attribute() -> None:
    first = render()[0]
    assert first["name"] == "gpu-0"
    assert first["capacity"] == {"memory": {"value": "80Gi"}}
    assert first["attributes"] == {
        "model": {"string": "NVIDIA H100 80GB HBM3"},
        "uuid": {"string": "GPU-00000000-0000-0000-0000-000000000000"},
        "index": {"int": 0},
        "backendNode": {"string": "backend-node-b"},
        "backendAddress": {"string": "10.0.0.6"},
        "backendPort": {"int": 9999},
        "cudaVersion": {"version": "12.6.0"},
        "driverVersion": {"string": "580.65.06"},
        "transport": {"string": "tcp"},
        "simulated": {"bool": False},
        "zone": {"string": "zone-a"},
    }
    assert "taints" not in first and "allowMultipleAllocations" not in first


def test_slots_split_memory_between_k_devices() -> None:
    devices = render(sharing=Sharing.SLOTS, slots=3)
    assert [d["name"] for d in devices] == [
        "gpu-0-s0",
        "gpu-0-s1",
        "gpu-0-s2",
        "gpu-1-s0",
        "gpu-1-s1",
        "gpu-1-s2",
    ]
    assert {d["capacity"]["memory"]["value"] for d in devices} == {"27306Mi"}
    assert devices[0]["attributes"] == devices[2]["attributes"], (
        "every slot points at the same backend"
    )


def test_capacity_devices_have_the_shape_the_api_server_accepted() -> None:
    (device, _) = render(sharing=Sharing.CAPACITY)
    captured = fixture_object("02-shared-resourceslice-get.json")["spec"]["devices"][0]
    assert device["allowMultipleAllocations"] is True
    assert device["capacity"] == captured["capacity"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            {"capacity_default": 1500 * 2**20},
            {"default": "2Gi", "validRange": {"min": "1Gi", "max": "80Gi", "step": "1Gi"}},
        ),
        (
            {"capacity_default": 200 * 2**30},
            {"default": "80Gi", "validRange": {"min": "1Gi", "max": "80Gi", "step": "1Gi"}},
        ),
        (
            {"capacity_min": 2**30, "capacity_step": 3 * 2**30, "capacity_default": 4 * 2**30},
            {"default": "4Gi", "validRange": {"min": "1Gi", "max": "79Gi", "step": "3Gi"}},
        ),
    ],
    ids=["default-rounded-up-to-step", "default-capped-at-max", "max-on-the-step-grid"],
)
def test_capacity_request_policy_is_always_valid(
    policy: dict[str, int], expected: dict[str, Any]
) -> None:
    (device, _) = render(sharing=Sharing.CAPACITY, **policy)
    assert device["capacity"]["memory"]["requestPolicy"] == expected


def test_capacity_falls_back_where_the_server_cannot_keep_it() -> None:
    devices = render(
        sharing=Sharing.CAPACITY, features=Features(capacity=False), fallback=Sharing.SLOTS, slots=2
    )
    assert [d["name"] for d in devices][:2] == ["gpu-0-s0", "gpu-0-s1"]
    assert not any("allowMultipleAllocations" in d for d in devices)


@pytest.mark.parametrize(
    ("verdict", "taint"),
    [
        (
            Verdict(healthy=False, reason="backend-down", since=1.0),
            {
                "key": "gvirtus.io/unhealthy",
                "value": "backend-down",
                "effect": "NoSchedule",
                "timeAdded": NOW,
            },
        ),
        (
            Verdict(healthy=False, reason="agent-unreachable", since=1.0, evict=True),
            {
                "key": "gvirtus.io/unhealthy",
                "value": "agent-unreachable",
                "effect": "NoExecute",
                "timeAdded": NOW,
            },
        ),
        (
            Verdict(healthy=True, overloaded="connections"),
            {
                "key": "gvirtus.io/overloaded",
                "value": "connections",
                "effect": "NoSchedule",
                "timeAdded": NOW,
            },
        ),
    ],
    ids=["unhealthy", "evicting", "overloaded"],
)
def test_health_becomes_a_taint(verdict: Verdict, taint: dict[str, str]) -> None:
    devices = render(verdicts={1: verdict})
    assert "taints" not in devices[0]
    assert devices[1]["taints"] == [taint]


def test_taints_keep_the_time_they_were_added() -> None:
    earlier = "2026-11-23T01:11:42Z"
    devices = render(
        verdicts={1: Verdict(healthy=False, reason="port-closed", since=1.0)},
        times={("gpu-1", "gvirtus.io/unhealthy", "NoSchedule"): earlier},
    )
    assert devices[1]["taints"][0]["timeAdded"] == earlier


def test_without_taints_unhealthy_gpus_leave_the_pool() -> None:
    devices = render(
        features=Features(taints=False), verdicts={0: Verdict(healthy=False, reason="backend-down")}
    )
    assert [d["name"] for d in devices] == ["gpu-1"]


@pytest.mark.parametrize(
    ("count", "taints", "sizes"),
    [
        (64, True, [64]),
        (65, True, [64, 1]),
        (130, True, [64, 64, 2]),
        (128, False, [128]),
        (129, False, [128, 1]),
        (0, True, [0]),
    ],
    ids=[
        "64-with-taints",
        "65-with-taints",
        "130-with-taints",
        "128-without",
        "129-without",
        "empty-pool",
    ],
)
def test_slices_stay_within_the_api_limits(count: int, taints: bool, sizes: list[int]) -> None:
    groups = pools.split(
        [{"name": f"gpu-{i}"} for i in range(count)], features=Features(taints=taints)
    )
    assert [len(g) for g in groups] == sizes


def test_slice_names_follow_the_contract_and_stay_valid() -> None:
    assert (
        pools.slice_name("gpu.gvirtus.io", "backend-node-b", 0) == "gpu.gvirtus.io-backend-node-b-0"
    )
    long_pool = ".".join(["a" * 60] * 4)
    name = pools.slice_name("gpu.gvirtus.io", long_pool, 2)
    assert len(name) <= 253
    assert name != pools.slice_name("gpu.gvirtus.io", long_pool[:-1] + "b", 2)


async def test_rendered_slices_pass_the_api_servers_validation(kubeconfig: pathlib.Path) -> None:
    verdicts = {0: Verdict(healthy=False, reason="backend-down", since=1.0)}
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        for sharing in Sharing:
            devices = render(sharing=sharing, verdicts=verdicts, gpus=40)
            groups = pools.split(devices, features=Features())
            for index, group in enumerate(groups):
                obj = pools.slice_object(
                    driver="gpu.gvirtus.io",
                    node=NODE,
                    index=index,
                    count=len(groups),
                    generation=1,
                    devices=group,
                )
                obj["metadata"]["name"] += f"-{sharing}"
                stored = await kube.create(RESOURCE_SLICES, obj)
                assert stored["spec"] == obj["spec"]
    finally:
        await kube.close()
