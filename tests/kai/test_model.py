"""The KAI-Scheduler model itself, rule by rule, on slices a real 1.36 API server stored.

Each rule of ``tests/support/kai.py`` is shown once refusing and once letting the
pod through, so a model that refused everything (or nothing) fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.support import kai, manifests
from tests.support.apiserver import fixture, fixture_object

Obj = dict[str, Any]

NETWORK = "01-resourceslice-get.json"  # backend-node-a: gpu-0, gpu-1
TAINTED = "03-taint-resourceslice-get.json"  # backend-node-c: gpu-0 tainted NoSchedule, gpu-1
BINDING = "04-binding-resourceslice-get.json"  # backend-node-d: gpu-0 with binding conditions
SHARED = "02-shared-resourceslice-get.json"  # backend-node-b: gpu-0, 80Gi, shareable
NODE_LOCAL = "03-node-local-resourceslice-list-by-nodename.json"  # worker-2: gpu-0, gpu-1


def stored(name: str) -> Obj:
    body = fixture(name)["response"]["body"]
    return copy.deepcopy(body["items"][0] if "items" in body else body)


def cluster(*slices: str, gates: frozenset[str] = kai.V0_17_0) -> kai.KAI:
    remote = manifests.find("resourceclasses/kai/remote.gvirtus.io.yaml", "DeviceClass")
    gpu_class = fixture_object("01-deviceclass-get.json")
    return kai.KAI(
        slices=[stored(s) for s in slices],
        classes={c["metadata"]["name"]: c for c in (remote, gpu_class)},
        nodes=fixture("09-nodes-list.json")["response"]["body"]["items"],
        gates=gates,
    )


def first_available(pod: Obj, claims: dict[str, Obj]) -> None:
    request = claims["gpu"]["spec"]["devices"]["requests"][0]
    request["firstAvailable"] = [{"name": "any", **request.pop("exactly")}]


def extended_resource(pod: Obj, claims: dict[str, Obj]) -> None:
    pod["spec"]["containers"][0]["resources"]["limits"] = {"gvirtus.io/gpu": "1"}


Change = Callable[[Obj, dict[str, Obj]], None] | None


@pytest.mark.parametrize(
    ("slices", "gates", "pod", "change", "outcome"),
    [
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io"},
            None,
            {("backend-node-a", "gpu-0")},
        ),
        ([NETWORK], kai.V0_17_0, {"device_class": "gpu.gvirtus.io"}, None, {"gpu-accounting"}),
        (
            [NODE_LOCAL],
            kai.V0_17_0,
            {"device_class": "gpu.gvirtus.io"},
            None,
            {("worker-2", "gpu-0")},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io", "scheduler": "default-scheduler"},
            None,
            {"not-kai"},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io", "queue": None},
            None,
            {"no-queue"},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "gpu.gvirtus.io", "shared": True},
            None,
            {"shared-claim-queue"},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {
                "device_class": "gpu.gvirtus.io",
                "shared": True,
                "claim_labels": {kai.QUEUE_LABEL: "team-a"},
            },
            None,
            {"gpu-accounting"},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io", "shared": True},
            None,
            {("backend-node-a", "gpu-0")},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io"},
            first_available,
            {"first-available"},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io"},
            extended_resource,
            {"extended-resource"},
        ),
        ([BINDING], kai.V0_17_0, {"device_class": "remote.gvirtus.io"}, None, {"no-device"}),
        (
            [BINDING],
            frozenset({kai.BINDING}),
            {"device_class": "remote.gvirtus.io"},
            None,
            {("backend-node-d", "gpu-0")},
        ),
        (
            [TAINTED],
            kai.V0_17_0,
            {"device_class": "remote.gvirtus.io"},
            None,
            {("backend-node-c", "gpu-0")},
        ),
        (
            [TAINTED],
            frozenset({kai.TAINTS}),
            {"device_class": "remote.gvirtus.io"},
            None,
            {("backend-node-c", "gpu-1")},
        ),
        (
            [TAINTED],
            frozenset({kai.TAINTS}),
            {
                "device_class": "remote.gvirtus.io",
                "request": {
                    "tolerations": [
                        {
                            "key": "gvirtus.io/unhealthy",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        }
                    ]
                },
            },
            None,
            {("backend-node-c", "gpu-0")},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {
                "device_class": "remote.gvirtus.io",
                "request": {
                    "selectors": [
                        {"cel": {"expression": "device.attributes['gpu.gvirtus.io'].region == 'x'"}}
                    ]
                },
            },
            None,
            {"selector-error"},
        ),
        (
            [NETWORK],
            kai.V0_17_0,
            {
                "device_class": "remote.gvirtus.io",
                "request": {
                    "selectors": [
                        {"cel": {"expression": "device.attributes['gpu.gvirtus.io'].index == 1"}}
                    ]
                },
            },
            None,
            {("backend-node-a", "gpu-1")},
        ),
    ],
    ids=[
        "remote-class-placed",
        "gpu-class-counted-as-a-gpu-request",
        "gpu-class-where-the-node-lists-gpus",
        "not-kais-pod",
        "no-queue",
        "shared-gpu-claim-without-the-queue",
        "shared-gpu-claim-with-the-queue-still-counted",
        "shared-remote-claim-needs-no-queue",
        "first-available-is-an-error",
        "extended-resource-not-allocatable",
        "binding-conditions-never-selected",
        "binding-conditions-with-the-gate-bound-without-waiting",
        "taints-ignored",
        "taints-honoured-with-the-gate",
        "taints-tolerated-with-the-gate",
        "cel-runtime-error",
        "cel-selects",
    ],
)
def test_each_rule(
    slices: list[str],
    gates: frozenset[str],
    pod: dict[str, Any],
    change: Change,
    outcome: set[Any],
) -> None:
    model = cluster(*slices, gates=gates)
    built, claims = kai.pod_with_claim("app", **pod)
    if change is not None:
        change(built, claims)

    result = model.attempt(built, claims)

    if isinstance(result, kai.UnschedulableError):
        assert result.rules == outcome, str(result)
        assert model.allocated == {}, "a refused pod allocates nothing"
    else:
        assert result.devices == outcome


def test_the_binder_never_waits_for_binding_conditions() -> None:
    model = cluster(BINDING, gates=frozenset({kai.BINDING}))
    pod, claims = kai.pod_with_claim("app", device_class="remote.gvirtus.io")

    (result,) = model.schedule(pod, claims).results

    assert result.binding_conditions == ("gvirtus.io/BackendReady",)


@pytest.mark.parametrize(
    ("slices", "gates", "placed"),
    [
        ([NETWORK], kai.V0_17_0, ["gpu-0", "gpu-1"]),
        ([SHARED], kai.V0_17_0, ["gpu-0"]),
        ([SHARED], frozenset({kai.CAPACITY}), ["gpu-0"] * 5),
    ],
    ids=["exclusive", "shareable-ignored", "shareable-with-the-gate-until-memory-runs-out"],
)
def test_devices_go_to_as_many_claims_as_kai_allows(
    slices: list[str], gates: frozenset[str], placed: list[str]
) -> None:
    model = cluster(*slices, gates=gates)

    fitted, refusal = model.fill(
        device_class="remote.gvirtus.io", request={"capacity": {"requests": {"memory": "16Gi"}}}
    )

    assert [r.device for p in fitted for r in p.results] == placed
    assert refusal.rules == {"no-device"}


def test_only_a_pools_newest_generation_counts() -> None:
    model = cluster(NETWORK)
    old = copy.deepcopy(model.slices[0])
    old["metadata"]["name"] = "gpu.gvirtus.io-backend-node-a-old"
    old["spec"]["pool"]["generation"] = 0
    old["spec"]["devices"][0]["name"] = "gpu-9"
    model.slices = [old, *model.slices]
    pod, claims = kai.pod_with_claim("app", device_class="remote.gvirtus.io")

    assert model.schedule(pod, claims).devices == {("backend-node-a", "gpu-0")}


def test_constraints_are_not_pretended() -> None:
    model = cluster(NETWORK)
    pod, claims = kai.pod_with_claim("app", device_class="remote.gvirtus.io")
    claims["gpu"]["spec"]["devices"]["constraints"] = [
        {"requests": ["gpu"], "matchAttribute": "gpu.gvirtus.io/backendNode"}
    ]

    with pytest.raises(kai.NotModelledError):
        model.schedule(pod, claims)
