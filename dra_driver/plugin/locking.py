"""Serialization of prepare and unprepare, within a process and across processes.

During a rolling update two plugin pods serve the same node and the kubelet may call
either, so the on-disk state needs a lock both honour: an exclusive ``flock`` on
``<data dir>/serialize.lock`` (always taken: uncontended, it costs microseconds).
Inside one process an asyncio lock comes first, so tasks queue cheaply and only one of them
polls the file lock. The file lock is taken without blocking the event loop: a
non-blocking attempt, retried with short sleeps.

The work done under the lock (file writes, the checkpoint's fsync, removals) runs in
a worker thread (:meth:`Serializer.run`), so the event loop keeps answering the health
stream and other calls meanwhile. The lock file is created ``0600``: only the
plugin's own user has any business locking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pathlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from prometheus_client import Histogram

WAIT_SECONDS = Histogram(
    "gvirtus_dra_serialize_wait_seconds",
    "Time prepare and unprepare waited for the serialization lock.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
)

LOCK_FILE_MODE = 0o600

T = TypeVar("T")


class Serializer:
    """An async mutex, optionally backed by a file lock shared with other processes."""

    def __init__(self, *, lock_file: pathlib.Path | None) -> None:
        self._lock = asyncio.Lock()
        self._lock_file = lock_file
        self._fd: int | None = None

    def open(self) -> None:
        """Open the lock file (idempotent); call before first use."""
        if self._lock_file is not None and self._fd is None:
            fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, LOCK_FILE_MODE)
            try:
                os.fchmod(fd, LOCK_FILE_MODE)  # a file left by an older version was 0666
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd

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

    async def run(self, work: Callable[[], T]) -> T:
        """Run blocking ``work`` in a worker thread while holding the lock; its result.

        The lock is held until ``work`` returns, even when the caller is cancelled
        meanwhile (the kubelet gave up): a thread cannot be stopped, and releasing the
        lock under it would let a second writer in. The cancellation is raised after.
        """
        async with self.hold():
            return await _finish(asyncio.ensure_future(asyncio.to_thread(work)))

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


async def _finish(task: asyncio.Future[T]) -> T:
    """``task``'s result, waiting for it to end even through cancellations."""
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError
    return result
