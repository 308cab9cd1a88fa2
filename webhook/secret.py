"""The CA and serving certificate kept in a Secret, so replicas and restarts agree.

Without cert-manager the webhook bootstraps its own: the first replica to start
creates a CA (ten years) and a serving certificate for the Service's DNS names,
and stores both in the Secret ``gvirtus-dra-webhook-tls``; every other replica and
every restart reads them back, so all agree with the ``caBundle`` the webhook
publishes in its MutatingWebhookConfiguration. Before the serving certificate
expires, any replica renews it with the same CA (a PUT conditional on the Secret's
resourceVersion, so one wins and the others re-read) and all reload it.
"""

from __future__ import annotations

import datetime
import logging

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import SECRETS
from webhook.certs import Bundle, KeyPair, new_ca, new_serving, service_names

log = logging.getLogger(__name__)


class SecretCertificates:
    """The Secret-backed CA and serving certificate (no cert-manager)."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        secret: str,
        service: str,
        valid_for: datetime.timedelta,
        renew_before: datetime.timedelta,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.secret = secret
        self.dns_names = service_names(service, namespace)
        self.valid_for = valid_for
        self.renew_before = renew_before

    async def current(self) -> Bundle:
        """The bundle in the Secret, created or renewed when needed.

        Raises:
            KubeError: the Secret cannot be read or written.
        """
        try:
            secret = await self.kube.get(SECRETS, self.secret, namespace=self.namespace)
        except errors.NotFoundError:
            return await self._create()
        try:
            bundle = Bundle.from_secret_data(secret.get("data") or {})
        except (KeyError, ValueError) as exc:
            log.warning(
                "Secret %s holds no usable certificate (%s); replacing it", self.secret, exc
            )
            return await self._replace(secret, self._fresh(ca=None))
        if (
            bundle.serving.remaining() < self.renew_before
            or set(self.dns_names) - bundle.serving.dns_names()
        ):
            log.info(
                "renewing the serving certificate",
                extra={"not_after": bundle.serving.not_after.isoformat()},
            )
            return await self._replace(secret, self._fresh(ca=bundle.ca))
        return bundle

    def _fresh(self, *, ca: KeyPair | None) -> Bundle:
        ca = ca or new_ca(
            common_name="gvirtus-dra webhook CA", valid_for=datetime.timedelta(days=3650)
        )
        return Bundle(ca, new_serving(ca=ca, dns_names=self.dns_names, valid_for=self.valid_for))

    async def _create(self) -> Bundle:
        bundle = self._fresh(ca=None)
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": self.secret,
                "labels": {"app.kubernetes.io/managed-by": "gvirtus-dra"},
            },
            "data": bundle.to_secret_data(),
        }
        try:
            await self.kube.create(SECRETS, body, namespace=self.namespace)
        except errors.AlreadyExistsError:
            return await self.current()  # another replica was first: use its certificates
        log.info("created the webhook CA and serving certificate in Secret %s", self.secret)
        return bundle

    async def _replace(self, secret: dict[str, object], bundle: Bundle) -> Bundle:
        body = {**secret, "type": "kubernetes.io/tls", "data": bundle.to_secret_data()}
        try:
            await self.kube.replace(SECRETS, body)
        except errors.ConflictError:
            return await self.current()  # another replica renewed first
        return bundle
