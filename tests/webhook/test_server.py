"""AdmissionReviews posted straight to the webhook process, over TLS with its own CA."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import Callable, Coroutine
from typing import Any

import jsonpatch
import pytest

from tests.support import objects
from tests.support.apiserver import APIServer
from tests.webhook.conftest import Webhook, configuration

TEMPLATES = "resourceclaimtemplates"
DEMO = "gvirtus-demo"


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    response = answer["response"]
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    return list(json.loads(base64.b64decode(response["patch"])))


def template_writes(apiserver: APIServer) -> list[str]:
    return [f"{r.method} {r.path}" for r in apiserver.writes() if TEMPLATES in r.path]


async def test_the_captured_review_is_converted_and_its_templates_created(
    webhook: Webhook, apiserver: APIServer
) -> None:
    review = objects.admission_review()

    status, answer = await webhook.post(review)

    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == review["request"]["uid"]
    assert answer["response"]["allowed"] is True
    pod = jsonpatch.apply_patch(review["request"]["object"], patch_of(answer))
    assert [c["resources"]["claims"] for c in pod["spec"]["containers"]] == [
        [{"name": "gpu-trainer"}],
        [{"name": "gpu-worker"}],
    ]
    one = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-1", DEMO)
    two = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-2", DEMO)
    assert one is not None and two is not None
    assert one["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "gvirtus-dra"}
    assert one["spec"]["spec"]["devices"] == {
        "requests": [
            {
                "name": "gpu",
                "exactly": {
                    "deviceClassName": "gpu.gvirtus.io",
                    "allocationMode": "ExactCount",
                    "count": 1,
                },
            }
        ]
    }
    assert two["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] == 2
    assert two["spec"]["spec"]["devices"]["constraints"] == [
        {"requests": ["gpu"], "matchAttribute": "gpu.gvirtus.io/backendNode"},
        {"requests": ["gpu"], "distinctAttribute": "gpu.gvirtus.io/uuid"},
    ]


async def test_templates_are_created_once_per_namespace_and_count(
    webhook: Webhook, apiserver: APIServer
) -> None:
    for _ in range(5):
        status, _ = await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1})))
        assert status == 200
    other = objects.review_of(objects.legacy_pod(containers={"a": 1}))
    other["request"]["namespace"] = "team-b"
    await webhook.post(other)

    creates = [w for w in template_writes(apiserver) if w.startswith("POST")]
    assert creates == [
        f"POST /apis/resource.k8s.io/v1/namespaces/{DEMO}/{TEMPLATES}",
        f"POST /apis/resource.k8s.io/v1/namespaces/team-b/{TEMPLATES}",
    ]
    assert apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-1", "team-b") is not None


async def test_a_deleted_template_is_created_again_for_the_next_pod(
    webhook: Webhook, apiserver: APIServer
) -> None:
    review = objects.review_of(objects.legacy_pod(containers={"a": 1}))
    await webhook.post(review)
    apiserver.remove(TEMPLATES, "gvirtus-legacy-gpu-1", DEMO)

    async with asyncio.timeout(10):
        while apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-1", DEMO) is None:
            await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1})))
            await asyncio.sleep(0.05)


async def test_a_template_an_admin_changed_is_left_as_it_is(
    webhook: Webhook, apiserver: APIServer
) -> None:
    tuned = objects_template(count=1, device_class="gpu.gvirtus.io-h100")
    apiserver.put(tuned)

    status, answer = await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1})))

    assert status == 200 and answer["response"]["allowed"]
    stored = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-1", DEMO)
    assert stored is not None
    exactly = stored["spec"]["spec"]["devices"]["requests"][0]["exactly"]
    assert exactly["deviceClassName"] == "gpu.gvirtus.io-h100"
    assert template_writes(apiserver) == []


def objects_template(*, count: int, device_class: str) -> dict[str, Any]:
    from webhook.templates import template

    made = template(
        namespace=DEMO,
        count=count,
        device_class=device_class,
        driver="gpu.gvirtus.io",
        distinct=False,
    )
    made["metadata"]["labels"] = {"owner": "admin"}
    return made


async def test_a_dry_run_gets_the_patch_but_creates_nothing(
    webhook: Webhook, apiserver: APIServer
) -> None:
    review = objects.review_of(objects.legacy_pod(containers={"a": 2}), dry_run=True)

    status, answer = await webhook.post(review)

    assert status == 200
    assert answer["response"]["allowed"] is True
    assert patch_of(answer) != []
    assert template_writes(apiserver) == []
    assert apiserver.list(TEMPLATES) == []


@pytest.mark.parametrize(
    "review",
    [
        pytest.param(
            objects.review_of(objects.legacy_pod(containers={"a": 1}, labelled=False)),
            id="unlabelled",
        ),
        pytest.param(
            objects.review_of(objects.legacy_pod(containers={"a": 1}), operation="UPDATE"),
            id="update",
        ),
        pytest.param(
            objects.review_of(objects.legacy_pod(containers={"a": 1}), operation="DELETE"),
            id="delete",
        ),
        pytest.param(
            {
                **objects.review_of(objects.legacy_pod(containers={"a": 1})),
                "request": {
                    **objects.review_of(objects.legacy_pod(containers={"a": 1}))["request"],
                    "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                },
            },
            id="not-a-pod",
        ),
    ],
)
async def test_reviews_the_configuration_never_sends_are_allowed_untouched(
    webhook: Webhook, apiserver: APIServer, review: dict[str, Any]
) -> None:
    before = len(apiserver.requests)

    status, answer = await webhook.post(review)

    assert status == 200
    assert answer["response"] == {"uid": review["request"]["uid"], "allowed": True}
    made = [
        r
        for r in apiserver.requests[before:]
        if not (r.method == "GET" and r.path.endswith("/resourceclaimtemplates"))  # its watch
    ]
    assert made == []


def _review_without(key: str) -> bytes:
    review = objects.admission_review()
    del review["request"][key]
    return json.dumps(review).encode()


def _review_with(**changes: Any) -> bytes:
    review = objects.admission_review()
    review.update(changes)
    return json.dumps(review).encode()


def _nested(depth: int) -> bytes:
    """A review of the captured pod with a value nested ``depth`` levels deep inside it."""
    review = objects.admission_review()
    review["request"]["object"]["metadata"]["annotations"] = {"x": "PLACEHOLDER"}
    head, tail = json.dumps(review).encode().split(b'"PLACEHOLDER"')
    return head + b"[" * depth + b"]" * depth + tail


def _in_namespace(namespace: str) -> bytes:
    return _review_with(request={**objects.admission_review()["request"], "namespace": namespace})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"this is not json", "the body is not JSON", id="not-json"),
        pytest.param(b"", "the body is not JSON", id="empty"),
        pytest.param(b"\xff\xfe{}", "the body is not JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "the body is not an AdmissionReview", id="json-array"),
        pytest.param(
            _review_with(kind="Pod"), "the body is not an AdmissionReview", id="wrong-kind"
        ),
        pytest.param(
            _review_with(apiVersion="admission.k8s.io/v1beta1"),
            "AdmissionReview 'admission.k8s.io/v1beta1' is not supported; "
            "configure admissionReviewVersions: [v1]",
            id="v1beta1",
        ),
        pytest.param(
            _review_with(request=None), "the AdmissionReview has no request", id="no-request"
        ),
        pytest.param(_review_without("uid"), "has no request with a uid", id="no-uid"),
        pytest.param(
            _in_namespace("a/b"), "request.namespace 'a/b' is not a namespace name", id="slash"
        ),
        pytest.param(
            _in_namespace("gvirtus-demo\n"),
            "request.namespace 'gvirtus-demo\\n' is not a namespace name",
            id="trailing-newline",
        ),
        pytest.param(
            _in_namespace("kube-system\n"),
            "request.namespace 'kube-system\\n' is not a namespace name",
            id="excluded-namespace-with-trailing-newline",
        ),
        pytest.param(
            _in_namespace("a" * 5000),
            "request.namespace 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' is not a namespace name",
            id="namespace-quoted-shortly",
        ),
        pytest.param(
            _nested(65),
            "the body nests 70 levels deep; an AdmissionReview of a pod never nests deeper than 64",
            id="nested-70",
        ),
        pytest.param(
            _nested(5000),
            "the body is not JSON: depth limit exceeded",
            id="nested-5000",
        ),
        pytest.param(
            _review_with(request={**objects.admission_review()["request"], "namespace": ""}),
            "names no request.namespace",
            id="no-namespace",
        ),
        pytest.param(
            b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": '
            + b'"x", "object": "'
            + b"a" * (4 * 1024 * 1024)
            + b'"}}',
            "the request body is larger than 3145728 bytes",
            id="oversized",
        ),
    ],
)
async def test_a_body_that_is_not_a_usable_review_gets_400_with_the_reason(
    webhook: Webhook, body: bytes, reason: str
) -> None:
    status, answer = await webhook.post(body)

    assert status == 400
    assert reason in answer
    status, _ = await webhook.post(objects.admission_review())
    assert status == 200, "the webhook keeps serving"


async def test_a_review_nested_as_deep_as_allowed_is_answered(webhook: Webhook) -> None:
    status, answer = await webhook.post(_nested(64 - 5))

    assert status == 200
    assert answer["response"]["allowed"] is True


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        pytest.param(
            objects.legacy_pod(containers={"app": "1.5"}),
            "container 'app': resources.limits[nvidia.com/gpu] is '1.5'",
            id="fraction",
        ),
        pytest.param(
            objects.legacy_pod(containers={"app": 100000}),
            "asks for 100000 nvidia.com/gpu; at most 16 GVirtuS GPUs per container",
            id="absurd-count",
        ),
        pytest.param(
            objects.legacy_pod(containers={"app": "9" * 5000}),
            "container 'app': resources.limits[nvidia.com/gpu] is a 5000-digit number; "
            "at most 16 GVirtuS GPUs per container",
            id="5000-digits",
        ),
        pytest.param(
            {"metadata": {"labels": {"gvirtus.io/enabled": "true"}}}, "no spec", id="no-spec"
        ),
        pytest.param(
            {"metadata": {"labels": {"gvirtus.io/enabled": "true"}}, "spec": {"containers": 7}},
            "spec.containers must be a list of containers",
            id="containers-not-a-list",
        ),
    ],
)
async def test_a_pod_that_cannot_be_converted_is_denied_with_the_reason(
    webhook: Webhook, apiserver: APIServer, pod: dict[str, Any], message: str
) -> None:
    review = objects.review_of(pod)

    status, answer = await webhook.post(review)

    assert status == 200
    response = answer["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith("gvirtus-dra: ")
    assert message in response["status"]["message"]
    assert template_writes(apiserver) == []


async def test_when_templates_cannot_be_created_the_pod_is_refused_for_now(
    webhook: Webhook, apiserver: APIServer
) -> None:
    apiserver.fail_next("POST", f"/{TEMPLATES}$", code=503, message="etcd is sad", times=1)

    status, answer = await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1})))

    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 503
    assert "cannot create the ResourceClaimTemplates" in answer["response"]["status"]["message"]
    assert "etcd is sad" in answer["response"]["status"]["message"]
    status, answer = await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1})))
    assert answer["response"]["allowed"] is True, "the next pod goes through"


async def test_without_consumable_capacity_templates_leave_out_distinct_devices(
    webhook: Webhook, apiserver: APIServer
) -> None:
    apiserver.disabled_features = frozenset({"DRAConsumableCapacity"})

    status, answer = await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 2})))

    assert status == 200 and answer["response"]["allowed"]
    two = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-2", DEMO)
    assert two is not None
    assert two["spec"]["spec"]["devices"]["constraints"] == [
        {"requests": ["gpu"], "matchAttribute": "gpu.gvirtus.io/backendNode"}
    ]


def _multi_gpu_review(namespace: str) -> dict[str, Any]:
    review = objects.review_of(objects.legacy_pod(containers={"a": 2}))
    review["request"]["namespace"] = namespace
    return review


DISTINCT = {"requests": ["gpu"], "distinctAttribute": "gpu.gvirtus.io/uuid"}


@pytest.mark.parametrize(
    ("code", "message"),
    [
        pytest.param(422, "ValidatingAdmissionPolicy 'no-capacity' denied request", id="policy"),
        pytest.param(403, "exceeded quota: resourceclaimtemplates", id="quota"),
        pytest.param(500, "webhook timed out", id="server-error"),
    ],
)
async def test_a_refused_probe_fails_one_review_and_poisons_no_later_template(
    webhook: Webhook, apiserver: APIServer, code: int, message: str
) -> None:
    apiserver.fail_next(
        "POST", f"/namespaces/team-a/{TEMPLATES}$", code=code, message=message, times=1
    )

    _, refused = await webhook.post(_multi_gpu_review("team-a"))
    _, converted = await webhook.post(_multi_gpu_review("team-b"))

    assert refused["response"]["allowed"] is False
    assert refused["response"]["status"]["code"] == 503
    assert message in refused["response"]["status"]["message"]
    assert apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-2", "team-a") is None
    assert converted["response"]["allowed"] is True
    made = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-2", "team-b")
    assert made is not None
    assert DISTINCT in made["spec"]["spec"]["devices"]["constraints"]
    _, retried = await webhook.post(_multi_gpu_review("team-a"))
    assert retried["response"]["allowed"] is True, "the refused namespace is asked again"
    made = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-2", "team-a")
    assert made is not None
    assert DISTINCT in made["spec"]["spec"]["devices"]["constraints"]


async def test_what_the_api_server_says_of_its_gate_is_asked_once(
    webhook: Webhook, apiserver: APIServer
) -> None:
    apiserver.disabled_features = frozenset({"DRAConsumableCapacity"})

    for namespace in ("team-a", "team-b", "team-c"):
        _, answer = await webhook.post(_multi_gpu_review(namespace))
        assert answer["response"]["allowed"] is True

    probes = [r for r in apiserver.requests if r.method == "POST" and r.dry_run]
    assert all(TEMPLATES in r.path for r in probes)
    assert len(probes) == 1
    for namespace in ("team-a", "team-b", "team-c"):
        made = apiserver.get(TEMPLATES, "gvirtus-legacy-gpu-2", namespace)
        assert made is not None
        assert DISTINCT not in made["spec"]["spec"]["devices"]["constraints"]


async def test_single_gpu_templates_need_no_probe(webhook: Webhook, apiserver: APIServer) -> None:
    status, answer = await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1})))

    assert status == 200 and answer["response"]["allowed"]
    posts = [r for r in apiserver.requests if r.method == "POST" and TEMPLATES in r.path]
    assert [r.dry_run for r in posts] == [False]


@pytest.mark.parametrize("namespace", ["kube-system", "gvirtus-system"])
async def test_a_direct_post_for_an_excluded_namespace_creates_nothing(
    webhook: Webhook, apiserver: APIServer, namespace: str
) -> None:
    """Any pod can reach the port; only the API server's choice of namespaces counts."""
    review = _multi_gpu_review(namespace)

    status, answer = await webhook.post(review)

    assert status == 200
    assert answer["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert [r for r in apiserver.requests if TEMPLATES in r.path and r.method == "POST"] == []
    assert 'gvirtus_dra_webhook_reviews_total{outcome="excluded"} 1.0' in await webhook.metrics()


async def test_a_selector_by_other_labels_stops_conversion_with_the_reason(
    webhook: Webhook, apiserver: APIServer
) -> None:
    changed = configuration()
    stored = apiserver.get("mutatingwebhookconfigurations", changed["metadata"]["name"])
    assert stored is not None
    stored["webhooks"][0]["namespaceSelector"] = {"matchLabels": {"gvirtus.io/legacy": "on"}}
    apiserver.put(stored)

    async with asyncio.timeout(10):
        while True:
            _, answer = await webhook.post(_multi_gpu_review("gvirtus-demo"))
            if not answer["response"]["allowed"]:
                break
            await asyncio.sleep(0.2)

    assert answer["response"]["status"]["code"] == 503
    assert answer["response"]["status"]["message"] == (
        "gvirtus-dra: cannot tell whether to convert pods here: the namespaceSelector asks "
        "about the label 'gvirtus.io/legacy'; the webhook checks namespaces only by "
        "kubernetes.io/metadata.name (list the namespaces by name instead)"
    )


async def test_without_its_configuration_the_webhook_converts_nothing(
    apiserver: APIServer, make_webhook: Callable[..., Coroutine[Any, Any, Webhook]]
) -> None:
    webhook = await make_webhook()

    status, answer = await webhook.post(_multi_gpu_review("gvirtus-demo"))

    assert status == 200
    assert answer["response"]["allowed"] is False
    assert answer["response"]["status"]["code"] == 503
    assert (
        "MutatingWebhookConfiguration gvirtus-dra-webhook has not been read"
        in (answer["response"]["status"]["message"])
    )
    assert template_writes(apiserver) == []


async def test_metrics_count_reviews_by_outcome(webhook: Webhook) -> None:
    await webhook.post(objects.admission_review())
    await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": 1}, labelled=False)))
    await webhook.post(objects.review_of(objects.legacy_pod(containers={"a": "x"})))
    await webhook.post(b"nope")

    metrics = await webhook.metrics()

    for outcome in ("converted", "skipped", "denied", "bad_request"):
        assert f'gvirtus_dra_webhook_reviews_total{{outcome="{outcome}"}} 1.0' in metrics
    assert 'gvirtus_dra_webhook_review_duration_seconds_count{outcome="converted"} 1.0' in metrics
    assert "gvirtus_dra_webhook_templates_created_total 2.0" in metrics
    assert "gvirtus_dra_webhook_certificate_expiry_timestamp_seconds" in metrics


async def test_each_conversion_is_logged_with_the_pod_and_its_claims(webhook: Webhook) -> None:
    review = objects.admission_review()
    await webhook.post(review)

    assert webhook.process is not None
    converted = [r for r in webhook.process.log_records() if r.get("msg") == "converted"]
    assert converted == [
        {
            **converted[0],
            "pod": "gvirtus-demo/legacy-gpu-pod-patched",
            "review": review["request"]["uid"],
            "dry_run": False,
            "claims": {"gpu-trainer": 1, "gpu-worker": 2},
        }
    ]


async def test_the_answer_carries_only_the_review_it_was_asked_about(webhook: Webhook) -> None:
    reviews = [
        objects.review_of(objects.legacy_pod(containers={f"c{i}": i % 3})) for i in range(12)
    ]

    answers = await asyncio.gather(*(webhook.post(copy.deepcopy(r)) for r in reviews))

    assert [a["response"]["uid"] for _, a in answers] == [r["request"]["uid"] for r in reviews]
