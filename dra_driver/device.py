"""A published GPU device of this driver, to and from its ResourceSlice shape.

The controller writes devices; its claim-status logic and the kubelet plugin read
them back. All three go through this codec, so each attribute is named, typed and
parsed in one place (the names are in ``docs/names.md``). Attribute names are
unqualified (CEL reads ``device.attributes['gpu.gvirtus.io'].<name>``); a reader
also accepts them qualified with the driver name, as the API allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]

INDEX = "index"
UUID = "uuid"
MODEL = "model"
BACKEND_NODE = "backendNode"
BACKEND_ADDRESS = "backendAddress"
BACKEND_PORT = "backendPort"
CUDA_VERSION = "cudaVersion"
DRIVER_VERSION = "driverVersion"
TRANSPORT = "transport"
SIMULATED = "simulated"
ZONE = "zone"
REGION = "region"


_NAME = re.compile(r"gpu-(\d+)(?:-s(\d+))?")


def name_of(index: int, *, slot: int | None = None) -> str:
    """A device's name: ``gpu-<index>``, or ``gpu-<index>-s<slot>`` for a sharing slot.

    Names come from the GPU's NVML index, so they survive restarts (docs/names.md).
    """
    return f"gpu-{index}" if slot is None else f"gpu-{index}-s{slot}"


def index_of(name: str) -> int | None:
    """The GPU index a device name carries; None for a name this driver never gives.

    For readers that must know a device's GPU when the device is no longer
    published (a pod keeps using it): the name says it by contract.
    """
    found = _NAME.fullmatch(name)
    return int(found.group(1)) if found else None


class DeviceError(ValueError):
    """A published device lacks an attribute readers need, or has the wrong type."""


@dataclass(frozen=True)
class GPUDevice:
    """What one published device says about its GPU and the backend serving it."""

    name: str
    index: int
    uuid: str
    model: str
    node: str
    """``backendNode``: the GPU node, which is also the pool's name."""
    address: str
    """``backendAddress``: the IPv4 address frontends dial."""
    port: int
    """``backendPort``: this GPU's own ``gvirtus-backend`` port."""
    cuda_version: str = ""
    driver_version: str = ""
    transport: str = "tcp"
    simulated: bool = False
    zone: str | None = None
    region: str | None = None

    @property
    def where(self) -> str:
        """How messages name the backend."""
        return f"GVirtuS backend {self.address}:{self.port} (GPU {self.index} of {self.node})"

    def attributes(self) -> Obj:
        """The device's ``attributes`` as the API takes them."""
        found: Obj = {
            MODEL: {"string": self.model},
            UUID: {"string": self.uuid},
            INDEX: {"int": self.index},
            BACKEND_NODE: {"string": self.node},
            BACKEND_ADDRESS: {"string": self.address},
            BACKEND_PORT: {"int": self.port},
            CUDA_VERSION: {"version": self.cuda_version},
            DRIVER_VERSION: {"string": self.driver_version},
            TRANSPORT: {"string": self.transport},
            SIMULATED: {"bool": self.simulated},
        }
        if self.zone:
            found[ZONE] = {"string": self.zone}
        if self.region:
            found[REGION] = {"string": self.region}
        return found


def attribute_values(device: Mapping[str, Any], *, driver: str) -> dict[str, Any]:
    """Attribute values by unqualified name (``{"int": 3}`` → 3), whatever their type."""
    prefix = driver + "/"
    values: dict[str, Any] = {}
    for name, attribute in (device.get("attributes") or {}).items():
        if isinstance(attribute, Mapping):
            values[name.removeprefix(prefix)] = next(
                (v for v in attribute.values() if v is not None), None
            )
    return values


def decode(device: Mapping[str, Any], *, driver: str) -> GPUDevice:
    """The GPU a published device names.

    Raises:
        DeviceError: a required attribute is missing or of the wrong type; the
            message names the attribute and what it must be.
    """
    return from_values(str(device.get("name", "")), attribute_values(device, driver=driver))


def from_values(name: str, values: Mapping[str, Any]) -> GPUDevice:
    """The GPU a device names, from its attribute values (see :func:`attribute_values`).

    Raises:
        DeviceError: as :func:`decode`.
    """
    zone, region = values.get(ZONE), values.get(REGION)
    return GPUDevice(
        name=name,
        index=_int(values, INDEX),
        uuid=_string(values, UUID),
        model=_string(values, MODEL),
        node=_string(values, BACKEND_NODE),
        address=_string(values, BACKEND_ADDRESS, what="a string IPv4 address"),
        port=_int(values, BACKEND_PORT, what="an integer from 1 to 65535"),
        cuda_version=str(values.get(CUDA_VERSION) or ""),
        driver_version=str(values.get(DRIVER_VERSION) or ""),
        transport=str(values.get(TRANSPORT) or "tcp"),
        simulated=values.get(SIMULATED) is True,
        zone=zone if isinstance(zone, str) else None,
        region=region if isinstance(region, str) else None,
    )


def _string(values: Mapping[str, Any], name: str, *, what: str = "a string") -> str:
    value = values.get(name)
    if not isinstance(value, str):
        raise DeviceError(f"{name} must be {what}, got {value!r}")
    return value


def _int(values: Mapping[str, Any], name: str, *, what: str = "an integer") -> int:
    value = values.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DeviceError(f"{name} must be {what}, got {value!r}")
    return value
