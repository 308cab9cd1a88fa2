"""Publishing the webhook's CA in its MutatingWebhookConfiguration.

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

import jsonpointer

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient

log = logging.getLogger(__name__)


async def publish_ca_bundle(kube: KubeClient, *, configuration: str, ca_pem: bytes) -> bool:
    """Put ``ca_pem`` into every webhook of the MutatingWebhookConfiguration.

    Returns whether anything changed. A missing configuration is logged, not fatal:
    the manifests may not be applied yet, and the next check tries again.
    """
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{configuration}"
    try:
        current = await kube.request("GET", path)
    except errors.NotFoundError:
        log.warning(
            "MutatingWebhookConfiguration %s not found; cannot publish the CA yet", configuration
        )
        return False
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
    await kube.request(
        "PATCH",
        path,
        body=patch,
        content_type="application/json-patch+json",
        query={"fieldManager": "gvirtus-dra-webhook"},
    )
    log.info("published the CA in MutatingWebhookConfiguration %s", configuration)
    return True
