"""Wiring of the labeler: one list-watch of Nodes, labels added as nodes appear."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dra_driver import __version__, httpserver
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import NODES
from dra_driver.kube.watch import list_watch
from dra_driver.lifecycle import stop_on_signals
from labeler.labels import Labeler
from labeler.settings import LabelerSettings

log = logging.getLogger(__name__)


async def run(settings: LabelerSettings, *, stop: asyncio.Event | None = None) -> None:
    """Label nodes until ``stop`` (or SIGTERM/SIGINT)."""
    stop = stop or stop_on_signals()
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component="labeler")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)
        watch = asyncio.create_task(
            list_watch(
                kube=kube,
                resource=NODES,
                consumer=Labeler(kube=kube),
                component="labeler",
            )
        )

        async def watching() -> str | None:
            return None if not watch.done() else "the node watch ended"

        if settings.metrics_port:
            runner = await httpserver.start(
                address=settings.metrics_address,
                port=settings.metrics_port,
                health={"watch": watching},
                ready={"watch": watching},
            )
            stack.push_async_callback(runner.cleanup)
        log.info("labeler running", extra={"version": __version__})
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({watch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        watch.cancel()
        stopped.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
