"""Converting a legacy ``nvidia.com/gpu`` pod into DRA claims: a pure function.

For a pod labelled ``gvirtus.io/enabled=true``, every container asking for
``nvidia.com/gpu`` (limits or requests) loses that resource and gains a pod claim
from the ResourceClaimTemplate ``gvirtus-legacy-gpu-<count>``. Init containers run
before the app containers, so a regular init container reuses the claim of an app
container with at least as many GPUs and gets its own only when none has enough; a
sidecar (an init container with ``restartPolicy: Always``) runs beside the app
containers and always gets its own.

The result is a list of JSON Patch operations built as data, their paths made by
``jsonpointer`` from the keys they name (``nvidia.com/gpu`` becomes
``nvidia.com~1gpu``), never by editing text. Deriving the operations with
``jsonpatch.make_patch`` from the pod before and after would need no operation
written out, but costs about 30 times as much per review as the conversion itself.
A pod with nothing left to convert gets no operations, which makes conversion
idempotent (and safe to reinvoke); claims the pod already has are kept.

A quantity is read only when it is a short string of digits (or a small integer):
a value of thousands of digits is refused by its length, never converted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import jsonpointer

from webhook.review import shown

LEGACY_RESOURCE = "nvidia.com/gpu"
ENABLED_LABEL = "gvirtus.io/enabled"
CONVERTED_ANNOTATION = "gvirtus.io/converted"
TEMPLATE_PREFIX = "gvirtus-legacy-gpu-"

Obj = dict[str, Any]
_WHOLE = re.compile(r"\+?0*([0-9]+)")
_MAX_DIGITS = 18
"""Longer numbers are refused by their length: no GPU count needs them, and converting
thousands of digits is refused by Python (or slow), never a denial the author can read."""


class Denied(Exception):  # noqa: N818 - a denial, not a failure
    """The pod cannot be converted; the message tells its author why and what to do."""


@dataclass
class Plan:
    """What converting a pod takes: patch operations and the templates they name."""

    patch: list[Obj] = field(default_factory=list)
    templates: set[int] = field(default_factory=set)
    claims: dict[str, int] = field(default_factory=dict)
    """Pod claim name → GPU count, for logs."""


def template_name(count: int) -> str:
    """The ResourceClaimTemplate giving ``count`` GVirtuS GPUs."""
    return f"{TEMPLATE_PREFIX}{count}"


def wants_conversion(pod: Obj) -> bool:
    """Whether the pod opted in with ``gvirtus.io/enabled=true``."""
    metadata = pod.get("metadata")
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return isinstance(labels, dict) and labels.get(ENABLED_LABEL) == "true"


def _gpus(container: Obj, *, where: str, max_gpus: int) -> int:
    """GPUs a container asks for; 0 when it asks for none."""
    resources = container.get("resources") or {}
    if not isinstance(resources, dict):
        raise Denied(f"{where}: resources must be an object")
    counts = {}
    for kind in ("limits", "requests"):
        values = resources.get(kind) or {}
        if not isinstance(values, dict):
            raise Denied(f"{where}: resources.{kind} must be an object")
        if LEGACY_RESOURCE in values:
            field = f"resources.{kind}[{LEGACY_RESOURCE}]"
            counts[kind] = _count(values[LEGACY_RESOURCE], where=f"{where}: {field}", most=max_gpus)
    if not counts:
        return 0
    if len(set(counts.values())) > 1:
        limits, requests = counts["limits"], counts["requests"]
        raise Denied(
            f"{where}: {LEGACY_RESOURCE} limits ({limits}) and requests ({requests}) differ; "
            "extended resources need them equal"
        )
    count = next(iter(counts.values()))
    if count > max_gpus:
        limit = f"at most {max_gpus} GVirtuS GPUs per container"
        raise Denied(f"{where}: asks for {count} {LEGACY_RESOURCE}; {limit}")
    return count


def _count(value: Any, *, where: str, most: int) -> int:
    """A whole, non-negative GPU count, read without ever converting a huge number."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    whole = _WHOLE.fullmatch(value.strip()) if isinstance(value, str) else None
    if whole is None:
        raise Denied(f"{where} is {shown(value)}; GPUs are counted in whole numbers")
    digits = whole.group(1)
    if len(digits) > _MAX_DIGITS:
        raise Denied(
            f"{where} is a {len(digits)}-digit number; at most {most} GVirtuS GPUs per container"
        )
    return int(digits)


def _claim_name(container: str, taken: set[str]) -> str:
    name = f"gpu-{container}"
    if len(name) > 63:
        name = (
            f"gpu-{container[:48].rstrip('-')}-{hashlib.sha256(container.encode()).hexdigest()[:8]}"
        )
    base, n = name, 1
    while name in taken:
        n += 1
        suffix = f"-{n}"
        name = base[: 63 - len(suffix)].rstrip("-") + suffix
    taken.add(name)
    return name


def _containers(spec: Obj, kind: str) -> list[Obj]:
    containers = spec.get(kind) or []
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise Denied(f"spec.{kind} must be a list of containers")
    for index, container in enumerate(containers):
        if not isinstance(container.get("name"), str) or not container["name"]:
            raise Denied(f"spec.{kind}[{index}] has no name")
    return containers


def plan(pod: Obj, *, max_gpus: int = 16) -> Plan:
    """The conversion of ``pod``; no operations when there is nothing to convert.

    Raises:
        Denied: the pod is malformed or asks for GPUs in a way that cannot be converted.
    """
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise Denied("the pod has no spec")
    if not isinstance(pod.get("metadata"), dict):
        raise Denied("the pod has no metadata")
    wanted = _wanted(spec, max_gpus=max_gpus)
    result = Plan()
    if not wanted:
        return result
    existing = spec.get("resourceClaims") or []
    if not isinstance(existing, list):
        raise Denied("spec.resourceClaims must be a list")
    claim_of = _assign(wanted, existing=existing, result=result)
    for kind, index, container, _ in wanted:
        result.patch += _container_ops(kind, index, container, claim_of.get((kind, index)))
    if result.claims:  # else only "nvidia.com/gpu: 0" to drop
        result.patch += _claim_ops(existing, result) + _annotate(pod, result)
    return result


Wanted = tuple[str, int, Obj, int]
"""Where a container asking for ``nvidia.com/gpu`` is (list, index), it, and its count."""


def _wanted(spec: Obj, *, max_gpus: int) -> list[Wanted]:
    """Every container that mentions ``nvidia.com/gpu``, app containers first."""
    app = _containers(spec, "containers")
    if not app:
        raise Denied("spec.containers is empty")
    init = _containers(spec, "initContainers")
    wanted = [
        (
            kind,
            index,
            container,
            _gpus(container, where=f"{kind[:-1]} {container['name']!r}", max_gpus=max_gpus),
        )
        for kind, group in (("containers", app), ("initContainers", init))
        for index, container in enumerate(group)
    ]
    return [w for w in wanted if w[3] > 0 or _mentions(w[2])]


def _assign(
    wanted: list[Wanted], *, existing: list[Any], result: Plan
) -> dict[tuple[str, int], str]:
    """The pod claim of each container (recorded in ``result``), reusing where init allows."""
    taken = {str(c.get("name")) for c in existing if isinstance(c, dict)}
    claim_of: dict[tuple[str, int], str] = {}
    for kind, index, container, count in wanted:
        if count == 0:
            continue
        reuse = None
        if kind == "initContainers" and container.get("restartPolicy") != "Always":
            sufficient = [
                (result.claims[n], n)
                for (k, _), n in claim_of.items()
                if k == "containers" and result.claims[n] >= count
            ]
            reuse = min(sufficient)[1] if sufficient else None
        name = reuse or _claim_name(container["name"], taken)
        claim_of[(kind, index)] = name
        if reuse is None:
            result.claims[name] = count
            result.templates.add(count)
    return claim_of


def _mentions(container: Obj) -> bool:
    """Asks for ``nvidia.com/gpu: 0``: nothing to claim, but the resource must go."""
    resources = container.get("resources") or {}
    return any(LEGACY_RESOURCE in (resources.get(k) or {}) for k in ("limits", "requests"))


def pointer(*parts: str | int) -> str:
    """The JSON Pointer to ``parts``, each reference token escaped as RFC 6901 says."""
    return "".join(f"/{jsonpointer.escape(str(part))}" for part in parts)


def _container_ops(kind: str, index: int, container: Obj, claim: str | None) -> list[Obj]:
    resources = container.get("resources") or {}
    ops: list[Obj] = [
        {"op": "remove", "path": pointer("spec", kind, index, "resources", part, LEGACY_RESOURCE)}
        for part in ("limits", "requests")
        if LEGACY_RESOURCE in (resources.get(part) or {})
    ]
    if claim is not None:
        claims = resources.get("claims")
        path = pointer("spec", kind, index, "resources", "claims")
        if isinstance(claims, list) and claims:
            ops.append({"op": "add", "path": f"{path}/-", "value": {"name": claim}})
        else:
            ops.append({"op": "add", "path": path, "value": [{"name": claim}]})
    return ops


def _claim_ops(existing: list[Any], result: Plan) -> list[Obj]:
    entries = [
        {"name": n, "resourceClaimTemplateName": template_name(c)} for n, c in result.claims.items()
    ]
    if existing:
        return [{"op": "add", "path": "/spec/resourceClaims/-", "value": e} for e in entries]
    return [{"op": "add", "path": "/spec/resourceClaims", "value": entries}]


def _annotate(pod: Obj, result: Plan) -> list[Obj]:
    value = ",".join(f"{name}={count}" for name, count in result.claims.items())
    if isinstance(pod["metadata"].get("annotations"), dict):
        path = pointer("metadata", "annotations", CONVERTED_ANNOTATION)
        return [{"op": "add", "path": path, "value": value}]
    return [{"op": "add", "path": "/metadata/annotations", "value": {CONVERTED_ANNOTATION: value}}]
