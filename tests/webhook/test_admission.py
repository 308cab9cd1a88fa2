"""Pods created through the API server pass the webhook as the installed configuration says.

The test API server calls the webhook the way a 1.36 API server does (see
``tests/support/admission.py``): the configuration is ``manifests/base/webhook.yaml``,
trust comes only from the ``caBundle`` the webhook published, and the converted pod
must pass pod validation afterwards.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import PODS
from tests.support import objects
from tests.support.apiserver import APIServer
from tests.webhook.conftest import CONFIGURATION, Webhook, configuration

WEBHOOK = "pods.gpu.gvirtus.io"


@pytest.fixture
async def kube(kubeconfig: pathlib.Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    yield client
    await client.close()


def new_pod(**kwargs: Any) -> dict[str, Any]:
    pod = objects.legacy_pod(**kwargs)
    pod["metadata"]["name"] = "legacy"
    pod["metadata"].pop("namespace", None)
    return pod


async def test_a_labelled_pod_is_stored_converted(
    webhook: Webhook, apiserver: APIServer, kube: KubeClient
) -> None:
    created = await kube.create(
        PODS, new_pod(init={"setup": 1}, containers={"app": 2}), namespace="gvirtus-demo"
    )

    stored = apiserver.get("pods", "legacy", "gvirtus-demo")
    assert stored == created
    assert stored["spec"]["resourceClaims"] == [
        {"name": "gpu-app", "resourceClaimTemplateName": "gvirtus-legacy-gpu-2"}
    ]
    assert stored["spec"]["initContainers"][0]["resources"]["claims"] == [{"name": "gpu-app"}]
    assert "nvidia.com/gpu" not in str(stored["spec"])
    assert apiserver.get("resourceclaimtemplates", "gvirtus-legacy-gpu-2", "gvirtus-demo")
    assert [(c.webhook, c.outcome) for c in apiserver.admission.calls] == [(WEBHOOK, "allowed")]


@pytest.mark.parametrize(
    ("namespace", "labelled"),
    [
        pytest.param("gvirtus-demo", False, id="unlabelled"),
        pytest.param("kube-system", True, id="kube-system"),
        pytest.param("gvirtus-system", True, id="gvirtus-system"),
    ],
)
async def test_pods_outside_the_selectors_never_reach_the_webhook(
    webhook: Webhook, apiserver: APIServer, kube: KubeClient, namespace: str, labelled: bool
) -> None:
    pod = new_pod(containers={"app": 1}, labelled=labelled)

    created = await kube.create(PODS, pod, namespace=namespace)

    assert apiserver.admission.calls == []
    assert created["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}


async def test_a_dry_run_create_shows_the_converted_pod_and_stores_nothing(
    webhook: Webhook, apiserver: APIServer, kube: KubeClient
) -> None:
    shown = await kube.create(
        PODS, new_pod(containers={"app": 1}), namespace="gvirtus-demo", dry_run=True
    )

    assert shown["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] == (
        "gvirtus-legacy-gpu-1"
    )
    assert apiserver.get("pods", "legacy", "gvirtus-demo") is None
    assert apiserver.list("resourceclaimtemplates") == []
    assert [c.dry_run for c in apiserver.admission.calls] == [True]


async def test_the_pod_author_sees_why_a_pod_was_refused(
    webhook: Webhook, apiserver: APIServer, kube: KubeClient
) -> None:
    with pytest.raises(errors.KubeError) as refused:
        await kube.create(PODS, new_pod(containers={"app": "half"}), namespace="gvirtus-demo")

    assert refused.value.status == 400
    assert refused.value.message == (
        f"admission webhook \"{WEBHOOK}\" denied the request: gvirtus-dra: container 'app': "
        "resources.limits[nvidia.com/gpu] is 'half'; GPUs are counted in whole numbers"
    )
    assert apiserver.get("pods", "legacy", "gvirtus-demo") is None


async def test_with_no_webhook_answering_labelled_pods_are_refused_not_let_through(
    webhook: Webhook, apiserver: APIServer, kube: KubeClient
) -> None:
    webhook.stop()

    with pytest.raises(errors.KubeError) as refused:
        await kube.create(PODS, new_pod(containers={"app": 1}), namespace="gvirtus-demo")

    assert refused.value.status == 500
    assert f'failed calling webhook "{WEBHOOK}"' in refused.value.message
    assert apiserver.get("pods", "legacy", "gvirtus-demo") is None


async def test_the_ca_is_published_into_a_configuration_applied_after_the_webhook_started(
    apiserver: APIServer,
    make_webhook: Callable[..., Coroutine[Any, Any, Webhook]],
    kube: KubeClient,
) -> None:
    await make_webhook()
    apiserver.put(configuration())

    async with asyncio.timeout(10):
        while not _bundle(apiserver):
            await asyncio.sleep(0.05)
    await kube.create(PODS, new_pod(containers={"app": 1}), namespace="gvirtus-demo")

    stored = apiserver.get("pods", "legacy", "gvirtus-demo")
    assert stored is not None and stored["spec"]["resourceClaims"]


async def test_re_applying_the_manifest_without_the_ca_heals_within_a_check(
    webhook: Webhook, apiserver: APIServer, kube: KubeClient
) -> None:
    published = _bundle(apiserver)
    apiserver.put(configuration())
    assert not _bundle(apiserver)

    async with asyncio.timeout(10):
        while _bundle(apiserver) != published:
            await asyncio.sleep(0.05)
    await kube.create(PODS, new_pod(containers={"app": 1}), namespace="gvirtus-demo")


def _bundle(apiserver: APIServer) -> str | None:
    stored = apiserver.get("mutatingwebhookconfigurations", CONFIGURATION)
    assert stored is not None
    return stored["webhooks"][0]["clientConfig"].get("caBundle")
