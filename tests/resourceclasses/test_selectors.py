"""What each DeviceClass selects, run against devices as the controller publishes them."""

from __future__ import annotations

from typing import Any

import pytest

from dra_driver.controller import pools
from dra_driver.controller.features import Features
from dra_driver.controller.pools import DevicePolicy, NodeInfo
from dra_driver.models import Inventory, parse_config
from tests.models.test_inventory import gpu, inventory
from tests.support import cel, manifests
from tests.support.apiserver import fixture

DRIVER = "gpu.gvirtus.io"
CLASSES = sorted(
    p.relative_to(manifests.ROOT).as_posix()
    for p in (manifests.ROOT / "resourceclasses").rglob("*.yaml")
    if p.name != "kustomization.yaml"
)


def published(*, node: str, model: str, cuda: str, zone: str | None = None) -> dict[str, Any]:
    """The first device of a backend node with one GPU, as the controller would publish it."""
    document = inventory(nodeName=node, gpus=[gpu(0, model=model, cudaVersion=cuda)])
    return pools.devices(
        inventory=Inventory.model_validate(document),
        node=NodeInfo(name=node, uid="00000000-0000-0000-0000-000000000001", zone=zone),
        verdicts={},
        policy=DevicePolicy(),
        features=Features(),
        taint_times={},
        now="2026-11-23T03:00:00Z",
    )[0]


DEVICES = {
    "h100": (
        DRIVER,
        published(node="n1", model="NVIDIA H100 80GB HBM3", cuda="12.6", zone="zone-a"),
    ),
    "a100": (DRIVER, published(node="n2", model="NVIDIA A100-SXM4-40GB", cuda="12.2")),
    "l40s": (DRIVER, published(node="n3", model="NVIDIA L40S", cuda="12.10", zone="zone-b")),
    "local": (
        "gpu.nvidia.com",
        {"name": "gpu-0", "attributes": {"productName": {"string": "NVIDIA H100"}}},
    ),
}
EVERY_GVIRTUS_GPU = {"h100", "a100", "l40s"}


def selected(path: str) -> set[str]:
    """The devices every selector of the class at ``path`` matches."""
    spec = manifests.find(path, "DeviceClass")["spec"]
    expressions = [s["cel"]["expression"] for s in spec["selectors"]]
    return {
        name
        for name, (driver, device) in DEVICES.items()
        if all(cel.matches(e, device=device, driver=driver) for e in expressions)
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("resourceclasses/gpu.gvirtus.io.yaml", EVERY_GVIRTUS_GPU, id="all"),
        pytest.param("resourceclasses/gpu.gvirtus.io-legacy.yaml", EVERY_GVIRTUS_GPU, id="legacy"),
        pytest.param("resourceclasses/examples/gpu.gvirtus.io-h100.yaml", {"h100"}, id="by-model"),
        pytest.param(
            "resourceclasses/examples/gpu.gvirtus.io-cuda-12.4.yaml",
            {"h100", "l40s"},
            id="min-cuda-compares-versions-not-text",
        ),
        pytest.param(
            "resourceclasses/examples/gpu.gvirtus.io-zone-a.yaml",
            {"h100"},
            id="zone-without-failing-on-zoneless-devices",
        ),
        pytest.param(
            "resourceclasses/examples/gpu.gvirtus.io-nvidia-compat.yaml",
            EVERY_GVIRTUS_GPU,
            id="nvidia-compat",
        ),
        pytest.param(
            "resourceclasses/examples/gpu.gvirtus.io-debug.yaml", EVERY_GVIRTUS_GPU, id="debug"
        ),
        pytest.param("resourceclasses/kai/remote.gvirtus.io.yaml", EVERY_GVIRTUS_GPU, id="kai"),
    ],
)
def test_each_class_selects_the_devices_it_promises(path: str, expected: set[str]) -> None:
    assert selected(path) == expected


def test_every_class_file_is_covered_above() -> None:
    covered = {
        "resourceclasses/gpu.gvirtus.io.yaml",
        "resourceclasses/gpu.gvirtus.io-legacy.yaml",
        *(
            f"resourceclasses/examples/gpu.gvirtus.io-{n}.yaml"
            for n in ("h100", "cuda-12.4", "zone-a", "nvidia-compat", "debug")
        ),
        "resourceclasses/kai/remote.gvirtus.io.yaml",
    }
    assert set(CLASSES) == covered


def installed(install: str) -> dict[str, dict[str, Any]]:
    """The DeviceClasses ``kubectl apply -k <install>`` applies, by name."""
    return manifests.named(manifests.render(install), "DeviceClass")


@pytest.mark.parametrize(
    ("install", "names"),
    [
        ("manifests", {"gpu.gvirtus.io", "gpu.gvirtus.io-legacy"}),
        ("manifests/overlays/simulator", {"gpu.gvirtus.io", "gpu.gvirtus.io-legacy"}),
        (
            "manifests/overlays/kai",
            {"gpu.gvirtus.io", "gpu.gvirtus.io-legacy", "remote.gvirtus.io"},
        ),
    ],
    ids=["default", "simulator", "kai"],
)
def test_each_install_applies_the_classes_the_names_promise(install: str, names: set[str]) -> None:
    classes = installed(install)

    assert set(classes) == names
    assert "extendedResourceName" not in classes["gpu.gvirtus.io"]["spec"]
    assert classes["gpu.gvirtus.io-legacy"]["spec"]["extendedResourceName"] == "gvirtus.io/gpu"


def test_the_kai_class_is_gpu_gvirtus_io_under_a_name_kai_does_not_count_as_a_gpu() -> None:
    classes = installed("manifests/overlays/kai")
    remote, gpu_class = classes["remote.gvirtus.io"], classes["gpu.gvirtus.io"]

    assert "gpu" not in remote["metadata"]["name"].lower()
    assert remote["spec"] == gpu_class["spec"], "same selectors, same configuration"


def test_no_two_classes_claim_the_same_extended_resource() -> None:
    names = [manifests.find(p, "DeviceClass")["spec"].get("extendedResourceName") for p in CLASSES]
    taken = [n for n in names if n]
    assert len(taken) == len(set(taken))


@pytest.mark.parametrize("path", CLASSES)
def test_class_configuration_is_what_the_kubelet_plugin_accepts(path: str) -> None:
    for entry in manifests.find(path, "DeviceClass")["spec"].get("config") or []:
        assert entry["opaque"]["driver"] == DRIVER
        parse_config(entry["opaque"]["parameters"])


@pytest.mark.parametrize(
    ("capture", "problem"),
    [
        pytest.param("05-error-422-create-deviceclass-invalid-cel-syntax.json", "syntax error"),
        pytest.param("05-error-422-create-deviceclass-cel-not-bool.json", "not bool"),
        pytest.param("05-error-422-create-deviceclass-cel-unknown-field.json", "runtime error"),
    ],
)
def test_the_checker_refuses_what_a_real_api_server_refused(capture: str, problem: str) -> None:
    expression = fixture(capture)["request"]["body"]["spec"]["selectors"][0]["cel"]["expression"]

    with pytest.raises(cel.SelectorError, match=problem):
        cel.matches(expression, device=DEVICES["h100"][1], driver=DRIVER)


def test_reading_a_missing_attribute_fails_like_the_allocator_does() -> None:
    claim = fixture("10-celerror-claim-create.json")["request"]["body"]
    expression = claim["spec"]["devices"]["requests"][0]["exactly"]["selectors"][0]["cel"][
        "expression"
    ]
    lacking = {"name": "gpu-0", "attributes": {"model": {"string": "LATEST-GPU-MODEL"}}}

    with pytest.raises(cel.SelectorError, match="runtime error"):
        cel.matches(expression, device=lacking, driver=DRIVER)
