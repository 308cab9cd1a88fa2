"""One Lease, one leader: takeover on release, on expiry, never two at once."""

from __future__ import annotations

import asyncio
import pathlib
import re
from collections.abc import AsyncIterator

import pytest

from dra_driver.controller.leader import LeaderElector, micro_time
from dra_driver.kube.client import KubeClient
from tests.support.apiserver import APIServer, fixture

LEASE = ("gvirtus-system", "gvirtus-dra-controller")


@pytest.fixture
async def kube(kubeconfig: pathlib.Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    yield client
    await client.close()


class Candidate:
    def __init__(self, kube: KubeClient, identity: str, log: list[tuple[str, str]]) -> None:
        self.identity = identity
        self.log = log
        self.stop = asyncio.Event()
        self.elector = LeaderElector(
            kube=kube,
            namespace=LEASE[0],
            name=LEASE[1],
            identity=identity,
            lease_duration=2,
            renew_deadline=1.5,
            retry_period=0.2,
        )
        self.task = asyncio.create_task(self.elector.run(self.lead, stop=self.stop))
        self.leading = asyncio.Event()

    async def lead(self) -> None:
        self.log.append(("start", self.identity))
        self.leading.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.leading.clear()
            self.log.append(("stop", self.identity))

    async def close(self) -> None:
        self.stop.set()
        await self.task


def never_two_leaders(log: list[tuple[str, str]]) -> None:
    current: str | None = None
    for event, who in log:
        if event == "start":
            assert current is None, f"{who} started while {current} leads"
            current = who
        elif who == current:
            current = None


async def test_one_leads_and_the_other_takes_over_when_it_releases(
    kube: KubeClient, apiserver: APIServer
) -> None:
    log: list[tuple[str, str]] = []
    first = Candidate(kube, "a", log)
    await asyncio.wait_for(first.leading.wait(), 5)
    second = Candidate(kube, "b", log)
    await asyncio.sleep(1.0)
    assert not second.leading.is_set()

    started = asyncio.get_running_loop().time()
    await first.close()
    await asyncio.wait_for(second.leading.wait(), 5)

    assert asyncio.get_running_loop().time() - started < 1.0, (
        "a released Lease is taken at the next attempt"
    )
    await second.close()
    never_two_leaders(log)
    lease = apiserver.get("leases", LEASE[1], LEASE[0])
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == ""
    assert lease["spec"]["leaseTransitions"] == 1


async def test_a_dead_leader_is_replaced_after_the_lease_expires(
    kube: KubeClient, apiserver: APIServer
) -> None:
    log: list[tuple[str, str]] = []
    first = Candidate(kube, "a", log)
    await asyncio.wait_for(first.leading.wait(), 5)
    second = Candidate(kube, "b", log)
    first.task.cancel()  # dies without releasing
    await asyncio.gather(first.task, return_exceptions=True)
    gone = asyncio.get_running_loop().time()

    await asyncio.wait_for(second.leading.wait(), 10)

    waited = asyncio.get_running_loop().time() - gone
    assert 1.5 < waited < 3.5, f"took over after {waited:.1f}s with a 2s lease"
    await second.close()
    never_two_leaders(log)


async def test_a_leader_that_cannot_renew_steps_down(
    kube: KubeClient, apiserver: APIServer
) -> None:
    log: list[tuple[str, str]] = []
    first = Candidate(kube, "a", log)
    await asyncio.wait_for(first.leading.wait(), 5)
    apiserver.fail_next("*", "/leases/", code=503, times=10_000)

    await asyncio.sleep(2.5)

    assert log[-1] == ("stop", "a"), "work stops once renewing failed past the deadline"
    apiserver.faults.clear()
    await asyncio.wait_for(first.leading.wait(), 5)
    await first.close()


async def test_lease_times_are_micro_times_the_server_accepts(
    kube: KubeClient, apiserver: APIServer
) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", micro_time())
    first = Candidate(kube, "a", [])
    await asyncio.wait_for(first.leading.wait(), 5)
    await first.close()
    bad = fixture("09-lease-create-400-bad-microtime.json")
    with pytest.raises(Exception, match="parsing time"):
        await kube.request(
            "POST",
            f"/apis/coordination.k8s.io/v1/namespaces/{LEASE[0]}/leases",
            body=bad["request"]["body"],
        )


async def test_many_candidates_elect_exactly_one(kube: KubeClient) -> None:
    log: list[tuple[str, str]] = []
    candidates = [Candidate(kube, f"c{i}", log) for i in range(5)]
    await asyncio.sleep(1.5)
    leaders = [c.identity for c in candidates if c.leading.is_set()]
    for candidate in candidates:
        await candidate.close()
    assert len(leaders) == 1
    never_two_leaders(log)
