"""The simulator's stand-in backend behaves as the real gvirtus-backend was measured to.

Each test runs it as a real process with the real command line, and looks at it
only through ``/proc``, as the agent does.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from backend import standin_backend
from backend.observe import Observation, Target, observe
from dra_driver import gvirtus
from tests.support.processes import free_port

LIMIT = 16


class StandIn:
    """One stand-in process group on a port of its own."""

    def __init__(self, root: pathlib.Path, *, open_files: int | None = LIMIT) -> None:
        self.port = free_port()
        properties = root / "gpu-0.properties.json"
        properties.write_bytes(
            gvirtus.render_backend_properties(
                port=self.port, plugins=("cudart",), address="127.0.0.1"
            )
        )
        env = dict(os.environ)
        if open_files is not None:
            env[standin_backend.LIMIT_VARIABLE] = str(open_files)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", standin_backend.__file__, str(properties)],
            env=env,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.clients: list[socket.socket] = []

    def seen(self) -> Observation:
        return observe([Target(pgid=self.proc.pid, port=self.port)])[0]

    def until(self, want: Callable[[Observation], bool], timeout: float = 20) -> Observation:
        deadline = time.monotonic() + timeout
        while not want(seen := self.seen()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {seen}")
            time.sleep(0.02)
        return seen

    def connect(self, *, wait: bool = True) -> socket.socket:
        client = socket.socket()
        self.clients.append(client)
        if wait:
            client.connect(("127.0.0.1", self.port))
        else:
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", self.port))
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def standin(tmp_path: pathlib.Path) -> Iterator[StandIn]:
    process = StandIn(tmp_path)
    process.until(lambda seen: seen.listening)
    yield process
    process.close()


def test_a_forked_child_serves_and_never_closes_a_connection(standin: StandIn) -> None:
    before = standin.seen()
    assert before.listener_pid != standin.proc.pid
    for _ in range(5):
        standin.connect().close()

    after = standin.until(lambda seen: seen.close_wait == 5)

    assert before.open_files is not None
    assert (after.open_files, after.established) == (before.open_files + 5, 0)


def test_at_its_limit_it_stops_accepting_and_new_connects_time_out(standin: StandIn) -> None:
    """Frontends connect one after another until one cannot: the queue is full, as measured.

    A handshake completes in the kernel while the accept queue has room, whether the
    backend accepts or not; so connects fail only once it stopped taking them and the
    queue filled up.
    """
    connected = 0
    while connected < 100:
        try:
            standin.clients.append(socket.create_connection(("127.0.0.1", standin.port), timeout=1))
        except TimeoutError:
            break
        connected += 1
        # One at a time: the next connect only once it took this one, or cannot take any.
        standin.until(
            lambda seen, n=connected: (
                len(seen.connections) + seen.accept_queue == n
                and (seen.accept_queue == 0 or seen.open_files == LIMIT)
            )
        )

    wedged = standin.seen()
    assert (wedged.open_files, wedged.open_files_limit) == (LIMIT, LIMIT)
    assert wedged.accept_queue == standin_backend.BACKLOG + 1, "the kernel's queue is full"
    assert connected == len(wedged.connections) + wedged.accept_queue
    assert standin.proc.poll() is None, "it does not exit"


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (signal.SIGUSR1, lambda seen: seen.listening and seen.open_files == LIMIT),
        (signal.SIGUSR2, lambda seen: seen.alive and not seen.listening),
    ],
    ids=["wedge", "server-exits-parent-waits"],
)
def test_faults(standin: StandIn, fault: int, expected: Callable[[Observation], bool]) -> None:
    os.killpg(standin.proc.pid, fault)
    standin.until(expected)
    assert standin.proc.poll() is None


def test_a_file_not_named_json_is_refused(tmp_path: pathlib.Path) -> None:
    properties = tmp_path / "properties.txt"
    properties.write_text("{}")
    result = subprocess.run(
        [sys.executable, "-I", standin_backend.__file__, str(properties)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "not a .json file" in result.stderr
