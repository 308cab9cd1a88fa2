"""Which scheduler allocates from the pools, and which gated fields its allocator honours.

A field in a ResourceSlice helps only where the scheduler's allocator acts on it.
kube-scheduler runs the upstream allocator with the cluster's feature gates, so for
it the API server's answer (:mod:`features`) is the whole story. KAI-Scheduler
v0.17.0 runs the same allocator with every gate off: it never selects a device that
has binding conditions, allocates tainted devices as if they were clean, and gives a
device with ``allowMultipleAllocations`` to one claim only. A later KAI passes its
``--feature-gates`` (from the SchedulingShard's ``spec.args``) to the allocator, but
nothing outside KAI can read them, so the admin repeats them to the controller, in
the same syntax, and a field comes back only where the admin says KAI handles it.

Binding conditions stay off under KAI whatever its gates say: even where its
allocator selects such devices, its binder binds the pod without waiting for them.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping

from dra_driver.controller.features import Features

TAINTS_GATE = "DRADeviceTaints"
CAPACITY_GATE = "DRAConsumableCapacity"
BINDING_GATE = "DRADeviceBindingConditions"

_GATE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_BOOLS = {"true": True, "false": False}


class Scheduler(enum.StrEnum):
    """The scheduler that allocates claims from the pools."""

    DEFAULT = "default"  # kube-scheduler (or any that runs the allocator with the cluster's gates)
    KAI = "kai"  # KAI-Scheduler


def parse_feature_gates(text: str) -> dict[str, bool]:
    """``A=true,B=false`` (the syntax of ``--feature-gates``) as a mapping.

    Raises:
        ValueError: a malformed or repeated entry, naming it.
    """
    gates: dict[str, bool] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        name, sign, value = (part.strip() for part in entry.partition("="))
        if not sign or not _GATE.fullmatch(name) or value.lower() not in _BOOLS:
            raise ValueError(
                f"{entry!r} is not a feature gate setting: write Name=true or Name=false, "
                "comma-separated, as in KAI-Scheduler's --feature-gates"
            )
        if name in gates:
            raise ValueError(f"feature gate {name} is given twice")
        gates[name] = _BOOLS[value.lower()]
    return gates


def allocator_features(*, scheduler: Scheduler, gates: Mapping[str, bool]) -> Features:
    """The gated slice fields the scheduler's allocator acts on.

    For kube-scheduler every field (the API server then decides); for KAI only the
    ones its gates turn on, and never binding conditions (its binder does not wait).
    """
    if scheduler is Scheduler.DEFAULT:
        return Features()
    return Features(
        taints=gates.get(TAINTS_GATE, False),
        capacity=gates.get(CAPACITY_GATE, False),
        binding=False,
    )


def usable(server: Features, allocator: Features) -> Features:
    """Fields worth publishing: the API server keeps them and the allocator acts on them."""
    return dataclasses.replace(
        server,
        taints=server.taints and allocator.taints,
        capacity=server.capacity and allocator.capacity,
        binding=server.binding and allocator.binding,
    )


def describe(*, scheduler: Scheduler, gates: Mapping[str, bool]) -> str | None:
    """What the pools leave out for this scheduler, said once at start; None for kube-scheduler."""
    if scheduler is Scheduler.DEFAULT:
        return None
    handled = allocator_features(scheduler=scheduler, gates=gates)
    parts = ["scheduling with KAI-Scheduler: devices carry no binding conditions"]
    if handled.taints:
        parts.append(f"unhealthy GPUs are tainted ({TAINTS_GATE}=true in --kai-feature-gates)")
    else:
        parts.append(
            "no taints (KAI's allocator would ignore them): unhealthy GPUs leave their pool, "
            "overload is not published, and nothing is evicted"
        )
    if handled.capacity:
        parts.append(f"capacity sharing allowed ({CAPACITY_GATE}=true in --kai-feature-gates)")
    else:
        parts.append("no multiple allocations (KAI gives each device to one claim)")
    if gates.get(BINDING_GATE):
        parts.append(f"{BINDING_GATE}=true is noted but unused: KAI's binder does not wait")
    return "; ".join(parts)
