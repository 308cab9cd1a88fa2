"""What a device's status says, decided from the agent's verdict and the published endpoint."""

from __future__ import annotations

import json

import pytest

from dra_driver.controller import binding
from dra_driver.controller.binding import Judgement, Step
from dra_driver.controller.claims import Allocated, Entry
from dra_driver.controller.health import Verdict
from dra_driver.device import GPUDevice

ENDPOINT = GPUDevice(
    name="gpu-0",
    node="gpu-node-a",
    address="10.0.0.5",
    port=9999,
    uuid="GPU-1",
    model="NVIDIA H100",
    index=0,
)
HEALTHY = Verdict(healthy=True)
DOWN = Verdict(healthy=False, reason="backend-down", message="gvirtus-backend exited with 1")
BUSY = Verdict(healthy=True, overloaded="connections")
WAITS = Allocated(pool="gpu-node-a", device="gpu-0", share_id="", waits=True)
PLAIN = Allocated(pool="gpu-node-a", device="gpu-0", share_id="", waits=False)

READY = "gvirtus.io/BackendReady"
FAILURE = "gvirtus.io/BackendUnavailable"


def judged(
    verdict: Verdict | None, *, endpoint: GPUDevice | None = ENDPOINT, fresh: bool = True
) -> Judgement:
    return Judgement(device=endpoint, verdict=verdict, fresh=fresh)


def written(assessment: binding.Assessment) -> dict[str, tuple[str, str]]:
    assert assessment.step is Step.WRITE and assessment.entry is not None
    return {c.type: (c.status, c.reason) for c in assessment.entry.conditions}


def ready_entry() -> Entry:
    assessment = binding.assess(
        device=WAITS, binding=True, current=None, judgement=judged(HEALTHY), waited=1, timeout=60
    )
    assert assessment.entry is not None
    return assessment.entry


@pytest.mark.parametrize(
    ("judgement", "waited", "step", "conditions"),
    [
        pytest.param(
            judged(HEALTHY), 0, Step.WRITE, {READY: ("True", "BackendReady")}, id="fresh-healthy"
        ),
        pytest.param(
            judged(HEALTHY, fresh=False), 10, Step.KEEP, None, id="healthy-before-allocation-waits"
        ),
        pytest.param(
            judged(DOWN, fresh=False),
            0,
            Step.WRITE,
            {READY: ("False", "BackendDown"), FAILURE: ("True", "BackendDown")},
            id="unhealthy-fails-at-once",
        ),
        pytest.param(
            judged(BUSY),
            0,
            Step.WRITE,
            {READY: ("False", "BackendOverloaded"), FAILURE: ("True", "BackendOverloaded")},
            id="overloaded-fails",
        ),
        pytest.param(judged(None), 10, Step.KEEP, None, id="no-report-yet-waits"),
        pytest.param(judged(HEALTHY, endpoint=None), 10, Step.KEEP, None, id="unpublished-waits"),
        pytest.param(
            judged(HEALTHY, fresh=False),
            61,
            Step.WRITE,
            {READY: ("False", "BackendUnconfirmed"), FAILURE: ("True", "BackendUnconfirmed")},
            id="no-report-since-the-allocation-past-the-timeout-fails",
        ),
        pytest.param(
            judged(None),
            61,
            Step.WRITE,
            {READY: ("False", "BackendUnconfirmed"), FAILURE: ("True", "BackendUnconfirmed")},
            id="no-report-past-the-timeout-fails",
        ),
        pytest.param(
            judged(None, endpoint=None),
            61,
            Step.WRITE,
            {READY: ("False", "BackendUnconfirmed"), FAILURE: ("True", "BackendUnconfirmed")},
            id="unpublished-past-the-timeout-fails",
        ),
    ],
)
def test_a_device_in_its_binding_phase_is_confirmed_failed_or_kept_waiting(
    judgement: Judgement,
    waited: float,
    step: Step,
    conditions: dict[str, tuple[str, str]] | None,
) -> None:
    assessment = binding.assess(
        device=WAITS, binding=True, current=None, judgement=judgement, waited=waited, timeout=60
    )

    assert assessment.step is step
    if conditions is not None:
        assert written(assessment) == conditions
        assert assessment.failed == (FAILURE in conditions)


@pytest.mark.parametrize(
    ("verdict", "endpoint", "conditions"),
    [
        pytest.param(HEALTHY, ENDPOINT, {READY: ("True", "BackendServing")}, id="serving"),
        pytest.param(BUSY, ENDPOINT, {READY: ("True", "BackendServing")}, id="busy-still-serves"),
        pytest.param(DOWN, ENDPOINT, {READY: ("False", "BackendDown")}, id="down"),
        pytest.param(
            Verdict(healthy=False, reason="agent-unreachable", message="no answer for 12s"),
            ENDPOINT,
            {READY: ("False", "AgentUnreachable")},
            id="agent-gone",
        ),
        pytest.param(None, ENDPOINT, {READY: ("Unknown", "BackendUnknown")}, id="not-reported"),
        pytest.param(HEALTHY, None, {READY: ("False", "DeviceUnpublished")}, id="unpublished"),
    ],
)
@pytest.mark.parametrize(
    "device", [pytest.param(PLAIN, id="no-binding-conditions"), pytest.param(WAITS, id="bound")]
)
def test_devices_outside_the_binding_phase_get_a_live_record_and_never_the_failure_condition(
    device: Allocated,
    verdict: Verdict | None,
    endpoint: GPUDevice | None,
    conditions: dict[str, tuple[str, str]],
) -> None:
    assessment = binding.assess(
        device=device,
        binding=False,
        current=None,
        judgement=judged(verdict, endpoint=endpoint),
        waited=1000,
        timeout=60,
    )

    assert written(assessment) == conditions
    assert not assessment.failed


def test_the_record_names_the_backend() -> None:
    assessment = binding.assess(
        device=PLAIN, binding=False, current=None, judgement=judged(HEALTHY), waited=0, timeout=60
    )

    assert assessment.entry is not None
    assert json.loads(assessment.entry.data) == {
        "backendNode": "gpu-node-a",
        "backendAddress": "10.0.0.5",
        "backendPort": 9999,
        "uuid": "GPU-1",
        "model": "NVIDIA H100",
    }


def test_a_confirmed_device_keeps_its_reason_while_it_serves() -> None:
    confirmed = ready_entry()

    again = binding.assess(
        device=WAITS,
        binding=True,
        current=confirmed,
        judgement=judged(HEALTHY, fresh=False),
        waited=5,
        timeout=60,
    )
    bound_and_down = binding.assess(
        device=WAITS,
        binding=False,
        current=confirmed,
        judgement=judged(DOWN),
        waited=500,
        timeout=60,
    )

    assert again.entry == confirmed
    assert written(bound_and_down) == {READY: ("False", "BackendDown")}, "bound pods never fail"


def test_a_backend_lost_after_confirmation_but_before_the_pod_is_bound_fails_it() -> None:
    assessment = binding.assess(
        device=WAITS,
        binding=True,
        current=ready_entry(),
        judgement=judged(DOWN),
        waited=3,
        timeout=60,
    )

    assert written(assessment) == {
        READY: ("False", "BackendDown"),
        FAILURE: ("True", "BackendDown"),
    }


def test_a_failed_device_is_left_to_the_scheduler() -> None:
    failed = binding.failure("BackendDown", "down", binding.status_data(ENDPOINT)).entry

    assessment = binding.assess(
        device=WAITS, binding=True, current=failed, judgement=judged(HEALTHY), waited=5, timeout=60
    )

    assert assessment.step is Step.KEEP


def test_a_failure_left_on_a_bound_claim_is_cleared_once_the_backend_serves() -> None:
    failed = binding.failure("BackendDown", "down", binding.status_data(ENDPOINT)).entry

    assessment = binding.assess(
        device=WAITS, binding=False, current=failed, judgement=judged(HEALTHY), waited=5, timeout=60
    )

    assert written(assessment) == {READY: ("True", "BackendServing")}


@pytest.mark.parametrize(
    ("reason", "camel"),
    [
        ("backend-down", "BackendDown"),
        ("backend-wedged", "BackendWedged"),
        ("agent-unreachable", "AgentUnreachable"),
    ],
)
def test_reasons_become_valid_condition_reasons(reason: str, camel: str) -> None:
    assert binding.camel(reason) == camel
