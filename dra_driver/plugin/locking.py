"""Serialization of prepare and unprepare, within a process and across processes.

During a rolling update two plugin pods serve the same node and the kubelet may call
either, so the on-disk state needs a lock both honour: an exclusive ``flock`` on
``<data dir>/serialize.lock`` (used when the plugin runs with a pod UID). Inside one
process an asyncio lock comes first, so tasks queue cheaply and only one of them
polls the file lock. The file lock is taken without blocking the event loop: a
non-blocking attempt, retried with short sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pathlib
import time
from collections.abc import AsyncIterator

from prometheus_client import Histogram

WAIT_SECONDS = Histogram(
    "gvirtus_dra_serialize_wait_seconds",
    "Time prepare and unprepare waited for the serialization lock.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
)


class Serializer:
    """An async mutex, optionally backed by a file lock shared with other processes."""

    def __init__(self, *, lock_file: pathlib.Path | None) -> None:
        self._lock = asyncio.Lock()
        self._lock_file = lock_file
        self._fd: int | None = None

    def open(self) -> None:
        """Open the lock file (idempotent); call before first use."""
        if self._lock_file is not None and self._fd is None:
            self._fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o666)

    def close(self) -> None:
        """Close the lock file; the lock must not be held."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold the lock for the block; cancellation while waiting leaves it free."""
        started = time.perf_counter()
        async with self._lock:
            await self._flock()
            WAIT_SECONDS.observe(time.perf_counter() - started)
            try:
                yield
            finally:
                if self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def _flock(self) -> None:
        if self._fd is None:
            return
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
