"""Converting a pod, as a pure function: what the pod looks like after the patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from tests.support import objects
from tests.support.apiserver import _validate_pod, fixture_object
from webhook import mutate

GPU = "nvidia.com/gpu"


def convert(pod: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], mutate.Plan]:
    """The pod after its plan's patch, applied by a JSON Patch library, and the plan."""
    plan = mutate.plan(pod, **kwargs)
    return jsonpatch.apply_patch(copy.deepcopy(pod), plan.patch), plan


def claims_of(pod: dict[str, Any]) -> dict[str, Any]:
    """Container name → (pod claim name, GPU count of its template), for containers with one."""
    templates = {
        c["name"]: int(c["resourceClaimTemplateName"].removeprefix(mutate.TEMPLATE_PREFIX))
        for c in pod["spec"].get("resourceClaims") or []
        if c.get("resourceClaimTemplateName", "").startswith(mutate.TEMPLATE_PREFIX)
    }
    found = {}
    for kind in ("initContainers", "containers"):
        for container in pod["spec"].get(kind) or []:
            for claim in (container.get("resources") or {}).get("claims") or []:
                if claim["name"] in templates:
                    found[container["name"]] = (claim["name"], templates[claim["name"]])
    return found


def asks_gpu(pod: dict[str, Any]) -> list[str]:
    return [
        c["name"]
        for kind in ("initContainers", "containers")
        for c in pod["spec"].get(kind) or []
        if any(GPU in ((c.get("resources") or {}).get(p) or {}) for p in ("limits", "requests"))
    ]


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(objects.legacy_pod(containers={"app": 1}), {"app": ("gpu-app", 1)}, id="one"),
        pytest.param(
            objects.legacy_pod(containers={"a": 1, "b": 2, "c": None}),
            {"a": ("gpu-a", 1), "b": ("gpu-b", 2)},
            id="several-containers-one-claim-each",
        ),
        pytest.param(
            objects.legacy_pod(containers={"app": 3}, where=("limits",)),
            {"app": ("gpu-app", 3)},
            id="limits-only",
        ),
        pytest.param(
            objects.legacy_pod(containers={"app": 2}, where=("requests",)),
            {"app": ("gpu-app", 2)},
            id="requests-only",
        ),
        pytest.param(
            objects.legacy_pod(init={"setup": 1}, containers={"trainer": 1, "worker": 2}),
            {
                "setup": ("gpu-trainer", 1),
                "trainer": ("gpu-trainer", 1),
                "worker": ("gpu-worker", 2),
            },
            id="init-reuses-an-app-claim",
        ),
        pytest.param(
            objects.legacy_pod(init={"setup": 2}, containers={"a": 1, "b": 2, "c": 4}),
            {
                "setup": ("gpu-b", 2),
                "a": ("gpu-a", 1),
                "b": ("gpu-b", 2),
                "c": ("gpu-c", 4),
            },
            id="init-reuses-the-smallest-sufficient-claim",
        ),
        pytest.param(
            objects.legacy_pod(init={"setup": 4}, containers={"app": 1}),
            {"setup": ("gpu-setup", 4), "app": ("gpu-app", 1)},
            id="init-needing-more-gets-its-own",
        ),
        pytest.param(
            objects.legacy_pod(init={"proxy": 1}, containers={"app": 1}, sidecars={"proxy"}),
            {"proxy": ("gpu-proxy", 1), "app": ("gpu-app", 1)},
            id="sidecar-gets-its-own",
        ),
        pytest.param(
            objects.legacy_pod(init={"a": 1, "b": 1}, containers={"app": None}),
            {"a": ("gpu-a", 1), "b": ("gpu-b", 1)},
            id="init-only",
        ),
    ],
)
def test_every_gpu_container_gets_a_claim_for_its_count(
    pod: dict[str, Any], expected: dict[str, Any]
) -> None:
    after, plan = convert(pod)

    assert claims_of(after) == expected
    assert asks_gpu(after) == []
    assert _validate_pod(after, None) == []
    assert plan.templates == {count for _, count in expected.values()}
    annotation = after["metadata"]["annotations"][mutate.CONVERTED_ANNOTATION]
    assert dict(item.split("=") for item in annotation.split(",")) == {
        name: str(count) for name, count in set(expected.values())
    }


def test_the_captured_review_converts_like_a_cluster_would_accept() -> None:
    pod = objects.admission_review()["request"]["object"]

    after, _ = convert(pod)

    assert claims_of(after) == {
        "setup": ("gpu-trainer", 1),
        "trainer": ("gpu-trainer", 1),
        "worker": ("gpu-worker", 2),
    }
    trainer = after["spec"]["containers"][0]["resources"]
    assert trainer["limits"] == {"memory": "1Gi"}, "other resources stay"
    assert trainer["requests"] == {"memory": "1Gi"}
    assert _validate_pod(after, None) == []


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param(
            fixture_object("08-pod-after-jsonpatch-get.json"), id="converted-by-a-cluster"
        ),
        pytest.param(
            convert(objects.legacy_pod(containers={"a": 1, "b": 2}))[0], id="converted-here"
        ),
        pytest.param(objects.legacy_pod(containers={"app": None}), id="no-gpu-asked"),
    ],
)
def test_a_pod_with_nothing_to_convert_gets_no_patch(pod: dict[str, Any]) -> None:
    assert mutate.plan(pod).patch == []


def test_zero_gpus_drop_the_resource_without_a_claim() -> None:
    after, plan = convert(objects.legacy_pod(containers={"app": 0}))

    assert asks_gpu(after) == []
    assert "resourceClaims" not in after["spec"]
    assert plan.templates == set()
    assert mutate.CONVERTED_ANNOTATION not in (after["metadata"].get("annotations") or {})


def test_claims_the_pod_already_has_are_kept() -> None:
    pod = objects.legacy_pod(containers={"app": 1, "other": None})
    pod["spec"]["resourceClaims"] = [{"name": "gpu-app", "resourceClaimName": "mine"}]
    pod["spec"]["containers"][1]["resources"]["claims"] = [{"name": "gpu-app"}]
    pod["spec"]["containers"][0]["resources"]["claims"] = [{"name": "gpu-app"}]

    after, _ = convert(pod)

    assert after["spec"]["resourceClaims"][0] == {"name": "gpu-app", "resourceClaimName": "mine"}
    assert after["spec"]["containers"][0]["resources"]["claims"] == [
        {"name": "gpu-app"},
        {"name": "gpu-app-2"},
    ]
    assert claims_of(after) == {"app": ("gpu-app-2", 1)}
    assert _validate_pod(after, None) == []


def test_existing_annotations_are_kept() -> None:
    pod = objects.legacy_pod(containers={"app": 1})
    pod["metadata"]["annotations"] = {"team": "ml"}

    after, _ = convert(pod)

    assert after["metadata"]["annotations"] == {
        "team": "ml",
        mutate.CONVERTED_ANNOTATION: "gpu-app=1",
    }


def test_long_container_names_give_valid_distinct_claim_names() -> None:
    first, second = "c" * 63, "c" * 62 + "d"
    after, _ = convert(objects.legacy_pod(containers={first: 1, second: 1}))

    names = [c["name"] for c in after["spec"]["resourceClaims"]]
    assert len(set(names)) == 2
    assert all(len(n) <= 63 and n[0].isalnum() and n[-1].isalnum() for n in names)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"]["limits"].update({GPU: "1.5"}),
            "container 'app': resources.limits[nvidia.com/gpu] is '1.5'; GPUs are counted in whole",
            id="fraction",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(
                limits={GPU: "2Gi"}, requests={GPU: "2Gi"}
            ),
            "GPUs are counted in whole numbers",
            id="quantity-suffix",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"]["requests"].update({GPU: "2"}),
            "nvidia.com/gpu limits (1) and requests (2) differ",
            id="limits-and-requests-differ",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(
                limits={GPU: "17"}, requests={GPU: "17"}
            ),
            "asks for 17 nvidia.com/gpu; at most 16 GVirtuS GPUs per container",
            id="too-many",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits={GPU: "-1"}),
            "GPUs are counted in whole numbers",
            id="negative",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits={GPU: "9" * 5000}),
            "container 'app': resources.limits[nvidia.com/gpu] is a 5000-digit number; "
            "at most 16 GVirtuS GPUs per container",
            id="5000-digits",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits={GPU: "1" * 19}),
            "is a 19-digit number; at most 16 GVirtuS GPUs per container",
            id="19-digits",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(
                limits={GPU: "1" * 18}, requests={GPU: "1" * 18}
            ),
            "asks for 111111111111111111 nvidia.com/gpu; at most 16 GVirtuS GPUs per container",
            id="18-digits",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits={GPU: "1\n2"}),
            "is '1\\n2'; GPUs are counted in whole numbers",
            id="newline-inside",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits={GPU: True}),
            "is True; GPUs are counted in whole numbers",
            id="boolean",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits={GPU: [[1]]}),
            "is a JSON array; GPUs are counted in whole numbers",
            id="array",
        ),
        pytest.param(lambda p: p.pop("spec"), "the pod has no spec", id="no-spec"),
        pytest.param(
            lambda p: p["spec"].update(containers={"app": {}}),
            "spec.containers must be a list of containers",
            id="containers-not-a-list",
        ),
        pytest.param(
            lambda p: p["spec"].update(containers=[]),
            "spec.containers is empty",
            id="no-containers",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0].pop("name"),
            "spec.containers[0] has no name",
            id="container-without-name",
        ),
        pytest.param(
            lambda p: p["spec"]["containers"][0]["resources"].update(limits=["1"]),
            "container 'app': resources.limits must be an object",
            id="limits-not-an-object",
        ),
        pytest.param(
            lambda p: p["spec"].update(resourceClaims={"a": 1}),
            "spec.resourceClaims must be a list",
            id="resource-claims-not-a-list",
        ),
    ],
)
def test_pods_that_cannot_be_converted_are_denied_with_the_reason(
    change: Any, message: str
) -> None:
    pod = objects.legacy_pod(containers={"app": 1})
    change(pod)

    with pytest.raises(mutate.Denied) as denied:
        mutate.plan(pod)

    assert message in str(denied.value)


@pytest.mark.parametrize(
    ("value", "count"),
    [
        pytest.param("2", 2, id="plain"),
        pytest.param("+2", 2, id="plus"),
        pytest.param(" 3\n", 3, id="surrounding-space"),
        pytest.param("0002", 2, id="leading-zeros"),
        pytest.param("0" * 5000 + "1", 1, id="5000-leading-zeros"),
        pytest.param(2, 2, id="json-number"),
    ],
)
def test_whole_numbers_are_read_as_counts(value: Any, count: int) -> None:
    pod = objects.legacy_pod(containers={"app": 1})
    pod["spec"]["containers"][0]["resources"] = {"limits": {GPU: value}}

    _, plan = convert(pod)

    assert plan.templates == {count}


@pytest.mark.parametrize(
    ("labels", "wanted"),
    [
        pytest.param({"gvirtus.io/enabled": "true"}, True, id="opted-in"),
        pytest.param({"gvirtus.io/enabled": "false"}, False, id="opted-out"),
        pytest.param({"gvirtus.io/enabled": "True"}, False, id="not-exactly-true"),
        pytest.param({}, False, id="unlabelled"),
        pytest.param(None, False, id="no-labels"),
    ],
)
def test_only_pods_labelled_enabled_true_are_converted(
    labels: dict[str, str] | None, wanted: bool
) -> None:
    assert mutate.wants_conversion({"metadata": {"labels": labels}}) is wanted
