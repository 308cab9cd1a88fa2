"""The client: verbs on described resources, the server's JSON out, the project's own errors."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import pytest

from dra_driver.kube import errors
from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import NODES, RESOURCE_CLAIMS, RESOURCE_SLICES
from tests.support.apiserver import APIServer, fixture, fixture_object


async def test_claims_come_back_as_the_servers_json(
    apiserver: APIServer, kubeconfig: pathlib.Path
) -> None:
    apiserver.put(fixture_object("02-shared-claim-a-allocated-get.json"))
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        claim = await kube.get(RESOURCE_CLAIMS, "shared-a", namespace="gvirtus-demo")
    finally:
        await kube.close()
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["pool"], result["device"], result["shareID"]) == (
        "backend-node-b",
        "gpu-0",
        "de323fb6-a4ab-45ff-8d3a-39922b4cb784",
    )


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (403, errors.ForbiddenError),
        (409, errors.ConflictError),
        (410, errors.GoneError),
        (422, errors.InvalidError),
        (429, errors.ServerError),
        (500, errors.ServerError),
        (503, errors.ServerError),
    ],
    ids=["forbidden", "conflict", "gone", "invalid", "throttled", "internal", "unavailable"],
)
async def test_http_failures_map_to_project_errors(
    apiserver: APIServer, kubeconfig: pathlib.Path, code: int, error: type[errors.KubeError]
) -> None:
    apiserver.fail_next("GET", "/resourceclaims/", code=code, message=f"injected {code}")
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        with pytest.raises(error) as caught:
            await kube.get(RESOURCE_CLAIMS, "c", namespace="gvirtus-demo")
    finally:
        await kube.close()
    assert caught.value.status == code
    assert caught.value.message == f"injected {code}"


async def test_missing_object_is_not_found_with_the_servers_message(
    kubeconfig: pathlib.Path,
) -> None:
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        with pytest.raises(errors.NotFoundError) as caught:
            await kube.get(RESOURCE_CLAIMS, "does-not-exist", namespace="gvirtus-demo")
    finally:
        await kube.close()
    assert caught.value.reason == "NotFound"
    assert caught.value.message == 'resourceclaims.resource.k8s.io "does-not-exist" not found'


async def test_rejected_token_is_unauthorized(
    apiserver: APIServer, short_tmp: pathlib.Path
) -> None:
    apiserver.token = "rotated"
    kube = await KubeClient.connect(
        kubeconfig=apiserver.write_kubeconfig(short_tmp / "kc"), component="test"
    )
    apiserver.token = "rotated-again"
    try:
        with pytest.raises(errors.UnauthorizedError):
            await kube.list(RESOURCE_SLICES)
    finally:
        await kube.close()


async def test_unreachable_server_is_a_transport_error(
    apiserver: APIServer, kubeconfig: pathlib.Path
) -> None:
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test", timeout=2)
    apiserver.stop()
    try:
        with pytest.raises(errors.TransportError, match="API server unreachable") as caught:
            await kube.list(RESOURCE_SLICES)
    finally:
        await kube.close()
    assert caught.value.__cause__ is not None, "the library's exception stays chained"


async def test_unreadable_kubeconfig_names_the_file(short_tmp: pathlib.Path) -> None:
    missing = short_tmp / "nope"
    with pytest.raises(
        errors.KubeError, match=f"cannot load API credentials from kubeconfig {missing}"
    ):
        await KubeClient.connect(kubeconfig=missing, component="test")


async def test_outside_a_pod_without_kubeconfig_says_what_to_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(errors.KubeError, match="pass --kubeconfig or set KUBECONFIG"):
        await KubeClient.connect(kubeconfig=None, component="test")


@pytest.mark.parametrize(
    ("env", "proxy"),
    [
        ({}, None),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "http://proxy.corp:3128"),
        ({"https_proxy": "http://proxy.corp:3128", "NO_PROXY": "127.0.0.1,.svc"}, None),
    ],
    ids=["no-proxy", "https-proxy", "api-server-bypassed"],
)
async def test_proxy_from_the_environment_is_decided_once(
    kubeconfig: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    proxy: str | None,
) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        configuration = kube.api_client.configuration
        assert configuration.proxy == proxy
        assert configuration.client_session_kwargs == {"trust_env": False}
    finally:
        await kube.close()


async def test_plain_json_requests_read_objects_and_map_errors(
    apiserver: APIServer, kubeconfig: pathlib.Path
) -> None:
    apiserver.put(fixture_object("09-node-get.json"))
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        node = await kube.get(NODES, "worker-1")
        with pytest.raises(errors.NotFoundError, match='nodes "worker-9" not found'):
            await kube.get(NODES, "worker-9")
    finally:
        await kube.close()
    assert node["metadata"]["labels"]["gvirtus.io/frontend.allowed"] == "true"


async def test_plain_json_writes_send_exactly_what_was_built(
    apiserver: APIServer, kubeconfig: pathlib.Path
) -> None:
    body = fixture("01-resourceslice-create.json")["request"]["body"]
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        created = await kube.create(RESOURCE_SLICES, body)
        name = created["metadata"]["name"]
        patched = await kube.patch(
            RESOURCE_SLICES, name, {"metadata": {"labels": {"a": "b"}}}, kind="merge"
        )
        deleted = await kube.delete(RESOURCE_SLICES, name)
        await kube.create(RESOURCE_SLICES, body | {"metadata": {"name": "again"}})
        with pytest.raises(errors.AlreadyExistsError):
            await kube.create(RESOURCE_SLICES, body | {"metadata": {"name": "again"}})
    finally:
        await kube.close()
    assert created["spec"] == fixture("01-resourceslice-create.json")["response"]["body"]["spec"]
    assert patched["metadata"]["labels"] == {"a": "b"}
    assert deleted["metadata"]["name"] == name
    assert [(r.method, r.content_type) for r in apiserver.writes()][:3] == [
        ("POST", "application/json"),
        ("PATCH", "application/merge-patch+json"),
        ("DELETE", "application/json"),
    ]


async def test_watch_of_an_expired_version_raises_gone(
    apiserver: APIServer, kubeconfig: pathlib.Path
) -> None:
    apiserver.put(fixture_object("01-resourceslice-get.json"))
    apiserver.compact()
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        with pytest.raises(errors.GoneError, match="too old resource version: 1"):
            async for _ in kube.watch(RESOURCE_SLICES, resource_version="1", timeout_seconds=5):
                pass
    finally:
        await kube.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda kube: kube.get(RESOURCE_CLAIMS, "c"),
            "resourceclaims.resource.k8s.io/v1 is namespaced; name the namespace of 'c'",
        ),
        (
            lambda kube: kube.replace(RESOURCE_CLAIMS, {"metadata": {"name": "c"}}),
            "is namespaced; name the namespace of 'c'",
        ),
        (
            lambda kube: kube.get(NODES, "worker-1", namespace="default"),
            "nodes.core/v1 is cluster-scoped; no namespace applies",
        ),
        (
            lambda kube: kube.patch(NODES, "worker-1", ({"op": "remove"},), kind="json"),
            "a JSON patch is a list of operations, not tuple",
        ),
    ],
    ids=[
        "namespaced-without-namespace",
        "body-without-namespace",
        "cluster-scoped-with-one",
        "json-patch-not-a-list",
    ],
)
async def test_a_malformed_request_fails_before_it_is_sent(
    apiserver: APIServer, kubeconfig: pathlib.Path, call: Any, message: str
) -> None:
    kube = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    try:
        with pytest.raises((ValueError, TypeError), match=re.escape(message)):
            await call(kube)
    finally:
        await kube.close()
    assert apiserver.requests == []
