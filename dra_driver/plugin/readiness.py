"""What the plugin still waits for after its sockets serve, and a bounded wait for it.

The DRA socket serves first, because a kubelet whose call finds no plugin waits about
65 s before it retries. Calls can therefore arrive while the slow parts still come up:
the recovery of on-disk state and the API client (importing the ``kubernetes``
library alone takes about half a second). A call waits for exactly the parts it
needs, up to :data:`READY_WAIT` and never past its own deadline, instead of failing.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable

READY_WAIT = 10.0
"""Longest a call waits for start-up: well above what a start takes on a busy node
(a second or two), well below the kubelet's 45 s deadline."""


class Part(enum.Enum):
    """A part of the plugin that comes up after the sockets serve."""

    RECOVERED = "the recovery of on-disk state"
    API = "the API client"


class NotReadyError(Exception):
    """The parts a call needs did not come up in time; the message names them."""

    def __init__(self, missing: Iterable[Part], *, waited: float) -> None:
        self.missing = tuple(missing)
        names = " and ".join(p.value for p in self.missing)
        super().__init__(
            f"the plugin is still starting: {names} not ready after {waited:.1f}s; "
            "the kubelet will retry"
        )


class Readiness:
    """One flag per :class:`Part`, set once and never cleared."""

    def __init__(self) -> None:
        self._ready = {part: asyncio.Event() for part in Part}

    def mark(self, part: Part) -> None:
        """Record that ``part`` is up; waiters for it go ahead."""
        self._ready[part].set()

    def missing(self, parts: Iterable[Part] = tuple(Part)) -> list[Part]:
        """Those of ``parts`` that are not up yet, in declaration order."""
        wanted = set(parts)
        return [p for p in Part if p in wanted and not self._ready[p].is_set()]

    def problem(self) -> str | None:
        """Why the plugin is not fully up, or None (for ``/readyz``)."""
        missing = self.missing()
        return " and ".join(f"{p.value} not ready" for p in missing) if missing else None

    async def wait(self, parts: Iterable[Part], *, timeout: float) -> None:
        """Return once every one of ``parts`` is up.

        Raises:
            NotReadyError: some were still missing after ``timeout`` seconds.
        """
        missing = self.missing(parts)
        if not missing:
            return
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                for part in missing:
                    await self._ready[part].wait()
        except TimeoutError:
            raise NotReadyError(self.missing(missing), waited=max(timeout, 0.0)) from None
