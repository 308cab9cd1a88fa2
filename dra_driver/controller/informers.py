"""The controller's watches, declared as a table and run together.

Each row names a collection, who consumes it, its selectors, and whether the first
round must wait for it to be listed. Every row becomes one list-watch task (see
:func:`dra_driver.kube.watch.list_watch`); a consumer keeps only what it needs of
each object.

A row may name older versions of its collection (``fallbacks``), for kinds that not
every supported Kubernetes serves in the same version. Its task first lists each
version in order and watches the first one served; where none is, the consumer
holds an empty list, the log says so once, and the versions are tried again every
:data:`RECHECK_EVERY` seconds (a gate turned on needs an API server restart anyway).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dra_driver.backoff import Backoff
from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import Resource
from dra_driver.kube.watch import Consumer, list_watch

log = logging.getLogger(__name__)

RECHECK_EVERY = 600.0


@dataclass(frozen=True)
class Informer:
    """One watched collection and its consumer."""

    resource: Resource
    consumer: Consumer
    synced: asyncio.Event | None = None
    """Set once the consumer holds the first full list; None: the loop need not wait."""
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None
    fallbacks: tuple[Resource, ...] = ()
    """Versions to watch, in order, where ``resource`` is not served."""
    unserved: str = ""
    """Said in the log when no version is served: what is missing then."""


def start(
    *,
    kube: KubeClient,
    informers: Sequence[Informer],
    component: str,
    recheck: float = RECHECK_EVERY,
) -> list[asyncio.Task[None]]:
    """One list-watch task per informer; the caller cancels them."""
    return [
        asyncio.create_task(
            _run(kube=kube, informer=informer, component=component, recheck=recheck),
            name=f"watch-{informer.resource.plural}",
        )
        for informer in informers
    ]


async def _run(*, kube: KubeClient, informer: Informer, component: str, recheck: float) -> None:
    """Watch the informer's collection; with fallbacks, the first version served."""
    resource: Resource | None = informer.resource
    said: list[Resource | None] = []  # what the log said last
    while True:
        if informer.fallbacks:
            resource = await served(kube=kube, versions=(informer.resource, *informer.fallbacks))
            if said != [resource]:
                _announce(informer, resource, recheck=recheck)
                said = [resource]
        if resource is None:
            await informer.consumer.on_relist([])
            await asyncio.sleep(recheck)
            continue
        await list_watch(
            kube=kube,
            resource=resource,
            consumer=informer.consumer,
            component=component,
            namespace=informer.namespace,
            label_selector=informer.label_selector,
            field_selector=informer.field_selector,
        )


async def served(
    *, kube: KubeClient, versions: Sequence[Resource], backoff: Backoff | None = None
) -> Resource | None:
    """The first of ``versions`` the API server serves; None if it serves none.

    A list answered 404 means the version is not served (a collection never 404s
    otherwise); any other failure says nothing, so the question is asked again.
    """
    delays = backoff or Backoff(initial=0.2, maximum=30.0, jitter=True)
    while True:
        try:
            for resource in versions:
                try:
                    await kube.list(resource)
                except errors.NotFoundError:
                    continue
                return resource
            return None
        except errors.KubeError as exc:
            delay = delays.next()
            log.warning(
                "cannot tell which version of %s is served (%s); asking again in %.1fs",
                versions[0].plural,
                exc.message,
                delay,
            )
            await asyncio.sleep(delay)


def _announce(informer: Informer, resource: Resource | None, *, recheck: float) -> None:
    versions = ", ".join(r.api_version for r in (informer.resource, *informer.fallbacks))
    if resource is None:
        log.info(
            "the API server serves no %s (tried %s)%s; looking again every %.0f minutes",
            informer.resource.kind,
            versions,
            f": {informer.unserved}" if informer.unserved else "",
            recheck / 60,
        )
    else:
        log.info("watching %s as %s", informer.resource.kind, resource.api_version)


async def synced(informers: Sequence[Informer]) -> None:
    """Return once every informer that must be listed first has been."""
    for informer in informers:
        if informer.synced is not None:
            await informer.synced.wait()
