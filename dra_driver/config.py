"""Settings: flags with environment twins and defaults, validated up front.

Each component declares one pydantic model. Every field becomes a flag
(``node_name`` → ``--node-name``) with an environment twin
(``GVIRTUS_DRA_NODE_NAME``). Components whose model has a ``config`` field also
read a YAML file of the same settings (keys in camelCase, ``nodeName``), for policy
an admin keeps in a ConfigMap. A flag beats its environment variable, which beats
the file, which beats the default. One validator reports every bad input the same
way, naming the flag, the variable and the fix; unknown keys in the file are errors.
Invalid settings stop the process before it touches anything.
"""

from __future__ import annotations

import argparse
import enum
import functools
import ipaddress
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from dra_driver.quantity import parse_bytes

ENV_PREFIX = "GVIRTUS_DRA_"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ConfigError(Exception):
    """Settings are missing or invalid; the message lists every problem."""


class LogFormat(enum.StrEnum):
    """How log records are rendered."""

    TEXT = "text"
    JSON = "json"


class LogLevel(enum.StrEnum):
    """Minimum severity that is logged."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Settings(BaseModel):
    """Base for component settings: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    log_format: LogFormat = Field(LogFormat.TEXT, description="log output format: text or json")
    log_level: LogLevel = Field(LogLevel.INFO, description="minimum level logged")


def env_names(name: str, field: Any) -> tuple[str, ...]:
    """The environment variables that set ``name``, in priority order."""
    extra = (field.json_schema_extra or {}) if field is not None else {}
    aliases = tuple(extra.get("env_aliases", ())) if isinstance(extra, dict) else ()
    return (ENV_PREFIX + name.upper(), *aliases)


def flag_name(name: str) -> str:
    """The command-line flag of a field."""
    return "--" + name.replace("_", "-")


S = TypeVar("S", bound=Settings)


def add_flags(parser: argparse.ArgumentParser, model: type[Settings]) -> None:
    """Declare one flag per field of ``model``; help shows its env twin and default."""
    for name, field in model.model_fields.items():
        envs = " or ".join(env_names(name, field))
        default = field.default
        if isinstance(default, enum.Enum):
            default = default.value
        shown = (
            "required"
            if field.is_required()
            else f"default: {'unset' if default is None else default}"
        )
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} [env {envs}; {shown}]",
        )


def load(
    model: type[S], *, args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> S:
    """Build ``model`` from flags, then environment, then the config file, then defaults.

    Raises:
        ConfigError: listing every invalid or missing setting with its flag and env.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        given = getattr(args, name, None)
        if given is None:
            given = next((environ[e] for e in env_names(name, field) if environ.get(e)), None)
        if given is not None:
            values[name] = given
    if "config" in model.model_fields and values.get("config"):
        values = {**_read_file(model, pathlib.Path(values["config"])), **values}
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        raise ConfigError(describe(model, exc)) from exc


def _read_file(model: type[Settings], path: pathlib.Path) -> dict[str, Any]:
    """Settings from a YAML mapping with camelCase keys."""
    import yaml  # only components given a --config file need a YAML parser

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    by_key = {to_camel(name): name for name in model.model_fields if name != "config"}
    unknown = sorted(str(k) for k in document if k not in by_key)
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown settings {', '.join(unknown)} "
            f"(known: {', '.join(sorted(by_key))})"
        )
    return {by_key[k]: v for k, v in document.items()}


def describe(model: type[Settings], exc: pydantic.ValidationError) -> str:
    """One line per problem: ``--flag (env VAR): what is wrong``."""
    lines = ["invalid settings:"]
    for error in exc.errors():
        location = error["loc"][0] if error["loc"] else ""
        field = model.model_fields.get(str(location))
        if field is not None:
            where = f"{flag_name(str(location))} (env {env_names(str(location), field)[0]})"
        else:
            where = "settings"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "is required"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def dns_subdomain(value: str, *, what: str, max_length: int = 253) -> str:
    """Validate a Kubernetes DNS subdomain name (lower case, dots allowed)."""
    if len(value) > max_length or not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a valid {what}: use at most {max_length} lower-case letters, "
            "digits, '-' and '.', starting and ending with a letter or digit"
        )
    return value


def absolute_path(value: pathlib.Path) -> pathlib.Path:
    """Require an absolute path (the kubelet uses paths verbatim)."""
    if not value.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(value)!r}")
    return value


def _positive_quantity(value: str) -> str:
    if parse_bytes(value) <= 0:
        raise ValueError("must be more than zero")
    return value


def _ipv4(value: str) -> str:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 address") from exc
    return value


DriverName = Annotated[
    str, AfterValidator(functools.partial(dns_subdomain, what="driver name", max_length=63))
]
"""A DRA driver name, as settings take it."""
NodeName = Annotated[str, AfterValidator(functools.partial(dns_subdomain, what="node name"))]
"""A Node's name."""
NamespaceName = Annotated[
    str, AfterValidator(functools.partial(dns_subdomain, what="namespace", max_length=63))
]
"""A namespace's name."""
AbsolutePath = Annotated[pathlib.Path, AfterValidator(absolute_path)]
"""A path the component uses verbatim, so it must be absolute."""
ByteQuantity = Annotated[str, AfterValidator(_positive_quantity)]
"""A positive amount of memory as Kubernetes writes it (``80Gi``)."""
IPv4Address = Annotated[str, AfterValidator(_ipv4)]
"""An address to bind to."""
