"""Default GVirtuS labels for nodes that lack them, never overwriting an admin's.

Every node gets ``gvirtus.io/frontend.allowed=true`` (its pods may use remote GPUs)
and ``gvirtus.io/backend.allowed=false`` (it runs no backend) unless it already has
a value. Only missing labels are added, by a JSON Patch that first tests the node's
resourceVersion: if an admin labelled the node since it was read, the patch fails
instead of overwriting, and the watch brings the node back to look again. A node
that has both labels costs no request at all. ``jsonpatch`` derives the operations
from the labels before and after (escaping the ``/`` in each key), so a node with
no labels at all and one with some get the right operations alike.
"""

from __future__ import annotations

import logging
from typing import Any

import jsonpatch
from prometheus_client import Counter

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import NODES
from dra_driver.kube.watch import WatchEvent

log = logging.getLogger(__name__)

DEFAULTS = {"gvirtus.io/frontend.allowed": "true", "gvirtus.io/backend.allowed": "false"}
FIELD_MANAGER = "gvirtus-dra-labeler"

PATCHES = Counter("gvirtus_dra_labeler_patches_total", "Node label patches, by result.", ["result"])
for _result in ("labelled", "raced", "failed"):
    PATCHES.labels(_result)


def missing_labels(node: dict[str, Any]) -> dict[str, str]:
    """The default labels ``node`` does not have (with any value)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return {key: value for key, value in DEFAULTS.items() if key not in labels}


def patch_for(node: dict[str, Any], missing: dict[str, str]) -> list[dict[str, Any]]:
    """Add exactly ``missing``, only if the node is still the version that was read."""
    meta = node["metadata"]
    labels = meta.get("labels")
    before = {"metadata": {} if labels is None else {"labels": labels}}
    after = {"metadata": {"labels": {**(labels or {}), **missing}}}
    test = {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]}
    return [test, *jsonpatch.make_patch(before, after).patch]


class Labeler:
    """A list-watch consumer of Nodes that labels what it sees."""

    def __init__(self, *, kube: KubeClient) -> None:
        self.kube = kube

    async def on_relist(self, items: list[dict[str, Any]]) -> None:
        """Label every node that needs it."""
        for node in items:
            await self.label(node)

    async def on_event(self, event: WatchEvent) -> None:
        """Label a new or changed node (an admin may have removed a label)."""
        if event.type in ("ADDED", "MODIFIED"):
            await self.label(event.obj)

    async def label(self, node: dict[str, Any]) -> None:
        """Add the missing default labels of one node."""
        missing = missing_labels(node)
        if not missing:
            return
        name = node["metadata"]["name"]
        try:
            await self.kube.patch(
                NODES, name, patch_for(node, missing), kind="json", field_manager=FIELD_MANAGER
            )
        except (errors.InvalidError, errors.ConflictError):
            PATCHES.labels("raced").inc()  # changed since read: the watch shows it again
            return
        except errors.NotFoundError:
            return
        except errors.KubeError as exc:
            PATCHES.labels("failed").inc()
            log.warning("cannot label node %s: %s", name, exc.message)
            return
        PATCHES.labels("labelled").inc()
        log.info("labelled node", extra={"node": name, "labels": missing})
