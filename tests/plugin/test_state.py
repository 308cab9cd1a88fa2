"""Prepare and unprepare against real-shaped claims and slices, with real files.

These tests drive the plugin's state directly (in-process, one event loop) with the
test API server holding claims and slices; the process-level tests in
``test_plugin_process.py`` then cover the same paths through the kubelet's sockets.
"""

from __future__ import annotations

import asyncio
import copy
import os
import pathlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from dra_driver.kube.client import KubeClient
from dra_driver.kube.resources import RESOURCE_SLICES
from dra_driver.kube.watch import list_watch
from dra_driver.plugin import slice_cache as slice_cache_module
from dra_driver.plugin.checkpoint import CheckpointFile
from dra_driver.plugin.locking import Serializer
from dra_driver.plugin.slice_cache import SliceCache
from dra_driver.plugin.state import ClaimRef, State
from tests.support import cdi_check, gvirtus, objects
from tests.support.apiserver import APIServer, Latency, fixture_object
from tests.support.objects import Config, Device, Result, gvirtus_config


@dataclass
class Node:
    state: State
    slices: SliceCache
    root: pathlib.Path

    @property
    def cdi(self) -> pathlib.Path:
        return self.root / "cdi"

    @property
    def claims(self) -> pathlib.Path:
        return self.root / "data" / "claims"

    @property
    def checkpoint(self) -> pathlib.Path:
        return self.root / "data" / "checkpoint.json"

    def spec(self, uid: str) -> dict[str, Any]:
        return cdi_check.validate(self.cdi / f"gvirtus.io-gpu_{uid}.json")

    def files(self) -> list[str]:
        own = {"serialize.lock", "checkpoint.json", "checkpoint.journal"}
        found = [p for p in self.root.rglob("*") if p.is_file() and p.name not in own]
        return sorted(str(p.relative_to(self.root)) for p in found)

    def recorded(self) -> dict[str, Any]:
        """The claims the checkpoint holds, as a restarted plugin reads them."""
        data = CheckpointFile(path=self.checkpoint, driver="gpu.gvirtus.io").read()
        return data.model_dump(by_alias=True)["claims"]


def build_state(
    kube: KubeClient | None, root: pathlib.Path, *, lock: bool = False, ready_wait: float = 10.0
) -> tuple[State, SliceCache]:
    (root / "data").mkdir(parents=True, exist_ok=True)
    slices = SliceCache(driver="gpu.gvirtus.io", kube=kube, sync_timeout=0.2)
    serializer = Serializer(lock_file=root / "data" / "serialize.lock" if lock else None)
    serializer.open()
    state = State(
        driver="gpu.gvirtus.io",
        kube=kube,
        slices=slices,
        serializer=serializer,
        checkpoint=CheckpointFile(path=root / "data" / "checkpoint.json", driver="gpu.gvirtus.io"),
        claims_dir=root / "data" / "claims",
        cdi_root=root / "cdi",
        ready_wait=ready_wait,
    )
    return state, slices


@pytest.fixture
async def kube(kubeconfig: pathlib.Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(kubeconfig=kubeconfig, component="test")
    yield client
    await client.close()


@pytest.fixture
async def node(kube: KubeClient, short_tmp: pathlib.Path) -> AsyncIterator[Node]:
    state, slices = build_state(kube, short_tmp / "node")
    watch = asyncio.create_task(
        list_watch(
            kube=kube,
            resource=RESOURCE_SLICES,
            consumer=slices,
            component="test",
            field_selector=slices.field_selector,
        )
    )
    await state.recover()
    yield Node(state, slices, short_tmp / "node")
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    state.serializer.close()


BACKEND_A = objects.backend_slice(
    pool="backend-node-a",
    devices=[Device("gpu-0", uuid="GPU-aaaa-0"), Device("gpu-1", port=10000, uuid="GPU-aaaa-1")],
)


def seed(
    apiserver: APIServer, *claims: dict[str, Any], slices: tuple[dict[str, Any], ...] = (BACKEND_A,)
) -> None:
    for item in slices:
        apiserver.put(item)
    for claim in claims:
        apiserver.put(claim)


def ref(claim: dict[str, Any]) -> ClaimRef:
    meta = claim["metadata"]
    return ClaimRef(namespace=meta["namespace"], uid=meta["uid"], name=meta["name"])


async def test_prepare_writes_frontend_config_cdi_spec_and_checkpoint(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-1")])
    seed(apiserver, claim)
    uid = claim["metadata"]["uid"]

    result = (await node.state.prepare([ref(claim)]))[uid]

    assert result.error == ""
    (device,) = result.devices
    assert (device.request, device.pool, device.device, device.share_id) == (
        "gpu",
        "backend-node-a",
        "gpu-1",
        None,
    )
    assert device.cdi_name == f"{uid}-gpu-1"
    properties = node.claims / uid / "0-gpu-1.json"
    assert gvirtus.parse(properties.read_bytes()) == gvirtus.FrontendEndpoint(
        "tcp/ip", "tcp", "10.0.0.5", 10000
    )
    spec = node.spec(uid)
    assert cdi_check.env_of(spec, f"{uid}-gpu-1") == {
        "GVIRTUS_CONFIG": "/etc/gvirtus/properties.json",
        "GVIRTUS_BACKEND": "10.0.0.5:10000",
        "GVIRTUS_GPU_UUID": "GPU-aaaa-1",
        "GVIRTUS_GPU_MODEL": "NVIDIA H100 80GB HBM3",
    }
    (mount,) = spec["devices"][0]["containerEdits"]["mounts"]
    assert mount == {
        "hostPath": str(properties),
        "containerPath": "/etc/gvirtus/properties.json",
        "options": ["ro", "nosuid", "nodev", "bind"],
    }
    assert list(node.recorded()) == [uid]


async def test_prepare_is_idempotent_and_answers_from_the_checkpoint(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    first = await node.state.prepare([ref(claim)])
    spec_path = node.cdi / f"gvirtus.io-gpu_{claim['metadata']['uid']}.json"
    spec_path.unlink()  # tmpfs after a reboot
    reads = len(apiserver.requests)
    apiserver.remove("resourceclaims", "c1", "gvirtus-demo")

    second = await node.state.prepare([ref(claim)])

    assert second == first
    assert spec_path.exists(), "prepare always rewrites the CDI spec"
    assert len(apiserver.requests) == reads, "an already prepared claim needs no API call"


async def test_every_claim_of_a_request_gets_an_answer(apiserver: APIServer, node: Node) -> None:
    good = objects.allocated_claim(name="good")
    missing = objects.allocated_claim(name="missing")
    pending = objects.unallocated_claim(name="pending")
    seed(apiserver, good, pending)

    results = await node.state.prepare([ref(good), ref(missing), ref(pending)])

    assert results[good["metadata"]["uid"]].error == ""
    assert "ResourceClaim gvirtus-demo/missing" in results[missing["metadata"]["uid"]].error
    assert "does not exist" in results[missing["metadata"]["uid"]].error
    assert "gvirtus-demo/pending" in results[pending["metadata"]["uid"]].error
    assert "not allocated" in results[pending["metadata"]["uid"]].error
    assert list(node.recorded()) == [good["metadata"]["uid"]]
    assert [p.name for p in node.claims.iterdir()] == [good["metadata"]["uid"]]


def bad_slice(**device: Any) -> dict[str, Any]:
    return objects.backend_slice(pool="backend-bad", devices=[Device("gpu-0", **device)])


@pytest.mark.parametrize(
    ("claim_args", "slices", "message"),
    [
        (
            {"results": [Result("backend-node-a", "gpu-9")]},
            (BACKEND_A,),
            "device backend-node-a/gpu-9 is not in pool backend-node-a of driver gpu.gvirtus.io: "
            "its backend left the pool",
        ),
        (
            {"results": [Result("no-such-pool", "gpu-0")]},
            (BACKEND_A,),
            "device no-such-pool/gpu-0: pool no-such-pool is not published by driver",
        ),
        (
            {"results": [Result("backend-bad", "gpu-0")]},
            (bad_slice(address="backend.example"),),
            "not a literal IPv4 address",
        ),
        (
            {"results": [Result("backend-bad", "gpu-0")]},
            (bad_slice(omit=("backendAddress",)),),
            "backendAddress must be a string IPv4 address, got None",
        ),
        (
            {"results": [Result("backend-bad", "gpu-0")]},
            (bad_slice(port=65510),),
            "backendPort 65510 is rejected by the GVirtuS frontend",
        ),
        (
            {"results": [Result("backend-bad", "gpu-0")]},
            (bad_slice(omit=("backendPort",)),),
            "backendPort must be an integer from 1 to 65535, got None",
        ),
        (
            {"configs": [Config(gvirtus_config(logLevl="debug"))]},
            (BACKEND_A,),
            "invalid opaque configuration from its claim: unknown field 'logLevl'",
        ),
        (
            {"configs": [Config(gvirtus_config(gvirtusHome="rel"), source="FromClass")]},
            (BACKEND_A,),
            "from its DeviceClass: gvirtusHome: must be an absolute path",
        ),
        (
            {
                "configs": [
                    Config(
                        {"apiVersion": "gpu.gvirtus.io/v2", "kind": "GVirtuSConfig"},
                        requests=("gpu",),
                    )
                ]
            },
            (BACKEND_A,),
            "from its claim for requests ['gpu']: apiVersion must be",
        ),
    ],
    ids=[
        "unknown-device",
        "unknown-pool",
        "hostname-address",
        "no-address",
        "port-in-frontend-gap",
        "no-port",
        "config-typo",
        "class-config-relative-home",
        "config-wrong-version",
    ],
)
async def test_claim_failures_name_the_claim_and_the_cause(
    apiserver: APIServer,
    node: Node,
    claim_args: dict[str, Any],
    slices: tuple[dict[str, Any], ...],
    message: str,
) -> None:
    claim = objects.allocated_claim(name="broken", **claim_args)
    seed(apiserver, claim, slices=slices)

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]

    assert result.devices == ()
    assert f"ResourceClaim gvirtus-demo/broken (uid {claim['metadata']['uid']})" in result.error
    assert message in result.error
    assert node.recorded() == {}
    assert not list(node.claims.iterdir())
    assert not list(node.cdi.iterdir())


async def test_replaced_claim_is_refused(apiserver: APIServer, node: Node) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    stale = ClaimRef(namespace="gvirtus-demo", uid=str(uuid.uuid4()), name="c1")

    result = (await node.state.prepare([stale]))[stale.uid]

    assert f"has a claim of that name with uid {claim['metadata']['uid']}" in result.error
    assert "deleted and created again" in result.error


async def test_api_failures_become_claim_errors(apiserver: APIServer, node: Node) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    # Both reads fail: the one from the watch cache, and the one from etcd after it.
    apiserver.fail_next("GET", "/resourceclaims/c1", code=503, message="etcd is sad", times=2)

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]

    assert "reading it from the API server failed: etcd is sad" in result.error
    retry = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]
    assert retry.error == ""


@pytest.mark.parametrize(
    ("cache_lag", "reads"),
    [(0.0, [{"resourceVersion": "0"}]), (3600.0, [{"resourceVersion": "0"}, {}])],
    ids=["cache-holds-the-claim", "cache-behind"],
)
async def test_the_claim_is_read_from_the_watch_cache_and_from_etcd_only_when_that_is_behind(
    apiserver: APIServer, node: Node, cache_lag: float, reads: list[dict[str, str]]
) -> None:
    apiserver.latency = Latency(cache_lag=cache_lag)
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]

    assert result.error == ""
    claim_reads = [r.query for r in apiserver.requests if r.path.endswith("/resourceclaims/c1")]
    assert claim_reads == reads


async def test_claim_config_wins_over_class_config_field_by_field(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(
        name="c1",
        results=[
            Result("backend-node-a", "gpu-0", request="train/a100"),
            Result("backend-node-a", "gpu-1", request="eval"),
        ],
        configs=[
            Config(gvirtus_config(logLevel="error"), source="FromClaim"),
            Config(
                gvirtus_config(logLevel="debug", gvirtusHome="/opt/gvirtus"), source="FromClass"
            ),
            Config(gvirtus_config(dumpStats=True), requests=("train",)),
            Config({"unrelated": True}, driver="gpu.example.com"),
        ],
    )
    seed(apiserver, claim)
    uid = claim["metadata"]["uid"]

    result = (await node.state.prepare([ref(claim)]))[uid]

    assert result.error == ""
    assert [d.request for d in result.devices] == ["train", "eval"], (
        "subrequests report their base request"
    )
    spec = node.spec(uid)
    train, evaluate = cdi_check.env_of(spec, f"{uid}-gpu-0"), cdi_check.env_of(spec, f"{uid}-gpu-1")
    assert (train["GVIRTUS_LOGLEVEL"], train["GVIRTUS_HOME"], train["GVIRTUS_DUMP_STATS"]) == (
        "40000",
        "/opt/gvirtus",
        "true",
    )
    assert (evaluate["GVIRTUS_LOGLEVEL"], evaluate["GVIRTUS_HOME"]) == ("40000", "/opt/gvirtus")
    assert "GVIRTUS_DUMP_STATS" not in evaluate


async def test_results_of_other_drivers_are_left_to_them(apiserver: APIServer, node: Node) -> None:
    claim = objects.allocated_claim(
        name="c1",
        results=[
            Result("backend-node-a", "gpu-0"),
            Result("worker-2", "gpu-0", driver="gpu.example.com"),
        ],
    )
    seed(apiserver, claim)

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]

    assert [(d.pool, d.device) for d in result.devices] == [("backend-node-a", "gpu-0")]


async def test_shared_device_gets_a_cdi_name_per_share(apiserver: APIServer, node: Node) -> None:
    shared = objects.backend_slice(pool="backend-node-b", devices=[Device("gpu-0")])
    a = fixture_object("02-shared-claim-a-allocated-get.json")
    b = fixture_object("02-shared-claim-b-allocated-get.json")
    seed(apiserver, a, b, slices=(shared,))

    results = await node.state.prepare([ref(a), ref(b)])

    names = {uid: r.devices[0].cdi_name for uid, r in results.items()}
    share_a = a["status"]["allocation"]["devices"]["results"][0]["shareID"]
    assert names[a["metadata"]["uid"]] == f"{a['metadata']['uid']}-gpu-0-{share_a}"
    assert results[a["metadata"]["uid"]].devices[0].share_id == share_a
    assert len(set(names.values())) == 2


async def test_unprepare_removes_everything_and_unknown_claims_succeed(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    await node.state.prepare([ref(claim)])
    apiserver.remove("resourceclaims", "c1", "gvirtus-demo")  # may already be gone
    unknown = ClaimRef(namespace="gvirtus-demo", uid=str(uuid.uuid4()), name="never-prepared")

    outcome = await node.state.unprepare([ref(claim), unknown])

    assert outcome == {claim["metadata"]["uid"]: "", unknown.uid: ""}
    assert node.recorded() == {}
    assert node.files() == [], "nothing but the checkpoint is left"


async def test_prepare_overtaken_by_unprepare_does_not_resurrect_the_claim(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    apiserver.fail_next("GET", "/resourceclaims/c1", code=0, delay=0.5)

    late = asyncio.create_task(node.state.prepare([ref(claim)]))
    await asyncio.sleep(0.2)
    assert await node.state.unprepare([ref(claim)]) == {claim["metadata"]["uid"]: ""}
    result = (await late)[claim["metadata"]["uid"]]

    assert "unprepared while this prepare was in flight" in result.error
    assert node.recorded() == {}
    assert node.files() == [], "nothing but the checkpoint is left"
    again = await node.state.prepare([ref(claim)])
    assert again[claim["metadata"]["uid"]].error == "", (
        "a prepare that starts later may prepare it again"
    )


async def test_prepare_past_the_kubelets_deadline_records_nothing(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    apiserver.fail_next("GET", "/resourceclaims/c1", code=0, delay=0.4)

    result = (await node.state.prepare([ref(claim)], timeout=0.2))[claim["metadata"]["uid"]]

    assert "the kubelet stopped waiting for this prepare" in result.error
    assert node.recorded() == {}
    assert node.files() == [], "nothing but the checkpoint is left"


async def test_failed_writes_fail_the_claim_and_keep_what_was_recorded(
    apiserver: APIServer, node: Node
) -> None:
    prepared, fresh = (
        objects.allocated_claim(name="prepared"),
        objects.allocated_claim(name="fresh"),
    )
    seed(apiserver, prepared, fresh)
    assert (await node.state.prepare([ref(prepared)]))[prepared["metadata"]["uid"]].error == ""
    shutil.rmtree(node.cdi)
    node.cdi.write_text("the CDI directory is gone")

    results = await node.state.prepare([ref(prepared), ref(fresh)])

    for claim in (prepared, fresh):
        assert "writing its files failed" in results[claim["metadata"]["uid"]].error
    assert list(node.recorded()) == [prepared["metadata"]["uid"]]
    assert [p.name for p in node.claims.iterdir()] == [prepared["metadata"]["uid"]]
    node.cdi.unlink()
    node.cdi.mkdir()
    results = await node.state.prepare([ref(prepared), ref(fresh)])
    assert all(r.error == "" for r in results.values())
    assert len(list(node.cdi.iterdir())) == 2


async def test_concurrent_prepares_all_land_in_one_consistent_checkpoint(
    apiserver: APIServer, node: Node
) -> None:
    claims = [
        objects.allocated_claim(name=f"c{i}", results=[Result("backend-node-a", f"gpu-{i % 2}")])
        for i in range(40)
    ]
    seed(apiserver, *claims)

    outcomes = await asyncio.gather(*(node.state.prepare([ref(c)]) for c in claims))

    assert all(r.error == "" for outcome in outcomes for r in outcome.values())
    assert sorted(node.recorded()) == sorted(c["metadata"]["uid"] for c in claims)
    assert len(list(node.cdi.iterdir())) == 40


async def test_cache_miss_reads_the_api_once_for_concurrent_callers(
    apiserver: APIServer, kube: KubeClient, short_tmp: pathlib.Path
) -> None:
    state, _ = build_state(kube, short_tmp / "cold")  # no watch: the cache never syncs
    await state.recover()
    claims = [objects.allocated_claim(name=f"c{i}") for i in range(5)]
    seed(apiserver, *claims)
    misses = slice_cache_module.MISSES.labels("found")._value.get()

    outcomes = await asyncio.gather(*(state.prepare([ref(c)]) for c in claims))

    assert all(r.error == "" for outcome in outcomes for r in outcome.values())
    slice_lists = [r for r in apiserver.requests if r.path.endswith("/resourceslices")]
    assert len(slice_lists) == 1
    assert slice_lists[0].query == {"fieldSelector": "spec.driver=gpu.gvirtus.io"}
    assert slice_cache_module.MISSES.labels("found")._value.get() == misses + 5


async def test_recovery_removes_debris_and_rebuilds_lost_files(
    apiserver: APIServer, kube: KubeClient, node: Node
) -> None:
    kept = objects.allocated_claim(name="kept")
    seed(apiserver, kept)
    await node.state.prepare([ref(kept)])
    uid = kept["metadata"]["uid"]
    before = {p: p.read_bytes() for p in node.root.rglob("*.json")}
    orphan = str(uuid.uuid4())
    (node.claims / orphan).mkdir()
    (node.claims / orphan / "0-gpu-0.json").write_text("{}")
    (node.cdi / f"gvirtus.io-gpu_{orphan}.json").write_text("{}")
    (node.cdi / f".gvirtus.io-gpu_{uid}.json.tmp-0a1b2c3d").write_text("torn")
    (node.root / "data" / ".checkpoint.json.tmp-deadbeef").write_text("torn")
    (node.cdi / "other-vendor.json").write_text("{}")
    (node.cdi / f"gvirtus.io-gpu_{uid}.json").unlink()  # the reboot emptied /var/run/cdi
    (node.claims / uid / "0-gpu-0.json").write_text("damaged")

    restarted, _ = build_state(kube, node.root)
    await restarted.recover()

    assert {
        p: p.read_bytes() for p in node.root.rglob("*.json") if p.name != "other-vendor.json"
    } == before
    assert (node.cdi / "other-vendor.json").exists(), (
        "files of other vendors are not ours to remove"
    )
    assert not any("tmp-" in p.name for p in node.root.rglob("*"))


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"apiVersion": "v1", "kind": "ConfigMap"}'],
    ids=["corrupt", "foreign"],
)
async def test_unusable_checkpoint_fails_claims_loudly_until_an_admin_moves_it(
    apiserver: APIServer, node: Node, content: bytes
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    node.checkpoint.write_bytes(content)

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]
    unprepared = await node.state.unprepare([ref(claim)])

    assert str(node.checkpoint) in result.error
    assert "move it aside" in result.error
    assert str(node.checkpoint) in unprepared[claim["metadata"]["uid"]]
    assert node.checkpoint.read_bytes() == content, "the file is never replaced"
    assert not list(node.claims.iterdir())
    node.checkpoint.rename(node.checkpoint.with_suffix(".broken"))
    assert (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]].error == ""


async def test_file_lock_serializes_two_instances(short_tmp: pathlib.Path) -> None:
    first, second = (
        Serializer(lock_file=short_tmp / "lock"),
        Serializer(lock_file=short_tmp / "lock"),
    )
    first.open()
    second.open()
    order: list[str] = []
    try:
        async with first.hold():
            waiting = asyncio.create_task(_hold(second, order))
            await asyncio.sleep(0.1)
            order.append("first done")
        await waiting
    finally:
        first.close()
        second.close()
    assert order == ["first done", "second got it"]


async def _hold(serializer: Serializer, order: list[str]) -> None:
    async with serializer.hold():
        order.append("second got it")


# -- start-up: calls that arrive before the plugin is ready ------------------------------


async def settle() -> None:
    """Let every task that can make progress run until it waits for something."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_prepare_during_start_up_waits_for_recovery_then_the_api_client(
    apiserver: APIServer, kube: KubeClient, short_tmp: pathlib.Path
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    state, _ = build_state(None, short_tmp / "node")

    prepare = asyncio.create_task(state.prepare([ref(claim)]))
    await settle()
    assert not prepare.done(), "waits for the recovery of on-disk state"
    await state.recover()
    await settle()
    assert not prepare.done(), "recovered, and still waiting for the API client"
    state.connect(kube)

    result = (await prepare)[claim["metadata"]["uid"]]
    assert result.error == ""
    assert [d.device for d in result.devices] == ["gpu-0"]
    state.serializer.close()


async def test_unprepare_and_prepared_claims_need_only_the_recovery(
    apiserver: APIServer, node: Node, short_tmp: pathlib.Path
) -> None:
    prepared, other = objects.allocated_claim(name="c1"), objects.allocated_claim(name="c2")
    seed(apiserver, prepared, other)
    before = (await node.state.prepare([ref(prepared), ref(other)]))[prepared["metadata"]["uid"]]
    restarted, _ = build_state(None, node.root)  # same node, no API client (yet)

    again = asyncio.create_task(restarted.prepare([ref(prepared)]))
    unprepare = asyncio.create_task(restarted.unprepare([ref(other)]))
    await settle()
    assert not again.done() and not unprepare.done(), "both wait for the recovery"
    await restarted.recover()

    assert (await again)[prepared["metadata"]["uid"]] == before
    assert await unprepare == {other["metadata"]["uid"]: ""}
    assert list(node.recorded()) == [prepared["metadata"]["uid"]]
    restarted.serializer.close()


@pytest.mark.parametrize(
    ("recovered", "call", "ready_wait", "timeout", "missing"),
    [
        (False, "prepare", 0.05, None, "the recovery of on-disk state"),
        (True, "prepare", 0.05, None, "the API client"),
        (False, "unprepare", 0.05, None, "the recovery of on-disk state"),
        (True, "prepare", 10.0, 0.05, "the API client"),
        (False, "unprepare", 10.0, 0.05, "the recovery of on-disk state"),
    ],
    ids=[
        "prepare-before-recovery",
        "prepare-without-api-client",
        "unprepare-before-recovery",
        "prepare-bounded-by-its-deadline",
        "unprepare-bounded-by-its-deadline",
    ],
)
async def test_a_start_up_that_does_not_finish_in_time_fails_the_call_naming_what_is_missing(
    apiserver: APIServer,
    short_tmp: pathlib.Path,
    recovered: bool,
    call: str,
    ready_wait: float,
    timeout: float | None,
    missing: str,
) -> None:
    claim = objects.allocated_claim(name="c1")
    seed(apiserver, claim)
    uid = claim["metadata"]["uid"]
    state, _ = build_state(None, short_tmp / "node", ready_wait=ready_wait)
    if recovered:
        await state.recover()
    before = sorted(p.name for p in (short_tmp / "node").rglob("*"))

    if call == "prepare":
        error = (await state.prepare([ref(claim)], timeout=timeout))[uid].error
    else:
        error = (await state.unprepare([ref(claim)], timeout=timeout))[uid]

    assert f"ResourceClaim gvirtus-demo/c1 (uid {uid})" in error
    assert f"the plugin is still starting: {missing} not ready after" in error
    assert "the kubelet will retry" in error
    assert sorted(p.name for p in (short_tmp / "node").rglob("*")) == before, "disk untouched"
    state.serializer.close()


# -- devices whose backend cannot serve ---------------------------------------------------

UNHEALTHY = ("gvirtus.io/unhealthy", "backend-down", "NoSchedule")
OVERLOADED = ("gvirtus.io/overloaded", "connections", "NoSchedule")


def tainted_slice(*taints: tuple[str, str, str], generation: int = 1) -> dict[str, Any]:
    return objects.backend_slice(
        pool="backend-node-a",
        generation=generation,
        devices=[Device("gpu-0", uuid="GPU-aaaa-0", taints=taints), Device("gpu-1", port=10000)],
    )


async def published(node: Node, check: Any) -> None:
    """Wait until the slice cache's view of backend-node-a/gpu-0 satisfies ``check``."""
    async with asyncio.timeout(10):
        while not check(node.slices.lookup(pool="backend-node-a", device="gpu-0")):
            await node.slices.changes.wait(1.0)


@pytest.mark.parametrize(
    ("taints", "tolerations", "refused"),
    [
        ((UNHEALTHY,), (), True),
        ((("gvirtus.io/unhealthy", "backend-down", "NoExecute"),), (), True),
        ((OVERLOADED,), (), False),
        ((("example.com/maintenance", "", "NoSchedule"),), (), False),
        ((UNHEALTHY,), ({"key": "gvirtus.io/unhealthy", "operator": "Exists"},), False),
        (
            (UNHEALTHY,),
            ({"key": "gvirtus.io/unhealthy", "operator": "Equal", "value": "backend-down"},),
            False,
        ),
        ((UNHEALTHY,), ({"key": "gvirtus.io/unhealthy", "value": "backend-down"},), False),
        (
            (UNHEALTHY,),
            ({"key": "gvirtus.io/unhealthy", "operator": "Equal", "value": "backend-wedged"},),
            True,
        ),
        (
            (UNHEALTHY,),
            ({"key": "gvirtus.io/unhealthy", "operator": "Exists", "effect": "NoExecute"},),
            True,
        ),
        (
            (UNHEALTHY,),
            ({"key": "gvirtus.io/unhealthy", "operator": "Exists", "effect": "NoSchedule"},),
            False,
        ),
        ((UNHEALTHY,), ({"operator": "Exists"},), False),
        ((UNHEALTHY,), ({"key": "gvirtus.io/overloaded", "operator": "Exists"},), True),
        ((OVERLOADED, UNHEALTHY), ({"key": "gvirtus.io/overloaded", "operator": "Exists"},), True),
    ],
    ids=[
        "unhealthy",
        "unhealthy-noexecute",
        "overloaded-is-policy",
        "admin-key-is-policy",
        "tolerated-by-exists",
        "tolerated-by-equal",
        "equal-is-the-default-operator",
        "other-value-not-tolerated",
        "other-effect-not-tolerated",
        "same-effect-tolerated",
        "empty-key-tolerates-everything",
        "other-key-not-tolerated",
        "second-taint-not-tolerated",
    ],
)
async def test_a_device_whose_backend_is_unhealthy_is_refused_unless_tolerated(
    apiserver: APIServer,
    node: Node,
    taints: tuple[tuple[str, str, str], ...],
    tolerations: tuple[dict[str, str], ...],
    refused: bool,
) -> None:
    claim = objects.allocated_claim(
        name="c1", results=[Result("backend-node-a", "gpu-0", tolerations=tolerations)]
    )
    seed(apiserver, claim, slices=(tainted_slice(*taints),))
    uid = claim["metadata"]["uid"]

    result = (await node.state.prepare([ref(claim)]))[uid]

    if refused:
        assert result.devices == ()
        assert f"ResourceClaim gvirtus-demo/c1 (uid {uid})" in result.error
        assert (
            "device backend-node-a/gpu-0 (backend 10.0.0.5:9999 on node backend-node-a) "
            "is unhealthy: " in result.error
        )
        assert "the kubelet will retry" in result.error
        assert node.recorded() == {}
        assert not list(node.cdi.iterdir())
    else:
        assert result.error == ""
        assert list(node.recorded()) == [uid]


async def test_refusal_names_the_reason_and_ends_when_the_backend_recovers(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-0")])
    wedged = ("gvirtus.io/unhealthy", "backend-wedged", "NoExecute")
    seed(apiserver, claim, slices=(tainted_slice(wedged),))
    uid = claim["metadata"]["uid"]

    refused = (await node.state.prepare([ref(claim)]))[uid]
    apiserver.put(tainted_slice(generation=2))
    await published(node, lambda info: info is not None and not info.taints)
    retried = (await node.state.prepare([ref(claim)]))[uid]

    assert "is unhealthy: backend-wedged (taint gvirtus.io/unhealthy, effect NoExecute)" in (
        refused.error
    )
    assert retried.error == ""


@pytest.mark.parametrize(
    ("after", "message"),
    [
        (
            objects.backend_slice(
                pool="backend-node-a", generation=2, devices=[Device("gpu-1", port=10000)]
            ),
            "device backend-node-a/gpu-0 (backend 10.0.0.5:9999 on node backend-node-a) is not "
            "in pool backend-node-a of driver gpu.gvirtus.io: its backend left the pool",
        ),
        (
            None,
            "device backend-node-a/gpu-0 (backend 10.0.0.5:9999 on node backend-node-a): "
            "pool backend-node-a is not published by driver gpu.gvirtus.io: "
            "its backend node is gone",
        ),
    ],
    ids=["device-left-its-pool", "pool-withdrawn"],
)
async def test_a_device_that_left_its_pool_is_refused_naming_its_last_backend(
    apiserver: APIServer, node: Node, after: dict[str, Any] | None, message: str
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-0")])
    seed(apiserver, claim)
    await published(node, lambda info: info is not None)
    if after is None:
        apiserver.remove("resourceslices", BACKEND_A["metadata"]["name"])
    else:
        apiserver.put(after)
    await published(node, lambda info: info is None)

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]

    assert message in result.error
    assert "the kubelet will retry" in result.error
    assert node.recorded() == {}


async def test_a_prepared_claim_keeps_its_answer_when_its_backend_turns_unhealthy(
    apiserver: APIServer, node: Node
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-0")])
    seed(apiserver, claim)
    uid = claim["metadata"]["uid"]
    before = (await node.state.prepare([ref(claim)]))[uid]
    apiserver.put(tainted_slice(UNHEALTHY, generation=2))
    await published(node, lambda info: info is not None and info.taints)

    again = (await node.state.prepare([ref(claim)]))[uid]

    assert before.error == ""
    assert again == before, "a running pod's kubelet re-prepares it after a restart"


@pytest.mark.parametrize(
    ("tolerated", "error"),
    [
        (True, ""),
        (
            False,
            "device backend-node-c/gpu-0 (backend 10.0.0.7:9999 on node backend-node-c) is "
            "unhealthy: backend-unreachable (taint gvirtus.io/unhealthy, effect NoSchedule)",
        ),
    ],
    ids=["as-captured", "toleration-removed"],
)
async def test_the_captured_tolerated_allocation_gets_its_tainted_device(
    apiserver: APIServer, node: Node, tolerated: bool, error: str
) -> None:
    claim = copy.deepcopy(fixture_object("03-taint-toleration-claim-allocated-get.json"))
    claim["metadata"].pop("resourceVersion", None)
    if not tolerated:
        del claim["status"]["allocation"]["devices"]["results"][0]["tolerations"]
    tainted = copy.deepcopy(fixture_object("03-taint-resourceslice-get.json"))
    tainted["metadata"].pop("resourceVersion", None)
    seed(apiserver, claim, slices=(tainted,))

    result = (await node.state.prepare([ref(claim)]))[claim["metadata"]["uid"]]

    assert (result.error == "") if tolerated else (error in result.error)
    assert len(result.devices) == (1 if tolerated else 0)


# -- hostile input: claim UIDs that are paths, forged slices ------------------------------

OUTSIDE_FILES = ("keep.txt", "sub/keep.txt")


def outside_tree(root: pathlib.Path) -> pathlib.Path:
    """A directory outside the claims directory holding files nothing may remove."""
    folder = root / "outside"
    for name in OUTSIDE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("precious")
    return folder


def snapshot(node: Node) -> dict[str, bytes]:
    """The data directory outside claims/, the checkpoint aside (``node.recorded()``)."""
    data = node.root / "data"
    return {
        str(p.relative_to(data)): p.read_bytes()
        for p in data.rglob("*")
        if p.is_file()
        and not p.is_relative_to(node.claims)
        and p.name not in ("checkpoint.json", "checkpoint.journal")
    }


@pytest.mark.parametrize(
    "uid",
    [
        "..",
        "../..",
        "../../..",
        "/",
        "OUTSIDE",  # replaced by the absolute path of the directory outside
        "./",
        "",
        "a\x00b",
        "0" * 5000,
        "6F1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D",  # Kubernetes writes lowercase
        "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d/..",
        "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d\n",
    ],
    ids=[
        "dotdot",
        "dotdot-dotdot",
        "three-up",
        "root",
        "absolute",
        "dot",
        "empty",
        "nul",
        "very-long",
        "uppercase",
        "uid-then-dotdot",
        "trailing-newline",
    ],
)
async def test_hostile_claim_uids_touch_nothing_outside_the_claims_directory(
    apiserver: APIServer, node: Node, uid: str
) -> None:
    prepared = objects.allocated_claim(name="c1")
    seed(apiserver, prepared)
    assert (await node.state.prepare([ref(prepared)]))[ref(prepared).uid].error == ""
    outside = outside_tree(node.root)
    uid = str(outside) if uid == "OUTSIDE" else uid
    before = snapshot(node)
    hostile = ClaimRef(namespace="gvirtus-demo", uid=uid, name="c1")

    unprepared = await node.state.unprepare([hostile, ref(prepared)])
    again = await node.state.prepare([hostile])

    for error in (unprepared[uid], again[uid].error):
        assert "is not a Kubernetes UID" in error
        assert "lowercase RFC 4122 UUID" in error, "the message says what a UID looks like"
        assert "nothing was touched" in error
        assert len(error) < 600, "a long UID is not repeated whole"
    assert unprepared[ref(prepared).uid] == "", "the other claim of the call is unprepared"
    assert not (node.claims / ref(prepared).uid).exists()
    assert node.recorded() == {}
    assert snapshot(node) == before, "the data directory outside claims/ is untouched"
    assert all((outside / name).read_text() == "precious" for name in OUTSIDE_FILES)
    assert node.claims.is_dir()


async def test_a_symlink_planted_in_the_claims_directory_is_never_followed(
    apiserver: APIServer, node: Node
) -> None:
    outside = outside_tree(node.root)
    planted = [str(uuid.uuid4()) for _ in range(3)]
    for uid in planted:
        (node.claims / uid).symlink_to(outside, target_is_directory=True)
    (node.cdi / f"gvirtus.io-gpu_{planted[0]}.json").symlink_to(outside / "keep.txt")
    claim = objects.allocated_claim(name="c1", uid=planted[1])
    seed(apiserver, claim)
    before = snapshot(node)

    unprepared = await node.state.unprepare([ClaimRef("gvirtus-demo", planted[0], "x")])
    prepared = (await node.state.prepare([ref(claim)]))[planted[1]]
    fresh, _ = build_state(node.state.kube, node.root)
    await fresh.recover()  # planted[2] is debris to a restarted plugin

    assert unprepared == {planted[0]: ""}
    assert "leads outside" in prepared.error
    assert prepared.devices == ()
    assert sorted(p.name for p in outside.rglob("*")) == ["keep.txt", "keep.txt", "sub"]
    assert all((outside / name).read_text() == "precious" for name in OUTSIDE_FILES)
    assert list(node.claims.iterdir()) == [], "the links themselves are removed"
    assert list(node.cdi.iterdir()) == []
    assert snapshot(node) == before
    fresh.serializer.close()


async def test_the_lock_file_is_the_plugins_own(short_tmp: pathlib.Path) -> None:
    fresh, inherited = short_tmp / "fresh.lock", short_tmp / "inherited.lock"
    inherited.touch(mode=0o666)
    inherited.chmod(0o666)  # as older versions left it
    previous = os.umask(0)
    try:
        serializers = [Serializer(lock_file=path) for path in (fresh, inherited)]
        for serializer in serializers:
            serializer.open()
    finally:
        os.umask(previous)
    for serializer in serializers:
        serializer.close()
    assert [oct(p.stat().st_mode & 0o777) for p in (fresh, inherited)] == ["0o600", "0o600"]


FORGED_ADDRESS = "10.66.6.6"


def forged_slice(*, placement: dict[str, Any], name: str, owner: str = "") -> dict[str, Any]:
    """A slice as an attacker with some identity's credentials could create it."""
    forged = objects.backend_slice(
        pool="backend-node-a",
        generation=100,
        name=name,
        devices=[
            Device("gpu-0", address=FORGED_ADDRESS, port=7777, uuid="GPU-aaaa-0"),
            Device("gpu-7", address=FORGED_ADDRESS, port=7777),
        ],
    )
    del forged["spec"]["nodeSelector"]
    forged["spec"].update(placement)
    forged["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "someone-else"}
    if owner:
        forged["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": owner, "uid": str(uuid.uuid4())}
        ]
    return forged


async def seen_after(apiserver: APIServer, node: Node) -> None:
    """Return once the slice watch delivered every change made so far (in order)."""
    apiserver.put(objects.backend_slice(pool="sentinel", devices=[Device("gpu-0")]))
    async with asyncio.timeout(10):
        while not node.slices.has_pool("sentinel"):
            await node.slices.changes.wait(0.1)


def with_recorded_backend(claim: dict[str, Any], address: str, port: int) -> dict[str, Any]:
    """The claim with the controller's ``status.devices`` entry for its first device."""
    result = claim["status"]["allocation"]["devices"]["results"][0]
    claim["status"]["devices"] = [
        {
            "driver": "gpu.gvirtus.io",
            "pool": result["pool"],
            "device": result["device"],
            "conditions": [
                {
                    "type": "gvirtus.io/BackendReady",
                    "status": "True",
                    "reason": "BackendReady",
                    "message": "GPU healthy",
                    "lastTransitionTime": "2026-11-23T01:13:09Z",
                }
            ],
            "data": {
                "backendNode": result["pool"],
                "backendAddress": address,
                "backendPort": port,
                "uuid": "GPU-aaaa-0",
                "model": "NVIDIA H100 80GB HBM3",
            },
        }
    ]
    return claim


@pytest.mark.parametrize(
    ("placement", "owner", "recorded"),
    [
        ({"nodeName": "worker-1"}, "worker-1", False),
        ({"nodeName": "worker-1"}, "worker-1", True),
        ({"allNodes": True}, "", False),
        ({"allNodes": True}, "backend-node-a", True),
    ],
    ids=[
        "own-node-name",
        "own-node-name-claim-status-written",
        "all-nodes",
        "all-nodes-claim-status-written",
    ],
)
async def test_forged_slices_never_change_what_a_pod_is_given(
    apiserver: APIServer,
    node: Node,
    placement: dict[str, Any],
    owner: str,
    recorded: bool,
) -> None:
    claim = objects.allocated_claim(name="c1", results=[Result("backend-node-a", "gpu-0")])
    if recorded:
        with_recorded_backend(claim, "10.0.0.5", 9999)
    extra = objects.allocated_claim(name="c2", results=[Result("backend-node-a", "gpu-7")])
    seed(apiserver, claim, extra)
    apiserver.put(forged_slice(placement=placement, name="forged", owner=owner))
    await seen_after(apiserver, node)

    results = await node.state.prepare([ref(claim), ref(extra)])

    (device,) = results[ref(claim).uid].devices
    assert (device.address, device.port) == ("10.0.0.5", 9999)
    properties = node.claims / ref(claim).uid / "0-gpu-0.json"
    assert FORGED_ADDRESS.encode() not in properties.read_bytes()
    assert FORGED_ADDRESS not in node.spec(ref(claim).uid).__repr__()
    assert "is not in pool backend-node-a" in results[ref(extra).uid].error
    assert list(node.recorded()) == [ref(claim).uid]


async def test_a_slice_that_disagrees_with_the_claims_recorded_backend_is_refused(
    apiserver: APIServer, node: Node
) -> None:
    # Shaped like the controller's (nodeSelector), newer, other owner and labels: the
    # plugin cannot tell it from a real one, but the claim's status names the backend.
    claim = with_recorded_backend(objects.allocated_claim(name="c1"), "10.0.0.5", 9999)
    seed(apiserver, claim)
    forged = forged_slice(placement={}, name="forged", owner="attacker")
    forged["spec"]["nodeSelector"] = copy.deepcopy(BACKEND_A["spec"]["nodeSelector"])
    apiserver.put(forged)
    for _ in range(200):
        found = node.slices.lookup(pool="backend-node-a", device="gpu-0")
        if found is not None and found.attributes.get("backendAddress") == FORGED_ADDRESS:
            break
        await asyncio.sleep(0.01)

    result = (await node.state.prepare([ref(claim)]))[ref(claim).uid]

    assert result.devices == ()
    assert "ResourceClaim gvirtus-demo/c1" in result.error
    assert f"its ResourceSlice names backend {FORGED_ADDRESS}:7777" in result.error
    assert "status.devices (written by the controller) names backend 10.0.0.5:9999" in (
        result.error
    )
    assert node.recorded() == {}
    assert list(node.claims.iterdir()) == [] and list(node.cdi.iterdir()) == []

    apiserver.remove("resourceslices", "forged")  # an admin deletes it
    for _ in range(200):
        found = node.slices.lookup(pool="backend-node-a", device="gpu-0")
        if found is not None and found.attributes.get("backendAddress") == "10.0.0.5":
            break
        await asyncio.sleep(0.01)
    again = (await node.state.prepare([ref(claim)]))[ref(claim).uid]
    assert again.error == ""
    assert (again.devices[0].address, again.devices[0].port) == ("10.0.0.5", 9999)
