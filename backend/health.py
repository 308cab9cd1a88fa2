"""Whether a backend serves, and whether to restart it, from what ``/proc`` showed.

The real ``gvirtus-backend`` never closes an accepted socket: every connection a
frontend closes stays in CLOSE-WAIT and keeps a descriptor. At its descriptor limit
``accept`` fails, connections pile up in the kernel's accept queue, new ones time
out, and the process neither serves nor exits. So beyond "it runs" the agent judges:

* ``not-listening``: its processes run but none holds the LISTEN socket on its port
  (its serving child ended and the parent waits forever, or it never got there).
  Restarted once this lasted ``restart_after`` samples, not counting the start-up
  grace of a process that has not listened yet.
* ``backend-wedged``: its descriptors are at its own limit, or connections waited in
  its accept queue through two sampling intervals while it took none (the kernel's
  table shows the queue's length, not its backlog, so "stuck" is judged by progress
  rather than by "full"). Restarted once this lasted ``restart_after`` samples: it
  serves nobody any more.
* leaked descriptors: CLOSE-WAIT connections it holds reached the leak threshold
  while no frontend is connected. It still serves, so it stays healthy, but it is
  restarted before it wedges, at the one moment a restart costs no frontend
  anything. With a frontend connected it is never restarted for leaks.

The judgement keeps a little memory per backend (:class:`Track`), reset whenever
the backend's process changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.observe import Observation
from dra_driver.models import GPUHealth

BACKEND_DOWN = "backend-down"
BACKEND_WEDGED = "backend-wedged"
NOT_LISTENING = "not-listening"
LEAKED = "leaked-descriptors"
"""Restart reason (never a health reason: a leaking backend still serves)."""


@dataclass(frozen=True)
class Limits:
    """When to call a backend wedged or leaking, and how long to wait before a restart."""

    restart_after: int = 3
    leak_threshold: int = 64
    start_grace: float = 30.0

    def leak_limit(self, open_files_limit: int | None) -> int:
        """Leaked descriptors that trigger a restart: the threshold, or half its own limit."""
        if open_files_limit is None:
            return self.leak_threshold
        return max(1, min(self.leak_threshold, open_files_limit // 2))


@dataclass
class Track:
    """What one backend looked like in the samples before this one."""

    pid: int | None = None
    wedged: int = 0
    stuck: int = 0
    silent: int = 0
    listened: bool = False
    connections: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of(cls, previous: Track | None, *, pid: int | None) -> Track:
        """``previous`` while it is about the same process, a fresh track otherwise."""
        return previous if previous is not None and previous.pid == pid else cls(pid=pid)


@dataclass(frozen=True)
class Restart:
    """Why a running backend is to be restarted: a metric label and a sentence."""

    reason: str
    message: str


@dataclass(frozen=True)
class Judgement:
    """The health to report and, when it no longer serves or leaks too much, a restart."""

    health: GPUHealth
    restart: Restart | None = None


def judge(
    observation: Observation,
    *,
    pid: int | None,
    uptime: float,
    port: int,
    down_because: str,
    track: Track,
    limits: Limits,
) -> Judgement:
    """Judge one sample of a backend whose supervised process is ``pid`` (None: not running).

    ``track`` (that of this very process: see :meth:`Track.of`) is updated in place for
    the next sample.
    """
    if pid is None or not observation.alive:
        return Judgement(GPUHealth(healthy=False, reason=BACKEND_DOWN, message=down_because))
    if not observation.listening:
        return _not_listening(observation, uptime=uptime, port=port, track=track, limits=limits)
    track.silent, track.listened = 0, True
    taken = observation.connections - track.connections
    track.connections = observation.connections
    track.stuck = track.stuck + 1 if observation.accept_queue and not taken else 0
    problem = _wedged(observation, track)
    track.wedged = track.wedged + 1 if problem else 0
    if problem:
        restart = Restart(BACKEND_WEDGED, problem) if track.wedged >= limits.restart_after else None
        health = GPUHealth(healthy=False, reason=BACKEND_WEDGED, message=problem)
        return Judgement(health, restart)
    leak_limit = limits.leak_limit(observation.open_files_limit)
    if observation.established == 0 and observation.close_wait >= leak_limit:
        message = (
            f"holds {observation.close_wait} descriptors of closed connections "
            f"(restart at {leak_limit}) and no frontend is connected"
        )
        return Judgement(GPUHealth(healthy=True), Restart(LEAKED, message))
    return Judgement(GPUHealth(healthy=True))


def _not_listening(
    observation: Observation, *, uptime: float, port: int, track: Track, limits: Limits
) -> Judgement:
    elsewhere = " (another process listens on it)" if observation.port_taken else ""
    if uptime < limits.start_grace and not track.listened:
        message = f"started {uptime:.0f}s ago; not listening on port {port} yet{elsewhere}"
        return Judgement(GPUHealth(healthy=False, reason=NOT_LISTENING, message=message))
    track.silent += 1
    message = f"runs, but none of its processes listens on port {port}{elsewhere}"
    restart = Restart(NOT_LISTENING, message) if track.silent >= limits.restart_after else None
    return Judgement(GPUHealth(healthy=False, reason=NOT_LISTENING, message=message), restart)


def _wedged(observation: Observation, track: Track) -> str:
    used, limit = observation.open_files, observation.open_files_limit
    if used is not None and limit is not None and used >= limit:
        return (
            f"{used} of {limit} open files in use ({observation.close_wait} held by "
            "closed connections): it cannot accept connections"
        )
    if track.stuck >= 2:
        return (
            f"{observation.accept_queue} connections wait in its accept queue and it "
            f"took none for {track.stuck} samples"
        )
    return ""
