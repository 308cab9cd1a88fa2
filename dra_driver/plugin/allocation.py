"""What prepare needs of a ResourceClaim, read from the API server's JSON.

The claim is read as plain JSON and only these fields are kept: its uid, this and
other drivers' allocation results (request, pool, device, share ID, tolerations),
the opaque configuration the scheduler copied into the allocation, and the backend
the controller recorded for each device in ``status.devices`` (prepare refuses a
slice that disagrees with it: slices can be forged by more identities than claim
status can be written by). Building the
client library's typed model of the whole claim would cost more than the rest of a
prepare, for fields prepare never reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dra_driver.plugin.taints import Toleration

Obj = dict[str, Any]


@dataclass(frozen=True)
class Result:
    """One entry of ``status.allocation.devices.results``."""

    request: str
    driver: str
    pool: str
    device: str
    share_id: str | None
    tolerations: tuple[Toleration, ...]


@dataclass(frozen=True)
class ConfigEntry:
    """One entry of ``status.allocation.devices.config`` with an opaque configuration."""

    source: str
    requests: tuple[str, ...]
    driver: str
    parameters: Any


@dataclass(frozen=True)
class Allocation:
    """A claim's allocation as prepare uses it."""

    results: tuple[Result, ...]
    configs: tuple[ConfigEntry, ...]


@dataclass(frozen=True)
class RecordedBackend:
    """The backend a ``status.devices`` entry names (``data.backendAddress``/``backendPort``)."""

    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


DeviceKey = tuple[str, str, str]
"""``(pool, device, shareID or "")``: how ``status.devices`` entries are keyed per driver."""


def uid_of(claim: Obj) -> str:
    """The claim's uid."""
    return str((claim.get("metadata") or {}).get("uid", ""))


def allocation_of(claim: Obj) -> Allocation | None:
    """The claim's allocation; None while it is not allocated."""
    devices = ((claim.get("status") or {}).get("allocation") or {}).get("devices")
    if not isinstance(devices, dict):
        return None
    results = tuple(
        Result(
            request=str(r.get("request", "")),
            driver=str(r.get("driver", "")),
            pool=str(r.get("pool", "")),
            device=str(r.get("device", "")),
            share_id=str(r["shareID"]) if r.get("shareID") else None,
            tolerations=tuple(Toleration.of(t) for t in r.get("tolerations") or []),
        )
        for r in devices.get("results") or []
    )
    configs = tuple(
        ConfigEntry(
            source=str(c.get("source", "")),
            requests=tuple(str(name) for name in c.get("requests") or []),
            driver=str(c["opaque"].get("driver", "")),
            parameters=c["opaque"].get("parameters"),
        )
        for c in devices.get("config") or []
        if isinstance(c.get("opaque"), dict)
    )
    return Allocation(results=results, configs=configs)


def recorded_backends(claim: Obj, *, driver: str) -> dict[DeviceKey, RecordedBackend]:
    """The backends ``driver``'s entries of ``status.devices`` name, by device.

    Entries without both fields, or with values of the wrong type, name nothing.
    """
    found: dict[DeviceKey, RecordedBackend] = {}
    for entry in (claim.get("status") or {}).get("devices") or []:
        if not isinstance(entry, dict) or entry.get("driver") != driver:
            continue
        data = entry.get("data")
        if not isinstance(data, dict):
            continue
        address, port = data.get("backendAddress"), data.get("backendPort")
        if not isinstance(address, str) or not isinstance(port, int) or isinstance(port, bool):
            continue
        pool, device = str(entry.get("pool", "")), str(entry.get("device", ""))
        found[(pool, device, str(entry.get("shareID") or ""))] = RecordedBackend(address, port)
    return found
