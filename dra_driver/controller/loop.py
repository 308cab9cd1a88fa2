"""The leader's loop: poll every agent, publish every pool that changed, every interval.

Each round also looks at admins' drains of the published devices (:mod:`drains`).

Before the first round every informer that must be listed has been, and the API
server's features are probed (again every ten minutes). Claim status starts after
the first round, when verdicts are known, and is woken whenever a verdict or a
published device changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram

from dra_driver.controller import informers
from dra_driver.controller.agents import Agents
from dra_driver.controller.claimstatus import ClaimStatus
from dra_driver.controller.drains import Drains
from dra_driver.controller.features import REPROBE_EVERY, FeatureGates
from dra_driver.controller.informers import Informer
from dra_driver.controller.poller import Poller
from dra_driver.controller.pool_sync import PoolSync
from dra_driver.controller.tracker import HealthTracker
from dra_driver.controller.view import DeviceView
from dra_driver.kube.client import KubeClient

COMPONENT = "controller"
ROUND_SECONDS = Histogram(
    "gvirtus_dra_controller_reconcile_duration_seconds",
    "Time of one poll-and-publish round.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@dataclass
class Loop:
    """Runs while this replica leads; its owners are wired in :mod:`controller.app`."""

    kube: KubeClient
    watches: Sequence[Informer]
    gates: FeatureGates
    agents: Agents
    poller: Poller
    pools: PoolSync
    tracker: HealthTracker
    view: DeviceView
    status: ClaimStatus
    drains: Drains
    interval: float
    grace: float
    clock: Callable[[], float] = time.monotonic
    last_round: float = field(default_factory=time.monotonic)
    _seen: tuple[Any, ...] = ()

    async def run(self) -> None:
        """Watch, probe, then poll and publish every interval until cancelled."""
        tasks = informers.start(kube=self.kube, informers=self.watches, component=COMPONENT)
        try:
            await informers.synced(self.watches)
            await self.gates.probe()
            probed = self.clock()
            while True:
                started = self.clock()
                await self.round()
                if len(tasks) == len(self.watches):
                    tasks.append(asyncio.create_task(self.status.run()))
                self._wake_status()
                if self.clock() - probed > REPROBE_EVERY:
                    await self.gates.probe()
                    probed = self.clock()
                await asyncio.sleep(max(0.0, self.interval - (self.clock() - started)))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.poller.close()

    async def round(self) -> None:
        """Poll every agent once and publish every pool that changed."""
        started = time.perf_counter()
        self.agents.sync()
        await self.agents.poll(self.poller)
        await self.pools.sync_all()
        self.drains.sync()
        self.agents.report(now=self.clock(), grace=self.grace)
        self.tracker.report()
        self.last_round = self.clock()
        ROUND_SECONDS.observe(time.perf_counter() - started)

    def _wake_status(self) -> None:
        """Wake the claim status writer when a verdict or a published device changed."""
        seen = (self.view.version, self.tracker.version)
        if seen != self._seen:
            self._seen = seen
            self.status.poke()
