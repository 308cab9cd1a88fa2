"""Server-side apply and claim device status, as the 1.36 API server does them."""

from __future__ import annotations

import copy
import json
from typing import Any

import aiohttp
import pytest

from tests.support.apiserver import APIServer, fixture, fixture_object

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/gvirtus-demo/resourceclaims"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    *,
    body: Any,
    content_type: str,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    data = body if isinstance(body, str) else json.dumps(body)
    async with http.request(
        method, path, data=data, params=params, headers={"Content-Type": content_type}
    ) as response:
        return response.status, await response.json()


def captured(name: str) -> tuple[int, Any]:
    capture = fixture(name)
    return capture["response"]["code"], capture["response"]["body"]


def waiting_claim(apiserver: APIServer, *, other_driver: bool = False) -> dict[str, Any]:
    """``bind-claim`` as the scheduler left it, optionally with a device of another driver."""
    claim = copy.deepcopy(fixture_object("04-binding-claim-allocated-waiting-get.json"))
    claim["metadata"].pop("resourceVersion")
    if other_driver:
        claim["status"]["allocation"]["devices"]["results"].append(
            {"request": "gpu", "driver": "gpu.nvidia.com", "pool": "worker-2", "device": "gpu-1"}
        )
    return apiserver.put(claim)


def status_apply(manager_entries: list[dict[str, Any]], **metadata: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "bind-claim", "namespace": "gvirtus-demo", **metadata},
        "status": {"devices": manager_entries},
    }


def entry(*, driver: str, pool: str, device: str, ready: str = "True") -> dict[str, Any]:
    return {
        "driver": driver,
        "pool": pool,
        "device": device,
        "conditions": [
            {
                "type": "gvirtus.io/BackendReady",
                "status": ready,
                "reason": "BackendReachable" if ready == "True" else "BackendDown",
                "message": "m",
                "lastTransitionTime": "2026-11-23T01:13:09Z",
            }
        ],
        "data": {"backendAddress": "10.0.0.5", "backendPort": 9999},
    }


async def test_apply_creates_a_slice_like_the_capture(http: aiohttp.ClientSession) -> None:
    request = fixture("10-ssa-apply-resourceslice.json")["request"]
    code, body = captured("10-ssa-apply-resourceslice.json")

    got_code, got = await call(
        http,
        "PATCH",
        request["path"],
        body=request["bodyYaml"],
        content_type=APPLY,
        params=request["query"],
    )

    assert got_code == code == 201
    assert got["spec"] == body["spec"]
    (mine,) = got["metadata"]["managedFields"]
    (theirs,) = body["metadata"]["managedFields"]
    assert {k: v for k, v in mine.items() if k != "time"} == {
        k: v for k, v in theirs.items() if k != "time"
    }


async def test_a_merge_patch_of_device_status_is_stored_like_the_capture(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    waiting_claim(apiserver)
    request = fixture("04-binding-claim-status-patch.json")["request"]
    _, body = captured("04-binding-claim-status-patch.json")

    code, got = await call(http, "PATCH", request["path"], body=request["body"], content_type=MERGE)

    assert code == 200
    assert got["status"]["devices"] == body["status"]["devices"]


@pytest.mark.parametrize(
    "capture",
    [
        "05-error-422-patch-claim-status-device-not-allocated.json",
        "05-error-422-patch-claim-status-invalid-condition.json",
    ],
)
async def test_invalid_device_status_is_the_real_422(
    apiserver: APIServer, http: aiohttp.ClientSession, capture: str
) -> None:
    waiting_claim(apiserver)
    request = fixture(capture)["request"]

    got = await call(http, "PATCH", request["path"], body=request["body"], content_type=MERGE)

    assert got == captured(capture)


async def test_applied_entries_sit_beside_another_managers_and_leave_only_with_their_owner(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    waiting_claim(apiserver, other_driver=True)
    path = f"{CLAIMS}/bind-claim/status"
    ours = entry(driver="gpu.gvirtus.io", pool="backend-node-d", device="gpu-0")
    theirs = entry(driver="gpu.nvidia.com", pool="worker-2", device="gpu-1")

    async def apply(manager: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
        code, got = await call(
            http,
            "PATCH",
            path,
            body=status_apply(entries),
            content_type=APPLY,
            params={"fieldManager": manager, "force": "true"},
        )
        assert code == 200, got
        return got

    await apply("other-driver", [theirs])
    both = await apply("gvirtus-dra-controller", [ours])
    assert [e["driver"] for e in both["status"]["devices"]] == ["gpu.nvidia.com", "gpu.gvirtus.io"]

    changed = entry(driver="gpu.gvirtus.io", pool="backend-node-d", device="gpu-0", ready="False")
    updated = await apply("gvirtus-dra-controller", [changed])
    assert updated["status"]["devices"] == [theirs, changed]

    emptied = await apply("gvirtus-dra-controller", [])
    assert emptied["status"]["devices"] == [theirs]
    assert emptied["status"]["allocation"] == both["status"]["allocation"], "other fields untouched"


async def test_apply_to_a_deleted_claim_is_404_and_to_a_recreated_one_409(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    path = f"{CLAIMS}/bind-claim/status"
    params = {"fieldManager": "gvirtus-dra-controller", "force": "true"}
    ours = entry(driver="gpu.gvirtus.io", pool="backend-node-d", device="gpu-0")

    missing, _ = await call(
        http, "PATCH", path, body=status_apply([ours]), content_type=APPLY, params=params
    )
    waiting_claim(apiserver)
    stale, body = await call(
        http,
        "PATCH",
        path,
        body=status_apply([ours], uid="00000000-0000-0000-0000-000000000000"),
        content_type=APPLY,
        params=params,
    )

    assert missing == 404
    assert stale == 409
    assert "Precondition failed: UID in precondition" in body["message"]


async def test_apply_needs_a_field_manager(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    waiting_claim(apiserver)
    code, body = await call(
        http, "PATCH", f"{CLAIMS}/bind-claim/status", body=status_apply([]), content_type=APPLY
    )
    assert code == 400
    assert "fieldManager" in body["message"]


@pytest.mark.parametrize(
    "capture",
    [
        "05-error-422-create-slice-bindingconditions-without-failureconditions.json",
        "05-error-422-create-slice-5-binding-conditions.json",
    ],
)
async def test_invalid_binding_conditions_are_the_real_422(
    http: aiohttp.ClientSession, capture: str
) -> None:
    body = fixture(capture)["request"]["body"]
    async with http.post(SLICES, json=body) as response:
        assert (response.status, await response.json()) == captured(capture)
