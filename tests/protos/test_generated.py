"""The committed stubs match protos/ and the wire contract of Kubernetes 1.36 and 1.37."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUBS = ROOT / "dra_driver" / "kubeletapi"


def test_committed_stubs_match_a_fresh_generation(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed = {
        p.relative_to(STUBS): p.read_bytes()
        for p in STUBS.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sorted(fresh) == sorted(committed), "stub files added or missing: run `make protos`"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stubs differ from protos/: {stale}; run `make protos`"


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        (
            "dra.v1",
            "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin",
            ["NodePrepareResources", "NodeUnprepareResources"],
        ),
        (
            "dra.v1beta1",
            "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin",
            ["NodePrepareResources", "NodeUnprepareResources"],
        ),
        ("dra_health.v1alpha1", "v1alpha1.DRAResourceHealth", ["NodeWatchResources"]),
        ("dra_health.v1", "v1.DRAResourceHealth", ["NodeWatchResources"]),
        (
            "pluginregistration.v1",
            "pluginregistration.Registration",
            ["GetInfo", "NotifyRegistrationStatus"],
        ),
    ],
    ids=["dra-v1", "dra-v1beta1", "health-v1alpha1", "health-v1", "registration"],
)
def test_service_paths_are_the_kubelets(module: str, service: str, methods: list[str]) -> None:
    pb = importlib.import_module(f"dra_driver.kubeletapi.{module}.api_pb2")
    (descriptor,) = pb.DESCRIPTOR.services_by_name.values()
    assert descriptor.full_name == service
    assert [m.name for m in descriptor.methods] == methods


FIELDS = {
    ("dra.v1", "Claim"): {"namespace": 1, "uid": 2, "name": 3},
    ("dra.v1", "Device"): {
        "request_names": 1,
        "pool_name": 2,
        "device_name": 3,
        "cdi_device_ids": 4,
        "share_id": 5,
    },
    ("dra.v1", "NodePrepareResourceResponse"): {"devices": 1, "error": 2},
    ("dra.v1", "NodeUnprepareResourceResponse"): {"error": 1},
    ("dra.v1beta1", "Device"): {
        "request_names": 1,
        "pool_name": 2,
        "device_name": 3,
        "cdi_device_ids": 4,
    },
    ("dra_health.v1alpha1", "DeviceHealth"): {
        "device": 1,
        "health": 2,
        "last_updated_time": 3,
        "health_check_timeout_seconds": 4,
        "message": 5,
    },
    ("dra_health.v1alpha1", "DeviceIdentifier"): {"pool_name": 1, "device_name": 2},
    ("dra_health.v1alpha1", "NodeWatchResourcesResponse"): {"devices": 1},
    ("dra_health.v1", "DeviceHealth"): {
        "device": 1,
        "health": 2,
        "last_updated_time": 3,
        "health_check_timeout_seconds": 4,
        "message": 5,
    },
    ("dra_health.v1", "DeviceIdentifier"): {"pool_name": 1, "device_name": 2},
    ("dra_health.v1", "NodeWatchResourcesResponse"): {"devices": 1},
    ("pluginregistration.v1", "PluginInfo"): {
        "type": 1,
        "name": 2,
        "endpoint": 3,
        "supported_versions": 4,
    },
    ("pluginregistration.v1", "RegistrationStatus"): {"plugin_registered": 1, "error": 2},
}


@pytest.mark.parametrize(
    ("where", "numbers"), list(FIELDS.items()), ids=[f"{m}.{n}" for m, n in FIELDS]
)
def test_field_numbers_are_the_wire_contract(
    where: tuple[str, str], numbers: dict[str, int]
) -> None:
    module, message = where
    pb = importlib.import_module(f"dra_driver.kubeletapi.{module}.api_pb2")
    fields = pb.DESCRIPTOR.message_types_by_name[message].fields
    assert {f.name: f.number for f in fields} == numbers


def test_share_id_is_optional_so_absence_is_visible() -> None:
    from dra_driver.kubeletapi.dra.v1 import api_pb2

    device = api_pb2.Device(pool_name="p", device_name="d")
    assert not device.HasField("share_id")


@pytest.mark.parametrize("module", ["dra_health.v1alpha1", "dra_health.v1"])
def test_health_status_numbers_are_the_wire_contract(module: str) -> None:
    pb = importlib.import_module(f"dra_driver.kubeletapi.{module}.api_pb2")
    values = pb.DESCRIPTOR.enum_types_by_name["HealthStatus"].values
    assert {v.name: v.number for v in values} == {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}


def test_health_v1_and_v1alpha1_encode_the_same_bytes() -> None:
    """A kubelet of either version decodes what the other version's stub encodes."""
    from dra_driver.kubeletapi.dra_health.v1 import api_pb2 as v1
    from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2 as v1alpha1

    def response(pb: object) -> bytes:
        make: Any = pb
        return bytes(
            make.NodeWatchResourcesResponse(
                devices=[
                    make.DeviceHealth(
                        device=make.DeviceIdentifier(pool_name="node-a", device_name="gpu-0"),
                        health=make.UNHEALTHY,
                        last_updated_time=1_780_000_000,
                        health_check_timeout_seconds=16,
                        message="backend unhealthy",
                    )
                ]
            ).SerializeToString()
        )

    assert response(v1) == response(v1alpha1)
