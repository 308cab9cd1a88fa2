"""A list-watch consumer that keeps what matters of each object, by name.

Components rarely need whole objects: the controller needs a node's UID and zone,
an agent pod's node and address. ``extract`` keeps just that (or None to ignore the
object), so watching every Node of a large cluster costs little memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from dra_driver.kube.watch import WatchEvent

T = TypeVar("T")
Obj = dict[str, Any]


def object_key(obj: Obj) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


class Index(Generic[T]):
    """``items`` maps object keys to what ``extract`` kept; ``version`` counts changes."""

    def __init__(self, extract: Callable[[Obj], T | None]) -> None:
        self.extract = extract
        self.items: dict[str, T] = {}
        self.version = 0
        self.synced = asyncio.Event()

    async def on_relist(self, items: list[Obj]) -> None:
        """Replace everything with a fresh list."""
        fresh = {object_key(o): v for o in items if (v := self.extract(o)) is not None}
        if fresh != self.items:
            self.items = fresh
            self.version += 1
        self.synced.set()

    async def on_event(self, event: WatchEvent) -> None:
        """Apply one change."""
        key = object_key(event.obj)
        value = None if event.type == "DELETED" else self.extract(event.obj)
        if value is None:
            if self.items.pop(key, None) is not None:
                self.version += 1
        elif self.items.get(key) != value:
            self.items[key] = value
            self.version += 1
