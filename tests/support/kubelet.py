"""A kubelet emulator: what the kubelet's plugin watcher and DRA manager do, over real sockets.

It finds registration sockets the way the plugin watcher does (unix sockets only,
names starting with ``.`` ignored), calls ``GetInfo`` with the kubelet's one-second
timeout, checks the answer as the DRA handler does, picks the first service of the
plugin's ``supported_versions`` it knows, dials the endpoint once, reports the
registration, and then calls prepare, unprepare and the health stream over that one
connection. Responses are checked against the kubelet's rules (an entry per claim,
no unknown UIDs, well-formed CDI IDs); a violation raises :class:`KubeletError`.

Which health service it calls depends on the kubelet version it plays
(``register(..., kubelet=...)``): 1.35 and 1.36 call ``v1alpha1.DRAResourceHealth``
whatever the plugin advertises; 1.37 picks ``v1.DRAResourceHealth`` when the plugin's
``supported_versions`` names it and falls back to v1alpha1 otherwise (read from the
1.37 sources' description, not run against a real 1.37 kubelet).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import stat
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from grpc import aio

from dra_driver.kubeletapi.dra.v1 import api_pb2 as v1_pb
from dra_driver.kubeletapi.dra.v1 import api_pb2_grpc as v1_grpc
from dra_driver.kubeletapi.dra.v1beta1 import api_pb2 as v1beta1_pb
from dra_driver.kubeletapi.dra.v1beta1 import api_pb2_grpc as v1beta1_grpc
from dra_driver.kubeletapi.dra_health.v1 import api_pb2 as health_v1_pb
from dra_driver.kubeletapi.dra_health.v1 import api_pb2_grpc as health_v1_grpc
from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2 as health_v1alpha1_pb
from dra_driver.kubeletapi.dra_health.v1alpha1 import api_pb2_grpc as health_v1alpha1_grpc
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2 as reg_pb
from dra_driver.kubeletapi.pluginregistration.v1 import api_pb2_grpc as reg_grpc

KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
HEALTH_V1 = "v1.DRAResourceHealth"
HEALTH_V1ALPHA1 = "v1alpha1.DRAResourceHealth"
HEALTH_STUBS = {
    HEALTH_V1: (health_v1_grpc, health_v1_pb),
    HEALTH_V1ALPHA1: (health_v1alpha1_grpc, health_v1alpha1_pb),
}
WATCHES_HEALTH_BY_DEFAULT = {"1.35": False, "1.36": True, "1.37": True}
"""Whether a kubelet's ``ResourceHealthStatus`` gate is on by default (alpha in 1.35)."""
KUBELET_VERSIONS = tuple(WATCHES_HEALTH_BY_DEFAULT)
CALL_TIMEOUT = 45.0
_CDI_ID = re.compile(
    r"^[a-z0-9][a-z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9_.-]*=[A-Za-z0-9][A-Za-z0-9_.:-]*$"
)


class KubeletError(Exception):
    """The plugin broke a rule the kubelet enforces."""


@dataclass(frozen=True)
class ClaimResult:
    devices: list[Any]
    error: str


@dataclass(frozen=True)
class Claim:
    namespace: str
    uid: str
    name: str


def find_sockets(registry: pathlib.Path) -> list[pathlib.Path]:
    """Registration sockets the plugin watcher would see."""
    found = []
    for path in sorted(registry.rglob("*")):
        if path.name.startswith("."):
            continue
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                found.append(path)
        except FileNotFoundError:
            continue
    return found


async def wait_for_socket(
    registry: pathlib.Path, *, name: str | None = None, timeout: float = 30
) -> pathlib.Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in find_sockets(registry):
            if name is None or path.name == name:
                return path
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no registration socket {name or ''} in {registry} after {timeout}s")


@dataclass
class Plugin:
    """A registered plugin: one connection, as the kubelet keeps."""

    info: Any
    endpoint: pathlib.Path
    service: str
    channel: aio.Channel
    health_service: str | None = HEALTH_V1ALPHA1
    """The health service this kubelet calls (see the module docstring); None: none."""
    health_responses: list[Any] = field(default_factory=list)

    @property
    def version(self) -> str:
        return self.service.split(".")[0]

    def _stub(self, version: str | None) -> tuple[Any, Any]:
        version = version or self.version
        if version == "v1":
            return v1_grpc.DRAPluginStub(self.channel), v1_pb
        return v1beta1_grpc.DRAPluginStub(self.channel), v1beta1_pb

    async def prepare(
        self, claims: Iterable[Claim], *, version: str | None = None, timeout: float = CALL_TIMEOUT
    ) -> dict[str, ClaimResult]:
        stub, pb = self._stub(version)
        claims = list(claims)
        request = pb.NodePrepareResourcesRequest(
            claims=[pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
        )
        response = await stub.NodePrepareResources(request, timeout=timeout)
        results = _check_entries("NodePrepareResources", claims, response.claims)
        out = {}
        for uid, entry in results.items():
            if not entry.error:
                for device in entry.devices:
                    if not device.pool_name or not device.device_name:
                        raise KubeletError(f"device without pool or name for claim {uid}: {device}")
                    for cdi_id in device.cdi_device_ids:
                        if not _CDI_ID.match(cdi_id):
                            raise KubeletError(f"malformed CDI device ID {cdi_id!r}")
            out[uid] = ClaimResult(devices=list(entry.devices), error=entry.error)
        return out

    async def unprepare(
        self, claims: Iterable[Claim], *, version: str | None = None, timeout: float = CALL_TIMEOUT
    ) -> dict[str, str]:
        stub, pb = self._stub(version)
        claims = list(claims)
        request = pb.NodeUnprepareResourcesRequest(
            claims=[pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
        )
        response = await stub.NodeUnprepareResources(request, timeout=timeout)
        return {
            uid: entry.error
            for uid, entry in _check_entries(
                "NodeUnprepareResources", claims, response.claims
            ).items()
        }

    async def watch_health(self, *, service: str | None = None) -> AsyncIterator[Any]:
        """The health stream (``service`` or the kubelet's choice); responses are kept.

        Every response is also appended to ``health_responses``.
        """
        service = service or self.health_service
        if service is None:
            raise KubeletError("this kubelet watches no health: ResourceHealthStatus is off")
        grpc_module, pb = HEALTH_STUBS[service]
        stub = grpc_module.DRAResourceHealthStub(self.channel)
        async for response in stub.NodeWatchResources(pb.NodeWatchResourcesRequest()):
            self.health_responses.append(response)
            yield response

    async def close(self) -> None:
        await self.channel.close()


def _check_entries(method: str, claims: list[Claim], entries: Any) -> dict[str, Any]:
    wanted = {c.uid for c in claims}
    unknown = set(entries) - wanted
    if unknown:
        raise KubeletError(f"{method} returned results for unknown claim UIDs {sorted(unknown)}")
    missing = wanted - set(entries)
    if missing:
        raise KubeletError(f"{method} skipped {len(missing)} ResourceClaims")
    return {uid: entries[uid] for uid in wanted}


async def accepting(socket: pathlib.Path, *, timeout: float = 30) -> None:
    """Wait until ``socket`` accepts connections (a dead predecessor's file refuses them)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_unix_connection(socket)
            except OSError:
                await asyncio.sleep(0.005)
                continue
            writer.close()
            await writer.wait_closed()
            return


def dial(endpoint: pathlib.Path, *, service: str = "v1.DRAPlugin") -> Plugin:
    """A connection to a DRA endpoint the kubelet already knows from an earlier registration."""
    channel = aio.insecure_channel(f"unix://{endpoint}")
    return Plugin(info=None, endpoint=endpoint, service=service, channel=channel)


def health_service(
    supported: Iterable[str], *, kubelet: str, watches_health: bool | None = None
) -> str | None:
    """The health service a kubelet of version ``kubelet`` calls on such a plugin.

    ``watches_health`` is its ``ResourceHealthStatus`` gate; None takes the version's
    default. A kubelet with the gate off calls none.
    """
    if kubelet not in KUBELET_VERSIONS:
        raise ValueError(f"no kubelet {kubelet} to play; one of {KUBELET_VERSIONS}")
    if not (WATCHES_HEALTH_BY_DEFAULT[kubelet] if watches_health is None else watches_health):
        return None
    if kubelet == "1.37" and HEALTH_V1 in supported:
        return HEALTH_V1
    return HEALTH_V1ALPHA1


async def register(
    socket: pathlib.Path,
    *,
    driver: str = "gpu.gvirtus.io",
    kubelet: str = "1.37",
    watches_health: bool | None = None,
) -> Plugin:
    """Run the registration sequence of a kubelet of version ``kubelet`` against ``socket``."""
    async with aio.insecure_channel(f"unix://{socket}") as channel:
        stub = reg_grpc.RegistrationStub(channel)
        info = await stub.GetInfo(reg_pb.InfoRequest(), timeout=1)
        problem = _validate(info, driver)
        if problem:
            await stub.NotifyRegistrationStatus(
                reg_pb.RegistrationStatus(plugin_registered=False, error=problem), timeout=5
            )
            raise KubeletError(problem)
        service = next(s for s in info.supported_versions if s in KUBELET_SERVICES)
        endpoint = pathlib.Path(info.endpoint or socket)
        plugin_channel = aio.insecure_channel(f"unix://{endpoint}")
        await stub.NotifyRegistrationStatus(
            reg_pb.RegistrationStatus(plugin_registered=True), timeout=5
        )
    return Plugin(
        info=info,
        endpoint=endpoint,
        service=service,
        channel=plugin_channel,
        health_service=health_service(
            info.supported_versions, kubelet=kubelet, watches_health=watches_health
        ),
    )


def _validate(info: Any, driver: str) -> str:
    if info.type != "DRAPlugin":
        return f"no handler registered for plugin type: {info.type}"
    if info.name != driver:
        return f"unexpected driver name {info.name!r}"
    if not info.supported_versions:
        return "empty list of supported gRPC services"
    if not any(s in KUBELET_SERVICES for s in info.supported_versions):
        return f"none of the gRPC services {list(info.supported_versions)} is supported"
    if info.endpoint and not pathlib.Path(info.endpoint).is_absolute():
        return f"endpoint {info.endpoint!r} is not absolute"
    return ""
