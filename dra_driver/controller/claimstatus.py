"""Writing our entries of claims' ``status.devices``: server-side apply, retried, never lost.

The controller is the only writer (node plugins must not hold the cluster-wide
permission that label-selected allocations need). For each claim it applies the
complete set of this driver's entries with field manager ``gvirtus-dra-controller``:
entries of other drivers and every other field belong to other managers and are
left alone, and an entry of ours the claim no longer has is removed by the apply
itself. The apply names the claim's uid, so a claim deleted and created again
under the same name is never written with the old one's status.

A sweep runs whenever a claim changes, when a poll round changed a verdict or the
published devices, and once a second while a decision or a retry is pending (never
more often: a claim waiting on a decision is looked at once a second). Each claim is
handled by one task at a time; a failed write backs off exponentially per claim; a
claim the server no longer has is dropped.

Before a binding is failed, the device is withdrawn from scheduling (``withdraw``:
tainted, or left out of its pool where taints are unavailable) and only then is the
failure condition written. A real scheduler that takes an allocation back picks the
same device again unless it is tainted (dra-facts §0), so the order matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Histogram

from dra_driver.backoff import Backoff
from dra_driver.controller import binding
from dra_driver.controller.binding import Assessment, Judgement, Step
from dra_driver.controller.claims import Allocated, Claim, ClaimIndex, Entry
from dra_driver.controller.health import Verdict
from dra_driver.controller.pods import PodIndex
from dra_driver.device import GPUDevice
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.events import EventRecorder, Regarding
from dra_driver.kube.resources import RESOURCE_CLAIMS

log = logging.getLogger(__name__)

FIELD_MANAGER = "gvirtus-dra-controller"
WRITES = Counter(
    "gvirtus_dra_controller_claim_status_writes_total",
    "Applies of claim device status, by result.",
    ["result"],
)
for _result in ("ok", "gone", "conflict", "invalid", "error"):
    WRITES.labels(_result)
DECISIONS = Counter(
    "gvirtus_dra_controller_binding_decisions_total",
    "Claims waiting on binding conditions, by decision.",
    ["decision"],
)
for _decision in ("ready", "failed", "timeout"):
    DECISIONS.labels(_decision)
DECISION_SECONDS = Histogram(
    "gvirtus_dra_controller_binding_decision_seconds",
    "From seeing a waiting allocation to writing its decision.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

Obj = dict[str, Any]


@dataclass
class _Retry:
    """When a claim whose write failed may be tried again."""

    delays: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    until: float = 0.0


class Devices(Protocol):
    """What claim status reads about devices (a :class:`view.DeviceView`)."""

    def device(self, pool: str, name: str) -> GPUDevice | None:
        """The device as published, or None."""

    def verdict(self, pool: str, index: int) -> Verdict | None:
        """The verdict on a GPU, None while unknown."""

    def answered(self, pool: str) -> float | None:
        """When (``clock``) the pool's agent last answered, None if never."""


class Withdrawer(Protocol):
    """Who keeps a GPU off scheduling (a :class:`pool_sync.PoolSync`)."""

    async def withdraw(self, pool: str, index: int, reason: str) -> None:
        """Taint or withdraw the GPU's devices; published when this returns."""


@dataclass
class ClaimStatus:
    """Keeps every allocated claim's entries of this driver true."""

    kube: KubeClient
    driver: str
    claims: ClaimIndex
    pods: PodIndex
    devices: Devices
    withdrawer: Withdrawer
    events: EventRecorder
    binding_timeout: float = 60.0
    concurrency: int = 16
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _busy: set[str] = field(default_factory=set)
    _backoff: dict[str, _Retry] = field(default_factory=dict)
    _first_seen: dict[tuple[str, tuple[str, str, str]], float] = field(default_factory=dict)
    _settled: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """Per claim, the inputs its status was last found right for."""
    _gone: dict[str, str] = field(default_factory=dict)
    """Claims (key → uid) the server no longer had, until their watch event arrives."""
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _missed: set[str] = field(default_factory=set)
    """Claims a sweep passed over while their task ran: looked at again when it ends."""

    def __post_init__(self) -> None:
        self._limit = asyncio.Semaphore(self.concurrency)

    def poke(self) -> None:
        """Health may have changed: look at every claim again soon."""
        self.claims.changed.set()

    async def run(self) -> None:
        """Sweep on every change, and every second while a decision is pending."""
        try:
            while True:
                self.claims.changed.clear()
                self.sweep()
                pending = self._backoff or any(
                    _undecided(c, bound=self._bound(c)) for c in self.claims.items.values()
                )
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
                # cancellation that ends this loop when leadership is lost.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0 if pending else None):
                        await self.claims.changed.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def sweep(self) -> None:
        """Start a task for each claim that is neither being handled nor backing off."""
        now = self.clock()
        live = set(self.claims.items)
        for key in set(self._backoff) - live:
            del self._backoff[key]
        for key in set(self._settled) - live:
            del self._settled[key]
        self._gone = {k: uid for k, uid in self._gone.items() if k in live}
        self._first_seen = {k: v for k, v in self._first_seen.items() if k[0] in live}
        for key, claim in list(self.claims.items.items()):
            if key in self._busy:
                self._missed.add(key)
                continue
            retry = self._backoff.get(key)
            if (retry is not None and retry.until > now) or self._gone.get(key) == claim.uid:
                continue
            inputs = self._inputs(key, claim)
            if self._settled.get(key) == inputs:
                continue  # nothing it depends on changed: no task, no write
            self._busy.add(key)
            task = asyncio.create_task(self._settle(key, claim, inputs))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _inputs(self, key: str, claim: Claim) -> tuple[Any, ...]:
        """Everything a claim's status is computed from (the clock, while it waits)."""
        bound = self._bound(claim)
        found: list[Any] = [claim, bound]
        for device in claim.devices:
            judgement = self._judge(key, device)
            verdict = judgement.verdict
            found.append((judgement.device, verdict.key if verdict else None, judgement.fresh))
        if _undecided(claim, bound=bound):
            found.append(self.clock())  # waiting on a report or the timeout: look again
        return tuple(found)

    def _bound(self, claim: Claim) -> bool:
        return self.pods.any_bound(claim.reserved)

    def _judge(self, key: str, device: Allocated) -> Judgement:
        published = self.devices.device(device.pool, device.device)
        verdict = self.devices.verdict(device.pool, published.index) if published else None
        answered = self.devices.answered(device.pool)
        seen = self._first_seen.get((key, device.key))
        fresh = answered is not None and seen is not None and answered > seen
        return Judgement(device=published, verdict=verdict, fresh=fresh)

    async def _settle(self, key: str, claim: Claim, inputs: tuple[Any, ...]) -> None:
        try:
            async with self._limit:
                if await self._settle_one(key, claim):
                    self._settled[key] = inputs
        except Exception:  # one claim's bug must not stop the others
            log.exception("updating the status of claim %s failed", key)
            self._fail(key)
        finally:
            self._busy.discard(key)
            if key in self._missed or key in self._backoff:
                # Look again: a change arrived meanwhile, or a retry is now pending
                # (which the loop only times once it knows of it).
                self._missed.discard(key)
                self.claims.changed.set()

    async def _settle_one(self, key: str, claim: Claim) -> bool:
        """Bring one claim's entries up to date; False when it must be looked at again."""
        now = self.clock()
        bound = self._bound(claim)
        desired: list[tuple[tuple[str, str, str], Entry]] = []
        decided: list[Assessment] = []
        for device in claim.devices:
            first = self._first_seen.setdefault((key, device.key), now)
            waited = now - first
            if claim.allocated_at is not None:
                waited = max(waited, self.wall() - claim.allocated_at)
            judgement = self._judge(key, device)
            current = claim.entry(device.key)
            binding_phase = device.waits and not bound
            assessment = binding.assess(
                device=device,
                binding=binding_phase,
                current=current,
                judgement=judgement,
                waited=waited,
                timeout=self.binding_timeout,
            )
            if assessment.step is Step.WRITE:
                assert assessment.entry is not None
                desired.append((device.key, assessment.entry))
                if binding_phase and assessment.entry != current:
                    decided.append(assessment)
                if assessment.failed:
                    await self._withdraw(device, judgement, assessment)
            elif current is not None:
                desired.append((device.key, current))
        if _same(desired, claim):
            return True
        if not await self._apply(key, claim, desired):
            return False
        await self._report(key, claim, decided, now)
        return True

    async def _withdraw(
        self, device: Allocated, judgement: Judgement, assessment: Assessment
    ) -> None:
        """Keep the scheduler off a device before telling it the binding failed."""
        if judgement.device is None:
            return  # not published: nothing to schedule onto
        assert assessment.entry is not None
        reason = assessment.entry.conditions[0].reason
        await self.withdrawer.withdraw(device.pool, judgement.device.index, reason)

    async def _apply(
        self, key: str, claim: Claim, desired: list[tuple[tuple[str, str, str], Entry]]
    ) -> bool:
        stamp = datetime.datetime.fromtimestamp(self.wall(), datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": claim.name, "namespace": claim.namespace, "uid": claim.uid},
            "status": {
                "devices": [
                    _entry_object(self.driver, device, entry, claim.entry(device), stamp)
                    for device, entry in desired
                ]
            },
        }
        try:
            await self.kube.apply(
                RESOURCE_CLAIMS, body, field_manager=FIELD_MANAGER, subresource="status"
            )
        except errors.NotFoundError:
            WRITES.labels("gone").inc()
            self._gone[key] = claim.uid
            return False
        except errors.ConflictError as exc:
            # The uid no longer matches: deleted and created again. The new claim's watch
            # event replaces this record before the retry.
            WRITES.labels("conflict").inc()
            self._fail(key)
            log.info("claim %s changed identity (%s); retrying", key, exc.message)
            return False
        except errors.InvalidError as exc:
            WRITES.labels("invalid").inc()
            log.warning("the API server refused the status of claim %s: %s", key, exc.message)
            self._fail(key)
            return False
        except errors.KubeError as exc:
            WRITES.labels("error").inc()
            delay = self._fail(key)
            log.warning(
                "writing the status of claim %s failed (retrying in %.1fs): %s",
                key,
                delay,
                exc.message,
            )
            return False
        WRITES.labels("ok").inc()
        self._backoff.pop(key, None)
        return True

    def _fail(self, key: str) -> float:
        retry = self._backoff.setdefault(key, _Retry())
        delay = retry.delays.next()
        retry.until = self.clock() + delay
        return delay

    async def _report(
        self, key: str, claim: Claim, decided: list[Assessment], started: float
    ) -> None:
        for assessment in decided:
            assert assessment.entry is not None
            ready = assessment.entry.conditions[0]
            outcome = (
                "timeout" if assessment.timed_out else "failed" if assessment.failed else "ready"
            )
            DECISIONS.labels(outcome).inc()
            firsts = [v for (k, _), v in self._first_seen.items() if k == key]
            DECISION_SECONDS.observe(max(0.0, started - min(firsts, default=started)))
            if assessment.failed:
                log.warning(
                    "backend of claim %s cannot serve: %s",
                    key,
                    ready.message,
                    extra={"reason": ready.reason},
                )
                await self.events.record(
                    Regarding(
                        "ResourceClaim",
                        claim.name,
                        uid=claim.uid,
                        namespace=claim.namespace,
                        api_version="resource.k8s.io/v1",
                    ),
                    warning=True,
                    reason="GVirtuSBackendUnavailable",
                    message=f"{ready.reason}: {ready.message}; the scheduler will look elsewhere",
                )
            else:
                log.info("backend of claim %s confirmed: %s", key, ready.message)


def _undecided(claim: Claim, *, bound: bool) -> bool:
    """Some device waits on a decision (and so on the clock, for the timeout)."""
    if bound:
        return False
    for device in claim.devices:
        current = claim.entry(device.key)
        if device.waits and (current is None or not (current.confirmed or current.failed)):
            return True
    return False


def _same(desired: list[tuple[tuple[str, str, str], Entry]], claim: Claim) -> bool:
    wanted = {key: (e.conditions, e.data) for key, e in desired}
    held = {key: (e.conditions, e.data) for key, e in claim.entries}
    return wanted == held


def _entry_object(
    driver: str, key: tuple[str, str, str], entry: Entry, current: Entry | None, stamp: str
) -> Obj:
    pool, device, share_id = key
    since = dict(current.since) if current is not None else {}
    conditions = []
    for condition in entry.conditions:
        before = current.condition(condition.type) if current is not None else None
        unchanged = before is not None and before.status == condition.status
        conditions.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": (since.get(condition.type) if unchanged else None) or stamp,
            }
        )
    found: Obj = {"driver": driver, "pool": pool, "device": device}
    if share_id:
        found["shareID"] = share_id
    found["conditions"] = conditions
    found["data"] = json.loads(entry.data)
    return found
