"""The controller and agents on separate hosts, across a real, shaped link.

Each backend agent runs in a network namespace of its own behind a veth pair (MTU
1500); the link's agent end is rate-limited (tbf) and the controller's end
advertises a small MSS, so an inventory crosses it in many segments, as it does
between real nodes. Controllers run as processes in the test's namespace and are
judged by their own metrics and by the writes the API server saw. Nothing here
connects to a simulated backend's port.
"""

from __future__ import annotations

import asyncio
import functools
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dra_driver.models import INVENTORY_PATH, MAX_INVENTORY_BYTES
from tests.controller.conftest import Cluster
from tests.support.netns import ROOT, Network
from tests.support.processes import AgentProcess, ControllerProcess, free_port

pytestmark = pytest.mark.slow

SEGMENT = 536
"""The MSS the controller's end advertises: the agent sends segments no larger."""


class Controller(ControllerProcess):
    """A controller process whose metrics tell how its polls went."""

    def __init__(self, *, cluster: Cluster, root: pathlib.Path, name: str) -> None:
        self.metrics_port = free_port()
        super().__init__(
            root=root,
            kubeconfig=cluster.kubeconfig,
            args=(
                "--pod-name",
                name,
                "--agent-port",
                str(cluster.agent_port),
                "--poll-interval",
                "0.3",
                # Timeouts are safety nets: a shaped poll takes seconds by design.
                "--poll-timeout",
                "60",
                "--grace-period",
                "120",
                "--lease-duration",
                "3",
                "--renew-deadline",
                "2",
                "--retry-period",
                "0.3",
                "--metrics-port",
                str(self.metrics_port),
                "--metrics-address",
                "127.0.0.1",
            ),
        )

    async def polls(self) -> dict[str, float]:
        """Its polls so far by outcome: changed, unchanged, unreachable, rejected."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        await self.wait_ready(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=60)
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            text = await response.text()
        counts = dict.fromkeys(("changed", "unchanged", "unreachable", "rejected"), 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "gvirtus_dra_controller_poll_duration_seconds_count":
                    counts[sample.labels["outcome"]] = sample.value
        return counts


async def shaped_backend(
    cluster: Cluster, network: Network, *, node: str, gpus: int, bits_per_second: int
) -> AgentProcess:
    """A backend node on a host of its own, its answers crossing a slow, segmenting link."""
    host = network.host("agent")
    link = network.link(ROOT, host)
    network.advertise_mss(link.end(ROOT), mss=SEGMENT)
    network.limit_rate(link.end(host), bits_per_second=bits_per_second)
    return await cluster.add_backend(
        node, gpus=gpus, at=link.end(host), extra_args=("--probe-interval", "1")
    )


async def one_read(agent: AgentProcess) -> tuple[int, int]:
    """What a single ``read()`` of the inventory gets over the link, and the whole size.

    The control for every test here: a poller reading once would see this part.
    """
    async with (
        aiohttp.ClientSession() as http,
        http.get(agent.url + INVENTORY_PATH) as response,
    ):
        first = await response.content.read(MAX_INVENTORY_BYTES + 1)
        rest = await response.read()
        assert response.content_length == len(first) + len(rest)
        return len(first), response.content_length


async def until(check: Callable[[], Awaitable[Any]], *, timeout: float = 100) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.1)
    return result


async def published(cluster: Cluster, controller: Controller, *, gpus: int) -> dict[str, float]:
    """Wait for the pool, or for a failed poll; the controller's polls at that moment.

    No poll failed before the pool appeared, so the first one (which never has an
    ETag and always carries the whole body) was accepted and its round published.
    """

    async def pool_or_failure() -> dict[str, float] | None:
        polls = await controller.polls()
        if polls["rejected"] or polls["unreachable"]:
            return polls
        return polls if len(cluster.devices("gpu-node-a")) == gpus else None

    polls: dict[str, float] = await until(pool_or_failure)
    assert (polls["rejected"], polls["unreachable"]) == (0, 0), (
        f"a poll failed before the pool was published: {polls}"
    )
    return polls


@pytest.mark.parametrize(
    ("gpus", "bits_per_second"),
    [(8, 16_000), (256, 320_000)],
    ids=["8-gpus", "256-gpus"],
)
async def test_an_inventory_in_pieces_is_accepted_from_the_first_poll_on(
    network: Network, cluster: Cluster, short_tmp: pathlib.Path, gpus: int, bits_per_second: int
) -> None:
    agent = await shaped_backend(
        cluster, network, node="gpu-node-a", gpus=gpus, bits_per_second=bits_per_second
    )
    part, whole = await one_read(agent)
    assert part < whole, "over this link one read() gets only part of the inventory"

    controller = Controller(cluster=cluster, root=short_tmp, name="controller-0")
    try:
        await published(cluster, controller, gpus=gpus)
        for change in range(1, 4):  # each change makes the next poll carry a whole body
            seen = (await controller.polls())["changed"]
            await agent.simulate(change % gpus, utilizationPercent=10 * change)
            await until(functools.partial(_more_changes, controller, than=seen))
        after = await controller.polls()
    finally:
        controller.terminate()

    assert (after["rejected"], after["unreachable"]) == (0, 0), after
    assert after["changed"] >= 4


async def _more_changes(controller: Controller, *, than: float) -> bool:
    return (await controller.polls())["changed"] > than


async def test_a_new_leader_publishes_the_pool_from_its_first_poll(
    network: Network, cluster: Cluster, short_tmp: pathlib.Path
) -> None:
    agent = await shaped_backend(
        cluster, network, node="gpu-node-a", gpus=8, bits_per_second=16_000
    )
    part, whole = await one_read(agent)
    assert part < whole, "over this link one read() gets only part of the inventory"
    first = Controller(cluster=cluster, root=short_tmp, name="controller-a")
    second: Controller | None = None
    try:
        await published(cluster, first, gpus=8)
        second = Controller(cluster=cluster, root=short_tmp, name="controller-b")
        assert (await second.polls())["changed"] == 0, "the second replica stands by"
        first.kill()  # without releasing the Lease: the standby takes over once it expires
        killed = len(cluster.apiserver.requests)
        for obj in cluster.pool("gpu-node-a"):
            cluster.apiserver.remove("resourceslices", obj["metadata"]["name"])

        await published(cluster, second, gpus=8)
    finally:
        first.kill()
        if second is not None:
            second.terminate()

    creators = {r.user_agent for r in cluster.apiserver.requests[killed:] if r.method == "POST"}
    assert creators and all(c.endswith(second.user_agent_pid) for c in creators), creators
