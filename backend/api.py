"""The agent's HTTP API: inventory, metrics, health and (in simulator mode) control.

``GET /v1/inventory`` answers the latest sample with an ``ETag``; a poller that sends
it back in ``If-None-Match`` gets ``304 Not Modified`` while nothing changed, so a
controller polling a thousand nodes a second parses only what moved.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from backend.gpus import Usage
from backend.monitor import Monitor
from backend.simulator import Fault, NotRunningError, SimulatedGPUs, inject, set_listening
from dra_driver.models import INVENTORY_PATH

MONITOR = web.AppKey("monitor", Monitor)
SIMULATOR = web.AppKey("simulator", SimulatedGPUs)
STALE_AFTER = web.AppKey("stale_after", float)


async def inventory(request: web.Request) -> web.StreamResponse:
    """The latest inventory, or 304 when the caller has it already."""
    snapshot = request.app[MONITOR].snapshot
    if snapshot is None:
        return web.Response(status=503, text="no sample yet\n")
    if request.headers.get("If-None-Match") == snapshot.etag:
        return web.Response(status=304, headers={"ETag": snapshot.etag})
    return web.Response(
        body=snapshot.body, content_type="application/json", headers={"ETag": snapshot.etag}
    )


async def healthz(request: web.Request) -> web.Response:
    """Healthy while samples keep coming (the sampling loop is alive)."""
    monitor = request.app[MONITOR]
    age = time.monotonic() - monitor.last_sample
    if monitor.snapshot is None or age > request.app[STALE_AFTER]:
        return web.Response(status=503, text=f"last sample {age:.1f}s ago\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics of the agent and its backends."""
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def simulate(request: web.Request) -> web.Response:
    """Change a simulated GPU: ``{"listening": false, "fault": "wedge", "utilizationPercent": 95}``.

    ``listening`` stops its backend and keeps it down, or starts it again; ``fault``
    (``wedge``, ``exit`` or ``crash``) is done to the running backend, which the
    agent then judges and restarts as it would a real one.
    """
    monitor, simulator = request.app[MONITOR], request.app[SIMULATOR]
    try:
        index = int(request.match_info["index"])
        backend = next(b for b in monitor.backends if b.gpu.index == index)
        change: Mapping[str, Any] = await request.json()
        if not isinstance(change, Mapping) or set(change) - CHANGES:
            raise ValueError(f"expected an object with {', '.join(sorted(CHANGES))}")
        _check(change)
    except (StopIteration, ValueError) as exc:
        return web.Response(status=400, text=f"{exc or 'no such GPU'}\n")
    if "listening" in change:
        await set_listening(backend, change["listening"])
    if "fault" in change:
        try:
            inject(backend, Fault(change["fault"]))
        except NotRunningError as exc:
            return web.Response(status=409, text=f"{exc}\n")
    current = simulator.usage(backend.gpu)
    simulator.usage_by_index[index] = Usage(
        utilization_percent=float(
            change.get("utilizationPercent", current.utilization_percent or 0)
        ),
        memory_used_bytes=change.get("memoryUsedBytes", current.memory_used_bytes),
    )
    snapshot = await monitor.sample()
    return web.Response(body=snapshot.body, content_type="application/json")


CHANGES = frozenset({"listening", "fault", "utilizationPercent", "memoryUsedBytes"})


def _check(change: Mapping[str, Any]) -> None:
    if "listening" in change and not isinstance(change["listening"], bool):
        raise ValueError("listening must be true or false")
    if "fault" in change and change["fault"] not in [str(f) for f in Fault]:
        raise ValueError(f"fault must be one of {', '.join(Fault)}")
    utilization = change.get("utilizationPercent", 0)
    if (
        isinstance(utilization, bool)
        or not isinstance(utilization, int | float)
        or not 0 <= utilization <= 100
    ):
        raise ValueError("utilizationPercent must be a number from 0 to 100")
    used = change.get("memoryUsedBytes", 0)
    if isinstance(used, bool) or not isinstance(used, int) or used < 0:
        raise ValueError("memoryUsedBytes must be a whole number of bytes")


def build(
    *, monitor: Monitor, simulator: SimulatedGPUs | None, stale_after: float
) -> web.Application:
    """The application; the control endpoint exists only in simulator mode."""
    app = web.Application(client_max_size=64 * 1024)
    app[MONITOR] = monitor
    app[STALE_AFTER] = stale_after
    app.router.add_get(INVENTORY_PATH, inventory)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if simulator is not None:
        app[SIMULATOR] = simulator
        app.router.add_put("/v1/simulator/gpus/{index}", simulate)
    return app
