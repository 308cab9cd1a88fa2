"""Run a command with none of the agent's capabilities: ``python -m backend.unprivileged CMD``.

The agent runs as root with ``CAP_NET_ADMIN`` to keep its packet filter table (see
:mod:`backend.nftables`). The GVirtuS backends it starts execute other people's
CUDA calls, over a protocol without authentication, in code not written to be
hardened; a backend holding ``CAP_NET_ADMIN`` could remove the very rules that keep
strangers away from it. So each backend is started through this launcher, which
sets ``no_new_privs`` and clears every capability set before it replaces itself
with the backend:

* ``no_new_privs`` first: without it, a root process's ``execve`` hands the
  bounding set back as permitted capabilities; with it, the new program gets no
  more than the launcher had left, which is nothing;
* then the ambient set, and the effective, permitted and inheritable sets
  (``capset``). Dropping needs no privilege, so this works in any container.

The process keeps its pid, its session and its user, so the agent supervises and
judges it from ``/proc`` exactly as before (a reader may look into a process whose
capabilities are a subset of its own).
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop_privileges() -> None:
    """Set ``no_new_privs`` and clear every capability of this process.

    Raises:
        OSError: the kernel refused (it never refuses dropping).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _error("prctl(PR_SET_NO_NEW_PRIVS)")
    # Kernels before 4.3 have no ambient set, so nothing to clear there.
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()  # version 3 takes two 32-bit halves of each 64-bit set, all zero
    if libc.capset(ctypes.byref(header), data) != 0:
        raise _error("capset")


def _error(call: str) -> OSError:
    errno = ctypes.get_errno()
    return OSError(errno, f"{call}: {os.strerror(errno)}")


def main(argv: list[str]) -> None:
    """Drop privileges and become ``argv``; never returns."""
    if not argv:
        sys.exit("usage: python -m backend.unprivileged COMMAND [ARGUMENT...]")
    drop_privileges()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
