"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica writes, others wait.

Semantics follow client-go's: a candidate notes, on its own monotonic clock, when
it last saw the Lease record change; a record unchanged for a whole lease duration
is expired and may be taken over. Every write is conditional on the
resourceVersion read, so two candidates can never both win. The leader renews
every retry period; on shutdown it releases the Lease, so another replica takes
over at once instead of after a lease duration.

The renew deadline is counted from the start of the last attempt that won or
renewed the Lease, which is before the API server stored that renewal, and so
before any other replica could see it. Every attempt is abandoned when the
deadline passes, however slowly the API server answers, and the work is then
cancelled at once. Another replica takes over only a lease duration after it saw
that renewal; with the renew deadline shorter than the lease duration, the old
leader has stopped before the new one starts (given clocks that run at the same
rate, as client-go assumes too).

The library's elector is not used: it formats MicroTime from local naive time,
lets transport errors escape its loop, and cannot release the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import Gauge

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import LEASES

log = logging.getLogger(__name__)

LEADER = Gauge("gvirtus_dra_controller_leader", "1 while this replica holds the Lease.")


def micro_time(moment: datetime.datetime | None = None) -> str:
    """A MicroTime as the API server parses it: always six fractional digits.

    A moment with zero microseconds is moved by one: the client library prints such
    a time without its fraction when it sends a created Lease, which a MicroTime may
    not omit.
    """
    moment = (moment or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC)
    if moment.microsecond == 0:
        moment = moment.replace(microsecond=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease and runs work while holding it."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float,
        renew_deadline: float,
        retry_period: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.clock = clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def run(
        self, lead: Callable[[], Coroutine[Any, Any, None]], *, stop: asyncio.Event
    ) -> None:
        """Until ``stop``: acquire, run ``lead`` while leading, start over when the Lease is lost.

        Raises:
            Exception: whatever ``lead`` raised; the work failing is fatal.
        """
        while not stop.is_set():
            won = await self._acquire(stop)
            if won is None:
                return
            LEADER.set(1)
            log.info("became the leader", extra={"lease": self.name, "identity": self.identity})
            work = asyncio.create_task(lead(), name="leading")
            try:
                await self._renew_until_lost(stop, work, renewed=won)
            finally:
                LEADER.set(0)
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
            if stop.is_set():
                await self._release()
                return
            log.warning(
                "lost the Lease; waiting to become the leader again", extra={"lease": self.name}
            )

    async def _acquire(self, stop: asyncio.Event) -> float | None:
        """Campaign until this replica holds the Lease; when the winning attempt started.

        An attempt is abandoned after the renew deadline: one that took longer could
        only win a term that is already over. None when ``stop`` is set first.
        """
        while not stop.is_set():
            started = self.clock()
            if await self._attempt(deadline=started + self.renew_deadline):
                return started
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_period):
                    await stop.wait()
        return None

    async def _renew_until_lost(
        self, stop: asyncio.Event, work: asyncio.Task[None], *, renewed: float
    ) -> None:
        """Renew every retry period until ``stop`` or the work ends; return once the Lease is lost.

        ``renewed`` is when the attempt that last won or renewed the Lease started;
        the Lease is lost when the renew deadline passes without another.

        Raises:
            Exception: whatever the work raised.
        """
        while True:
            deadline = renewed + self.renew_deadline
            pause = min(self.retry_period, deadline - self.clock())
            if await self._ended(stop, work, within=pause):
                break
            started = self.clock()
            if started >= deadline:
                log.warning(
                    "could not renew the Lease within the renew deadline (%ss); stepping down",
                    self.renew_deadline,
                    extra={"lease": self.name},
                )
                return
            if await self._attempt(deadline=deadline):
                renewed = started
        if work.done() and not work.cancelled() and work.exception() is not None:
            raise work.exception()  # type: ignore[misc]

    @staticmethod
    async def _ended(stop: asyncio.Event, work: asyncio.Task[None], *, within: float) -> bool:
        """Wait up to ``within`` seconds; whether ``stop`` was set or the work ended."""
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait(
            {stopped, work}, timeout=max(0.0, within), return_when=asyncio.FIRST_COMPLETED
        )
        stopped.cancel()
        return stop.is_set() or work.done()

    async def _attempt(self, *, deadline: float) -> bool:
        """One attempt to acquire or renew, abandoned at ``deadline`` (on :attr:`clock`)."""
        try:
            async with asyncio.timeout(max(0.0, deadline - self.clock())):
                return await self._try()
        except TimeoutError:
            log.warning(
                "the API server did not answer a Lease request before the renew deadline",
                extra={"lease": self.name},
            )
            return False

    async def _try(self) -> bool:
        """One attempt to acquire or renew; False when someone else holds it or a write lost."""
        try:
            lease = await self.kube.get(LEASES, self.name, namespace=self.namespace)
        except errors.NotFoundError:
            return await self._create()
        except errors.KubeError as exc:
            log.warning("cannot read the Lease: %s", exc.message)
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self.clock() - self._observed_at < duration:
            return False
        now = micro_time()
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        change = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration),
            "acquireTime": spec.get("acquireTime") if holder == self.identity else now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        try:
            await self._write(lease, change)
        except errors.ConflictError:
            return False
        except errors.KubeError as exc:
            log.warning("cannot write the Lease: %s", exc.message)
            return False
        self._observed, self._observed_at = (
            (self.identity, now, int(self.lease_duration)),
            self.clock(),
        )
        return True

    async def _write(self, lease: dict[str, Any], change: dict[str, Any]) -> None:
        """Change the Lease's spec only if it is still the version read (a merge patch).

        The patch carries the ``resourceVersion`` read, so a candidate that lost a race
        gets a conflict instead of overwriting the winner, as with an update; its times
        go to the server exactly as formatted here.
        """
        patch = {"metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]}}
        await self.kube.patch(
            LEASES, self.name, {**patch, "spec": change}, kind="merge", namespace=self.namespace
        )

    async def _create(self) -> bool:
        now = micro_time()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            await self.kube.create(LEASES, body, namespace=self.namespace)
        except errors.KubeError as exc:  # AlreadyExists: someone was faster
            log.debug("cannot create the Lease: %s", exc.message)
            return False
        self._observed, self._observed_at = (
            (self.identity, now, int(self.lease_duration)),
            self.clock(),
        )
        return True

    async def _release(self) -> None:
        """Hand the Lease back so another replica need not wait for it to expire."""
        try:
            lease = await self.kube.get(LEASES, self.name, namespace=self.namespace)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            change = {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": micro_time()}
            await self._write(lease, change)
            log.info("released the Lease", extra={"lease": self.name})
        except errors.KubeError as exc:
            log.warning("cannot release the Lease (it expires by itself): %s", exc.message)
