"""Kubernetes Events for transitions an admin should see with ``kubectl describe``.

Events are best effort: a failure to record one is logged and never stops the
component. The same message about the same object is recorded once per ten
minutes, so a flapping backend does not flood the API server.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import time
from dataclasses import dataclass

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import EVENTS

log = logging.getLogger(__name__)

REPEAT_AFTER = 600.0


@dataclass(frozen=True)
class Regarding:
    """The object an event is about."""

    kind: str
    name: str
    uid: str = ""
    namespace: str = ""
    api_version: str = "v1"


class EventRecorder:
    """Posts ``core/v1`` Events as ``component``."""

    def __init__(self, *, kube: KubeClient, component: str) -> None:
        self.kube = kube
        self.component = component
        self.host = socket.gethostname()
        self._recent: dict[tuple[Regarding, str, str], float] = {}
        self._background: set[asyncio.Task[None]] = set()

    def post(self, regarding: Regarding, *, warning: bool, reason: str, message: str) -> None:
        """Record an event in the background, for callers that may not wait (running loop).

        The recorder keeps the task referenced until it ends; failures are logged
        as for :meth:`record`.
        """
        task = asyncio.create_task(
            self.record(regarding, warning=warning, reason=reason, message=message)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def record(
        self, regarding: Regarding, *, warning: bool, reason: str, message: str
    ) -> None:
        """Record an event (once per ten minutes for the same object, reason and message)."""
        key = (regarding, reason, message)
        now = time.monotonic()
        if now - self._recent.get(key, -REPEAT_AFTER) < REPEAT_AFTER:
            return
        self._recent = {k: t for k, t in self._recent.items() if now - t < REPEAT_AFTER}
        self._recent[key] = now
        namespace = regarding.namespace or "default"
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{regarding.name[:200]}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": regarding.api_version,
                "kind": regarding.kind,
                "name": regarding.name,
                **({"uid": regarding.uid} if regarding.uid else {}),
                **({"namespace": regarding.namespace} if regarding.namespace else {}),
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.kube.create(EVENTS, body, namespace=namespace)
        except errors.KubeError as exc:
            log.warning("could not record event %s: %s", reason, exc.message)
