"""The controller's verdict on every GPU, kept in one place and announced once.

The tracker judges each node's GPUs from its agent's inventory (see
:func:`health.judge`), remembers the verdicts across rounds (an unhealthy GPU's
clock towards eviction runs from its first bad verdict, and a new leader restores
that clock from the ``timeAdded`` of published taints), records an Event on the
backend's Node for every transition, and keeps the GPUs withdrawn after a failed
binding until a later report judges them ready. Everything else reads verdicts
through its read-only methods.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from dra_driver.controller import pools
from dra_driver.controller.agents import AgentState
from dra_driver.controller.health import Thresholds, Verdict, judge
from dra_driver.device import attribute_values
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.index import Index

log = logging.getLogger(__name__)

DEVICES = Gauge("gvirtus_dra_controller_gpus", "GPUs of answering agents by verdict.", ["verdict"])
WITHDRAWN = Gauge(
    "gvirtus_dra_controller_withdrawn_gpus",
    "GPUs kept off scheduling after a failed binding, until judged ready again.",
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Withdrawal:
    """Why and since when (``clock``) a GPU is kept off scheduling."""

    reason: str
    since: float


class HealthTracker:
    """Owns verdicts and withdrawals; see the module docstring."""

    def __init__(
        self,
        *,
        driver: str,
        thresholds: Thresholds,
        grace: float,
        no_execute_after: float,
        nodes: Index[pools.NodeInfo],
        events: EventRecorder,
        clock: Callable[[], float],
        wall: Callable[[], float],
    ) -> None:
        self.driver = driver
        self.thresholds = thresholds
        self.grace = grace
        self.no_execute_after = no_execute_after
        self.nodes = nodes
        self.events = events
        self.clock = clock
        self.wall = wall
        self._verdicts: dict[str, dict[int, Verdict]] = {}
        self._withdrawn: dict[tuple[str, int], Withdrawal] = {}
        self.version = 0
        """Counts changes of any verdict's published meaning (its ``key``)."""

    # -- read-only view ---------------------------------------------------------------

    def verdict(self, pool: str, index: int) -> Verdict | None:
        """The current verdict on a GPU; None until its agent has answered."""
        return self._verdicts.get(pool, {}).get(index)

    def withdrawn(self, pool: str) -> dict[int, str]:
        """GPUs of ``pool`` kept off scheduling, by index, with the reason."""
        return {index: w.reason for (p, index), w in self._withdrawn.items() if p == pool}

    # -- judging ----------------------------------------------------------------------

    def judge(
        self, node: str, state: AgentState, existing: Mapping[str, Obj]
    ) -> dict[int, Verdict]:
        """Judge every GPU of ``node`` from its agent's last inventory; announce changes."""
        assert state.inventory is not None
        problem = state.problem(now=self.clock(), grace=self.grace)
        previous = self._verdicts.get(node) or self._restore(existing)
        wall = self.wall()
        verdicts = {
            gpu.index: judge(
                gpu,
                agent_problem=problem,
                thresholds=self.thresholds,
                previous=previous.get(gpu.index),
                now=wall,
                no_execute_after=self.no_execute_after,
            )
            for gpu in state.inventory.gpus
        }
        if {i: v.key for i, v in verdicts.items()} != {
            i: v.key for i, v in (self._verdicts.get(node) or {}).items()
        }:
            self.version += 1
        self._verdicts[node] = verdicts
        for gpu in state.inventory.gpus:
            self._announce(node, gpu.index, gpu.uuid, previous.get(gpu.index), verdicts[gpu.index])
        self._release(node, verdicts, answered=state.answered_at)
        return verdicts

    def forget(self, node: str) -> None:
        """Drop everything about a node whose pool is going away."""
        if self._verdicts.pop(node, None) is not None:
            self.version += 1
        self._withdrawn = {k: w for k, w in self._withdrawn.items() if k[0] != node}

    def withdraw(self, pool: str, index: int, reason: str) -> None:
        """Keep a GPU off scheduling until a report after now judges it ready."""
        if (pool, index) not in self._withdrawn:
            log.warning(
                "withdrawing GPU %d of pool %s from scheduling: its binding failed (%s)",
                index,
                pool,
                reason,
            )
        self._withdrawn[(pool, index)] = Withdrawal(reason=reason, since=self.clock())

    def report(self) -> None:
        """GPUs by verdict, and withdrawn GPUs, as gauges."""
        counts = {"healthy": 0, "unhealthy": 0, "overloaded": 0}
        for verdicts in self._verdicts.values():
            for verdict in verdicts.values():
                if not verdict.healthy:
                    counts["unhealthy"] += 1
                elif verdict.overloaded:
                    counts["overloaded"] += 1
                else:
                    counts["healthy"] += 1
        for name, count in counts.items():
            DEVICES.labels(name).set(count)
        WITHDRAWN.set(len(self._withdrawn))

    def _release(
        self, node: str, verdicts: Mapping[int, Verdict], *, answered: float | None
    ) -> None:
        """Give back GPUs whose agent judged them ready after their binding failed."""
        for (pool, index), held in list(self._withdrawn.items()):
            verdict = verdicts.get(index)
            if pool != node or verdict is None or answered is None or answered <= held.since:
                continue
            if verdict.healthy and not verdict.overloaded:
                del self._withdrawn[(pool, index)]
                log.info("GPU %d of pool %s is ready again; scheduling onto it", index, pool)

    def _restore(self, existing: Mapping[str, Obj]) -> dict[int, Verdict]:
        """Verdicts as published, so a new leader keeps eviction clocks and stays quiet."""
        indexes = self._indexes(existing)
        restored: dict[int, Verdict] = {}
        for (device, key, effect), added in pools.taint_times(existing).items():
            index = indexes.get(device)
            since = _unix(added)
            if key != pools.UNHEALTHY_TAINT or index is None or since is None:
                continue
            earlier = restored.get(index)
            if earlier is None or (earlier.since or since) > since:
                restored[index] = Verdict(
                    healthy=False, reason="restored", since=since, evict=effect == "NoExecute"
                )
        return restored

    def _indexes(self, existing: Mapping[str, Obj]) -> dict[str, int]:
        """Device name → GPU index, from the published ``index`` attribute."""
        found: dict[str, int] = {}
        for obj in existing.values():
            for device in (obj.get("spec") or {}).get("devices") or []:
                index = attribute_values(device, driver=self.driver).get("index")
                if isinstance(index, int) and not isinstance(index, bool):
                    found[str(device.get("name"))] = index
        return found

    def _announce(
        self, node: str, index: int, uuid: str, before: Verdict | None, after: Verdict
    ) -> None:
        info = self.nodes.items.get(node)
        if info is None or before is None or (before.reason == "restored" and not after.healthy):
            return
        event = _transition(f"GPU {index} ({uuid}) of GVirtuS pool {node}", before, after)
        if event is None:
            return
        warning, reason, message = event
        log.log(logging.WARNING if warning else logging.INFO, message)
        self.events.post(
            Regarding("Node", node, uid=info.uid), warning=warning, reason=reason, message=message
        )


def _transition(where: str, before: Verdict, after: Verdict) -> tuple[bool, str, str] | None:
    """(warning, reason, message) of the Event for a verdict change worth one."""
    if before.healthy and not after.healthy:
        return (
            True,
            "GVirtuSBackendUnhealthy",
            f"{where} is unhealthy: {after.reason}: {after.message}",
        )
    if not before.healthy and after.healthy:
        return False, "GVirtuSBackendRecovered", f"{where} serves again"
    if after.evict and not before.evict:
        return True, "GVirtuSBackendEvicting", f"{where} unhealthy for too long: evicting its pods"
    if after.overloaded and not before.overloaded:
        return False, "GVirtuSBackendOverloaded", f"{where} is overloaded ({after.overloaded})"
    return None


def _unix(stamp: str) -> float | None:
    try:
        return (
            datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return None
