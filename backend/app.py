"""Wiring of the backend agent: GPUs, one backend each, access control, sampling, the API.

Start-up: find the GPUs (NVML, or the simulator's declared ones), close their
backend ports to everyone (access control, unless turned off) and start watching
this node's access list, start a backend per GPU (through a launcher that drops the
agent's capabilities), wait until they listen (at most the start grace), take a
first sample, then serve. SIGTERM stops the API first, then every backend, so
frontends see their connections close rather than hang, then leaves the ports
closed to everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from backend import api, nftables
from backend.access import AccessControl, AccessOff
from backend.gpus import GPUSource
from backend.health import Limits
from backend.monitor import Monitor
from backend.nvml import NVMLSource
from backend.settings import AgentSettings
from backend.simulator import SimulatedGPUs, standin_command
from backend.supervisor import BackendCommand, BackendProcess
from dra_driver import __version__
from dra_driver.errors import StartupError
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import CONFIG_MAPS
from dra_driver.kube.watch import list_watch
from dra_driver.lifecycle import freeze_startup_objects, stop_on_signals
from dra_driver.models import AccessMode, AccessReport, access_config_map_name, log4cplus_level
from dra_driver.quantity import parse_bytes

log = logging.getLogger(__name__)

COMPONENT = "backend-agent"
LAUNCHER = (sys.executable, "-I", "-m", "backend.unprivileged")
"""Every backend starts without the agent's capabilities (see :mod:`backend.unprivileged`)."""


def _source(settings: AgentSettings) -> tuple[GPUSource, SimulatedGPUs | None]:
    if settings.simulate_gpus:
        simulated = SimulatedGPUs(
            node=settings.node_name,
            count=settings.simulate_gpus,
            model=settings.simulate_model,
            memory_bytes=parse_bytes(settings.simulate_memory),
            driver_version=settings.simulate_driver_version,
            cuda_version=settings.simulate_cuda_version,
        )
        return simulated, simulated
    return NVMLSource(), None


def _backends(settings: AgentSettings, source: GPUSource, simulated: bool) -> list[BackendProcess]:
    gpus = source.discover()
    if not gpus:
        raise StartupError("NVML reports no GPU on this node; nothing to serve")
    ports = {gpu.index: settings.backend_base_port + gpu.index for gpu in gpus}
    if max(ports.values()) > 65535:
        raise StartupError("backend ports would run past 65535; lower --backend-base-port")
    return [
        BackendProcess(gpu=g, port=ports[g.index], command=_command(settings, simulated))
        for g in gpus
    ]


def _command(settings: AgentSettings, simulated: bool) -> BackendCommand:
    real = BackendCommand(
        executable=settings.backend_executable,
        gvirtus_home=settings.gvirtus_home,
        log_level=log4cplus_level(settings.gvirtus_log_level),
        plugins=settings.plugin_list,
        state_dir=settings.state_dir,
        backoff_max=settings.restart_backoff_max,
        launcher=LAUNCHER,
    )
    if not simulated:
        return real
    return standin_command(
        base=real, open_files=settings.simulate_open_files, listen_address=settings.bind_address
    )


async def run(settings: AgentSettings, *, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when no event is given)."""
    stop = stop or stop_on_signals()
    source, simulator = _source(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(source.close)
        backends = _backends(settings, source, simulated=simulator is not None)
        # Registered before the backends' stops, so it runs after them (the stack unwinds
        # in reverse): the ports stay closed once the backends are gone.
        access_report = await _access(settings, [b.port for b in backends], stack)
        for backend in backends:
            stack.push_async_callback(backend.stop)
            try:
                await backend.start()
            except OSError as exc:
                raise StartupError(
                    f"cannot serve GPU {backend.gpu.index} on port {backend.port}: {exc}"
                ) from exc
        monitor = Monitor(
            node=settings.node_name,
            address=settings.address,
            simulated=simulator is not None,
            backends=backends,
            source=source,
            access=access_report,
            limits=Limits(
                restart_after=settings.restart_after_samples,
                leak_threshold=settings.leak_restart_threshold,
                start_grace=settings.start_grace,
            ),
        )
        await monitor.settle(timeout=settings.start_grace)
        await monitor.sample()
        app = api.build(
            monitor=monitor, simulator=simulator, stale_after=settings.probe_interval * 5 + 5
        )
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        try:
            await web.TCPSite(
                runner, settings.bind_address, settings.port, reuse_address=True
            ).start()
        except OSError as exc:
            raise StartupError(
                f"cannot serve the API on {settings.bind_address}:{settings.port}: {exc}"
            ) from exc
        log.info(
            "backend agent serving",
            extra={
                "version": __version__,
                "node": settings.node_name,
                "gpus": len(backends),
                "simulated": simulator is not None,
                "api": f"{settings.bind_address}:{settings.port}",
            },
        )
        freeze_startup_objects()
        sampling = asyncio.create_task(_sample_forever(monitor, settings.probe_interval, stop))
        await stop.wait()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        log.info("stopping: closing the API and the backends")


async def _access(
    settings: AgentSettings, ports: list[int], stack: contextlib.AsyncExitStack
) -> Callable[[], AccessReport]:
    """Close the backend ports to all but this node's access list (or say loudly it is off).

    Raises:
        StartupError: access control is on and the packet filter cannot be changed.
    """
    if settings.access_control is AccessMode.OFF:
        off = AccessOff(node=settings.node_name, ports=ports, nft=_optional_nft())
        await off.open_ports()
        _background(stack, off.remind(), name="access-off-reminder")
        return off.report
    try:
        control = AccessControl(node=settings.node_name, ports=ports, nft=nftables.find_nft())
        await control.close_ports()
    except nftables.PacketFilterError as exc:
        raise StartupError(f"backend access control: {exc}") from exc
    stack.push_async_callback(control.stop)
    kube = await KubeClient.connect(kubeconfig=settings.kubeconfig, component=COMPONENT)
    stack.push_async_callback(kube.close)
    _background(stack, control.run(), name="access-apply")
    _background(
        stack,
        list_watch(
            kube=kube,
            resource=CONFIG_MAPS,
            consumer=control,
            component=COMPONENT,
            namespace=settings.namespace,
            field_selector=f"metadata.name={access_config_map_name(settings.node_name)}",
        ),
        name="access-watch",
    )
    return control.report


def _optional_nft() -> str | None:
    try:
        return nftables.find_nft()
    except nftables.PacketFilterError:
        return None


def _background(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], *, name: str
) -> None:
    """Run ``work`` until the stack unwinds; a crash of it is logged, never silent."""
    task = asyncio.create_task(work, name=name)

    def ended(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("%s stopped", name, exc_info=done.exception())

    task.add_done_callback(ended)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):  # a crash was logged
            await task

    stack.push_async_callback(cancel)


async def _sample_forever(monitor: Monitor, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(interval)
        try:
            await monitor.sample()
        except Exception:
            log.exception("sampling failed; trying again in %.1fs", interval)
