"""The checkpoint survives round trips and refuses to be silently replaced."""

from __future__ import annotations

import json
import os
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


# -- the journal: one flush per change, whatever the number of claims held -------------


def uid(n: int) -> str:
    return f"{n:08x}-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def held(count: int) -> CheckpointData:
    return CheckpointData(driver="gpu.gvirtus.io", claims={uid(n): entry() for n in range(count)})


def test_a_change_is_one_flush_of_one_line_whatever_is_held(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    data = held(1000)
    file.write(data)
    snapshot = file.path.read_bytes()
    flushes: list[int] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real: (flushes.append(fd), real(fd))[1])

    data.claims[uid(1000)] = entry()
    file.record(data, {uid(1000): data.claims[uid(1000)]})
    data.claims.pop(uid(3))
    file.record(data, {uid(3): None})

    assert len(flushes) == 3, "the journal's creation flushes its directory once, then one each"
    assert file.path.read_bytes() == snapshot, "the file of 1,000 claims is not rewritten"
    assert len(file.journal.read_bytes().splitlines()) == 2
    assert CheckpointFile(path=file.path, driver="gpu.gvirtus.io").read() == data


def test_a_line_torn_by_a_crash_is_ignored_and_folded_away(tmp_path: pathlib.Path) -> None:
    file = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    data = held(2)
    file.write(data)
    data.claims[uid(2)] = entry()
    file.record(data, {uid(2): data.claims[uid(2)]})
    with open(file.journal, "ab") as journal:
        journal.write(b'{"uid": "' + uid(3).encode() + b'", "claim": {"namesp')  # power cut

    restarted = CheckpointFile(path=file.path, driver="gpu.gvirtus.io")
    recovered = restarted.read()
    assert recovered == data, "the torn change was never acknowledged"
    recovered.claims.pop(uid(0))
    restarted.record(recovered, {uid(0): None})

    assert file.journal.read_bytes() == b"", "the next change rewrote the file"
    assert CheckpointFile(path=file.path, driver="gpu.gvirtus.io").read() == recovered


def test_a_crash_between_rewriting_the_file_and_emptying_the_journal_loses_nothing(
    tmp_path: pathlib.Path,
) -> None:
    file = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    data = held(3)
    file.write(data)
    data.claims.pop(uid(1))
    file.record(data, {uid(1): None})
    data.claims[uid(7)] = entry()
    file.record(data, {uid(7): data.claims[uid(7)]})
    journal = file.journal.read_bytes()
    file.write(data)  # the rewrite...
    file.journal.write_bytes(journal)  # ...and the emptying that did not happen

    assert CheckpointFile(path=file.path, driver="gpu.gvirtus.io").read() == data


def test_the_journal_is_folded_into_the_file_once_it_outgrows_it(tmp_path: pathlib.Path) -> None:
    file = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    data = held(0)
    file.write(data)
    sizes = []
    for n in range(400):
        data.claims[uid(n)] = entry()
        file.record(data, {uid(n): data.claims[uid(n)]})
        sizes.append(file.journal.stat().st_size)

    assert max(sizes) <= 64 * 1024 + 1024
    assert 0 in sizes[1:], "folded at least once"
    assert CheckpointFile(path=file.path, driver="gpu.gvirtus.io").read() == data


@pytest.mark.parametrize(
    ("journal", "checkpoint", "message"),
    [
        (b"not json\n{}\n", True, "journal .* is corrupt at line 1"),
        (b'{"uid": "../..", "claim": null}\n', True, "is not a Kubernetes UID"),
        (b'{"uid": "' + uid(1).encode() + b'", "claim": null}\n', False, "exists without"),
    ],
    ids=["garbage-line", "hostile-uid", "journal-without-its-file"],
)
def test_an_unusable_journal_is_reported_and_left_alone(
    tmp_path: pathlib.Path, journal: bytes, checkpoint: bool, message: str
) -> None:
    file = CheckpointFile(path=tmp_path / "checkpoint.json", driver="gpu.gvirtus.io")
    if checkpoint:
        file.write(held(1))
    file.journal.write_bytes(journal)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(CheckpointError, match=message) as caught:
        CheckpointFile(path=file.path, driver="gpu.gvirtus.io").read()

    assert "aside" in str(caught.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
