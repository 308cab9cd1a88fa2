"""Inventories are strict: anything malformed is rejected whole, with the reason."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from dra_driver.models import MAX_INVENTORY_BYTES, InventoryError, parse_inventory


def gpu(index: int = 0, **changes: Any) -> dict[str, Any]:
    return {
        "index": index,
        "uuid": f"GPU-{index:08d}-0000-0000-0000-000000000000",
        "model": "NVIDIA H100 80GB HBM3",
        "memoryBytes": 85899345920,
        "driverVersion": "580.65.06",
        "cudaVersion": "12.6",
        "port": 9999 + index,
        "health": {"healthy": True, "reason": "", "message": ""},
        "load": {"connections": 2, "utilizationPercent": 41.5, "memoryUsedBytes": 1024},
        "restarts": 0,
        "lastExit": "",
        "lastRestart": "",
        "backend": {
            "openFiles": 12,
            "openFilesLimit": 1024,
            "established": 2,
            "closeWait": 3,
            "acceptQueue": 0,
        },
        **changes,
    }


def inventory(**changes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "inventory.gpu.gvirtus.io/v1",
        "kind": "BackendInventory",
        "nodeName": "gpu-node-1",
        "address": "10.0.0.5",
        "simulated": False,
        "agentVersion": "0.1.0",
        "gpus": [gpu(0), gpu(1)],
        "access": {"mode": "on", "synced": True, "admitted": 3, "error": ""},
        **changes,
    }


def encode(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_a_valid_inventory_round_trips() -> None:
    parsed = parse_inventory(encode(inventory()))
    assert parsed.gpus[1].port == 10000
    assert json.loads(parsed.encode()) == inventory()


def test_an_agent_older_than_access_control_reports_none() -> None:
    """The controller then warns on its Node that nothing keeps strangers out."""
    older = inventory()
    del older["access"]
    assert parse_inventory(encode(older)).access is None


def test_a_newer_agents_access_mode_is_kept() -> None:
    parsed = parse_inventory(encode(inventory(access={"mode": "audit", "synced": False})))
    assert parsed.access is not None
    assert parsed.access.mode == "audit"


@pytest.mark.parametrize(
    "reason",
    ["port-closed", "starting", "gpu-fallen-off-the-bus"],
    ids=["older", "oldest", "newer"],
)
def test_reasons_of_older_and_newer_agents_are_accepted(reason: str) -> None:
    document = with_gpu(health={"healthy": False, "reason": reason, "message": "why"})
    assert parse_inventory(encode(document)).gpus[0].health.reason == reason


def test_an_older_agent_without_backend_state_is_accepted() -> None:
    document = inventory()
    for entry in document["gpus"]:
        del entry["backend"], entry["lastRestart"]
    assert parse_inventory(encode(document)).gpus[0].backend is None


def test_unknown_fields_from_newer_agents_are_ignored() -> None:
    document = inventory(futureField={"x": 1})
    document["gpus"][0]["temperature"] = 61
    assert parse_inventory(encode(document)).gpus[0].index == 0


def with_gpu(**changes: Any) -> dict[str, Any]:
    return inventory(gpus=[gpu(0, **changes)])


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (inventory(address="fd00::5"), "is not an IPv4 address"),
        (inventory(address="backend.example"), "is not an IPv4 address"),
        (inventory(address="127.0.0.1"), "cannot be reached from other nodes"),
        (inventory(address="0.0.0.0"), "cannot be reached from other nodes"),
        (inventory(nodeName="Node_1"), "is not a valid node name"),
        (inventory(apiVersion="inventory.gpu.gvirtus.io/v2"), "apiVersion"),
        (inventory(gpus="none"), "gpus"),
        (with_gpu(port="9999"), "gpus.0.port: Input should be a valid integer"),
        (with_gpu(port=70000), "gpus.0.port"),
        (with_gpu(memoryBytes=0), "gpus.0.memoryBytes"),
        (with_gpu(cudaVersion="twelve"), "gpus.0.cudaVersion"),
        (with_gpu(model="x" * 65), "gpus.0.model"),
        (with_gpu(uuid="GPU-\n"), "gpus.0.uuid"),
        (with_gpu(health={"healthy": "yes"}), "gpus.0.health.healthy"),
        (with_gpu(load={"connections": -1}), "gpus.0.load.connections"),
        (
            with_gpu(health={"healthy": False, "reason": "Port Closed"}),
            "gpus.0.health.reason: String should match pattern",
        ),
        (with_gpu(backend={"closeWait": -1}), "gpus.0.backend.closeWait"),
        (inventory(gpus=[gpu(0), gpu(0)]), "two GPUs share the same index"),
        (inventory(gpus=[gpu(0), gpu(1, port=9999)]), "two GPUs share the same port"),
        (["not", "an", "object"], "inventory"),
    ],
    ids=[
        "ipv6",
        "hostname",
        "loopback",
        "unspecified",
        "bad-node-name",
        "wrong-version",
        "gpus-not-list",
        "port-as-string",
        "port-out-of-range",
        "no-memory",
        "bad-cuda-version",
        "long-model",
        "control-chars",
        "health-not-bool",
        "negative-connections",
        "reason-not-a-taint-value",
        "negative-close-wait",
        "duplicate-index",
        "duplicate-port",
        "not-an-object",
    ],
)
def test_malformed_inventories_are_rejected_with_the_reason(document: Any, reason: str) -> None:
    with pytest.raises(InventoryError, match=None) as caught:
        parse_inventory(encode(document))
    assert reason in str(caught.value)


def test_huge_payloads_are_rejected_before_parsing() -> None:
    document = copy.deepcopy(inventory())
    document["padding"] = "x" * MAX_INVENTORY_BYTES
    with pytest.raises(InventoryError, match="exceeds the limit of 1048576"):
        parse_inventory(encode(document))


def test_not_json_is_rejected() -> None:
    with pytest.raises(InventoryError, match="Invalid JSON"):
        parse_inventory(b"<html>502 Bad Gateway</html>")
