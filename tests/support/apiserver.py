"""A kube-apiserver stand-in for CI: real HTTP(S), real REST semantics, in-memory.

The components run their real client code against it: the official ``kubernetes``
client, TLS verification against a CA from a kubeconfig, bearer tokens, watches over
chunked HTTP. Its answers follow the Kubernetes 1.36 captures in
``tests/fixtures/k8s-1.36/`` (``Status`` bodies, watch event shapes, bookmarks, 410s,
DELETE returning the object), and tests check it against them.

What it does, per resource type it knows (see :data:`KINDS`):

* get, list and watch with ``resourceVersion`` semantics from one global counter;
  label selectors (full grammar) and the field selectors each type supports;
* watch: initial ADDED events when no resourceVersion is given, replay from history
  otherwise, ``ERROR 410 Expired`` once the version left the history window
  (:meth:`APIServer.compact`), periodic BOOKMARKs when asked, ``timeoutSeconds``,
  ``sendInitialEvents`` with the ``k8s.io/initial-events-end`` bookmark, and
  ADDED/DELETED when an object starts or stops matching a selector;
* create (``generateName``, 409 AlreadyExists, status reset where the real strategy
  resets it), update (409 Conflict on a stale resourceVersion, no-op updates do not
  write), JSON merge and JSON patches, the ``status`` subresource, delete with
  uid/resourceVersion preconditions and finalizers;
* validation a component can trip over: immutable fields, slice limits.

It plays one release (``release``: 1.35, 1.36 or 1.37) with some feature gates off
(``disabled_features``; :data:`DEFAULT_OFF` lists each release's defaults): gated
fields are dropped on write, and DeviceTaintRules are served as that release serves
them, ``resource.k8s.io/v1beta2`` in 1.36 with DRADeviceTaintRules on (and the beta
API enabled, as on the captures' cluster), ``resource.k8s.io/v1`` in 1.37, not at all
in 1.35 (its alpha ``v1alpha3`` is not modelled). Every other kind is served alike.

Where it deliberately does less (and no component may rely on the difference):

* ``limit`` is ignored (the whole list comes back without ``continue``), which the
  API allows; ``resourceVersionMatch=Exact`` works only for the current version.
* strategic merge patch is applied as a JSON merge patch (lists are replaced, not
  merged by key); server-side apply answers 415; ``managedFields`` are not kept.
* namespaces always exist; there is no admission, no RBAC, no defaulting beyond
  what is listed; only the validation listed above.

Fault injection (:meth:`APIServer.fail_next`), a request log and hooks to drop
watches or compact history let tests exercise failure paths.

Run standalone (for benchmarks) with ``python -m tests.support.apiserver``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import dataclasses
import datetime
import json
import pathlib
import random
import re
import secrets
import shutil
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp
import jsonpatch
import yaml
from aiohttp import web

from dra_driver.quantity import parse_bytes
from tests.support import admission, apply, selectors
from webhook import certs

Obj = dict[str, Any]

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "k8s-1.36"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _dig(obj: Mapping[str, Any], *path: str) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


# -- resource types -----------------------------------------------------------------

Cause = tuple[str, str, str]  # (reason, field, message)
Validator = Callable[[Obj, Obj | None], list[Cause]]
Strategy = Callable[[Obj, Obj | None, frozenset[str]], None]
"""Adjusts an object before it is stored: drops fields of disabled gates, fills defaults."""

# Device fields each feature gate guards; with the gate off the API server drops them
# on create, and on update keeps them only if the stored object already used them.
GATED_DEVICE_FIELDS = {
    "DRADeviceTaints": ("taints",),
    "DRAConsumableCapacity": ("allowMultipleAllocations",),
    "DRADeviceBindingConditions": ("bindsToNode", "bindingConditions", "bindingFailureConditions"),
}


RELEASES = ("1.35", "1.36", "1.37")
"""The Kubernetes minor versions the server can play (``APIServer(release=...)``)."""
DEFAULT_OFF: Mapping[str, frozenset[str]] = {
    "1.35": frozenset(
        {
            "DRADeviceTaints",
            "DRADeviceTaintRules",
            "DRAConsumableCapacity",
            "DRADeviceBindingConditions",
            "DRAExtendedResource",
            "DRAPartitionableDevices",
        }
    ),
    "1.36": frozenset({"DRADeviceTaintRules"}),
    "1.37": frozenset(),
}
"""DRA gates off by default in each release (docs/dra-facts §3 and §8): pass as
``disabled_features`` for a cluster as installed. Without it, every gate is on, as on
the cluster the 1.36 captures come from."""
GATE_DEPENDENCIES = {"DRADeviceTaintRules": ("DRADeviceTaints",)}


def gate_problem(disabled: frozenset[str]) -> str | None:
    """Why a real API server would refuse to start with these gates off, or None."""
    for gate, needs in GATE_DEPENDENCIES.items():
        missing = [n for n in needs if n in disabled]
        if gate not in disabled and missing:
            return (
                f"{gate} is enabled, but depends on features that are disabled: "
                f"[{', '.join(missing)}]"
            )
    return None


def _uses(obj: Obj | None, gate: str) -> bool:
    if obj is None:
        return False
    for device in _dig(obj, "spec", "devices") or []:
        if any(field in device for field in GATED_DEVICE_FIELDS[gate]):
            return True
        if gate == "DRAConsumableCapacity" and any(
            "requestPolicy" in c for c in (device.get("capacity") or {}).values()
        ):
            return True
    return False


def _slice_strategy(new: Obj, old: Obj | None, disabled: frozenset[str]) -> None:
    for gate in GATED_DEVICE_FIELDS:
        if gate in disabled and not _uses(old, gate):
            for device in _dig(new, "spec", "devices") or []:
                for field in GATED_DEVICE_FIELDS[gate]:
                    device.pop(field, None)
                if gate == "DRAConsumableCapacity":
                    for capacity in (device.get("capacity") or {}).values():
                        capacity.pop("requestPolicy", None)
    for device in _dig(new, "spec", "devices") or []:
        for taint in device.get("taints") or []:
            taint.setdefault("timeAdded", _now())


@dataclasses.dataclass(frozen=True)
class Kind:
    """A resource type the server knows."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    fields: Mapping[str, selectors.FieldGetter] = dataclasses.field(default_factory=dict)
    status_subresource: bool = False
    reset_status_on_create: bool = False
    tracks_generation: bool = True
    bookmark_spec: Mapping[str, Any] | None = None
    validate: Validator | None = None
    strategy: Strategy | None = None
    decode: Callable[[Obj], str | None] | None = None
    """A check the real server makes while decoding: its failure is a 400, not a 422."""
    gate: str | None = None
    """Served only while this feature gate is on."""
    releases: frozenset[str] = frozenset(RELEASES)
    """Served only by these releases (a version that came or went)."""

    def served(self, *, release: str, disabled: frozenset[str]) -> bool:
        """Whether a server of ``release`` with ``disabled`` gates serves this kind."""
        return release in self.releases and (self.gate is None or self.gate not in disabled)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as the server names the resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def field_getters(self) -> dict[str, selectors.FieldGetter]:
        getters: dict[str, selectors.FieldGetter] = {
            "metadata.name": lambda o: _meta(o).get("name"),
        }
        if self.namespaced:
            getters["metadata.namespace"] = lambda o: _meta(o).get("namespace")
        getters.update(self.fields)
        return getters


def _immutable(paths: list[tuple[str, ...]]) -> Validator:
    def check(new: Obj, old: Obj | None) -> list[Cause]:
        if old is None:
            return []
        causes = []
        for path in paths:
            before, after = _dig(old, *path), _dig(new, *path)
            if before != after:
                shown = json.dumps(after) if not isinstance(after, dict) else "{...}"
                causes.append(
                    (
                        "FieldValueInvalid",
                        ".".join(path),
                        f"Invalid value: {shown}: field is immutable",
                    )
                )
        return causes

    return check


def _validate_slice(new: Obj, old: Obj | None) -> list[Cause]:
    causes = _immutable([("spec", "pool", "name"), ("spec", "driver")])(new, old)
    spec = new.get("spec") or {}
    devices = spec.get("devices") or []
    advanced = any(d.get("taints") or d.get("consumesCounters") for d in devices)
    limit = 64 if advanced else 128
    if len(devices) > limit:
        message = f"Too many: {len(devices)}: must have at most {limit} items"
        causes.append(("FieldValueTooMany", "spec.devices", message))
    placement = [
        k for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection") if spec.get(k)
    ]
    if len(placement) != 1:
        which = "multiple fields are set" if placement else "none are set"
        message = (
            "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` "
            f"is required, but {which}"
        )
        causes.append(
            ("FieldValueRequired" if not placement else "FieldValueInvalid", "spec", message)
        )
    for i, device in enumerate(devices):
        name = device.get("name") or ""
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
            causes.append(
                (
                    "FieldValueInvalid",
                    f"spec.devices[{i}].name",
                    f"Invalid value: {name!r}: must be a DNS label",
                )
            )
        causes += _request_policy_causes(i, device)
        causes += _binding_causes(i, device)
        if len(device.get("attributes") or {}) + len(device.get("capacity") or {}) > 32:
            causes.append(
                (
                    "FieldValueInvalid",
                    f"spec.devices[{i}]",
                    "the total number of attributes and capacities must not exceed 32",
                )
            )
    return causes


def _binding_causes(index: int, device: Obj) -> list[Cause]:
    causes: list[Cause] = []
    where = f"spec.devices[{index}]"
    ready, failure = device.get("bindingConditions"), device.get("bindingFailureConditions")
    for name, values in (("bindingConditions", ready), ("bindingFailureConditions", failure)):
        if values and len(values) > 4:
            message = f"Too many: {len(values)}: must have at most 4 items"
            causes.append(("FieldValueTooMany", f"{where}.{name}", message))
    if ready and not failure:
        message = (
            "Invalid value: null: bindingFailureConditions are required to use bindingConditions"
        )
        causes.append(("FieldValueInvalid", f"{where}.bindingFailureConditions", message))
    if failure and not ready:
        message = (
            "Invalid value: null: bindingConditions are required to use bindingFailureConditions"
        )
        causes.append(("FieldValueInvalid", f"{where}.bindingConditions", message))
    return causes


def _request_policy_causes(index: int, device: Obj) -> list[Cause]:
    causes: list[Cause] = []
    for name, capacity in (device.get("capacity") or {}).items():
        policy = capacity.get("requestPolicy")
        if policy is None:
            continue
        where = f"spec.devices[{index}].capacity[{name}].requestPolicy"
        if not device.get("allowMultipleAllocations"):
            causes.append(
                ("FieldValueForbidden", where, "Forbidden: allowMultipleAllocations must be true")
            )
        valid = policy.get("validRange")
        if valid is None:
            continue
        value = parse_bytes(capacity["value"])
        low, step = parse_bytes(valid["min"]), parse_bytes(valid.get("step", "1"))
        high = parse_bytes(valid.get("max", capacity["value"]))
        shown_max = valid.get("max")
        if high > value:
            message = (
                f'Invalid value: "{shown_max}": max is larger than capacity value: '
                f"{capacity['value']}"
            )
            causes.append(("FieldValueInvalid", f"{where}.validRange.max", message))
        if "default" in policy and parse_bytes(policy["default"]) > high:
            message = f'Invalid value: "{policy["default"]}": default is more than max: {shown_max}'
            causes.append(("FieldValueInvalid", f"{where}.validRange.max", message))
        if (high - low) % step:
            message = (
                f'Invalid value: "{shown_max}": value is not a multiple of a given step '
                f"({valid.get('step')}) from ({valid['min']})"
            )
            causes.append(("FieldValueInvalid", f"{where}.validRange.step", message))
    return causes


_INTERNAL = "Internal error occurred: "


def _device_spec_strategy(*path: str) -> Strategy:
    """Defaults and gate-dropping of a claim's ``devices`` (at ``path``), on create only."""

    def adjust(new: Obj, old: Obj | None, disabled: frozenset[str]) -> None:
        if old is not None:
            return  # the spec is immutable for claims; templates keep what they had
        devices = _dig(new, *path) or {}
        for request in devices.get("requests") or []:
            for exactly in [request.get("exactly") or {}, *(request.get("firstAvailable") or [])]:
                if not exactly:
                    continue
                exactly.setdefault("allocationMode", "ExactCount")
                if exactly["allocationMode"] == "ExactCount":
                    exactly.setdefault("count", 1)
                if "DRADeviceTaints" in disabled:
                    exactly.pop("tolerations", None)
                if "DRAConsumableCapacity" in disabled:
                    exactly.pop("capacity", None)
        if "DRAConsumableCapacity" in disabled:
            for constraint in devices.get("constraints") or []:
                constraint.pop("distinctAttribute", None)

    return adjust


def _validate_devices(*path: str) -> Validator:
    """Constraints need exactly one fully qualified attribute (as the real validation)."""
    where = ".".join(path)

    def check(new: Obj, old: Obj | None) -> list[Cause]:
        causes: list[Cause] = []
        for i, constraint in enumerate((_dig(new, *path) or {}).get("constraints") or []):
            named = [k for k in ("matchAttribute", "distinctAttribute") if k in constraint]
            if len(named) != 1:
                message = (
                    "Required value: exactly one of `matchAttribute` or `distinctAttribute` is "
                    "required"
                    if not named
                    else "Invalid value: must specify only one kind of constraint"
                )
                causes.append(("FieldValueRequired", f"{where}.constraints[{i}]", message))
            for key in named:
                if "/" not in str(constraint[key]):
                    message = f'Invalid value: "{constraint[key]}": must include a domain'
                    causes.append(("FieldValueInvalid", f"{where}.constraints[{i}].{key}", message))
        return causes

    return check


def _validate_claim(new: Obj, old: Obj | None) -> list[Cause]:
    return (
        _immutable([("spec",)])(new, old)
        or _validate_devices("spec", "devices")(new, old)
        or _validate_device_status(new)
    )


_CONDITION_TYPE = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_CONDITION_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def _validate_device_status(claim: Obj) -> list[Cause]:
    """``status.devices``: allocated devices only, valid conditions, small data (1.36 rules)."""
    allocated = {
        (r.get("driver"), r.get("pool"), r.get("device"), r.get("shareID") or "")
        for r in _dig(claim, "status", "allocation", "devices", "results") or []
    }
    causes: list[Cause] = []
    for i, entry in enumerate(_dig(claim, "status", "devices") or []):
        where = f"status.devices[{i}]"
        key = (
            entry.get("driver"),
            entry.get("pool"),
            entry.get("device"),
            entry.get("shareID") or "",
        )
        if key not in allocated:
            shown = json.dumps(
                dict(zip(("Driver", "Pool", "Device", "ShareID"), key, strict=True)),
                separators=(",", ":"),
            )
            causes.append(
                (
                    "FieldValueInvalid",
                    where,
                    f"Invalid value: {shown}: must be an allocated device in the claim",
                )
            )
        conditions = entry.get("conditions") or []
        if len(conditions) > 8:
            message = f"Too many: {len(conditions)}: must have at most 8 items"
            causes.append(("FieldValueTooMany", f"{where}.conditions", message))
        for j, condition in enumerate(conditions):
            at = f"{where}.conditions[{j}]"
            if condition.get("status") not in ("True", "False", "Unknown"):
                message = (
                    f'Unsupported value: "{condition.get("status")}": supported values: '
                    '"False", "True", "Unknown"'
                )
                causes.append(("FieldValueNotSupported", f"{at}.status", message))
            if not _CONDITION_TYPE.match(str(condition.get("type", ""))):
                causes.append(
                    ("FieldValueInvalid", f"{at}.type", "Invalid value: not a condition type")
                )
            if not condition.get("lastTransitionTime"):
                causes.append(("FieldValueRequired", f"{at}.lastTransitionTime", "Required value"))
            reason = condition.get("reason")
            if not reason:
                causes.append(("FieldValueRequired", f"{at}.reason", "Required value"))
            elif not _CONDITION_REASON.match(str(reason)) or len(str(reason)) > 1024:
                causes.append(("FieldValueInvalid", f"{at}.reason", f'Invalid value: "{reason}"'))
        data = entry.get("data")
        if data is not None and (
            not isinstance(data, dict) or len(json.dumps(data, separators=(",", ":"))) > 10 * 1024
        ):
            causes.append(
                (
                    "FieldValueInvalid",
                    f"{where}.data",
                    "Invalid value: must be a JSON object of at most 10 KiB",
                )
            )
    return causes


def _validate_pod(new: Obj, old: Obj | None) -> list[Cause]:
    """Container claims must name pod claims (checked after admission, as in 1.36)."""
    spec = new.get("spec") or {}
    names = [c.get("name") for c in spec.get("resourceClaims") or []]
    causes: list[Cause] = []
    for kind in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(kind) or []):
            for j, claim in enumerate((container.get("resources") or {}).get("claims") or []):
                if claim.get("name") in names:
                    continue
                known = "must be one of the names in pod.spec.resourceClaims" + (
                    ": " + ", ".join(f'"{n}"' for n in names) if names else " which is empty"
                )
                causes.append(
                    (
                        "FieldValueNotFound",
                        f"spec.{kind}[{i}].resources.claims[{j}]",
                        f'Not found: "{claim.get("name")}": {known}',
                    )
                )
    for i, entry in enumerate(spec.get("resourceClaims") or []):
        sources = [k for k in ("resourceClaimName", "resourceClaimTemplateName") if entry.get(k)]
        if len(sources) != 1:
            causes.append(
                (
                    "FieldValueInvalid",
                    f"spec.resourceClaims[{i}]",
                    "Invalid value: at most one of `resourceClaimName` or "
                    "`resourceClaimTemplateName` may be set",
                )
            )
    return causes


_WEBHOOK_DEFAULTS = {
    "failurePolicy": "Fail",
    "matchPolicy": "Equivalent",
    "namespaceSelector": {},
    "objectSelector": {},
    "timeoutSeconds": 10,
    "reinvocationPolicy": "Never",
}


def _webhook_strategy(new: Obj, old: Obj | None, disabled: frozenset[str]) -> None:
    for webhook in new.get("webhooks") or []:
        for key, value in _WEBHOOK_DEFAULTS.items():
            webhook.setdefault(key, copy.deepcopy(value))
        for rule in webhook.get("rules") or []:
            rule.setdefault("scope", "*")


def _validate_webhooks(new: Obj, old: Obj | None) -> list[Cause]:
    causes: list[Cause] = []
    for i, webhook in enumerate(new.get("webhooks") or []):
        where = f"webhooks[{i}]"
        if webhook.get("sideEffects") not in ("None", "NoneOnDryRun"):
            message = 'Unsupported value: must be one of "None", "NoneOnDryRun"'
            causes.append(("FieldValueNotSupported", f"{where}.sideEffects", message))
        if "v1" not in (webhook.get("admissionReviewVersions") or []):
            message = "Required value: must include at least one of v1, v1beta1"
            causes.append(("FieldValueRequired", f"{where}.admissionReviewVersions", message))
        if not 1 <= int(webhook.get("timeoutSeconds", 10)) <= 30:
            message = "Invalid value: the timeout value must be between 1 and 30 seconds"
            causes.append(("FieldValueInvalid", f"{where}.timeoutSeconds", message))
        bundle = (webhook.get("clientConfig") or {}).get("caBundle")
        if bundle:
            try:
                base64.b64decode(bundle, validate=True)
            except ValueError:
                message = "Invalid value: illegal base64 data"
                causes.append(("FieldValueInvalid", f"{where}.clientConfig.caBundle", message))
    return causes


_TIME_FIELDS = frozenset(
    {
        "timeAdded",
        "lastTransitionTime",
        "creationTimestamp",
        "deletionTimestamp",
        "allocationTimestamp",
        "lastProbeTime",
        "lastHeartbeatTime",
    }
)
_MICRO_TIME_FIELDS = frozenset({"acquireTime", "renewTime"})


TAINT_EFFECTS = ("NoExecute", "NoSchedule", "None")


def _taint_rule_strategy(new: Obj, old: Obj | None, disabled: frozenset[str]) -> None:
    """Fill ``timeAdded`` (kept while the taint stays the same); a new rule's status is empty."""
    taint = _dig(new, "spec", "taint")
    if isinstance(taint, dict) and not taint.get("timeAdded"):
        before = _dig(old, "spec", "taint") if old is not None else None
        same = isinstance(before, dict) and all(
            before.get(k) == taint.get(k) for k in ("key", "value", "effect")
        )
        taint["timeAdded"] = before["timeAdded"] if same and before.get("timeAdded") else _now()
    if old is None:
        new["status"] = {}


def _validate_taint_rule(new: Obj, old: Obj | None) -> list[Cause]:
    taint = _dig(new, "spec", "taint")
    if not isinstance(taint, dict):
        return [("FieldValueRequired", "spec.taint", "Required value")]
    causes = []
    if not taint.get("key"):
        causes.append(("FieldValueRequired", "spec.taint.key", "Required value"))
    effect = taint.get("effect")
    if not effect:
        causes.append(("FieldValueRequired", "spec.taint.effect", "Required value"))
    elif effect not in TAINT_EFFECTS:
        supported = ", ".join(f'"{e}"' for e in TAINT_EFFECTS)
        causes.append(
            (
                "FieldValueNotSupported",
                "spec.taint.effect",
                f'Unsupported value: "{effect}": supported values: {supported}',
            )
        )
    return causes


def _device_class_strategy(new: Obj, old: Obj | None, disabled: frozenset[str]) -> None:
    if "DRAExtendedResource" in disabled and not _dig(old or {}, "spec", "extendedResourceName"):
        (new.get("spec") or {}).pop("extendedResourceName", None)


def _normalize_times(value: Any) -> None:
    """Store times as a 1.36 server does: UTC with ``Z``, whatever offset was sent.

    ``metav1.Time`` is kept to the second, ``MicroTime`` to the microsecond; a value
    that does not parse is left for validation to refuse.
    """
    if isinstance(value, list):
        for item in value:
            _normalize_times(item)
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        if isinstance(item, str) and key in _TIME_FIELDS | _MICRO_TIME_FIELDS:
            try:
                moment = datetime.datetime.fromisoformat(item.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                continue
            moment = moment.astimezone(datetime.UTC)
            micro = key in _MICRO_TIME_FIELDS
            value[key] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")
        else:
            _normalize_times(item)


_MICRO_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")


def _decode_lease(obj: Obj) -> str | None:
    for field in ("acquireTime", "renewTime"):
        value = _dig(obj, "spec", field)
        if value is not None and not _MICRO_TIME.match(str(value)):
            return (
                f'Lease in version "v1" cannot be handled as a Lease: parsing time "{value}" '
                'as "2006-01-02T15:04:05.000000Z07:00"'
            )
    return None


KINDS: tuple[Kind, ...] = (
    Kind(
        "resource.k8s.io",
        "v1",
        "resourceslices",
        "ResourceSlice",
        namespaced=False,
        fields={
            "spec.driver": lambda o: _dig(o, "spec", "driver"),
            "spec.nodeName": lambda o: _dig(o, "spec", "nodeName"),
        },
        bookmark_spec={
            "driver": "",
            "pool": {"name": "", "generation": 0, "resourceSliceCount": 0},
        },
        validate=_validate_slice,
        strategy=_slice_strategy,
    ),
    Kind(
        "resource.k8s.io",
        "v1",
        "resourceclaims",
        "ResourceClaim",
        namespaced=True,
        status_subresource=True,
        reset_status_on_create=True,
        bookmark_spec={"devices": {}},
        validate=_validate_claim,
        strategy=_device_spec_strategy("spec", "devices"),
    ),
    Kind(
        "resource.k8s.io",
        "v1",
        "resourceclaimtemplates",
        "ResourceClaimTemplate",
        namespaced=True,
        validate=_validate_devices("spec", "spec", "devices"),
        strategy=_device_spec_strategy("spec", "spec", "devices"),
    ),
    Kind(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        namespaced=False,
        validate=_validate_webhooks,
        strategy=_webhook_strategy,
    ),
    Kind(
        "resource.k8s.io",
        "v1",
        "deviceclasses",
        "DeviceClass",
        namespaced=False,
        strategy=_device_class_strategy,
    ),
    Kind(
        "resource.k8s.io",
        "v1beta2",
        "devicetaintrules",
        "DeviceTaintRule",
        namespaced=False,
        status_subresource=True,
        validate=_validate_taint_rule,
        strategy=_taint_rule_strategy,
        gate="DRADeviceTaintRules",
        releases=frozenset({"1.36"}),
    ),
    Kind(
        "resource.k8s.io",
        "v1",
        "devicetaintrules",
        "DeviceTaintRule",
        namespaced=False,
        status_subresource=True,
        validate=_validate_taint_rule,
        strategy=_taint_rule_strategy,
        gate="DRADeviceTaintRules",
        releases=frozenset({"1.37"}),
    ),
    Kind(
        "",
        "v1",
        "nodes",
        "Node",
        namespaced=False,
        status_subresource=True,
        tracks_generation=False,
    ),
    Kind(
        "",
        "v1",
        "pods",
        "Pod",
        namespaced=True,
        status_subresource=True,
        fields={"spec.nodeName": lambda o: _dig(o, "spec", "nodeName")},
        validate=_validate_pod,
    ),
    Kind("", "v1", "events", "Event", namespaced=True, tracks_generation=False),
    Kind("", "v1", "secrets", "Secret", namespaced=True, tracks_generation=False),
    Kind("", "v1", "configmaps", "ConfigMap", namespaced=True, tracks_generation=False),
    Kind(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        namespaced=True,
        tracks_generation=False,
        decode=_decode_lease,
    ),
)


class APIError(Exception):
    """An error answer, carrying the exact ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
        }
        if details is not None:
            self.body["details"] = details
        self.body["code"] = code


def _not_found(kind: Kind, name: str) -> APIError:
    return APIError(
        404,
        "NotFound",
        f'{kind.qualified} "{name}" not found',
        {"name": name, "group": kind.group, "kind": kind.plural},
    )


def _conflict(kind: Kind, name: str, why: str) -> APIError:
    return APIError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind.qualified} "{name}": {why}',
        {"name": name, "group": kind.group, "kind": kind.plural},
    )


def _invalid(kind: Kind, name: str, causes: list[Cause]) -> APIError:
    resource = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
    joined = [f"{field}: {message}" for _, field, message in causes]
    summary = joined[0] if len(joined) == 1 else "[" + ", ".join(joined) + "]"
    return APIError(
        422,
        "Invalid",
        f'{resource} "{name}" is invalid: {summary}',
        {
            "name": name,
            "group": kind.group,
            "kind": kind.kind,
            "causes": [{"reason": r, "message": m, "field": f} for r, f, m in causes],
        },
    )


_STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


# -- store ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Watcher:
    kind: Kind
    namespace: str | None
    labels: list[selectors.Requirement]
    fields: list[tuple[selectors.FieldGetter, bool, str]]
    queue: asyncio.Queue[Obj | None]
    loop: asyncio.AbstractEventLoop

    def matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and _meta(obj).get("namespace") != self.namespace:
            return False
        return selectors.labels_match(self.labels, obj) and selectors.fields_match(self.fields, obj)

    def offer(self, old: Obj | None, new: Obj | None, deleted: Obj | None) -> None:
        """Translate a change into what this watcher sees (or nothing)."""
        event = self.translate(old, new, deleted)
        if event is not None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    def translate(self, old: Obj | None, new: Obj | None, deleted: Obj | None) -> Obj | None:
        if deleted is not None:
            return {"type": "DELETED", "object": deleted} if self.matches(deleted) else None
        was, now = self.matches(old), self.matches(new)
        if now:
            return {"type": "MODIFIED" if was else "ADDED", "object": new}
        if was and new is not None:
            return {"type": "DELETED", "object": new}
        return None


class Store:
    """Objects, the global resourceVersion and the watch history. Thread-safe."""

    def __init__(self, *, history: int = 10_000) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.rv = 100
        self.oldest_watchable = self.rv
        # (rv, plural, old, new, deleted) — enough to replay for any selector.
        self.history: collections.deque[tuple[int, str, Obj | None, Obj | None, Obj | None]] = (
            collections.deque(maxlen=history)
        )
        self.watchers: list[_Watcher] = []
        self.committed_at: dict[int, float] = {}
        """When each history entry was committed (``time.monotonic``)."""

    def _next_rv(self) -> str:
        self.rv += 1
        if self.history.maxlen and len(self.history) == self.history.maxlen:
            self.oldest_watchable = self.history[0][0]
        return str(self.rv)

    def commit(
        self, kind: Kind, key: tuple[str, str, str], old: Obj | None, new: Obj | None
    ) -> Obj:
        """Store ``new`` (or delete when None) under a fresh resourceVersion; notify watchers."""
        with self.lock:
            rv = self._next_rv()
            if new is None:
                assert old is not None
                deleted = copy.deepcopy(old)
                deleted["metadata"]["resourceVersion"] = rv
                self.objects.pop(key, None)
                record = (self.rv, kind.plural, old, None, deleted)
                result = deleted
            else:
                new["metadata"]["resourceVersion"] = rv
                self.objects[key] = new
                record = (self.rv, kind.plural, old, new, None)
                result = new
            if self.history.maxlen and len(self.history) == self.history.maxlen:
                self.committed_at.pop(self.history[0][0], None)
            self.history.append(record)
            self.committed_at[self.rv] = time.monotonic()
            for watcher in self.watchers:
                if watcher.kind.plural == kind.plural:
                    watcher.offer(old, new, record[4])
            return copy.deepcopy(result)

    def compact(self) -> None:
        """Forget all history: watches from any earlier resourceVersion get 410."""
        with self.lock:
            self.history.clear()
            self.oldest_watchable = self.rv


# -- server ---------------------------------------------------------------------------


@dataclasses.dataclass
class Fault:
    """Answer matching requests with an error, or late, ``times`` times.

    ``delay`` holds a request before it is handled (a slow server: the change is
    made late); ``answer_delay`` handles it at once and holds the answer (a slow
    network: the change is made, the client learns of it late, or never if it
    gave up, as with a real API server). ``user_agent`` limits the fault to one
    client, as when only one replica's path to the server is slow.
    """

    method: str
    path: re.Pattern[str]
    code: int
    times: int
    delay: float = 0.0
    message: str = "injected fault"
    answer_delay: float = 0.0
    user_agent: re.Pattern[str] | None = None

    def matches(self, request: web.Request) -> bool:
        return (
            self.times > 0
            and self.method in (request.method, "*")
            and bool(self.path.search(request.path))
            and (
                self.user_agent is None
                or bool(self.user_agent.search(request.headers.get("User-Agent", "")))
            )
        )


@dataclasses.dataclass(frozen=True)
class Latency:
    """Time a real API server spends that this one does not, in seconds (0: none).

    A kube-apiserver authenticates, authorizes, runs admission and encodes each
    request, and keeps objects in etcd, whose single raft loop persists every write
    (a WAL fsync) before it commits, one batch at a time. A linearizable read (a GET
    or LIST without ``resourceVersion``, what clients send by default) asks that same
    loop for its read index, so it waits for the write being persisted. The model:

    * ``write``: each write holds the one raft loop for this long (writes queue);
    * ``read``: each read costs this long, after waiting for the raft loop to be free
      (reads run side by side); a read with ``resourceVersion=0`` is served by the
      watch cache and does not wait;
    * ``cache_lag``: the watch cache shows each object as it was this long ago (a
      GET with ``resourceVersion=0`` of an object created since is a 404).

    Watches are not delayed (the watch cache serves them). Which numbers to use, and
    why, is in ``docs/benchmarks.md``.
    """

    read: float = 0.0
    write: float = 0.0
    cache_lag: float = 0.0

    def __bool__(self) -> bool:
        return bool(self.read or self.write)


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    user_agent: str = ""
    at: float = 0.0

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"


class APIServer:
    """The server; start it with :meth:`start` (own thread) or :meth:`run_forever`."""

    def __init__(
        self,
        *,
        token: str | None = None,
        bookmark_interval: float = 60.0,
        default_watch_timeout: float = 1800.0,
        history: int = 10_000,
        tls_dir: pathlib.Path | None = None,
        release: str = "1.36",
        disabled_features: frozenset[str] = frozenset(),
        latency: Latency = Latency(),
    ) -> None:
        if release not in RELEASES:
            raise ValueError(f"release {release} is not one of {RELEASES}")
        self.release = release
        self.kinds: dict[str, Kind] = {}
        self.latency = latency
        self._raft: asyncio.Lock | None = None
        self.disabled_features = disabled_features
        self.token = token or secrets.token_urlsafe(16)
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.store = Store(history=history)
        self.admission = admission.Admission()
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self._tls_dir = tls_dir
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._streams: set[asyncio.Task[Any]] = set()
        self.port = 0
        self.ca_pem = b""
        self._ca: Any = None

    @property
    def disabled_features(self) -> frozenset[str]:
        """Feature gates that are off; setting them is restarting the server with them off.

        Gates decide which fields are dropped and which kinds are served (one version
        per plural at most: ``kinds`` maps each served plural to it).

        Raises:
            ValueError: a real API server would refuse to start so (a dependency is off).
        """
        return self._disabled_features

    @disabled_features.setter
    def disabled_features(self, disabled: frozenset[str]) -> None:
        if problem := gate_problem(disabled):
            raise ValueError(problem)
        self._disabled_features = frozenset(disabled)
        self.kinds = {
            k.plural: k for k in KINDS if k.served(release=self.release, disabled=disabled)
        }

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> APIServer:
        """Serve on 127.0.0.1 (random port) from a thread; returns once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_until_complete(self._serve_until_stopped())
            loop.close()

        self._thread = threading.Thread(target=run, name="test-apiserver", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every stream and the listener; join the thread."""
        if self._loop is None or self._stopping is None or self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _start(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._stopping = asyncio.Event()
        self._raft = asyncio.Lock()
        day = datetime.timedelta(days=1)
        self._ca = ca = certs.new_ca(common_name="test-apiserver CA", valid_for=day)
        self.ca_pem = ca.cert_pem
        context = self._serving_context(host)
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/api/{version}/{rest:.*}", self._handle_core)
        app.router.add_route("*", "/apis/{group}/{version}/{rest:.*}", self._handle_group)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _serving_context(self, host: str) -> ssl.SSLContext:
        """TLS for serving at ``host``, with a certificate of this server's CA naming it."""
        day = datetime.timedelta(days=1)
        serving = certs.new_serving(ca=self._ca, dns_names=["localhost"], ips=[host], valid_for=day)
        folder = self._tls_dir or pathlib.Path(_tempdir())
        folder.mkdir(parents=True, exist_ok=True)
        cert_file, key_file = folder / f"apiserver-{host}.crt", folder / f"apiserver-{host}.key"
        cert_file.write_bytes(serving.cert_pem)
        key_file.write_bytes(serving.key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        if self._tls_dir is None:  # a folder of our own: leave no private key behind
            shutil.rmtree(folder, ignore_errors=True)
        return context

    def listen_at(self, address: str) -> str:
        """Also serve at ``address`` (e.g. the test's end of a link to a network namespace).

        A component running in a namespace of :mod:`tests.support.netns` cannot reach
        127.0.0.1 of the test's own; given a kubeconfig naming this URL it reaches the
        same server over the link, with a certificate valid for that address.
        """
        assert self._loop is not None and self._runner is not None

        listener = socket.create_server((address, 0))

        async def serve() -> None:
            assert self._runner is not None
            context = self._serving_context(address)
            await web.SockSite(self._runner, listener, ssl_context=context).start()

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(10)
        return f"https://{address}:{listener.getsockname()[1]}"

    async def _serve_until_stopped(self) -> None:
        assert self._stopping is not None and self._runner is not None
        await self._stopping.wait()
        for task in list(self._streams):
            task.cancel()
        await asyncio.gather(*self._streams, return_exceptions=True)
        await self._runner.cleanup()
        await self.admission.close()

    def run_forever(self, *, port: int, kubeconfig: pathlib.Path) -> None:
        """Serve on ``port`` in this thread until interrupted (standalone mode)."""

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._start(port=port)
            self.write_kubeconfig(kubeconfig)
            print(f"serving {self.url}; kubeconfig {kubeconfig}", flush=True)
            await self._serve_until_stopped()

        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main())

    def write_kubeconfig(self, path: pathlib.Path, *, server: str | None = None) -> pathlib.Path:
        """Write a kubeconfig with this server (or ``server``, see :meth:`listen_at`)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": server or self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "test", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config))
        return path

    # -- test hooks ------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        *,
        code: int = 500,
        times: int = 1,
        delay: float = 0.0,
        message: str = "injected fault",
        answer_delay: float = 0.0,
        user_agent: str | None = None,
    ) -> None:
        """Make the next ``times`` requests matching ``method`` and the ``path`` regex fail.

        ``code`` 0 only delays (``delay`` seconds before handling, ``answer_delay``
        after it) and then serves normally; ``user_agent`` (a regex) limits the fault
        to the clients whose User-Agent it matches. See :class:`Fault`.
        """
        self.faults.append(
            Fault(
                method.upper(),
                re.compile(path),
                code,
                times,
                delay,
                message,
                answer_delay,
                re.compile(user_agent) if user_agent is not None else None,
            )
        )

    def drop_watches(self) -> None:
        """Close every open watch stream, as a restarting API server would."""
        if self._loop is not None:
            for task in list(self._streams):
                self._loop.call_soon_threadsafe(task.cancel)

    def compact(self) -> None:
        """Forget history, so resuming watches get 410 Gone."""
        self.store.compact()

    def writes(self) -> list[Request]:
        """Requests that could change state (everything but GET and dry runs)."""
        return [r for r in self.requests if r.method != "GET" and not r.dry_run]

    async def send(self, method: str, path: str, *, body: Any = None) -> tuple[int, Obj]:
        """One raw JSON request over HTTPS with the token: (status, answer).

        For tests of the server itself, sending what a component never would.
        """
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method, self.url + path, json=body, headers=headers, ssl=context
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    # -- direct object access (tests seed and inspect state with these) -------------

    def put(self, obj: Obj, *, plural: str | None = None) -> Obj:
        """Create or replace ``obj`` as given, status included (bypasses HTTP rules).

        ``plural`` names the type of list items, which carry no kind of their own.
        """
        obj = copy.deepcopy(obj)
        kind = self.kinds[plural] if plural else self._kind_for(obj)
        obj.setdefault("kind", kind.kind)
        obj.setdefault("apiVersion", kind.api_version)
        meta = obj.setdefault("metadata", {})
        key = self._key(kind, meta.get("namespace"), meta["name"])
        with self.store.lock:
            old = self.store.objects.get(key)
            meta.setdefault("uid", (old or {}).get("metadata", {}).get("uid") or str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            meta.pop("resourceVersion", None)
            if kind.tracks_generation:
                meta.setdefault("generation", 1)
            return self.store.commit(kind, key, old, obj)

    def mutate(
        self, plural: str, name: str, namespace: str | None, change: Callable[[Obj], None]
    ) -> Obj:
        """Change a stored object in one atomic step (a new resourceVersion, one event).

        Stand-ins for other controllers (the scheduler model) write with this, so a
        read-modify-write never loses what a component wrote in between.
        """
        kind = self.kinds[plural]
        key = self._key(kind, namespace, name)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is None:
                raise KeyError(f"{plural} {namespace}/{name} does not exist")
            new = copy.deepcopy(old)
            change(new)
            new["metadata"].pop("resourceVersion", None)
            return self.store.commit(kind, key, old, new)

    def get(self, plural: str, name: str, namespace: str | None = None) -> Obj | None:
        kind = self.kinds[plural]
        with self.store.lock:
            found = self.store.objects.get(self._key(kind, namespace, name))
            return copy.deepcopy(found) if found else None

    def cached(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        """The object as the watch cache shows it: as it was ``latency.cache_lag`` ago."""
        if not self.latency.cache_lag:
            return self.get(kind.plural, name, namespace)
        horizon = time.monotonic() - self.latency.cache_lag
        with self.store.lock:
            for rv, plural, _, new, deleted in reversed(self.store.history):
                if plural != kind.plural or self.store.committed_at.get(rv, 0.0) > horizon:
                    continue
                meta = _meta(new or deleted or {})
                if meta.get("name") == name and meta.get("namespace") == namespace:
                    return copy.deepcopy(new) if new is not None else None
            return None

    def versions(self, plural: str, name: str, namespace: str | None = None) -> list[Obj]:
        """Every version of one object still in the history, oldest first."""
        with self.store.lock:
            return [
                copy.deepcopy(new)
                for _, kind, _, new, _ in self.store.history
                if kind == plural
                and new is not None
                and new["metadata"]["name"] == name
                and new["metadata"].get("namespace") == namespace
            ]

    def list(self, plural: str) -> list[Obj]:
        with self.store.lock:
            return [
                copy.deepcopy(o)
                for (p, _, _), o in sorted(self.store.objects.items())
                if p == plural
            ]

    def remove(self, plural: str, name: str, namespace: str | None = None) -> None:
        """Delete outright, ignoring finalizers (as if they had been cleared)."""
        kind = self.kinds[plural]
        key = self._key(kind, namespace, name)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is not None:
                self.store.commit(kind, key, old, None)

    def _kind_for(self, obj: Mapping[str, Any]) -> Kind:
        for kind in self.kinds.values():
            if kind.kind == obj.get("kind") and kind.api_version == obj.get("apiVersion"):
                return kind
        raise KeyError(f"unknown kind {obj.get('apiVersion')}/{obj.get('kind')}")

    @staticmethod
    def _key(kind: Kind, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (kind.plural, (namespace or "") if kind.namespaced else "", name)

    # -- HTTP ------------------------------------------------------------------------

    async def _handle_core(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "", request.match_info["version"])

    async def _handle_group(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(
            request, request.match_info["group"], request.match_info["version"]
        )

    async def _handle(self, request: web.Request, group: str, version: str) -> web.StreamResponse:
        query = dict(request.query)
        agent = request.headers.get("User-Agent", "")
        self.requests.append(
            Request(
                request.method, request.path, query, request.content_type, agent, time.monotonic()
            )
        )

        fault: Fault | None = None
        try:
            self._authenticate(request)
            fault = await self._apply_faults(request)
            kind, namespace, name, sub = self._route(group, version, request.match_info["rest"])
            if self.latency and not (request.method == "GET" and query.get("watch")):
                await self._storage(request, query)
            response = await self._dispatch(request, kind, namespace, name, sub, query)
        except APIError as exc:
            response = web.json_response(exc.body, status=exc.code)
        if fault is not None and fault.answer_delay:
            await self._hold(fault.answer_delay)
        return response

    async def _storage(self, request: web.Request, query: Mapping[str, str]) -> None:
        """Spend what a real server and etcd would (see :class:`Latency`)."""
        assert self._raft is not None
        if request.method == "GET":
            if query.get("resourceVersion") in (None, ""):
                async with self._raft:  # the read index waits for the write in progress
                    pass
            await self._hold(self.latency.read)
        elif not _dry_run(query):
            async with self._raft:
                await self._hold(self.latency.write)
        else:
            await self._hold(self.latency.read)

    def _authenticate(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            raise APIError(401, "Unauthorized", "Unauthorized")

    async def _hold(self, seconds: float) -> None:
        """Sleep for a fault, but not past the server stopping (it drops what it held)."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _apply_faults(self, request: web.Request) -> Fault | None:
        """Hold or fail ``request`` as the first matching fault says; that fault."""
        for fault in self.faults:
            if fault.matches(request):
                fault.times -= 1
                if fault.delay:
                    await self._hold(fault.delay)
                if fault.code:
                    if fault.answer_delay:
                        await self._hold(fault.answer_delay)
                    reason = {
                        500: "InternalError",
                        503: "ServiceUnavailable",
                        429: "TooManyRequests",
                        409: "Conflict",
                        403: "Forbidden",
                        404: "NotFound",
                    }.get(fault.code, "Unknown")
                    raise APIError(fault.code, reason, fault.message)
                return fault
        return None

    def _route(
        self, group: str, version: str, rest: str
    ) -> tuple[Kind, str | None, str | None, str | None]:
        parts = [p for p in rest.split("/") if p]
        namespace = None
        if len(parts) >= 3 and parts[0] == "namespaces":
            namespace, parts = parts[1], parts[2:]
        if not parts or parts[0] not in self.kinds:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        kind = self.kinds[parts[0]]
        if kind.group != group or kind.version != version or len(parts) > 3:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not kind.namespaced:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        name = parts[1] if len(parts) > 1 else None
        sub = parts[2] if len(parts) > 2 else None
        if sub is not None and not (sub == "status" and kind.status_subresource):
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return kind, namespace, name, sub

    async def _dispatch(
        self,
        request: web.Request,
        kind: Kind,
        namespace: str | None,
        name: str | None,
        sub: str | None,
        query: dict[str, str],
    ) -> web.StreamResponse:
        method = request.method
        if name is None:
            if method == "GET" and query.get("watch") in ("1", "true"):
                return await self._watch(request, kind, namespace, query)
            if method == "GET":
                return web.json_response(self._list(kind, namespace, query))
            if method == "POST":
                if kind.namespaced and namespace is None:
                    raise APIError(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                body = await self._body(request, kind)
                warnings: list[str] = []
                if kind.plural == "pods" and namespace is not None:
                    body, warnings = await self._admit(namespace, body, query)
                created = self._create(kind, namespace, body, dry_run=_dry_run(query))
                headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)}
                return web.json_response(created, status=201, headers=headers if warnings else None)
        else:
            if method == "GET" and query.get("resourceVersion") == "0":
                found = self.cached(kind, namespace, name)
                if found is None:
                    raise _not_found(kind, name)
                return web.json_response(found)
            if method == "GET":
                return web.json_response(self._get(kind, namespace, name))
            if method == "PUT":
                body = await self._body(request, kind)
                updated = self._update(kind, namespace, name, body, sub, dry_run=_dry_run(query))
                return web.json_response(updated)
            if method == "PATCH":
                raw = await request.read()
                if request.content_type == "application/apply-patch+yaml":
                    applied, created = self._apply(kind, namespace, name, raw, sub, query)
                    return web.json_response(applied, status=201 if created else 200)
                patched = self._patch(
                    kind, namespace, name, raw, request.content_type, sub, dry_run=_dry_run(query)
                )
                return web.json_response(patched)
            if method == "DELETE" and sub is None:
                raw = await request.read()
                return web.json_response(self._delete(kind, namespace, name, raw))
        raise APIError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    async def _body(self, request: web.Request, kind: Kind) -> Obj:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            snippet = raw[:30].decode(errors="replace")
            raise APIError(
                400,
                "BadRequest",
                f"the object provided is unrecognized (must be of type {kind.kind}): couldn't get "
                f"version/kind; json parse error: {exc} ({snippet} ...)",
            ) from exc
        if not isinstance(body, dict):
            raise APIError(
                400,
                "BadRequest",
                f"the object provided is unrecognized (must be of type {kind.kind})",
            )
        if body.get("kind") not in (None, kind.kind) or body.get("apiVersion") not in (
            None,
            kind.api_version,
        ):
            raise APIError(
                400,
                "BadRequest",
                f"the API version in the data ({body.get('apiVersion')}) does not match "
                f"the expected API version ({kind.api_version})",
            )
        body["kind"], body["apiVersion"] = kind.kind, kind.api_version
        if kind.decode is not None and (problem := kind.decode(body)):
            raise APIError(400, "BadRequest", problem)
        _normalize_times(body)
        if not isinstance(body.get("metadata", {}), dict):
            raise APIError(
                400, "BadRequest", f'{kind.kind} in version "{kind.version}" cannot be handled'
            )
        body.setdefault("metadata", {})
        return body

    async def _admit(
        self, namespace: str, pod: Obj, query: Mapping[str, str]
    ) -> tuple[Obj, list[str]]:
        options = {
            k: [v] if k == "dryRun" else v
            for k, v in query.items()
            if k in ("dryRun", "fieldManager")
        }
        try:
            return await self.admission.admit_pod(
                configurations=self.list("mutatingwebhookconfigurations"),
                namespace=namespace,
                pod=pod,
                dry_run=_dry_run(query),
                options=options,
            )
        except admission.AdmissionError as exc:
            details = None
            if exc.code == 500:
                details = {"causes": [{"message": exc.message.removeprefix(_INTERNAL)}]}
            raise APIError(exc.code, exc.reason, exc.message, details) from exc

    # -- verbs ------------------------------------------------------------------------

    def _get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        found = self.get(kind.plural, name, namespace)
        if found is None:
            raise _not_found(kind, name)
        return found

    def _selectors(self, kind: Kind, query: Mapping[str, str]) -> tuple[Any, Any]:
        try:
            labels = selectors.parse_labels(query.get("labelSelector"))
            fields = selectors.parse_fields(
                query.get("fieldSelector"), supported=kind.field_getters()
            )
        except selectors.SelectorError as exc:
            raise APIError(400, "BadRequest", str(exc)) from exc
        return labels, fields

    def _list(self, kind: Kind, namespace: str | None, query: Mapping[str, str]) -> Obj:
        labels, fields = self._selectors(kind, query)
        requested = query.get("resourceVersion", "")
        with self.store.lock:
            if requested and requested != "0":
                wanted = int(requested) if requested.isdigit() else -1
                if wanted > self.store.rv:
                    raise APIError(
                        504,
                        "Timeout",
                        f"Too large resource version: {wanted}, current: {self.store.rv}",
                        {
                            "causes": [
                                {
                                    "reason": "ResourceVersionTooLarge",
                                    "message": "Too large resource version",
                                }
                            ],
                            "retryAfterSeconds": 1,
                        },
                    )
                if query.get("resourceVersionMatch") == "Exact" and wanted != self.store.rv:
                    raise APIError(
                        410, "Expired", "The resourceVersion for the provided list is too old."
                    )
            items = [
                copy.deepcopy(obj)
                for (plural, ns, _), obj in sorted(self.store.objects.items())
                if plural == kind.plural
                and (namespace is None or ns == namespace)
                and selectors.labels_match(labels, obj)
                and selectors.fields_match(fields, obj)
            ]
            rv = str(self.store.rv)
        return {
            "kind": f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _create(
        self, kind: Kind, namespace: str | None, body: Obj, *, dry_run: bool = False
    ) -> Obj:
        meta = body["metadata"]
        if kind.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise APIError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match "
                    "the namespace sent on the request",
                )
            meta["namespace"] = namespace
        if meta.get("resourceVersion"):
            raise APIError(
                500,
                "InternalError",
                "Internal error occurred: "
                "resourceVersion should not be set on objects to be created",
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _invalid(
                    kind,
                    "",
                    [
                        (
                            "FieldValueRequired",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            alphabet = "bcdfghjklmnpqrstvwxz2456789"
            meta["name"] = meta["generateName"] + "".join(random.choice(alphabet) for _ in range(5))
        key = self._key(kind, namespace, meta["name"])
        if kind.strategy is not None:
            kind.strategy(body, None, self.disabled_features)
        if kind.validate is not None and (causes := kind.validate(body, None)):
            raise _invalid(kind, meta["name"], causes)
        if kind.reset_status_on_create:
            body.pop("status", None)
        with self.store.lock:
            if key in self.store.objects:
                raise APIError(
                    409,
                    "AlreadyExists",
                    f'{kind.qualified} "{meta["name"]}" already exists',
                    {"name": meta["name"], "group": kind.group, "kind": kind.plural},
                )
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta.pop("deletionTimestamp", None)
            if kind.tracks_generation:
                meta["generation"] = 1
            if dry_run:
                return copy.deepcopy(body)
            return self.store.commit(kind, key, None, body)

    def _update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Obj,
        sub: str | None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        meta = body["metadata"]
        if meta.get("name") not in (None, name):
            raise APIError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) "
                f"does not match the name on the URL ({name})",
            )
        key = self._key(kind, namespace, name)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is None:
                raise _not_found(kind, name)
            if (
                meta.get("resourceVersion")
                and meta["resourceVersion"] != old["metadata"]["resourceVersion"]
            ):
                raise _conflict(kind, name, _STALE)
            return self._write(kind, key, old, body, sub, dry_run=dry_run)

    def _write(
        self,
        kind: Kind,
        key: tuple[str, str, str],
        old: Obj,
        body: Obj,
        sub: str | None,
        *,
        dry_run: bool = False,
        managed_fields: list[Obj] | None = None,
    ) -> Obj:
        """Merge ``body`` over ``old`` the way the subresource allows, validate, commit.

        ``managedFields`` are kept from ``old`` unless the body sets them (or an
        apply passes its own).
        """
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = body["status"]
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            server_owned = (
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "namespace",
                "name",
            )
            for field in server_owned:
                if field in old["metadata"]:
                    new["metadata"][field] = old["metadata"][field]
                else:
                    new["metadata"].pop(field, None)
            if kind.status_subresource:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if managed_fields is not None:
            new["metadata"]["managedFields"] = managed_fields
        elif "managedFields" in old["metadata"] and "managedFields" not in new["metadata"]:
            new["metadata"]["managedFields"] = old["metadata"]["managedFields"]
        if kind.strategy is not None and sub is None:
            kind.strategy(new, old, self.disabled_features)
        if new == old:
            return copy.deepcopy(old)
        if kind.validate is not None and (causes := kind.validate(new, old)):
            raise _invalid(kind, key[2], causes)
        if kind.tracks_generation and new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if dry_run:
            return new
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return self.store.commit(kind, key, old, None)
        return self.store.commit(kind, key, old, new)

    def _patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        raw: bytes,
        content_type: str,
        sub: str | None,
        *,
        dry_run: bool = False,
    ) -> Obj:
        try:
            patch = json.loads(raw)
        except ValueError as exc:
            raise APIError(400, "BadRequest", f"error decoding patch: {exc}") from exc
        key = self._key(kind, namespace, name)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is None:
                raise _not_found(kind, name)
            current = copy.deepcopy(old)
            if content_type == "application/json-patch+json":
                try:
                    patched = jsonpatch.apply_patch(current, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise APIError(
                        422, "Invalid", f"the server rejected our request: {exc}"
                    ) from exc
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                if not isinstance(patch, dict):
                    raise APIError(400, "BadRequest", "patch must be a JSON object")
                wanted_rv = _dig(patch, "metadata", "resourceVersion")
                if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                    raise _conflict(kind, name, _STALE)
                patched = _merge_patch(current, patch)
            else:
                raise APIError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type}",
                )
            if not isinstance(patched, dict):
                raise APIError(422, "Invalid", "patch did not produce an object")
            patched.setdefault("metadata", {})
            return self._write(kind, key, old, patched, sub, dry_run=dry_run)

    def _apply(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        raw: bytes,
        sub: str | None,
        query: Mapping[str, str],
    ) -> tuple[Obj, bool]:
        """Server-side apply (see :mod:`tests.support.apply`); True when it created."""
        manager = query.get("fieldManager")
        if not manager:
            raise APIError(
                400,
                "BadRequest",
                "PATCH, application/apply-patch+yaml requests must have a fieldManager",
            )
        try:
            applied = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise APIError(400, "BadRequest", f"error decoding YAML: {exc}") from exc
        if not isinstance(applied, dict):
            raise APIError(400, "BadRequest", "the applied configuration must be an object")
        if applied.get("kind") != kind.kind or applied.get("apiVersion") != kind.api_version:
            raise APIError(
                400,
                "BadRequest",
                f"the API version in the data ({applied.get('apiVersion')}) does not match "
                f"the expected API version ({kind.api_version})",
            )
        _normalize_times(applied)
        meta = applied.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise APIError(
                400,
                "BadRequest",
                f"the name of the object ({meta.get('name')}) does not match "
                f"the name on the URL ({name})",
            )
        key = self._key(kind, namespace, name)
        dry_run = _dry_run(query)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is None:
                if sub is not None:
                    raise _not_found(kind, name)
                body = apply.apply(
                    {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": {"name": name}},
                    applied,
                    manager=manager,
                    subresource=None,
                    now=_now(),
                )
                return self._create(kind, namespace, body, dry_run=dry_run), True
            if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
                raise _conflict(
                    kind,
                    name,
                    f"Precondition failed: UID in precondition: {meta['uid']}, "
                    f"UID in object meta: {old['metadata']['uid']}",
                )
            result = apply.apply(old, applied, manager=manager, subresource=sub, now=_now())
            return (
                self._write(
                    kind,
                    key,
                    old,
                    result,
                    sub,
                    dry_run=dry_run,
                    managed_fields=result["metadata"]["managedFields"],
                ),
                False,
            )

    def _delete(self, kind: Kind, namespace: str | None, name: str, raw: bytes) -> Obj:
        options = json.loads(raw) if raw.strip() else {}
        preconditions = (options or {}).get("preconditions") or {}
        key = self._key(kind, namespace, name)
        with self.store.lock:
            old = self.store.objects.get(key)
            if old is None:
                raise _not_found(kind, name)
            for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                want, have = preconditions.get(field), old["metadata"].get(field)
                if want and want != have:
                    raise _conflict(
                        kind,
                        name,
                        f"Precondition failed: {label} in precondition: {want}, "
                        f"{label} in object meta: {have}",
                    )
            if old["metadata"].get("finalizers"):
                if old["metadata"].get("deletionTimestamp"):
                    return copy.deepcopy(old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return self.store.commit(kind, key, old, new)
            return self.store.commit(kind, key, old, None)

    # -- watch ------------------------------------------------------------------------

    async def _watch(
        self, request: web.Request, kind: Kind, namespace: str | None, query: Mapping[str, str]
    ) -> web.StreamResponse:
        labels, fields = self._selectors(kind, query)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        initial_events = query.get("sendInitialEvents") == "true"
        if initial_events and (
            query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks
        ):
            raise APIError(
                422,
                "Invalid",
                "sendInitialEvents requires resourceVersionMatch=NotOlderThan "
                "and allowWatchBookmarks=true",
            )
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        queue: asyncio.Queue[Obj | None] = asyncio.Queue()
        watcher = _Watcher(kind, namespace, labels, fields, queue, asyncio.get_running_loop())
        requested = query.get("resourceVersion", "")
        with self.store.lock:
            backlog, expired = self._backlog(kind, watcher, requested, initial_events)
            if not expired:
                self.store.watchers.append(watcher)
            current = self.store.rv
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            if expired:
                status = APIError(
                    410, "Expired", f"too old resource version: {requested} ({current})"
                ).body
                await response.write(_line({"type": "ERROR", "object": status}))
                return response
            for event in backlog:
                await response.write(_line(event))
            if initial_events:
                await response.write(_line(self._bookmark(kind, initial_end=True)))
            await self._pump(response, kind, queue, timeout, bookmarks)
        except (asyncio.CancelledError, ConnectionResetError):
            pass
        finally:
            self._streams.discard(task)
            with self.store.lock, contextlib.suppress(ValueError):
                self.store.watchers.remove(watcher)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await response.write_eof()
        return response

    def _backlog(
        self, kind: Kind, watcher: _Watcher, requested: str, initial: bool
    ) -> tuple[list[Obj], bool]:
        """Events a new watch starts with, and whether its resourceVersion expired."""
        if not requested or requested == "0" or initial:
            objects = [o for (p, _, _), o in sorted(self.store.objects.items()) if p == kind.plural]
            return [
                {"type": "ADDED", "object": copy.deepcopy(o)} for o in objects if watcher.matches(o)
            ], False
        wanted = int(requested) if requested.isdigit() else -1
        if wanted < self.store.oldest_watchable:
            return [], True
        events = []
        for rv, plural, old, new, deleted in self.store.history:
            if rv > wanted and plural == kind.plural:
                event = watcher.translate(old, new, deleted)
                if event is not None:
                    events.append(copy.deepcopy(event))
        return events, False

    async def _pump(
        self,
        response: web.StreamResponse,
        kind: Kind,
        queue: asyncio.Queue[Obj | None],
        timeout: float,
        bookmarks: bool,
    ) -> None:
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        while (left := deadline - time.monotonic()) > 0:
            wait = min(left, next_bookmark - time.monotonic()) if bookmarks else left
            try:
                event = await asyncio.wait_for(queue.get(), max(wait, 0))
            except TimeoutError:
                if bookmarks and time.monotonic() >= next_bookmark:
                    await response.write(_line(self._bookmark(kind)))
                    next_bookmark = time.monotonic() + self.bookmark_interval
                continue
            if event is None:
                return
            await response.write(_line(event))

    def _bookmark(self, kind: Kind, *, initial_end: bool = False) -> Obj:
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj: Obj = {"kind": kind.kind, "apiVersion": kind.api_version, "metadata": meta}
        if kind.bookmark_spec is not None:
            obj["spec"] = copy.deepcopy(dict(kind.bookmark_spec))
        return {"type": "BOOKMARK", "object": obj}


def _dry_run(query: Mapping[str, str]) -> bool:
    if query.get("dryRun") not in (None, "All"):
        raise APIError(
            400, "BadRequest", f"Invalid dry run value: {query['dryRun']!r}; must be All"
        )
    return query.get("dryRun") == "All"


def _line(event: Obj) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _tempdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="apiserver-tls-")


def fixture(name: str) -> Obj:
    """Load one capture from ``tests/fixtures/k8s-1.36``."""
    return json.loads((FIXTURES / name).read_text())


def fixture_object(name: str) -> Obj:
    """The object a capture's response returned (or its request sent, for POSTs)."""
    capture = fixture(name)
    body = capture["response"].get("body")
    return (
        body
        if isinstance(body, dict) and body.get("kind") != "Status"
        else capture["request"]["body"]
    )


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[APIServer]:
    server = APIServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the test API server standalone.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", type=pathlib.Path, required=True)
    parser.add_argument("--bookmark-interval", type=float, default=60.0)
    parser.add_argument(
        "--seed", type=pathlib.Path, help="JSON list of objects to hold from the start"
    )
    parser.add_argument("--release", choices=RELEASES, default="1.36")
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="turn off the gates the release has off by default (else every gate is on)",
    )
    parser.add_argument(
        "--read-latency-ms", type=float, default=0.0, help="added to every read (see Latency)"
    )
    parser.add_argument(
        "--write-latency-ms",
        type=float,
        default=0.0,
        help="each write holds the one storage loop this long (see Latency)",
    )
    args = parser.parse_args(argv)
    server = APIServer(
        bookmark_interval=args.bookmark_interval,
        release=args.release,
        disabled_features=DEFAULT_OFF[args.release] if args.defaults else frozenset(),
        latency=Latency(read=args.read_latency_ms / 1000, write=args.write_latency_ms / 1000),
    )
    for obj in json.loads(args.seed.read_text()) if args.seed else []:
        server.put(obj)
    server.run_forever(port=args.port, kubeconfig=args.kubeconfig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
