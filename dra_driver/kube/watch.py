"""List-then-watch that survives 410 Gone, dropped streams and API outages.

The library's ``Watch`` retries a 410 once with the same stale resourceVersion and
then gives up, and its thread-based informer has no asyncio form; so this loop is
our own. Its contract:

* ``on_relist(items)`` receives the complete current set after every (re-)list;
  a consumer replaces its state with it. ``on_event`` receives each later change.
* A stream that ends (server timeout, dropped connection) resumes from the last
  resourceVersion seen, bookmarks included, without a re-list.
* 410 Gone (the resourceVersion fell out of the server's window) re-lists.
* Any other failure backs off exponentially with jitter and retries; the loop only
  ends when cancelled (or after ``iterations`` rounds, for tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes.aio import watch as k8s_watch
from prometheus_client import Counter

from dra_driver.kube import errors
from dra_driver.kube.client import translate_errors

log = logging.getLogger(__name__)

WATCH_RESTARTS = Counter(
    "gvirtus_dra_watch_restarts_total",
    "Watch streams restarted, by resource and reason (resume, relist, error).",
    ["component", "resource", "reason"],
)


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``obj`` a typed model."""

    type: str
    obj: Any


class Consumer(Protocol):
    """What a list-watch feeds."""

    async def on_relist(self, items: list[Any]) -> None:
        """Replace all state with ``items`` (the complete current set)."""

    async def on_event(self, event: WatchEvent) -> None:
        """Apply one change."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, in seconds."""

    initial: float = 0.2
    maximum: float = 30.0

    def delay(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        return random.uniform(0, min(self.maximum, self.initial * 2**attempt))


async def list_watch(
    *,
    list_func: Callable[..., Awaitable[Any]],
    consumer: Consumer,
    component: str,
    resource: str,
    field_selector: str | None = None,
    label_selector: str | None = None,
    timeout_seconds: int = 240,
    request_timeout: float = 10.0,
    backoff: Backoff = Backoff(),
    iterations: int | None = None,
) -> None:
    """Keep ``consumer`` in sync with the objects ``list_func`` lists, until cancelled.

    Args:
        list_func: a bound ``list_*`` method of a ``kubernetes.aio`` API class.
        consumer: receives re-lists and events; its exceptions end the loop.
        component: metric label naming the calling component.
        resource: metric and log label naming the resource.
        field_selector: passed to list and watch.
        label_selector: passed to list and watch.
        timeout_seconds: server-side length of one watch stream (randomised by 20%).
        request_timeout: client timeout of the list call.
        backoff: delays between failed attempts.
        iterations: stop after this many list or watch rounds (tests only).
    """
    selectors = {"field_selector": field_selector, "label_selector": label_selector}
    resource_version: str | None = None
    failures = 0
    rounds = 0
    while iterations is None or rounds < iterations:
        rounds += 1
        try:
            if resource_version is None:
                resource_version = await _relist(
                    list_func=list_func, consumer=consumer, timeout=request_timeout, **selectors
                )
            else:
                resource_version = await _watch_once(
                    list_func=list_func,
                    consumer=consumer,
                    resource_version=resource_version,
                    timeout_seconds=int(timeout_seconds * random.uniform(0.8, 1.0)) or 1,
                    **selectors,
                )
                WATCH_RESTARTS.labels(component, resource, "resume").inc()
            failures = 0
        except errors.GoneError as exc:
            log.info("watch of %s expired (%s); re-listing", resource, exc.message)
            WATCH_RESTARTS.labels(component, resource, "relist").inc()
            resource_version = None
        except errors.KubeError as exc:
            delay = backoff.delay(failures)
            failures += 1
            log.warning(
                "list/watch of %s failed (%s); retrying in %.1fs",
                resource,
                exc.message,
                delay,
                extra={"status": exc.status, "attempt": failures},
            )
            WATCH_RESTARTS.labels(component, resource, "error").inc()
            await asyncio.sleep(delay)


async def _relist(
    *,
    list_func: Callable[..., Awaitable[Any]],
    consumer: Consumer,
    timeout: float,
    field_selector: str | None,
    label_selector: str | None,
) -> str:
    async with translate_errors():
        listed = await list_func(
            field_selector=field_selector, label_selector=label_selector, _request_timeout=timeout
        )
    await consumer.on_relist(list(listed.items or []))
    return str(listed.metadata.resource_version)


async def _watch_once(
    *,
    list_func: Callable[..., Awaitable[Any]],
    consumer: Consumer,
    resource_version: str,
    timeout_seconds: int,
    field_selector: str | None,
    label_selector: str | None,
) -> str:
    """Consume one watch stream; return the resourceVersion to resume from."""
    watcher = k8s_watch.Watch()
    stream = watcher.stream(
        list_func,
        resource_version=resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=timeout_seconds,
        field_selector=field_selector,
        label_selector=label_selector,
        # The client's own timeout must outlast the server's stream.
        _request_timeout=float(timeout_seconds + 30),
    )
    try:
        async with translate_errors():
            async for raw in stream:
                kind = raw["type"]
                if kind == "BOOKMARK":
                    resource_version = str(raw["raw_object"]["metadata"]["resourceVersion"])
                    continue
                resource_version = str(raw["raw_object"]["metadata"]["resourceVersion"])
                await consumer.on_event(WatchEvent(type=kind, obj=raw["object"]))
    finally:
        if watcher.resp is not None:
            # Abandoning a stream mid-way: drop its connection now rather than
            # leaving a half-read TLS stream for the pool to discover.
            watcher.resp.close()
        with contextlib.suppress(Exception):
            await watcher.close()
    return resource_version
