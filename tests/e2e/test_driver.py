"""The driver on a real cluster: published GPUs, prepared pods, failures, upgrades, failover.

Each test works in a namespace of its own and puts back what it changed on nodes
and backends (see the ledger in conftest). Pods run the driver's own image, which
the cluster can pull and which has Python and a shell.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import pytest

from tests.e2e.conftest import DRIVER, SYSTEM, Kube, Ledger, until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

Obj = dict[str, Any]
AGENTS = "app.kubernetes.io/component=backend-agent,app.kubernetes.io/part-of=gvirtus-dra"
SLICES = "app.kubernetes.io/managed-by=gvirtus-dra-controller"


# -- building blocks ----------------------------------------------------------------------------


def template(namespace: str, name: str = "one-gpu", selector: str | None = None) -> Obj:
    exactly: Obj = {"deviceClassName": DRIVER}
    if selector:
        exactly["selectors"] = [{"cel": {"expression": selector}}]
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}},
    }


def pod(
    namespace: str,
    name: str,
    image: str,
    *,
    claim_template: str | None = "one-gpu",
    labels: Obj | None = None,
    limits: Obj | None = None,
) -> Obj:
    container: Obj = {
        "name": "app",
        "image": image,
        "command": ["python", "-c", "import time; time.sleep(86400)"],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "64Mi", **(limits or {})},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    spec: Obj = {"containers": [container], "terminationGracePeriodSeconds": 1}
    if claim_template:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": claim_template}]
        container["resources"]["claims"] = [{"name": "gpu"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
    }


def phase(kube: Kube, namespace: str, name: str) -> str:
    return str(kube.get("-n", namespace, "pod", name).get("status", {}).get("phase", ""))


def running(kube: Kube, namespace: str, name: str, timeout: float = 180) -> Obj:
    def ready() -> Obj | None:
        found = kube.get("-n", namespace, "pod", name)
        conditions = {
            c["type"]: c["status"] for c in found.get("status", {}).get("conditions") or []
        }
        return found if conditions.get("Ready") == "True" else None

    result: Obj = until(ready, timeout=timeout, what=f"pod {namespace}/{name} Ready")
    return result


def unschedulable(kube: Kube, namespace: str, name: str, timeout: float = 90) -> str:
    def message() -> str | None:
        found = kube.get("-n", namespace, "pod", name)
        for condition in found.get("status", {}).get("conditions") or []:
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return str(condition.get("message", ""))
        return None

    result: str = until(message, timeout=timeout, what=f"pod {namespace}/{name} Unschedulable")
    return result


def claim_of(kube: Kube, namespace: str, pod_name: str) -> Obj:
    found = kube.get("-n", namespace, "pod", pod_name)
    (status,) = found["status"]["resourceClaimStatuses"]
    return kube.get("-n", namespace, "resourceclaim", status["resourceClaimName"])


def published(kube: Kube) -> dict[tuple[str, str], Obj]:
    """Every device of the driver's slices, by (pool, device)."""
    return {
        (s["spec"]["pool"]["name"], d["name"]): d
        for s in kube.items("resourceslices", "-l", SLICES)
        for d in s["spec"].get("devices") or []
    }


def attribute(device: Obj, name: str) -> Any:
    return next(iter(device["attributes"][name].values()))


def agents(kube: Kube) -> list[Obj]:
    return [
        p
        for p in kube.items("-n", SYSTEM, "pods", "-l", AGENTS)
        if p.get("status", {}).get("phase") == "Running"
    ]


def inventory(kube: Kube, agent: Obj) -> Obj:
    return kube.raw(
        f"/api/v1/namespaces/{SYSTEM}/pods/{agent['metadata']['name']}:9450/proxy/v1/inventory"
    )


def events(kube: Kube, namespace: str) -> list[Obj]:
    return kube.items("-n", namespace, "events")


# -- the tests ------------------------------------------------------------------------------------


def test_every_backend_gpu_is_published_with_its_attributes(kube: Kube) -> None:
    found = agents(kube)
    assert found, "no backend agent runs: label a node gvirtus.io/backend.allowed=true"

    def all_published() -> bool:
        devices = published(kube)
        return all(
            (inv["nodeName"], f"gpu-{gpu['index']}") in devices
            for inv in (inventory(kube, a) for a in found)
            for gpu in inv["gpus"]
        )

    until(all_published, timeout=60, what="a device for every GPU of every agent")
    devices = published(kube)
    for agent in found:
        inv = inventory(kube, agent)
        for gpu in inv["gpus"]:
            device = devices[(inv["nodeName"], f"gpu-{gpu['index']}")]
            assert attribute(device, "uuid") == gpu["uuid"]
            assert attribute(device, "model") == gpu["model"]
            assert attribute(device, "backendNode") == inv["nodeName"]
            assert attribute(device, "backendAddress") == inv["address"]
            assert attribute(device, "backendPort") == gpu["port"]
            assert attribute(device, "simulated") is inv["simulated"]


def test_a_pod_gets_the_properties_and_environment_of_its_backend(
    kube: Kube, namespace: str, image: str
) -> None:
    kube.apply(template(namespace), pod(namespace, "app", image))
    running(kube, namespace, "app")

    claim = claim_of(kube, namespace, "app")
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    device = published(kube)[(result["pool"], result["device"])]
    properties = json.loads(kube.exec(namespace, "app", "cat", "/etc/gvirtus/properties.json"))
    env = dict(
        line.split("=", 1)
        for line in kube.exec(namespace, "app", "env").splitlines()
        if "=" in line
    )
    (communicator,) = properties["communicator"]
    address, port = attribute(device, "backendAddress"), attribute(device, "backendPort")

    assert communicator["endpoint"]["server_address"] == address
    assert communicator["endpoint"]["port"] == str(port)
    assert env["GVIRTUS_BACKEND"] == f"{address}:{port}"
    assert env["GVIRTUS_CONFIG"] == "/etc/gvirtus/properties.json"
    assert env["GVIRTUS_GPU_UUID"] == attribute(device, "uuid")
    (entry,) = [d for d in claim["status"].get("devices") or [] if d["driver"] == DRIVER]
    assert entry["data"]["backendAddress"] == address
    ready = {c["type"]: c["status"] for c in entry["conditions"]}
    assert ready["gvirtus.io/BackendReady"] == "True"


def test_deleting_the_pod_leaves_no_cdi_spec_on_its_node(
    kube: Kube, namespace: str, image: str
) -> None:
    kube.apply(template(namespace), pod(namespace, "app", image))
    node = running(kube, namespace, "app")["spec"]["nodeName"]
    uid = claim_of(kube, namespace, "app")["metadata"]["uid"]
    (plugin,) = [
        p
        for p in kube.items(
            "-n", SYSTEM, "pods", "-l", "app.kubernetes.io/name=gvirtus-dra-kubelet-plugin"
        )
        if p["spec"].get("nodeName") == node and p["status"].get("phase") == "Running"
    ][:1]
    name = plugin["metadata"]["name"]

    def specs() -> list[str]:
        return kube.exec(SYSTEM, name, "ls", "/var/run/cdi").split()

    assert any(uid in f for f in specs()), "prepared: the claim's CDI spec is on the node"
    kube.run("-n", namespace, "delete", "pod", "app", "--wait=true")
    until(lambda: not any(uid in f for f in specs()), timeout=60, what="the CDI spec removed")


def test_a_legacy_pod_is_converted_and_runs(kube: Kube, namespace: str, image: str) -> None:
    legacy = pod(
        namespace,
        "legacy",
        image,
        claim_template=None,
        labels={"gvirtus.io/enabled": "true"},
        limits={"nvidia.com/gpu": "1"},
    )
    kube.apply(legacy)

    stored = running(kube, namespace, "legacy")

    assert stored["spec"]["resourceClaims"] == [
        {"name": "gpu-app", "resourceClaimTemplateName": "gvirtus-legacy-gpu-1"}
    ]
    assert "nvidia.com/gpu" not in json.dumps(stored["spec"]["containers"])
    assert stored["metadata"]["annotations"]["gvirtus.io/converted"] == "gpu-app=1"
    kube.exec(namespace, "legacy", "cat", "/etc/gvirtus/properties.json")


def _spare_node(kube: Kube) -> Obj | None:
    """A worker that is not a backend now (preferring the demo's spare), or None."""
    nodes = [
        n
        for n in kube.items("nodes")
        if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
    ]
    nodes.sort(key=lambda n: n["metadata"]["labels"].get("demo.gvirtus.io/role") != "spare")
    for node in nodes:
        if node["metadata"]["labels"].get("gvirtus.io/backend.allowed") != "true":
            return node
    return nodes[0] if len(nodes) > 1 else None


def _set_backend(kube: Kube, ledger: Ledger, node: Obj, value: str) -> None:
    name = node["metadata"]["name"]
    old = node["metadata"]["labels"].get("gvirtus.io/backend.allowed")
    ledger.record(
        {"kind": "node-label", "node": name, "key": "gvirtus.io/backend.allowed", "old": old}
    )
    kube.run("label", "node", name, f"gvirtus.io/backend.allowed={value}", "--overwrite")


def test_a_pod_waits_for_room_and_runs_when_a_backend_is_added(
    kube: Kube, ledger: Ledger, namespace: str, image: str
) -> None:
    spare = _spare_node(kube)
    if spare is None:
        pytest.skip("no worker node can be turned into a backend")
    name = spare["metadata"]["name"]
    if spare["metadata"]["labels"].get("gvirtus.io/backend.allowed") == "true":
        _set_backend(kube, ledger, spare, "false")
        until(
            lambda: not [k for k in published(kube) if k[0] == name],
            timeout=120,
            what=f"the pool of {name} removed",
        )
    kube.apply(template(namespace))
    pending = None
    for i in range(64):
        kube.apply(pod(namespace, f"filler-{i}", image))
        if "Unschedulable" in json.dumps(
            until(
                lambda i=i: _scheduled_or_not(kube, namespace, f"filler-{i}"),
                timeout=90,
                what=f"filler-{i} placed or refused",
            )
        ):
            pending = f"filler-{i}"
            break
    assert pending is not None, "64 GPUs free: too many to fill for this test"

    _set_backend(kube, ledger, spare, "true")

    stored = running(kube, namespace, pending, timeout=240)
    claim = claim_of(kube, namespace, pending)
    assert claim["status"]["allocation"]["devices"]["results"][0]["pool"] == name
    assert stored["status"]["phase"] == "Running"


def _scheduled_or_not(kube: Kube, namespace: str, name: str) -> list[Obj] | None:
    found = kube.get("-n", namespace, "pod", name)
    conditions = found.get("status", {}).get("conditions") or []
    scheduled = [c for c in conditions if c["type"] == "PodScheduled"]
    if scheduled and (
        scheduled[0]["status"] == "True" or scheduled[0].get("reason") == "Unschedulable"
    ):
        return scheduled
    return None


def test_a_stopped_backend_takes_its_gpu_out_and_evicts_its_pods(
    kube: Kube, ledger: Ledger, namespace: str, image: str, tmp_path: pathlib.Path
) -> None:
    kube.apply(template(namespace), pod(namespace, "victim", image))
    running(kube, namespace, "victim")
    (result,) = claim_of(kube, namespace, "victim")["status"]["allocation"]["devices"]["results"]
    device = published(kube)[(result["pool"], result["device"])]
    (agent,) = [a for a in agents(kube) if a["spec"]["nodeName"] == result["pool"]]
    if not inventory(kube, agent)["simulated"]:
        pytest.skip("stopping a backend is done through the simulator; this backend is real")
    index = attribute(device, "index")
    entry = ledger.record(
        {"kind": "simulated-gpu", "pod": agent["metadata"]["name"], "index": index}
    )
    agent_path = f"/api/v1/namespaces/{SYSTEM}/pods/{agent['metadata']['name']}:9450/proxy"
    path = f"{agent_path}/v1/simulator/gpus/{index}"

    kube.put_raw(path, {"listening": False}, tmp_path)
    try:
        taints = until(
            lambda: published(kube)[(result["pool"], result["device"])].get("taints"),
            timeout=60,
            what="the GPU tainted",
        )
        assert taints[0]["key"] == "gvirtus.io/unhealthy"
        uuid_of = attribute(device, "uuid")
        kube.apply(
            template(namespace, "that-gpu", f"device.attributes['{DRIVER}'].uuid == '{uuid_of}'"),
            pod(namespace, "newcomer", image, claim_template="that-gpu"),
        )
        unschedulable(kube, namespace, "newcomer")
        config = kube.get("-n", SYSTEM, "configmap", "gvirtus-dra-controller")["data"][
            "config.yaml"
        ]
        after = next(
            (
                float(line.split(":")[1])
                for line in config.splitlines()
                if line.startswith("noExecuteAfter:")
            ),
            120.0,
        )
        if after == 0:
            return
        until(
            lambda: _gone_or_disrupted(kube, namespace, "victim"),
            timeout=after + 90,
            what="the pod on the dead backend evicted",
        )
    finally:
        ledger.undo(entry)


def _gone_or_disrupted(kube: Kube, namespace: str, name: str) -> bool:
    found = kube.items("-n", namespace, "pods", "--field-selector", f"metadata.name={name}")
    if not found:
        return True
    conditions = found[0].get("status", {}).get("conditions") or []
    return bool(found[0]["metadata"].get("deletionTimestamp")) or any(
        c["type"] == "DisruptionTarget" and c["status"] == "True" for c in conditions
    )


def test_rolling_the_plugin_while_pods_start_fails_no_prepare(
    kube: Kube, namespace: str, image: str
) -> None:
    kube.apply(template(namespace))
    capacity = len(published(kube))
    count = max(1, min(4, capacity - 1))
    before = kube.get("-n", SYSTEM, "daemonset", "gvirtus-dra-kubelet-plugin")["metadata"][
        "generation"
    ]

    kube.run("-n", SYSTEM, "rollout", "restart", "daemonset/gvirtus-dra-kubelet-plugin")
    for i in range(count):
        kube.apply(pod(namespace, f"during-{i}", image))
        time.sleep(1)
    for i in range(count):
        running(kube, namespace, f"during-{i}", timeout=300)
    kube.run(
        "-n",
        SYSTEM,
        "rollout",
        "status",
        "daemonset/gvirtus-dra-kubelet-plugin",
        "--timeout=300s",
        timeout=330,
    )

    after = kube.get("-n", SYSTEM, "daemonset", "gvirtus-dra-kubelet-plugin")["metadata"][
        "generation"
    ]
    assert after > before, "a new revision rolled out"
    failed = [
        e for e in events(kube, namespace) if e.get("reason") == "FailedPrepareDynamicResources"
    ]
    assert failed == []


def test_killing_the_leader_causes_no_slice_churn(kube: Kube) -> None:
    def slices() -> dict[str, tuple[str, int]]:
        return {
            s["metadata"]["name"]: (
                s["metadata"]["resourceVersion"],
                s["spec"]["pool"]["generation"],
            )
            for s in kube.items("resourceslices", "-l", SLICES)
        }

    lease = kube.get("-n", SYSTEM, "lease", "gvirtus-dra-controller")
    holder = lease["spec"]["holderIdentity"]
    leader = holder.rsplit("_", 1)[0]
    time.sleep(5)
    before = slices()

    kube.run("-n", SYSTEM, "delete", "pod", leader, "--wait=false")
    until(
        lambda: (
            kube.get("-n", SYSTEM, "lease", "gvirtus-dra-controller")["spec"].get("holderIdentity")
            not in (None, "", holder)
        ),
        timeout=60,
        what="another controller replica leading",
    )
    time.sleep(15)

    assert slices() == before
