"""Of each pod using claims the controller keeps its node and the address it connects from."""

from __future__ import annotations

from typing import Any

import pytest

from dra_driver.controller.pods import PodIndex, PodRecord, pod_record
from dra_driver.kube.watch import WatchEvent


def pod(
    *, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": "app", "namespace": "team", "uid": "uid-1"},
        "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimName": "c"}], **(spec or {})},
        "status": status or {},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (pod(), PodRecord(uid="uid-1", node="")),
        (
            pod(
                spec={"nodeName": "worker-1"},
                status={
                    "phase": "Running",
                    "podIP": "10.244.1.5",
                    "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}],
                    "hostIP": "172.18.0.3",
                    "hostIPs": [{"ip": "172.18.0.3"}],
                },
            ),
            PodRecord(uid="uid-1", node="worker-1", ip="10.244.1.5", host_ip="172.18.0.3"),
        ),
        (
            pod(status={"podIPs": [{"ip": "fd00::5"}, {"ip": "10.244.1.5"}], "podIP": "fd00::5"}),
            PodRecord(uid="uid-1", node="", ip="10.244.1.5"),
        ),
        (
            pod(status={"podIPs": [{"ip": "fd00::5"}], "podIP": "fd00::5"}),
            PodRecord(uid="uid-1", node=""),
        ),
        (
            pod(
                spec={"hostNetwork": True, "nodeName": "worker-1"},
                status={"podIP": "172.18.0.3", "hostIP": "172.18.0.3"},
            ),
            PodRecord(
                uid="uid-1",
                node="worker-1",
                ip="172.18.0.3",
                host_ip="172.18.0.3",
                host_network=True,
            ),
        ),
        (
            pod(status={"phase": "Succeeded", "podIP": "10.244.1.5", "hostIP": "172.18.0.3"}),
            PodRecord(uid="uid-1", node=""),
        ),
        (
            pod(status={"phase": "Failed", "podIP": "10.244.1.5"}),
            PodRecord(uid="uid-1", node=""),
        ),
        (
            {
                "metadata": {"name": "app", "namespace": "team", "uid": "uid-1"},
                "spec": {"containers": [{"name": "app"}]},
                "status": {
                    "podIP": "10.244.1.9",
                    "extendedResourceClaimStatus": {
                        "resourceClaimName": "app-extended-resources-x"
                    },
                },
            },
            PodRecord(uid="uid-1", node="", ip="10.244.1.9"),
        ),
        (
            {
                "metadata": {"name": "web", "namespace": "team", "uid": "uid-2"},
                "spec": {"containers": [{"name": "web"}]},
                "status": {"podIP": "10.244.1.9"},
            },
            None,
        ),
    ],
    ids=[
        "no-address-yet",
        "running",
        "dual-stack-ipv6-first",
        "ipv6-only",
        "host-network",
        "succeeded-gives-its-address-back",
        "failed-gives-its-address-back",
        "extended-resource-claim",
        "no-claims-not-kept",
    ],
)
def test_a_pod_is_kept_with_what_access_and_binding_need(
    obj: dict[str, Any], expected: PodRecord | None
) -> None:
    assert pod_record(obj) == expected


@pytest.mark.parametrize(
    ("record", "source"),
    [
        (PodRecord(uid="u", node="n", ip="10.244.1.5", host_ip="172.18.0.3"), "10.244.1.5"),
        (
            PodRecord(uid="u", node="n", ip="172.18.0.3", host_ip="172.18.0.3", host_network=True),
            "172.18.0.3",
        ),
        (PodRecord(uid="u", node="n", host_network=True), ""),
        (PodRecord(uid="u", node=""), ""),
    ],
    ids=["pod-network", "host-network", "host-network-not-started", "no-address"],
)
def test_a_pod_connects_from_its_own_address_or_its_nodes(record: PodRecord, source: str) -> None:
    assert record.source == source


async def test_the_index_answers_by_uid_and_follows_an_address_appearing() -> None:
    index = PodIndex()
    await index.on_relist([pod()])
    assert index.by_uid("uid-1") == PodRecord(uid="uid-1", node="")
    before = index.version

    await index.on_event(WatchEvent("MODIFIED", pod(status={"podIP": "10.244.1.5"})))

    assert index.version > before, "an address appearing is a change its consumers see"
    found = index.by_uid("uid-1")
    assert found is not None and found.source == "10.244.1.5"
    assert index.by_uid("uid-2") is None
