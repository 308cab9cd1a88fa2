"""What a claim's device status should say about its backend: ready, failed, or wait.

Two phases. While the scheduler holds a pod for our binding conditions (the
allocation carries them and none of the claim's pods is bound yet), a device is
decided once, from the agent's judgement polled after the allocation: its GPU
healthy and not overloaded makes it ready; unhealthy or overloaded fails the
binding, with the reason, and the scheduler takes the allocation back. Nothing here
connects to a backend: a connect leaks a descriptor in the real ``gvirtus-backend``
(gvirtus-facts §1.0). A device the controller cannot judge (no agent report since
the allocation, pool not published) waits, but only up to the binding timeout; then
it fails too, so no pod waits the scheduler's ten minutes for nothing.

Once a pod is bound, or when the allocation has no binding conditions, a device
gets a live record and never the failure condition: the ready condition follows the
GPU's health, so ``kubectl get resourceclaim -o yaml`` shows which backend serves the
claim and whether it does, and a pod sharing the claim later is never held back by
what happened before.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from dra_driver.controller.claims import Allocated, Condition, Entry, canonical
from dra_driver.controller.features import FAILURE_CONDITION, READY_CONDITION
from dra_driver.controller.health import Verdict
from dra_driver.device import GPUDevice

Obj = dict[str, Any]


def status_data(device: GPUDevice) -> Obj:
    """The ``data`` of a status entry: which backend serves the claim (docs/names.md)."""
    return {
        "backendNode": device.node,
        "backendAddress": device.address,
        "backendPort": device.port,
        "uuid": device.uuid,
        "model": device.model,
    }


class Step(enum.Enum):
    """What to do about one device now."""

    KEEP = "keep"  # nothing to write (waiting, or already decided)
    WRITE = "write"


@dataclass(frozen=True)
class Assessment:
    """The step, and for WRITE the entry to write (times aside)."""

    step: Step
    entry: Entry | None = None
    failed: bool = False
    timed_out: bool = False


@dataclass(frozen=True)
class Judgement:
    """What the controller knows of a device's backend when it decides."""

    device: GPUDevice | None
    """The device as published; None when its pool does not publish it."""
    verdict: Verdict | None
    fresh: bool
    """The verdict comes from an agent answer received after the allocation was seen."""


def camel(reason: str) -> str:
    """``backend-down`` → ``BackendDown``: condition reasons allow no dashes."""
    return "".join(part.capitalize() for part in reason.replace("_", "-").split("-") if part)


def entry(*, ready: str, reason: str, message: str, data: Obj, failed: bool = False) -> Entry:
    """An entry with the ready condition, and the failure condition when ``failed``."""
    conditions = [Condition(READY_CONDITION, ready, reason, message)]
    if failed:
        conditions.append(Condition(FAILURE_CONDITION, "True", reason, message))
    return Entry(conditions=tuple(conditions), data=canonical(data))


def assess(
    *,
    device: Allocated,
    binding: bool,
    current: Entry | None,
    judgement: Judgement,
    waited: float,
    timeout: float,
) -> Assessment:
    """The next step for one allocated device (pure).

    ``binding`` is true while the scheduler holds a pod for this device's binding
    conditions; ``waited`` is seconds since the allocation.
    """
    if not binding:
        return Assessment(Step.WRITE, _record(device, current, judgement))
    if current is not None and current.failed:
        return Assessment(Step.KEEP)  # the scheduler is taking the allocation back
    if current is not None and current.confirmed:
        return _assess_confirmed(device, current, judgement)
    return _assess_binding(device, judgement, waited, timeout)


def _record(device: Allocated, current: Entry | None, judgement: Judgement) -> Entry:
    """The live record of a device no pod waits on: readiness, never failure."""
    published, verdict = judgement.device, judgement.verdict
    if published is None:
        return entry(
            ready="False",
            reason="DeviceUnpublished",
            message=f"pool {device.pool} no longer publishes device {device.device}",
            data=_data_of(current),
        )
    if verdict is None:
        return entry(
            ready="Unknown",
            reason="BackendUnknown",
            message=f"the backend agent of {published.node} has not reported since this "
            "controller started",
            data=status_data(published),
        )
    if not verdict.healthy:
        message = f"{published.where} is unhealthy: {verdict.message or verdict.reason}"
        return entry(
            ready="False",
            reason=camel(verdict.reason),
            message=message,
            data=status_data(published),
        )
    recorded = current is not None and current.confirmed and not current.failed
    if recorded and current is not None and current.data == canonical(status_data(published)):
        return current  # serving as recorded: keep reason and time
    return entry(
        ready="True",
        reason="BackendServing",
        message=f"{published.where} serves",
        data=status_data(published),
    )


def _assess_confirmed(device: Allocated, current: Entry, judgement: Judgement) -> Assessment:
    """Ready, but the pod is not bound yet: a backend lost meanwhile still fails it."""
    published, verdict = judgement.device, judgement.verdict
    if published is None:
        message = f"pool {device.pool} no longer publishes device {device.device}"
        return failure("DeviceUnpublished", message, _data_of(current))
    if verdict is not None and not verdict.healthy:
        message = f"{published.where} is unhealthy: {verdict.message or verdict.reason}"
        return failure(camel(verdict.reason), message, status_data(published))
    return Assessment(Step.WRITE, current)


def _assess_binding(
    device: Allocated, judgement: Judgement, waited: float, timeout: float
) -> Assessment:
    published, verdict = judgement.device, judgement.verdict
    data = status_data(published) if published is not None else {}
    if published is not None and verdict is not None and not verdict.healthy:
        message = f"{published.where} is unhealthy: {verdict.message or verdict.reason}"
        return failure(camel(verdict.reason), message, data)
    if published is not None and verdict is not None and judgement.fresh:
        if verdict.overloaded:
            message = f"{published.where} is overloaded ({verdict.overloaded})"
            return failure("BackendOverloaded", message, data)
        return Assessment(
            Step.WRITE,
            entry(
                ready="True",
                reason="BackendReady",
                message=f"{published.where} is healthy as its agent reported after the allocation",
                data=data,
            ),
        )
    if waited < timeout:
        return Assessment(Step.KEEP)
    if published is None:
        why = f"pool {device.pool} does not publish device {device.device}"
    elif verdict is None:
        why = f"the backend agent of {published.node} has not reported"
    else:
        why = f"no report from the backend agent of {published.node} since the allocation"
    message = f"backend not confirmed within {timeout:.0f}s: {why}"
    return failure("BackendUnconfirmed", message, data, timed_out=True)


def failure(reason: str, message: str, data: Obj, *, timed_out: bool = False) -> Assessment:
    """Fail the binding: not ready, and the failure condition the scheduler acts on."""
    return Assessment(
        Step.WRITE,
        entry(ready="False", reason=reason, message=message, data=data, failed=True),
        failed=True,
        timed_out=timed_out,
    )


def _data_of(current: Entry | None) -> Obj:
    return dict(json.loads(current.data)) if current is not None else {}
