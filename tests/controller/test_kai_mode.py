"""``--scheduler kai``: settings that contradict it are refused, and pools lose what KAI ignores.

The pools are rendered through the policy the controller derives from its settings
(:func:`app.policy_of`), so these tests see what the controller would publish.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from dra_driver.config import ConfigError, add_flags, load
from dra_driver.controller import app, pools
from dra_driver.controller.features import Features
from dra_driver.controller.health import Verdict
from dra_driver.controller.pools import NodeInfo
from dra_driver.controller.scheduler import Scheduler, describe, parse_feature_gates
from dra_driver.controller.settings import ControllerSettings, Sharing
from dra_driver.models import Inventory
from tests.models.test_inventory import gpu, inventory

NODE = NodeInfo(name="backend-node-b", uid="0e6f0000-0000-0000-0000-000000000001")
NOW = "2026-11-23T03:00:00Z"


def settings(argv: list[str], env: dict[str, str] | None = None) -> ControllerSettings:
    parser = argparse.ArgumentParser()
    add_flags(parser, ControllerSettings)
    return load(ControllerSettings, args=parser.parse_args(argv), environ=env or {})


def published(
    s: ControllerSettings,
    *,
    verdicts: dict[int, Verdict] | None = None,
    withdrawn: dict[int, str] | None = None,
    server: Features | None = None,
) -> list[dict[str, Any]]:
    """The devices of a two-GPU backend as the controller with settings ``s`` publishes them."""
    document = inventory(nodeName=NODE.name, address="10.0.0.6", gpus=[gpu(0), gpu(1)])
    return pools.devices(
        inventory=Inventory.model_validate(document),
        node=NODE,
        verdicts=verdicts or {},
        withdrawn=withdrawn,
        policy=app.policy_of(s),
        features=server or Features(),
        taint_times={},
        now=NOW,
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["--scheduler", "kai", "--binding-conditions", "true"],
            {},
            "--binding-conditions and --binds-to-node must be false with --scheduler kai",
        ),
        (
            ["--scheduler", "kai", "--binds-to-node", "true"],
            {},
            "--binding-conditions and --binds-to-node must be false with --scheduler kai",
        ),
        (
            ["--scheduler", "kai", "--kai-feature-gates", "DRADeviceBindingConditions=true"],
            {"GVIRTUS_DRA_BINDING_CONDITIONS": "true"},
            "no KAI binder waits for them",
        ),
        (
            ["--scheduler", "kai", "--sharing", "capacity"],
            {},
            "--sharing capacity needs a KAI-Scheduler that passes DRAConsumableCapacity=true",
        ),
        (
            ["--sharing", "capacity"],
            {
                "GVIRTUS_DRA_SCHEDULER": "kai",
                "GVIRTUS_DRA_KAI_FEATURE_GATES": "DRADeviceTaints=true",
            },
            "use --sharing slots",
        ),
        (
            ["--kai-feature-gates", "DRADeviceTaints=true"],
            {},
            "--kai-feature-gates applies only with --scheduler kai",
        ),
        (
            ["--scheduler", "kai", "--kai-feature-gates", "DRADeviceTaints"],
            {},
            "'DRADeviceTaints' is not a feature gate setting: write Name=true or Name=false",
        ),
        (
            ["--scheduler", "kai", "--kai-feature-gates", "DRADeviceTaints=yes"],
            {},
            "--kai-feature-gates (env GVIRTUS_DRA_KAI_FEATURE_GATES)",
        ),
        (
            [
                "--scheduler",
                "kai",
                "--kai-feature-gates",
                "DRADeviceTaints=true,DRADeviceTaints=false",
            ],
            {},
            "feature gate DRADeviceTaints is given twice",
        ),
        (["--scheduler", "volcano"], {}, "--scheduler (env GVIRTUS_DRA_SCHEDULER)"),
    ],
    ids=[
        "binding-conditions",
        "binds-to-node",
        "binding-conditions-even-with-kais-gate",
        "capacity-without-kais-gate",
        "capacity-with-another-gate-from-env",
        "gates-without-kai",
        "gate-without-value",
        "gate-not-a-bool",
        "gate-twice",
        "unknown-scheduler",
    ],
)
def test_settings_that_contradict_kai_are_refused_with_the_fix(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings(argv, env)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "gates"),
    [
        ("", {}),
        ("DRADeviceTaints=true", {"DRADeviceTaints": True}),
        (
            " DRADeviceTaints=True, DRAConsumableCapacity=false ,",
            {"DRADeviceTaints": True, "DRAConsumableCapacity": False},
        ),
        ("DRAPartitionableDevices=true", {"DRAPartitionableDevices": True}),
    ],
    ids=["none", "one", "spaces-and-case", "a-gate-the-driver-does-not-use"],
)
def test_kais_feature_gate_syntax_is_read(text: str, gates: dict[str, bool]) -> None:
    assert parse_feature_gates(text) == gates


def test_the_default_scheduler_changes_nothing() -> None:
    s = settings(["--binding-conditions", "true"])
    devices = published(s, verdicts={1: Verdict(healthy=False, reason="backend-down")})

    assert s.scheduler is Scheduler.DEFAULT
    assert describe(scheduler=s.scheduler, gates=s.kai_gates) is None
    assert [d["name"] for d in devices] == ["gpu-0", "gpu-1"]
    assert devices[1]["taints"][0]["value"] == "backend-down"
    assert all(d["bindingConditions"] == ["gvirtus.io/BackendReady"] for d in devices)


@pytest.mark.parametrize(
    ("argv", "verdicts", "withdrawn", "names"),
    [
        (["--scheduler", "kai"], {}, {}, ["gpu-0", "gpu-1"]),
        (
            ["--scheduler", "kai"],
            {1: Verdict(healthy=False, reason="backend-down")},
            {},
            ["gpu-0"],
        ),
        (
            ["--scheduler", "kai"],
            {0: Verdict(healthy=False, reason="agent-unreachable", evict=True)},
            {},
            ["gpu-1"],
        ),
        (["--scheduler", "kai"], {}, {0: "BackendUnconfirmed"}, ["gpu-1"]),
        (
            ["--scheduler", "kai", "--sharing", "slots", "--slots", "2"],
            {0: Verdict(healthy=False, reason="port-closed")},
            {},
            ["gpu-1-s0", "gpu-1-s1"],
        ),
        (
            ["--scheduler", "kai", "--max-connections", "4"],
            {1: Verdict(healthy=True, overloaded="connections")},
            {},
            ["gpu-0", "gpu-1"],
        ),
    ],
    ids=["healthy", "unhealthy", "evicting", "withdrawn", "slots", "overloaded-stays"],
)
def test_under_kai_v0_17_0_pools_carry_nothing_it_ignores(
    argv: list[str], verdicts: dict[int, Verdict], withdrawn: dict[int, str], names: list[str]
) -> None:
    devices = published(settings(argv), verdicts=verdicts, withdrawn=withdrawn)

    assert [d["name"] for d in devices] == names
    for device in devices:
        assert not {"taints", "bindingConditions", "bindingFailureConditions", "bindsToNode"} & set(
            device
        )
        assert "allowMultipleAllocations" not in device
        assert "requestPolicy" not in device["capacity"]["memory"]


def test_a_kai_told_device_taints_gets_taints_again() -> None:
    s = settings(["--scheduler", "kai", "--kai-feature-gates", "DRADeviceTaints=true"])
    devices = published(s, verdicts={1: Verdict(healthy=False, reason="backend-down")})

    assert [d["name"] for d in devices] == ["gpu-0", "gpu-1"]
    assert devices[1]["taints"][0]["key"] == "gvirtus.io/unhealthy"
    assert "bindingConditions" not in devices[1]


def test_a_kai_told_device_taints_on_a_server_without_them_still_leaves_gpus_out() -> None:
    s = settings(["--scheduler", "kai", "--kai-feature-gates", "DRADeviceTaints=true"])
    devices = published(
        s,
        verdicts={1: Verdict(healthy=False, reason="backend-down")},
        server=Features(taints=False),
    )

    assert [d["name"] for d in devices] == ["gpu-0"]


def test_a_kai_told_consumable_capacity_shares_by_memory() -> None:
    s = settings(
        [
            "--scheduler",
            "kai",
            "--sharing",
            "capacity",
            "--kai-feature-gates",
            "DRAConsumableCapacity=true",
        ]
    )
    devices = published(s)

    assert [d["name"] for d in devices] == ["gpu-0", "gpu-1"]
    assert all(d["allowMultipleAllocations"] is True for d in devices)
    assert s.sharing is Sharing.CAPACITY


def test_kai_mode_says_what_it_leaves_out() -> None:
    plain = settings(["--scheduler", "kai"])
    told = settings(
        [
            "--scheduler",
            "kai",
            "--kai-feature-gates",
            "DRADeviceTaints=true,DRADeviceBindingConditions=true",
        ]
    )

    said = describe(scheduler=plain.scheduler, gates=plain.kai_gates) or ""
    assert "no binding conditions" in said
    assert "unhealthy GPUs leave their pool" in said
    assert "no multiple allocations" in said
    told_said = describe(scheduler=told.scheduler, gates=told.kai_gates) or ""
    assert "unhealthy GPUs are tainted" in told_said
    assert "DRADeviceBindingConditions=true is noted but unused" in told_said


def test_larger_pools_fit_more_devices_per_slice_without_taints() -> None:
    s = settings(["--scheduler", "kai"])
    document = inventory(nodeName=NODE.name, gpus=[gpu(i) for i in range(70)])
    slices = pools.desired_slices(
        driver="gpu.gvirtus.io",
        node=NODE,
        inventory=Inventory.model_validate(document),
        verdicts={},
        withdrawn={},
        policy=app.policy_of(s),
        features=Features(),
        existing={},
        now=NOW,
    )

    assert [len(x["spec"]["devices"]) for x in slices] == [70]
