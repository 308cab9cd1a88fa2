"""This driver's ResourceSlices, kept current by a watch, indexed by pool and device.

The controller publishes each backend's GPUs as devices whose attributes carry the
endpoint (``backendAddress``, ``backendPort``) and identity. Prepare resolves an
allocated device here without an API round trip; health reads taints and pool
membership here. Only slices of a pool's newest generation count, as for the
scheduler. A miss (the cache not synced yet, or a pool published a moment ago) falls
back to one direct list, shared by concurrent callers. Devices that left their pool
are remembered as last published, so a refusal can still name their backend.

Only slices shaped like the controller's count: the controller publishes every pool
with ``spec.nodeSelector``. A slice of this driver with ``spec.nodeName`` or
``spec.allNodes`` is ignored (and logged): a node's own kubelet credentials may create
a slice of any driver as long as ``nodeName`` is that node, and one with a real
pool's name and a higher generation would otherwise redirect pods to another
``backendAddress``. The admission policy that lets only the controller write these
slices is the real guard; this is defence in depth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from dra_driver.device import GPUDevice, attribute_values, from_values
from dra_driver.kube import errors as kube_errors
from dra_driver.kube.resources import RESOURCE_SLICES
from dra_driver.kube.watch import WatchEvent

if TYPE_CHECKING:
    from dra_driver.kube.client import KubeClient

log = logging.getLogger(__name__)

MISSES = Counter(
    "gvirtus_dra_slice_cache_misses_total",
    "Device lookups the slice cache could not answer, by outcome of the direct read.",
    ["outcome"],
)
DEVICES = Gauge("gvirtus_dra_slice_cache_devices", "Devices of this driver in the slice cache.")
FOREIGN = Counter(
    "gvirtus_dra_slices_ignored_total",
    "Slices of this driver ignored because the controller never publishes their shape.",
)

READ_THROUGH_TTL = 1.0
"""Seconds a direct read of the slices answers further cache misses."""

Obj = dict[str, Any]


@dataclass(frozen=True)
class Taint:
    """A device taint as published (``effect`` is None, NoSchedule or NoExecute)."""

    key: str
    value: str
    effect: str


@dataclass(frozen=True)
class DeviceInfo:
    """One published device: its attribute values (unqualified names) and taints."""

    pool: str
    name: str
    attributes: Mapping[str, Any]
    taints: tuple[Taint, ...] = ()

    def gpu(self) -> GPUDevice:
        """What the device says of its GPU and backend, through the one device codec.

        Raises:
            DeviceError: an attribute prepare needs is missing or of the wrong type.
        """
        return from_values(self.name, self.attributes)


@dataclass
class _Slice:
    pool: str
    generation: int
    devices: dict[str, DeviceInfo] = field(default_factory=dict)


class Notifier:
    """Wakes every waiter once per :meth:`notify` (a broadcast, unlike an Event)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Wake everyone waiting now."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return on the next notification or after ``timeout`` seconds."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()


class SliceCache:
    """Consumes a list-watch of ``spec.driver=<driver>`` ResourceSlices.

    Direct reads need the API client, given here or later through :meth:`connect`.
    """

    def __init__(
        self, *, driver: str, kube: KubeClient | None = None, sync_timeout: float = 5.0
    ) -> None:
        self.driver = driver
        self.kube = kube
        self.sync_timeout = sync_timeout
        self.synced = asyncio.Event()
        self.changes = Notifier()
        self._slices: dict[str, _Slice] = {}
        self._pools: dict[str, dict[str, DeviceInfo]] = {}
        self._departed: dict[tuple[str, str], DeviceInfo] = {}
        self._direct_read: asyncio.Task[dict[str, dict[str, DeviceInfo]]] | None = None
        self._direct_read_at = 0.0

    def connect(self, kube: KubeClient) -> None:
        """Use ``kube`` for direct reads from now on."""
        self.kube = kube

    @property
    def field_selector(self) -> str:
        """The selector the list-watch must use."""
        return f"spec.driver={self.driver}"

    # -- list-watch consumer --------------------------------------------------------

    async def on_relist(self, items: list[Obj]) -> None:
        """Replace the cache with a fresh list."""
        self._slices = {
            s["metadata"]["name"]: self._parse(s) for s in items if self._ours(s, report=True)
        }
        before, self._pools = self._pools, _index(self._slices.values())
        self._note_departures(before, set(before) | set(self._pools))
        self._changed()
        self.synced.set()

    async def on_event(self, event: WatchEvent) -> None:
        """Apply one watched change and re-index the pools it touches."""
        item = event.obj
        name = item["metadata"]["name"]
        before = self._slices.get(name)
        if event.type == "DELETED" or not self._ours(item, report=True):
            self._slices.pop(name, None)
        else:
            self._slices[name] = self._parse(item)
        pools = {s.pool for s in (before, self._slices.get(name)) if s is not None}
        previous = {pool: self._pools.get(pool, {}) for pool in pools}
        for pool in pools:
            members = [s for s in self._slices.values() if s.pool == pool]
            self._pools.update(_index(members))
            if not members:
                self._pools.pop(pool, None)
        self._note_departures(previous, pools)
        self._changed()

    def _note_departures(
        self, before: Mapping[str, Mapping[str, DeviceInfo]], pools: set[str]
    ) -> None:
        """Remember devices of ``pools`` that are gone; forget those that are back."""
        for pool in pools:
            now = self._pools.get(pool, {})
            for name, info in before.get(pool, {}).items():
                if name not in now:
                    self._departed[(pool, name)] = info
            for name in now:
                self._departed.pop((pool, name), None)

    def _ours(self, item: Obj, *, report: bool = False) -> bool:
        """Whether ``item`` is a slice of this driver shaped as the controller writes them."""
        spec = item.get("spec") or {}
        if spec.get("driver") != self.driver:
            return False
        placement = foreign_placement(spec)
        if placement is None:
            return True
        if report:
            FOREIGN.inc()
            log.warning(
                "ignoring ResourceSlice %s of driver %s: %s; the controller publishes "
                "only nodeSelector pools, so this slice was made by someone else "
                "(a node's credentials can create such slices); delete it and check "
                "who may write ResourceSlices",
                (item.get("metadata") or {}).get("name"),
                self.driver,
                placement,
            )
        return False

    def _changed(self) -> None:
        DEVICES.set(sum(len(d) for d in self._pools.values()))
        self.changes.notify()

    def _parse(self, item: Obj) -> _Slice:
        spec = item["spec"]
        entry = _Slice(pool=spec["pool"]["name"], generation=int(spec["pool"].get("generation", 0)))
        for device in spec.get("devices") or []:
            attributes = attribute_values(device, driver=self.driver)
            taints = tuple(
                Taint(key=t["key"], value=t.get("value", ""), effect=t.get("effect", ""))
                for t in device.get("taints") or []
            )
            entry.devices[device["name"]] = DeviceInfo(
                entry.pool, device["name"], attributes, taints
            )
        return entry

    # -- queries --------------------------------------------------------------------

    def lookup(self, *, pool: str, device: str) -> DeviceInfo | None:
        """The device as last seen, or None (not published, or pool unknown)."""
        return self._pools.get(pool, {}).get(device)

    def last_seen(self, *, pool: str, device: str) -> DeviceInfo | None:
        """The device as published now, or as last published before it left, or None."""
        return self.lookup(pool=pool, device=device) or self._departed.get((pool, device))

    def has_pool(self, pool: str) -> bool:
        """Whether the pool currently has any slice."""
        return pool in self._pools

    async def resolve(self, *, pool: str, device: str) -> DeviceInfo | None:
        """Like :meth:`lookup`, but waits for the first sync and reads the API on a miss.

        Raises:
            KubeError: the direct read failed.
        """
        if not self.synced.is_set():
            try:
                async with asyncio.timeout(self.sync_timeout):
                    await self.synced.wait()
            except TimeoutError:
                log.warning(
                    "slice cache not synced after %.1fs; reading the API", self.sync_timeout
                )
        found = self.lookup(pool=pool, device=device)
        if found is not None:
            return found
        pools = await self._read_through()
        found = pools.get(pool, {}).get(device)
        MISSES.labels("found" if found else "absent").inc()
        return found

    async def _read_through(self) -> dict[str, dict[str, DeviceInfo]]:
        """One direct list shared by every caller in flight or within ``READ_THROUGH_TTL``.

        A burst of prepares (all pods of a rebooted node) must not list every slice
        of the driver once per claim.
        """
        previous = self._direct_read
        fresh = previous is not None and (
            not previous.done()
            or (
                not previous.cancelled()
                and previous.exception() is None
                and time.monotonic() - self._direct_read_at < READ_THROUGH_TTL
            )
        )
        if not fresh:
            self._direct_read_at = time.monotonic()
            self._direct_read = asyncio.create_task(self._list_pools())
        assert self._direct_read is not None
        return await asyncio.shield(self._direct_read)

    async def _list_pools(self) -> dict[str, dict[str, DeviceInfo]]:
        if self.kube is None:
            raise kube_errors.TransportError("the API client is not connected yet")
        listed = await self.kube.list(RESOURCE_SLICES, field_selector=self.field_selector)
        return _index(self._parse(s) for s in listed.get("items") or [] if self._ours(s))


def foreign_placement(spec: Obj) -> str | None:
    """Why a slice's placement is not the controller's, or None when it is.

    The controller writes ``nodeSelector`` pools only; ``nodeName`` (what a node's own
    credentials can create) and ``allNodes`` are someone else's.
    """
    if spec.get("nodeName"):
        return f"spec.nodeName is {str(spec['nodeName'])[:253]!r}"
    if spec.get("allNodes"):
        return "spec.allNodes is true"
    return None


def _index(slices: Any) -> dict[str, dict[str, DeviceInfo]]:
    """Devices per pool, from the slices of each pool's newest generation."""
    newest: dict[str, int] = {}
    members: list[_Slice] = list(slices)
    for entry in members:
        newest[entry.pool] = max(newest.get(entry.pool, entry.generation), entry.generation)
    pools: dict[str, dict[str, DeviceInfo]] = {}
    for entry in members:
        if entry.generation == newest[entry.pool]:
            pools.setdefault(entry.pool, {}).update(entry.devices)
    return pools
