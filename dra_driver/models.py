"""Schemas shared between components and users.

* ``GVirtuSConfig``: users put it into a ResourceClaim or DeviceClass as opaque
  ``parameters`` for driver ``gpu.gvirtus.io``; the kubelet plugin validates it and
  turns it into the environment of the containers that use the device. Unknown
  fields are an error, so a typo fails that claim loudly instead of being ignored.
* ``Inventory``: what a backend agent reports about its node's GPUs and backends,
  and what the controller publishes from. Types are strict and identities unique;
  an answer that breaks the schema is rejected whole, never published in part.
* ``BackendAccess``: which addresses may connect to each backend port of a node.
  The controller publishes it in a ConfigMap per backend node; the node's agent
  turns it into packet filter rules. Unknown fields are an error: an agent that
  cannot understand the whole list admits nobody new rather than guess.
"""

from __future__ import annotations

import enum
import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dra_driver.addresses import RoutableIPv4

CONFIG_API_VERSION = "gpu.gvirtus.io/v1alpha1"
CONFIG_KIND = "GVirtuSConfig"


class GVirtuSLogLevel(enum.StrEnum):
    """GVirtuS (log4cplus) log levels by name."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"
    FATAL = "fatal"
    OFF = "off"


# GVIRTUS_LOGLEVEL takes log4cplus' numeric levels.
_LOG4CPLUS = {
    GVirtuSLogLevel.TRACE: 0,
    GVirtuSLogLevel.DEBUG: 10000,
    GVirtuSLogLevel.INFO: 20000,
    GVirtuSLogLevel.WARN: 30000,
    GVirtuSLogLevel.ERROR: 40000,
    GVirtuSLogLevel.FATAL: 50000,
    GVirtuSLogLevel.OFF: 60000,
}


def log4cplus_level(level: GVirtuSLogLevel) -> int:
    """The numeric level GVirtuS reads from ``GVIRTUS_LOGLEVEL``."""
    return _LOG4CPLUS[level]


class ConfigValidationError(ValueError):
    """Opaque parameters are not a valid GVirtuSConfig; the message names the field."""


class GVirtuSConfig(BaseModel):
    """Per-claim (or per-class) settings of the GVirtuS frontend in the container."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    api_version: Literal["gpu.gvirtus.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["GVirtuSConfig"]
    log_level: GVirtuSLogLevel | None = Field(None, alias="logLevel", strict=False)
    gvirtus_home: str | None = Field(None, alias="gvirtusHome", min_length=1, max_length=4096)
    library_path: str | None = Field(None, alias="libraryPath", min_length=1, max_length=4096)
    dump_stats: bool | None = Field(None, alias="dumpStats")

    @field_validator("gvirtus_home")
    @classmethod
    def _absolute_home(cls, value: str | None) -> str | None:
        if value is not None and (not posixpath.isabs(value) or _unsafe(value)):
            raise ValueError("must be an absolute path without control characters")
        return value

    @field_validator("library_path")
    @classmethod
    def _absolute_library_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split(":")
        if _unsafe(value) or not all(posixpath.isabs(p) for p in parts):
            raise ValueError(
                "must be ':'-separated absolute directories (the whole LD_LIBRARY_PATH, "
                "GVirtuS frontend libraries first)"
            )
        return value

    def environment(self) -> dict[str, str]:
        """Container environment this configuration asks for."""
        env: dict[str, str] = {}
        if self.log_level is not None:
            env["GVIRTUS_LOGLEVEL"] = str(log4cplus_level(self.log_level))
        if self.gvirtus_home is not None:
            env["GVIRTUS_HOME"] = self.gvirtus_home
        if self.library_path is not None:
            env["LD_LIBRARY_PATH"] = self.library_path
        if self.dump_stats is not None:
            env["GVIRTUS_DUMP_STATS"] = "true" if self.dump_stats else "false"
        return env


def _unsafe(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def parse_config(parameters: Any) -> GVirtuSConfig:
    """Validate opaque ``parameters`` as a GVirtuSConfig.

    Raises:
        ConfigValidationError: naming each bad field and what is expected.
    """
    if not isinstance(parameters, Mapping):
        raise ConfigValidationError(
            f"parameters must be an object with apiVersion {CONFIG_API_VERSION} "
            f"and kind {CONFIG_KIND}"
        )
    try:
        return GVirtuSConfig.model_validate(dict(parameters))
    except pydantic.ValidationError as exc:
        raise ConfigValidationError(_describe(exc)) from exc


def _describe(exc: pydantic.ValidationError) -> str:
    allowed = ", ".join(f.alias or n for n, f in GVirtuSConfig.model_fields.items())
    problems = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "parameters"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown field {field!r} (allowed: {allowed})")
        elif error["type"] == "missing":
            problems.append(f"{field} is required")
        elif error["type"] == "literal_error":
            problems.append(f"{field} must be {error['ctx']['expected']}")
        else:
            problems.append(f"{field}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def merge_configs(configs: Iterable[GVirtuSConfig]) -> dict[str, str]:
    """Environment from several configurations; fields set later win, field by field."""
    env: dict[str, str] = {}
    for config in configs:
        env.update(config.environment())
    return env


# -- backend inventory ----------------------------------------------------------------

INVENTORY_API_VERSION: Literal["inventory.gpu.gvirtus.io/v1"] = "inventory.gpu.gvirtus.io/v1"
INVENTORY_KIND: Literal["BackendInventory"] = "BackendInventory"
INVENTORY_PATH = "/v1/inventory"
MAX_INVENTORY_BYTES = 1024 * 1024
"""Largest inventory the controller reads; a node has at most a few dozen GPUs."""

_PRINTABLE = r"^[\x20-\x7e]+$"


class InventoryError(ValueError):
    """An agent's answer is not a usable inventory; the message says why."""


class _Wire(BaseModel):
    # Strict types, and unknown fields ignored so an agent newer than the controller
    # can add some.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)


HEALTH_REASONS = ("backend-down", "backend-wedged", "not-listening")
"""Why an agent says a backend cannot serve: its process is not running; it runs but
is at its descriptor limit or takes no connection from its accept queue; it runs but
nothing listens on its port. Older agents also sent ``starting`` and ``port-closed``;
newer ones may add reasons, so any lowercase word of this shape is accepted."""


class GPUHealth(_Wire):
    """Whether the GPU's backend can serve frontends, and if not why."""

    healthy: bool
    reason: str = Field("", max_length=63, pattern=r"^([a-z]([-a-z0-9]*[a-z0-9])?)?$")
    message: str = Field("", max_length=1024)


class BackendState(_Wire):
    """What the agent read about a running backend in ``/proc`` (it never connects)."""

    open_files: int | None = Field(None, alias="openFiles", ge=0)
    open_files_limit: int | None = Field(None, alias="openFilesLimit", ge=0)
    established: int = Field(0, ge=0)
    close_wait: int = Field(0, alias="closeWait", ge=0)
    accept_queue: int = Field(0, alias="acceptQueue", ge=0)


class GPULoad(_Wire):
    """How busy the GPU is."""

    connections: int = Field(ge=0, le=1_000_000)
    utilization_percent: float | None = Field(None, alias="utilizationPercent", ge=0, le=100)
    memory_used_bytes: int | None = Field(None, alias="memoryUsedBytes", ge=0)


class GPU(_Wire):
    """One GPU of a backend node and the ``gvirtus-backend`` serving it."""

    index: int = Field(ge=0, le=1023)
    uuid: str = Field(min_length=1, max_length=64, pattern=_PRINTABLE)
    model: str = Field(min_length=1, max_length=64, pattern=_PRINTABLE)
    memory_bytes: int = Field(alias="memoryBytes", gt=0)
    driver_version: str = Field(
        alias="driverVersion", min_length=1, max_length=64, pattern=_PRINTABLE
    )
    cuda_version: str = Field(alias="cudaVersion", pattern=r"^\d{1,4}\.\d{1,4}(\.\d{1,4})?$")
    port: int = Field(ge=1, le=65535)
    health: GPUHealth
    load: GPULoad
    restarts: int = Field(0, ge=0)
    last_exit: str = Field("", alias="lastExit", max_length=1024)
    last_restart: str = Field("", alias="lastRestart", max_length=63)
    backend: BackendState | None = None


class AccessMode(enum.StrEnum):
    """Whether an agent filters who reaches its backends."""

    ON = "on"
    OFF = "off"


class AccessReport(_Wire):
    """How the agent's backend access control stands (see :class:`BackendAccess`)."""

    mode: str = Field(pattern=r"^[a-z]{1,16}$")
    """``on`` or ``off`` today; a newer agent's word is kept, not refused."""
    synced: bool = False
    """The node's access list has been read and is in the kernel."""
    admitted: int = Field(0, ge=0)
    """Addresses admitted, summed over ports."""
    error: str = Field("", max_length=1024)
    """The last failure to read or apply the list; empty while all is well."""


class Inventory(_Wire):
    """What a backend agent reports: served at ``GET /v1/inventory`` (port 9450)."""

    api_version: Literal["inventory.gpu.gvirtus.io/v1"] = Field(
        INVENTORY_API_VERSION, alias="apiVersion"
    )
    kind: Literal["BackendInventory"] = INVENTORY_KIND
    node_name: str = Field(alias="nodeName", min_length=1, max_length=253)
    address: RoutableIPv4
    simulated: bool = False
    agent_version: str = Field("", alias="agentVersion", max_length=64)
    gpus: list[GPU] = Field(max_length=256)
    access: AccessReport | None = None
    """Absent from agents older than backend access control."""

    @field_validator("node_name")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not re.fullmatch(
            r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", value
        ):
            raise ValueError(f"{value!r} is not a valid node name")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Inventory:
        for field in ("index", "uuid", "port"):
            values = [getattr(g, field) for g in self.gpus]
            if len(values) != len(set(values)):
                raise ValueError(f"two GPUs share the same {field}")
        return self

    def encode(self) -> bytes:
        """The JSON an agent serves."""
        return self.model_dump_json(by_alias=True).encode()


def parse_inventory(raw: bytes) -> Inventory:
    """Validate an agent's answer.

    Raises:
        InventoryError: too large, not JSON, or not a valid inventory, with the reason.
    """
    if len(raw) > MAX_INVENTORY_BYTES:
        raise InventoryError(
            f"inventory of {len(raw)} bytes exceeds the limit of {MAX_INVENTORY_BYTES}"
        )
    try:
        return Inventory.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "inventory"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise InventoryError(f"{where}: {error['msg']}{more}") from exc


# -- backend access -------------------------------------------------------------------

ACCESS_API_VERSION: Literal["access.gpu.gvirtus.io/v1"] = "access.gpu.gvirtus.io/v1"
ACCESS_KIND: Literal["BackendAccess"] = "BackendAccess"
ACCESS_NAME_PREFIX = "gvirtus-dra-access-"
"""ConfigMaps ``gvirtus-dra-access-<node>`` in the driver's namespace hold the lists."""
ACCESS_DATA_KEY = "access.json"
MAX_ACCESS_ADDRESSES = 4096
"""Per port; a GPU shared by more pods than this is far beyond what GVirtuS serves."""


class AccessDocumentError(ValueError):
    """A ConfigMap does not hold a usable access list; the message says why."""


class PortAccess(BaseModel):
    """The addresses admitted to one backend port."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    port: int = Field(ge=1, le=65535)
    addresses: tuple[RoutableIPv4, ...] = Field(max_length=MAX_ACCESS_ADDRESSES)

    @field_validator("addresses")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("an address is listed twice")
        return value


class BackendAccess(BaseModel):
    """Who may connect to each backend port of one node, as the controller computed it.

    Every port of the node's backends is listed, with no addresses when no pod holds
    a claim on its GPU; a port left out admits nobody either.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    api_version: Literal["access.gpu.gvirtus.io/v1"] = Field(ACCESS_API_VERSION, alias="apiVersion")
    kind: Literal["BackendAccess"] = ACCESS_KIND
    node_name: str = Field(alias="nodeName", min_length=1, max_length=253)
    ports: tuple[PortAccess, ...] = Field(max_length=256)

    @model_validator(mode="after")
    def _unique_ports(self) -> BackendAccess:
        ports = [p.port for p in self.ports]
        if len(ports) != len(set(ports)):
            raise ValueError("a port is listed twice")
        return self

    def admitted(self) -> dict[int, frozenset[str]]:
        """Addresses by port."""
        return {p.port: frozenset(p.addresses) for p in self.ports}

    def encode(self) -> str:
        """Canonical JSON (sorted ports and addresses), equal exactly when the lists are."""
        document = self.model_dump(by_alias=True)
        document["ports"] = sorted(
            ({"port": p["port"], "addresses": sorted(p["addresses"])} for p in document["ports"]),
            key=lambda p: p["port"],
        )
        return json.dumps(document, separators=(",", ":"))


def parse_access(raw: str) -> BackendAccess:
    """Validate the access list a ConfigMap holds.

    Raises:
        AccessDocumentError: not JSON, or not a valid list, naming the first problem.
    """
    try:
        return BackendAccess.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "document"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = error["msg"].removeprefix("Value error, ")
        raise AccessDocumentError(f"{where}: {message}{more}") from exc


def access_config_map_name(node: str) -> str:
    """The ConfigMap holding ``node``'s access list (a name both sides compute alike).

    Object names are at most 253 characters; for the rare node name too long for the
    prefix, the end is replaced by a digest of the whole name.
    """
    name = ACCESS_NAME_PREFIX + node
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(node.encode()).hexdigest()[:16]
    return f"{name[: 253 - 17].rstrip('-.')}-{digest}"
