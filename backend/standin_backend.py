"""The simulator's stand-in for ``gvirtus-backend``: its command line and its sockets, no GPU.

Run as ``python standin_backend.py <properties.json>``, the command-line shape of the
real backend, and like it refusing a file whose name does not end in ``.json``. It
reads the port of the first communicator entry, forks a child that listens and
serves, and waits for it; once the child has ended the parent stays, doing nothing,
as the real backend's parent does. The child behaves as the real one was measured to:

* it never closes an accepted connection, so every frontend that leaves leaves a
  CLOSE-WAIT socket holding one of its descriptors;
* it runs under its own limit on open files when ``GVIRTUS_STANDIN_OPEN_FILES`` is set;
* at that limit ``accept`` fails with EMFILE and it keeps trying (every 50 ms, where
  the real one spins a CPU), so the kernel's accept queue fills and new connects
  time out.

Unlike the real backend it listens on the file's ``server_address`` rather than on
every address, so simulated nodes can share one host on loopback addresses of
their own. Faults, sent by the simulator's control endpoint to the process group:
``SIGUSR1`` makes the serving child use up its descriptors (it wedges),
``SIGUSR2`` makes it exit with code 1 (the parent stays: nothing listens).

Standard library only, and no import of the agent: it starts in tens of milliseconds.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import resource
import signal
import socket
import sys
import time
from types import FrameType

LIMIT_VARIABLE = "GVIRTUS_STANDIN_OPEN_FILES"
BACKLOG = 5
"""The real backend's ``listen`` backlog."""
RETRY_SECONDS = 0.05

_held: list[object] = []


def _endpoint(argv: list[str]) -> tuple[str, int]:
    if len(argv) != 2 or not argv[1].endswith(".json") or not pathlib.Path(argv[1]).is_file():
        sys.exit(f"usage: {argv[0]} <properties.json>: no such file, or not a .json file")
    endpoint = json.loads(pathlib.Path(argv[1]).read_text())["communicator"][0]["endpoint"]
    return str(endpoint.get("server_address", "0.0.0.0")), int(endpoint["port"])


def _limit_open_files() -> None:
    wanted = os.environ.get(LIMIT_VARIABLE)
    if wanted:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(wanted), hard))


def _use_up_descriptors(_signum: int, _frame: FrameType | None) -> None:
    try:
        while True:
            _held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise


def _exit(_signum: int, _frame: FrameType | None) -> None:
    os._exit(1)


def serve(address: str, port: int) -> None:
    """Listen and hold every accepted connection; never returns."""
    server = socket.create_server((address, port), backlog=BACKLOG)
    signal.signal(signal.SIGUSR1, _use_up_descriptors)
    signal.signal(signal.SIGUSR2, _exit)
    print(f"[Process {os.getpid()}] Up and running!", flush=True)
    while True:
        try:
            connection, _ = server.accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            time.sleep(RETRY_SECONDS)
            continue
        _held.append(connection)


def main() -> None:
    """Fork the serving child and wait for it, then wait forever."""
    address, port = _endpoint(sys.argv)
    _limit_open_files()
    print("GVirtuS backend: 0.0.12 version", flush=True)
    # Faults are for the serving child; the parent ignores them (the child inherits
    # that until it installs its handlers, so an early fault is lost, not fatal).
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        try:
            serve(address, port)
        except OSError as exc:
            print(f"cannot serve on {address}:{port}: {exc}", flush=True)
            os._exit(1)
    _, status = os.waitpid(child, 0)
    print(f"serving process {child} ended ({status}); nothing serves any more", flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
