"""The plugin's record of prepared claims: the one source of truth on the node.

The kubelet does not re-prepare running pods after a plugin restart, and unprepare
gets only the claim's UID, namespace and name (the claim may be gone from the API),
so everything needed to answer both, and to rebuild lost files, is kept here.

Rules the rest of the plugin relies on:

* The file is versioned (``apiVersion``/``kind``) and names its driver. A file that
  does not parse, or belongs to something else, raises :class:`CheckpointError`; it
  is never replaced, because the claims in it would be lost.
* Every change is durable before the kubelet is answered, with one flush: it is
  appended to a journal beside the file (``checkpoint.journal``, one JSON line per
  claim set or dropped) and flushed with ``fdatasync``. Rewriting the whole file instead
  would cost two flushes (the file and its directory) and grow with every claim
  held; a node's disk under load takes several milliseconds per flush. Once the
  journal is larger than the file, or its last line was torn by a crash, the next
  change rewrites the file (atomically and durably: temp file, fsync, rename, fsync
  of the directory) and empties the journal. A journal line that is not the last and
  does not parse makes the checkpoint unusable, like a corrupt file.
* Files on disk (CDI specs, ``properties.json``) not listed here are debris of an
  interrupted operation and may be removed; files listed here may be rebuilt.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dra_driver import files
from dra_driver.plugin import paths

API_VERSION: Literal["checkpoint.gpu.gvirtus.io/v1"] = "checkpoint.gpu.gvirtus.io/v1"
KIND: Literal["KubeletPluginCheckpoint"] = "KubeletPluginCheckpoint"


class CheckpointError(Exception):
    """The checkpoint exists but cannot be used; it is left untouched."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class PreparedDevice(_Model):
    """One allocated device as prepared, with all it takes to rebuild its files."""

    request: str
    pool: str
    device: str
    share_id: str | None = Field(None, alias="shareID")
    cdi_name: str = Field(alias="cdiName")
    address: str
    port: int
    uuid: str
    model: str
    env: dict[str, str] = Field(default_factory=dict)


class PreparedClaim(_Model):
    """A claim the plugin prepared on this node."""

    namespace: str
    name: str
    prepared_at: float = Field(alias="preparedAt")
    devices: list[PreparedDevice]


class CheckpointData(_Model):
    """The whole file."""

    api_version: Literal["checkpoint.gpu.gvirtus.io/v1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["KubeletPluginCheckpoint"] = KIND
    driver: str
    claims: dict[str, PreparedClaim] = Field(default_factory=dict)

    @field_validator("claims")
    @classmethod
    def _uids(cls, claims: dict[str, PreparedClaim]) -> dict[str, PreparedClaim]:
        """Keys become paths at recovery: only real UIDs (the plugin never writes others)."""
        for uid in claims:
            paths.check_uid(uid)
        return claims


@dataclass(frozen=True)
class _Stamp:
    inode: int
    mtime_ns: int
    size: int


JOURNAL_MIN_BYTES = 64 * 1024
"""The journal is folded into the file once larger than this and than the file."""


class CheckpointFile:
    """Reads and writes the checkpoint, and tells when another process changed it."""

    def __init__(self, *, path: pathlib.Path, driver: str) -> None:
        self.path = path
        self.journal = path.with_name(f"{path.stem}.journal")
        self.driver = driver
        self._stamp: tuple[_Stamp | None, _Stamp | None] = (None, None)
        self._journal_bytes = 0
        self._torn = False

    def read(self) -> CheckpointData:
        """Load the file and replay its journal; an empty checkpoint when there is none.

        Raises:
            CheckpointError: a file is unreadable, corrupt, or not this driver's.
        """
        stamp = self._stat()
        try:
            raw = self.path.read_bytes() if stamp[0] is not None else None
            journal = self.journal.read_bytes() if stamp[1] is not None else b""
        except FileNotFoundError:  # replaced meanwhile: read the new one
            return self.read()
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from exc
        if raw is None and journal:
            raise CheckpointError(
                f"journal {self.journal} exists without its checkpoint {self.path}; the "
                f"claims they held would be lost, so it is left as it is: move {self.journal} "
                "aside too to start with an empty checkpoint"
            )
        data = self._parse(raw) if raw is not None else CheckpointData(driver=self.driver)
        self._torn = self._replay(data, journal)
        self._journal_bytes = len(journal)
        self._stamp = stamp
        return data

    def changed(self) -> bool:
        """Whether the files differ from what this object last read or wrote."""
        return self._stat() != self._stamp

    def write(self, data: CheckpointData) -> None:
        """Replace the file atomically and durably, then empty the journal."""
        files.atomic_write(
            self.path, data.model_dump_json(by_alias=True).encode(), mode=0o600, durable=True
        )
        if self._journal_bytes or self._torn or self.journal.exists():
            # A crash before this leaves the new file and the old journal, whose
            # replay ends in the same claims: every change in it is in the file.
            with open(self.journal, "r+b") as handle:
                handle.truncate(0)
                os.fsync(handle.fileno())
        self._journal_bytes, self._torn = 0, False
        self._stamp = self._stat()

    def record(self, data: CheckpointData, changes: dict[str, PreparedClaim | None]) -> None:
        """Make ``data`` durable with one flush of the journal, when that will do.

        ``changes`` (claim UID to claim, or None when dropped) is all that differs
        from what this object last read or wrote. The whole file is written instead
        when the journal outgrew it, ends in a torn line, or there is no file yet.
        """
        lines = b"".join(
            JournalEntry(uid=uid, claim=claim).model_dump_json(by_alias=True).encode() + b"\n"
            for uid, claim in changes.items()
        )
        snapshot = self._stamp[0]
        limit = max(JOURNAL_MIN_BYTES, snapshot.size if snapshot else 0)
        if self._torn or snapshot is None or self._journal_bytes + len(lines) > limit:
            self.write(data)
            return
        created = self._stamp[1] is None
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, lines)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            files.fsync_dir(self.journal.parent)
        self._journal_bytes += len(lines)
        self._stamp = self._stat()

    def _replay(self, data: CheckpointData, journal: bytes) -> bool:
        """Apply the journal's lines to ``data``; whether its last line was torn.

        Raises:
            CheckpointError: a complete line does not parse.
        """
        *complete, tail = journal.split(b"\n")
        for number, line in enumerate(complete, start=1):
            try:
                entry = JournalEntry.model_validate_json(line)
            except pydantic.ValidationError as exc:
                raise CheckpointError(
                    f"journal {self.journal} is corrupt at line {number} ({_first_error(exc)}); "
                    "it is left as it is: inspect it, then move it and "
                    f"{self.path} aside to start with an empty checkpoint"
                ) from exc
            if entry.claim is None:
                data.claims.pop(entry.uid, None)
            else:
                data.claims[entry.uid] = entry.claim
        return bool(tail)  # a crash in the middle of an append; never acknowledged

    def _stat(self) -> tuple[_Stamp | None, _Stamp | None]:
        return _stamp_of(self.path), _stamp_of(self.journal)

    def _parse(self, raw: bytes) -> CheckpointData:
        fix = "inspect it and move it aside to start with an empty checkpoint"
        try:
            header = CheckpointHeader.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise CheckpointError(
                f"checkpoint {self.path} is corrupt ({_first_error(exc)}); the prepared claims "
                f"it lists would be lost, so it is left as it is: {fix}"
            ) from exc
        if header.api_version != API_VERSION or header.kind != KIND:
            raise CheckpointError(
                f"{self.path} is not a gvirtus-dra kubelet plugin checkpoint (apiVersion "
                f"{header.api_version!r}, kind {header.kind!r}); it is left as it is: {fix}"
            )
        if header.driver != self.driver:
            raise CheckpointError(
                f"checkpoint {self.path} belongs to driver {header.driver!r}, not {self.driver!r}; "
                "each driver needs its own plugin data directory"
            )
        try:
            return CheckpointData.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise CheckpointError(
                f"checkpoint {self.path} is corrupt ({_first_error(exc)}); "
                f"it is left as it is: {fix}"
            ) from exc


class JournalEntry(_Model):
    """One line of the journal: a claim recorded (``claim``) or dropped (no ``claim``)."""

    uid: str
    claim: PreparedClaim | None = None

    @field_validator("uid")
    @classmethod
    def _uid(cls, uid: str) -> str:
        return paths.check_uid(uid)


class CheckpointHeader(BaseModel):
    """The fields that identify a checkpoint file, read before the rest."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field("", alias="apiVersion")
    kind: str = ""
    driver: str = ""


def _stamp_of(path: pathlib.Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Stamp(st.st_ino, st.st_mtime_ns, st.st_size)


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
