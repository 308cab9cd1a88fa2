"""What a device's status says, decided from the agent's verdict and the published endpoint."""

from __future__ import annotations

import asyncio
import json

import pytest

from dra_driver.controller import binding
from dra_driver.controller.binding import Endpoint, Step
from dra_driver.controller.claims import Allocated, Entry
from dra_driver.controller.health import Verdict

ENDPOINT = Endpoint(
    node="gpu-node-a", address="10.0.0.5", port=9999, uuid="GPU-1", model="NVIDIA H100", index=0
)
HEALTHY = Verdict(healthy=True)
DOWN = Verdict(healthy=False, reason="backend-down", message="gvirtus-backend exited with 1")
BUSY = Verdict(healthy=True, overloaded="connections")
WAITS = Allocated(pool="gpu-node-a", device="gpu-0", share_id="", waits=True)
PLAIN = Allocated(pool="gpu-node-a", device="gpu-0", share_id="", waits=False)


def written(assessment: binding.Assessment) -> dict[str, tuple[str, str]]:
    assert assessment.step is Step.WRITE and assessment.entry is not None
    return {c.type: (c.status, c.reason) for c in assessment.entry.conditions}


READY = "gvirtus.io/BackendReady"
FAILURE = "gvirtus.io/BackendUnavailable"


@pytest.mark.parametrize(
    ("endpoint", "verdict", "waited", "step", "conditions"),
    [
        pytest.param(ENDPOINT, HEALTHY, 0, Step.CONFIRM, None, id="healthy-is-dialled-first"),
        pytest.param(
            ENDPOINT,
            DOWN,
            0,
            Step.WRITE,
            {READY: ("False", "BackendDown"), FAILURE: ("True", "BackendDown")},
            id="unhealthy-fails-at-once",
        ),
        pytest.param(
            ENDPOINT,
            BUSY,
            0,
            Step.WRITE,
            {READY: ("False", "BackendOverloaded"), FAILURE: ("True", "BackendOverloaded")},
            id="overloaded-fails-at-once",
        ),
        pytest.param(ENDPOINT, None, 10, Step.KEEP, None, id="no-report-yet-waits"),
        pytest.param(None, HEALTHY, 10, Step.KEEP, None, id="unpublished-waits"),
        pytest.param(
            ENDPOINT,
            None,
            61,
            Step.WRITE,
            {READY: ("False", "BackendUnconfirmed"), FAILURE: ("True", "BackendUnconfirmed")},
            id="no-report-past-the-timeout-fails",
        ),
        pytest.param(
            None,
            None,
            61,
            Step.WRITE,
            {READY: ("False", "BackendUnconfirmed"), FAILURE: ("True", "BackendUnconfirmed")},
            id="unpublished-past-the-timeout-fails",
        ),
    ],
)
def test_a_waiting_device_is_confirmed_failed_or_kept_waiting(
    endpoint: Endpoint | None,
    verdict: Verdict | None,
    waited: float,
    step: Step,
    conditions: dict[str, tuple[str, str]] | None,
) -> None:
    assessment = binding.assess(
        device=WAITS, current=None, endpoint=endpoint, verdict=verdict, waited=waited, timeout=60
    )

    assert assessment.step is step
    if conditions is not None:
        assert written(assessment) == conditions
        assert assessment.failed


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
def test_other_devices_get_a_live_record_and_never_the_failure_condition(
    verdict: Verdict | None, endpoint: Endpoint | None, conditions: dict[str, tuple[str, str]]
) -> None:
    assessment = binding.assess(
        device=PLAIN, current=None, endpoint=endpoint, verdict=verdict, waited=1000, timeout=60
    )

    assert written(assessment) == conditions
    assert not assessment.failed


def test_the_record_names_the_backend() -> None:
    assessment = binding.assess(
        device=PLAIN, current=None, endpoint=ENDPOINT, verdict=HEALTHY, waited=0, timeout=60
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
    confirmed = binding.confirmed(ENDPOINT, None).entry
    assert confirmed is not None

    again = binding.assess(
        device=WAITS, current=confirmed, endpoint=ENDPOINT, verdict=HEALTHY, waited=5, timeout=60
    )
    later = binding.assess(
        device=WAITS, current=confirmed, endpoint=ENDPOINT, verdict=DOWN, waited=500, timeout=60
    )

    assert again.entry == confirmed
    assert written(later) == {READY: ("False", "BackendDown")}, "bound pods are not failed"


def test_a_failed_device_is_left_to_the_scheduler() -> None:
    failed: Entry | None = binding.confirmed(ENDPOINT, "refused the connection").entry

    assessment = binding.assess(
        device=WAITS, current=failed, endpoint=ENDPOINT, verdict=HEALTHY, waited=5, timeout=60
    )

    assert assessment.step is Step.KEEP


@pytest.mark.parametrize(
    ("listening", "problem"),
    [
        pytest.param(True, None, id="accepted"),
        pytest.param(False, "refused the connection", id="refused"),
    ],
)
async def test_dialling_says_what_went_wrong(listening: bool, problem: str | None) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    if not listening:
        server.close()
        await server.wait_closed()

    assert await binding.dial("127.0.0.1", port, timeout=2) == problem

    if listening:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("reason", "camel"),
    [
        ("backend-down", "BackendDown"),
        ("port-closed", "PortClosed"),
        ("agent-unreachable", "AgentUnreachable"),
    ],
)
def test_reasons_become_valid_condition_reasons(reason: str, camel: str) -> None:
    assert binding.camel(reason) == camel
