"""Publishing pools: writes only what changed, and notices fields the server dropped.

A pool's slices are compared with the desired ones, generation aside; when equal
nothing is written. Otherwise every slice of the pool is written with the next
generation (consumers use only a pool's newest generation, so they must all carry
it): changed and new slices first, obsolete ones last. Each answer is compared with
what was sent: gated fields the server dropped mean its feature gate is off, which
the result reports, so the caller stops asking for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from dra_driver.controller.features import Features, dropped_features
from dra_driver.controller.pools import MANAGED_BY
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.index import Index
from dra_driver.kube.resources import RESOURCE_SLICES
from dra_driver.kube.watch import WatchEvent

log = logging.getLogger(__name__)

WRITES = Counter(
    "gvirtus_dra_controller_slice_writes_total", "ResourceSlice writes, by verb.", ["verb"]
)
for _verb in ("create", "update", "delete"):
    WRITES.labels(_verb)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Published:
    """What publishing a pool did."""

    wrote: bool
    kept: Features | None = None
    """The features the server kept, when it dropped some (else None)."""
    dropped: list[str] = field(default_factory=list)


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


def _with_generation(obj: Obj, generation: int) -> Obj:
    spec = obj["spec"]
    return {**obj, "spec": {**spec, "pool": {**spec["pool"], "generation": generation}}}


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

    async def publish(
        self, *, desired: list[Obj], existing: dict[str, Obj], features: Features
    ) -> Published:
        """Make a pool hold ``desired`` (its slices, generation 0); write only a difference.

        Raises:
            KubeError: a write failed; the next round tries again.
        """
        if self.unchanged(existing, desired):
            return Published(wrote=False)
        generation = 1 + max(
            (int(o["spec"]["pool"].get("generation", 0)) for o in existing.values()), default=0
        )
        desired = [_with_generation(obj, generation) for obj in desired]
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
        return Published(wrote=True, kept=kept if dropped else None, dropped=dropped)

    async def remove(self, existing: dict[str, Obj]) -> None:
        """Delete every slice of a pool."""
        await asyncio.gather(*(self._delete(obj) for obj in existing.values()))

    async def _put(self, obj: Obj, current: Obj | None) -> Obj:
        async with self.limit:
            if current is not None:
                WRITES.labels("update").inc()
                return await self.kube.replace(
                    RESOURCE_SLICES, _at_version(obj, current["metadata"]["resourceVersion"])
                )
            WRITES.labels("create").inc()
            try:
                return await self.kube.create(RESOURCE_SLICES, obj)
            except errors.AlreadyExistsError:
                # A slice of that name without our label (or not yet in our cache): adopt it.
                found = await self.kube.get(RESOURCE_SLICES, obj["metadata"]["name"])
                WRITES.labels("update").inc()
                return await self.kube.replace(
                    RESOURCE_SLICES, _at_version(obj, found["metadata"]["resourceVersion"])
                )

    async def _delete(self, obj: Obj) -> None:
        async with self.limit:
            WRITES.labels("delete").inc()
            preconditions = {
                "uid": obj["metadata"]["uid"],
                "resourceVersion": obj["metadata"]["resourceVersion"],
            }
            with contextlib.suppress(errors.NotFoundError):
                await self.kube.delete(
                    RESOURCE_SLICES, obj["metadata"]["name"], preconditions=preconditions
                )
            self.store.deleted(obj["metadata"]["name"])


def _at_version(obj: Obj, resource_version: str) -> Obj:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": resource_version}}
