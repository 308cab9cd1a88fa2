"""Only the pods that hold a claim on a GPU reach its backend.

The controller publishes, per backend node, which IPv4 addresses may connect to
each backend port (the ConfigMap ``gvirtus-dra-access-<node>``, see
:mod:`dra_driver.controller.access`). :class:`AccessControl` watches this node's
ConfigMap (a field selector on its name; the agent may read nothing else of use)
and keeps the packet filter table of :mod:`backend.nftables` equal to it.

Fail-closed, always:

* Before the backends start, the table is installed with every backend port closed
  and nobody admitted; nothing is admitted until the list is read. An agent
  restart replaces whatever table a predecessor left with that closed one, so
  there is never a moment without the table.
* A list that cannot be read (invalid, for another node, of a newer format) leaves
  the rules in force as they are and is reported; a ConfigMap that does not exist
  admits nobody.
* A clean stop ends the backends, then leaves the table with nobody admitted: the
  backends it served are gone, and whatever listens on their ports before the next
  agent starts is closed to strangers. (Removing it would open them.) Uninstalling
  the driver therefore leaves the table behind; see ``docs/backend-agent.md``.
* While the API server cannot be reached, the last list read stays in force; the
  kernel keeps it whatever happens to the agent.

Changes are applied by one task, latest first: a burst of updates costs one
transaction per turn, never a queue of stale ones. A failed transaction is retried
with a doubling wait (0.5 s to 30 s) and reported in the inventory, whose error the
controller turns into an Event on the Node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from backend import nftables
from dra_driver.backoff import Backoff
from dra_driver.kube.watch import WatchEvent
from dra_driver.models import (
    ACCESS_DATA_KEY,
    AccessDocumentError,
    AccessMode,
    AccessReport,
    parse_access,
)

log = logging.getLogger(__name__)

ENABLED = Gauge(
    "gvirtus_dra_agent_access_control_enabled",
    "1 while the agent admits only the pods holding claims to its backends; 0 when off.",
)
SYNCED = Gauge(
    "gvirtus_dra_agent_access_synced",
    "1 once this node's access list has been read and is in the kernel.",
)
ADMITTED = Gauge(
    "gvirtus_dra_agent_access_admitted_addresses",
    "Addresses admitted to each backend port.",
    ["port"],
)
UPDATES = Counter(
    "gvirtus_dra_agent_access_rule_updates_total",
    "Packet filter transactions applied (each replaces the agent's table whole).",
)
FAILURES = Counter(
    "gvirtus_dra_agent_access_update_failures_total",
    "Access lists that could not be read, or rules that could not be applied, by stage.",
    ["stage"],
)
for _stage in ("read", "apply"):
    FAILURES.labels(_stage)
UPDATE_SECONDS = Histogram(
    "gvirtus_dra_agent_access_update_duration_seconds",
    "Time of one packet filter transaction (nft -f -).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)

Obj = dict[str, Any]
Admitted = Mapping[int, frozenset[str]]


class AccessControl:
    """Keeps this node's backend ports closed to all but its access list."""

    def __init__(
        self,
        *,
        node: str,
        ports: Sequence[int],
        nft: str,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
    ) -> None:
        self.node = node
        self.ports = tuple(sorted(set(ports)))
        self.nft = nft
        self._retry = Backoff(initial=retry_initial, maximum=retry_max)
        self._desired: Admitted = {}
        self._installed: Admitted | None = None
        self._read = False
        self._version = ""
        self._read_error = ""
        self._apply_error = ""
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        ENABLED.set(1)
        SYNCED.set(0)

    # -- the table --------------------------------------------------------------------

    async def close_ports(self) -> None:
        """Install the table with every port closed and nobody admitted.

        Raises:
            PacketFilterError: the packet filter cannot be changed here, explained.
        """
        await self._install({})
        log.info(
            "backend ports closed to everyone until this node's access list is read",
            extra={"ports": list(self.ports), "table": f"{nftables.FAMILY} {nftables.TABLE}"},
        )

    async def stop(self) -> None:
        """On a clean stop, after the backends ended: keep the table, admit nobody."""
        try:
            await self._install({})
        except nftables.PacketFilterError as exc:
            log.error("could not close the backend ports on the way out: %s", exc)
            return
        log.info("stopped: backend ports stay closed to everyone until the next agent reads")

    async def _install(self, admitted: Admitted) -> None:
        async with self._lock:
            started = time.perf_counter()
            await nftables.apply(nftables.render(ports=self.ports, admitted=admitted), nft=self.nft)
            UPDATE_SECONDS.observe(time.perf_counter() - started)
            UPDATES.inc()
            self._installed = admitted
            for port in self.ports:
                ADMITTED.labels(str(port)).set(len(admitted.get(port, ())))

    # -- the list (a list-watch consumer) -------------------------------------------

    async def on_relist(self, items: list[Obj]) -> None:
        """The node's ConfigMap, or none: replace the list."""
        self._take(items[0] if items else None)

    async def on_event(self, event: WatchEvent) -> None:
        """The node's ConfigMap changed or was deleted."""
        self._take(None if event.type == "DELETED" else event.obj)

    def _take(self, obj: Obj | None) -> None:
        """Make ``obj``'s list the desired one; keep the current one if it is unusable."""
        if obj is None:
            admitted: Admitted = {}
            version = ""
        else:
            version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            try:
                admitted = self._parse(obj)
            except AccessDocumentError as exc:
                self._read_error = f"the access list is unusable: {exc}"
                FAILURES.labels("read").inc()
                log.error("%s; the rules in force stay as they are", self._read_error)
                return
        self._read, self._read_error, self._version = True, "", version
        self._desired = admitted
        self._changed.set()

    def _parse(self, obj: Obj) -> Admitted:
        raw = (obj.get("data") or {}).get(ACCESS_DATA_KEY)
        if not isinstance(raw, str):
            raise AccessDocumentError(f"data has no {ACCESS_DATA_KEY}")
        document = parse_access(raw)
        if document.node_name != self.node:
            raise AccessDocumentError(
                f"it is the list of node {document.node_name!r}, not of {self.node!r}"
            )
        listed = document.admitted()
        if unknown := sorted(set(listed) - set(self.ports)):
            log.warning("the access list names ports no backend here uses: %s (ignored)", unknown)
        # Ports without addresses are left out, so equal lists compare equal.
        return {port: listed[port] for port in self.ports if listed.get(port)}

    # -- applying ---------------------------------------------------------------------

    async def run(self) -> None:
        """Apply the latest list whenever it changes; retry failures with a doubling wait."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            desired, version = self._desired, self._version
            if desired == self._installed:
                SYNCED.set(1)
                continue
            try:
                await self._install(desired)
            except nftables.PacketFilterError as exc:
                self._apply_error = str(exc)
                FAILURES.labels("apply").inc()
                delay = self._retry.next()
                log.error("applying the access list failed (retrying in %.1fs): %s", delay, exc)
                SYNCED.set(0)
                await asyncio.sleep(delay)
                self._changed.set()
                continue
            self._retry.reset()
            self._apply_error = ""
            SYNCED.set(1)
            log.info(
                "access list applied",
                extra={
                    "resourceVersion": version,
                    "admitted": {str(p): sorted(a) for p, a in desired.items() if a},
                },
            )

    def report(self) -> AccessReport:
        """What the inventory says about access control on this node."""
        installed = self._installed or {}
        return AccessReport(
            mode=AccessMode.ON.value,
            synced=self._read and installed == self._desired and not self._apply_error,
            admitted=sum(len(a) for a in installed.values()),
            error=(self._apply_error or self._read_error)[:1024],
        )


class AccessOff:
    """Access control turned off: said loudly at start, every ten minutes, and in metrics."""

    REMIND_EVERY = 600.0

    def __init__(self, *, node: str, ports: Sequence[int], nft: str | None) -> None:
        self.node = node
        self.ports = tuple(sorted(set(ports)))
        self.nft = nft
        ENABLED.set(0)
        SYNCED.set(0)

    def warning(self) -> str:
        """The sentence logged at start and periodically."""
        ports = ", ".join(str(p) for p in self.ports)
        return (
            f"backend access control is OFF (--access-control off): anyone who reaches ports "
            f"{ports} of {self.node} uses its GPUs, with no claim"
        )

    async def open_ports(self) -> None:
        """Remove a table an earlier agent left, so off means off."""
        if self.nft is None:
            return  # without nft, no agent of this image ever installed one
        try:
            await nftables.apply(nftables.render_removal(), nft=self.nft)
        except nftables.PacketFilterError as exc:
            log.warning(
                "could not remove the access table an earlier agent may have left (%s); "
                "if it exists, remove it: nft delete table %s %s",
                exc,
                nftables.FAMILY,
                nftables.TABLE,
            )

    async def remind(self) -> None:
        """Warn now and every ten minutes, until cancelled."""
        while True:
            log.warning(self.warning())
            await asyncio.sleep(self.REMIND_EVERY)

    def report(self) -> AccessReport:
        """Off, in the inventory (the controller records a Warning Event on the Node)."""
        return AccessReport(mode=AccessMode.OFF.value)
