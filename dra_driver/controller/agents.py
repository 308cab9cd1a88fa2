"""The backend agents the controller polls, found through their pods.

An agent is a pod labelled as one (in the controller's namespace), created by the
agent DaemonSet (not a mirror pod a node made itself: its kubelet could say
anything), scheduled, with an address and not being deleted; per node the newest
such pod counts. Its inventory is believed only for the node the pod runs on and
only with that pod's host IP as the backend address (see :mod:`poller`). Each node's
agent has one :class:`AgentState` (its last good inventory, when it answered, since
when it fails), kept across rounds while the pod stays the same and started afresh
when the node's agent pod changes address.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

from dra_driver.controller.poller import AgentState
from dra_driver.kube.index import Index

BACKENDS = Gauge("gvirtus_dra_controller_backends", "Backend agents by state.", ["state"])

Obj = dict[str, Any]


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class AgentPod:
    """A backend agent pod that can be polled."""

    node: str
    ip: str
    host_ip: str
    created: str


def agent_pod(obj: Obj, *, daemonset: str) -> AgentPod | None:
    """The pollable part of an agent pod; None for any pod that is not one (yet).

    Not one: a pod the DaemonSet ``daemonset`` did not create, a mirror pod, or one
    unscheduled, without addresses, or being deleted.
    """
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if not _made_by(meta, daemonset=daemonset):
        return None
    if meta.get("deletionTimestamp") or not spec.get("nodeName") or not status.get("podIP"):
        return None
    return AgentPod(
        node=spec["nodeName"],
        ip=status["podIP"],
        host_ip=str(status.get("hostIP") or ""),
        created=meta.get("creationTimestamp", ""),
    )


def _made_by(meta: Obj, *, daemonset: str) -> bool:
    if MIRROR_ANNOTATION in (meta.get("annotations") or {}):
        return False
    return any(
        ref.get("kind") == "DaemonSet" and ref.get("name") == daemonset and ref.get("controller")
        for ref in meta.get("ownerReferences") or []
    )


class Agents:
    """Owns one :class:`AgentState` per node with an agent pod."""

    def __init__(self, *, port: int, daemonset: str, clock: Callable[[], float]) -> None:
        self.port = port
        self.clock = clock
        self.pods: Index[AgentPod] = Index(functools.partial(agent_pod, daemonset=daemonset))
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
            if state is None or state.url != url or state.host_ip != pod.host_ip:
                self.states[node] = AgentState(
                    node=node, url=url, host_ip=pod.host_ip, seen_at=self.clock()
                )

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
