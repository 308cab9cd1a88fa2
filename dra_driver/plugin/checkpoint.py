"""The plugin's record of prepared claims: the one source of truth on the node.

The kubelet does not re-prepare running pods after a plugin restart, and unprepare
gets only the claim's UID, namespace and name (the claim may be gone from the API),
so everything needed to answer both, and to rebuild lost files, is kept here.

Rules the rest of the plugin relies on:

* The file is versioned (``apiVersion``/``kind``) and names its driver. A file that
  does not parse, or belongs to something else, raises :class:`CheckpointError`; it
  is never replaced, because the claims in it would be lost.
* Writes are atomic and durable (temp file, fsync, rename, fsync of the directory).
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


class CheckpointFile:
    """Reads and writes the checkpoint, and tells when another process replaced it."""

    def __init__(self, *, path: pathlib.Path, driver: str) -> None:
        self.path = path
        self.driver = driver
        self._stamp: _Stamp | None = None

    def read(self) -> CheckpointData:
        """Load the file, or an empty checkpoint when there is none yet.

        Raises:
            CheckpointError: the file is unreadable, corrupt, or not this driver's.
        """
        try:
            raw = self.path.read_bytes()
            stamp = self._stat()
        except FileNotFoundError:
            self._stamp = None
            return CheckpointData(driver=self.driver)
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc}") from exc
        data = self._parse(raw)
        self._stamp = stamp
        return data

    def changed(self) -> bool:
        """Whether the file differs from what this object last read or wrote."""
        try:
            return self._stat() != self._stamp
        except FileNotFoundError:
            return self._stamp is not None

    def write(self, data: CheckpointData) -> None:
        """Replace the file atomically and durably."""
        files.atomic_write(
            self.path, data.model_dump_json(by_alias=True).encode(), mode=0o600, durable=True
        )
        self._stamp = self._stat()

    def _stat(self) -> _Stamp:
        st = os.stat(self.path)
        return _Stamp(st.st_ino, st.st_mtime_ns, st.st_size)

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


class CheckpointHeader(BaseModel):
    """The fields that identify a checkpoint file, read before the rest."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field("", alias="apiVersion")
    kind: str = ""
    driver: str = ""


def _first_error(exc: pydantic.ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]
