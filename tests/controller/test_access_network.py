"""From a pod's address in the API server to the rule in the GPU node's kernel, end to end.

The real controller (in this process) against the test API server; the real agent
enforcing access control in a network namespace of its own, reading its list from
the API server over a link; a frontend namespace whose address plays the pod's.
The test stands in for the scheduler and the kubelet: it allocates a claim, reserves
it for the pod, and gives the pod its address while the pod's frontend already
knocks, as the GVirtuS frontend does when its library loads. The kernel's own event
stream (``nft monitor`` in the GPU node) says when the rule is in force.

``network`` comes first in each test's fixtures: it is torn down last, so agents are
stopped while their links still carry the close of their connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.controller.conftest import Cluster
from tests.support import objects
from tests.support.netns import ROOT, Host, Network
from tests.support.objects import Result

pytestmark = pytest.mark.slow


class KernelEvents:
    """``nft monitor`` in a host: when each address was added to a rule, on this clock."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            text = line.decode()
            if text.startswith("add element inet gvirtus-dra-access admitted"):
                now = time.perf_counter()
                for part in text.split("{", 1)[1].split(","):
                    address = part.split(".", 4)
                    self.seen.setdefault(".".join(address[:4]).strip(), now)
                self.changed.set()

    async def added(self, address: str, timeout: float = 15) -> float:
        async with asyncio.timeout(timeout):
            while address not in self.seen:
                self.changed.clear()
                await self.changed.wait()
        return self.seen[address]


@pytest.fixture
async def kernel_events(network: Network) -> AsyncIterator[Any]:
    if shutil.which("nft") is None:
        pytest.fail("nft not found: install nftables (apt-get install -y nftables; make test does)")
    started: list[KernelEvents] = []

    async def watch(host: Host) -> KernelEvents:
        process = await asyncio.create_subprocess_exec(
            *host.command("nft", "monitor"), stdout=asyncio.subprocess.PIPE
        )
        started.append(KernelEvents(process))
        return started[-1]

    yield watch
    for events in started:
        with contextlib.suppress(ProcessLookupError):
            events.process.kill()
        await events.process.wait()
        await events.reader


async def syn_sent(host: Host, destination: str) -> None:
    async with asyncio.timeout(10):
        while True:
            listed = await asyncio.create_subprocess_exec(
                *host.command("ss", "-Htn", "state", "syn-sent", "dst", destination),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await listed.communicate()
            if out.strip():
                return
            await asyncio.sleep(0.02)


async def test_a_pod_given_its_address_reaches_its_backend_on_the_syn_retry(
    network: Network, cluster: Cluster, kernel_events: Any
) -> None:
    gpu = network.host("gpu")
    uplink = network.link(ROOT, gpu)
    front = network.host("pod")
    podlink = network.link(front, gpu)
    server = cluster.apiserver.listen_at(uplink.end(ROOT).address)
    agent = await cluster.add_backend(
        "gpu-node-a",
        at=uplink.end(gpu),
        kubeconfig=cluster.apiserver.write_kubeconfig(cluster.root / "agent-kc", server=server),
        extra_args=("--bind-address", "0.0.0.0"),
    )
    port = int((await agent.inventory())["gpus"][0]["port"])
    cluster.apiserver.put(objects.claim_pod(name="app", uid="uid-app", claim="c"))
    cluster.apiserver.put(
        objects.allocated_claim(
            name="c", results=[Result("gpu-node-a", "gpu-0")], reserved_for=[("app", "uid-app")]
        )
    )
    cluster.start_controller()
    await cluster.until(lambda: published(cluster), timeout=30)
    events = await kernel_events(gpu)

    # The frontend connects as its library loads, before its pod's address is known.
    backend = podlink.end(gpu).address
    attempt = asyncio.create_task(front.connect(backend, port, timeout=30))
    await syn_sent(front, f"{backend}:{port}")
    given = time.perf_counter()
    give_address(cluster, "app", podlink.end(front).address)

    in_kernel = await events.added(podlink.end(front).address)
    assert await attempt == "connected"
    print(f"\npod address -> rule in the kernel: {(in_kernel - given) * 1000:.1f} ms")


async def test_how_long_a_pod_address_takes_to_reach_the_kernel(
    network: Network, cluster: Cluster, kernel_events: Any
) -> None:
    """A measurement (printed; ``-s`` shows it): twenty pods, one after another."""
    gpu = network.host("gpu")
    uplink = network.link(ROOT, gpu)
    server = cluster.apiserver.listen_at(uplink.end(ROOT).address)
    await cluster.add_backend(
        "gpu-node-a",
        at=uplink.end(gpu),
        kubeconfig=cluster.apiserver.write_kubeconfig(cluster.root / "agent-kc", server=server),
    )
    cluster.start_controller()
    await cluster.until(lambda: published(cluster), timeout=30)
    events = await kernel_events(gpu)
    latencies = []
    for index in range(20):
        name, address = f"app-{index}", f"10.77.0.{index + 1}"
        cluster.apiserver.put(objects.claim_pod(name=name, uid=f"uid-{name}", claim=name))
        cluster.apiserver.put(
            objects.allocated_claim(
                name=name,
                results=[Result("gpu-node-a", f"gpu-{index % 2}")],
                reserved_for=[(name, f"uid-{name}")],
            )
        )
        given = time.perf_counter()
        give_address(cluster, name, address)
        latencies.append(await events.added(address) - given)

    assert len(latencies) == 20
    print(
        f"\npod address -> rule in the kernel, 20 pods: median "
        f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )


def published(cluster: Cluster) -> dict[str, Any] | None:
    """The node's access list as stored: the controller is up and leads."""
    return cluster.apiserver.get("configmaps", "gvirtus-dra-access-gpu-node-a", "gvirtus-system")


def give_address(cluster: Cluster, pod: str, address: str) -> None:
    def running(obj: dict[str, Any]) -> None:
        obj["status"].update(
            phase="Running",
            podIP=address,
            podIPs=[{"ip": address}],
            hostIP="172.18.0.3",
            hostIPs=[{"ip": "172.18.0.3"}],
        )

    cluster.apiserver.mutate("pods", pod, objects.NAMESPACE, running)
