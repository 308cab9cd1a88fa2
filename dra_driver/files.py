"""Crash-safe file writes.

A file is written to a temporary name in its own directory and renamed over the
target, so a reader (the container runtime scanning the CDI directory, a restarted
plugin reading its checkpoint) sees the old content or the new one, never a torn
mix. ``durable=True`` also flushes the data and the directory entry to disk before
returning, for files whose loss after a power cut would lose state.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets

TEMP_MARK = ".tmp-"
"""Infix of temporary files; anything carrying it is debris from a crash."""


def atomic_write(
    path: pathlib.Path, data: bytes, *, mode: int = 0o644, durable: bool = False
) -> None:
    """Replace ``path`` with ``data`` atomically."""
    temp = path.with_name(f".{path.name}{TEMP_MARK}{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(folder: pathlib.Path) -> None:
    """Flush a directory's entries (a rename) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp(path: pathlib.Path) -> bool:
    """Whether ``path`` is a temporary file left by an interrupted :func:`atomic_write`."""
    return path.name.startswith(".") and TEMP_MARK in path.name
