"""One supervised ``gvirtus-backend`` process per GPU.

Each process sees only its GPU (``CUDA_VISIBLE_DEVICES`` set to the GPU's UUID,
which, unlike an index, does not depend on CUDA's device ordering), listens on its
own port, and reads its own generated ``properties.json``. It runs in a session of
its own, so its process group holds every process it forks (the real backend
serves from a forked child).

A backend that exits is started again after a backoff that doubles up to a limit
and resets once a run lasted long enough. One that runs but no longer serves (the
agent judges that from ``/proc``) is restarted on request: its process group is
ended (SIGTERM, then SIGKILL after a grace) and it starts again at once, since the
judgement itself took several samples. A process left in the group after its leader
ended (a serving child that outlived its parent would keep the port) is killed
before the next start. Why each run ended is kept for the inventory and counted by
reason. Output is relayed to the agent's log, line by line, tagged with the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pathlib
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import Counter

from backend.gpus import GPUInfo
from dra_driver import files, gvirtus
from dra_driver.backoff import Backoff

log = logging.getLogger(__name__)

RESTARTS = Counter(
    "gvirtus_dra_agent_backend_restarts_total",
    "Backend processes started again, by why the previous run ended.",
    ["gpu", "reason"],
)
EXITED = "exited"
"""Restart reason of a backend that ended on its own (or never started)."""
STOPPED = "stopped"
"""Restart reason of a backend started again after :meth:`BackendProcess.stop`."""


@dataclass(frozen=True)
class BackendCommand:
    """How to run ``gvirtus-backend`` (or the simulator's stand-in) for any GPU.

    The command line is ``*launcher, *interpreter, executable, <properties.json>``;
    ``environment`` is added to the GVirtuS variables; ``listen_address`` goes into the
    file (the real backend listens on every address whatever it says). The agent's
    ``launcher`` (:mod:`backend.unprivileged`) drops its capabilities before it becomes
    the backend.
    """

    executable: pathlib.Path
    gvirtus_home: pathlib.Path
    log_level: int
    plugins: tuple[str, ...]
    state_dir: pathlib.Path
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 60.0
    stop_grace: float = 5.0
    interpreter: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    listen_address: str = "0.0.0.0"


def exit_reason(returncode: int) -> str:
    """``exited with code 1`` or ``killed by SIGSEGV``."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class BackendProcess:
    """Keeps one ``gvirtus-backend`` running for one GPU."""

    def __init__(self, *, gpu: GPUInfo, port: int, command: BackendCommand) -> None:
        self.gpu = gpu
        self.port = port
        self.command = command
        self.restarts = 0
        self.last_exit = ""
        self.last_restart = ""
        self.started_at = 0.0
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._request: tuple[str, str] | None = None
        self._requested = asyncio.Event()
        self._stopped = False

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.returncode is None

    @property
    def supervised(self) -> bool:
        """Between :meth:`start` and :meth:`stop`."""
        return self._task is not None

    @property
    def pid(self) -> int | None:
        """The running leader, which is also its process group (None while not running)."""
        return self._process.pid if self._process is not None and self.running else None

    @property
    def properties(self) -> pathlib.Path:
        """The generated ``properties.json`` the process is started with."""
        return self.command.state_dir / f"gpu-{self.gpu.index}.properties.json"

    def environment(self) -> dict[str, str]:
        """The process environment: the agent's, narrowed to this GPU."""
        home = str(self.command.gvirtus_home)
        library_path = ":".join(
            p for p in (f"{home}/lib", os.environ.get("LD_LIBRARY_PATH", "")) if p
        )
        return {
            **os.environ,
            **self.command.environment,
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": self.gpu.uuid,
            "GVIRTUS_HOME": home,
            "GVIRTUS_LOGLEVEL": str(self.command.log_level),
            "LD_LIBRARY_PATH": library_path,
        }

    async def start(self) -> None:
        """Write the properties file and keep the process running in the background.

        A start after :meth:`stop` counts as a restart.
        """
        if self._stopped:
            self._stopped = False
            self._count_restart(STOPPED)
        self.command.state_dir.mkdir(parents=True, exist_ok=True)
        content = gvirtus.render_backend_properties(
            port=self.port, plugins=self.command.plugins, address=self.command.listen_address
        )
        files.atomic_write(self.properties, content)
        self._task = asyncio.create_task(self._supervise(), name=f"backend-gpu-{self.gpu.index}")

    def restart(self, *, reason: str, message: str) -> None:
        """End the running process group and start again at once; ``reason`` labels it."""
        if self.running and self._request is None:
            self._request = (reason, message)
            self._requested.set()

    async def stop(self, *, why: str = "") -> None:
        """Stop supervising and end the process group (SIGTERM, SIGKILL after the grace).

        ``why``, when given, is reported as how the last run ended.
        """
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            self._stopped = True
        self._request = None
        self._requested.clear()
        if why:
            self.last_exit = why

    async def _supervise(self) -> None:
        delays = Backoff(initial=self.command.backoff_initial, maximum=self.command.backoff_max)
        while True:
            self.started_at = time.monotonic()
            await self._run_once()
            if time.monotonic() - self.started_at >= self.command.stable_after:
                delays.reset()
            request, self._request = self._request, None
            self._requested.clear()
            reason, wait = (request[0], 0.0) if request else (EXITED, delays.next())
            log.warning(
                "gvirtus-backend for GPU %d %s; starting it again in %.1fs",
                self.gpu.index,
                self.last_exit,
                wait,
                extra={"gpu": self.gpu.index, "port": self.port, "reason": reason},
            )
            await asyncio.sleep(wait)
            self._count_restart(reason)

    def _count_restart(self, reason: str) -> None:
        self.restarts += 1
        self.last_restart = reason
        RESTARTS.labels(str(self.gpu.index), reason).inc()

    async def _run_once(self) -> None:
        argv = [
            *self.command.launcher,
            *self.command.interpreter,
            str(self.command.executable),
            str(self.properties),
        ]
        if problem := _unstartable(self.command.executable, script=bool(self.command.interpreter)):
            # Said here: once the launcher runs, a failed exec is only an exit status.
            self.last_exit = f"failed to start {argv[-2]}: {problem}"
            return
        # Output goes to a pipe of our own, not asyncio's: its wait() would also wait
        # for every holder of the pipe, and a serving child may outlive the leader.
        output, into = os.pipe()
        try:
            process = self._process = await asyncio.create_subprocess_exec(
                *argv,
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=into,
                stderr=into,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(output)
            self.last_exit = f"failed to start {argv[-2]}: {exc.strerror or exc}"
            return
        finally:
            os.close(into)
        log.info(
            "started gvirtus-backend",
            extra={"gpu": self.gpu.index, "port": self.port, "pid": process.pid},
        )
        relay = asyncio.create_task(_relay(output, gpu=self.gpu.index))
        try:
            await self._until_exit_or_request(process)
        finally:
            # Also when cancelled by stop(): the group ends with the supervision.
            await _end_group(process, grace=self.command.stop_grace)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(relay), self.command.stop_grace)
            relay.cancel()
        if self._request is not None:
            self.last_exit = f"restarted by the agent: {self._request[1]}"
        else:
            self.last_exit = exit_reason(process.returncode or 0)

    async def _until_exit_or_request(self, process: asyncio.subprocess.Process) -> None:
        exited = asyncio.create_task(process.wait())
        requested = asyncio.create_task(self._requested.wait())
        try:
            await asyncio.wait({exited, requested}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            requested.cancel()


def _unstartable(executable: pathlib.Path, *, script: bool) -> str:
    """Why ``executable`` (a ``script`` an interpreter reads) cannot run, as ``execve`` says."""
    if not executable.exists():
        return os.strerror(errno.ENOENT)
    wanted = os.R_OK if script else os.X_OK
    if executable.is_dir() or not os.access(executable, wanted):
        return os.strerror(errno.EACCES)
    return ""


async def _end_group(process: asyncio.subprocess.Process, *, grace: float) -> None:
    """End what is left of the process group of ``process`` and reap it.

    A running leader gets SIGTERM (the group does) and ``grace`` seconds; then every
    member left gets SIGKILL: a serving child that outlived the real backend's parent
    would keep the port and the GPU. Called right after the leader ended, so the group
    id cannot have been reused yet.
    """
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
            os.killpg(process.pid, signal.SIGCONT)  # a stopped process acts on it only then
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()
    await _reap(process.pid)


async def _reap(pgid: int) -> None:
    """Reap the members of a killed group that were handed to the agent.

    When the agent is PID 1 of its container, orphans of a backend become its
    children; waiting for this group only takes no other process's exit status.
    """
    for _ in range(100):
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG never blocks)
        except ChildProcessError:
            return  # none left that is ours to reap
        if pid == 0:
            await asyncio.sleep(0.01)  # killed, not dead yet


async def _relay(output: int, *, gpu: int) -> None:
    """Log each line written to the pipe ``output`` (which this closes) until its end."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(output, "rb", buffering=0)
    )
    try:
        while line := await reader.readline():
            log.info(
                "gvirtus-backend: %s", line.decode(errors="replace").rstrip(), extra={"gpu": gpu}
            )
    finally:
        transport.close()
