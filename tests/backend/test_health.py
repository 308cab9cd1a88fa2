"""Judging a backend over consecutive samples: its health, and when to restart it."""

from __future__ import annotations

import pytest

from backend.health import Limits, Track, judge
from backend.observe import Observation

LIMITS = Limits(restart_after=3, leak_threshold=64, start_grace=30)
PID = 4242


def serving(**changes: object) -> Observation:
    values: dict[str, object] = {
        "alive": True,
        "listener_pid": PID + 1,
        "open_files": 10,
        "open_files_limit": 1024,
        "connections": frozenset({1, 2}),
    }
    return Observation(**{**values, **changes})  # type: ignore[arg-type]


SILENT = Observation(alive=True, open_files=3, open_files_limit=1024)
AT_LIMIT = serving(open_files=1024, close_wait=1000)
QUEUED = serving(accept_queue=6)
Step = tuple[Observation, float]
Outcome = tuple[str, str | None]
HEALTHY: Outcome = ("", None)
WEDGED: Outcome = ("backend-wedged", None)
SILENT_OUT: Outcome = ("not-listening", None)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([(serving(), 60)] * 3, [HEALTHY] * 3),
        ([(SILENT, 5)] * 5, [SILENT_OUT] * 5),
        ([(SILENT, 40)] * 3, [SILENT_OUT, SILENT_OUT, ("not-listening", "not-listening")]),
        (
            [(serving(), 1), (SILENT, 2), (SILENT, 3), (SILENT, 4)],
            [HEALTHY, SILENT_OUT, SILENT_OUT, ("not-listening", "not-listening")],
        ),
        ([(AT_LIMIT, 60)] * 3, [WEDGED, WEDGED, ("backend-wedged", "backend-wedged")]),
        (
            [(AT_LIMIT, 60), (serving(), 61), (AT_LIMIT, 62), (AT_LIMIT, 63)],
            [WEDGED, HEALTHY, WEDGED, WEDGED],
        ),
        (
            [(QUEUED, 60)] * 5,
            [HEALTHY, HEALTHY, WEDGED, WEDGED, ("backend-wedged", "backend-wedged")],
        ),
        (
            [(serving(accept_queue=6, connections=frozenset(range(n))), 60) for n in (3, 4, 5, 6)],
            [HEALTHY] * 4,
        ),
        ([(serving(close_wait=64), 60)], [("", "leaked-descriptors")]),
        ([(serving(close_wait=63), 60)], [HEALTHY]),
        ([(serving(close_wait=500, established=1), 60)] * 3, [HEALTHY] * 3),
        ([(serving(close_wait=20, open_files_limit=40), 60)], [("", "leaked-descriptors")]),
        ([(Observation(), 60)], [("backend-down", None)]),
    ],
    ids=[
        "serving",
        "starting-within-grace",
        "not-listening-past-grace",
        "stopped-listening-after-it-did",
        "at-descriptor-limit",
        "limit-streak-broken",
        "accept-queue-stuck",
        "accept-queue-draining",
        "leaks-while-idle",
        "leaks-below-threshold",
        "leaks-with-a-frontend-connected",
        "threshold-is-half-a-small-limit",
        "group-gone",
    ],
)
def test_a_backend_over_samples(steps: list[Step], expected: list[Outcome]) -> None:
    track = Track.of(None, pid=PID)
    outcomes = []
    for observation, uptime in steps:
        judgement = judge(
            observation,
            pid=PID,
            uptime=uptime,
            port=9999,
            down_because="killed by SIGKILL",
            track=track,
            limits=LIMITS,
        )
        assert judgement.health.healthy is (judgement.health.reason == "")
        outcomes.append(
            (judgement.health.reason, judgement.restart.reason if judgement.restart else None)
        )
    assert outcomes == expected


@pytest.mark.parametrize(
    ("observation", "uptime", "message"),
    [
        (AT_LIMIT, 60, "1024 of 1024 open files in use (1000 held by closed connections)"),
        (SILENT, 5, "started 5s ago; not listening on port 9999 yet"),
        (
            Observation(alive=True, port_taken=True),
            40,
            "none of its processes listens on port 9999 (another process listens on it)",
        ),
        (Observation(), 60, "killed by SIGKILL"),
    ],
    ids=["wedged", "starting", "port-taken", "down"],
)
def test_messages_say_why(observation: Observation, uptime: float, message: str) -> None:
    judgement = judge(
        observation,
        pid=PID,
        uptime=uptime,
        port=9999,
        down_because="killed by SIGKILL",
        track=Track.of(None, pid=PID),
        limits=LIMITS,
    )
    assert message in judgement.health.message


def test_a_new_process_starts_a_fresh_track() -> None:
    old = Track(pid=PID, wedged=2, listened=True)
    assert Track.of(old, pid=PID) is old
    assert Track.of(old, pid=PID + 7) == Track(pid=PID + 7)
