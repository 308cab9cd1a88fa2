"""How a container runtime reads a CDI spec: an independent validator for tests.

Rules from the CDI specification and its Go library: a released ``cdiVersion`` no
lower than the features in use require, ``kind`` as ``vendor/class``, device names
that start and end alphanumeric, non-empty edits per device, ``KEY=VALUE`` env
entries, absolute mount paths, and unique device names.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

RELEASED = ["0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0"]
_VENDOR = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_CLASS = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")


class SpecError(Exception):
    pass


def required_version(spec: dict[str, Any]) -> str:
    devices = spec.get("devices", [])
    version = "0.3.0"
    if any(m.get("type") for d in devices for m in d["containerEdits"].get("mounts", [])):
        version = "0.4.0"
    if any(not d["name"][0].isalpha() for d in devices) or any(
        n.get("hostPath") for d in devices for n in d["containerEdits"].get("deviceNodes", [])
    ):
        version = "0.5.0"
    if spec.get("annotations") or any(d.get("annotations") for d in devices):
        version = "0.6.0"
    return version


def validate(path: pathlib.Path) -> dict[str, Any]:
    spec = json.loads(path.read_bytes())
    version = spec.get("cdiVersion")
    if version not in RELEASED:
        raise SpecError(f"unknown cdiVersion {version}")
    if RELEASED.index(version) < RELEASED.index(required_version(spec)):
        raise SpecError(f"cdiVersion {version} too low, needs {required_version(spec)}")
    vendor, _, klass = spec.get("kind", "").partition("/")
    if not (_VENDOR.match(vendor) and _CLASS.match(klass)):
        raise SpecError(f"invalid kind {spec.get('kind')!r}")
    names = [d["name"] for d in spec["devices"]]
    if not names or len(set(names)) != len(names):
        raise SpecError("devices missing or duplicated")
    for device in spec["devices"]:
        if not _NAME.match(device["name"]):
            raise SpecError(f"invalid device name {device['name']!r}")
        edits = device.get("containerEdits") or {}
        if not any(edits.get(k) for k in ("env", "mounts", "deviceNodes", "hooks")):
            raise SpecError(f"invalid device, empty device edits: {device['name']}")
        for entry in edits.get("env", []):
            if "=" not in entry or entry.startswith("="):
                raise SpecError(f"invalid env {entry!r}")
        for mount in edits.get("mounts", []):
            if not (mount["hostPath"].startswith("/") and mount["containerPath"].startswith("/")):
                raise SpecError(f"mount paths must be absolute: {mount}")
    return spec


def env_of(spec: dict[str, Any], name: str) -> dict[str, str]:
    (device,) = [d for d in spec["devices"] if d["name"] == name]
    return dict(e.split("=", 1) for e in device["containerEdits"].get("env", []))
