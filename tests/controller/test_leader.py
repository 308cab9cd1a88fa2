"""One Lease, one leader: takeover on release, on expiry, never two at once.

Each candidate has its own API client (its User-Agent names it), and its work,
while leading, is to record an Event every few milliseconds, so the API server's
request log shows who wrote as leader when, and who read or wrote the Lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pathlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dra_driver.controller.leader import LeaderElector, micro_time
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import EVENTS as EVENTS_RESOURCE
from tests.support.apiserver import APIServer, Request, fixture

LEASE = ("gvirtus-system", "gvirtus-dra-controller")
EVENTS = f"/api/v1/namespaces/{LEASE[0]}/events"
TIMING = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.2}


class Candidate:
    """One replica campaigning for the Lease, and writing while it leads."""

    def __init__(self, kube: KubeClient, identity: str, log: list[tuple[str, str]]) -> None:
        self.kube = kube
        self.identity = identity
        self.log = log
        self.stop = asyncio.Event()
        self.leading = asyncio.Event()
        self.stopped = asyncio.Event()
        self.elector = LeaderElector(
            kube=kube, namespace=LEASE[0], name=LEASE[1], identity=identity, **TIMING
        )
        self.task = asyncio.create_task(self.elector.run(self.lead, stop=self.stop))

    async def lead(self) -> None:
        self.log.append(("start", self.identity))
        self.stopped.clear()
        self.leading.set()
        try:
            for n in itertools.count():
                await self.kube.create(EVENTS_RESOURCE, event(self.identity, n), namespace=LEASE[0])
                await asyncio.sleep(0.02)
        finally:
            self.leading.clear()
            self.stopped.set()
            self.log.append(("stop", self.identity))

    async def close(self) -> None:
        self.stop.set()
        await self.task


def event(identity: str, n: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"work-{identity}-", "namespace": LEASE[0]},
        "involvedObject": {"kind": "Lease", "name": LEASE[1], "namespace": LEASE[0]},
        "reason": "Leading",
        "message": f"write {n} by {identity} as the leader",
        "type": "Normal",
    }


@pytest.fixture
async def candidate(
    kubeconfig: pathlib.Path,
) -> AsyncIterator[Callable[[str, list[tuple[str, str]]], Awaitable[Candidate]]]:
    """Start candidates, each with a client of its own; all are closed afterwards."""
    started: list[Candidate] = []

    async def start(identity: str, log: list[tuple[str, str]]) -> Candidate:
        kube = await KubeClient.connect(kubeconfig=kubeconfig, component=f"test-{identity}")
        started.append(Candidate(kube, identity, log))
        return started[-1]

    yield start
    for each in started:
        if not each.task.done():
            await each.close()
        with contextlib.suppress(asyncio.CancelledError):
            await each.task
        await each.kube.close()


def by(identity: str, requests: list[Request]) -> list[Request]:
    return [r for r in requests if f"(test-{identity};" in r.user_agent]


def lease_reads(apiserver: APIServer, identity: str) -> int:
    reads = [r for r in by(identity, apiserver.requests) if r.method == "GET"]
    return len([r for r in reads if "/leases/" in r.path])


async def until(check: Callable[[], Any], timeout: float = 60) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := check()):
            await asyncio.sleep(0.02)
    return result


def writers_in_turn(apiserver: APIServer) -> list[tuple[str, float, float]]:
    """The leaders' writes as the API server received them: (who, first, last) per turn."""
    turns: list[tuple[str, float, float]] = []
    for request in apiserver.requests:
        found = re.search(r"\(test-(\w+);", request.user_agent)
        if request.method != "POST" or request.path != EVENTS or not found:
            continue
        if turns and turns[-1][0] == found.group(1):
            turns[-1] = (turns[-1][0], turns[-1][1], request.at)
        else:
            turns.append((found.group(1), request.at, request.at))
    return turns


def never_two_leaders(log: list[tuple[str, str]]) -> None:
    current: str | None = None
    for event_, who in log:
        if event_ == "start":
            assert current is None, f"{who} started while {current} leads"
            current = who
        elif who == current:
            current = None


async def test_one_leads_and_the_other_takes_over_when_it_releases(
    candidate: Any, apiserver: APIServer
) -> None:
    log: list[tuple[str, str]] = []
    first = await candidate("a", log)
    await asyncio.wait_for(first.leading.wait(), 60)
    second = await candidate("b", log)
    await until(lambda: lease_reads(apiserver, "b") >= 3)
    assert not second.leading.is_set()

    await first.close()
    released = len(apiserver.requests)
    await asyncio.wait_for(second.leading.wait(), 60)

    after = by("b", apiserver.requests[released:])
    taking = next(i for i, r in enumerate(after) if r.method == "PATCH")
    assert len(after[:taking]) <= 2, "a released Lease is taken at the next attempt"
    await second.close()
    never_two_leaders(log)
    assert [who for who, _, _ in writers_in_turn(apiserver)] == ["a", "b"]
    lease = apiserver.get("leases", LEASE[1], LEASE[0])
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == ""
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_dead_leader_is_replaced_after_the_lease_expires(
    candidate: Any, apiserver: APIServer
) -> None:
    log: list[tuple[str, str]] = []
    first = await candidate("a", log)
    await asyncio.wait_for(first.leading.wait(), 60)
    second = await candidate("b", log)
    await until(lambda: lease_reads(apiserver, "b") >= 3)
    first.task.cancel()  # dies without releasing
    await asyncio.gather(first.task, return_exceptions=True)

    await asyncio.wait_for(second.leading.wait(), 60)

    renewed = max(r.at for r in by("a", apiserver.requests) if r.method == "PATCH")
    taken = min(r.at for r in by("b", apiserver.requests) if r.method == "PATCH")
    assert taken - renewed >= TIMING["lease_duration"], "not before the Lease expired"
    await second.close()
    never_two_leaders(log)


async def test_a_leader_that_cannot_renew_steps_down(candidate: Any, apiserver: APIServer) -> None:
    log: list[tuple[str, str]] = []
    first = await candidate("a", log)
    await asyncio.wait_for(first.leading.wait(), 60)
    apiserver.fail_next("*", "/leases/", code=503, times=10_000)

    await asyncio.wait_for(first.stopped.wait(), 60)

    assert log[-1] == ("stop", "a"), "work stops once renewing failed past the deadline"
    apiserver.faults.clear()
    await asyncio.wait_for(first.leading.wait(), 60)
    await first.close()


@pytest.mark.parametrize(
    ("delay", "answer_delay"),
    [(0.0, 6.0), (6.0, 0.0)],
    ids=["answers-slowed", "server-slowed"],
)
async def test_slow_api_answers_never_make_two_leaders_write_at_once(
    candidate: Any, apiserver: APIServer, delay: float, answer_delay: float
) -> None:
    """The leader's Lease requests become slower than the renew deadline.

    It must stop writing before the other replica even tries to take the Lease,
    however long its own requests hang: judged from what the API server received.
    """
    log: list[tuple[str, str]] = []
    first = await candidate("a", log)
    await asyncio.wait_for(first.leading.wait(), 60)
    second = await candidate("b", log)
    await until(lambda: lease_reads(apiserver, "b") >= 3)
    apiserver.fail_next(
        "*",
        "/leases/",
        code=0,
        times=10_000,
        delay=delay,
        answer_delay=answer_delay,
        user_agent=r"\(test-a;",
    )

    await asyncio.wait_for(second.leading.wait(), 60)
    await until(lambda: len(writers_in_turn(apiserver)) == 2 and writers_in_turn(apiserver))
    apiserver.faults.clear()
    await second.close()
    await first.close()

    turns = writers_in_turn(apiserver)
    assert [who for who, _, _ in turns] == ["a", "b"], f"the leaders' writes interleave: {turns}"
    (_, _, a_last), (_, b_first, _) = turns
    taking = min(
        r.at for r in by("b", apiserver.requests) if r.method == "PATCH" and "/leases/" in r.path
    )
    assert a_last < taking <= b_first, "the old leader stopped before the new one tried"
    assert first.stopped.is_set()
    never_two_leaders(log)


async def test_lease_times_are_micro_times_the_server_accepts(
    candidate: Any, apiserver: APIServer
) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", micro_time())
    first = await candidate("a", [])
    await asyncio.wait_for(first.leading.wait(), 60)
    await first.close()
    bad = fixture("09-lease-create-400-bad-microtime.json")
    status, answer = await apiserver.send(
        "POST", bad["request"]["path"], body=bad["request"]["body"]
    )
    assert status == 400 and "parsing time" in answer["message"]


async def test_many_candidates_elect_exactly_one(candidate: Any, apiserver: APIServer) -> None:
    log: list[tuple[str, str]] = []
    candidates = [await candidate(f"c{i}", log) for i in range(5)]
    await until(lambda: any(c.leading.is_set() for c in candidates))
    seen = {c.identity: lease_reads(apiserver, c.identity) for c in candidates}
    await until(lambda: all(lease_reads(apiserver, i) >= n + 3 for i, n in seen.items()))

    leaders = [c.identity for c in candidates if c.leading.is_set()]
    for each in candidates:
        await each.close()
    assert len(leaders) == 1
    never_two_leaders(log)
    assert len(writers_in_turn(apiserver)) == 1
