"""The leader's loop: poll every agent, judge every GPU, publish every pool that changed.

Per round: agents (pods selected by label in the controller's namespace) are
polled concurrently; each node's GPUs are judged; each pool whose inputs changed is
rendered and published, and writes happen only where the slices differ. A pool
whose agent pod is gone, for longer than the grace period, is removed; a pool whose
agent has never answered since this controller started is left as it is (nothing
known is better than acting blind). After a restart the round finds the published
slices equal to what it would publish, and writes nothing. Claims allocated from
the pools get their device status from :mod:`claimstatus`, woken after each round.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge, Histogram

from dra_driver.controller import pools
from dra_driver.controller.binding import Endpoint, endpoint_of
from dra_driver.controller.claims import CLAIMS_PATH, Claim, ClaimIndex
from dra_driver.controller.claimstatus import ClaimStatus
from dra_driver.controller.health import Thresholds, Verdict, judge
from dra_driver.controller.pods import PODS_PATH, PodIndex
from dra_driver.controller.poller import AgentState, Poller
from dra_driver.controller.pools import DevicePolicy, Features, NodeInfo
from dra_driver.controller.settings import ControllerSettings
from dra_driver.controller.slices import (
    SLICES_PATH,
    DroppedFieldsError,
    Publisher,
    SliceStore,
    probe_features,
)
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.index import Index
from dra_driver.kube.watch import list_watch
from dra_driver.quantity import parse_bytes

log = logging.getLogger(__name__)

COMPONENT = "controller"
REPROBE_EVERY = 600.0

BACKENDS = Gauge("gvirtus_dra_controller_backends", "Backend agents by state.", ["state"])
DEVICES = Gauge("gvirtus_dra_controller_gpus", "GPUs of answering agents by verdict.", ["verdict"])
WITHDRAWN = Gauge(
    "gvirtus_dra_controller_withdrawn_gpus",
    "GPUs kept off scheduling after a failed binding, until judged ready again.",
)
ROUND_SECONDS = Histogram(
    "gvirtus_dra_controller_reconcile_duration_seconds",
    "Time of one poll-and-publish round.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class Withdrawal:
    """Why and since when (``clock``) a GPU is kept off scheduling."""

    reason: str
    since: float


@dataclass(frozen=True)
class AgentPod:
    """A backend agent pod that can be polled."""

    node: str
    ip: str
    created: str


def agent_pod(obj: Obj) -> AgentPod | None:
    """The pollable part of an agent pod (None while unscheduled, unaddressed or deleting)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp") or not spec.get("nodeName") or not status.get("podIP"):
        return None
    return AgentPod(
        node=spec["nodeName"], ip=status["podIP"], created=meta.get("creationTimestamp", "")
    )


def node_info(obj: Obj) -> NodeInfo:
    """What a pool needs of a Node."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return NodeInfo(
        name=meta["name"],
        uid=meta.get("uid", ""),
        zone=labels.get("topology.kubernetes.io/zone"),
        region=labels.get("topology.kubernetes.io/region"),
    )


def _unix(stamp: str) -> float | None:
    try:
        return (
            datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return None


class Reconciler:
    """Runs while this replica leads."""

    def __init__(
        self,
        *,
        settings: ControllerSettings,
        kube: KubeClient,
        events: EventRecorder,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.events = events
        self.clock = clock
        self.wall = wall
        self.agents: Index[AgentPod] = Index(agent_pod)
        self.nodes: Index[NodeInfo] = Index(node_info)
        self.slices = SliceStore(driver=settings.driver_name)
        self.publisher = Publisher(
            kube=kube, store=self.slices, concurrency=settings.write_concurrency
        )
        self.poller = Poller(timeout=settings.poll_timeout, concurrency=settings.poll_concurrency)
        self.policy = DevicePolicy(
            sharing=settings.sharing,
            slots=settings.slots,
            capacity_default=parse_bytes(settings.capacity_default),
            capacity_min=parse_bytes(settings.capacity_min),
            capacity_step=parse_bytes(settings.capacity_step),
            fallback=settings.capacity_fallback,
            binding_conditions=settings.binding_conditions,
            binds_to_node=settings.binds_to_node,
        )
        self.claims = ClaimIndex(driver=settings.driver_name)
        self.pods = PodIndex()
        self.status = ClaimStatus(
            kube=kube,
            driver=settings.driver_name,
            claims=self.claims,
            endpoints=self._endpoint,
            verdicts=self._verdict,
            answered=self._answered,
            bound=self._bound,
            withdraw=self._withdraw,
            events=events,
            binding_timeout=settings.binding_timeout,
            concurrency=settings.status_concurrency,
            clock=clock,
            wall=wall,
        )
        self.withdrawn: dict[tuple[str, int], Withdrawal] = {}
        """GPUs whose binding failed, kept off scheduling until judged ready again."""
        self._publishing: dict[str, asyncio.Lock] = {}
        self._endpoints: tuple[int, dict[tuple[str, str], Endpoint]] = (-1, {})
        self._status_signature: tuple[Any, ...] = ()
        self.thresholds = Thresholds(settings.max_connections, settings.max_utilization)
        self.features = Features()
        self.states: dict[str, AgentState] = {}
        self.verdicts: dict[str, dict[int, Verdict]] = {}
        self.absent_since: dict[str, float] = {}
        self.fingerprints: dict[str, Any] = {}
        self.last_round = clock()
        self.rounds = 0
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Watch, probe, then poll and publish every interval until cancelled."""
        s = self.settings
        watches = [
            list_watch(
                kube=self.kube,
                path=f"/api/v1/namespaces/{s.namespace}/pods",
                consumer=self.agents,
                component=COMPONENT,
                resource="pods",
                label_selector=s.agent_selector,
            ),
            list_watch(
                kube=self.kube,
                path="/api/v1/nodes",
                consumer=self.nodes,
                component=COMPONENT,
                resource="nodes",
            ),
            list_watch(
                kube=self.kube,
                path=SLICES_PATH,
                consumer=self.slices,
                component=COMPONENT,
                resource="resourceslices",
                label_selector=self.slices.label_selector,
            ),
            list_watch(
                kube=self.kube,
                path=CLAIMS_PATH,
                consumer=self.claims,
                component=COMPONENT,
                resource="resourceclaims",
            ),
            list_watch(
                kube=self.kube,
                path=PODS_PATH,
                consumer=self.pods,
                component=COMPONENT,
                resource="pods-with-claims",
            ),
        ]
        tasks = [asyncio.create_task(w) for w in watches]
        try:
            for index in (self.agents, self.nodes, self.slices, self.pods):
                await index.synced.wait()
            await self._probe()
            probed = self.clock()
            while True:
                started = self.clock()
                await self.round()
                if len(tasks) == len(watches):
                    tasks.append(asyncio.create_task(self.status.run()))  # verdicts known now
                self._poke_status()
                if self.clock() - probed > REPROBE_EVERY:
                    await self._probe()
                    probed = self.clock()
                await asyncio.sleep(max(0.0, s.poll_interval - (self.clock() - started)))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.poller.close()

    def _poke_status(self) -> None:
        """Wake the claim status writer when a verdict or a published device changed."""
        signature = (
            self.slices.version,
            frozenset(
                (node, index, verdict.key)
                for node, verdicts in self.verdicts.items()
                if (state := self.states.get(node)) is not None and state.inventory is not None
                for index, verdict in verdicts.items()
            ),
        )
        if signature != self._status_signature:
            self._status_signature = signature
            self.status.poke()

    def _endpoint(self, pool: str, device: str) -> Endpoint | None:
        """The published endpoint of a device (rebuilt only when slices changed)."""
        version, found = self._endpoints
        if version != self.slices.version:
            found = {
                (obj["spec"]["pool"]["name"], d["name"]): e
                for obj in self.slices.items.values()
                for d in obj["spec"].get("devices") or []
                if (e := endpoint_of(d)) is not None
            }
            self._endpoints = (self.slices.version, found)
        return found.get((pool, device))

    def _answered(self, pool: str) -> float | None:
        state = self.states.get(pool)
        return state.answered_at if state is not None else None

    def _bound(self, claim: Claim) -> bool:
        return self.pods.any_bound(claim.reserved)

    async def _withdraw(self, pool: str, index: int, reason: str) -> None:
        """Taint (or leave out) a GPU whose binding failed, and publish that at once."""
        key = (pool, index)
        if key not in self.withdrawn:
            log.warning(
                "withdrawing GPU %d of pool %s from scheduling: its binding failed (%s)",
                index,
                pool,
                reason,
            )
        self.withdrawn[key] = Withdrawal(reason=reason, since=self.clock())
        self.fingerprints.pop(pool, None)
        await self._reconcile(pool, self.slices.pools().get(pool, {}), self.clock())

    def _release(self, node: str, verdicts: dict[int, Verdict]) -> None:
        """Give back GPUs whose agent judged them ready after their binding failed."""
        state = self.states.get(node)
        answered = state.answered_at if state is not None else None
        for (pool, index), held in list(self.withdrawn.items()):
            verdict = verdicts.get(index)
            if pool != node or verdict is None or answered is None or answered <= held.since:
                continue
            if verdict.healthy and not verdict.overloaded:
                del self.withdrawn[(pool, index)]
                log.info("GPU %d of pool %s is ready again; scheduling onto it", index, pool)

    def _verdict(self, pool: str, index: int) -> Verdict | None:
        """The current verdict on a GPU; None until its agent has answered."""
        state = self.states.get(pool)
        if state is None or state.inventory is None:
            return None
        return self.verdicts.get(pool, {}).get(index)

    async def _probe(self) -> None:
        try:
            features = await probe_features(self.kube, driver=self.settings.driver_name)
        except errors.KubeError as exc:
            log.warning(
                "cannot probe API server features (%s); detecting dropped fields on write",
                exc.message,
            )
            return
        await self._adopt(features, [])

    async def _adopt(self, features: Features, dropped: list[str]) -> None:
        """Publish with ``features`` from now on; say once what that changes."""
        if features == self.features:
            return
        lost = []
        if self.features.taints and not features.taints:
            lost.append(
                "device taints (DRADeviceTaints): unhealthy GPUs are left out of their pool"
            )
        if self.features.binding and not features.binding and self.policy.binding_conditions:
            lost.append(
                "binding conditions (DRADeviceBindingConditions): pods are bound without "
                "waiting for their backend to be confirmed; claim status is still recorded"
            )
        if self.features.capacity and not features.capacity:
            lost.append(
                "consumable capacity (DRAConsumableCapacity): "
                f"sharing falls back to {self.policy.effective(features)}"
            )
        self.features = features
        self.fingerprints.clear()
        if not lost:
            return
        message = (
            "the API server drops "
            + "; ".join(lost)
            + " (a feature gate is off, or Kubernetes is older than 1.36)"
        )
        log.warning(message, extra={"dropped": dropped})
        if self.settings.pod_name:
            regarding = Regarding("Pod", self.settings.pod_name, namespace=self.settings.namespace)
            await self.events.record(
                regarding, warning=True, reason="GVirtuSFeatureUnavailable", message=message
            )

    async def round(self) -> None:
        """One poll of every agent and publish of every changed pool."""
        started = time.perf_counter()
        now = self.clock()
        self._sync_agents()
        await asyncio.gather(*(self.poller.poll(state) for state in self.states.values()))
        published = self.slices.pools()
        await asyncio.gather(
            *(
                self._reconcile(node, published.get(node, {}), now)
                for node in set(self.states) | set(published)
            )
        )
        self._report(now)
        self.last_round = self.clock()
        self.rounds += 1
        ROUND_SECONDS.observe(time.perf_counter() - started)

    def _sync_agents(self) -> None:
        newest: dict[str, AgentPod] = {}
        for pod in self.agents.items.values():
            if pod.node not in newest or pod.created > newest[pod.node].created:
                newest[pod.node] = pod
        for node in set(self.states) - set(newest):
            del self.states[node]
        for node, pod in newest.items():
            url = f"http://{pod.ip}:{self.settings.agent_port}"
            state = self.states.get(node)
            if state is None or state.url != url:
                self.states[node] = AgentState(node=node, url=url, seen_at=self.clock())

    async def _reconcile(self, node: str, existing: dict[str, Obj], now: float) -> None:
        lock = self._publishing.setdefault(node, asyncio.Lock())
        contended = lock.locked()
        async with lock:
            if contended:  # what we were handed may predate the other publish
                existing = self.slices.pools().get(node, {})
            await self._reconcile_locked(node, existing, now)

    async def _reconcile_locked(self, node: str, existing: dict[str, Obj], now: float) -> None:
        info = self.nodes.items.get(node)
        state = self.states.get(node)
        if info is None or state is None:
            await self._retire(node, existing, now, info)
            return
        self.absent_since.pop(node, None)
        if state.inventory is None:
            return  # never answered since we lead: leave what is published alone
        verdicts = self._judge(node, state, existing, now)
        self._release(node, verdicts)
        withdrawn = {i: w.reason for (p, i), w in self.withdrawn.items() if p == node}
        fingerprint = (self._fingerprint(state, verdicts, info, existing), withdrawn)
        if fingerprint == self.fingerprints.get(node):
            return
        devices = pools.devices(
            inventory=state.inventory,
            node=info,
            verdicts=verdicts,
            policy=self.policy,
            features=self.features,
            withdrawn=withdrawn,
            taint_times=pools.taint_times(existing),
            now=datetime.datetime.fromtimestamp(self.wall(), datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        )
        groups = pools.split(devices, features=self.features)
        try:
            wrote = await self.publisher.publish(
                node=info, groups=groups, existing=existing, features=self.features
            )
        except DroppedFieldsError as exc:
            await self._adopt(exc.features, exc.dropped)
            return
        except errors.KubeError as exc:
            log.warning("publishing pool %s failed (retrying next round): %s", node, exc.message)
            return
        if wrote:
            log.info(
                "published pool",
                extra={"pool": node, "devices": len(devices), "slices": len(groups)},
            )
        else:
            self.fingerprints[node] = fingerprint

    async def _retire(
        self, node: str, existing: dict[str, Obj], now: float, info: NodeInfo | None
    ) -> None:
        """Remove a pool whose node is gone, or whose agent has been gone past the grace period."""
        self.fingerprints.pop(node, None)
        self.verdicts.pop(node, None)
        self.withdrawn = {k: w for k, w in self.withdrawn.items() if k[0] != node}
        if not existing:
            self.absent_since.pop(node, None)
            return
        since = self.absent_since.setdefault(node, now)
        if info is not None and now - since < self.settings.grace_period:
            return
        try:
            await self.publisher.remove(existing)
        except errors.KubeError as exc:
            log.warning("removing pool %s failed (retrying next round): %s", node, exc.message)
            return
        self.absent_since.pop(node, None)
        why = "its node is gone" if info is None else f"no backend agent for {now - since:.0f}s"
        log.info("removed pool %s: %s", node, why)
        if info is not None:
            await self.events.record(
                Regarding("Node", node, uid=info.uid),
                warning=False,
                reason="GVirtuSPoolRemoved",
                message=f"GVirtuS pool {node} removed: {why}",
            )

    def _judge(
        self, node: str, state: AgentState, existing: dict[str, Obj], now: float
    ) -> dict[int, Verdict]:
        assert state.inventory is not None
        problem = state.problem(now=now, grace=self.settings.grace_period)
        previous = self.verdicts.get(node) or self._restore(existing)
        wall = self.wall()
        verdicts = {
            gpu.index: judge(
                gpu,
                agent_problem=problem,
                thresholds=self.thresholds,
                previous=previous.get(gpu.index),
                now=wall,
                no_execute_after=self.settings.no_execute_after,
            )
            for gpu in state.inventory.gpus
        }
        self.verdicts[node] = verdicts
        for gpu in state.inventory.gpus:
            self._announce(node, gpu.index, gpu.uuid, previous.get(gpu.index), verdicts[gpu.index])
        return verdicts

    def _restore(self, existing: dict[str, Obj]) -> dict[int, Verdict]:
        """Verdicts as published, so a new leader keeps eviction clocks and stays quiet."""
        restored: dict[int, Verdict] = {}
        for (device, key, effect), added in pools.taint_times(existing).items():
            index = int(device.split("-")[1])
            if key == pools.UNHEALTHY_TAINT and (since := _unix(added)) is not None:
                earlier = restored.get(index)
                if earlier is None or (earlier.since or since) > since:
                    restored[index] = Verdict(
                        healthy=False, reason="restored", since=since, evict=effect == "NoExecute"
                    )
        return restored

    def _announce(
        self, node: str, index: int, uuid: str, before: Verdict | None, after: Verdict
    ) -> None:
        info = self.nodes.items.get(node)
        if info is None or before is None or (before.reason == "restored" and not after.healthy):
            return
        regarding = Regarding("Node", node, uid=info.uid)
        where = f"GPU {index} ({uuid}) of GVirtuS pool {node}"
        if before.healthy and not after.healthy:
            event = (
                True,
                "GVirtuSBackendUnhealthy",
                f"{where} is unhealthy: {after.reason}: {after.message}",
            )
        elif not before.healthy and after.healthy:
            event = (False, "GVirtuSBackendRecovered", f"{where} serves again")
        elif after.evict and not before.evict:
            event = (
                True,
                "GVirtuSBackendEvicting",
                f"{where} unhealthy for too long: evicting its pods",
            )
        elif after.overloaded and not before.overloaded:
            event = (
                False,
                "GVirtuSBackendOverloaded",
                f"{where} is overloaded ({after.overloaded})",
            )
        else:
            return
        log.log(logging.WARNING if event[0] else logging.INFO, event[2])
        task = asyncio.create_task(
            self.events.record(regarding, warning=event[0], reason=event[1], message=event[2])
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fingerprint(
        self,
        state: AgentState,
        verdicts: dict[int, Verdict],
        info: NodeInfo,
        existing: dict[str, Obj],
    ) -> tuple[Any, ...]:
        """Everything the pool's slices depend on; load figures only through the verdicts."""
        assert state.inventory is not None
        inventory = state.inventory
        identity = tuple(
            (g.index, g.uuid, g.model, g.memory_bytes, g.driver_version, g.cuda_version, g.port)
            for g in inventory.gpus
        )
        versions = tuple(
            sorted((name, o["metadata"].get("resourceVersion")) for name, o in existing.items())
        )
        return (
            identity,
            inventory.address,
            inventory.simulated,
            tuple(sorted((i, v.key) for i, v in verdicts.items())),
            info,
            self.features,
            versions,
        )

    def _report(self, now: float) -> None:
        grace = self.settings.grace_period
        states = list(self.states.values())
        BACKENDS.labels("answering").set(sum(1 for s in states if s.failing_since is None))
        BACKENDS.labels("failing").set(
            sum(
                1
                for s in states
                if s.failing_since is not None and not s.problem(now=now, grace=grace)
            )
        )
        BACKENDS.labels("gone").set(sum(1 for s in states if s.problem(now=now, grace=grace)))
        counts = {"healthy": 0, "unhealthy": 0, "overloaded": 0}
        for verdicts in self.verdicts.values():
            for verdict in verdicts.values():
                counts[
                    "unhealthy"
                    if not verdict.healthy
                    else "overloaded"
                    if verdict.overloaded
                    else "healthy"
                ] += 1
        for name, count in counts.items():
            DEVICES.labels(name).set(count)
        WITHDRAWN.set(len(self.withdrawn))
