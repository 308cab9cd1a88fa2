"""CDI specs: how the container runtime learns what a prepared device means.

One spec file per claim (``<cdi root>/gvirtus.io-gpu_<claim-uid>.json``), one CDI
device per allocated device (``<claim-uid>-<device>[-<shareID>]``), so names are
unique per claim and runtimes' spec caches never mix claims up. Each device's edits
mount its ``properties.json`` read-only and set the environment.

Container runtimes embed their own copy of the CDI library and reject a
``cdiVersion`` newer than they know, so every spec declares the *lowest* version
that supports what it uses (:func:`minimum_version`), as the CDI library computes it.
"""

from __future__ import annotations

import json
import pathlib
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from dra_driver import files

VENDOR = "gvirtus.io"
CLASS = "gpu"
KIND = f"{VENDOR}/{CLASS}"
SPEC_PREFIX = f"{VENDOR}-{CLASS}_"

_DEVICE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class Mount(_Model):
    """A bind mount into the container."""

    host_path: str
    container_path: str
    options: tuple[str, ...] = ()
    type: str | None = None


class ContainerEdits(_Model):
    """What applying a device changes in the container."""

    env: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()


class Device(_Model):
    """One CDI device; runtimes reject devices with empty edits."""

    name: str
    container_edits: ContainerEdits

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _DEVICE_NAME.fullmatch(value):
            raise ValueError(f"invalid CDI device name {value!r}")
        return value

    @field_validator("container_edits")
    @classmethod
    def _not_empty(cls, value: ContainerEdits) -> ContainerEdits:
        if not value.env and not value.mounts:
            raise ValueError("a CDI device needs at least one container edit")
        return value


class Spec(_Model):
    """A CDI spec file."""

    cdi_version: str = Field(default="0.3.0")
    kind: str = KIND
    devices: tuple[Device, ...]


def device_name(*, claim_uid: str, device: str, share_id: str | None = None) -> str:
    """The CDI device name of one allocated device of a claim."""
    return f"{claim_uid}-{device}" + (f"-{share_id}" if share_id else "")


def qualified_name(name: str) -> str:
    """The fully qualified CDI device ID the kubelet hands to the runtime."""
    return f"{KIND}={name}"


def spec_path(*, cdi_root: pathlib.Path, claim_uid: str) -> pathlib.Path:
    """Where the spec of ``claim_uid`` lives."""
    return cdi_root / f"{SPEC_PREFIX}{claim_uid}.json"


def claim_uid_of(path: pathlib.Path) -> str | None:
    """The claim UID a spec file of this driver belongs to, or None for other files."""
    name = path.name
    if name.startswith(SPEC_PREFIX) and name.endswith(".json"):
        return name[len(SPEC_PREFIX) : -len(".json")]
    return None


def minimum_version(spec: Spec) -> str:
    """The lowest ``cdiVersion`` that supports every feature ``spec`` uses.

    The rules that can apply to specs of this driver, from the CDI library's own
    version check: mount types need 0.4.0, device names not starting with a letter
    (claim UIDs often start with a digit) 0.5.0, a dot in the class 0.6.0.
    """
    required = "0.3.0"
    if any(m.type for d in spec.devices for m in d.container_edits.mounts):
        required = "0.4.0"
    if any(not d.name[0].isalpha() for d in spec.devices):
        required = "0.5.0"
    if "." in spec.kind.partition("/")[2]:
        required = "0.6.0"
    return required


def render(devices: list[Device]) -> bytes:
    """Serialize a spec holding ``devices`` with its minimum version."""
    spec = Spec(devices=tuple(devices))
    spec = spec.model_copy(update={"cdi_version": minimum_version(spec)})
    document = spec.model_dump(by_alias=True, exclude_none=True)
    return (json.dumps(document, indent=2) + "\n").encode()


def write_spec(*, cdi_root: pathlib.Path, claim_uid: str, content: bytes) -> pathlib.Path:
    """Atomically (re)write the spec of ``claim_uid``; return its path."""
    path = spec_path(cdi_root=cdi_root, claim_uid=claim_uid)
    files.atomic_write(path, content)
    return path
