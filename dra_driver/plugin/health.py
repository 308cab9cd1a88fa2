"""Device health for the kubelet (``v1alpha1.DRAResourceHealth``).

The kubelet shows it in ``pod.status.containerStatuses[].allocatedResourcesStatus``.
Health comes from the driver's ResourceSlices, which the controller keeps true: a
device carrying the ``gvirtus.io/unhealthy`` taint, or gone from its pool, is
UNHEALTHY with the reason; otherwise it is HEALTHY; before the slice cache first
synced it is UNKNOWN. The plugin never connects to backends itself: every GVirtuS
connection costs the backend a thread.

Each message carries the complete list of prepared devices (the kubelet turns devices
it stops hearing about to Unknown), sent when the stream opens, on every change,
and at least every ``interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Gauge

from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2 as health_pb
from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2_grpc as health_grpc
from dra_driver.plugin.slice_cache import SliceCache
from dra_driver.plugin.state import State
from dra_driver.plugin.taints import UNHEALTHY_TAINT

MESSAGE_LIMIT = 1024

PREPARED_DEVICES = Gauge(
    "gvirtus_dra_prepared_devices", "Prepared devices on this node by reported health.", ["health"]
)


def assess(*, slices: SliceCache, pool: str, device: str) -> tuple[health_pb.HealthStatus, str]:
    """Health and message of one device, from the slice cache."""
    if not slices.synced.is_set():
        return health_pb.UNKNOWN, "ResourceSlices of the driver not read yet"
    info = slices.lookup(pool=pool, device=device)
    if info is None:
        if slices.has_pool(pool):
            return health_pb.UNHEALTHY, f"device {device} left pool {pool}"
        return health_pb.UNHEALTHY, f"pool {pool} is no longer published (its backend is gone)"
    for taint in info.taints:
        if taint.key == UNHEALTHY_TAINT:
            return (
                health_pb.UNHEALTHY,
                f"backend unhealthy: {taint.value or 'no reason given'} ({taint.effect})",
            )
    return health_pb.HEALTHY, ""


class HealthService(health_grpc.DRAResourceHealthServicer):
    """Streams the health of every prepared device."""

    def __init__(self, *, state: State, slices: SliceCache, interval: float) -> None:
        self.state = state
        self.slices = slices
        self.interval = interval

    async def snapshot(self) -> Any:
        """One complete ``NodeWatchResourcesResponse``."""
        now = int(time.time())
        seen: set[tuple[str, str]] = set()
        counts = {"healthy": 0, "unhealthy": 0, "unknown": 0}
        entries = []
        for prepared in await self.state.prepared_devices():
            key = (prepared.pool, prepared.device)
            if key in seen:  # shared devices appear once per claim; report each once
                continue
            seen.add(key)
            health, message = assess(slices=self.slices, pool=prepared.pool, device=prepared.device)
            counts[health_pb.HealthStatus.Name(health).lower()] += 1
            entries.append(
                health_pb.DeviceHealth(
                    device=health_pb.DeviceIdentifier(
                        pool_name=prepared.pool, device_name=prepared.device
                    ),
                    health=health,
                    last_updated_time=now,
                    health_check_timeout_seconds=int(self.interval * 3) + 1,
                    message=message[:MESSAGE_LIMIT],
                )
            )
        for name, count in counts.items():
            PREPARED_DEVICES.labels(name).set(count)
        return health_pb.NodeWatchResourcesResponse(devices=entries)

    async def NodeWatchResources(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """Send the full list now, on every change, and every ``interval`` seconds."""
        while True:
            yield await self.snapshot()
            await self.slices.changes.wait(self.interval)
