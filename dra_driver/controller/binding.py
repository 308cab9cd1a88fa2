"""What a claim's device status should say about its backend: ready, failed, or wait.

Two situations. A device whose allocation waits on our binding conditions (the
scheduler holds the pod until then) is confirmed once: its GPU healthy and not
overloaded as the agent reports, and its backend accepting a TCP connection from
here; otherwise it gets the failure condition, with the reason, and the scheduler
takes the allocation back. A device the controller cannot judge (no agent report,
pool not published) waits, but only up to the binding timeout; then it fails too,
so no pod waits the scheduler's ten minutes for nothing.

Every other device (no binding conditions, or confirmed already) gets a live
record: the ready condition follows the GPU's health, so ``kubectl get
resourceclaim -o yaml`` shows which backend serves the claim and whether it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from dataclasses import dataclass
from typing import Any

from dra_driver.controller.claims import Allocated, Condition, Entry, canonical
from dra_driver.controller.health import Verdict
from dra_driver.controller.pools import FAILURE_CONDITION, READY_CONDITION

Obj = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """Where a published device's backend listens, from its slice attributes."""

    node: str
    address: str
    port: int
    uuid: str
    model: str
    index: int

    @property
    def data(self) -> Obj:
        """The ``data`` of a status entry (the names in docs/names.md)."""
        return {
            "backendNode": self.node,
            "backendAddress": self.address,
            "backendPort": self.port,
            "uuid": self.uuid,
            "model": self.model,
        }

    @property
    def where(self) -> str:
        """How messages name the backend."""
        return f"GVirtuS backend {self.address}:{self.port} (GPU {self.index} of {self.node})"


def endpoint_of(device: Obj) -> Endpoint | None:
    """The endpoint a published device names; None when attributes are missing."""
    attributes = device.get("attributes") or {}

    def value(name: str) -> Any:
        found = attributes.get(name) or {}
        return next(iter(found.values()), None)

    try:
        return Endpoint(
            node=str(value("backendNode")),
            address=str(value("backendAddress")),
            port=int(value("backendPort")),
            uuid=str(value("uuid")),
            model=str(value("model")),
            index=int(value("index")),
        )
    except (TypeError, ValueError):
        return None


class Step(enum.Enum):
    """What to do about one device now."""

    KEEP = "keep"  # nothing to write (waiting, or already decided)
    CONFIRM = "confirm"  # healthy as reported: dial the backend, then decide
    WRITE = "write"


@dataclass(frozen=True)
class Assessment:
    """The step, and for WRITE the entry to write (times aside)."""

    step: Step
    entry: Entry | None = None
    failed: bool = False
    timed_out: bool = False


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
    current: Entry | None,
    endpoint: Endpoint | None,
    verdict: Verdict | None,
    waited: float,
    timeout: float,
) -> Assessment:
    """The next step for one allocated device (pure; ``waited`` is seconds since allocation)."""
    data = endpoint.data if endpoint is not None else {}
    if device.waits and current is not None and current.failed:
        return Assessment(Step.KEEP)  # the scheduler is taking the allocation back
    if device.waits and (current is None or not current.confirmed):
        return _assess_waiting(device, endpoint, verdict, waited, timeout, data)
    if endpoint is None:
        unpublished = entry(
            ready="False",
            reason="DeviceUnpublished",
            message=f"pool {device.pool} no longer publishes device {device.device}",
            data=_data_of(current),
        )
        return Assessment(Step.WRITE, unpublished)
    if verdict is None:
        unknown = entry(
            ready="Unknown",
            reason="BackendUnknown",
            message=f"the backend agent of {endpoint.node} has not reported since this "
            "controller started",
            data=data,
        )
        return Assessment(Step.WRITE, unknown)
    if not verdict.healthy:
        message = f"{endpoint.where} is unhealthy: {verdict.message or verdict.reason}"
        return Assessment(
            Step.WRITE,
            entry(ready="False", reason=camel(verdict.reason), message=message, data=data),
        )
    if current is not None and current.confirmed and current.data == canonical(data):
        return Assessment(Step.WRITE, current)  # serving as recorded: keep reason and time
    return Assessment(
        Step.WRITE,
        entry(ready="True", reason="BackendServing", message=f"{endpoint.where} serves", data=data),
    )


def _assess_waiting(
    device: Allocated,
    endpoint: Endpoint | None,
    verdict: Verdict | None,
    waited: float,
    timeout: float,
    data: Obj,
) -> Assessment:
    if endpoint is None or verdict is None:
        if waited < timeout:
            return Assessment(Step.KEEP)
        why = (
            f"pool {device.pool} does not publish device {device.device}"
            if endpoint is None
            else f"the backend agent of {endpoint.node} has not reported"
        )
        message = f"backend not confirmed within {timeout:.0f}s: {why}"
        return failure("BackendUnconfirmed", message, data, timed_out=True)
    if not verdict.healthy:
        message = f"{endpoint.where} is unhealthy: {verdict.message or verdict.reason}"
        return failure(camel(verdict.reason), message, data)
    if verdict.overloaded:
        message = f"{endpoint.where} is overloaded ({verdict.overloaded})"
        return failure("BackendOverloaded", message, data)
    return Assessment(Step.CONFIRM)


def failure(reason: str, message: str, data: Obj, *, timed_out: bool = False) -> Assessment:
    """Fail the binding: not ready, and the failure condition the scheduler acts on."""
    return Assessment(
        Step.WRITE,
        entry(ready="False", reason=reason, message=message, data=data, failed=True),
        failed=True,
        timed_out=timed_out,
    )


def confirmed(endpoint: Endpoint, problem: str | None) -> Assessment:
    """The decision after dialling the backend (``problem`` None: it accepted)."""
    if problem is None:
        return Assessment(
            Step.WRITE,
            entry(
                ready="True",
                reason="BackendReachable",
                message=f"{endpoint.where} accepted a connection",
                data=endpoint.data,
            ),
        )
    return failure("BackendUnreachable", f"{endpoint.where} {problem}", endpoint.data)


async def dial(address: str, port: int, *, timeout: float) -> str | None:
    """Open and close one TCP connection; None when accepted, else what went wrong."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address, port)
    except TimeoutError:
        return f"did not accept a connection within {timeout:g}s"
    except ConnectionRefusedError:
        return "refused the connection"
    except OSError as exc:
        return f"could not be reached: {exc.strerror or exc}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def _data_of(current: Entry | None) -> Obj:
    return dict(json.loads(current.data)) if current is not None else {}
