"""Wiring of the backend agent: GPUs, one backend each, the sampling loop, the API.

Start-up: find the GPUs (NVML, or the simulator's declared ones), start a backend per
GPU, wait until they listen (at most the start grace), take a first sample, then
serve. SIGTERM stops the API first, then every
backend, so frontends see their connections close rather than hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from backend import api
from backend.gpus import GPUSource
from backend.health import Limits
from backend.monitor import Monitor
from backend.nvml import NVMLSource
from backend.settings import AgentSettings
from backend.simulator import SimulatedGPUs, standin_command
from backend.supervisor import BackendCommand, BackendProcess
from dra_driver import __version__
from dra_driver.errors import StartupError
from dra_driver.lifecycle import freeze_startup_objects, stop_on_signals
from dra_driver.models import log4cplus_level
from dra_driver.quantity import parse_bytes

log = logging.getLogger(__name__)


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


async def _sample_forever(monitor: Monitor, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(interval)
        try:
            await monitor.sample()
        except Exception:
            log.exception("sampling failed; trying again in %.1fs", interval)
