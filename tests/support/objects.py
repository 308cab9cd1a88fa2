"""Real-shaped API objects for tests, derived from the Kubernetes 1.36 captures.

Builders start from a captured object (so every field the API server really sets is
there: managedFields, finalizers, reservedFor, allocationTimestamp, ...) and change
only what a test cares about.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.support.apiserver import fixture, fixture_object

DRIVER = "gpu.gvirtus.io"
NAMESPACE = "gvirtus-demo"


@dataclass(frozen=True)
class Result:
    """One allocation result of a claim."""

    pool: str
    device: str
    request: str = "gpu"
    share_id: str | None = None
    driver: str = DRIVER
    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Copied from the request by the scheduler (``key``, ``operator``, ``value``, ``effect``)."""


@dataclass(frozen=True)
class Config:
    """One entry of ``status.allocation.devices.config``."""

    parameters: Mapping[str, Any]
    source: str = "FromClaim"
    requests: tuple[str, ...] = ()
    driver: str = DRIVER


def gvirtus_config(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "gpu.gvirtus.io/v1alpha1", "kind": "GVirtuSConfig", **fields}


def allocated_claim(
    *,
    name: str,
    uid: str | None = None,
    namespace: str = NAMESPACE,
    results: Iterable[Result] = (Result("backend-node-a", "gpu-0"),),
    configs: Iterable[Config] = (),
    reserved_for: Iterable[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """An allocated ResourceClaim, shaped like ``01-resourceclaim-allocated-get.json``.

    ``reserved_for`` lists the pods (name, uid) in ``status.reservedFor``; None keeps
    the captured one.
    """
    claim = copy.deepcopy(fixture_object("01-resourceclaim-allocated-get.json"))
    meta = claim["metadata"]
    meta.update(name=name, namespace=namespace, uid=uid or str(uuid.uuid4()))
    meta.pop("resourceVersion", None)
    meta.pop("generateName", None)
    allocation = claim["status"]["allocation"]["devices"]
    allocation["results"] = []
    for r in results:
        entry: dict[str, Any] = {
            "request": r.request,
            "driver": r.driver,
            "pool": r.pool,
            "device": r.device,
        }
        if r.share_id:
            entry["shareID"] = r.share_id
            entry["consumedCapacity"] = {"memory": "8Gi"}
        if r.tolerations:
            entry["tolerations"] = [dict(t) for t in r.tolerations]
        allocation["results"].append(entry)
    config = [
        {
            "source": c.source,
            **({"requests": list(c.requests)} if c.requests else {}),
            "opaque": {"driver": c.driver, "parameters": dict(c.parameters)},
        }
        for c in configs
    ]
    if config:
        allocation["config"] = config
    if reserved_for is not None:
        claim["status"]["reservedFor"] = [
            {"resource": "pods", "name": pod, "uid": pod_uid} for pod, pod_uid in reserved_for
        ]
    return claim


def claim_pod(
    *,
    name: str,
    uid: str,
    claim: str,
    ip: str | None = None,
    node: str = "worker-1",
    host_ip: str = "172.18.0.3",
    host_network: bool = False,
    namespace: str = NAMESPACE,
) -> dict[str, Any]:
    """A pod using ``claim``, shaped like ``01-pod-get.json``; running once it has an ``ip``.

    A host-network pod's address is its node's (``host_ip``), as a kubelet reports it.
    """
    pod = copy.deepcopy(fixture_object("01-pod-get.json"))
    meta = pod["metadata"]
    meta.update(name=name, namespace=namespace, uid=uid)
    for server_owned in ("resourceVersion", "managedFields"):
        meta.pop(server_owned, None)
    spec = pod["spec"]
    spec.update(nodeName=node, resourceClaims=[{"name": "gpu", "resourceClaimName": claim}])
    if host_network:
        spec["hostNetwork"] = True
        ip = ip or host_ip
    status = pod["status"]
    for field_name in ("podIP", "podIPs", "hostIP", "hostIPs"):
        status.pop(field_name, None)
    if ip is not None:
        status.update(
            phase="Running",
            podIP=ip,
            podIPs=[{"ip": ip}],
            hostIP=host_ip,
            hostIPs=[{"ip": host_ip}],
        )
    return pod


def unallocated_claim(
    *, name: str, uid: str | None = None, namespace: str = NAMESPACE
) -> dict[str, Any]:
    """A pending claim (``status: {}``), like ``01-nomatch-resourceclaim-pending-get.json``."""
    claim = copy.deepcopy(fixture_object("01-nomatch-resourceclaim-pending-get.json"))
    claim["metadata"].update(name=name, namespace=namespace, uid=uid or str(uuid.uuid4()))
    claim["metadata"].pop("resourceVersion", None)
    claim["metadata"].pop("generateName", None)
    return claim


@dataclass(frozen=True)
class Device:
    """One device of a backend slice; attributes as the controller publishes them."""

    name: str
    address: Any = "10.0.0.5"
    port: Any = 9999
    uuid: str = field(default_factory=lambda: f"GPU-{uuid.uuid4()}")
    model: str = "NVIDIA H100 80GB HBM3"
    taints: tuple[tuple[str, str, str], ...] = ()
    omit: tuple[str, ...] = ()


def backend_slice(
    *,
    pool: str,
    devices: Iterable[Device],
    generation: int = 1,
    name: str | None = None,
    slice_count: int = 1,
) -> dict[str, Any]:
    """A network-attached slice, shaped like ``01-resourceslice-get.json``."""
    template = copy.deepcopy(fixture_object("01-resourceslice-get.json"))
    meta = {k: v for k, v in template["metadata"].items() if k in ("managedFields",)}
    meta["name"] = name or f"{DRIVER}-{pool}-0"
    spec = template["spec"]
    spec["pool"] = {"name": pool, "generation": generation, "resourceSliceCount": slice_count}
    spec["devices"] = []
    for index, d in enumerate(devices):
        attributes: dict[str, Any] = {
            "backendAddress": {"string": d.address}
            if isinstance(d.address, str)
            else {"int": d.address},
            "backendNode": {"string": pool},
            "backendPort": {"int": d.port} if isinstance(d.port, int) else {"string": str(d.port)},
            "cudaVersion": {"version": "12.6.3"},
            "index": {"int": index},
            "model": {"string": d.model},
            "uuid": {"string": d.uuid},
        }
        for key in d.omit:
            attributes.pop(key, None)
        device: dict[str, Any] = {
            "name": d.name,
            "attributes": attributes,
            "capacity": {"memory": {"value": "80Gi"}},
        }
        if d.taints:
            device["taints"] = [
                {"key": k, "value": v, "effect": e, "timeAdded": "2026-11-23T01:11:42Z"}
                for k, v, e in d.taints
            ]
        spec["devices"].append(device)
    return {
        "kind": "ResourceSlice",
        "apiVersion": "resource.k8s.io/v1",
        "metadata": meta,
        "spec": spec,
    }


def node(
    *, name: str, frontend: bool = True, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Node shaped like ``09-node-get.json``."""
    obj = copy.deepcopy(fixture_object("09-node-get.json"))
    obj["metadata"]["name"] = name
    for server_owned in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        obj["metadata"].pop(server_owned, None)
    node_labels = obj["metadata"].setdefault("labels", {})
    node_labels["kubernetes.io/hostname"] = name
    if frontend:
        node_labels["gvirtus.io/frontend.allowed"] = "true"
    else:
        node_labels.pop("gvirtus.io/frontend.allowed", None)
    node_labels.update(labels or {})
    return obj


AGENT_LABELS = {
    "app.kubernetes.io/component": "backend-agent",
    "app.kubernetes.io/part-of": "gvirtus-dra",
}


def agent_pod(
    *,
    node: str,
    ip: str,
    host_ip: str | None = None,
    namespace: str = "gvirtus-system",
    name: str | None = None,
    daemonset: str | None = "gvirtus-dra-backend-agent",
) -> dict[str, Any]:
    """A running backend agent pod, the way the controller finds agents.

    ``ip`` is where the controller reaches the agent; ``host_ip`` (default ``ip``) the
    backend address its inventory must name. In a cluster both are the node's address
    (agents use the host network); tests reach agents on loopback addresses while they
    publish routable ones. ``daemonset`` None makes a pod no DaemonSet owns.
    """
    meta: dict[str, Any] = {
        "name": name or f"backend-agent-{node}",
        "namespace": namespace,
        "labels": dict(AGENT_LABELS),
    }
    if daemonset is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "name": daemonset,
                "uid": "5d1e0000-0000-4000-8000-00000000a9e7",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeName": node,
            "hostNetwork": True,
            "containers": [{"name": "agent", "image": "gvirtus-dra"}],
        },
        "status": {"phase": "Running", "podIP": ip, "hostIP": host_ip or ip},
    }


def admission_review(name: str = "08-admissionreview-create-pod-jsonpatch.json") -> dict[str, Any]:
    """The AdmissionReview a 1.36 API server sent for a legacy pod (section 08 captures).

    Its pod has init container ``setup`` (1 GPU) and containers ``trainer`` (1 GPU,
    1Gi memory) and ``worker`` (2 GPUs), all as limits and defaulted requests.
    """
    return copy.deepcopy(fixture(name)["webhookRequest"]["body"])


def legacy_pod(
    *,
    containers: Mapping[str, Any] = {"app": 1},
    init: Mapping[str, Any] = {},
    sidecars: Iterable[str] = (),
    labelled: bool = True,
    where: tuple[str, ...] = ("limits", "requests"),
) -> dict[str, Any]:
    """A pod asking for ``nvidia.com/gpu``: container name → count (None: no GPU).

    Shaped like the pod of :func:`admission_review` (defaulted, with the service
    account volume). ``where`` says whether counts go into limits, requests or both;
    init containers named in ``sidecars`` get ``restartPolicy: Always``.
    """
    pod = copy.deepcopy(admission_review()["request"]["object"])
    template = pod["spec"]["containers"][0]

    def container(name: str, count: Any) -> dict[str, Any]:
        made = copy.deepcopy(template)
        made["name"] = name
        made["resources"] = {}
        if count is not None:
            for part in where:
                made["resources"][part] = {"nvidia.com/gpu": str(count)}
        if name in sidecars:
            made["restartPolicy"] = "Always"
        return made

    pod["spec"]["containers"] = [container(n, c) for n, c in containers.items()]
    pod["spec"]["initContainers"] = [container(n, c) for n, c in init.items()]
    if not init:
        del pod["spec"]["initContainers"]
    pod["metadata"].pop("managedFields", None)
    if not labelled:
        pod["metadata"]["labels"].pop("gvirtus.io/enabled")
    return pod


def review_of(
    pod: Mapping[str, Any], *, operation: str = "CREATE", dry_run: bool = False
) -> dict[str, Any]:
    """An AdmissionReview of ``pod`` shaped like the captured one, with a fresh uid."""
    review = admission_review()
    request = review["request"]
    request.update(
        uid=str(uuid.uuid4()), operation=operation, dryRun=dry_run, object=copy.deepcopy(pod)
    )
    request["name"] = pod.get("metadata", {}).get("name", "")
    if dry_run:
        request["options"] = {
            "kind": "CreateOptions",
            "apiVersion": "meta.k8s.io/v1",
            "dryRun": ["All"],
        }
    return review


def device_taint_rule(
    *,
    name: str,
    api_version: str = "resource.k8s.io/v1beta2",
    pool: str | None = None,
    device: str | None = None,
    driver: str | None = DRIVER,
    effect: str = "NoSchedule",
    key: str = "gvirtus.io/drain",
    value: str = "maintenance",
) -> dict[str, Any]:
    """An admin's drain as sent to the server, shaped like ``11-devicetaintrule-create.json``.

    ``api_version`` is ``resource.k8s.io/v1beta2`` for 1.36 and ``resource.k8s.io/v1``
    for 1.37 (the same spec); selector fields left None are left out.
    """
    rule = copy.deepcopy(fixture("11-devicetaintrule-create.json")["request"]["body"])
    rule["apiVersion"] = api_version
    rule["metadata"] = {"name": name}
    selector = {"driver": driver, "pool": pool, "device": device}
    rule["spec"]["deviceSelector"] = {k: v for k, v in selector.items() if v is not None}
    rule["spec"]["taint"] = {"key": key, "value": value, "effect": effect}
    return rule
