"""The ``DRAPlugin`` gRPC services (v1 and v1beta1) over one implementation.

The two API versions carry the same messages except that v1beta1's ``Device`` has no
``share_id``; each servicer is the same class bound to its generated module. Per the
protocol, a gRPC error is reserved for the whole call: every claim of a request gets
its own entry, with an ``error`` naming the claim and the cause when it failed.
"""

from __future__ import annotations

import logging
import time
from types import ModuleType
from typing import Any

from dra_driver import logs
from dra_driver.kubeletapi.dra.v1 import api_pb2 as v1_pb
from dra_driver.kubeletapi.dra.v1beta1 import api_pb2 as v1beta1_pb
from dra_driver.plugin import cdi, metrics
from dra_driver.plugin.state import ClaimRef, PrepareResult, State

log = logging.getLogger(__name__)


class DRAPluginServicer:
    """Serves ``NodePrepareResources`` and ``NodeUnprepareResources`` for one API version."""

    def __init__(self, *, state: State, messages: ModuleType) -> None:
        self.state = state
        self.messages = messages
        self.with_share_id = "share_id" in messages.Device.DESCRIPTOR.fields_by_name

    async def NodePrepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Prepare the claims; one response entry per claim UID."""
        refs, invalid = _refs(request.claims)
        started = time.perf_counter()
        results = await self.state.prepare(refs, timeout=context.time_remaining()) if refs else {}
        elapsed = time.perf_counter() - started
        response = self.messages.NodePrepareResourcesResponse()
        for uid, message in invalid.items():
            response.claims[uid].error = message
        for ref in refs:
            result = results[ref.uid]
            self._fill(response.claims[ref.uid], result)
            metrics.observe_prepare(error=bool(result.error), seconds=elapsed)
            with logs.context(claim=f"{ref.namespace}/{ref.name}", claim_uid=ref.uid):
                if result.error:
                    log.warning("prepare failed: %s", result.error)
                else:
                    log.info(
                        "prepared",
                        extra={
                            "devices": [
                                f"{d.pool}/{d.device}@{d.address}:{d.port}" for d in result.devices
                            ],
                            "seconds": round(elapsed, 4),
                        },
                    )
        return response

    async def NodeUnprepareResources(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Unprepare the claims; unknown claims succeed."""
        refs, invalid = _refs(request.claims)
        started = time.perf_counter()
        outcome = await self.state.unprepare(refs, timeout=context.time_remaining()) if refs else {}
        elapsed = time.perf_counter() - started
        response = self.messages.NodeUnprepareResourcesResponse()
        for uid, message in invalid.items():
            response.claims[uid].error = message
        for ref in refs:
            error = outcome[ref.uid]
            response.claims[ref.uid].error = error
            metrics.observe_unprepare(error=bool(error), seconds=elapsed)
            with logs.context(claim=f"{ref.namespace}/{ref.name}", claim_uid=ref.uid):
                if error:
                    log.warning("unprepare failed: %s", error)
                else:
                    log.info("unprepared", extra={"seconds": round(elapsed, 4)})
        return response

    def _fill(self, entry: Any, result: PrepareResult) -> None:
        if result.error:
            entry.error = result.error
            return
        for device in result.devices:
            fields: dict[str, Any] = {
                "request_names": [device.request],
                "pool_name": device.pool,
                "device_name": device.device,
                "cdi_device_ids": [cdi.qualified_name(device.cdi_name)],
            }
            if self.with_share_id and device.share_id:
                fields["share_id"] = device.share_id
            entry.devices.add(**fields)


def _refs(claims: Any) -> tuple[list[ClaimRef], dict[str, str]]:
    """Well-formed claim references, and errors for those missing a required field."""
    refs, invalid = [], {}
    for claim in claims:
        missing = [f for f in ("namespace", "uid", "name") if not getattr(claim, f)]
        if missing:
            name = f"{claim.namespace}/{claim.name}"
            invalid[claim.uid] = f"claim {name} (uid {claim.uid!r}) is missing {', '.join(missing)}"
        else:
            refs.append(ClaimRef(namespace=claim.namespace, uid=claim.uid, name=claim.name))
    return refs, invalid


def servicers(*, state: State) -> tuple[DRAPluginServicer, DRAPluginServicer]:
    """The v1 and v1beta1 servicers, sharing ``state``."""
    return (
        DRAPluginServicer(state=state, messages=v1_pb),
        DRAPluginServicer(state=state, messages=v1beta1_pb),
    )
