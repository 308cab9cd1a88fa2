"""The backend agents the controller polls, found through their pods.

An agent is a pod labelled as one (in the controller's namespace), scheduled, with
an address and not being deleted; per node the newest such pod counts. Each node's
agent has one :class:`AgentState` (its last good inventory, when it answered, since
when it fails), kept across rounds while the pod stays the same and started afresh
when the node's agent pod changes address.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from dra_driver.controller.poller import AgentState
from dra_driver.kube.index import Index

BACKENDS = Gauge("gvirtus_dra_controller_backends", "Backend agents by state.", ["state"])

Obj = dict[str, Any]


@dataclass(frozen=True)
class AgentPod:
    """A backend agent pod that can be polled."""

    node: str
    ip: str
    created: str


def agent_pod(obj: Obj) -> AgentPod | None:
    """The pollable part of an agent pod (None while unscheduled, unaddressed or deleting)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if meta.get("deletionTimestamp") or not spec.get("nodeName") or not status.get("podIP"):
        return None
    return AgentPod(
        node=spec["nodeName"], ip=status["podIP"], created=meta.get("creationTimestamp", "")
    )


class Agents:
    """Owns one :class:`AgentState` per node with an agent pod."""

    def __init__(self, *, port: int, clock: Callable[[], float]) -> None:
        self.port = port
        self.clock = clock
        self.pods: Index[AgentPod] = Index(agent_pod)
        self.states: dict[str, AgentState] = {}

    def sync(self) -> None:
        """Follow the agent pods: new nodes, gone nodes, agents that moved."""
        newest: dict[str, AgentPod] = {}
        for pod in self.pods.items.values():
            if pod.node not in newest or pod.created > newest[pod.node].created:
                newest[pod.node] = pod
        for node in set(self.states) - set(newest):
            del self.states[node]
        for node, pod in newest.items():
            url = f"http://{pod.ip}:{self.port}"
            state = self.states.get(node)
            if state is None or state.url != url:
                self.states[node] = AgentState(node=node, url=url, seen_at=self.clock())

    def answered(self, node: str) -> float | None:
        """When (``clock``) the node's agent last answered; None if never."""
        state = self.states.get(node)
        return state.answered_at if state is not None else None

    def report(self, *, now: float, grace: float) -> None:
        """Agents by state, as a gauge."""
        states = list(self.states.values())
        gone = [s for s in states if s.problem(now=now, grace=grace)]
        answering = [s for s in states if s.failing_since is None]
        BACKENDS.labels("answering").set(len(answering))
        BACKENDS.labels("failing").set(len(states) - len(answering) - len(gone))
        BACKENDS.labels("gone").set(len(gone))
