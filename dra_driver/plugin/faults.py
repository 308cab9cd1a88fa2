"""Named crash and pause points for crash-consistency and start-up tests.

Tests start the plugin with ``GVIRTUS_DRA_CRASH_AT=<point>``; reaching that point
kills the process with SIGKILL, exactly like a node losing power or an OOM kill at
the worst moment, so the recovery path can be checked for every window.

``GVIRTUS_DRA_PAUSE_AT=<point>=<file>`` holds the plugin at a pause point until
``<file>`` exists, so a test can send calls into a window of start-up that is
otherwise a fraction of a second long, and know they arrived there. Hold points are
the same for work in a worker thread: the thread waits, the event loop does not.

Without the variables (always, in production) these points do nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

log = logging.getLogger(__name__)

ENV = "GVIRTUS_DRA_CRASH_AT"
PAUSE_ENV = "GVIRTUS_DRA_PAUSE_AT"

POINTS = (
    "prepare:files-written",  # CDI spec and properties.json written, checkpoint not yet
    "prepare:checkpointed",  # checkpoint written, response not yet sent
    "unprepare:checkpointed",  # claim dropped from the checkpoint, files not yet removed
)

PAUSE_POINTS = (
    "startup:api-client",  # sockets serve, state recovered, no API client yet
    "prepare:writing",  # worker thread: a prepare's first claim written, the rest not yet
)

_armed = os.environ.get(ENV, "")
_paused, _, _release = os.environ.get(PAUSE_ENV, "").partition("=")


def crash_point(name: str) -> None:
    """SIGKILL this process if the test armed ``name``."""
    if _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)


async def pause_point(name: str) -> None:
    """Wait here while the test holds ``name`` (until its release file exists)."""
    if _paused != name or not _release:
        return
    log.info("paused at %s until %s exists", name, _release)
    while not os.path.exists(_release):  # noqa: ASYNC240 (a test hook; one stat)
        await asyncio.sleep(0.01)


def hold_point(name: str) -> None:
    """Block this worker thread here while the test holds ``name`` (see :func:`pause_point`)."""
    if _paused != name or not _release or os.path.exists(_release):
        return
    log.info("paused at %s until %s exists", name, _release)
    while not os.path.exists(_release):
        time.sleep(0.01)
