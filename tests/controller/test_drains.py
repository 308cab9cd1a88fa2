"""Admin drains (DeviceTaintRules) as the controller sees them, on 1.35, 1.36 and 1.37.

The test API server serves rules as each release does (v1beta2 in 1.36 with its gate
on, v1 in 1.37, none otherwise); an admin creates and deletes them over HTTP as
kubectl would, and the controller, run in this process against real agent
processes, must show them in its metrics and as Events on the backend's Node while
publishing and judging exactly as before.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from dra_driver.controller.drains import (
    DRAINED,
    EFFECTS,
    DrainRules,
    Drains,
    Rule,
    drained,
    rule_of,
    strongest,
)
from dra_driver.controller.pools import node_info
from dra_driver.controller.slices import SliceStore
from dra_driver.kube.index import Index
from tests.controller.conftest import Cluster
from tests.support import objects
from tests.support.apiserver import APIServer

pytestmark = pytest.mark.slow

V1 = "/apis/resource.k8s.io/v1/devicetaintrules"
V1BETA2 = "/apis/resource.k8s.io/v1beta2/devicetaintrules"


def rule(*, driver: str | None = None, **selector: str) -> Rule:
    obj = objects.device_taint_rule(name="r", driver=driver, **selector)
    found = rule_of(obj, driver="gpu.gvirtus.io")
    assert found is not None
    return found


POOLS = {"node-a": frozenset({"gpu-0", "gpu-1"}), "node-b": frozenset({"gpu-0"})}


@pytest.mark.parametrize(
    ("selector", "taken"),
    [
        ({}, {"node-a": ("gpu-0", "gpu-1"), "node-b": ("gpu-0",)}),
        ({"driver": "gpu.gvirtus.io"}, {"node-a": ("gpu-0", "gpu-1"), "node-b": ("gpu-0",)}),
        ({"pool": "node-a"}, {"node-a": ("gpu-0", "gpu-1")}),
        ({"device": "gpu-0"}, {"node-a": ("gpu-0",), "node-b": ("gpu-0",)}),
        ({"pool": "node-a", "device": "gpu-1"}, {"node-a": ("gpu-1",)}),
        ({"pool": "node-a", "device": "gpu-7"}, {}),
        ({"pool": "node-c"}, {}),
    ],
    ids=[
        "everything",
        "our-driver",
        "one-pool",
        "a-name-in-every-pool",
        "one-gpu",
        "no-such-gpu",
        "no-such-pool",
    ],
)
def test_a_selector_takes_the_devices_all_its_given_fields_match(
    selector: dict[str, str], taken: dict[str, tuple[str, ...]]
) -> None:
    found = drained({"r": rule(**selector)}, POOLS, driver="gpu.gvirtus.io")
    assert {pool: by_rule["r"][1] for pool, by_rule in found.items()} == taken


@pytest.mark.parametrize(
    ("change", "kept"),
    [
        (lambda o: o["spec"]["deviceSelector"].update(driver="gpu.nvidia.com"), False),
        (lambda o: o["spec"]["taint"].update(effect="PreferNoSchedule"), False),
        (lambda o: o["spec"]["taint"].pop("key"), False),
        (lambda o: o["spec"]["deviceSelector"].pop("driver"), True),
    ],
    ids=["another-driver", "unknown-effect", "no-key", "any-driver"],
)
def test_rules_that_can_never_take_our_devices_are_not_kept(change: Any, kept: bool) -> None:
    obj = objects.device_taint_rule(name="r", pool="node-a")
    change(obj)
    assert (rule_of(obj, driver="gpu.gvirtus.io") is not None) == kept


def test_each_device_counts_once_by_its_strongest_effect() -> None:
    rules = {
        "pool": rule(pool="node-a"),
        "one": objects.device_taint_rule(
            name="one", pool="node-a", device="gpu-1", effect="NoExecute"
        ),
        "mark": objects.device_taint_rule(name="mark", pool="node-b", effect="None"),
    }
    parsed = {
        name: r if isinstance(r, Rule) else rule_of(r, driver="gpu.gvirtus.io")
        for name, r in rules.items()
    }
    found = drained(
        {n: r for n, r in parsed.items() if r is not None}, POOLS, driver="gpu.gvirtus.io"
    )
    assert strongest(found) == {"NoExecute": 1, "NoSchedule": 1, "None": 1}


@pytest.mark.parametrize(
    ("honoured", "effect", "warned"),
    [(True, "NoSchedule", False), (False, "NoSchedule", True), (False, "None", False)],
    ids=["kube-scheduler", "kai-without-taints", "kai-mark-only"],
)
def test_where_the_allocator_ignores_taints_the_event_says_so(
    honoured: bool, effect: str, warned: bool
) -> None:
    drains = Drains(
        driver="gpu.gvirtus.io",
        rules=DrainRules(driver="gpu.gvirtus.io"),
        store=SliceStore(driver="gpu.gvirtus.io"),
        nodes=Index(node_info),
        events=None,  # never used: only the message is asked for
        honoured=honoured,
    )
    message = drains._drained_message("node-a", rule(pool="node-a", effect=effect), ("gpu-0",))
    assert ("KAI-Scheduler's allocator ignores device taints" in message) == warned


# -- the controller against each release ---------------------------------------------


@pytest.fixture(autouse=True)
def forget_earlier_gauges() -> None:
    """An impossible count, so no test reads what an earlier test's controller left."""
    for effect in EFFECTS:
        DRAINED.labels(effect).set(-1)


RELEASES = [
    # (apiserver as played, the path rules are served at, or None)
    ("1.35", None),
    ("1.36", None),  # DRADeviceTaintRules is off by default
    (("1.36", frozenset()), V1BETA2),
    ("1.37", V1),
]
RELEASE_IDS = ["1.35", "1.36-defaults", "1.36-gate-on", "1.37"]
SERVED = [r for r in RELEASES if r[1] is not None]
SERVED_IDS = ["1.36-gate-on", "1.37"]


def drained_devices(effect: str) -> float | None:
    return REGISTRY.get_sample_value("gvirtus_dra_controller_drained_devices", {"effect": effect})


def drain_events(cluster: Cluster) -> list[tuple[str, str, str, str]]:
    return [
        (e["involvedObject"]["name"], e["type"], e["reason"], e["message"])
        for e in cluster.events()
        if e["reason"] in ("GVirtuSBackendDrained", "GVirtuSBackendUndrained")
    ]


async def as_admin(apiserver: APIServer, method: str, path: str, body: Any = None) -> Any:
    """What ``kubectl create -f`` or ``kubectl delete`` sends."""
    context = ssl.create_default_context(cadata=apiserver.ca_pem.decode())
    async with (
        aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {apiserver.token}", "User-Agent": "kubectl/v1.37.0"},
            connector=aiohttp.TCPConnector(ssl=context),
        ) as http,
        http.request(method, apiserver.url + path, json=body) as response,
    ):
        answer = json.loads(await response.text())
        assert response.status in (200, 201), answer
        return answer


def watching(apiserver: APIServer, path: str) -> bool:
    """Whether the controller watches ``path``: its first list is done."""
    return any(
        r.path == path and r.query.get("watch") and "controller" in r.user_agent
        for r in apiserver.requests
    )


@pytest.mark.parametrize(("apiserver", "path"), SERVED, ids=SERVED_IDS, indirect=["apiserver"])
async def test_a_drain_shows_in_metrics_and_events_and_changes_nothing_else(
    cluster: Cluster, apiserver: APIServer, path: str
) -> None:
    version = path.split("/")[3]
    await cluster.add_backend("gpu-node-a", gpus=2)
    cluster.start_controller()
    await cluster.until(lambda: len(cluster.devices("gpu-node-a")) == 2)
    await cluster.until(lambda: watching(apiserver, path))
    published = cluster.devices("gpu-node-a")
    writes = len(cluster.slice_writes())

    node_drain = objects.device_taint_rule(
        name="drain-gpu-node-a", api_version=f"resource.k8s.io/{version}", pool="gpu-node-a"
    )
    created = await as_admin(apiserver, "POST", path, node_drain)
    await cluster.until(lambda: drained_devices("NoSchedule") == 2)
    gpu_drain = objects.device_taint_rule(
        name="evict-gpu-1",
        api_version=f"resource.k8s.io/{version}",
        pool="gpu-node-a",
        device="gpu-1",
        effect="NoExecute",
    )
    await as_admin(apiserver, "POST", path, gpu_drain)
    await cluster.until(lambda: drained_devices("NoExecute") == 1)
    assert drained_devices("NoSchedule") == 1, "gpu-1 counts once, by its stronger rule"
    assert REGISTRY.get_sample_value("gvirtus_dra_controller_gpus", {"verdict": "healthy"}) == 2

    await as_admin(apiserver, "DELETE", f"{path}/evict-gpu-1")
    await cluster.until(lambda: drained_devices("NoSchedule") == 2)
    assert drained_devices("NoExecute") == 0
    await as_admin(apiserver, "DELETE", f"{path}/drain-gpu-node-a")
    await cluster.until(lambda: len(drain_events(cluster)) == 4)
    await cluster.stop_controllers()

    since = created["spec"]["taint"]["timeAdded"]
    assert drain_events(cluster) == [
        (
            "gpu-node-a",
            "Normal",
            "GVirtuSBackendDrained",
            f"DeviceTaintRule drain-gpu-node-a (gvirtus.io/drain=maintenance:NoSchedule since "
            f"{since}) drains gpu-0, gpu-1 of GVirtuS pool gpu-node-a: no new claims are "
            "allocated them; running pods keep them",
        ),
        (
            "gpu-node-a",
            "Warning",
            "GVirtuSBackendDrained",
            drain_events(cluster)[1][3],
        ),
        (
            "gpu-node-a",
            "Normal",
            "GVirtuSBackendUndrained",
            "DeviceTaintRule evict-gpu-1 no longer drains devices of GVirtuS pool gpu-node-a",
        ),
        (
            "gpu-node-a",
            "Normal",
            "GVirtuSBackendUndrained",
            "DeviceTaintRule drain-gpu-node-a no longer drains devices of GVirtuS pool gpu-node-a",
        ),
    ]
    assert (
        "drains gpu-1 of GVirtuS pool gpu-node-a: pods using them are evicted"
        in (drain_events(cluster)[1][3])
    )
    assert (drained_devices("NoSchedule"), drained_devices("NoExecute")) == (0, 0)
    assert cluster.devices("gpu-node-a") == published, "the slices stay as they were"
    assert len(cluster.slice_writes()) == writes, "a drain costs no slice write"
    rule_paths = {r.path for r in apiserver.requests if "devicetaintrules" in r.path}
    assert not any(p.startswith(V1BETA2) for p in rule_paths) or path == V1BETA2, (
        "v1beta2 only where v1 is not served"
    )


@pytest.mark.parametrize(("apiserver", "path"), RELEASES, ids=RELEASE_IDS, indirect=["apiserver"])
async def test_the_controller_watches_the_version_the_release_serves(
    cluster: Cluster, apiserver: APIServer, path: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dra_driver.controller.informers")
    await cluster.add_backend("gpu-node-a", gpus=1)
    cluster.start_controller()
    await cluster.until(lambda: cluster.devices("gpu-node-a"))
    said = await cluster.until(
        lambda: [r.getMessage() for r in caplog.records if "DeviceTaintRule" in r.getMessage()]
    )
    await cluster.until(lambda: drained_devices("NoSchedule") == 0)
    await cluster.stop_controllers()

    asked = [
        (r.path, r.query.get("watch") is not None)
        for r in apiserver.requests
        if "devicetaintrules" in r.path and "controller" in r.user_agent
    ]
    if path is None:
        assert said == [
            "the API server serves no DeviceTaintRule (tried resource.k8s.io/v1, "
            "resource.k8s.io/v1beta2): admin drains cannot be seen (1.36 serves them only "
            "with the DRADeviceTaintRules gate and resource.k8s.io/v1beta2 on; 1.35 not by "
            "default); looking again every 10 minutes"
        ]
        assert asked == [(V1, False), (V1BETA2, False)]
    else:
        assert said == [f"watching DeviceTaintRule as resource.k8s.io/{path.split('/')[3]}"]
        assert (path, True) in asked, "watched"
        assert {p for p, _ in asked} == ({V1} if path == V1 else {V1, V1BETA2})


@pytest.mark.parametrize(("apiserver", "path"), SERVED, ids=SERVED_IDS, indirect=["apiserver"])
async def test_drains_older_than_the_leader_are_counted_but_not_announced_again(
    cluster: Cluster, apiserver: APIServer, path: str
) -> None:
    version = path.split("/")[3]
    await cluster.add_backend("gpu-node-a", gpus=2)
    await as_admin(
        apiserver,
        "POST",
        path,
        objects.device_taint_rule(
            name="old", api_version=f"resource.k8s.io/{version}", pool="gpu-node-a"
        ),
    )
    cluster.start_controller()
    await cluster.until(lambda: drained_devices("NoSchedule") == 2)
    await cluster.until(lambda: watching(apiserver, path))
    await as_admin(
        apiserver,
        "POST",
        path,
        objects.device_taint_rule(
            name="new",
            api_version=f"resource.k8s.io/{version}",
            pool="gpu-node-a",
            device="gpu-0",
            effect="None",
        ),
    )
    await cluster.until(lambda: drain_events(cluster))
    await cluster.stop_controllers()

    assert [(name, reason) for name, _, reason, _ in drain_events(cluster)] == [
        ("gpu-node-a", "GVirtuSBackendDrained")
    ]
    assert "DeviceTaintRule new (" in drain_events(cluster)[0][3]
    assert (drained_devices("NoSchedule"), drained_devices("None")) == (2, 0), (
        "gpu-0 counts by its stronger rule"
    )
    assert drain_events(cluster)[0][3].endswith("scheduling is unaffected")
