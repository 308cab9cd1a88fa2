"""The controller's watches, declared as a table and run together.

Each row names a collection, who consumes it, its selectors, and whether the first
round must wait for it to be listed. Every row becomes one list-watch task (see
:func:`dra_driver.kube.watch.list_watch`); a consumer keeps only what it needs of
each object.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import Resource
from dra_driver.kube.watch import Consumer, list_watch


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


def start(
    *, kube: KubeClient, informers: Sequence[Informer], component: str
) -> list[asyncio.Task[None]]:
    """One list-watch task per informer; the caller cancels them."""
    return [
        asyncio.create_task(
            list_watch(
                kube=kube,
                resource=informer.resource,
                consumer=informer.consumer,
                component=component,
                namespace=informer.namespace,
                label_selector=informer.label_selector,
                field_selector=informer.field_selector,
            ),
            name=f"watch-{informer.resource.plural}",
        )
        for informer in informers
    ]


async def synced(informers: Sequence[Informer]) -> None:
    """Return once every informer that must be listed first has been."""
    for informer in informers:
        if informer.synced is not None:
            await informer.synced.wait()
