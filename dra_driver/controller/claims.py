"""Claims allocated with this driver's devices, as the controller keeps them in memory.

The controller watches every ResourceClaim but keeps, per claim, only what writing
its device status needs: identity, when it was allocated, which of our devices it
got (and whether the allocation carries our binding conditions), the pods it is
reserved for, and what our entries in ``status.devices`` say now. Claims without
our devices cost nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from dataclasses import dataclass
from typing import Any

from dra_driver.controller.features import FAILURE_CONDITION, READY_CONDITION
from dra_driver.kube.index import Index
from dra_driver.kube.watch import WatchEvent

Obj = dict[str, Any]


@dataclass(frozen=True)
class Allocated:
    """One of our devices in a claim's allocation."""

    pool: str
    device: str
    share_id: str
    waits: bool
    """The scheduler waits for our ready condition before binding the pod."""

    @property
    def key(self) -> tuple[str, str, str]:
        """How ``status.devices`` entries are keyed (with the driver)."""
        return (self.pool, self.device, self.share_id)


@dataclass(frozen=True)
class Condition:
    """A condition as written, without its time."""

    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class Entry:
    """Our ``status.devices`` entry of one device."""

    conditions: tuple[Condition, ...]
    data: str
    """``data`` as canonical JSON, so entries compare by value."""
    since: tuple[tuple[str, str], ...] = ()
    """``lastTransitionTime`` per condition type."""

    def condition(self, kind: str) -> Condition | None:
        """The condition of that type, if any."""
        return next((c for c in self.conditions if c.type == kind), None)

    @property
    def confirmed(self) -> bool:
        """The ready condition is true: the scheduler may bind."""
        ready = self.condition(READY_CONDITION)
        return ready is not None and ready.status == "True"

    @property
    def failed(self) -> bool:
        """The failure condition is true: the scheduler takes the allocation back."""
        failure = self.condition(FAILURE_CONDITION)
        return failure is not None and failure.status == "True"


@dataclass(frozen=True)
class Claim:
    """What the status writer needs of one claim."""

    namespace: str
    name: str
    uid: str
    allocated_at: float | None
    devices: tuple[Allocated, ...]
    entries: tuple[tuple[tuple[str, str, str], Entry], ...]
    reserved: tuple[str, ...] = ()
    """UIDs of the pods in ``status.reservedFor``."""

    def entry(self, key: tuple[str, str, str]) -> Entry | None:
        """Our current entry for a device, if written."""
        return dict(self.entries).get(key)


def canonical(data: Obj) -> str:
    """JSON that is equal exactly when the data is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _timestamp(value: Any) -> float | None:
    try:
        return (
            datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return None


def claim_of(obj: Obj, *, driver: str) -> Claim | None:
    """The record of a claim allocated with ``driver``'s devices; None for any other."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    allocation = status.get("allocation") or {}
    results = (allocation.get("devices") or {}).get("results") or []
    ours = tuple(
        Allocated(
            pool=str(r.get("pool", "")),
            device=str(r.get("device", "")),
            share_id=str(r.get("shareID") or ""),
            waits=READY_CONDITION in (r.get("bindingConditions") or []),
        )
        for r in results
        if r.get("driver") == driver
    )
    if not ours or meta.get("deletionTimestamp"):
        return None
    entries = []
    for device in status.get("devices") or []:
        if device.get("driver") != driver:
            continue
        conditions = device.get("conditions") or []
        entries.append(
            (
                (
                    str(device.get("pool")),
                    str(device.get("device")),
                    str(device.get("shareID") or ""),
                ),
                Entry(
                    conditions=tuple(
                        Condition(
                            type=str(c.get("type")),
                            status=str(c.get("status")),
                            reason=str(c.get("reason")),
                            message=str(c.get("message", "")),
                        )
                        for c in conditions
                    ),
                    data=canonical(device.get("data") or {}),
                    since=tuple(
                        (str(c.get("type")), str(c.get("lastTransitionTime", "")))
                        for c in conditions
                    ),
                ),
            )
        )
    return Claim(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        allocated_at=_timestamp(allocation.get("allocationTimestamp")),
        devices=ours,
        entries=tuple(entries),
        reserved=tuple(
            str(r.get("uid", ""))
            for r in status.get("reservedFor") or []
            if r.get("resource") == "pods"
        ),
    )


class ClaimIndex(Index[Claim]):
    """Our allocated claims by ``namespace/name``; ``changed`` is set on every change."""

    def __init__(self, *, driver: str) -> None:
        super().__init__(lambda obj: claim_of(obj, driver=driver))
        self.changed = asyncio.Event()

    async def on_relist(self, items: list[Obj]) -> None:
        """Replace everything, and wake the writer."""
        await super().on_relist(items)
        self.changed.set()

    async def on_event(self, event: WatchEvent) -> None:
        """Apply one change, and wake the writer if it mattered."""
        before = self.version
        await super().on_event(event)
        if self.version != before:
            self.changed.set()
