"""GPU verdicts: backend state, agent reachability, load thresholds, eviction time."""

from __future__ import annotations

from typing import Any

import pytest

from dra_driver.controller.health import Thresholds, Verdict, judge
from dra_driver.models import GPU


def gpu(
    *,
    healthy: bool = True,
    reason: str = "",
    connections: int = 0,
    utilization: float | None = 10.0,
) -> GPU:
    return GPU.model_validate(
        {
            "index": 0,
            "uuid": "GPU-1",
            "model": "NVIDIA H100 80GB HBM3",
            "memoryBytes": 1,
            "driverVersion": "580",
            "cudaVersion": "12.6",
            "port": 9999,
            "health": {
                "healthy": healthy,
                "reason": reason,
                "message": "why" if not healthy else "",
            },
            "load": {"connections": connections, "utilizationPercent": utilization},
        }
    )


@pytest.mark.parametrize(
    ("kwargs", "problem", "thresholds", "previous", "expected"),
    [
        ({}, "", Thresholds(), None, Verdict(healthy=True)),
        (
            {"healthy": False, "reason": "backend-down"},
            "",
            Thresholds(),
            None,
            Verdict(healthy=False, reason="backend-down", message="why", since=1000.0),
        ),
        (
            {"healthy": False, "reason": "backend-wedged"},
            "",
            Thresholds(),
            None,
            Verdict(healthy=False, reason="backend-wedged", message="why", since=1000.0),
        ),
        (
            {"healthy": False, "reason": "not-listening"},
            "",
            Thresholds(),
            None,
            Verdict(healthy=False, reason="not-listening", message="why", since=1000.0),
        ),
        (
            {},
            "agent not answering for 12s",
            Thresholds(),
            None,
            Verdict(
                healthy=False,
                reason="agent-unreachable",
                message="agent not answering for 12s",
                since=1000.0,
            ),
        ),
        (
            {"healthy": False, "reason": "backend-down"},
            "",
            Thresholds(),
            Verdict(healthy=False, since=800.0),
            Verdict(healthy=False, reason="backend-down", message="why", since=800.0, evict=True),
        ),
        (
            {"healthy": False, "reason": "backend-down"},
            "",
            Thresholds(),
            Verdict(healthy=False, since=950.0),
            Verdict(healthy=False, reason="backend-down", message="why", since=950.0),
        ),
        (
            {"connections": 8},
            "",
            Thresholds(max_connections=8),
            None,
            Verdict(healthy=True, overloaded="connections"),
        ),
        ({"connections": 7}, "", Thresholds(max_connections=8), None, Verdict(healthy=True)),
        (
            {"utilization": 97.0},
            "",
            Thresholds(max_utilization=95),
            None,
            Verdict(healthy=True, overloaded="utilization"),
        ),
        ({"utilization": None}, "", Thresholds(max_utilization=95), None, Verdict(healthy=True)),
    ],
    ids=[
        "healthy",
        "backend-down",
        "backend-wedged",
        "not-listening",
        "agent-gone",
        "down-long-enough-to-evict",
        "down-not-long-enough",
        "connection-limit",
        "below-connection-limit",
        "utilization-limit",
        "utilization-unknown",
    ],
)
def test_verdicts(
    kwargs: dict[str, Any],
    problem: str,
    thresholds: Thresholds,
    previous: Verdict | None,
    expected: Verdict,
) -> None:
    verdict = judge(
        gpu(**kwargs),
        agent_problem=problem,
        thresholds=thresholds,
        previous=previous,
        now=1000.0,
        no_execute_after=120,
    )
    assert verdict == expected


def test_eviction_can_be_turned_off() -> None:
    verdict = judge(
        gpu(healthy=False, reason="backend-down"),
        agent_problem="",
        thresholds=Thresholds(),
        previous=Verdict(healthy=False, since=0.0),
        now=1e9,
        no_execute_after=0,
    )
    assert not verdict.evict


@pytest.mark.parametrize(
    ("reason", "taint"),
    [
        ("backend-down", "backend-down"),
        ("backend-wedged", "backend-wedged"),
        ("not-listening", "not-listening"),
        ("port-closed", "not-listening"),
        ("starting", "not-listening"),
        ("gpu-fallen-off-the-bus", "gpu-fallen-off-the-bus"),
        ("", "backend-down"),
    ],
    ids=[
        "down",
        "wedged",
        "not-listening",
        "older-agent",
        "older-agent-starting",
        "newer-agent",
        "none",
    ],
)
def test_every_unhealthy_reason_taints_and_unknown_ones_keep_their_word(
    reason: str, taint: str
) -> None:
    """Agents and controllers upgrade apart: no reason, known or not, leaves a GPU untainted."""
    verdict = judge(
        gpu(healthy=False, reason=reason),
        agent_problem="",
        thresholds=Thresholds(),
        previous=None,
        now=1000.0,
        no_execute_after=120,
    )
    assert (verdict.healthy, verdict.reason) == (False, taint)
