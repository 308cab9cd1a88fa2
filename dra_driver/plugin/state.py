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
  for every call, the API client only for claims the checkpoint does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Gauge

from dra_driver import files, gvirtus
from dra_driver.kube import errors as kube_errors
from dra_driver.kube.resources import RESOURCE_CLAIMS
from dra_driver.models import ConfigValidationError, GVirtuSConfig, merge_configs, parse_config
from dra_driver.plugin import cdi, taints
from dra_driver.plugin.allocation import ConfigEntry, Result, allocation_of, uid_of
from dra_driver.plugin.checkpoint import (
    CheckpointData,
    CheckpointError,
    CheckpointFile,
    PreparedClaim,
    PreparedDevice,
)
from dra_driver.plugin.faults import crash_point
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
        return f"ResourceClaim {self.namespace}/{self.name} (uid {self.uid})"


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

    def _current(self) -> CheckpointData:
        """The checkpoint, re-read when another process replaced it.

        Raises:
            CheckpointError: the file cannot be used.
        """
        if self._data is None or self.checkpoint.changed():
            self._data = None
            self._data = self.checkpoint.read()
            PREPARED_CLAIMS.set(len(self._data.claims))
        return self._data

    def _save(self, data: CheckpointData) -> None:
        try:
            self.checkpoint.write(data)
        except BaseException:
            self._data = None  # memory ran ahead of the disk; re-read next time
            raise
        PREPARED_CLAIMS.set(len(data.claims))

    def prepared_devices(self) -> list[PreparedDevice]:
        """Every device prepared on the node (by this process or a sibling)."""
        try:
            data = self._current()
        except CheckpointError:
            data = self._data or CheckpointData(driver=self.driver)
        return [d for claim in data.claims.values() for d in claim.devices]

    def checkpoint_problem(self) -> str | None:
        """Why the checkpoint is unusable, or None when it is fine."""
        try:
            self._current()
        except CheckpointError as exc:
            return str(exc)
        return None

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
        known = self._known_uids()
        plans = await self._plans([r for r in refs if r.uid not in known], deadline=deadline)
        async with self.serializer.hold():
            try:
                data = self._current()
            except CheckpointError as exc:
                return {r.uid: PrepareResult(error=f"{r}: {exc}") for r in refs}
            return self._commit(
                refs=refs, plans=plans, data=data, started=started, deadline=deadline
            )

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
        try:
            return set(self._current().claims)
        except CheckpointError:
            return set()

    def _commit(
        self,
        *,
        refs: list[ClaimRef],
        plans: dict[str, PreparedClaim | ClaimError],
        data: CheckpointData,
        started: float,
        deadline: float,
    ) -> dict[str, PrepareResult]:
        results: dict[str, PrepareResult] = {}
        added: list[ClaimRef] = []
        for ref in refs:
            try:
                entry = self._entry_for(
                    ref=ref, plan=plans.get(ref.uid), data=data, started=started, deadline=deadline
                )
                self._write_files(ref.uid, entry)
            except ClaimError as exc:
                results[ref.uid] = PrepareResult(error=str(exc))
                continue
            except OSError as exc:
                results[ref.uid] = PrepareResult(error=f"{ref}: writing its files failed: {exc}")
                if ref.uid not in data.claims:  # a recorded claim keeps what it has
                    self._remove_files(ref.uid, quiet=True)
                continue
            if ref.uid not in data.claims:
                data.claims[ref.uid] = entry
                added.append(ref)
            results[ref.uid] = PrepareResult(devices=tuple(entry.devices))
        if added:
            crash_point("prepare:files-written")
            try:
                self._save(data)
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
        data: CheckpointData,
        started: float,
        deadline: float,
    ) -> PreparedClaim:
        entry = data.claims.get(ref.uid)
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
            devices = [await self._prepare_device(ref, r, configs) for r in results]
        except ClaimError as exc:
            return exc
        if not devices:
            log.warning("claim has no devices of this driver", extra={"claim": str(ref)})
        return PreparedClaim(
            namespace=ref.namespace, name=ref.name, prepared_at=self.clock(), devices=devices
        )

    async def _read_claim(self, ref: ClaimRef) -> dict[str, Any]:
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
        self, ref: ClaimRef, result: Result, configs: list[tuple[tuple[str, ...], GVirtuSConfig]]
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
            endpoint = gvirtus.parse_endpoint(
                address=info.attributes.get("backendAddress"),
                port=info.attributes.get("backendPort"),
            )
        except gvirtus.EndpointError as exc:
            raise ClaimError(f"{ref}: device {where}: {exc}") from exc
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
            uuid=str(info.attributes.get("uuid", "")),
            model=str(info.attributes.get("model", "")),
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
        async with self.serializer.hold():
            try:
                data = self._current()
            except CheckpointError as exc:
                return {r.uid: f"{r}: {exc}" for r in refs}
            self._remember_unprepares(refs)
            for ref in refs:
                data.claims.pop(ref.uid, None)
            try:
                self._save(data)
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
                except OSError as exc:
                    outcome[ref.uid] = f"{ref}: removing its files failed: {exc}"
            return outcome

    def _remember_unprepares(self, refs: Sequence[ClaimRef]) -> None:
        """Note when claims were unprepared, for as long as a prepare could still run."""
        now = time.monotonic()
        horizon = now - KUBELET_CALL_TIMEOUT
        self._unprepared_at = {u: t for u, t in self._unprepared_at.items() if t >= horizon}
        self._unprepared_at.update((ref.uid, now) for ref in refs)

    # -- files ------------------------------------------------------------------------

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
        properties, spec = self._render(claim_uid, entry)
        (self.claims_dir / claim_uid).mkdir(mode=0o755, parents=True, exist_ok=True)
        for path, content in properties.items():
            files.atomic_write(path, content)
        if spec:
            cdi.write_spec(cdi_root=self.cdi_root, claim_uid=claim_uid, content=spec)

    def _remove_files(self, claim_uid: str, *, quiet: bool = False) -> None:
        """Remove the claim's CDI spec and its directory; both are tried either way.

        Raises:
            OSError: the first removal that failed (unless ``quiet``, which logs it).
        """
        failures: list[OSError] = []
        targets = (
            cdi.spec_path(cdi_root=self.cdi_root, claim_uid=claim_uid),
            self.claims_dir / claim_uid,
        )
        for target in targets:
            try:
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
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
        self.claims_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.cdi_root.mkdir(mode=0o755, parents=True, exist_ok=True)
        async with self.serializer.hold():
            try:
                data = self._current()
            except CheckpointError as exc:
                log.error(
                    "checkpoint unusable; prepare and unprepare fail until it is fixed: %s", exc
                )
                self.readiness.mark(Part.RECOVERED)
                return
            removed, rebuilt = await asyncio.to_thread(self._repair, data)
            if not self.checkpoint.path.exists():
                self._save(data)
        self.readiness.mark(Part.RECOVERED)
        log.info(
            "recovered state",
            extra={"claims": len(data.claims), "debris_removed": removed, "files_rebuilt": rebuilt},
        )

    def _repair(self, data: CheckpointData) -> tuple[int, int]:
        """Remove debris and rewrite stale files; count both (blocking file work)."""
        removed = self._sweep(set(data.claims))
        rebuilt = sum(self._restore(uid, entry) for uid, entry in data.claims.items())
        return removed, rebuilt

    def _sweep(self, known: set[str]) -> int:
        """Remove what no checkpointed claim accounts for; count the removals."""
        debris: list[pathlib.Path] = []
        for path in self.claims_dir.iterdir():
            if path.name not in known:
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
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return len(debris)

    def _restore(self, claim_uid: str, entry: PreparedClaim) -> int:
        """Rewrite the files of one claim that are missing or differ; count them."""
        properties, spec = self._render(claim_uid, entry)
        wanted = dict(properties)
        if spec:
            wanted[cdi.spec_path(cdi_root=self.cdi_root, claim_uid=claim_uid)] = spec
        stale = [p for p, content in wanted.items() if _read(p) != content]
        if stale:
            self._write_files(claim_uid, entry)
        return len(stale)


def _backend(info: DeviceInfo) -> str:
    """``backend <address>:<port> on node <node>``, with what the slice tells of it."""
    address = info.attributes.get("backendAddress", "?")
    port = info.attributes.get("backendPort", "?")
    node = info.attributes.get("backendNode")
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
