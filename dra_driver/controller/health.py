"""Judging each GPU from its agent's inventory: healthy, overloaded, or to be evicted.

A GPU is unhealthy when its agent says its backend cannot serve (down, wedged, or
not listening: the agent judges that from ``/proc``), or when its agent has not
answered for longer than the grace period (the controller's view; one missed poll
is not enough). It is overloaded when it carries
as many frontend connections, or as much utilisation, as configured. One that has
been unhealthy for ``no_execute_after`` seconds is to be evicted: pods bound to a
dead backend gain nothing by waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from dra_driver.models import GPU

LEGACY_REASONS = {"port-closed": "not-listening", "starting": "not-listening"}
"""Reasons of older agents, in today's words: both meant "nothing accepts on the port"."""


def taint_reason(reason: str) -> str:
    """The reason an unhealthy GPU's taint, Event and condition carry.

    Agents and controllers are upgraded at different times, so a reason may be one
    this controller does not know. Whatever it is, the GPU is unhealthy and tainted:
    the reason only names why. An older agent's reason is translated; any other is
    kept as the agent wrote it (the inventory schema makes every reason a valid
    taint value), so a newer agent's own word reaches the cluster; none at all is
    ``backend-down``.
    """
    return LEGACY_REASONS.get(reason, reason) or "backend-down"


@dataclass(frozen=True)
class Thresholds:
    """When a healthy GPU counts as overloaded; zero turns a limit off."""

    max_connections: int = 0
    max_utilization: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """What the controller concluded about one GPU."""

    healthy: bool
    reason: str = ""
    message: str = ""
    overloaded: str = ""
    since: float | None = None
    evict: bool = False

    @property
    def key(self) -> tuple[bool, str, str, bool]:
        """The parts that change the published device (messages do not)."""
        return (self.healthy, self.reason, self.overloaded, self.evict)


def judge(
    gpu: GPU,
    *,
    agent_problem: str,
    thresholds: Thresholds,
    previous: Verdict | None,
    now: float,
    no_execute_after: float,
) -> Verdict:
    """The verdict for ``gpu``; ``agent_problem`` is set when the agent is gone past grace.

    ``now`` and ``since`` are Unix seconds, so a verdict can be restored from the
    ``timeAdded`` of a published taint after a restart.
    """
    if agent_problem:
        reason, message = "agent-unreachable", agent_problem
    elif not gpu.health.healthy:
        reason = taint_reason(gpu.health.reason)
        message = gpu.health.message
    else:
        return Verdict(healthy=True, overloaded=_overload(gpu, thresholds))
    was_unhealthy = previous is not None and not previous.healthy
    since = previous.since if previous is not None and was_unhealthy and previous.since else now
    # Once evicting, a GPU stays so until it recovers (also across restarts, when only
    # the time of its NoExecute taint is known).
    keeps_evicting = previous is not None and was_unhealthy and previous.evict
    evict = keeps_evicting or (bool(no_execute_after) and now - since >= no_execute_after)
    return Verdict(healthy=False, reason=reason, message=message, since=since, evict=evict)


def _overload(gpu: GPU, thresholds: Thresholds) -> str:
    if thresholds.max_connections and gpu.load.connections >= thresholds.max_connections:
        return "connections"
    utilization = gpu.load.utilization_percent
    if (
        thresholds.max_utilization
        and utilization is not None
        and utilization >= thresholds.max_utilization
    ):
        return "utilization"
    return ""
