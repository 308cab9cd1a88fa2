"""Reading the webhook's MutatingWebhookConfiguration and publishing its CA there.

The API server trusts the webhook only through ``clientConfig.caBundle``. The
configuration is applied by the install with an empty bundle, so the webhook fills
it in on start and again whenever it finds it missing or stale (someone re-applied
the manifests). The JSON Patch first tests each webhook's name at its index, so a
concurrent edit that reorders the list makes the patch fail instead of writing the
bundle into the wrong entry.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import jsonpointer

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import MUTATING_WEBHOOK_CONFIGURATIONS

log = logging.getLogger(__name__)


async def read_configuration(kube: KubeClient, *, configuration: str) -> dict[str, Any] | None:
    """The configuration as stored, or ``None`` (logged) when it does not exist yet.

    Raises:
        KubeError: it could not be read.
    """
    try:
        found: dict[str, Any] = await kube.get(MUTATING_WEBHOOK_CONFIGURATIONS, configuration)
    except errors.NotFoundError:
        log.warning("MutatingWebhookConfiguration %s not found", configuration)
        return None
    return found


async def publish_ca_bundle(kube: KubeClient, *, current: dict[str, Any], ca_pem: bytes) -> bool:
    """Put ``ca_pem`` into every webhook of the configuration ``current``.

    Returns whether anything changed.

    Raises:
        KubeError: the patch failed (for instance the list was reordered meanwhile).
    """
    wanted = base64.b64encode(ca_pem).decode()
    patch = []
    for index, webhook in enumerate(current.get("webhooks") or []):
        if (webhook.get("clientConfig") or {}).get("caBundle") != wanted:
            name = jsonpointer.JsonPointer.from_parts(["webhooks", index, "name"]).path
            bundle = jsonpointer.JsonPointer.from_parts(
                ["webhooks", index, "clientConfig", "caBundle"]
            ).path
            patch += [
                {"op": "test", "path": name, "value": webhook.get("name")},
                {"op": "add", "path": bundle, "value": wanted},
            ]
    if not patch:
        return False
    configuration = current["metadata"]["name"]
    await kube.patch(
        MUTATING_WEBHOOK_CONFIGURATIONS,
        configuration,
        patch,
        kind="json",
        field_manager="gvirtus-dra-webhook",
    )
    log.info("published the CA in MutatingWebhookConfiguration %s", configuration)
    return True
