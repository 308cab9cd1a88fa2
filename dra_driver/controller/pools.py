"""From a backend's inventory to the ResourceSlices of its pool: the desired state.

Everything here is a pure function of its inputs (the inventory, the node, the
verdicts, the policy and the server's features), so the publisher can compare the
result with what is stored and write only the difference.

A pool is one backend node. Each GPU becomes one device (``exclusive``: one claim at
a time), K devices sharing its memory (``slots``), or one device several claims
share by memory (``capacity``, consumable capacity in 1.36). Device names come from
the GPU's index, so they survive restarts. Health shows as taints where the API
server keeps them (``NoSchedule``, ``NoExecute`` once a GPU is to be evicted, and
``binding-failed`` on a GPU whose binding failed until it is judged ready again);
without taints such a GPU is left out of the pool. Devices are split into
slices within the API's limits: 128 per slice, 64 when devices may carry taints (the
limit is applied whenever taints are on, so a taint appearing never reshuffles
devices across slices).

A gated field is used only where the API server keeps it *and* the scheduler's
allocator acts on it (``DevicePolicy.allocator``, see :mod:`scheduler`): under
KAI-Scheduler v0.17.0 the pools carry no taints, binding conditions or multiple
allocations, and a GPU that would have been tainted is left out instead.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dra_driver.controller import scheduler
from dra_driver.controller.features import FAILURE_CONDITION, READY_CONDITION, Features
from dra_driver.controller.health import Verdict
from dra_driver.controller.settings import Sharing
from dra_driver.device import GPUDevice, name_of
from dra_driver.models import GPU, Inventory
from dra_driver.quantity import format_bytes

FRONTEND_LABEL = "gvirtus.io/frontend.allowed"
UNHEALTHY_TAINT = "gvirtus.io/unhealthy"
BINDING_FAILED = "binding-failed"
OVERLOADED_TAINT = "gvirtus.io/overloaded"
MANAGED_BY = ("app.kubernetes.io/managed-by", "gvirtus-dra-controller")
MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS = 64
MIB = 1024**2

Obj = dict[str, Any]
TaintTimes = Mapping[tuple[str, str, str], str]
"""``timeAdded`` of published taints by (device, key, effect), kept while a taint stays."""


@dataclass(frozen=True)
class NodeInfo:
    """What a pool needs of its backend's Node."""

    name: str
    uid: str
    zone: str | None = None
    region: str | None = None


def node_info(obj: Obj) -> NodeInfo:
    """What a pool needs of a Node."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return NodeInfo(
        name=meta["name"],
        uid=meta.get("uid", ""),
        zone=labels.get("topology.kubernetes.io/zone"),
        region=labels.get("topology.kubernetes.io/region"),
    )


@dataclass(frozen=True)
class DevicePolicy:
    """How GPUs become devices."""

    sharing: Sharing = Sharing.EXCLUSIVE
    slots: int = 4
    capacity_default: int = 8 * 1024**3
    capacity_min: int = 1024**3
    capacity_step: int = 1024**3
    fallback: Sharing = Sharing.EXCLUSIVE
    binding_conditions: bool = False
    binds_to_node: bool = False
    allocator: Features = field(default_factory=Features)
    """Gated fields the scheduler's allocator acts on (all, for kube-scheduler)."""

    def usable(self, server: Features) -> Features:
        """Gated fields to publish with: kept by the server and acted on by the allocator."""
        return scheduler.usable(server, self.allocator)

    def effective(self, features: Features) -> Sharing:
        """The sharing actually used: capacity falls back where it would not be honoured."""
        if self.sharing is Sharing.CAPACITY and not self.usable(features).capacity:
            return self.fallback
        return self.sharing


def cuda_semver(version: str) -> str:
    """Version attributes must be semver: ``12.6`` → ``12.6.0``."""
    parts = [*version.split("."), "0", "0"][:3]
    return ".".join(str(int(p)) for p in parts)


def gpu_device(gpu: GPU, inventory: Inventory, node: NodeInfo) -> GPUDevice:
    """What every device of ``gpu`` says about it and its backend."""
    return GPUDevice(
        name=name_of(gpu.index),
        index=gpu.index,
        uuid=gpu.uuid,
        model=gpu.model,
        node=inventory.node_name,
        address=inventory.address,
        port=gpu.port,
        cuda_version=cuda_semver(gpu.cuda_version),
        driver_version=gpu.driver_version,
        transport="tcp",
        simulated=inventory.simulated,
        zone=node.zone,
        region=node.region,
    )


def _shapes(gpu: GPU, sharing: Sharing, policy: DevicePolicy) -> list[tuple[str, Obj]]:
    """(device name, device fields besides attributes and taints) per device of ``gpu``."""
    if sharing is Sharing.SLOTS:
        share = gpu.memory_bytes // policy.slots // MIB * MIB
        return [
            (name_of(gpu.index, slot=k), {"capacity": {"memory": {"value": format_bytes(share)}}})
            for k in range(policy.slots)
        ]
    capacity: Obj = {"value": format_bytes(gpu.memory_bytes)}
    fields: Obj = {"capacity": {"memory": capacity}}
    if sharing is Sharing.CAPACITY:
        low, step = policy.capacity_min, policy.capacity_step
        high = low + (gpu.memory_bytes - low) // step * step
        default = min(high, low + max(0, policy.capacity_default - low + step - 1) // step * step)
        capacity["requestPolicy"] = {
            "default": format_bytes(default),
            "validRange": {
                "min": format_bytes(low),
                "max": format_bytes(high),
                "step": format_bytes(step),
            },
        }
        fields["allowMultipleAllocations"] = True
    return [(name_of(gpu.index), fields)]


def _taints(
    name: str, verdict: Verdict, withdrawn: str | None, times: TaintTimes, now: str
) -> list[Obj]:
    if not verdict.healthy:
        key, value, effect = (
            UNHEALTHY_TAINT,
            verdict.reason,
            "NoExecute" if verdict.evict else "NoSchedule",
        )
    elif withdrawn is not None:
        key, value, effect = UNHEALTHY_TAINT, BINDING_FAILED, "NoSchedule"
    elif verdict.overloaded:
        key, value, effect = OVERLOADED_TAINT, verdict.overloaded, "NoSchedule"
    else:
        return []
    return [
        {
            "key": key,
            "value": value,
            "effect": effect,
            "timeAdded": times.get((name, key, effect), now),
        }
    ]


def devices(
    *,
    inventory: Inventory,
    node: NodeInfo,
    verdicts: Mapping[int, Verdict],
    policy: DevicePolicy,
    features: Features,
    taint_times: TaintTimes,
    now: str,
    withdrawn: Mapping[int, str] | None = None,
) -> list[Obj]:
    """Every device of the pool, in GPU order.

    ``withdrawn`` names GPUs (by index) whose binding failed: tainted
    ``gvirtus.io/unhealthy=binding-failed``, or left out where taints are unavailable,
    so the scheduler's next attempt picks another.
    """
    features = policy.usable(features)
    sharing = policy.effective(features)
    found = []
    for gpu in sorted(inventory.gpus, key=lambda g: g.index):
        verdict = verdicts.get(gpu.index, Verdict(healthy=True))
        held = (withdrawn or {}).get(gpu.index)
        if not features.taints and (not verdict.healthy or held is not None):
            continue
        shared = gpu_device(gpu, inventory, node).attributes()
        for name, fields in _shapes(gpu, sharing, policy):
            device: Obj = {"name": name, "attributes": shared, **fields}
            if features.taints and (taints := _taints(name, verdict, held, taint_times, now)):
                device["taints"] = taints
            if policy.binding_conditions and features.binding:
                device["bindingConditions"] = [READY_CONDITION]
                device["bindingFailureConditions"] = [FAILURE_CONDITION]
                if policy.binds_to_node:
                    device["bindsToNode"] = True
            found.append(device)
    return found


def split(devices: list[Obj], *, features: Features) -> list[list[Obj]]:
    """Devices grouped into slices within the API's per-slice limit (at least one slice)."""
    limit = MAX_DEVICES_WITH_TAINTS if features.taints else MAX_DEVICES
    return [devices[i : i + limit] for i in range(0, len(devices), limit)] or [[]]


def slice_name(driver: str, pool: str, index: int) -> str:
    """``<driver>-<pool>-<n>``; pools with very long names are shortened with a hash."""
    name = f"{driver}-{pool}-{index}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(pool.encode()).hexdigest()[:10]
    keep = 253 - len(f"{driver}--{digest}-{index}")
    return f"{driver}-{pool[:keep].rstrip('.-')}-{digest}-{index}"


def slice_object(
    *, driver: str, node: NodeInfo, index: int, count: int, generation: int, devices: list[Obj]
) -> Obj:
    """One ResourceSlice of the pool of ``node``."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {
            "name": slice_name(driver, node.name, index),
            "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": node.name,
                    "uid": node.uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "driver": driver,
            "pool": {"name": node.name, "generation": generation, "resourceSliceCount": count},
            "nodeSelector": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": FRONTEND_LABEL, "operator": "In", "values": ["true"]}
                        ]
                    }
                ]
            },
            "devices": devices,
        },
    }


def desired_slices(
    *,
    driver: str,
    node: NodeInfo,
    inventory: Inventory,
    verdicts: Mapping[int, Verdict],
    withdrawn: Mapping[int, str],
    policy: DevicePolicy,
    features: Features,
    existing: Mapping[str, Obj],
    now: str,
) -> list[Obj]:
    """The slices the pool of ``node`` should consist of (generation left at 0).

    ``existing`` (the pool's slices as stored) only lends the ``timeAdded`` of taints
    that stay, so a taint keeps its time across rewrites and restarts.
    """
    found = devices(
        inventory=inventory,
        node=node,
        verdicts=verdicts,
        policy=policy,
        features=features,
        withdrawn=withdrawn,
        taint_times=taint_times(existing),
        now=now,
    )
    groups = split(found, features=policy.usable(features))
    return [
        slice_object(
            driver=driver, node=node, index=i, count=len(groups), generation=0, devices=group
        )
        for i, group in enumerate(groups)
    ]


_TAINT_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def taint_times(slices: Mapping[str, Obj]) -> dict[tuple[str, str, str], str]:
    """``timeAdded`` of every taint in published slices, to carry over."""
    times = {}
    for obj in slices.values():
        for device in (obj.get("spec") or {}).get("devices") or []:
            for taint in device.get("taints") or []:
                added = str(taint.get("timeAdded", ""))
                if _TAINT_TIME.fullmatch(added):
                    times[(device["name"], taint["key"], taint["effect"])] = added
    return times
