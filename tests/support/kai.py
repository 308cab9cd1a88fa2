"""KAI-Scheduler as it treats DRA claims, rule by rule: v0.17.0, or a later one told its gates.

Written down from KAI-Scheduler's code at v0.17.0 (read, not run; dra-facts §9, whose
facts are copied here so the tests need nothing outside the repository). KAI has no
allocator of its own: its session calls the upstream structured allocator, and its
binder writes ``status.allocation`` and ``reservedFor`` and binds the pod. At v0.17.0
the allocator is called with every feature off (``structured.Features{}``); after
v0.17.0 (PR #2102) it gets the gates of KAI's ``--feature-gates`` (the SchedulingShard's
``spec.args``), which default to off for ``DRADeviceTaints``,
``DRADeviceBindingConditions`` and ``DRAConsumableCapacity``. ``gates`` below is that
set; empty is v0.17.0.

For one pod, in this order (the first rule a pod or node breaks is the refusal):

1. ``not-kai``, ``no-queue``: KAI schedules only pods with ``schedulerName:
   kai-scheduler``, and each needs the queue label ``kai.scheduler/queue``.
2. ``shared-claim-queue``: a claim the pod names directly (not made from a template)
   whose DeviceClass name contains "gpu" must carry ``kai.scheduler/queue`` with the
   pod's queue.
3. ``first-available``: a request with ``firstAvailable`` is an error.
4. ``gpu-accounting``: a request (``exactly``) whose DeviceClass name contains "gpu",
   in any case, is a GPU request (``count`` devices for ExactCount, 1 for All). KAI
   counts a node's DRA GPUs only from slices with ``spec.nodeName`` equal to the node
   and a driver name containing "gpu", and rejects a node with fewer before any DRA
   check. A network-attached pool (``nodeSelector``) counts for no node, so every
   frontend node has 0 (whether its GPUs are in use is not modelled: it never matters
   when a node has none).
5. ``extended-resource``: a pod asking for an extended resource its node does not list
   in ``status.allocatable`` is rejected by KAI's prefilter (the ``extendedResourceName``
   support of v0.17.0 is for node-local devices).
6. The allocator (``no-device``, ``selector-error``): pools at their newest generation
   whose slice selects the node (``nodeName``, ``allNodes`` or ``nodeSelector``), slices
   in name order, devices in slice order, first fit; the class's and the request's CEL
   selectors apply (a runtime error fails the claim). Without the gate in ``gates``:

   * ``bindingConditions``: a device that has them is **never selected**;
   * taints: **ignored**, a tainted device is allocated as if it were clean (with
     ``DRADeviceTaints``, a ``NoSchedule``/``NoExecute`` taint the request does not
     tolerate rules the device out);
   * ``allowMultipleAllocations`` and capacity: **ignored**, each device goes to one
     claim (with ``DRAConsumableCapacity``, claims share it while the memory they take,
     their request or the policy's default rounded up to its step, fits).

7. The binder binds at once: it never waits for binding conditions, so a result may
   carry conditions nobody met (:attr:`Result.binding_conditions`).

Claims with ``constraints`` are not modelled: :class:`NotModelledError` says so rather than
pretending to check them.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dra_driver.quantity import parse_bytes
from tests.support import cel, selectors

Obj = dict[str, Any]

SCHEDULER_NAME = "kai-scheduler"
QUEUE_LABEL = "kai.scheduler/queue"
TAINTS = "DRADeviceTaints"
BINDING = "DRADeviceBindingConditions"
CAPACITY = "DRAConsumableCapacity"
V0_17_0: frozenset[str] = frozenset()
"""The gates KAI v0.17.0 gives its allocator: none."""

STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "pods"}


class UnschedulableError(Exception):
    """KAI leaves the pod pending; ``rules`` names every rule that stopped it."""

    def __init__(self, rules: set[str], message: str) -> None:
        super().__init__(message)
        self.rules = rules


class NotModelledError(Exception):
    """The pod uses something this model does not know how KAI treats."""


@dataclass(frozen=True)
class Result:
    """One allocated device."""

    claim: str
    request: str
    driver: str
    pool: str
    device: str
    binding_conditions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where KAI bound the pod and what it allocated (bound at once, never waiting)."""

    node: str
    results: tuple[Result, ...]

    @property
    def devices(self) -> set[tuple[str, str]]:
        """(pool, device) of every result."""
        return {(r.pool, r.device) for r in self.results}


@dataclass
class KAI:
    """The cluster as KAI sees it, and the allocations it made; see the module docstring."""

    slices: Sequence[Obj]
    classes: Mapping[str, Obj]
    nodes: Sequence[Obj]
    gates: frozenset[str] = V0_17_0
    allocated: dict[str, tuple[Result, ...]] = field(default_factory=dict)
    """Results by claim (``namespace/name``)."""
    _taken: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """Bytes of memory taken per device (driver, pool, device); present = in use."""

    def schedule(self, pod: Obj, claims: Mapping[str, Obj]) -> Placement:
        """Place ``pod``; ``claims`` maps each of its pod claim names to the ResourceClaim.

        Raises:
            UnschedulableError: the pod stays pending, with the rules that stopped it.
        """
        self._pod_rules(pod, claims)
        failures: dict[str, tuple[str, str]] = {}
        for node in sorted(self.nodes, key=lambda n: n["metadata"]["name"]):
            name = node["metadata"]["name"]
            taken = dict(self._taken)
            try:
                results = self._fit(pod, claims, node, taken)
            except UnschedulableError as exc:
                failures[name] = (next(iter(exc.rules)), str(exc))
                continue
            self._commit(results, taken)
            return Placement(node=name, results=results)
        raise UnschedulableError(
            {rule for rule, _ in failures.values()},
            "; ".join(f"{node}: {why}" for node, (_, why) in failures.items()) or "no nodes",
        )

    def attempt(self, pod: Obj, claims: Mapping[str, Obj]) -> Placement | UnschedulableError:
        """:meth:`schedule`, with a refusal returned rather than raised."""
        try:
            return self.schedule(pod, claims)
        except UnschedulableError as exc:
            return exc

    def fill(
        self, *, device_class: str, limit: int = 256, request: Obj | None = None
    ) -> tuple[list[Placement], UnschedulableError]:
        """One-claim pods of ``device_class`` until one is refused: what fits, and why no more."""
        placed: list[Placement] = []
        for i in range(limit):
            pod, claims = pod_with_claim(f"fill-{i}", device_class=device_class, request=request)
            outcome = self.attempt(pod, claims)
            if isinstance(outcome, UnschedulableError):
                return placed, outcome
            placed.append(outcome)
        raise AssertionError(f"{limit} pods placed and still room")

    # -- rules 1-3: the pod itself --------------------------------------------------------

    def _pod_rules(self, pod: Obj, claims: Mapping[str, Obj]) -> None:
        spec = pod.get("spec") or {}
        if spec.get("schedulerName") != SCHEDULER_NAME:
            raise UnschedulableError({"not-kai"}, f"schedulerName is not {SCHEDULER_NAME}")
        queue = _labels(pod).get(QUEUE_LABEL)
        if not queue:
            raise UnschedulableError({"no-queue"}, f"the pod has no {QUEUE_LABEL} label")
        for entry in spec.get("resourceClaims") or []:
            claim = claims[entry["name"]]
            shared_gpu_claim = entry.get("resourceClaimName") and any(
                _is_gpu_class(r["exactly"]["deviceClassName"])
                for r in _requests(claim)
                if "exactly" in r
            )
            if shared_gpu_claim and _labels(claim).get(QUEUE_LABEL) != queue:
                raise UnschedulableError(
                    {"shared-claim-queue"},
                    f"claim {entry['resourceClaimName']} has a GPU class but not "
                    f"{QUEUE_LABEL}={queue}",
                )
            if any("firstAvailable" in r for r in _requests(claim)):
                raise UnschedulableError(
                    {"first-available"}, "firstAvailable requests are an error"
                )
            if (claim["spec"].get("devices") or {}).get("constraints"):
                raise NotModelledError("claims with constraints")

    # -- rules 4-6: one node ------------------------------------------------------------

    def _fit(
        self,
        pod: Obj,
        claims: Mapping[str, Obj],
        node: Obj,
        taken: dict[tuple[str, str, str], int],
    ) -> tuple[Result, ...]:
        """The node's results, adding what they take to ``taken``; or UnschedulableError."""
        name = node["metadata"]["name"]
        wanted = sum(
            _gpu_count(r)
            for c in claims.values()
            if _key(c) not in self.allocated
            for r in _requests(c)
        )
        have = self._node_gpus(name)
        if wanted > have:
            raise UnschedulableError(
                {"gpu-accounting"}, f"{wanted} GPU(s) requested, the node has {have} DRA GPUs"
            )
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        for resource in _extended_resources(pod):
            if resource not in allocatable:
                raise UnschedulableError(
                    {"extended-resource"}, f"{resource} is not in the node's allocatable"
                )
        results: list[Result] = []
        for claim in claims.values():
            if _key(claim) in self.allocated:
                continue
            for request in _requests(claim):
                results += self._allocate(claim, request, node, taken)
        return tuple(results)

    def _node_gpus(self, node: str) -> int:
        return sum(
            len(s["spec"].get("devices") or [])
            for s in self.slices
            if s["spec"].get("nodeName") == node and "gpu" in s["spec"]["driver"].lower()
        )

    def _allocate(
        self, claim: Obj, request: Obj, node: Obj, taken: dict[tuple[str, str, str], int]
    ) -> list[Result]:
        exactly = request["exactly"]
        device_class = self.classes.get(exactly["deviceClassName"])
        if device_class is None:
            raise UnschedulableError(
                {"no-device"}, f"DeviceClass {exactly['deviceClassName']} not found"
            )
        expressions = [
            s["cel"]["expression"]
            for s in [*(device_class["spec"].get("selectors") or []), *exactly.get("selectors", [])]
        ]
        mode = exactly.get("allocationMode", "ExactCount")
        count = int(exactly.get("count", 1)) if mode == "ExactCount" else math.inf
        chosen: list[Result] = []
        for driver, pool, device in self._candidates(node):
            if len(chosen) >= count:
                break
            key = (driver, pool, device["name"])
            need = self._usable(device, exactly, key, taken)
            if need is None:
                continue
            try:
                if not all(cel.matches(e, device=device, driver=driver) for e in expressions):
                    continue
            except cel.SelectorError as exc:
                raise UnschedulableError({"selector-error"}, str(exc)) from exc
            taken[key] = taken.get(key, 0) + need
            chosen.append(
                Result(
                    claim=_key(claim),
                    request=request["name"],
                    driver=driver,
                    pool=pool,
                    device=device["name"],
                    binding_conditions=tuple(device.get("bindingConditions") or ()),
                )
            )
        if not chosen or (mode == "ExactCount" and len(chosen) < count):
            raise UnschedulableError({"no-device"}, f"cannot allocate request {request['name']}")
        return chosen

    def _usable(
        self, device: Obj, exactly: Obj, key: tuple[str, str, str], taken: Mapping[Any, int]
    ) -> int | None:
        """Memory the request would take from ``device``; None when it cannot have it."""
        if device.get("bindingConditions") and BINDING not in self.gates:
            return None
        if TAINTS in self.gates and not _tolerated(device, exactly):
            return None
        shared = CAPACITY in self.gates and bool(device.get("allowMultipleAllocations"))
        if not shared:
            return None if key in taken else 0
        memory = (device.get("capacity") or {}).get("memory") or {}
        need = _consumed(memory, exactly)
        return need if taken.get(key, 0) + need <= parse_bytes(memory["value"]) else None

    def _candidates(self, node: Obj) -> Iterator[tuple[str, str, Obj]]:
        newest: dict[tuple[str, str], int] = {}
        for s in self.slices:
            pool = (s["spec"]["driver"], s["spec"]["pool"]["name"])
            newest[pool] = max(newest.get(pool, 0), int(s["spec"]["pool"]["generation"]))
        ordered = sorted(
            self.slices, key=lambda s: (s["spec"]["pool"]["name"], s["metadata"]["name"])
        )
        for s in ordered:
            spec = s["spec"]
            pool = (spec["driver"], spec["pool"]["name"])
            if int(spec["pool"]["generation"]) != newest[pool] or not _selects(s, node):
                continue
            for device in spec.get("devices") or []:
                yield spec["driver"], spec["pool"]["name"], device

    def _commit(self, results: tuple[Result, ...], taken: dict[tuple[str, str, str], int]) -> None:
        by_claim: dict[str, list[Result]] = {}
        for result in results:
            by_claim.setdefault(result.claim, []).append(result)
        for claim, found in by_claim.items():
            self.allocated[claim] = tuple(found)
        self._taken = taken


def _key(claim: Obj) -> str:
    meta = claim["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _labels(obj: Obj) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _requests(claim: Obj) -> list[Obj]:
    return list((claim["spec"].get("devices") or {}).get("requests") or [])


def _is_gpu_class(name: str) -> bool:
    return "gpu" in name.lower()


def _gpu_count(request: Obj) -> int:
    exactly = request.get("exactly")
    if not exactly or not _is_gpu_class(exactly["deviceClassName"]):
        return 0
    if exactly.get("allocationMode", "ExactCount") == "All":
        return 1
    return int(exactly.get("count") or 1)


def _extended_resources(pod: Obj) -> set[str]:
    found = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for name in resources.get(section) or {}:
                if name not in STANDARD_RESOURCES and not name.startswith("hugepages-"):
                    found.add(name)
    return found


def _selects(slice_: Obj, node: Obj) -> bool:
    spec = slice_["spec"]
    name = node["metadata"]["name"]
    if spec.get("nodeName"):
        return bool(spec["nodeName"] == name)
    if spec.get("allNodes"):
        return True
    for term in (spec.get("nodeSelector") or {}).get("nodeSelectorTerms") or []:
        labels = selectors.from_label_selector(
            {"matchExpressions": term.get("matchExpressions") or []}
        )
        fields = all(
            f["key"] == "metadata.name" and f["operator"] == "In" and name in f["values"]
            for f in term.get("matchFields") or []
        )
        if fields and selectors.labels_match(labels, node):
            return True
    return False


def _tolerated(device: Obj, exactly: Obj) -> bool:
    tolerations = exactly.get("tolerations") or []
    for taint in device.get("taints") or []:
        if taint.get("effect") not in ("NoSchedule", "NoExecute"):
            continue
        if not any(_tolerates(t, taint) for t in tolerations):
            return False
    return True


def _tolerates(toleration: Obj, taint: Obj) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    if toleration.get("operator", "Equal") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint["key"]
    return bool(
        toleration.get("key") == taint["key"] and toleration.get("value", "") == taint.get("value")
    )


def _consumed(memory: Obj, exactly: Obj) -> int:
    policy = memory.get("requestPolicy") or {}
    asked = ((exactly.get("capacity") or {}).get("requests") or {}).get("memory")
    need = parse_bytes(asked or policy.get("default") or memory["value"])
    valid = policy.get("validRange") or {}
    if valid:
        low, step = parse_bytes(valid["min"]), parse_bytes(valid.get("step", "1"))
        need = low + max(0, math.ceil((need - low) / step)) * step
    return need


# -- building pods and claims as users write them -------------------------------------------


def pod_with_claim(
    name: str,
    *,
    device_class: str,
    namespace: str = "team-a",
    queue: str | None = "team-a",
    scheduler: str = SCHEDULER_NAME,
    shared: bool = False,
    claim_labels: Mapping[str, str] | None = None,
    request: Obj | None = None,
) -> tuple[Obj, dict[str, Obj]]:
    """A pod with one claim of ``device_class``: from a template, or ``shared`` (named).

    ``request`` adds fields to the request's ``exactly`` (selectors, capacity, ...).
    """
    claim_name = f"{name}-gpu" if not shared else f"{name}-shared"
    pod_claim: Obj = {"name": "gpu"}
    if shared:
        pod_claim["resourceClaimName"] = claim_name
    else:
        pod_claim["resourceClaimTemplateName"] = f"{name}-template"
    labels = {QUEUE_LABEL: queue} if queue else {}
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "uid": str(uuid.uuid4()),
        },
        "spec": {
            "schedulerName": scheduler,
            "resourceClaims": [pod_claim],
            "containers": [
                {"name": "app", "image": "app", "resources": {"claims": [{"name": "gpu"}]}}
            ],
        },
    }
    claim: Obj = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": claim_name,
            "namespace": namespace,
            "labels": dict(claim_labels or {}),
        },
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {
                            "deviceClassName": device_class,
                            "allocationMode": "ExactCount",
                            "count": 1,
                            **copy.deepcopy(request or {}),
                        },
                    }
                ]
            }
        },
    }
    return pod, {"gpu": claim}


def pod_asking_for(
    name: str, *, resource: str, queue: str = "team-a"
) -> tuple[Obj, dict[str, Obj]]:
    """A pod with no claim that asks for one ``resource`` in its limits (an extended resource)."""
    pod, _ = pod_with_claim(name, device_class="unused", queue=queue)
    pod["spec"].pop("resourceClaims")
    pod["spec"]["containers"][0]["resources"] = {"limits": {resource: "1"}}
    return pod, {}
