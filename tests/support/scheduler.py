"""kube-scheduler 1.36's path for one pod with one claim, as the real one behaved.

What it models (dra-facts §0 and the section 04 captures): the structured allocator
walks pools in name order and devices in slice order, takes the first free device
whose taints the claim tolerates and whose slice selects the pod's node, and takes
only each pool's newest generation. PreBind writes the allocation (results copy the
device's binding conditions) together with ``reservedFor``, checks the conditions
at once and then every ``period`` seconds (5 s in a real scheduler). A true failure
condition, or the binding timeout, makes it take the allocation back the way the
capture shows (``reservedFor`` first, then the whole status) and start over after a
back-off, allocating anew from what the slices say then: an untainted failed device
is picked again. When every condition is true it binds the pod (``spec.nodeName``).

It runs on the test's event loop and reads and writes the test API server's store
directly; every write is a single atomic change, as an API server update is.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.support.apiserver import APIServer, fixture_object

Obj = dict[str, Any]
DRIVER = "gpu.gvirtus.io"


@dataclass(frozen=True)
class Attempt:
    """One allocation the scheduler made, and how it ended."""

    claim: str
    pool: str
    device: str
    outcome: str = ""
    """``bound``, ``failed`` (a failure condition), ``timeout``, or empty while waiting."""


@dataclass
class Scheduler:
    """Schedules pods that use one standalone claim each; see the module docstring."""

    apiserver: APIServer
    node: str = "worker-1"
    period: float = 5.0
    binding_timeout: float = 600.0
    backoff: float = 0.2
    attempts: list[Attempt] = field(default_factory=list)

    def pod(self, *, name: str, claim: str, namespace: str = "gvirtus-demo") -> Obj:
        """Store a pending pod that uses ``claim`` (shaped like the captured one)."""
        pod = copy.deepcopy(fixture_object("04-binding-pod-waiting-get.json"))
        meta = pod["metadata"]
        for server_owned in ("resourceVersion", "managedFields", "uid", "creationTimestamp"):
            meta.pop(server_owned, None)
        meta.update(name=name, namespace=namespace)
        pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": claim}]
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": self.node}
        pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        return self.apiserver.put(pod)

    async def schedule(self, *, pod: str, claim: str, namespace: str = "gvirtus-demo") -> None:
        """Allocate (or reuse a shared claim's allocation), wait in PreBind, bind.

        Retries until the pod is bound, as the real scheduler keeps a pending pod
        in its queue.
        """
        while True:
            chosen = self._reuse(pod=pod, claim=claim, namespace=namespace)
            if chosen is None:
                chosen = self._allocate(pod=pod, claim=claim, namespace=namespace)
            if chosen is None:
                await asyncio.sleep(self.backoff)
                continue
            outcome = await self._prebind(claim=claim, namespace=namespace)
            self.attempts.append(Attempt(claim, chosen[0], chosen[1], outcome))
            if outcome == "bound":
                self._bind(pod=pod, namespace=namespace)
                return
            self._give_back(pod=pod, claim=claim, namespace=namespace)
            await asyncio.sleep(self.backoff)

    def _reuse(self, *, pod: str, claim: str, namespace: str) -> tuple[str, str] | None:
        """Reserve an already allocated (shared) claim for one more pod."""
        stored = self.apiserver.get("resourceclaims", claim, namespace) or {}
        results = (((stored.get("status") or {}).get("allocation") or {}).get("devices") or {}).get(
            "results"
        ) or []
        if not results:
            return None
        meta = (self.apiserver.get("pods", pod, namespace) or {})["metadata"]

        def reserve(obj: Obj) -> None:
            reserved = obj["status"].setdefault("reservedFor", [])
            if all(r["uid"] != meta["uid"] for r in reserved):
                reserved.append({"resource": "pods", "name": meta["name"], "uid": meta["uid"]})

        self.apiserver.mutate("resourceclaims", claim, namespace, reserve)
        return results[0]["pool"], results[0]["device"]

    # -- allocation -------------------------------------------------------------------

    def _allocate(self, *, pod: str, claim: str, namespace: str) -> tuple[str, str] | None:
        stored = self.apiserver.get("pods", pod, namespace)
        assert stored is not None, f"pod {namespace}/{pod} does not exist"
        taken = self._taken(except_claim=claim)
        for pool, device in self._candidates():
            if (pool, device["name"]) in taken and not device.get("allowMultipleAllocations"):
                continue
            if not _tolerated(device):
                continue
            self._write_allocation(
                claim=claim, namespace=namespace, pod=stored, pool=pool, device=device
            )
            return pool, device["name"]
        return None

    def _candidates(self) -> Iterator[tuple[str, Obj]]:
        slices = [
            s
            for s in self.apiserver.list("resourceslices")
            if s["spec"].get("driver") == DRIVER and self._selects_node(s)
        ]
        newest: dict[str, int] = {}
        for s in slices:
            pool = s["spec"]["pool"]
            newest[pool["name"]] = max(newest.get(pool["name"], 0), int(pool["generation"]))
        for s in sorted(slices, key=lambda s: (s["spec"]["pool"]["name"], s["metadata"]["name"])):
            pool = s["spec"]["pool"]
            if int(pool["generation"]) == newest[pool["name"]]:
                for device in s["spec"].get("devices") or []:
                    yield pool["name"], device

    def _selects_node(self, slice_: Obj) -> bool:
        node = self.apiserver.get("nodes", self.node)
        labels = ((node or {}).get("metadata") or {}).get("labels") or {}
        terms = ((slice_["spec"].get("nodeSelector") or {}).get("nodeSelectorTerms")) or []
        return any(
            all(
                e["operator"] == "In" and labels.get(e["key"]) in e["values"]
                for e in term.get("matchExpressions") or []
            )
            for term in terms
        )

    def _taken(self, *, except_claim: str) -> set[tuple[str, str]]:
        return {
            (r["pool"], r["device"])
            for c in self.apiserver.list("resourceclaims")
            if c["metadata"]["name"] != except_claim
            for r in (((c.get("status") or {}).get("allocation") or {}).get("devices") or {}).get(
                "results"
            )
            or []
        }

    def _write_allocation(
        self, *, claim: str, namespace: str, pod: Obj, pool: str, device: Obj
    ) -> None:
        result: Obj = {"request": "gpu", "driver": DRIVER, "pool": pool, "device": device["name"]}
        if device.get("bindingConditions"):
            result["bindingConditions"] = list(device["bindingConditions"])
            result["bindingFailureConditions"] = list(device["bindingFailureConditions"])
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta = pod["metadata"]

        here = {"key": "metadata.name", "operator": "In", "values": [self.node]}

        def allocate(obj: Obj) -> None:
            obj["status"] = {
                "allocation": {
                    "devices": {"results": [result]},
                    "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [here]}]},
                    "allocationTimestamp": stamp,
                },
                "reservedFor": [{"resource": "pods", "name": meta["name"], "uid": meta["uid"]}],
            }

        self.apiserver.mutate("resourceclaims", claim, namespace, allocate)

    # -- PreBind and its outcomes -------------------------------------------------------

    async def _prebind(self, *, claim: str, namespace: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.binding_timeout
        while True:
            verdict = self._conditions(claim=claim, namespace=namespace)
            if verdict:
                return verdict
            if loop.time() >= deadline:
                return "timeout"
            await asyncio.sleep(min(self.period, max(0.0, deadline - loop.time())))

    def _conditions(self, *, claim: str, namespace: str) -> str:
        """``bound`` when every binding condition holds, ``failed`` on a failure, else ''."""
        stored = self.apiserver.get("resourceclaims", claim, namespace) or {}
        status = stored.get("status") or {}
        entries = {
            (d["pool"], d["device"]): {c["type"]: c["status"] for c in d.get("conditions") or []}
            for d in status.get("devices") or []
            if d.get("driver") == DRIVER
        }
        results = ((status.get("allocation") or {}).get("devices") or {}).get("results") or []
        ready = True
        for result in results:
            held = entries.get((result["pool"], result["device"]), {})
            if any(held.get(c) == "True" for c in result.get("bindingFailureConditions") or []):
                return "failed"
            ready = ready and all(
                held.get(c) == "True" for c in result.get("bindingConditions") or []
            )
        return "bound" if ready else ""

    def _give_back(self, *, pod: str, claim: str, namespace: str) -> None:
        """Unreserve the pod; take the allocation back when no other pod holds it."""
        uid = (self.apiserver.get("pods", pod, namespace) or {})["metadata"]["uid"]

        def unreserve(obj: Obj) -> None:
            status = obj.setdefault("status", {})
            others = [r for r in status.get("reservedFor") or [] if r["uid"] != uid]
            if others:
                status["reservedFor"] = others
            else:
                status.pop("reservedFor", None)

        stored = self.apiserver.mutate("resourceclaims", claim, namespace, unreserve)
        if not (stored.get("status") or {}).get("reservedFor"):
            self.apiserver.mutate("resourceclaims", claim, namespace, _clear_status)

    def _bind(self, *, pod: str, namespace: str) -> None:
        def bind(obj: Obj) -> None:
            obj["spec"]["nodeName"] = self.node
            obj["status"].pop("nominatedNodeName", None)

        self.apiserver.mutate("pods", pod, namespace, bind)


def _clear_status(obj: Obj) -> None:
    obj["status"] = {}


def _tolerated(device: Obj) -> bool:
    """Claims here carry no tolerations: any scheduling taint rules the device out."""
    taints = device.get("taints") or []
    return not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints)
