"""The test API server answers like the Kubernetes 1.36 API server in the captures.

Each test replays a captured request (object names and bodies from the fixture,
resourceVersions rebased onto this server) and compares the answer with what the
real server returned.
"""

from __future__ import annotations

import asyncio
import copy
import json
import pathlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import objects
from tests.support.apiserver import APIServer, Latency, fixture, fixture_object

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/gvirtus-demo/resourceclaims"


async def call(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


def captured(name: str) -> tuple[int, Any]:
    capture = fixture(name)
    return capture["response"]["code"], capture["response"]["body"]


async def create_slice_a(http: aiohttp.ClientSession) -> dict[str, Any]:
    body = fixture("01-resourceslice-create.json")["request"]["body"]
    code, created = await call(http, "POST", SLICES, json=body)
    assert code == 201
    return created


async def test_missing_claim_is_the_real_404(http: aiohttp.ClientSession) -> None:
    got = await call(http, "GET", f"{CLAIMS}/does-not-exist")
    assert got == captured("05-error-404-get-missing-claim.json")


async def test_create_of_existing_name_is_the_real_409(http: aiohttp.ClientSession) -> None:
    await create_slice_a(http)
    body = fixture("05-error-409-create-slice-already-exists.json")["request"]["body"]
    assert await call(http, "POST", SLICES, json=body) == captured(
        "05-error-409-create-slice-already-exists.json"
    )


async def test_stale_resource_version_is_the_real_conflict(http: aiohttp.ClientSession) -> None:
    created = await create_slice_a(http)
    stale = created["metadata"]["resourceVersion"]
    bump = fixture("05-ok-200-put-slice-generation-bump.json")["request"]["body"]
    bump["metadata"]["resourceVersion"] = stale
    code, updated = await call(http, "PUT", f"{SLICES}/gpu.gvirtus.io-backend-node-a", json=bump)
    assert code == 200
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(stale)
    replay = fixture("05-error-409-put-slice-stale-resourceversion.json")["request"]["body"]
    replay["metadata"]["resourceVersion"] = stale
    got = await call(http, "PUT", f"{SLICES}/gpu.gvirtus.io-backend-node-a", json=replay)
    assert got == captured("05-error-409-put-slice-stale-resourceversion.json")


async def test_changing_driver_and_pool_is_the_real_422(http: aiohttp.ClientSession) -> None:
    created = await create_slice_a(http)
    body = fixture("05-error-422-update-slice-immutable-driver-and-pool.json")["request"]["body"]
    body["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    got = await call(http, "PUT", f"{SLICES}/gpu.gvirtus.io-backend-node-a", json=body)
    assert got == captured("05-error-422-update-slice-immutable-driver-and-pool.json")


async def test_too_many_devices_is_the_real_422(http: aiohttp.ClientSession) -> None:
    body = fixture("05-error-422-create-slice-129-devices.json")["request"]["body"]
    assert await call(http, "POST", SLICES, json=body) == captured(
        "05-error-422-create-slice-129-devices.json"
    )


async def test_truncated_json_is_a_400_naming_the_type(http: aiohttp.ClientSession) -> None:
    raw = fixture("05-error-400-create-slice-truncated-json.json")["request"]["bodyRaw"]
    code, body = await call(
        http, "POST", SLICES, data=raw, headers={"Content-Type": "application/json"}
    )
    real_code, real = captured("05-error-400-create-slice-truncated-json.json")
    assert (code, body["reason"]) == (real_code, real["reason"])
    prefix = (
        "the object provided is unrecognized (must be of type ResourceSlice): "
        "couldn't get version/kind; json parse error"
    )
    assert body["message"].startswith(prefix)
    assert real["message"].startswith(prefix)


async def test_delete_returns_the_object_with_a_new_resource_version(
    http: aiohttp.ClientSession,
) -> None:
    created = await create_slice_a(http)
    code, deleted = await call(http, "DELETE", f"{SLICES}/gpu.gvirtus.io-backend-node-a")
    real_code, real = captured("07-watch-delete-response.json")
    assert (code, deleted["kind"], deleted["apiVersion"]) == (
        real_code,
        real["kind"],
        real["apiVersion"],
    )
    assert int(deleted["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert (await call(http, "GET", f"{SLICES}/gpu.gvirtus.io-backend-node-a"))[0] == 404


async def test_expired_exact_list_is_the_real_410(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    await create_slice_a(http)
    apiserver.compact()
    got = await call(
        http, "GET", SLICES, params={"resourceVersion": "1", "resourceVersionMatch": "Exact"}
    )
    assert got == captured("07-list-410-expired-resourceversion-exact.json")


async def read_events(
    http: aiohttp.ClientSession, path: str, params: dict[str, str], count: int
) -> list[dict[str, Any]]:
    events = []
    async with http.get(path, params=params) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Transfer-Encoding"] == "chunked"
        while len(events) < count:
            line = await asyncio.wait_for(response.content.readline(), 10)
            if not line:
                break
            events.append(json.loads(line))
    return events


async def test_watch_from_an_expired_version_is_one_410_event(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    await create_slice_a(http)
    apiserver.compact()
    params = {
        "watch": "1",
        "resourceVersion": "1",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "5",
    }
    events = await read_events(http, SLICES, params, count=2)
    real = fixture("07-watch-410-too-old-resourceversion.json")["response"]["events"]
    assert len(events) == len(real) == 1
    got, want = events[0], real[0]
    assert got["type"] == want["type"] == "ERROR"
    assert {k: v for k, v in got["object"].items() if k != "message"} == {
        k: v for k, v in want["object"].items() if k != "message"
    }
    assert got["object"]["message"].startswith("too old resource version: 1 (")


async def test_watch_sees_add_modify_delete_and_bookmarks_shaped_like_the_capture(
    http: aiohttp.ClientSession, apiserver: APIServer
) -> None:
    _, listed = await call(http, "GET", SLICES)
    capture = fixture("07-watch-resourceslices.json")
    params = {
        **capture["request"]["query"],
        "resourceVersion": listed["metadata"]["resourceVersion"],
        "timeoutSeconds": "3",
    }
    watching = asyncio.create_task(read_events(http, SLICES, params, count=4))
    await asyncio.sleep(0.1)
    real = [e["event"] for e in capture["events"]]
    created = copy.deepcopy(real[0]["object"])
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"):
        created["metadata"].pop(key)
    _, stored = await call(http, "POST", SLICES, json=created)
    modified = copy.deepcopy(real[1]["object"])
    modified["metadata"] = {
        "name": stored["metadata"]["name"],
        "resourceVersion": stored["metadata"]["resourceVersion"],
    }
    await call(http, "PUT", f"{SLICES}/{stored['metadata']['name']}", json=modified)
    await call(http, "DELETE", f"{SLICES}/{stored['metadata']['name']}")
    events = await watching
    assert (
        [e["type"] for e in events]
        == [e["type"] for e in real[:4]]
        == ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    )
    assert events[1]["object"]["spec"] == real[1]["object"]["spec"]
    assert events[2]["object"]["spec"] == real[2]["object"]["spec"]
    bookmark, real_bookmark = events[3]["object"], real[3]["object"]
    assert bookmark.keys() == real_bookmark.keys()
    assert bookmark["spec"] == real_bookmark["spec"]
    assert list(bookmark["metadata"]) == ["resourceVersion"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)


async def test_send_initial_events_ends_with_the_annotated_bookmark(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    await create_slice_a(http)
    capture = fixture("07-watch-sendinitialevents.json")
    events = await read_events(http, SLICES, capture["request"]["query"], count=2)
    real = capture["response"]["events"]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert real[-1]["type"] == "BOOKMARK"
    assert (
        events[-1]["object"]["metadata"]["annotations"]
        == real[-1]["object"]["metadata"]["annotations"]
    )


async def test_field_selector_on_driver_filters_like_the_capture(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    for item in fixture_object("07-list-full.json")["items"]:
        apiserver.put(item, plural="resourceslices")
    capture = fixture("07-list-fieldselector-driver.json")
    code, listed = await call(http, "GET", SLICES, params=capture["request"]["query"])
    assert code == 200
    names = [i["metadata"]["name"] for i in listed["items"]]
    assert names == sorted(i["metadata"]["name"] for i in capture["response"]["body"]["items"])


@pytest.mark.parametrize(
    ("selector", "code"),
    [
        ("spec.driver=gpu.gvirtus.io", 200),
        ("spec.nodeName=worker-2", 200),
        ("spec.pool.name=x", 400),
        ("nonsense", 400),
    ],
    ids=["driver", "node-name", "unsupported-field", "malformed"],
)
async def test_field_selectors_the_real_server_does_not_support_are_400(
    http: aiohttp.ClientSession, selector: str, code: int
) -> None:
    got, body = await call(http, "GET", SLICES, params={"fieldSelector": selector})
    assert got == code
    if code == 400:
        assert body["reason"] == "BadRequest"


async def test_watch_reports_objects_leaving_a_label_selector_as_deleted(
    http: aiohttp.ClientSession,
) -> None:
    node = fixture_object("09-node-get.json")
    node["metadata"] = {"name": "n1", "labels": {"gvirtus.io/frontend.allowed": "true"}}
    _, listed = await call(http, "GET", "/api/v1/nodes")
    params = {
        "watch": "1",
        "resourceVersion": listed["metadata"]["resourceVersion"],
        "labelSelector": "gvirtus.io/frontend.allowed in (true)",
        "timeoutSeconds": "3",
    }
    watching = asyncio.create_task(read_events(http, "/api/v1/nodes", params, count=2))
    await asyncio.sleep(0.1)
    await call(http, "POST", "/api/v1/nodes", json=node)
    patch = {"metadata": {"labels": {"gvirtus.io/frontend.allowed": "false"}}}
    code, _ = await call(
        http,
        "PATCH",
        "/api/v1/nodes/n1",
        data=json.dumps(patch),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert code == 200
    assert [e["type"] for e in await watching] == ["ADDED", "DELETED"]


async def test_requests_without_the_token_are_401(apiserver: APIServer) -> None:
    context = ssl.create_default_context(cadata=apiserver.ca_pem.decode())
    connector = aiohttp.TCPConnector(ssl=context)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(f"{apiserver.url}{SLICES}") as response,
    ):
        assert response.status == 401


async def test_status_is_reset_on_create_and_written_through_the_subresource(
    http: aiohttp.ClientSession,
) -> None:
    claim = fixture_object("01-resourceclaim-allocated-get.json")
    body = {
        "apiVersion": claim["apiVersion"],
        "kind": claim["kind"],
        "metadata": {"name": "c"},
        "spec": claim["spec"],
        "status": claim["status"],
    }
    code, created = await call(http, "POST", CLAIMS, json=body)
    assert code == 201 and "status" not in created
    created["status"] = claim["status"]
    code, updated = await call(http, "PUT", f"{CLAIMS}/c", json=created)
    assert code == 200 and "status" not in updated, "the main resource ignores status"
    code, updated = await call(http, "PUT", f"{CLAIMS}/c/status", json=created)
    assert code == 200 and updated["status"] == claim["status"]
    code, body = await call(http, "PUT", f"{CLAIMS}/c", json={**updated, "spec": {"devices": {}}})
    assert code == 422 and body["reason"] == "Invalid"


async def test_noop_update_writes_nothing(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    created = await create_slice_a(http)
    code, same = await call(http, "PUT", f"{SLICES}/{created['metadata']['name']}", json=created)
    assert code == 200
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_finalizers_delay_deletion(apiserver: APIServer, http: aiohttp.ClientSession) -> None:
    apiserver.put(fixture_object("01-resourceclaim-allocated-get.json"))
    path = f"{CLAIMS}/gvirtus-pod-gpu-nwzm2"
    code, marked = await call(http, "DELETE", path)
    assert code == 200 and marked["metadata"]["deletionTimestamp"]
    patch = {"metadata": {"finalizers": None}}
    await call(
        http,
        "PATCH",
        path,
        data=json.dumps(patch),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert (await call(http, "GET", path))[0] == 404


async def test_delete_preconditions_conflict(http: aiohttp.ClientSession) -> None:
    created = await create_slice_a(http)
    options = {"preconditions": {"uid": "not-the-uid"}}
    code, body = await call(http, "DELETE", f"{SLICES}/{created['metadata']['name']}", json=options)
    assert (code, body["reason"]) == (409, "Conflict")
    assert "Precondition failed: UID in precondition: not-the-uid" in body["message"]


async def test_injected_faults_answer_then_clear(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    apiserver.fail_next("GET", "/resourceclaims/", code=503, times=1)
    assert (await call(http, "GET", f"{CLAIMS}/x"))[0] == 503
    assert (await call(http, "GET", f"{CLAIMS}/x"))[0] == 404


LEASES = "/apis/coordination.k8s.io/v1/namespaces/gvirtus-system/leases"
LEASE = {
    "apiVersion": "coordination.k8s.io/v1",
    "kind": "Lease",
    "metadata": {"name": "slow"},
    "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
}


@pytest.mark.parametrize(
    ("delay", "answer_delay", "stored_when_the_client_gives_up"),
    [(30.0, 0.0, False), (0.0, 30.0, True)],
    ids=["slow-server", "slow-answer"],
)
async def test_a_slow_request_of_one_client_changes_state_when_its_fault_says(
    apiserver: APIServer,
    http: aiohttp.ClientSession,
    delay: float,
    answer_delay: float,
    stored_when_the_client_gives_up: bool,
) -> None:
    apiserver.fail_next(
        "POST",
        "/leases",
        code=0,
        delay=delay,
        answer_delay=answer_delay,
        user_agent=r"^slow-client$",
    )
    slow = asyncio.create_task(
        call(http, "POST", LEASES, json=LEASE, headers={"User-Agent": "slow-client"})
    )
    while not any(r.user_agent == "slow-client" for r in apiserver.requests):
        await asyncio.sleep(0.01)

    other = await call(http, "GET", f"{LEASES}/slow")  # another client is not held up
    assert other[0] == (200 if stored_when_the_client_gives_up else 404)
    assert not slow.done(), "the slow client still waits for its answer"
    slow.cancel()
    await asyncio.gather(slow, return_exceptions=True)
    stored = apiserver.get("leases", "slow", "gvirtus-system")
    assert (stored is not None) == stored_when_the_client_gives_up


@pytest.fixture
def gates_off(short_tmp: Any) -> Any:
    def start(*gates: str) -> APIServer:
        return APIServer(
            tls_dir=short_tmp / "gated-tls", disabled_features=frozenset(gates)
        ).start()

    return start


async def gated_session(server: APIServer) -> aiohttp.ClientSession:
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    return aiohttp.ClientSession(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        connector=aiohttp.TCPConnector(ssl=context),
    )


@pytest.mark.parametrize(
    ("gates", "create", "existing"),
    [
        (
            ("DRAConsumableCapacity",),
            "06-consumablecapacity-off-create-slice.json",
            "06-consumablecapacity-off-update-existing-slice.json",
        ),
        (
            ("DRADeviceTaints", "DRADeviceTaintRules"),  # as captured: one needs the other
            "06-devicetaints-off-create-slice-with-taint.json",
            "06-devicetaints-off-get-existing-tainted-slice.json",
        ),
    ],
    ids=["consumable-capacity", "device-taints"],
)
async def test_gate_off_drops_fields_on_create_and_keeps_them_where_in_use(
    gates_off: Any, gates: tuple[str, ...], create: str, existing: str
) -> None:
    server = gates_off(*gates)
    try:
        stored = fixture_object(existing)
        stored["metadata"] = {"name": stored["metadata"]["name"]}
        server.put(stored)
        async with await gated_session(server) as http:
            code, created = await call(
                http, "POST", SLICES, json=fixture(create)["request"]["body"]
            )
            assert (code, created["spec"]) == (201, fixture(create)["response"]["body"]["spec"])
            _, current = await call(http, "GET", f"{SLICES}/{stored['metadata']['name']}")
            current["spec"]["pool"]["generation"] += 1
            code, updated = await call(
                http, "PUT", f"{SLICES}/{stored['metadata']['name']}", json=current
            )
        assert code == 200
        assert updated["spec"]["devices"] == stored["spec"]["devices"], (
            "fields in use survive updates"
        )
    finally:
        server.stop()


async def test_dry_run_answers_what_would_be_stored_and_stores_nothing(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    body = fixture("03-taint-resourceslice-create.json")["request"]["body"]
    code, would = await call(http, "POST", SLICES, params={"dryRun": "All"}, json=body)
    assert code == 201
    assert would["spec"]["devices"][0]["taints"][0]["timeAdded"], "the server fills timeAdded"
    assert apiserver.list("resourceslices") == []
    assert apiserver.writes() == []
    assert (await call(http, "POST", SLICES, params={"dryRun": "Some"}, json=body))[0] == 400


async def test_invalid_request_policy_is_the_real_422(http: aiohttp.ClientSession) -> None:
    capture = "05-error-422-create-slice-requestpolicy-invalid-range.json"
    assert await call(http, "POST", SLICES, json=fixture(capture)["request"]["body"]) == captured(
        capture
    )
    capture = "05-error-422-create-slice-requestpolicy-without-allowmultiple.json"
    assert await call(http, "POST", SLICES, json=fixture(capture)["request"]["body"]) == captured(
        capture
    )


def test_a_server_without_a_tls_folder_leaves_no_private_key_behind() -> None:
    before = set(pathlib.Path(tempfile.gettempdir()).glob("apiserver-tls-*"))
    server = APIServer().start()
    try:
        during = set(pathlib.Path(tempfile.gettempdir()).glob("apiserver-tls-*"))
    finally:
        server.stop()

    assert during == before


@pytest.fixture
async def slow_storage(short_tmp: Any) -> AsyncIterator[tuple[APIServer, aiohttp.ClientSession]]:
    """A server whose storage takes long enough that ordering shows, never timing."""
    server = APIServer(
        tls_dir=short_tmp / "slow-tls", latency=Latency(read=0.001, write=30.0)
    ).start()
    context = ssl.create_default_context(cadata=server.ca_pem.decode())
    async with aiohttp.ClientSession(
        base_url=server.url,
        headers={"Authorization": f"Bearer {server.token}"},
        connector=aiohttp.TCPConnector(ssl=context, limit=0),
    ) as session:
        yield server, session
    await asyncio.sleep(0.05)
    server.stop()  # drops what it still holds


async def test_a_linearizable_read_waits_for_the_write_being_persisted(
    slow_storage: tuple[APIServer, aiohttp.ClientSession],
) -> None:
    server, http = slow_storage
    server.put(objects.allocated_claim(name="c1"))
    writing = asyncio.create_task(
        call(
            http,
            "PATCH",
            f"{CLAIMS}/c1",
            json={"metadata": {"labels": {"a": "b"}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
    )
    while not server.requests:  # recorded, it holds the storage loop in the same step
        await asyncio.sleep(0.01)
    linearizable = asyncio.create_task(call(http, "GET", f"{CLAIMS}/c1"))
    while len(server.requests) < 2:
        await asyncio.sleep(0.01)

    cached = await call(http, "GET", f"{CLAIMS}/c1", params={"resourceVersion": "0"})

    assert cached[0] == 200, "a read from the cache does not wait for the storage"
    assert not writing.done(), "the write is still being persisted"
    assert not linearizable.done(), "the quorum read waits for it"
    for task in (writing, linearizable):
        task.cancel()
    await asyncio.gather(writing, linearizable, return_exceptions=True)


async def test_the_watch_cache_shows_objects_as_they_were_a_lag_ago(
    apiserver: APIServer, http: aiohttp.ClientSession
) -> None:
    apiserver.put(objects.allocated_claim(name="c1"))
    cached = {"resourceVersion": "0"}
    assert (await call(http, "GET", f"{CLAIMS}/c1", params=cached))[0] == 200

    apiserver.latency = Latency(cache_lag=3600.0)
    apiserver.put(objects.allocated_claim(name="c2"))

    assert (await call(http, "GET", f"{CLAIMS}/c2", params=cached))[0] == 404
    assert (await call(http, "GET", f"{CLAIMS}/c2"))[0] == 200, "etcd has it"
