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

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from dra_driver.controller.poller import Fetched, Poller, RejectedError, UnreachableError
from dra_driver.kube.index import Index
from dra_driver.models import Inventory

log = logging.getLogger(__name__)

BACKENDS = Gauge("gvirtus_dra_controller_backends", "Backend agents by state.", ["state"])
POLL_SECONDS = Histogram(
    "gvirtus_dra_controller_poll_duration_seconds",
    "Time to poll one agent, by outcome.",
    ["outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REJECTED = Counter(
    "gvirtus_dra_controller_inventories_rejected_total",
    "Agent answers rejected, by reason.",
    ["reason"],
)

Obj = dict[str, Any]


MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass
class AgentState:
    """What the controller knows of one node's agent; changed only through its methods."""

    node: str
    url: str
    seen_at: float
    host_ip: str = ""
    """The agent pod's host IP: the only backend address its inventory may name."""
    inventory: Inventory | None = None
    etag: str | None = None
    answered_at: float | None = None
    failing_since: float | None = None
    error: str = ""

    def problem(self, *, now: float, grace: float) -> str:
        """Why the agent counts as gone (failing past ``grace``), or empty."""
        if self.failing_since is not None and now - self.failing_since >= grace:
            return f"agent not answering for {now - self.failing_since:.0f}s: {self.error}"
        return ""

    def answered(self, fetched: Fetched, *, now: float) -> bool:
        """Take a believed answer; return whether the inventory changed."""
        if self.failing_since is not None:
            log.info("agent of %s answers again", self.node)
        self.failing_since, self.error, self.answered_at = None, "", now
        if fetched.inventory is None:
            return False
        changed = fetched.inventory != self.inventory
        self.inventory, self.etag = fetched.inventory, fetched.etag
        return changed

    def failed(self, error: str, *, now: float) -> None:
        """Note a failed poll; the last good inventory stays."""
        if self.failing_since is None:
            self.failing_since = now
            log.warning("agent of %s failed: %s", self.node, error)
        self.error = error

    def check(self, inventory: Inventory) -> None:
        """Refuse an inventory this agent may not give.

        Raises:
            RejectedError: it speaks for another node, or names a backend address other
                than its pod's host IP.
        """
        if inventory.node_name != self.node:
            where = f"the node its pod runs on ({self.node!r})"
            raise RejectedError(
                f"nodeName {inventory.node_name!r} is not {where}", reason="wrong-node"
            )
        if inventory.address != self.host_ip:
            where = f"the host IP of its pod ({self.host_ip or 'none yet'})"
            raise RejectedError(f"address {inventory.address} is not {where}", reason="address")


async def refresh(state: AgentState, *, poller: Poller, clock: Callable[[], float]) -> bool:
    """Poll one agent and record the outcome in ``state``; return whether it changed."""
    started = time.perf_counter()
    try:
        fetched = await poller.fetch(url=state.url, etag=state.etag if state.inventory else None)
        if fetched.inventory is not None:
            state.check(fetched.inventory)
    except UnreachableError as exc:
        state.failed(str(exc), now=clock())
        POLL_SECONDS.labels("unreachable").observe(time.perf_counter() - started)
        return False
    except RejectedError as exc:
        REJECTED.labels(exc.reason).inc()
        state.failed(f"rejected its inventory: {exc}", now=clock())
        log.warning("rejected the inventory of %s: %s", state.node, exc, extra={"agent": state.url})
        POLL_SECONDS.labels("rejected").observe(time.perf_counter() - started)
        return False
    changed = state.answered(fetched, now=clock())
    POLL_SECONDS.labels("changed" if changed else "unchanged").observe(
        time.perf_counter() - started
    )
    return changed


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
        self.version = 0
        """Counts changes of the agents or their inventories, for owners that follow them."""

    def sync(self) -> None:
        """Follow the agent pods: new nodes, gone nodes, agents that moved."""
        newest: dict[str, AgentPod] = {}
        for pod in self.pods.items.values():
            if pod.node not in newest or pod.created > newest[pod.node].created:
                newest[pod.node] = pod
        for node in set(self.states) - set(newest):
            del self.states[node]
            self.version += 1
        for node, pod in newest.items():
            url = f"http://{pod.ip}:{self.port}"
            state = self.states.get(node)
            if state is None or state.url != url or state.host_ip != pod.host_ip:
                self.states[node] = AgentState(
                    node=node, url=url, host_ip=pod.host_ip, seen_at=self.clock()
                )
                self.version += 1

    async def poll(self, poller: Poller) -> None:
        """Poll every agent once, concurrently."""
        changed = await asyncio.gather(
            *(refresh(state, poller=poller, clock=self.clock) for state in self.states.values())
        )
        if any(changed):
            self.version += 1

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
