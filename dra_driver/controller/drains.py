"""Admin drains: the DeviceTaintRules that taint this driver's published devices.

An admin drains a backend node or one GPU with a cluster-scoped ``DeviceTaintRule``
(``resource.k8s.io/v1`` from Kubernetes 1.37, ``v1beta2`` in 1.36 behind the
DRADeviceTaintRules gate): ``spec.deviceSelector`` names a driver, a pool and a
device, each optional, all given must match, and ``spec.taint`` the taint. The
scheduler and the eviction controller apply it as if the slice carried it; the slice
itself does not change, so nothing else in the driver sees it.

A drain is policy, not a failure: verdicts, claim status and the kubelet plugin's
health are unaffected (a drained backend that serves is healthy). The controller only
makes drains visible: ``gvirtus_dra_controller_drained_devices{effect}`` counts the
published devices a rule taints (each once, by its strongest effect), and an Event
on the backend's Node says when a rule starts or stops draining devices of its pool.
Drains already in place when this replica starts leading are logged, not announced
again, as verdicts restored from taints are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from dra_driver.controller.pools import NodeInfo
from dra_driver.controller.slices import SliceStore
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.index import Index

log = logging.getLogger(__name__)

EFFECTS = ("NoExecute", "NoSchedule", "None")
"""Taint effects, strongest first."""

DRAINED = Gauge(
    "gvirtus_dra_controller_drained_devices",
    "Published devices a DeviceTaintRule taints, each by the strongest effect of its rules.",
    ["effect"],
)
for _effect in EFFECTS:
    DRAINED.labels(_effect)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """What the controller keeps of one DeviceTaintRule."""

    name: str
    driver: str | None
    pool: str | None
    device: str | None
    key: str
    value: str
    effect: str
    since: str
    """The taint's ``timeAdded``: tells a rule made again apart from the one before."""

    def matches(self, *, driver: str, pool: str, device: str) -> bool:
        """Whether the selector takes this device: every field it gives must match."""
        return all(
            wanted is None or wanted == actual
            for wanted, actual in ((self.driver, driver), (self.pool, pool), (self.device, device))
        )

    @property
    def taint(self) -> str:
        """``key=value:effect``, as kubectl writes taints."""
        return (
            f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"
        )


def rule_of(obj: Obj, *, driver: str) -> Rule | None:
    """The rule, or None when it can never select this driver's devices (or is malformed)."""
    spec = obj.get("spec") or {}
    selector = spec.get("deviceSelector") or {}
    taint = spec.get("taint") or {}
    wanted = selector.get("driver")
    if (wanted is not None and wanted != driver) or not taint.get("key"):
        return None
    if taint.get("effect") not in EFFECTS:
        return None
    return Rule(
        name=str(obj["metadata"]["name"]),
        driver=wanted,
        pool=selector.get("pool"),
        device=selector.get("device"),
        key=str(taint["key"]),
        value=str(taint.get("value") or ""),
        effect=str(taint["effect"]),
        since=str(taint.get("timeAdded") or ""),
    )


class DrainRules(Index[Rule]):
    """The DeviceTaintRules that may select this driver's devices, by name.

    ``initial`` holds the rules of the first list: the drains that were in place
    before this replica started leading, which it does not announce again.
    """

    def __init__(self, *, driver: str) -> None:
        super().__init__(lambda obj: rule_of(obj, driver=driver))
        self.initial: frozenset[Rule] = frozenset()

    async def on_relist(self, items: list[Obj]) -> None:
        """Replace everything; the first list is remembered as ``initial``."""
        first = not self.synced.is_set()
        await super().on_relist(items)
        if first:
            self.initial = frozenset(self.items.values())


def published(store: SliceStore) -> dict[str, frozenset[str]]:
    """Each pool's published device names."""
    return {
        pool: frozenset(
            str(device["name"])
            for obj in slices.values()
            for device in (obj.get("spec") or {}).get("devices") or []
        )
        for pool, slices in store.pools().items()
    }


Drain = tuple[Rule, tuple[str, ...]]
"""A rule and the devices of one pool it taints, sorted."""


def drained(
    rules: Mapping[str, Rule], devices: Mapping[str, frozenset[str]], *, driver: str
) -> dict[str, dict[str, Drain]]:
    """Pool → rule name → the rule and the pool's devices it taints (pure)."""
    found: dict[str, dict[str, Drain]] = {}
    for pool, names in devices.items():
        for rule in rules.values():
            hit = tuple(
                sorted(n for n in names if rule.matches(driver=driver, pool=pool, device=n))
            )
            if hit:
                found.setdefault(pool, {})[rule.name] = (rule, hit)
    return found


def strongest(drains: Mapping[str, Mapping[str, Drain]]) -> dict[str, int]:
    """Devices by the strongest effect any rule gives them."""
    best: dict[tuple[str, str], int] = {}
    for pool, by_rule in drains.items():
        for rule, names in by_rule.values():
            rank = EFFECTS.index(rule.effect)
            for name in names:
                best[(pool, name)] = min(best.get((pool, name), rank), rank)
    counts = dict.fromkeys(EFFECTS, 0)
    for rank in best.values():
        counts[EFFECTS[rank]] += 1
    return counts


class Drains:
    """Compares drains with the last round's, announces changes, keeps the gauge."""

    def __init__(
        self,
        *,
        driver: str,
        rules: DrainRules,
        store: SliceStore,
        nodes: Index[NodeInfo],
        events: EventRecorder,
        honoured: bool,
    ) -> None:
        """``honoured`` is False where the scheduler's allocator ignores device taints.

        That is KAI-Scheduler without DRADeviceTaints in its gates: a drain then keeps
        nothing away, which its Events say.
        """
        self.driver = driver
        self.rules = rules
        self.store = store
        self.nodes = nodes
        self.events = events
        self.honoured = honoured
        self._known: dict[str, dict[str, Drain]] | None = None
        self._seen: tuple[int, int] | None = None

    def sync(self) -> None:
        """Look at rules and published devices once; cheap when neither changed."""
        if not self.rules.synced.is_set():
            return
        seen = (self.rules.version, self.store.version)
        if seen == self._seen:
            return
        self._seen = seen
        now = drained(self.rules.items, published(self.store), driver=self.driver)
        for effect, count in strongest(now).items():
            DRAINED.labels(effect).set(count)
        before, self._known = self._known, now
        if before is None:  # the first look: drains older than this leader are not news
            before = {}
            for pool, by_rule in now.items():
                known = {n: d for n, d in by_rule.items() if d[0] in self.rules.initial}
                if known:
                    before[pool] = known
                for rule, names in known.values():
                    log.info(self._drained_message(pool, rule, names))
        for pool in sorted(set(before) | set(now)):
            self._compare(pool, before.get(pool, {}), now.get(pool, {}))

    def _compare(self, pool: str, before: Mapping[str, Drain], now: Mapping[str, Drain]) -> None:
        for name, (rule, names) in sorted(now.items()):
            if before.get(name) != (rule, names):
                self._announce(
                    pool,
                    warning=rule.effect == "NoExecute",
                    reason="GVirtuSBackendDrained",
                    message=self._drained_message(pool, rule, names),
                )
        for name in sorted(set(before) - set(now)):
            self._announce(
                pool,
                warning=False,
                reason="GVirtuSBackendUndrained",
                message=f"DeviceTaintRule {name} no longer drains devices of GVirtuS pool {pool}",
            )

    def _drained_message(self, pool: str, rule: Rule, names: tuple[str, ...]) -> str:
        effect = {
            "NoSchedule": "no new claims are allocated them; running pods keep them",
            "NoExecute": "pods using them are evicted and no new claims are allocated them",
            "None": "scheduling is unaffected",
        }[rule.effect]
        since = f" since {rule.since}" if rule.since else ""
        message = (
            f"DeviceTaintRule {rule.name} ({rule.taint}{since}) drains "
            f"{', '.join(names)} of GVirtuS pool {pool}: {effect}"
        )
        if not self.honoured and rule.effect != "None":
            message += (
                "; but KAI-Scheduler's allocator ignores device taints here, so it may still "
                "allocate them"
            )
        return message

    def _announce(self, pool: str, *, warning: bool, reason: str, message: str) -> None:
        log.log(logging.WARNING if warning else logging.INFO, message)
        info = self.nodes.items.get(pool)
        if info is None:
            return
        self.events.post(
            Regarding("Node", pool, uid=info.uid), warning=warning, reason=reason, message=message
        )
