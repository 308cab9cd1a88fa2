"""Wiring of the kubelet plugin: builds the parts, runs them, shuts them down in order.

Start-up order: the DRA socket, then the registration socket (the kubelet dials the
DRA socket as soon as it finds the registration), then everything slow: recovery of
on-disk state, the API client (the ``kubernetes`` library is imported only now), the
slice watch and the HTTP endpoint. A kubelet whose call finds no plugin backs off for
about a minute, so the sockets come first; calls that arrive meanwhile wait for what
they need (:mod:`dra_driver.plugin.readiness`). This module therefore imports nothing
slow at module level: what it imports is what the plugin loads before it serves.

A SIGTERM or SIGINT withdraws the registration first and removes both sockets before
exiting, because new plugin pods cannot remove an old pod's sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from dra_driver import __version__
from dra_driver.kube import errors as kube_errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import NODES, RESOURCE_SLICES
from dra_driver.kube.watch import list_watch
from dra_driver.lifecycle import freeze_startup_objects, stop_on_signals
from dra_driver.plugin.checkpoint import CheckpointFile
from dra_driver.plugin.driver import servicers
from dra_driver.plugin.faults import pause_point
from dra_driver.plugin.health import HealthReporter, HealthV1, HealthV1alpha1
from dra_driver.plugin.locking import Serializer
from dra_driver.plugin.probes import SocketProbe
from dra_driver.plugin.registration import RegistrationService
from dra_driver.plugin.server import PluginServer
from dra_driver.plugin.settings import PluginSettings
from dra_driver.plugin.slice_cache import SliceCache
from dra_driver.plugin.state import State

if TYPE_CHECKING:
    from aiohttp import web

    from dra_driver import httpserver

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
    async with contextlib.AsyncExitStack() as stack:
        state = _local_state(settings=settings, stack=stack)
        server = _server(settings=settings, state=state)
        stack.push_async_callback(server.stop)
        await server.start()

        await state.recover()
        await pause_point("startup:api-client")
        watch = await _connect(settings=settings, state=state, stack=stack)
        if settings.metrics_port:
            await _serve_http(settings=settings, state=state, stack=stack)
        freeze_startup_objects()
        log.info("ready: on-disk state recovered, API client connected")
        await _until_stopped(stop=stop, watch=watch, server=server)
        log.info("stopping: withdrawing registration and removing sockets")


def _local_state(*, settings: PluginSettings, stack: contextlib.AsyncExitStack) -> State:
    """The prepared claims on this node, without an API client yet."""
    settings.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    serializer = Serializer(lock_file=settings.lock_file)
    serializer.open()
    stack.callback(serializer.close)
    return State(
        driver=settings.driver_name,
        slices=SliceCache(driver=settings.driver_name),
        serializer=serializer,
        checkpoint=CheckpointFile(path=settings.checkpoint_file, driver=settings.driver_name),
        claims_dir=settings.claims_dir,
        cdi_root=settings.cdi_root,
    )


def _server(*, settings: PluginSettings, state: State) -> PluginServer:
    dra_v1, dra_v1beta1 = servicers(state=state)
    health = HealthReporter(state=state, slices=state.slices, interval=settings.health_interval)
    return PluginServer(
        dra_socket=settings.dra_socket,
        registration_socket=settings.registration_socket,
        dra_v1=dra_v1,
        dra_v1beta1=dra_v1beta1,
        health_v1=HealthV1(reporter=health),
        health_v1alpha1=HealthV1alpha1(reporter=health),
        registration=RegistrationService(driver=settings.driver_name, endpoint=settings.dra_socket),
    )


async def _connect(
    *, settings: PluginSettings, state: State, stack: contextlib.AsyncExitStack
) -> asyncio.Task[None]:
    """Connect the API client, hand it to the state, start the slice watch (returned)."""
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component=COMPONENT)
    stack.push_async_callback(kube.close)
    state.connect(kube)
    watch = asyncio.create_task(
        list_watch(
            kube=kube,
            resource=RESOURCE_SLICES,
            consumer=state.slices,
            component=COMPONENT,
            field_selector=state.slices.field_selector,
        ),
        name="slice-watch",
    )
    stack.push_async_callback(_cancel, watch)
    node_check = asyncio.create_task(
        _check_node(kube=kube, node=settings.node_name), name="node-check"
    )
    stack.push_async_callback(_cancel, node_check)
    return watch


async def _serve_http(
    *, settings: PluginSettings, state: State, stack: contextlib.AsyncExitStack
) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz``.

    aiohttp's server is not needed to answer the kubelet: it is imported now, in a
    worker thread, so calls that waited for the API client are not held up by it.
    """
    http: ModuleType = await asyncio.to_thread(importlib.import_module, "dra_driver.httpserver")
    probe = SocketProbe(
        dra_socket=settings.dra_socket, registration_socket=settings.registration_socket
    )
    stack.push_async_callback(probe.close)
    slices = state.slices
    runner: web.AppRunner = await http.start(
        address=settings.metrics_address,
        port=settings.metrics_port,
        health={"sockets": probe.check},
        ready={
            "sockets": probe.check,
            "startup": _async(state.readiness.problem),
            "checkpoint": state.checkpoint_problem,
            "slices": _async(lambda: None if slices.synced.is_set() else "slice cache not synced"),
        },
    )
    stack.push_async_callback(runner.cleanup)


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
        found = await kube.get(NODES, node)
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
