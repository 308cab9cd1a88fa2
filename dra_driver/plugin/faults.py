"""Named crash points for crash-consistency tests.

Tests start the plugin with ``GVIRTUS_DRA_CRASH_AT=<point>``; reaching that point
kills the process with SIGKILL, exactly like a node losing power or an OOM kill at
the worst moment, so the recovery path can be checked for every window. Without the
variable (always, in production) a crash point does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "GVIRTUS_DRA_CRASH_AT"

POINTS = (
    "prepare:files-written",  # CDI spec and properties.json written, checkpoint not yet
    "prepare:checkpointed",  # checkpoint written, response not yet sent
    "unprepare:checkpointed",  # claim dropped from the checkpoint, files not yet removed
)

_armed = os.environ.get(ENV, "")


def crash_point(name: str) -> None:
    """SIGKILL this process if the test armed ``name``."""
    if _armed == name:
        os.kill(os.getpid(), signal.SIGKILL)
