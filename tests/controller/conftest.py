"""A small cluster for controller tests: the test API server, agent processes, a controller."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dra_driver.controller import app as controller_app
from dra_driver.controller.settings import ControllerSettings
from tests.support import objects
from tests.support.apiserver import APIServer
from tests.support.netns import Interface
from tests.support.processes import AgentProcess, free_port

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class Cluster:
    """Backend nodes with real agent processes, and controllers run in this process."""

    def __init__(self, apiserver: APIServer, kubeconfig: pathlib.Path, root: pathlib.Path) -> None:
        self.apiserver = apiserver
        self.kubeconfig = kubeconfig
        self.root = root
        self.agent_port = free_port()
        self.agents: dict[str, AgentProcess] = {}
        self.controllers: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
        self._next_ip = 30

    async def add_backend(
        self,
        node: str,
        *,
        gpus: int = 2,
        labels: dict[str, str] | None = None,
        at: Interface | None = None,
        extra_args: tuple[str, ...] = (),
        kubeconfig: pathlib.Path | None = None,
    ) -> AgentProcess:
        """A backend node: its Node, a running agent and the agent's pod.

        The agent listens on a loopback address of its own, or with ``at`` (one end of
        a link made by :mod:`tests.support.netns`) in that end's namespace, as a
        separate host that the controller reaches over the link. There, given a
        ``kubeconfig`` that reaches the API server over the link, it enforces access
        control.
        """
        self._next_ip += 1
        loopback, address = f"127.0.0.{self._next_ip}", f"10.0.0.{self._next_ip}"
        if at is not None:
            loopback = address = at.address
        self.apiserver.put(
            objects.node(
                name=node,
                frontend=False,
                labels={"gvirtus.io/backend.allowed": "true", **(labels or {})},
            )
        )
        agent = AgentProcess(
            root=self.root,
            node=node,
            loopback=loopback,
            address=address,
            gpus=gpus,
            port=self.agent_port,
            extra_args=extra_args,
            host=at.host if at is not None else None,
            kubeconfig=kubeconfig,
        )
        self.agents[node] = await agent.ready()
        self.apiserver.put(objects.agent_pod(node=node, ip=loopback, host_ip=address))
        return agent

    def settings(self, **overrides: Any) -> ControllerSettings:
        values: dict[str, Any] = {
            "kubeconfig": self.kubeconfig,
            "agent_port": self.agent_port,
            "poll_interval": 0.3,
            "poll_timeout": 0.5,
            "grace_period": 1.5,
            "no_execute_after": 3,
            "lease_duration": 3,
            "renew_deadline": 2,
            "retry_period": 0.3,
            "metrics_port": 0,
            "pod_name": "controller-0",
        }
        return ControllerSettings(**{**values, **overrides})

    def start_controller(self, **overrides: Any) -> asyncio.Event:
        stop = asyncio.Event()
        task = asyncio.create_task(controller_app.run(self.settings(**overrides), stop=stop))
        self.controllers.append((stop, task))
        return stop

    async def stop_controllers(self) -> None:
        for stop, _ in self.controllers:
            stop.set()
        await asyncio.gather(*(task for _, task in self.controllers))
        self.controllers.clear()

    def slices(self) -> list[dict[str, Any]]:
        return self.apiserver.list("resourceslices")

    def pool(self, node: str) -> list[dict[str, Any]]:
        return [s for s in self.slices() if s["spec"]["pool"]["name"] == node]

    def devices(self, node: str) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for s in self.pool(node) for d in s["spec"]["devices"]}

    def events(self) -> list[dict[str, Any]]:
        """Events in the order they were recorded."""
        return sorted(
            self.apiserver.list("events"), key=lambda e: int(e["metadata"]["resourceVersion"])
        )

    def backend_events(self) -> list[dict[str, Any]]:
        """Events but those about access control.

        Agents on this machine's own addresses run with access control off (see
        :class:`AgentProcess`), which the controller reports once per node.
        """
        return [e for e in self.events() if not e["reason"].startswith("GVirtuSAccess")]

    def slice_writes(self) -> list[Any]:
        return [r for r in self.apiserver.writes() if r.path.startswith(SLICES)]

    async def until(self, check: Callable[[], Any], timeout: float = 15) -> Any:
        async with asyncio.timeout(timeout):
            while not (result := check()):
                await asyncio.sleep(0.05)
        return result


@pytest.fixture
async def cluster(
    apiserver: APIServer, kubeconfig: pathlib.Path, short_tmp: pathlib.Path
) -> AsyncIterator[Cluster]:
    world = Cluster(apiserver, kubeconfig, short_tmp)
    try:
        yield world
        await world.stop_controllers()
    finally:
        for agent in world.agents.values():
            agent.kill()  # also closes the log of an agent that already exited
