"""The version table of docs/versions.md, row by row, on a server playing each release.

Each release is played as installed: its default feature gates, so the API server
drops the fields of gates that are off, as the 1.36 captures of section 06 show a
real one does. The controller runs in this process against a real agent process and
must do on each release what the table says.
"""

from __future__ import annotations

import json
import pathlib
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import yaml

from dra_driver.controller.features import Features, probe_features
from dra_driver.controller.settings import Sharing
from dra_driver.kube.client import KubeClient
from tests.controller.conftest import Cluster
from tests.support.apiserver import APIServer

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Row:
    """What one release gives by default, as the table says."""

    taints: bool
    capacity: bool
    binding: bool
    extended_resource: bool


TABLE = {
    "1.35": Row(taints=False, capacity=False, binding=False, extended_resource=False),
    "1.36": Row(taints=True, capacity=True, binding=True, extended_resource=True),
    "1.37": Row(taints=True, capacity=True, binding=True, extended_resource=True),
}
DOCUMENTED = {
    "taints": "Device taints",
    "binding": "Binding conditions",
    "capacity": "Consumable capacity",
    "extended_resource": "Extended resource",
}


def documented() -> dict[str, Row]:
    """The "What each version gives by default" table of docs/versions.md, as Rows."""
    lines = (ROOT / "docs" / "versions.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Feature (gate)"))
    releases = [c.strip() for c in lines[header].strip("|").split("|")][1:]
    cells: dict[str, list[str]] = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        feature, *values = (c.strip() for c in line.strip("|").split("|"))
        cells[feature] = values
    return {
        release: Row(
            **{
                field: "off" not in next(v for f, v in cells.items() if f.startswith(name))[i]
                for field, name in DOCUMENTED.items()
            }
        )
        for i, release in enumerate(releases)
    }


def test_the_documented_table_is_the_one_tested() -> None:
    assert documented() == TABLE


def by_release() -> Any:
    return pytest.mark.parametrize(
        ("apiserver", "row"), list(TABLE.items()), ids=list(TABLE), indirect=["apiserver"]
    )


@by_release()
async def test_the_probe_finds_the_fields_each_release_keeps(
    apiserver: APIServer, kubeconfig: pathlib.Path, row: Row
) -> None:
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="controller")
    try:
        found = await probe_features(kube, driver="gpu.gvirtus.io")
    finally:
        await kube.close()
    assert found == Features(taints=row.taints, capacity=row.capacity, binding=row.binding)
    assert apiserver.writes() == [], "a dry run"


@by_release()
async def test_the_pools_each_release_gets_with_capacity_and_binding_conditions_asked_for(
    cluster: Cluster, row: Row
) -> None:
    agent = await cluster.add_backend("gpu-node-a", gpus=2)
    cluster.start_controller(
        sharing=Sharing.CAPACITY, capacity_fallback=Sharing.EXCLUSIVE, binding_conditions=True
    )
    devices = await cluster.until(
        lambda: len(cluster.devices("gpu-node-a")) == 2 and cluster.devices("gpu-node-a")
    )

    await agent.simulate(0, listening=False)
    if row.taints:
        await cluster.until(lambda: cluster.devices("gpu-node-a")["gpu-0"].get("taints"))
    else:
        await cluster.until(lambda: list(cluster.devices("gpu-node-a")) == ["gpu-1"])
    await cluster.stop_controllers()

    gpu = devices["gpu-0"]
    assert bool(gpu.get("allowMultipleAllocations")) == row.capacity, "capacity sharing"
    assert ("requestPolicy" in gpu["capacity"]["memory"]) == row.capacity
    assert bool(gpu.get("bindingConditions")) == row.binding, "binding conditions"
    lost = [e["message"] for e in cluster.events() if e["reason"] == "GVirtuSFeatureUnavailable"]
    if row == TABLE["1.35"]:
        (message,) = lost
        for part in (
            "device taints (DRADeviceTaints): unhealthy GPUs are left out of their pool",
            "binding conditions (DRADeviceBindingConditions): pods are bound without waiting",
            "consumable capacity (DRAConsumableCapacity): sharing falls back to exclusive",
        ):
            assert part in message
    else:
        assert lost == []


@by_release()
async def test_the_legacy_class_keeps_its_extended_resource_where_the_release_has_it(
    apiserver: APIServer, row: Row
) -> None:
    """``gpu.gvirtus.io-legacy`` as the install applies it (``kubectl apply``)."""
    body = yaml.safe_load((ROOT / "resourceclasses" / "gpu.gvirtus.io-legacy.yaml").read_text())
    context = ssl.create_default_context(cadata=apiserver.ca_pem.decode())
    async with (
        aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {apiserver.token}"},
            connector=aiohttp.TCPConnector(ssl=context),
        ) as http,
        http.post(f"{apiserver.url}/apis/resource.k8s.io/v1/deviceclasses", json=body) as answer,
    ):
        stored = json.loads(await answer.text())
    assert answer.status == 201
    assert body["spec"]["extendedResourceName"] == "gvirtus.io/gpu"
    assert ("extendedResourceName" in stored["spec"]) == row.extended_resource
