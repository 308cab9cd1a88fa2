"""Schemas shared between components and users: the opaque claim configuration.

Users put a ``GVirtuSConfig`` into a ResourceClaim or DeviceClass as opaque
``parameters`` for driver ``gpu.gvirtus.io``; the kubelet plugin validates it here
and turns it into the environment of the containers that use the device. Unknown
fields are an error, so a typo fails that claim loudly instead of being ignored.
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

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
            env["GVIRTUS_LOGLEVEL"] = str(_LOG4CPLUS[self.log_level])
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
