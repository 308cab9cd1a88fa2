"""Where a claim's UID becomes a path: only a real UID, and never outside its root.

The kubelet names claims by UID, and the plugin keeps a claim's files under
``<claims dir>/<uid>/`` and ``<cdi root>/gvirtus.io-gpu_<uid>.json``. A UID that is
not one (``..``, an absolute path, a NUL, a name thousands of characters long) would
turn an unprepare into ``rmtree`` of the data directory or of any directory, so UIDs
are checked before they are joined to a path, and every path is checked again,
after resolving symlinks in its parent, before anything is written or removed
there. Removal never follows a symlink: a link planted in the claims directory is
removed, not what it points at.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import stat

_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
"""How Kubernetes writes ``metadata.uid``: an RFC 4122 UUID, lowercase hex, 8-4-4-4-12."""

_SHOWN = 60
"""Characters of a bad UID repeated in a message; the rest is elided."""


class PathError(ValueError):
    """A UID or path the plugin refuses to touch; the message says why and what to do."""


def is_uid(uid: str) -> bool:
    """Whether ``uid`` is a UID as Kubernetes writes it."""
    return _UID.fullmatch(uid) is not None


def check_uid(uid: str) -> str:
    """``uid`` itself when it is a UID as Kubernetes writes it.

    Raises:
        PathError: naming the field, showing (a bounded part of) the value.
    """
    if is_uid(uid):
        return uid
    raise PathError(
        f"claim uid {shown(uid)} is not a Kubernetes UID (a claim's metadata.uid is a "
        "lowercase RFC 4122 UUID such as 4c1f5c6e-2b7d-4e0a-9d3e-0c6a5b1f2e3d)"
    )


def shown(value: str) -> str:
    """``value`` quoted for a message, cut to a readable length."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


def inside(root: pathlib.Path, path: pathlib.Path) -> pathlib.Path:
    """``path`` with its parent resolved, if that parent is ``root`` or below it.

    The last component is not resolved, so a symlink there is itself the target
    (replaced by a write, unlinked by :func:`remove`), never what it points at.

    Raises:
        PathError: the path leads outside ``root``.
    """
    base = root.resolve()
    parent = path.parent.resolve()
    if parent != base and base not in parent.parents:
        raise PathError(f"{path} leads outside {root} (to {parent}); refusing to touch it")
    return parent / path.name


def remove(path: pathlib.Path) -> None:
    """Remove a file, a symlink (not its target) or a directory tree; absent is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
