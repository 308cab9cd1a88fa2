"""Who may connect to each backend: computed here, enforced by each node's agent.

GVirtuS has no authentication, so anything that reaches a backend port gets the
GPU. The controller already knows who should: for every claim allocated one of our
devices, the pods in its ``status.reservedFor``. Per backend node it publishes the
IPv4 source addresses of those pods for each backend port (a host-network pod
connects from its node's address; with ``--access-node-addresses``, for network
plugins that masquerade pod traffic, every such pod's node address too) as a versioned document
(:class:`dra_driver.models.BackendAccess`) in the ConfigMap
``gvirtus-dra-access-<node>`` of its namespace. The node's agent watches that one
ConfigMap and installs it in the kernel's packet filter (``backend/access.py``).

The agent cannot compute the list itself without reading every pod and claim of
the cluster from every GPU node; here the list costs one watch the controller holds
anyway, and the agents need to read only their own ConfigMap.

Timing matters: the kubelet prepares a claim before the pod has an address, and the
GVirtuS frontend connects as its library loads, so a new pod's address must be
admitted within about a second (the agent drops, not rejects, what it does not
admit yet, so the frontend's SYN retry gets through). Claim and pod changes
therefore wake this owner directly (:class:`Notifying`); it does not wait for the
next poll round. It also looks every poll interval, for inventories that changed.

A node's list is written only while its agent has answered since this replica
leads (its ports come from the inventory; a new leader writes nothing blind), by
server-side apply, and only when it differs from what is stored. Each ConfigMap is
owned by its Node, so the garbage collector removes it with the node. Agents that
report access control off, or failures to apply the list, get a Warning Event on
their Node (at most once per ten minutes for the same message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from dra_driver.addresses import AddressError, routable_ipv4
from dra_driver.controller.agents import Agents
from dra_driver.controller.claims import ClaimIndex
from dra_driver.controller.pods import PodIndex
from dra_driver.controller.pools import NodeInfo
from dra_driver.device import index_of
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.events import REPEAT_AFTER, EventRecorder, Regarding
from dra_driver.kube.index import Index
from dra_driver.kube.resources import CONFIG_MAPS
from dra_driver.kube.watch import WatchEvent
from dra_driver.models import (
    ACCESS_DATA_KEY,
    ACCESS_NAME_PREFIX,
    MAX_ACCESS_ADDRESSES,
    AccessMode,
    BackendAccess,
    Inventory,
    PortAccess,
    access_config_map_name,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "gvirtus-dra-controller"
LABELS = {
    "app.kubernetes.io/part-of": "gvirtus-dra",
    "app.kubernetes.io/component": "backend-access",
}
LABEL_SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())

WRITES = Counter(
    "gvirtus_dra_controller_access_writes_total",
    "Writes of backend nodes' access lists, by result.",
    ["result"],
)
for _result in ("ok", "error"):
    WRITES.labels(_result)
ADMITTED = Gauge(
    "gvirtus_dra_controller_access_addresses",
    "Addresses admitted to backends, summed over the access lists this replica published.",
)


Obj = dict[str, Any]


@dataclass(frozen=True)
class Stored:
    """What an access ConfigMap holds, as far as deciding whether to write goes."""

    document: str
    owner: str
    """UID of the Node named in its ownerReferences (empty when none)."""


def stored(obj: Obj) -> Stored | None:
    """The record of one of our access ConfigMaps; None for any other ConfigMap."""
    meta = obj.get("metadata") or {}
    if not str(meta.get("name", "")).startswith(ACCESS_NAME_PREFIX):
        return None
    owners = [r for r in meta.get("ownerReferences") or [] if r.get("kind") == "Node"]
    return Stored(
        document=str((obj.get("data") or {}).get(ACCESS_DATA_KEY, "")),
        owner=str(owners[0].get("uid", "")) if len(owners) == 1 else "",
    )


class Notifying:
    """A list-watch consumer that tells ``notify`` whenever the index it feeds changed.

    ``ClaimIndex.changed`` belongs to the claim status writer, which clears it; this
    wrapper gives another owner its own wake-up without touching the index.
    """

    def __init__(self, index: Index[Any], notify: Callable[[], None]) -> None:
        self.index = index
        self.notify = notify

    async def on_relist(self, items: list[Obj]) -> None:
        """Feed the index; notify if it changed."""
        before = self.index.version
        await self.index.on_relist(items)
        if self.index.version != before:
            self.notify()

    async def on_event(self, event: WatchEvent) -> None:
        """Feed the index; notify if it changed."""
        before = self.index.version
        await self.index.on_event(event)
        if self.index.version != before:
            self.notify()


class AccessPublisher:
    """Keeps every backend node's access ConfigMap equal to its claims' pods."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        claims: ClaimIndex,
        pods: PodIndex,
        agents: Agents,
        nodes: Index[NodeInfo],
        events: EventRecorder,
        interval: float,
        node_addresses: bool = False,
        concurrency: int = 16,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.claims = claims
        self.pods = pods
        self.agents = agents
        self.nodes = nodes
        self.events = events
        self.interval = interval
        self.node_addresses = node_addresses
        self.store: Index[Stored] = Index(stored)
        self.wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._published: tuple[int, ...] = ()
        """The versions of every input when the lists were last found right."""
        self._reported: tuple[int, float] = (-1, 0.0)

    def notify(self) -> None:
        """Something the lists depend on changed: look again now."""
        self.wake.set()

    def watching(self, index: Index[Any]) -> Notifying:
        """A consumer feeding ``index`` that wakes this owner on its changes."""
        return Notifying(index, self.notify)

    async def run(self) -> None:
        """Publish on every change and every interval, once claims, pods and lists are listed.

        Writing before the claims and pods are known would publish lists missing
        pods that hold claims, and cut their frontends off.
        """
        for synced in (self.claims.synced, self.pods.synced, self.store.synced):
            await synced.wait()
        while True:
            self.wake.clear()
            try:
                await self.sync()
                await self.report()
            except Exception:  # a bug here must not stop the leader's other work
                log.exception("publishing access lists failed; trying again")
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that arrives as the event is set, and the leader could then
            # never stop this task.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self.wake.wait()

    def desired(self) -> dict[str, BackendAccess]:
        """Each known backend node's list: every backend port and who may reach it."""
        sources = self._sources()
        found: dict[str, BackendAccess] = {}
        for node, state in self.agents.states.items():
            if state.inventory is None or node not in self.nodes.items:
                continue  # ports unknown, or nothing to own the list: write nothing blind
            found[node] = BackendAccess(
                node_name=node,
                ports=tuple(
                    PortAccess(port=g.port, addresses=_cap(sources.get((node, g.index)), g.port))
                    for g in state.inventory.gpus
                ),
            )
        return found

    def _sources(self) -> dict[tuple[str, int], set[str]]:
        """Source addresses by (backend node, GPU index), from claims and their pods."""
        sources: dict[tuple[str, int], set[str]] = {}
        for claim in self.claims.items.values():
            addresses: set[str] = set()
            for uid in claim.reserved:
                pod = self.pods.by_uid(uid)
                if pod is None:
                    continue
                wanted = (pod.source, pod.host_ip if self.node_addresses else "")
                addresses.update(a for a in wanted if a and _usable(a))
            if not addresses:
                continue
            for device in claim.devices:
                index = index_of(device.device)
                if index is not None:
                    sources.setdefault((device.pool, index), set()).update(addresses)
        return sources

    async def sync(self) -> None:
        """Write every list that differs from what is stored.

        Nothing is computed while no input changed: a steady cluster of a thousand
        backend nodes costs nothing per round.
        """
        inputs = self._versions()
        if inputs == self._published:
            return
        desired = self.desired()
        ADMITTED.set(sum(len(p.addresses) for d in desired.values() for p in d.ports))
        writes = []
        for node, document in desired.items():
            key = f"{self.namespace}/{access_config_map_name(node)}"
            wanted = Stored(document=document.encode(), owner=self.nodes.items[node].uid)
            if self.store.items.get(key) != wanted:
                writes.append(self._write(node, wanted))
        outcomes = await asyncio.gather(*writes)
        if all(outcomes):
            self._published = inputs

    def _versions(self) -> tuple[int, ...]:
        return (
            self.claims.version,
            self.pods.version,
            self.nodes.version,
            self.agents.version,
            self.store.version,
        )

    async def _write(self, node: str, wanted: Stored) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": access_config_map_name(node),
                "namespace": self.namespace,
                "labels": dict(LABELS),
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": node, "uid": wanted.owner}
                ],
            },
            "data": {ACCESS_DATA_KEY: wanted.document},
        }
        async with self._limit:
            try:
                written = await self.kube.apply(CONFIG_MAPS, body, field_manager=FIELD_MANAGER)
            except errors.KubeError as exc:
                WRITES.labels("error").inc()
                log.warning("publishing the access list of %s failed: %s", node, exc.message)
                await self.events.record(
                    Regarding("Node", node, uid=wanted.owner),
                    warning=True,
                    reason="GVirtuSAccessNotPublished",
                    message=f"the access list of the GVirtuS backends on {node} could not be "
                    f"published: {exc.message}",
                )
                return False
        WRITES.labels("ok").inc()
        # Known at once, so the next look does not write it again before its watch event.
        await self.store.on_event(WatchEvent("MODIFIED", written))
        log.info("published the access list of %s", node, extra={"document": wanted.document})
        return True

    async def report(self) -> None:
        """Warn on each Node whose agent does not enforce its list.

        Looked at when the agents changed, and every ten minutes, when the recorder
        lets the same Event through again.
        """
        now = time.monotonic()
        if self.agents.version == self._reported[0] and now - self._reported[1] < REPEAT_AFTER:
            return
        self._reported = (self.agents.version, now)
        for node, state in self.agents.states.items():
            info = self.nodes.items.get(node)
            if state.inventory is None or info is None:
                continue
            problem = warning(state.inventory)
            if problem is not None:
                reason, message = problem
                await self.events.record(
                    Regarding("Node", node, uid=info.uid),
                    warning=True,
                    reason=reason,
                    message=message,
                )


def _usable(address: str) -> bool:
    try:
        routable_ipv4(address)
    except AddressError:
        return False
    return True


def _cap(addresses: set[str] | None, port: int) -> tuple[str, ...]:
    listed = sorted(addresses or ())
    if len(listed) > MAX_ACCESS_ADDRESSES:
        log.warning(
            "%d addresses hold claims on the backend at port %d; admitting the first %d",
            len(listed),
            port,
            MAX_ACCESS_ADDRESSES,
        )
    return tuple(listed[:MAX_ACCESS_ADDRESSES])


def warning(inventory: Inventory) -> tuple[str, str] | None:
    """The Event reason and message for an agent that does not enforce, or None."""
    node, access = inventory.node_name, inventory.access
    ports = ", ".join(str(g.port) for g in inventory.gpus)
    if access is None or access.mode == AccessMode.OFF:
        why = (
            "its agent predates backend access control"
            if access is None
            else "its agent runs with --access-control off"
        )
        return (
            "GVirtuSAccessControlOff",
            f"backend access control is off on {node} ({why}): any address that reaches "
            f"ports {ports} gets a GPU",
        )
    if access.error:
        return (
            "GVirtuSAccessNotApplied",
            f"the agent on {node} cannot apply its access list: {access.error}",
        )
    return None
