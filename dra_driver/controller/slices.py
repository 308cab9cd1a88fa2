"""Publishing pools: writes only what changed, and notices fields the server dropped.

A pool's slices are compared with the desired ones, generation aside; when equal
nothing is written. Otherwise every slice of the pool is written with the next
generation (consumers use only a pool's newest generation, so they must all carry
it): changed and new slices first, obsolete ones last. Each answer is compared with
what was sent: gated fields the server dropped mean its feature gate is off, which
the caller learns through :class:`DroppedFieldsError` and stops asking for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from prometheus_client import Counter

from dra_driver.controller.pools import (
    FAILURE_CONDITION,
    MANAGED_BY,
    READY_CONDITION,
    Features,
    NodeInfo,
    slice_object,
)
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.index import Index
from dra_driver.kube.watch import WatchEvent

log = logging.getLogger(__name__)

SLICES_PATH = "/apis/resource.k8s.io/v1/resourceslices"
WRITES = Counter(
    "gvirtus_dra_controller_slice_writes_total", "ResourceSlice writes, by verb.", ["verb"]
)
for _verb in ("create", "update", "delete"):
    WRITES.labels(_verb)

Obj = dict[str, Any]


class DroppedFieldsError(Exception):
    """The API server silently dropped fields; ``features`` is what it does keep."""

    def __init__(self, features: Features, dropped: list[str]) -> None:
        super().__init__(", ".join(dropped))
        self.features = features
        self.dropped = dropped


def dropped_features(sent: Obj, stored: Obj, features: Features) -> tuple[Features, list[str]]:
    """Compare a written slice with the server's answer: which gated fields vanished."""
    kept = features
    dropped = []
    stored_devices = {d.get("name"): d for d in (stored.get("spec") or {}).get("devices") or []}
    for device in (sent.get("spec") or {}).get("devices") or []:
        answer = stored_devices.get(device["name"], {})
        if device.get("taints") and not answer.get("taints") and kept.taints:
            kept = dataclasses.replace(kept, taints=False)
            dropped.append("device taints (DRADeviceTaints)")
        if device.get("bindingConditions") and not answer.get("bindingConditions") and kept.binding:
            kept = dataclasses.replace(kept, binding=False)
            dropped.append("binding conditions (DRADeviceBindingConditions)")
        policy = (device.get("capacity") or {}).get("memory", {}).get("requestPolicy")
        answered = (answer.get("capacity") or {}).get("memory", {}).get("requestPolicy")
        if (
            (device.get("allowMultipleAllocations") or policy)
            and kept.capacity
            and (not answer.get("allowMultipleAllocations") or not answered)
        ):
            kept = dataclasses.replace(kept, capacity=False)
            dropped.append("consumable capacity (DRAConsumableCapacity)")
    return kept, dropped


class SliceStore(Index[Obj]):
    """This controller's slices (by label), grouped by pool on demand.

    Writes update the store at once with the server's answers, so the next round
    compares with what was just written rather than with a watch event still on its
    way; a late event older than what the store holds is ignored.
    """

    def __init__(self, *, driver: str) -> None:
        self.driver = driver
        super().__init__(self._keep)

    async def on_event(self, event: WatchEvent) -> None:
        """Apply a change unless the store already holds a newer version of the object."""
        name = event.obj["metadata"]["name"]
        held = self.items.get(name)
        if held is not None and _older(event.obj, held):
            return
        await super().on_event(event)

    def wrote(self, obj: Obj) -> None:
        """Record a slice as the server stored it."""
        if self._keep(obj) is not None:
            self.items[obj["metadata"]["name"]] = obj
            self.version += 1

    def deleted(self, name: str) -> None:
        """Forget a deleted slice."""
        if self.items.pop(name, None) is not None:
            self.version += 1

    def _keep(self, obj: Obj) -> Obj | None:
        return obj if (obj.get("spec") or {}).get("driver") == self.driver else None

    @property
    def label_selector(self) -> str:
        """The selector the list-watch must use."""
        return f"{MANAGED_BY[0]}={MANAGED_BY[1]}"

    def pools(self) -> dict[str, dict[str, Obj]]:
        """Slices by pool name, then slice name."""
        grouped: dict[str, dict[str, Obj]] = {}
        for name, obj in self.items.items():
            grouped.setdefault(obj["spec"]["pool"]["name"], {})[name] = obj
        return grouped


def _older(obj: Obj, than: Obj) -> bool:
    mine, theirs = (
        obj["metadata"].get("resourceVersion", ""),
        than["metadata"].get("resourceVersion", ""),
    )
    return bool(mine.isdigit() and theirs.isdigit() and int(mine) < int(theirs))


def _comparable(spec: Obj) -> Obj:
    pool = dict(spec.get("pool") or {})
    pool.pop("generation", None)
    return {**spec, "pool": pool}


class Publisher:
    """Writes pools, a bounded number of requests at a time."""

    def __init__(self, *, kube: KubeClient, store: SliceStore, concurrency: int) -> None:
        self.kube = kube
        self.store = store
        self.driver = store.driver
        self.limit = asyncio.Semaphore(concurrency)

    def unchanged(self, existing: dict[str, Obj], desired: list[Obj]) -> bool:
        """Whether ``existing`` already is ``desired`` (generations aside)."""
        if sorted(existing) != sorted(d["metadata"]["name"] for d in desired):
            return False
        return all(
            _comparable(existing[d["metadata"]["name"]]["spec"]) == _comparable(d["spec"])
            for d in desired
        )

    def desired(self, *, node: NodeInfo, groups: list[list[Obj]], generation: int = 0) -> list[Obj]:
        """The slice objects of a pool split into ``groups``."""
        return [
            slice_object(
                driver=self.driver,
                node=node,
                index=i,
                count=len(groups),
                generation=generation,
                devices=group,
            )
            for i, group in enumerate(groups)
        ]

    async def publish(
        self,
        *,
        node: NodeInfo,
        groups: list[list[Obj]],
        existing: dict[str, Obj],
        features: Features,
    ) -> bool:
        """Make the pool of ``node`` hold ``groups``; return whether anything was written.

        Raises:
            DroppedFieldsError: the server did not keep gated fields (written anyway).
            KubeError: a write failed; the next round tries again.
        """
        desired = self.desired(node=node, groups=groups)
        if self.unchanged(existing, desired):
            return False
        generation = 1 + max(
            (int(o["spec"]["pool"].get("generation", 0)) for o in existing.values()), default=0
        )
        desired = self.desired(node=node, groups=groups, generation=generation)
        answers = await asyncio.gather(
            *(self._put(obj, existing.get(obj["metadata"]["name"])) for obj in desired)
        )
        for answer in answers:
            self.store.wrote(answer)
        wanted = {d["metadata"]["name"] for d in desired}
        await asyncio.gather(
            *(self._delete(obj) for name, obj in existing.items() if name not in wanted)
        )
        kept, dropped = features, []
        for sent, stored in zip(desired, answers, strict=True):
            kept, more = dropped_features(sent, stored, kept)
            dropped += more
        if dropped:
            raise DroppedFieldsError(kept, dropped)
        return True

    async def remove(self, existing: dict[str, Obj]) -> None:
        """Delete every slice of a pool."""
        await asyncio.gather(*(self._delete(obj) for obj in existing.values()))

    async def _put(self, obj: Obj, current: Obj | None) -> Obj:
        async with self.limit:
            if current is not None:
                body = {
                    **obj,
                    "metadata": {
                        **obj["metadata"],
                        "resourceVersion": current["metadata"]["resourceVersion"],
                    },
                }
                WRITES.labels("update").inc()
                return await self.kube.request(
                    "PUT", f"{SLICES_PATH}/{obj['metadata']['name']}", body=body
                )
            WRITES.labels("create").inc()
            try:
                return await self.kube.request("POST", SLICES_PATH, body=obj)
            except errors.AlreadyExistsError:
                # A slice of that name without our label (or not yet in our cache): adopt it.
                found = await self.kube.request("GET", f"{SLICES_PATH}/{obj['metadata']['name']}")
                WRITES.labels("update").inc()
                body = {
                    **obj,
                    "metadata": {
                        **obj["metadata"],
                        "resourceVersion": found["metadata"]["resourceVersion"],
                    },
                }
                return await self.kube.request(
                    "PUT", f"{SLICES_PATH}/{obj['metadata']['name']}", body=body
                )

    async def _delete(self, obj: Obj) -> None:
        async with self.limit:
            WRITES.labels("delete").inc()
            preconditions = {
                "uid": obj["metadata"]["uid"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            }
            with contextlib.suppress(errors.NotFoundError):
                await self.kube.request(
                    "DELETE",
                    f"{SLICES_PATH}/{obj['metadata']['name']}",
                    body={
                        "apiVersion": "v1",
                        "kind": "DeleteOptions",
                        "preconditions": preconditions,
                    },
                )
            self.store.deleted(obj["metadata"]["name"])


async def probe_features(kube: KubeClient, *, driver: str) -> Features:
    """Ask the API server, with a dry-run create, which gated fields it keeps."""
    device = {
        "name": "probe",
        "allowMultipleAllocations": True,
        "capacity": {
            "memory": {
                "value": "2Gi",
                "requestPolicy": {
                    "default": "1Gi",
                    "validRange": {"min": "1Gi", "max": "2Gi", "step": "1Gi"},
                },
            }
        },
        "taints": [{"key": "gvirtus.io/probe", "value": "probe", "effect": "NoSchedule"}],
        "bindingConditions": [READY_CONDITION],
        "bindingFailureConditions": [FAILURE_CONDITION],
    }
    probe = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"generateName": "gvirtus-dra-feature-probe-"},
        "spec": {
            "driver": driver,
            "pool": {"name": "gvirtus-dra-feature-probe", "generation": 0, "resourceSliceCount": 1},
            "allNodes": True,
            "devices": [device],
        },
    }
    stored = await kube.request("POST", SLICES_PATH, query={"dryRun": "All"}, body=probe)
    features, _ = dropped_features(probe, stored, Features())
    return features
