"""Publishing a pool: no write when equal, one generation for all slices, stale slices last."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dra_driver.controller import pools
from dra_driver.controller.features import Features, dropped_features, probe_features
from dra_driver.controller.pools import NodeInfo
from dra_driver.controller.slices import Publisher, SliceStore
from dra_driver.kube.client import KubeClient
from tests.support.apiserver import APIServer

NODE = NodeInfo(name="gpu-node-a", uid="11111111-2222-3333-4444-555555555555")


def devices(count: int, *, tainted: bool = False) -> list[dict[str, object]]:
    taints = (
        [
            {
                "key": "gvirtus.io/unhealthy",
                "value": "backend-down",
                "effect": "NoSchedule",
                "timeAdded": "2026-11-23T03:00:00Z",
            }
        ]
        if tainted
        else []
    )
    return [
        {
            "name": f"gpu-{i}",
            "capacity": {"memory": {"value": "80Gi"}},
            **({"taints": taints} if taints else {}),
        }
        for i in range(count)
    ]


def desired(groups: list[list[dict[str, object]]], *, generation: int = 0) -> list[dict[str, Any]]:
    return [
        pools.slice_object(
            driver="gpu.gvirtus.io",
            node=NODE,
            index=i,
            count=len(groups),
            generation=generation,
            devices=group,
        )
        for i, group in enumerate(groups)
    ]


@pytest.fixture
async def kube(kubeconfig: pathlib.Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    yield client
    await client.close()


async def test_a_shrinking_pool_bumps_the_generation_and_drops_stale_slices(
    kube: KubeClient, apiserver: APIServer
) -> None:
    store = SliceStore(driver="gpu.gvirtus.io")
    publisher = Publisher(kube=kube, store=store, concurrency=4)

    assert (
        await publisher.publish(
            desired=desired([devices(64), devices(6)]), existing={}, features=Features()
        )
    ).wrote
    stored_pool = store.pools()["gpu-node-a"]
    assert (
        await publisher.publish(
            desired=desired([devices(64), devices(6)]), existing=stored_pool, features=Features()
        )
    ).wrote is False
    writes = len(apiserver.writes())
    assert (
        await publisher.publish(
            desired=desired([devices(3)]), existing=stored_pool, features=Features()
        )
    ).wrote

    stored = apiserver.list("resourceslices")
    assert [s["metadata"]["name"] for s in stored] == ["gpu.gvirtus.io-gpu-node-a-0"]
    assert stored[0]["spec"]["pool"] == {
        "name": "gpu-node-a",
        "generation": 2,
        "resourceSliceCount": 1,
    }
    assert [r.method for r in apiserver.writes()[writes:]] == ["PUT", "DELETE"], (
        "update first, delete last"
    )
    assert store.pools()["gpu-node-a"].keys() == {"gpu.gvirtus.io-gpu-node-a-0"}


async def test_a_slice_someone_else_created_is_adopted(
    kube: KubeClient, apiserver: APIServer
) -> None:
    store = SliceStore(driver="gpu.gvirtus.io")
    publisher = Publisher(kube=kube, store=store, concurrency=4)
    stray = desired([devices(1)], generation=7)[0]
    stray["metadata"]["labels"] = {}
    apiserver.put(stray)

    assert (
        await publisher.publish(desired=desired([devices(2)]), existing={}, features=Features())
    ).wrote

    (stored,) = apiserver.list("resourceslices")
    assert stored["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "gvirtus-dra-controller"
    }
    assert len(stored["spec"]["devices"]) == 2


@pytest.mark.parametrize(
    ("gates", "features"),
    [
        (frozenset(), Features(taints=True, capacity=True)),
        (
            frozenset({"DRADeviceTaints", "DRADeviceTaintRules"}),
            Features(taints=False, capacity=True),
        ),
        (frozenset({"DRAConsumableCapacity"}), Features(taints=True, capacity=False)),
    ],
    ids=["all-on", "taints-off", "capacity-off"],
)
async def test_the_probe_sees_which_fields_the_server_keeps_and_writes_nothing(
    short_tmp: pathlib.Path, gates: frozenset[str], features: Features
) -> None:
    server = APIServer(tls_dir=short_tmp / "probe-tls", disabled_features=gates).start()
    try:
        kube = await KubeClient.connect(
            kubeconfig=server.write_kubeconfig(short_tmp / "kc"), component="test"
        )
        try:
            assert await probe_features(kube, driver="gpu.gvirtus.io") == features
        finally:
            await kube.close()
        assert server.list("resourceslices") == []
        assert server.writes() == []
    finally:
        server.stop()


def test_dropped_fields_are_named() -> None:
    sent = {"spec": {"devices": devices(1, tainted=True)}}
    kept, dropped = dropped_features(sent, {"spec": {"devices": devices(1)}}, Features())
    assert kept == Features(taints=False, capacity=True)
    assert dropped == ["device taints (DRADeviceTaints)"]
