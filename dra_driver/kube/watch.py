"""List-then-watch that survives 410 Gone, dropped streams and API outages.

The client library's ``Watch`` retries a 410 once with the same stale
resourceVersion and then gives up, and its informer is thread-based; so this loop
is our own, over :meth:`KubeClient.list` and :meth:`KubeClient.watch`. Objects
are plain JSON dicts, as the server sent them. Its contract:

* ``on_relist(items)`` receives the complete current set after every (re-)list;
  a consumer replaces its state with it. ``on_event`` receives each later change.
* A stream that ends (server timeout, dropped connection) resumes from the last
  resourceVersion seen, bookmarks included, without a re-list.
* 410 Gone (the resourceVersion fell out of the server's window) re-lists.
* Any other failure backs off exponentially with jitter and retries; the loop only
  ends when cancelled, when the consumer raises, or after ``iterations`` rounds
  (for tests).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter

from dra_driver.backoff import Backoff
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import Resource

log = logging.getLogger(__name__)

WATCH_RESTARTS = Counter(
    "gvirtus_dra_watch_restarts_total",
    "Watch streams restarted, by resource and reason (resume, relist, error).",
    ["component", "resource", "reason"],
)

Obj = dict[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``obj`` the object."""

    type: str
    obj: Obj


class Consumer(Protocol):
    """What a list-watch feeds."""

    async def on_relist(self, items: list[Obj]) -> None:
        """Replace all state with ``items`` (the complete current set)."""

    async def on_event(self, event: WatchEvent) -> None:
        """Apply one change."""


async def list_watch(
    *,
    kube: KubeClient,
    resource: Resource,
    consumer: Consumer,
    component: str,
    namespace: str | None = None,
    field_selector: str | None = None,
    label_selector: str | None = None,
    timeout_seconds: int = 240,
    backoff: Backoff | None = None,
    iterations: int | None = None,
) -> None:
    """Keep ``consumer`` in sync with a collection, until cancelled.

    Args:
        kube: the API client.
        resource: what to watch.
        consumer: receives re-lists and events; its exceptions end the loop.
        component: metric label naming the calling component.
        namespace: one namespace, or None for all (or a cluster-scoped resource).
        field_selector: passed to list and watch.
        label_selector: passed to list and watch.
        timeout_seconds: server-side length of one watch stream (randomised by 20%).
        backoff: delays between failed attempts (default: 0.2 s doubling to 30 s,
            fully jittered).
        iterations: stop after this many list or watch rounds (tests only).
    """
    scope: dict[str, Any] = {
        "namespace": namespace,
        "label_selector": label_selector,
        "field_selector": field_selector,
    }
    label = resource.plural
    delays = backoff or Backoff(initial=0.2, maximum=30.0, jitter=True)
    resource_version: str | None = None
    rounds = 0
    while iterations is None or rounds < iterations:
        rounds += 1
        try:
            if resource_version is None:
                listed = await kube.list(resource, **scope)
                await consumer.on_relist(list(listed.get("items") or []))
                resource_version = str(listed["metadata"]["resourceVersion"])
            else:
                resource_version = await _watch_once(
                    kube=kube,
                    resource=resource,
                    consumer=consumer,
                    resource_version=resource_version,
                    timeout_seconds=int(timeout_seconds * random.uniform(0.8, 1.0)) or 1,
                    scope=scope,
                )
                WATCH_RESTARTS.labels(component, label, "resume").inc()
            delays.reset()
        except errors.GoneError as exc:
            log.info("watch of %s expired (%s); re-listing", label, exc.message)
            WATCH_RESTARTS.labels(component, label, "relist").inc()
            resource_version = None
        except errors.KubeError as exc:
            delay = delays.next()
            log.warning(
                "list/watch of %s failed (%s); retrying in %.1fs",
                label,
                exc.message,
                delay,
                extra={"status": exc.status, "attempt": delays.failures},
            )
            WATCH_RESTARTS.labels(component, label, "error").inc()
            await asyncio.sleep(delay)


async def _watch_once(
    *,
    kube: KubeClient,
    resource: Resource,
    consumer: Consumer,
    resource_version: str,
    timeout_seconds: int,
    scope: dict[str, Any],
) -> str:
    """Consume one watch stream; return the resourceVersion to resume from."""
    events = kube.watch(
        resource, resource_version=resource_version, timeout_seconds=timeout_seconds, **scope
    )
    async for event in events:
        obj = event.get("object") or {}
        resource_version = str((obj.get("metadata") or {}).get("resourceVersion", resource_version))
        if event.get("type") != "BOOKMARK":
            await consumer.on_event(WatchEvent(type=str(event.get("type")), obj=obj))
    return resource_version
