"""Wiring of the controller: API client, leader election, the reconcile loop, probes.

Every replica serves ``/metrics`` and ``/healthz``; only the one holding the Lease
runs the loop. Losing the Lease cancels the loop at once; SIGTERM releases the
Lease so a standby replica takes over without waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dra_driver import __version__, httpserver
from dra_driver.controller.leader import LeaderElector
from dra_driver.controller.reconciler import Reconciler
from dra_driver.controller.settings import ControllerSettings
from dra_driver.kube.client import KubeClient
from dra_driver.kube.events import EventRecorder
from dra_driver.lifecycle import freeze_startup_objects, raise_file_limit, stop_on_signals

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
        },
    )
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component="controller")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)
        events = EventRecorder(kube=kube, component=COMPONENT)
        current: list[Reconciler] = []

        async def lead() -> None:
            reconciler = Reconciler(settings=settings, kube=kube, events=events)
            current[:] = [reconciler]
            try:
                await reconciler.run()
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
