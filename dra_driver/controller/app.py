"""Wiring of the controller: API client, leader election, the owners of the loop, probes.

Every replica serves ``/metrics`` and ``/healthz``; only the one holding the Lease
runs the loop. Losing the Lease cancels the loop at once; SIGTERM releases the
Lease so a standby replica takes over without waiting for it to expire.

While leading, the work is split between owners, each wired here once:

* informers (:mod:`informers`): agent pods, nodes, our slices, claims, pods,
  DeviceTaintRules (v1, else v1beta2, else none);
* :class:`agents.Agents`: one state per node's agent, polled by :class:`poller.Poller`;
* :class:`tracker.HealthTracker`: the verdict on every GPU, and withdrawals;
* :class:`features.FeatureGates`: which gated fields the API server keeps;
* :class:`pool_sync.PoolSync`: each pool's desired slices (:mod:`pools`) published
  by :class:`slices.Publisher`;
* :class:`claimstatus.ClaimStatus`: claims' device status, reading a
  :class:`view.DeviceView`;
* :class:`drains.Drains`: admins' DeviceTaintRules on our devices, in metrics and
  Events;
* :class:`access.AccessPublisher`: who may connect to each backend, woken by the
  claim and pod watches directly, beside the rounds;
* :class:`loop.Loop`: the rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

from dra_driver import __version__, httpserver
from dra_driver.controller.access import LABEL_SELECTOR as ACCESS_SELECTOR
from dra_driver.controller.access import AccessPublisher
from dra_driver.controller.agents import Agents
from dra_driver.controller.claims import ClaimIndex
from dra_driver.controller.claimstatus import ClaimStatus
from dra_driver.controller.drains import DrainRules, Drains
from dra_driver.controller.features import FeatureGates, Features
from dra_driver.controller.health import Thresholds
from dra_driver.controller.informers import Informer
from dra_driver.controller.leader import LeaderElector
from dra_driver.controller.loop import Loop
from dra_driver.controller.pods import PodIndex
from dra_driver.controller.poller import Poller
from dra_driver.controller.pool_sync import PoolSync
from dra_driver.controller.pools import DevicePolicy, NodeInfo, node_info
from dra_driver.controller.scheduler import allocator_features, describe
from dra_driver.controller.settings import ControllerSettings
from dra_driver.controller.slices import Publisher, SliceStore
from dra_driver.controller.tracker import HealthTracker
from dra_driver.controller.view import DeviceView
from dra_driver.kube.client import KubeClient
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.index import Index
from dra_driver.kube.resources import (
    CONFIG_MAPS,
    DEVICE_TAINT_RULES,
    DEVICE_TAINT_RULES_V1BETA2,
    NODES,
    PODS,
    RESOURCE_CLAIMS,
    RESOURCE_SLICES,
)
from dra_driver.lifecycle import freeze_startup_objects, raise_file_limit, stop_on_signals
from dra_driver.quantity import parse_bytes

log = logging.getLogger(__name__)

COMPONENT = "gvirtus-dra-controller"


async def run(settings: ControllerSettings, *, stop: asyncio.Event | None = None) -> None:
    """Campaign and, while leading, reconcile, until ``stop`` (or SIGTERM/SIGINT)."""
    stop = stop or stop_on_signals()
    raise_file_limit()
    log.info(
        "starting controller",
        extra={
            "version": __version__,
            "identity": settings.identity,
            "namespace": settings.namespace,
            "sharing": settings.sharing.value,
            "scheduler": settings.scheduler.value,
        },
    )
    if mode := describe(scheduler=settings.scheduler, gates=settings.kai_gates):
        log.warning(mode)
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component="controller")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)
        events = EventRecorder(kube=kube, component=COMPONENT)
        current: list[Loop] = []

        async def lead() -> None:
            loop, access = wire(settings=settings, kube=kube, events=events)
            current[:] = [loop]
            try:
                # Either ending (or losing the Lease cancelling both) ends the other.
                async with asyncio.TaskGroup() as group:
                    group.create_task(loop.run(), name="loop")
                    group.create_task(access.run(), name="access")
            finally:
                current.clear()

        async def loop_alive() -> str | None:
            if not current:
                return None  # standing by is healthy
            stalled = time.monotonic() - current[0].last_round
            limit = settings.poll_interval * 5 + settings.poll_timeout + 30
            return f"no reconcile round for {stalled:.0f}s" if stalled > limit else None

        if settings.metrics_port:
            runner = await httpserver.start(
                address=settings.metrics_address,
                port=settings.metrics_port,
                health={"loop": loop_alive},
                ready={"loop": loop_alive},
            )
            stack.push_async_callback(runner.cleanup)
        elector = LeaderElector(
            kube=kube,
            namespace=settings.namespace,
            name=settings.lease_name,
            identity=settings.identity,
            lease_duration=settings.lease_duration,
            renew_deadline=settings.renew_deadline,
            retry_period=settings.retry_period,
        )
        freeze_startup_objects()
        await elector.run(lead, stop=stop)
        log.info("stopped")


def policy_of(settings: ControllerSettings) -> DevicePolicy:
    """How GPUs become devices, from the settings."""
    return DevicePolicy(
        sharing=settings.sharing,
        slots=settings.slots,
        capacity_default=parse_bytes(settings.capacity_default),
        capacity_min=parse_bytes(settings.capacity_min),
        capacity_step=parse_bytes(settings.capacity_step),
        fallback=settings.capacity_fallback,
        binding_conditions=settings.binding_conditions,
        binds_to_node=settings.binds_to_node,
        allocator=allocator_features(scheduler=settings.scheduler, gates=settings.kai_gates),
    )


def wire(
    *,
    settings: ControllerSettings,
    kube: KubeClient,
    events: EventRecorder,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> tuple[Loop, AccessPublisher]:
    """The leader's owners, connected once; see the module docstring."""
    s = settings
    policy = policy_of(s)
    nodes: Index[NodeInfo] = Index(node_info)
    agents = Agents(port=s.agent_port, daemonset=s.agent_daemonset, clock=clock)
    store = SliceStore(driver=s.driver_name)
    claims = ClaimIndex(driver=s.driver_name)
    pods = PodIndex()
    pod = Regarding("Pod", s.pod_name, namespace=s.namespace) if s.pod_name else None
    gates = FeatureGates(
        kube=kube,
        driver=s.driver_name,
        events=events,
        pod=pod,
        uses_binding_conditions=s.binding_conditions,
        fallback_sharing=policy.effective(dataclasses.replace(Features(), capacity=False)),
    )
    tracker = HealthTracker(
        driver=s.driver_name,
        thresholds=Thresholds(s.max_connections, s.max_utilization),
        grace=s.grace_period,
        no_execute_after=s.no_execute_after,
        nodes=nodes,
        events=events,
        clock=clock,
        wall=wall,
    )
    pool_sync = PoolSync(
        driver=s.driver_name,
        agents=agents,
        nodes=nodes,
        tracker=tracker,
        gates=gates,
        policy=policy,
        store=store,
        publisher=Publisher(kube=kube, store=store, concurrency=s.write_concurrency),
        events=events,
        grace=s.grace_period,
        clock=clock,
        wall=wall,
    )
    view = DeviceView(driver=s.driver_name, store=store, tracker=tracker, agents=agents)
    status = ClaimStatus(
        kube=kube,
        driver=s.driver_name,
        claims=claims,
        pods=pods,
        devices=view,
        withdrawer=pool_sync,
        events=events,
        binding_timeout=s.binding_timeout,
        concurrency=s.status_concurrency,
        clock=clock,
        wall=wall,
    )
    rules = DrainRules(driver=s.driver_name)
    drains = Drains(
        driver=s.driver_name,
        rules=rules,
        store=store,
        nodes=nodes,
        events=events,
        honoured=policy.allocator.taints,
    )
    access = AccessPublisher(
        kube=kube,
        namespace=s.namespace,
        claims=claims,
        pods=pods,
        agents=agents,
        nodes=nodes,
        events=events,
        interval=s.poll_interval,
        node_addresses=s.access_node_addresses,
        concurrency=s.write_concurrency,
    )
    watches = (
        Informer(
            PODS,
            agents.pods,
            synced=agents.pods.synced,
            namespace=s.namespace,
            label_selector=s.agent_selector,
        ),
        Informer(NODES, nodes, synced=nodes.synced),
        Informer(RESOURCE_SLICES, store, synced=store.synced, label_selector=store.label_selector),
        Informer(RESOURCE_CLAIMS, access.watching(claims)),
        Informer(PODS, access.watching(pods), synced=pods.synced),
        Informer(
            CONFIG_MAPS,
            access.store,
            namespace=s.namespace,
            label_selector=ACCESS_SELECTOR,
        ),
        Informer(
            DEVICE_TAINT_RULES,
            rules,
            fallbacks=(DEVICE_TAINT_RULES_V1BETA2,),
            unserved=(
                "admin drains cannot be seen (1.36 serves them only with the "
                "DRADeviceTaintRules gate and resource.k8s.io/v1beta2 on; 1.35 not by default)"
            ),
        ),
    )
    loop = Loop(
        kube=kube,
        watches=watches,
        gates=gates,
        agents=agents,
        poller=Poller(timeout=s.poll_timeout, concurrency=s.poll_concurrency),
        pools=pool_sync,
        tracker=tracker,
        view=view,
        status=status,
        drains=drains,
        interval=s.poll_interval,
        grace=s.grace_period,
        clock=clock,
    )
    return loop, access
