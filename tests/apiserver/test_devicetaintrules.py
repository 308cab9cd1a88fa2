"""DeviceTaintRules are served as 1.36 and 1.37 serve them, checked against the captures.

1.36 serves them as ``resource.k8s.io/v1beta2`` only when the DRADeviceTaintRules gate
is on (off by default); 1.37 as ``resource.k8s.io/v1`` (GA, on); 1.35 not at all by
default. The captures in section 11 come from a 1.36.2 server with the gate on.
"""

from __future__ import annotations

import copy
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support.apiserver import APIServer, fixture

V1BETA2 = "/apis/resource.k8s.io/v1beta2/devicetaintrules"
V1 = "/apis/resource.k8s.io/v1/devicetaintrules"
CREATE = "11-devicetaintrule-create.json"
GET = "11-devicetaintrule-get.json"
VOLATILE = ("uid", "resourceVersion", "creationTimestamp")
"""Metadata a replay cannot reproduce; everything else must be as captured."""


async def call(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


@pytest.fixture
async def client(apiserver: APIServer) -> AsyncIterator[aiohttp.ClientSession]:
    """A client of the ``apiserver`` as parametrized (the shared ``http`` is unparametrized)."""
    context = ssl.create_default_context(cadata=apiserver.ca_pem.decode())
    async with aiohttp.ClientSession(
        base_url=apiserver.url,
        headers={"Authorization": f"Bearer {apiserver.token}"},
        connector=aiohttp.TCPConnector(ssl=context),
    ) as session:
        yield session


def comparable(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without what differs between any two servers: ids, versions, clock times."""
    obj = copy.deepcopy(obj)
    for field in VOLATILE:
        obj["metadata"].pop(field)
    obj["spec"]["taint"].pop("timeAdded")
    for condition in obj.get("status", {}).get("conditions", []):
        condition.pop("lastTransitionTime")
    return obj


def as_v1(obj: dict[str, Any]) -> dict[str, Any]:
    """The captured object as 1.37 serves it: the same spec under ``resource.k8s.io/v1``."""
    return {**copy.deepcopy(obj), "apiVersion": "resource.k8s.io/v1"}


SERVING_VERSIONS = pytest.mark.parametrize(
    ("apiserver", "path", "convert"),
    [
        (("1.36", frozenset()), V1BETA2, lambda o: o),
        ("1.37", V1, as_v1),
    ],
    ids=["1.36-gate-on-v1beta2", "1.37-v1"],
    indirect=["apiserver"],
)
"""Each release that serves DeviceTaintRules, at its path, with captures converted to it."""


@SERVING_VERSIONS
async def test_create_answers_as_captured_and_fills_time_added(
    client: aiohttp.ClientSession, path: str, convert: Any
) -> None:
    capture = fixture(CREATE)
    code, created = await call(client, "POST", path, json=convert(capture["request"]["body"]))

    assert code == capture["response"]["code"]
    assert comparable(created) == comparable(convert(capture["response"]["body"]))
    assert created["status"] == {}, "a new rule's status is empty, as captured"
    assert created["spec"]["taint"]["timeAdded"].endswith("Z"), "the server fills timeAdded"


@SERVING_VERSIONS
async def test_status_written_by_the_eviction_controller_reads_back_as_captured(
    client: aiohttp.ClientSession, path: str, convert: Any
) -> None:
    """kube-controller-manager writes the condition; the API server keeps it apart from spec."""
    _, created = await call(client, "POST", path, json=convert(fixture(CREATE)["request"]["body"]))
    captured = convert(fixture(GET)["response"]["body"])
    created["status"] = captured["status"]
    name = created["metadata"]["name"]
    code, _ = await call(client, "PUT", f"{path}/{name}/status", json=created)
    assert code == 200

    code, got = await call(client, "GET", f"{path}/{name}")

    assert (code, comparable(got)) == (fixture(GET)["response"]["code"], comparable(captured))
    assert got["spec"]["taint"]["timeAdded"] == created["spec"]["taint"]["timeAdded"]
    assert got["metadata"]["generation"] == 1, "a status write leaves the generation alone"


# (server as played, path) -> served? The 404 is the one every unserved resource gets.
SERVED = [
    ("1.35", V1BETA2, False),
    ("1.35", V1, False),
    ("1.36", V1BETA2, False),  # the gate is off by default
    ("1.36", V1, False),
    (("1.36", frozenset()), V1BETA2, True),
    (("1.36", frozenset()), V1, False),
    ("1.37", V1, True),
    ("1.37", V1BETA2, False),  # the beta version is off by default once GA
]


@pytest.mark.parametrize(
    ("apiserver", "path", "served"),
    SERVED,
    ids=[
        f"{p if isinstance(p, str) else p[0] + '-all-gates'}-{path.split('/')[3]}-{s}"
        for p, path, s in SERVED
    ],
    indirect=["apiserver"],
)
async def test_each_release_serves_the_version_it_really_does(
    client: aiohttp.ClientSession, path: str, served: bool
) -> None:
    code, body = await call(client, "GET", path)
    if served:
        assert (code, body["items"]) == (200, [])
    else:
        assert code == 404
        assert body["message"] == "the server could not find the requested resource"


@pytest.mark.parametrize(
    ("effect", "problem"),
    [
        ("NoSchedule", None),
        ("NoExecute", None),
        ("None", None),
        ("PreferNoSchedule", 'Unsupported value: "PreferNoSchedule"'),
        ("", "Required value"),
    ],
)
async def test_only_device_taint_effects_are_accepted(
    http: aiohttp.ClientSession, effect: str, problem: str | None
) -> None:
    body = fixture(CREATE)["request"]["body"]
    body["spec"]["taint"]["effect"] = effect
    code, answer = await call(http, "POST", V1BETA2, json=body)
    if problem is None:
        assert code == 201
    else:
        assert (code, answer["reason"]) == (422, "Invalid")
        assert problem in answer["details"]["causes"][0]["message"]


async def test_a_changed_taint_gets_a_new_time_and_an_unchanged_one_keeps_it(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    _, created = await call(http, "POST", V1BETA2, json=fixture(CREATE)["request"]["body"])
    name = created["metadata"]["name"]
    apiserver.mutate(
        "devicetaintrules",
        name,
        None,
        lambda o: o["spec"]["taint"].update(timeAdded="2020-01-01T00:00:00Z"),
    )
    _, current = await call(http, "GET", f"{V1BETA2}/{name}")
    relabelled = copy.deepcopy(current)
    relabelled["metadata"]["labels"] = {"team": "gpu"}
    relabelled["spec"]["taint"].pop("timeAdded")
    _, kept = await call(http, "PUT", f"{V1BETA2}/{name}", json=relabelled)
    stricter = copy.deepcopy(kept)
    stricter["spec"]["taint"].pop("timeAdded")
    stricter["spec"]["taint"]["effect"] = "NoExecute"
    _, changed = await call(http, "PUT", f"{V1BETA2}/{name}", json=stricter)

    assert kept["spec"]["taint"]["timeAdded"] == "2020-01-01T00:00:00Z"
    assert changed["spec"]["taint"]["timeAdded"] != "2020-01-01T00:00:00Z"
    assert changed["metadata"]["generation"] == 2


def test_taint_rules_without_device_taints_refuse_to_start_as_the_real_server_does() -> None:
    with pytest.raises(ValueError, match=r"DRADeviceTaintRules is enabled, but depends on"):
        APIServer(disabled_features=frozenset({"DRADeviceTaints"}))
