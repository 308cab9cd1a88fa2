"""Device health for the kubelet, over both versions of ``DRAResourceHealth``.

The kubelet shows it in ``pod.status.containerStatuses[].allocatedResourcesStatus``.
Kubelets up to 1.36 call ``v1alpha1.DRAResourceHealth``; 1.37 added
``v1.DRAResourceHealth`` (same messages and numbers, another package) and deprecates
v1alpha1, to be removed in 1.40. Both are served from one :class:`HealthReporter`,
so a kubelet of either version hears the same answers; only the encoding differs.

Health comes from the driver's ResourceSlices, which the controller keeps true: a
device carrying the ``gvirtus.io/unhealthy`` taint, or gone from its pool, is
UNHEALTHY with the reason; otherwise it is HEALTHY; before the slice cache first
synced it is UNKNOWN. The plugin never connects to backends itself: every GVirtuS
connection costs the backend a thread. An admin's drain (a ``DeviceTaintRule``) is
policy, not a failure: the plugin does not read rules, so a drained device that
serves stays HEALTHY and running pods keep it.

Each message carries the complete list of prepared devices (the kubelet turns devices
it stops hearing about to Unknown), sent when the stream opens, on every change,
and at least every ``interval`` seconds.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from prometheus_client import Gauge

from dra_driver.kubeletapi.dra_health.v1 import api_pb2 as v1_pb
from dra_driver.kubeletapi.dra_health.v1 import api_pb2_grpc as v1_grpc
from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2 as v1alpha1_pb
from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2_grpc as v1alpha1_grpc
from dra_driver.plugin.slice_cache import SliceCache
from dra_driver.plugin.state import State
from dra_driver.plugin.taints import UNHEALTHY_TAINT

MESSAGE_LIMIT = 1024

PREPARED_DEVICES = Gauge(
    "gvirtus_dra_prepared_devices", "Prepared devices on this node by reported health.", ["health"]
)


class Health(enum.IntEnum):
    """``HealthStatus``: the numbers are the wire values of both proto versions."""

    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2


@dataclass(frozen=True)
class DeviceReport:
    """What the kubelet hears about one prepared device, before encoding."""

    pool: str
    device: str
    health: Health
    message: str
    updated: int
    """Unix seconds."""
    timeout: int
    """Seconds without a report before the kubelet assumes Unknown."""


def assess(*, slices: SliceCache, pool: str, device: str) -> tuple[Health, str]:
    """Health and message of one device, from the slice cache."""
    if not slices.synced.is_set():
        return Health.UNKNOWN, "ResourceSlices of the driver not read yet"
    info = slices.lookup(pool=pool, device=device)
    if info is None:
        if slices.has_pool(pool):
            return Health.UNHEALTHY, f"device {device} left pool {pool}"
        return Health.UNHEALTHY, f"pool {pool} is no longer published (its backend is gone)"
    for taint in info.taints:
        if taint.key == UNHEALTHY_TAINT:
            return (
                Health.UNHEALTHY,
                f"backend unhealthy: {taint.value or 'no reason given'} ({taint.effect})",
            )
    return Health.HEALTHY, ""


class HealthReporter:
    """The one implementation behind every served version; see the module docstring."""

    def __init__(self, *, state: State, slices: SliceCache, interval: float) -> None:
        self.state = state
        self.slices = slices
        self.interval = interval

    async def reports(self) -> list[DeviceReport]:
        """The complete list, each device once; also sets the gauge."""
        now = int(time.time())
        timeout = int(self.interval * 3) + 1
        seen: set[tuple[str, str]] = set()
        counts = dict.fromkeys(("healthy", "unhealthy", "unknown"), 0)
        found = []
        for prepared in await self.state.prepared_devices():
            key = (prepared.pool, prepared.device)
            if key in seen:  # shared devices appear once per claim; report each once
                continue
            seen.add(key)
            health, message = assess(slices=self.slices, pool=prepared.pool, device=prepared.device)
            counts[health.name.lower()] += 1
            found.append(
                DeviceReport(
                    pool=prepared.pool,
                    device=prepared.device,
                    health=health,
                    message=message[:MESSAGE_LIMIT],
                    updated=now,
                    timeout=timeout,
                )
            )
        for name, count in counts.items():
            PREPARED_DEVICES.labels(name).set(count)
        return found

    async def stream(self) -> AsyncIterator[list[DeviceReport]]:
        """The full list now, on every change of the slices, and every ``interval``."""
        while True:
            yield await self.reports()
            await self.slices.changes.wait(self.interval)


def encode(reports: list[DeviceReport], *, pb: ModuleType) -> Any:
    """A ``NodeWatchResourcesResponse`` of the proto version whose module is ``pb``."""
    return pb.NodeWatchResourcesResponse(
        devices=[
            pb.DeviceHealth(
                device=pb.DeviceIdentifier(pool_name=r.pool, device_name=r.device),
                health=int(r.health),
                last_updated_time=r.updated,
                health_check_timeout_seconds=r.timeout,
                message=r.message,
            )
            for r in reports
        ]
    )


class _Streams:
    """``NodeWatchResources`` for one proto version, reading the shared reporter."""

    pb: ModuleType

    def __init__(self, *, reporter: HealthReporter) -> None:
        self.reporter = reporter

    async def NodeWatchResources(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        """Send the full list now, on every change, and every ``interval`` seconds."""
        async for reports in self.reporter.stream():
            yield encode(reports, pb=self.pb)


class HealthV1(_Streams, v1_grpc.DRAResourceHealthServicer):
    """``v1.DRAResourceHealth``: what a 1.37 kubelet calls."""

    pb = v1_pb


class HealthV1alpha1(_Streams, v1alpha1_grpc.DRAResourceHealthServicer):
    """``v1alpha1.DRAResourceHealth``: what 1.35 and 1.36 kubelets call (deprecated in 1.37)."""

    pb = v1alpha1_pb
