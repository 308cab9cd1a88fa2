"""Keeping each backend node's pool equal to its desired state.

Per node and round: judge the GPUs, render the desired slices (a pure function of
the inputs, :func:`pools.desired_slices`) and publish the difference. A pool is
rendered again only when something it depends on changed (its inventory's identity,
the verdicts, withdrawals, the node, the server's features, the stored slices), so a
steady cluster costs no work. A pool whose agent has never answered since this
controller started is left as it is (nothing known is better than acting blind);
one whose agent pod is gone past the grace period, or whose node is gone, is
removed. Publishing one pool never overlaps with another publish of the same pool.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

from dra_driver.controller import pools
from dra_driver.controller.agents import Agents, AgentState
from dra_driver.controller.features import FeatureGates
from dra_driver.controller.health import Verdict
from dra_driver.controller.pools import DevicePolicy, NodeInfo
from dra_driver.controller.slices import Publisher, SliceStore
from dra_driver.controller.tracker import HealthTracker
from dra_driver.kube import errors
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.index import Index

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class PoolSync:
    """Owns publishing every pool; see the module docstring."""

    def __init__(
        self,
        *,
        driver: str,
        agents: Agents,
        nodes: Index[NodeInfo],
        tracker: HealthTracker,
        gates: FeatureGates,
        policy: DevicePolicy,
        store: SliceStore,
        publisher: Publisher,
        events: EventRecorder,
        grace: float,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.driver = driver
        self.agents = agents
        self.nodes = nodes
        self.tracker = tracker
        self.gates = gates
        self.policy = policy
        self.store = store
        self.publisher = publisher
        self.events = events
        self.grace = grace
        self.clock = clock
        self.wall = wall
        self._fingerprints: dict[str, Any] = {}
        self._absent_since: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def sync_all(self) -> None:
        """Bring every pool (of an agent, or published) up to date."""
        published = self.store.pools()
        now = self.clock()
        await asyncio.gather(
            *(
                self.sync(node, existing=published.get(node, {}), now=now)
                for node in set(self.agents.states) | set(published)
            )
        )

    async def withdraw(self, pool: str, index: int, reason: str) -> None:
        """Keep a GPU off scheduling (after a failed binding), published before returning."""
        self.tracker.withdraw(pool, index, reason)
        self._fingerprints.pop(pool, None)
        await self.sync(pool, existing=None, now=self.clock())

    async def sync(self, node: str, *, existing: dict[str, Obj] | None, now: float) -> None:
        """Bring one pool up to date; ``existing`` None reads the store afresh."""
        lock = self._locks.setdefault(node, asyncio.Lock())
        if lock.locked():
            existing = None  # what we were handed may predate the publish in progress
        async with lock:
            if existing is None:
                existing = self.store.pools().get(node, {})
            await self._sync(node, existing, now)

    async def _sync(self, node: str, existing: dict[str, Obj], now: float) -> None:
        info = self.nodes.items.get(node)
        state = self.agents.states.get(node)
        if info is None or state is None:
            await self._retire(node, existing, now, info)
            return
        self._absent_since.pop(node, None)
        if state.inventory is None:
            return  # never answered since we lead: leave what is published alone
        verdicts = self.tracker.judge(node, state, existing)
        withdrawn = self.tracker.withdrawn(node)
        fingerprint = _fingerprint(
            state, verdicts, withdrawn, info, features=self.gates.version, existing=existing
        )
        if fingerprint == self._fingerprints.get(node):
            return
        features = self.gates.current
        desired = pools.desired_slices(
            driver=self.driver,
            node=info,
            inventory=state.inventory,
            verdicts=verdicts,
            withdrawn=withdrawn,
            policy=self.policy,
            features=features,
            existing=existing,
            now=_stamp(self.wall()),
        )
        try:
            published = await self.publisher.publish(
                desired=desired, existing=existing, features=features
            )
        except errors.KubeError as exc:
            log.warning("publishing pool %s failed (retrying next round): %s", node, exc.message)
            return
        if published.kept is not None:
            await self.gates.adopt(published.kept, dropped=published.dropped)
        elif published.wrote:
            log.info(
                "published pool",
                extra={
                    "pool": node,
                    "devices": sum(len(s["spec"]["devices"]) for s in desired),
                    "slices": len(desired),
                },
            )
        else:
            self._fingerprints[node] = fingerprint

    async def _retire(
        self, node: str, existing: dict[str, Obj], now: float, info: NodeInfo | None
    ) -> None:
        """Remove a pool whose node is gone, or whose agent has been gone past the grace period."""
        self._fingerprints.pop(node, None)
        self.tracker.forget(node)
        if not existing:
            self._absent_since.pop(node, None)
            return
        since = self._absent_since.setdefault(node, now)
        if info is not None and now - since < self.grace:
            return
        try:
            await self.publisher.remove(existing)
        except errors.KubeError as exc:
            log.warning("removing pool %s failed (retrying next round): %s", node, exc.message)
            return
        self._absent_since.pop(node, None)
        why = "its node is gone" if info is None else f"no backend agent for {now - since:.0f}s"
        log.info("removed pool %s: %s", node, why)
        if info is not None:
            await self.events.record(
                Regarding("Node", node, uid=info.uid),
                warning=False,
                reason="GVirtuSPoolRemoved",
                message=f"GVirtuS pool {node} removed: {why}",
            )


def _fingerprint(
    state: AgentState,
    verdicts: Mapping[int, Verdict],
    withdrawn: Mapping[int, str],
    info: NodeInfo,
    *,
    features: int,
    existing: Mapping[str, Obj],
) -> tuple[Any, ...]:
    """Everything a pool's slices depend on; load figures only through the verdicts."""
    assert state.inventory is not None
    inventory = state.inventory
    identity = tuple(
        (g.index, g.uuid, g.model, g.memory_bytes, g.driver_version, g.cuda_version, g.port)
        for g in inventory.gpus
    )
    return (
        identity,
        inventory.address,
        inventory.simulated,
        tuple(sorted((i, v.key) for i, v in verdicts.items())),
        tuple(sorted(withdrawn.items())),
        info,
        features,
        tuple(sorted((n, o["metadata"].get("resourceVersion")) for n, o in existing.items())),
    )


def _stamp(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
