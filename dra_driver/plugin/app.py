"""Wiring of the kubelet plugin: builds the parts, runs them, shuts them down in order.

Start-up order: API client, recovery of on-disk state (before any call can arrive),
the slice watch, the DRA socket, the registration socket, the HTTP endpoint. A
SIGTERM or SIGINT withdraws the registration first and removes both sockets before
exiting, because new plugin pods cannot remove an old pod's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from dra_driver import __version__, httpserver
from dra_driver.kube import errors as kube_errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.watch import list_watch
from dra_driver.lifecycle import freeze_startup_objects, stop_on_signals
from dra_driver.plugin.checkpoint import CheckpointFile
from dra_driver.plugin.driver import servicers
from dra_driver.plugin.health import HealthService
from dra_driver.plugin.locking import Serializer
from dra_driver.plugin.probes import SocketProbe
from dra_driver.plugin.registration import RegistrationService
from dra_driver.plugin.server import PluginServer
from dra_driver.plugin.settings import PluginSettings
from dra_driver.plugin.slice_cache import SLICES_PATH, SliceCache
from dra_driver.plugin.state import State

log = logging.getLogger(__name__)

COMPONENT = "kubelet-plugin"
FRONTEND_LABEL = "gvirtus.io/frontend.allowed"


class FatalError(Exception):
    """A part of the plugin stopped working; the process must exit."""


async def run(settings: PluginSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when no event is given).

    Raises:
        FatalError: a background part failed.
        KubeError: the API credentials could not be loaded.
        SocketError: a socket path is unusable.
    """
    log.info(
        "starting kubelet plugin",
        extra={
            "version": __version__,
            "driver": settings.driver_name,
            "node": settings.node_name,
            "pod_uid": settings.pod_uid or "",
            "data_dir": str(settings.data_dir),
        },
    )
    stop = stop or stop_on_signals()
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component=COMPONENT)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(kube.close)
        settings.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        serializer = Serializer(lock_file=settings.lock_file)
        serializer.open()
        stack.callback(serializer.close)
        slices = SliceCache(driver=settings.driver_name, kube=kube)
        state = State(
            driver=settings.driver_name,
            kube=kube,
            slices=slices,
            serializer=serializer,
            checkpoint=CheckpointFile(path=settings.checkpoint_file, driver=settings.driver_name),
            claims_dir=settings.claims_dir,
            cdi_root=settings.cdi_root,
        )
        await state.recover()
        watch = asyncio.create_task(
            list_watch(
                kube=kube,
                path=SLICES_PATH,
                consumer=slices,
                component=COMPONENT,
                resource="resourceslices",
                field_selector=slices.field_selector,
            ),
            name="slice-watch",
        )
        stack.push_async_callback(_cancel, watch)
        node_check = asyncio.create_task(
            _check_node(kube=kube, node=settings.node_name), name="node-check"
        )
        stack.push_async_callback(_cancel, node_check)

        dra_v1, dra_v1beta1 = servicers(state=state)
        registration = RegistrationService(
            driver=settings.driver_name, endpoint=settings.dra_socket
        )
        server = PluginServer(
            dra_socket=settings.dra_socket,
            registration_socket=settings.registration_socket,
            dra_v1=dra_v1,
            dra_v1beta1=dra_v1beta1,
            health=HealthService(state=state, slices=slices, interval=settings.health_interval),
            registration=registration,
        )
        stack.push_async_callback(server.stop)
        await server.start()

        probe = SocketProbe(
            dra_socket=settings.dra_socket, registration_socket=settings.registration_socket
        )
        stack.push_async_callback(probe.close)
        if settings.metrics_port:
            runner = await httpserver.start(
                address=settings.metrics_address,
                port=settings.metrics_port,
                health={"sockets": probe.check},
                ready={
                    "sockets": probe.check,
                    "checkpoint": _async(state.checkpoint_problem),
                    "slices": _async(
                        lambda: None if slices.synced.is_set() else "slice cache not synced"
                    ),
                },
            )
            stack.push_async_callback(runner.cleanup)
        freeze_startup_objects()
        await _until_stopped(stop=stop, watch=watch, server=server)
        log.info("stopping: withdrawing registration and removing sockets")


async def _until_stopped(
    *, stop: asyncio.Event, watch: asyncio.Task[None], server: PluginServer
) -> None:
    stopped = asyncio.create_task(stop.wait())
    serving = asyncio.create_task(server.wait())
    done, pending = await asyncio.wait(
        {stopped, watch, serving}, return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending - {watch}:
        task.cancel()
    if watch in done:
        raise FatalError(f"slice watch ended: {watch.exception()!r}")
    if serving in done and stopped not in done:
        raise FatalError("the gRPC server stopped unexpectedly")


def _async(check: Callable[[], str | None]) -> httpserver.Check:
    async def wrapper() -> str | None:
        return check()

    return wrapper


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _check_node(*, kube: KubeClient, node: str) -> None:
    """Warn early about a node no allocation can reach; never fatal."""
    try:
        found = await kube.request("GET", f"/api/v1/nodes/{node}")
    except kube_errors.NotFoundError:
        log.warning("node %s does not exist; check --node-name", node)
        return
    except kube_errors.KubeError as exc:
        log.info("could not read node %s (%s); skipping the label check", node, exc.message)
        return
    labels = found.get("metadata", {}).get("labels") or {}
    if labels.get(FRONTEND_LABEL) != "true":
        log.warning(
            "node %s lacks label %s=true; GVirtuS devices are published for such nodes only, "
            "so no claim will be allocated here",
            node,
            FRONTEND_LABEL,
        )
