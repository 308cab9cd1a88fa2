"""The small HTTP endpoint every component serves: ``/metrics``, ``/healthz``, ``/readyz``.

A component passes its checks as async callables returning ``None`` when fine or a
reason string when not. Results are cached for a moment behind a lock, so frequent
or concurrent probes cannot stampede expensive self-checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

Check = Callable[[], Awaitable[str | None]]


@dataclass
class CachedCheck:
    """A check whose verdict is reused for ``ttl`` seconds."""

    check: Check
    ttl: float = 2.0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _at: float = float("-inf")
    _verdict: str | None = None

    async def __call__(self) -> str | None:
        """The cached verdict, refreshed when older than ``ttl``."""
        async with self._lock:
            if time.monotonic() - self._at > self.ttl:
                try:
                    self._verdict = await self.check()
                except Exception as exc:
                    self._verdict = f"check failed: {exc!r}"
                self._at = time.monotonic()
            return self._verdict


def _probe(checks: Mapping[str, Check]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        problems = [
            f"{name}: {reason}" for name, check in checks.items() if (reason := await check())
        ]
        if problems:
            return web.Response(status=503, text="\n".join(problems) + "\n")
        return web.Response(text="ok\n")

    return handler


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def start(
    *, address: str, port: int, health: Mapping[str, Check], ready: Mapping[str, Check]
) -> web.AppRunner:
    """Serve the endpoints; the caller cleans the returned runner up."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _probe({k: CachedCheck(v) for k, v in health.items()}))
    app.router.add_get("/readyz", _probe({k: CachedCheck(v) for k, v in ready.items()}))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, address, port, reuse_address=True).start()
    return runner
