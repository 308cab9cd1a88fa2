"""Prepare and unprepare: from an allocated claim to files a container runtime uses.

Prepare, per claim: read the ResourceClaim, check its UID and allocation, take this
driver's results, resolve each device to its GVirtuS backend from the published
slices, apply the opaque configuration, then (serialized with every other prepare
and unprepare on the node) write one ``properties.json`` per device and the claim's
CDI spec, and record the claim in the checkpoint. The answer for an already prepared
claim comes from the checkpoint, and its files are rewritten (the CDI directory is
tmpfs and is empty after a reboot).

Invariants, kept under the serialization lock:

* files are written before the checkpoint names the claim, and the checkpoint drops
  a claim before its files are removed; so after a crash anywhere, files of claims
  the checkpoint does not list are debris, removed by :meth:`State.recover`;
* a prepare the kubelet gave up on never records its claim: past the call's deadline
  (the kubelet's is 45 s) it refuses to, in whichever plugin process it runs, and an
  unprepare of the claim in this process while it was in flight also stops it;
* every claim gets an answer: failures are per claim and name the claim and cause;
* no call touches the disk before :meth:`State.recover` finished, and a call that
  arrives during start-up waits for what it needs (see :mod:`.readiness`): recovery
  for every call, the API client only for claims the checkpoint does not answer;
* a claim UID becomes a path only once it is a real UID, and every path stays under
  its root (:mod:`.paths`);
* file work never runs on the event loop: it runs in a worker thread while the
  serialization lock is held (:meth:`Serializer.run`), so the health stream and other
  calls are answered meanwhile. The checkpoint in memory is replaced, never changed
  in place, so the event loop can read it while a worker writes the next one.

What is durable before the kubelet gets an answer: the checkpoint only (one flush of
its journal, see :mod:`.checkpoint`). ``properties.json`` files and CDI specs are written
atomically but not flushed: after a power cut, recovery rewrites any that are
missing or damaged from the checkpoint, and the CDI directory is a tmpfs anyway.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge

from dra_driver import files, gvirtus
from dra_driver.device import BACKEND_ADDRESS, BACKEND_NODE, BACKEND_PORT, DeviceError
from dra_driver.kube import errors as kube_errors
from dra_driver.kube.resources import RESOURCE_CLAIMS
from dra_driver.models import ConfigValidationError, GVirtuSConfig, merge_configs, parse_config
from dra_driver.plugin import cdi, paths, taints
from dra_driver.plugin.allocation import (
    ConfigEntry,
    DeviceKey,
    RecordedBackend,
    Result,
    allocation_of,
    recorded_backends,
    uid_of,
)
from dra_driver.plugin.checkpoint import (
    CheckpointData,
    CheckpointError,
    CheckpointFile,
    PreparedClaim,
    PreparedDevice,
)
from dra_driver.plugin.faults import crash_point, hold_point
from dra_driver.plugin.locking import Serializer
from dra_driver.plugin.readiness import READY_WAIT, NotReadyError, Part, Readiness
from dra_driver.plugin.slice_cache import DeviceInfo, SliceCache

if TYPE_CHECKING:
    from dra_driver.kube.client import KubeClient

log = logging.getLogger(__name__)

PREPARED_CLAIMS = Gauge("gvirtus_dra_prepared_claims", "Claims prepared on this node.")

KUBELET_CALL_TIMEOUT = 45.0
"""Seconds the kubelet waits for a DRA call; the deadline when a call carries none."""

MOUNT_OPTIONS = ("ro", "nosuid", "nodev", "bind")


@dataclass(frozen=True)
class ClaimRef:
    """A claim as the kubelet names it."""

    namespace: str
    uid: str
    name: str

    def __str__(self) -> str:
        uid = self.uid if paths.is_uid(self.uid) else paths.shown(self.uid)
        return f"ResourceClaim {self.namespace[:63]}/{self.name[:253]} (uid {uid})"


@dataclass(frozen=True)
class PrepareResult:
    """Devices of a prepared claim, or the reason it could not be prepared."""

    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class ClaimError(Exception):
    """One claim cannot be prepared; the message names the claim and the cause."""


class State:
    """Prepared claims on this node: the checkpoint and the files it accounts for.

    ``kube`` may come later, through :meth:`connect`; until then prepares of claims
    the checkpoint does not know wait for it.
    """

    def __init__(
        self,
        *,
        driver: str,
        kube: KubeClient | None = None,
        slices: SliceCache,
        serializer: Serializer,
        checkpoint: CheckpointFile,
        claims_dir: pathlib.Path,
        cdi_root: pathlib.Path,
        clock: Callable[[], float] = time.time,
        ready_wait: float = READY_WAIT,
    ) -> None:
        self.driver = driver
        self.slices = slices
        self.serializer = serializer
        self.checkpoint = checkpoint
        self.claims_dir = claims_dir
        self.cdi_root = cdi_root
        self.clock = clock
        self.ready_wait = ready_wait
        self.readiness = Readiness()
        self._kube: KubeClient | None = None
        self._data: CheckpointData | None = None
        """The checkpoint as last read or written; replaced whole, never changed in place."""
        self._problem: str | None = None
        self._disk = threading.Lock()
        """Held by whichever worker thread reads or writes the checkpoint file."""
        self._unprepared_at: dict[str, float] = {}
        if kube is not None:
            self.connect(kube)

    def connect(self, kube: KubeClient) -> None:
        """Use ``kube`` from now on (here and in the slice cache); waiting prepares go on."""
        self._kube = kube
        self.slices.connect(kube)
        self.readiness.mark(Part.API)

    @property
    def kube(self) -> KubeClient:
        """The API client; only used after :meth:`connect` (prepares wait for it)."""
        if self._kube is None:
            raise RuntimeError("the API client is not connected yet")
        return self._kube

    async def _until_ready(self, parts: tuple[Part, ...], *, deadline: float) -> None:
        """Wait for ``parts``, at most :attr:`ready_wait` and never past ``deadline``.

        Raises:
            NotReadyError: naming what is still missing.
        """
        missing = self.readiness.missing(parts)
        if not missing:
            return
        log.info("call waits for start-up: %s", " and ".join(p.value for p in missing))
        limit = min(self.ready_wait, deadline - time.monotonic())
        await self.readiness.wait(missing, timeout=limit)

    # -- the checkpoint in memory ---------------------------------------------------

    def _load(self) -> CheckpointData:
        """The checkpoint, re-read when another process replaced it (blocking; worker thread).

        Raises:
            CheckpointError: the file cannot be used.
        """
        data = self._data
        if data is None or self.checkpoint.changed():
            try:
                data = self.checkpoint.read()
            except CheckpointError as exc:
                self._data, self._problem = None, str(exc)
                raise
            self._publish(data)
        return data

    def _save(self, data: CheckpointData) -> None:
        """Write ``data`` durably, then make it the checkpoint in memory (worker thread)."""
        self.checkpoint.write(data)
        self._publish(data)

    def _record(self, data: CheckpointData, changes: dict[str, PreparedClaim | None]) -> None:
        """Make ``data`` durable by recording ``changes``, then publish it (worker thread)."""
        self.checkpoint.record(data, changes)
        self._publish(data)

    def _publish(self, data: CheckpointData) -> None:
        self._data, self._problem = data, None
        PREPARED_CLAIMS.set(len(data.claims))

    def _refresh(self) -> None:
        """Re-read a checkpoint another process replaced, unless a writer is busy."""
        if not self._disk.acquire(blocking=False):
            return  # a prepare or unprepare is writing it; what memory holds will do
        try:
            self._load()
        except CheckpointError:
            pass
        finally:
            self._disk.release()

    async def prepared_devices(self) -> list[PreparedDevice]:
        """Every device prepared on the node (by this process or a sibling).

        Never waits for a prepare or unprepare in progress: it answers from memory
        then, so the health stream keeps flowing during a long write.
        """
        await asyncio.to_thread(self._refresh)
        data = self._data
        return [d for claim in data.claims.values() for d in claim.devices] if data else []

    async def checkpoint_problem(self) -> str | None:
        """Why the checkpoint is unusable, or None when it is fine."""
        await asyncio.to_thread(self._refresh)
        return self._problem

    # -- prepare ----------------------------------------------------------------------

    async def prepare(
        self, refs: Sequence[ClaimRef], *, timeout: float | None = None
    ) -> dict[str, PrepareResult]:
        """Prepare every claim; the result has one entry per claim UID.

        ``timeout`` is what is left of the caller's deadline (the kubelet's 45 s when
        unknown); a claim not recorded by then is not recorded at all.
        """
        started = time.monotonic()
        deadline = started + (KUBELET_CALL_TIMEOUT if timeout is None else timeout)
        refs = list({ref.uid: ref for ref in refs}.values())
        try:
            await self._until_ready((Part.RECOVERED,), deadline=deadline)
        except NotReadyError as exc:
            return {r.uid: PrepareResult(error=f"{r}: {exc}") for r in refs}
        refs, invalid = _valid(refs)
        known = self._known_uids()
        plans = await self._plans([r for r in refs if r.uid not in known], deadline=deadline)
        results = await self.serializer.run(
            lambda: self._commit(refs=refs, plans=plans, started=started, deadline=deadline)
        )
        return {**{uid: PrepareResult(error=e) for uid, e in invalid.items()}, **results}

    async def _plans(
        self, refs: list[ClaimRef], *, deadline: float
    ) -> dict[str, PreparedClaim | ClaimError]:
        """Plans of the claims the checkpoint does not answer, once the API client is up."""
        if not refs:
            return {}
        try:
            await self._until_ready((Part.API,), deadline=deadline)
        except NotReadyError as exc:
            return {r.uid: ClaimError(f"{r}: {exc}") for r in refs}
        plans = await asyncio.gather(*(self._plan(r) for r in refs))
        return dict(zip([r.uid for r in refs], plans, strict=True))

    def _known_uids(self) -> set[str]:
        """Claims the checkpoint in memory lists (a hint: the commit re-checks on disk)."""
        data = self._data
        return set(data.claims) if data is not None else set()

    def _commit(
        self,
        *,
        refs: list[ClaimRef],
        plans: dict[str, PreparedClaim | ClaimError],
        started: float,
        deadline: float,
    ) -> dict[str, PrepareResult]:
        """Write the claims' files, then record them durably (worker thread, lock held)."""
        with self._disk:
            try:
                data = self._load()
            except CheckpointError as exc:
                return {r.uid: PrepareResult(error=f"{r}: {exc}") for r in refs}
            claims = dict(data.claims)
            results: dict[str, PrepareResult] = {}
            added: list[ClaimRef] = []
            for ref in refs:
                try:
                    entry = self._entry_for(
                        ref=ref,
                        plan=plans.get(ref.uid),
                        claims=claims,
                        started=started,
                        deadline=deadline,
                    )
                    self._write_files(ref.uid, entry)
                except ClaimError as exc:
                    results[ref.uid] = PrepareResult(error=str(exc))
                    continue
                except (OSError, paths.PathError) as exc:
                    results[ref.uid] = PrepareResult(
                        error=f"{ref}: writing its files failed: {exc}"
                    )
                    if ref.uid not in claims:  # a recorded claim keeps what it has
                        self._remove_files(ref.uid, quiet=True)
                    continue
                if ref.uid not in claims:
                    claims[ref.uid] = entry
                    added.append(ref)
                results[ref.uid] = PrepareResult(devices=tuple(entry.devices))
                if len(results) == 1:
                    hold_point("prepare:writing")
            if added:
                crash_point("prepare:files-written")
                try:
                    self._record(
                        data.model_copy(update={"claims": claims}),
                        {ref.uid: claims[ref.uid] for ref in added},
                    )
                except OSError as exc:
                    for ref in added:
                        self._remove_files(ref.uid, quiet=True)
                        results[ref.uid] = PrepareResult(
                            error=f"{ref}: recording it in the checkpoint failed: {exc}"
                        )
                crash_point("prepare:checkpointed")
            return results

    def _entry_for(
        self,
        *,
        ref: ClaimRef,
        plan: PreparedClaim | ClaimError | None,
        claims: dict[str, PreparedClaim],
        started: float,
        deadline: float,
    ) -> PreparedClaim:
        entry = claims.get(ref.uid)
        if entry is not None:
            return entry
        if isinstance(plan, ClaimError):
            raise plan
        if time.monotonic() > deadline:
            raise ClaimError(
                f"{ref}: the kubelet stopped waiting for this prepare (its deadline passed); "
                "not recording the claim, the kubelet will ask again"
            )
        if self._unprepared_at.get(ref.uid, float("-inf")) >= started:
            raise ClaimError(
                f"{ref}: it was unprepared while this prepare was in flight; not preparing it again"
            )
        if plan is None:
            raise ClaimError(
                f"{ref}: it was unprepared by another plugin instance meanwhile; retry"
            )
        return plan

    async def _plan(self, ref: ClaimRef) -> PreparedClaim | ClaimError:
        """Everything prepare needs to know about a claim, read without the lock."""
        try:
            claim = await self._read_claim(ref)
            allocation = allocation_of(claim)
            if allocation is None:
                raise ClaimError(f"{ref}: it is not allocated")
            results = [r for r in allocation.results if r.driver == self.driver]
            configs = self._configs(ref, allocation.configs)
            recorded = recorded_backends(claim, driver=self.driver)
            devices = [await self._prepare_device(ref, r, configs, recorded) for r in results]
        except ClaimError as exc:
            return exc
        if not devices:
            log.warning("claim has no devices of this driver", extra={"claim": str(ref)})
        return PreparedClaim(
            namespace=ref.namespace, name=ref.name, prepared_at=self.clock(), devices=devices
        )

    async def _read_claim(self, ref: ClaimRef) -> dict[str, Any]:
        """The claim, read from the API server's cache when that copy will do.

        The kubelet read the claim a moment ago and found it allocated and reserved
        for the pod, so the watch cache almost always holds that version: reading it
        there costs the server no etcd read and does not queue behind the writes
        that land on the claim at this very moment (the controller's status, without
        binding conditions). A cached copy that is missing, of another UID, or not
        allocated is read again from etcd before anything is concluded.
        """
        try:
            claim = await self.kube.get(
                RESOURCE_CLAIMS, ref.name, namespace=ref.namespace, cached=True
            )
        except kube_errors.NotFoundError:
            claim = {}
        except kube_errors.KubeError:
            claim = {}
        if uid_of(claim) == ref.uid and allocation_of(claim) is not None:
            return claim
        try:
            claim = await self.kube.get(RESOURCE_CLAIMS, ref.name, namespace=ref.namespace)
        except kube_errors.NotFoundError as exc:
            raise ClaimError(f"{ref}: it does not exist (any more)") from exc
        except kube_errors.KubeError as exc:
            raise ClaimError(
                f"{ref}: reading it from the API server failed: {exc.message}"
            ) from exc
        if uid_of(claim) != ref.uid:
            raise ClaimError(
                f"{ref}: the API server has a claim of that name with uid {uid_of(claim)}; "
                "the claim was deleted and created again"
            )
        return claim

    def _configs(
        self, ref: ClaimRef, entries: Sequence[ConfigEntry]
    ) -> list[tuple[tuple[str, ...], GVirtuSConfig]]:
        """This driver's configurations, class entries before claim entries (claim wins)."""
        ours = [e for e in entries if e.driver == self.driver]
        ordered = sorted(ours, key=lambda e: 0 if e.source == "FromClass" else 1)
        parsed = []
        for entry in ordered:
            try:
                config = parse_config(entry.parameters)
            except ConfigValidationError as exc:
                where = "DeviceClass" if entry.source == "FromClass" else "claim"
                scope = f" for requests {list(entry.requests)}" if entry.requests else ""
                raise ClaimError(
                    f"{ref}: invalid opaque configuration from its {where}{scope}: {exc}"
                ) from exc
            parsed.append((entry.requests, config))
        return parsed

    async def _prepare_device(
        self,
        ref: ClaimRef,
        result: Result,
        configs: list[tuple[tuple[str, ...], GVirtuSConfig]],
        recorded: dict[DeviceKey, RecordedBackend],
    ) -> PreparedDevice:
        where = f"{result.pool}/{result.device}"
        try:
            info = await self.slices.resolve(pool=result.pool, device=result.device)
        except kube_errors.KubeError as exc:
            raise ClaimError(f"{ref}: looking up device {where} failed: {exc.message}") from exc
        if info is None:
            raise ClaimError(f"{ref}: {self._absence(pool=result.pool, device=result.device)}")
        taint = taints.refusing(info.taints, result.tolerations)
        if taint is not None:
            raise ClaimError(
                f"{ref}: device {where} ({_backend(info)}) is unhealthy: "
                f"{taint.value or 'no reason given'} (taint {taint.key}, effect {taint.effect}); "
                "not starting a container whose GVirtuS frontend would hang on it, "
                "the kubelet will retry"
            )
        try:
            gpu = info.gpu()
            endpoint = gvirtus.parse_endpoint(address=gpu.address, port=gpu.port)
        except (DeviceError, gvirtus.EndpointError) as exc:
            raise ClaimError(f"{ref}: device {where}: {exc}") from exc
        status = recorded.get((result.pool, result.device, result.share_id or ""))
        if status is not None and (status.address, status.port) != (
            str(endpoint.address),
            endpoint.port,
        ):
            raise ClaimError(
                f"{ref}: device {where}: its ResourceSlice names backend "
                f"{endpoint.address}:{endpoint.port}, but the claim's status.devices (written "
                f"by the controller) names backend {status}; refusing a device whose slice "
                "disagrees with the claim (a forged ResourceSlice, or a backend that moved "
                "a moment ago); the kubelet will retry"
            )
        base_request = result.request.split("/")[0]
        applicable = [
            c
            for requests, c in configs
            if not requests or {result.request, base_request} & set(requests)
        ]
        return PreparedDevice(
            request=base_request,
            pool=result.pool,
            device=result.device,
            share_id=result.share_id,
            cdi_name=cdi.device_name(
                claim_uid=ref.uid, device=result.device, share_id=result.share_id
            ),
            address=str(endpoint.address),
            port=endpoint.port,
            uuid=gpu.uuid,
            model=gpu.model,
            env=merge_configs(applicable),
        )

    def _absence(self, *, pool: str, device: str) -> str:
        """Why a device is not published, naming its backend when it was seen before."""
        seen = self.slices.last_seen(pool=pool, device=device)
        backend = f" ({_backend(seen)})" if seen is not None else ""
        if self.slices.has_pool(pool):
            return (
                f"device {pool}/{device}{backend} is not in pool {pool} of driver "
                f"{self.driver}: its backend left the pool (down or removed); "
                "the kubelet will retry"
            )
        return (
            f"device {pool}/{device}{backend}: pool {pool} is not published by driver "
            f"{self.driver}: its backend node is gone or unreachable; the kubelet will retry"
        )

    # -- unprepare --------------------------------------------------------------------

    async def unprepare(
        self, refs: Sequence[ClaimRef], *, timeout: float | None = None
    ) -> dict[str, str]:
        """Unprepare every claim; map claim UID to an error, empty when it succeeded.

        ``timeout`` is what is left of the caller's deadline (the kubelet's 45 s when
        unknown); it bounds only the wait for start-up, which unprepare needs no API for.
        """
        refs = list({ref.uid: ref for ref in refs}.values())
        deadline = time.monotonic() + (KUBELET_CALL_TIMEOUT if timeout is None else timeout)
        try:
            await self._until_ready((Part.RECOVERED,), deadline=deadline)
        except NotReadyError as exc:
            return {r.uid: f"{r}: {exc}" for r in refs}
        refs, invalid = _valid(refs)
        outcome = await self.serializer.run(lambda: self._drop(refs))
        return {**invalid, **outcome}

    def _drop(self, refs: list[ClaimRef]) -> dict[str, str]:
        """Drop the claims from the checkpoint, then remove their files (worker thread)."""
        with self._disk:
            try:
                data = self._load()
            except CheckpointError as exc:
                return {r.uid: f"{r}: {exc}" for r in refs}
            self._remember_unprepares(refs)
            dropped = {r.uid for r in refs} & set(data.claims)
            if dropped:  # unknown claims leave nothing to record
                claims = {uid: c for uid, c in data.claims.items() if uid not in dropped}
                try:
                    self._record(data.model_copy(update={"claims": claims}), dict.fromkeys(dropped))
                except OSError as exc:
                    return {
                        r.uid: f"{r}: recording the unprepare in the checkpoint failed: {exc}"
                        for r in refs
                    }
            crash_point("unprepare:checkpointed")
            outcome = {}
            for ref in refs:
                try:
                    self._remove_files(ref.uid)
                    outcome[ref.uid] = ""
                except (OSError, paths.PathError) as exc:
                    outcome[ref.uid] = f"{ref}: removing its files failed: {exc}"
            return outcome

    def _remember_unprepares(self, refs: Sequence[ClaimRef]) -> None:
        """Note when claims were unprepared, for as long as a prepare could still run."""
        now = time.monotonic()
        horizon = now - KUBELET_CALL_TIMEOUT
        self._unprepared_at = {u: t for u, t in self._unprepared_at.items() if t >= horizon}
        self._unprepared_at.update((ref.uid, now) for ref in refs)

    # -- files ------------------------------------------------------------------------

    def _claim_dir(self, claim_uid: str) -> pathlib.Path:
        """``<claims dir>/<uid>``, for a real UID and never outside the claims directory.

        Raises:
            PathError: the UID is not one, or the path leads elsewhere.
        """
        return paths.inside(self.claims_dir, self.claims_dir / paths.check_uid(claim_uid))

    def _spec_path(self, claim_uid: str) -> pathlib.Path:
        """The claim's CDI spec, for a real UID and never outside the CDI root."""
        spec = cdi.spec_path(cdi_root=self.cdi_root, claim_uid=paths.check_uid(claim_uid))
        return paths.inside(self.cdi_root, spec)

    def _properties_path(self, claim_uid: str, index: int, device: PreparedDevice) -> pathlib.Path:
        return self.claims_dir / claim_uid / f"{index}-{device.device}.json"

    def _render(
        self, claim_uid: str, entry: PreparedClaim
    ) -> tuple[dict[pathlib.Path, bytes], bytes]:
        """The properties files and the CDI spec of a prepared claim."""
        properties: dict[pathlib.Path, bytes] = {}
        devices = []
        for index, device in enumerate(entry.devices):
            path = self._properties_path(claim_uid, index, device)
            endpoint = gvirtus.parse_endpoint(address=device.address, port=device.port)
            properties[path] = gvirtus.render_properties(endpoint)
            devices.append(_cdi_device(device, path))
        return properties, cdi.render(devices) if devices else b""

    def _write_files(self, claim_uid: str, entry: PreparedClaim) -> None:
        """Write the claim's files atomically, not durably: recovery rebuilds them.

        Raises:
            OSError: a write failed. PathError: a path would leave its root.
        """
        folder = self._claim_dir(claim_uid)
        properties, spec = self._render(claim_uid, entry)
        folder.mkdir(mode=0o755, exist_ok=True)
        for path, content in properties.items():
            files.atomic_write(paths.inside(self.claims_dir, path), content)
        if spec:
            files.atomic_write(self._spec_path(claim_uid), spec)

    def _remove_files(self, claim_uid: str, *, quiet: bool = False) -> None:
        """Remove the claim's CDI spec and its directory; both are tried either way.

        Raises:
            OSError: the first removal that failed (unless ``quiet``, which logs it).
        """
        failures: list[OSError | paths.PathError] = []
        for target in (self._spec_path, self._claim_dir):
            try:
                paths.remove(target(claim_uid))
            except (OSError, paths.PathError) as exc:
                failures.append(exc)
        if failures and not quiet:
            raise failures[0]
        for failure in failures:
            log.warning(
                "could not clean up after a failed prepare: %s",
                failure,
                extra={"claim_uid": claim_uid},
            )

    # -- start-up -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Make disk and checkpoint agree after a restart or crash.

        Removes files of claims the checkpoint does not list and temporary files of
        interrupted writes; rewrites missing or damaged files of listed claims (after a
        reboot the CDI directory is empty). An unusable checkpoint is reported and
        nothing is touched. The file work runs in a worker thread: the sockets already
        serve while it runs. Prepare and unprepare wait for it to finish.
        """
        try:
            outcome = await self.serializer.run(self._repair)
        except CheckpointError as exc:
            log.error("checkpoint unusable; prepare and unprepare fail until it is fixed: %s", exc)
        else:
            log.info("recovered state", extra=outcome)
        self.readiness.mark(Part.RECOVERED)

    def _repair(self) -> dict[str, int]:
        """Remove debris and rewrite stale files; count both (worker thread, lock held).

        Raises:
            CheckpointError: the checkpoint cannot be used; nothing was touched.
        """
        self.claims_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.cdi_root.mkdir(mode=0o755, parents=True, exist_ok=True)
        with self._disk:
            data = self._load()
            removed = self._sweep(set(data.claims))
            rebuilt = sum(self._restore(uid, entry) for uid, entry in data.claims.items())
            if not self.checkpoint.path.exists():
                self._save(data)
        return {"claims": len(data.claims), "debris_removed": removed, "files_rebuilt": rebuilt}

    def _sweep(self, known: set[str]) -> int:
        """Remove what no checkpointed claim accounts for; count the removals."""
        debris: list[pathlib.Path] = []
        for path in self.claims_dir.iterdir():
            if path.name not in known or path.is_symlink():  # a link is never ours
                debris.append(path)
            elif path.is_dir():
                debris += [p for p in path.iterdir() if files.is_temp(p)]
        for path in self.cdi_root.iterdir():
            uid = cdi.claim_uid_of(path)
            if (uid is not None and uid not in known) or (
                files.is_temp(path) and cdi.SPEC_PREFIX in path.name
            ):
                debris.append(path)
        checkpoint_temp = f".{self.checkpoint.path.name}{files.TEMP_MARK}"
        debris += list(self.checkpoint.path.parent.glob(f"{checkpoint_temp}*"))
        for path in debris:
            paths.remove(path)
        return len(debris)

    def _restore(self, claim_uid: str, entry: PreparedClaim) -> int:
        """Rewrite the files of one claim that are missing or differ; count them."""
        properties, spec = self._render(claim_uid, entry)
        wanted = dict(properties)
        if spec:
            wanted[self._spec_path(claim_uid)] = spec
        stale = [p for p, content in wanted.items() if _read(p) != content]
        if stale:
            self._write_files(claim_uid, entry)
        return len(stale)


def _valid(refs: list[ClaimRef]) -> tuple[list[ClaimRef], dict[str, str]]:
    """The claims with real UIDs, and a per-claim error for the others."""
    valid, invalid = [], {}
    for ref in refs:
        try:
            paths.check_uid(ref.uid)
        except paths.PathError as exc:
            invalid[ref.uid] = (
                f"{ref}: {exc}; the kubelet must send the claim's metadata.uid; "
                "refusing to use it as a file name, nothing was touched"
            )
        else:
            valid.append(ref)
    return valid, invalid


def _backend(info: DeviceInfo) -> str:
    """``backend <address>:<port> on node <node>``, with what the slice tells of it."""
    address = info.attributes.get(BACKEND_ADDRESS) or "?"
    port = info.attributes.get(BACKEND_PORT) or "?"
    node = info.attributes.get(BACKEND_NODE)
    return f"backend {address}:{port}" + (f" on node {node}" if node else "")


def _read(path: pathlib.Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _cdi_device(device: PreparedDevice, properties: pathlib.Path) -> cdi.Device:
    env = {
        "GVIRTUS_CONFIG": gvirtus.CONTAINER_PATH,
        "GVIRTUS_BACKEND": f"{device.address}:{device.port}",
        "GVIRTUS_GPU_UUID": device.uuid,
        "GVIRTUS_GPU_MODEL": device.model,
        **device.env,
    }
    return cdi.Device(
        name=device.cdi_name,
        container_edits=cdi.ContainerEdits(
            env=tuple(f"{k}={v}" for k, v in env.items()),
            mounts=(
                cdi.Mount(
                    host_path=str(properties),
                    container_path=gvirtus.CONTAINER_PATH,
                    options=MOUNT_OPTIONS,
                ),
            ),
        ),
    )
