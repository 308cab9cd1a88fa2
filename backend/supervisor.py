"""One supervised ``gvirtus-backend`` process per GPU.

Each process sees only its GPU (``CUDA_VISIBLE_DEVICES`` set to the GPU's UUID,
which, unlike an index, does not depend on CUDA's device ordering), listens on its
own port, and reads its own generated ``properties.json``. A process that exits is
started again after a backoff that doubles up to a limit and resets once a run
lasted long enough; why it ended is kept for the inventory. Its output is relayed to
the agent's log, line by line, tagged with the GPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import time
from dataclasses import dataclass

from prometheus_client import Counter

from backend.gpus import GPUInfo
from dra_driver import files, gvirtus

log = logging.getLogger(__name__)

RESTARTS = Counter(
    "gvirtus_dra_agent_backend_restarts_total",
    "Backend processes started again after they ended.",
    ["gpu"],
)


@dataclass(frozen=True)
class BackendCommand:
    """How to run ``gvirtus-backend`` for any GPU."""

    executable: pathlib.Path
    gvirtus_home: pathlib.Path
    log_level: int
    plugins: tuple[str, ...]
    state_dir: pathlib.Path
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 60.0


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
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.returncode is None

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
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": self.gpu.uuid,
            "GVIRTUS_HOME": home,
            "GVIRTUS_LOGLEVEL": str(self.command.log_level),
            "LD_LIBRARY_PATH": library_path,
        }

    async def start(self) -> None:
        """Write the properties file and keep the process running in the background."""
        self.command.state_dir.mkdir(parents=True, exist_ok=True)
        content = gvirtus.render_backend_properties(port=self.port, plugins=self.command.plugins)
        files.atomic_write(self.properties, content)
        self._task = asyncio.create_task(self._supervise(), name=f"backend-gpu-{self.gpu.index}")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop supervising, then SIGTERM the process group, and SIGKILL after ``grace``."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()

    async def _supervise(self) -> None:
        delay = self.command.backoff_initial
        while True:
            started = time.monotonic()
            await self._run_once()
            if time.monotonic() - started >= self.command.stable_after:
                delay = self.command.backoff_initial
            log.warning(
                "gvirtus-backend for GPU %d %s; starting it again in %.1fs",
                self.gpu.index,
                self.last_exit,
                delay,
                extra={"gpu": self.gpu.index, "port": self.port},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.command.backoff_max)
            self.restarts += 1
            RESTARTS.labels(str(self.gpu.index)).inc()

    async def _run_once(self) -> None:
        argv = [str(self.command.executable), str(self.properties)]
        try:
            self._process = await asyncio.create_subprocess_exec(
                *argv,
                env=self.environment(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self.last_exit = f"failed to start {argv[0]}: {exc.strerror or exc}"
            return
        log.info(
            "started gvirtus-backend",
            extra={"gpu": self.gpu.index, "port": self.port, "pid": self._process.pid},
        )
        assert self._process.stdout is not None
        await _relay(self._process.stdout, gpu=self.gpu.index)
        self.last_exit = exit_reason(await self._process.wait())


async def _relay(stream: asyncio.StreamReader, *, gpu: int) -> None:
    while line := await stream.readline():
        log.info("gvirtus-backend: %s", line.decode(errors="replace").rstrip(), extra={"gpu": gpu})
