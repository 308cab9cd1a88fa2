"""Properties over generated pods and reviews: no 500, and every patch applies to its pod."""

from __future__ import annotations

import asyncio
import base64
import copy
import http.client
import json
import pathlib
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import objects
from tests.support.apiserver import APIServer, _validate_pod
from tests.support.processes import WebhookProcess
from tests.webhook.conftest import NAMESPACE, SECRET, SERVER_NAME, configuration
from webhook import mutate, review

GPU = "nvidia.com/gpu"

counts = st.one_of(
    st.integers(min_value=0, max_value=20).map(str),
    st.sampled_from(["1.5", "-1", "2Gi", "", " 3", "+2", "1e3", "\uff10"]),
    st.integers(min_value=0, max_value=3),
)


@st.composite
def containers(draw: st.DrawFn, *, init: bool) -> list[dict[str, Any]]:
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "gpu-a", "c" * 63, "c" * 62 + "d", "setup"]),
            unique=True,
            min_size=0 if init else 1,
            max_size=4,
        )
    )
    made = []
    for name in names:
        resources: dict[str, Any] = {}
        where = draw(st.sampled_from([("limits",), ("requests",), ("limits", "requests"), ()]))
        count = draw(counts)
        for part in where:
            resources[part] = {GPU: count, **draw(st.sampled_from([{}, {"memory": "1Gi"}]))}
        if draw(st.booleans()):
            resources["claims"] = [{"name": "own"}]
        container: dict[str, Any] = {"name": name, "image": "busybox", "resources": resources}
        if init and draw(st.booleans()):
            container["restartPolicy"] = "Always"
        made.append(container)
    return made


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "labels": {"gvirtus.io/enabled": "true"}}
    if draw(st.booleans()):
        metadata["annotations"] = draw(st.sampled_from([{}, {"a/b": "c"}]))
    spec: dict[str, Any] = {"containers": draw(containers(init=False))}
    init = draw(containers(init=True))
    if init:
        spec["initContainers"] = init
    uses_own = any(
        "claims" in c["resources"] for c in spec["containers"] + spec.get("initContainers", [])
    )
    if uses_own or draw(st.booleans()):
        spec["resourceClaims"] = [{"name": "own", "resourceClaimName": "mine"}]
        if draw(st.booleans()):
            spec["resourceClaims"].append({"name": "gpu-a", "resourceClaimTemplateName": "t"})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _asked(container: dict[str, Any]) -> int:
    resources = container.get("resources") or {}
    values = [(resources.get(p) or {}).get(GPU) for p in ("limits", "requests")]
    return max((int(v) for v in values if v is not None), default=0)


@settings(max_examples=400, deadline=None)
@given(pod=pods())
def test_every_plan_applies_converts_everything_and_is_idempotent(pod: dict[str, Any]) -> None:
    try:
        plan = mutate.plan(pod)
    except mutate.Denied:
        return  # what denials say is tested case by case in test_mutate

    after = jsonpatch.apply_patch(copy.deepcopy(pod), plan.patch)

    assert _validate_pod(after, None) == []
    assert GPU not in json.dumps(after["spec"])
    assert mutate.plan(after).patch == [], "a converted pod converts to itself"
    templates = {
        c["name"]: int(c["resourceClaimTemplateName"].removeprefix(mutate.TEMPLATE_PREFIX))
        for c in after["spec"].get("resourceClaims") or []
        if c.get("resourceClaimTemplateName", "").startswith(mutate.TEMPLATE_PREFIX)
    }
    for kind in ("containers", "initContainers"):
        pairs = zip(pod["spec"].get(kind) or [], after["spec"].get(kind) or [], strict=True)
        for before, converted in pairs:
            asked = _asked(before)
            mine = [
                templates[c["name"]]
                for c in converted["resources"].get("claims") or []
                if c["name"] in templates
            ]
            if asked == 0:
                assert mine == []
            elif kind == "initContainers" and before.get("restartPolicy") != "Always":
                assert mine and mine[0] >= asked
            else:
                assert mine == [asked]
            assert [
                c for c in converted["resources"].get("claims") or [] if c["name"] == "own"
            ] == [c for c in before["resources"].get("claims") or [] if c["name"] == "own"]


def _depth(value: Any) -> int:
    if isinstance(value, dict | list):
        children = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(c) for c in children), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\/ab', max_size=8)
nested_values = st.recursive(
    st.none() | st.integers() | tricky_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(value=nested_values, indent=st.sampled_from([None, 1]))
def test_nesting_is_measured_without_recursion_as_deep_as_it_is(value: Any, indent: Any) -> None:
    """Brackets and escaped quotes inside strings never count as nesting."""
    assert review.nesting(json.dumps(value, indent=indent).encode()) == _depth(value)


# -- against the webhook process --------------------------------------------------------


class _Connection(http.client.HTTPSConnection):
    """Keep-alive HTTPS that checks the Service name while dialling 127.0.0.1."""

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=SERVER_NAME)  # type: ignore[attr-defined]


class Client:
    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.connection = _Connection("127.0.0.1", port, context=context, timeout=10)

    def post(self, body: bytes) -> tuple[int, bytes]:
        self.connection.request(
            "POST", "/mutate?timeout=5s", body=body, headers={"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        return response.status, response.read()


@pytest.fixture
def client(
    apiserver: APIServer, kubeconfig: pathlib.Path, short_tmp: pathlib.Path
) -> Iterator[Client]:
    apiserver.put(configuration())
    process = WebhookProcess(root=short_tmp, kubeconfig=kubeconfig)
    try:
        asyncio.run(process.ready())
        secret = apiserver.get("secrets", SECRET, NAMESPACE)
        assert secret is not None
        ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
        made = Client(process.port, ssl.create_default_context(cadata=ca))
        yield made
        made.connection.close()
    finally:
        process.terminate()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@st.composite
def reviews(draw: st.DrawFn) -> bytes:
    """Real-shaped reviews with random parts replaced, and plain random JSON or bytes."""
    kind = draw(st.sampled_from(["mutated", "pod", "random-json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "random-json":
        return json.dumps(draw(json_values)).encode()
    review = objects.review_of(draw(pods()))
    if kind == "mutated":
        target = draw(st.sampled_from([review, review["request"], review["request"]["object"]]))
        key = draw(st.sampled_from(sorted(target)))
        target[key] = draw(json_values)
    return json.dumps(review).encode()


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=reviews())
def test_random_reviews_never_get_a_500_and_patches_apply(client: Client, body: bytes) -> None:
    status, raw = client.post(body)

    assert status in (200, 400), raw
    if status == 400:
        assert raw.strip(), "a 400 says why"
        return
    answer = json.loads(raw)
    sent = json.loads(body)
    response = answer["response"]
    assert response["uid"] == sent["request"]["uid"]
    if "patch" in response:
        pod = sent["request"]["object"]
        after = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        assert _validate_pod(after, None) == []
    if not response["allowed"]:
        assert response["status"]["message"].startswith("gvirtus-dra: ")
        assert "internal error" not in response["status"]["message"]
