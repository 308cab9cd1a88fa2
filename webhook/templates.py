"""The ResourceClaimTemplates converted pods point at: ``gvirtus-legacy-gpu-<count>``.

One template per GPU count and namespace, created the first time a pod there needs
it. A watch of ResourceClaimTemplates tells which exist, so converting a pod costs
no API request once its namespace has the template, and a template someone deleted
is created again for the next pod. An existing template is never overwritten: an
admin may have tuned it (another DeviceClass, a selector). Its devices all come
from one backend node (a ``matchAttribute`` on ``backendNode``). Where devices can
be shared (slots, or memory with consumable capacity) two of them may be the same
GPU; a ``distinctAttribute`` on ``uuid`` prevents that on API servers that keep the
field (DRAConsumableCapacity), which a dry-run create finds out.

Only what the API server says about itself is remembered. The probe asks for
``capacity``, a field of the same gate whose removal leaves a valid template: with
the gate off the server accepts the probe and drops the field (as a 1.36 server
was seen to do), so the answer is a success either way, and is kept for the
process's life. A refusal (a policy's 422, a quota's 403, a webhook's denial) says
something about one namespace, not about the server: it fails the one review that
needed the template, with the server's reason, and the next review asks again.
Guessing instead would be permanent, since a template once created is never changed.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.index import Index
from dra_driver.kube.resources import RESOURCE_CLAIM_TEMPLATES
from dra_driver.kube.watch import list_watch
from webhook.mutate import TEMPLATE_PREFIX, template_name

log = logging.getLogger(__name__)

CREATED = Counter(
    "gvirtus_dra_webhook_templates_created_total", "ResourceClaimTemplates the webhook created."
)
MANAGED_BY = {"app.kubernetes.io/managed-by": "gvirtus-dra"}
CONVERTED_LABEL = "gvirtus.io/converted"
"""Label of the claims made from the templates, so ``kubectl get resourceclaims -l`` finds them."""


def template(
    *, namespace: str, count: int, device_class: str, driver: str, distinct: bool
) -> dict[str, Any]:
    """The template giving ``count`` GVirtuS GPUs from one backend node."""
    request: dict[str, Any] = {
        "name": "gpu",
        "exactly": {
            "deviceClassName": device_class,
            "allocationMode": "ExactCount",
            "count": count,
        },
    }
    devices: dict[str, Any] = {"requests": [request]}
    if count > 1:
        devices["constraints"] = [{"requests": ["gpu"], "matchAttribute": f"{driver}/backendNode"}]
        if distinct:
            devices["constraints"].append(
                {"requests": ["gpu"], "distinctAttribute": f"{driver}/uuid"}
            )
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {
            "name": template_name(count),
            "namespace": namespace,
            "labels": dict(MANAGED_BY),
        },
        "spec": {"metadata": {"labels": {CONVERTED_LABEL: "true"}}, "spec": {"devices": devices}},
    }


class Templates:
    """Ensures templates exist, knowing from a watch which ones do."""

    def __init__(self, *, kube: KubeClient, device_class: str, driver: str) -> None:
        self.kube = kube
        self.device_class = device_class
        self.driver = driver
        self.existing: Index[bool] = Index(
            lambda o: True if o["metadata"]["name"].startswith(TEMPLATE_PREFIX) else None
        )
        self._distinct: bool | None = None

    async def watch(self) -> None:
        """Keep :attr:`existing` current until cancelled."""
        await list_watch(
            kube=self.kube,
            resource=RESOURCE_CLAIM_TEMPLATES,
            consumer=self.existing,
            component="webhook",
        )

    async def ensure(self, *, namespace: str, counts: set[int]) -> None:
        """Make sure the namespace has a template for each count.

        Raises:
            KubeError: a template could not be read or created.
        """
        for count in sorted(counts):
            key = f"{namespace}/{template_name(count)}"
            if key in self.existing.items:
                continue
            try:
                await self.kube.get(
                    RESOURCE_CLAIM_TEMPLATES, template_name(count), namespace=namespace
                )
            except errors.NotFoundError:
                body = template(
                    namespace=namespace,
                    count=count,
                    device_class=self.device_class,
                    driver=self.driver,
                    distinct=count > 1 and await self._keeps_distinct(namespace),
                )
                try:
                    await self.kube.create(
                        RESOURCE_CLAIM_TEMPLATES,
                        body,
                        namespace=namespace,
                        field_manager="gvirtus-dra-webhook",
                    )
                    CREATED.inc()
                    log.info(
                        "created ResourceClaimTemplate",
                        extra={"namespace": namespace, "template": template_name(count)},
                    )
                except errors.AlreadyExistsError:
                    pass  # another replica, or a pod created at the same moment
            self.existing.items[key] = True  # until the watch says otherwise

    async def _keeps_distinct(self, namespace: str) -> bool:
        """Whether the API server keeps DRAConsumableCapacity fields, asked until it answers.

        Raises:
            KubeError: the probe was refused in ``namespace``; nothing is remembered.
        """
        if self._distinct is None:
            stored = await self.kube.create(
                RESOURCE_CLAIM_TEMPLATES, self._probe(namespace), namespace=namespace, dry_run=True
            )
            exactly = stored["spec"]["spec"]["devices"]["requests"][0]["exactly"]
            self._distinct = "capacity" in exactly
            if not self._distinct:
                log.warning(
                    "the API server drops DRAConsumableCapacity fields: multi-GPU claims of "
                    "legacy pods may get two shares of one GPU where devices are shared"
                )
        return self._distinct

    def _probe(self, namespace: str) -> dict[str, Any]:
        probe = template(
            namespace=namespace,
            count=1,
            device_class=self.device_class,
            driver=self.driver,
            distinct=False,
        )
        probe["metadata"] = {"generateName": "gvirtus-dra-probe-", "namespace": namespace}
        exactly = probe["spec"]["spec"]["devices"]["requests"][0]["exactly"]
        exactly["capacity"] = {"requests": {"memory": "1"}}
        return probe
