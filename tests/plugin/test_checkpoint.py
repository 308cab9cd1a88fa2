"""The checkpoint survives round trips and refuses to be silently replaced."""

from __future__ import annotations

import json
import pathlib
import time

import pytest

from dra_driver.plugin.checkpoint import (
    CheckpointData,
    CheckpointError,
    CheckpointFile,
    PreparedClaim,
    PreparedDevice,
)

UID = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
OTHER_UID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def entry() -> PreparedClaim:
    device = PreparedDevice(
        request="gpu",
        pool="backend-node-a",
        device="gpu-0",
        shareID=None,
        cdiName="u-gpu-0",
        address="10.0.0.5",
        port=9999,
        uuid="GPU-1",
        model="NVIDIA H100 80GB HBM3",
        env={"GVIRTUS_LOGLEVEL": "10000"},
    )
    return PreparedClaim(namespace="ns", name="c", preparedAt=time.time(), devices=[device])


def test_round_trip_keeps_everything(tmp_path: pathlib.Path) -> None:
    file = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    data = file.read()
    assert data.claims == {}
    data.claims[UID] = entry()
    file.write(data)
    again = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io").read()
    assert again == data
    raw = json.loads((tmp_path / "checkpoint.json").read_text())
    assert (raw["apiVersion"], raw["kind"], raw["driver"]) == (
        "checkpoint.gpu.gvirtus.io/v1",
        "KubeletPluginCheckpoint",
        "gpu.gvirtus.io",
    )
    assert raw["claims"][UID]["devices"][0]["cdiName"] == "u-gpu-0"
    assert oct((tmp_path / "checkpoint.json").stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"], "no temporary file left"


HEADER = b'"apiVersion": "checkpoint.gpu.gvirtus.io/v1", "kind": "KubeletPluginCheckpoint"'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is corrupt"),
        (
            b"{" + HEADER + b', "driver": "gpu.gvirtus.io", "claims": {"u": {"namespace": "n"}}}',
            "is corrupt",
        ),
        (b"{" + HEADER + b', "drive', "is corrupt"),
        (
            b'{"apiVersion": "checkpoint.internal.example.com/v1", "kind": "Checkpoint"}',
            "is not a gvirtus-dra kubelet plugin checkpoint",
        ),
        (
            b"{" + HEADER + b', "driver": "other.gvirtus.io"}',
            "belongs to driver 'other.gvirtus.io'",
        ),
        (b"[1, 2]", "is corrupt"),
        (
            b"{"
            + HEADER
            + b', "driver": "gpu.gvirtus.io", "claims": {"../..": '
            + entry().model_dump_json(by_alias=True).encode()
            + b"}}",
            r"is corrupt \(claims: Value error, claim uid '\.\./\.\.' is not a Kubernetes UID",
        ),
    ],
    ids=[
        "empty",
        "missing-fields",
        "torn",
        "foreign-driver-format",
        "other-driver",
        "not-an-object",
        "claim-uid-that-is-a-path",
    ],
)
def test_unusable_files_are_reported_and_left_alone(
    tmp_path: pathlib.Path, content: bytes, message: str
) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(content)
    file = CheckpointFile(path=path, driver="gpu.gvirtus.io")
    with pytest.raises(CheckpointError, match=message) as caught:
        file.read()
    assert str(path) in str(caught.value)
    assert path.read_bytes() == content


def test_changes_by_another_process_are_noticed(tmp_path: pathlib.Path) -> None:
    ours = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    theirs = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    ours.write(CheckpointData(driver="gpu.gvirtus.io"))
    assert not ours.changed()
    theirs.write(CheckpointData(driver="gpu.gvirtus.io", claims={OTHER_UID: entry()}))
    assert ours.changed()
    assert list(ours.read().claims) == [OTHER_UID]
    assert not ours.changed()
