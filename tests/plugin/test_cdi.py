"""CDI specs declare the lowest cdiVersion they need and pass a runtime's checks."""

from __future__ import annotations

import json
import pathlib

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dra_driver.plugin import cdi
from tests.support import cdi_check


def device(name: str, *, mount_type: str | None = None) -> cdi.Device:
    return cdi.Device(
        name=name,
        container_edits=cdi.ContainerEdits(
            env=("GVIRTUS_CONFIG=/etc/gvirtus/properties.json",),
            mounts=(
                cdi.Mount(
                    host_path="/h/p.json",
                    container_path="/etc/gvirtus/properties.json",
                    options=("ro", "bind"),
                    type=mount_type,
                ),
            ),
        ),
    )


@pytest.mark.parametrize(
    ("names", "mount_type", "version"),
    [
        (["fbf988cd-c365-45e0-a696-10f4103b4429-gpu-0"], None, "0.3.0"),
        (["1b2c3d4e-0000-0000-0000-000000000001-gpu-0"], None, "0.5.0"),
        (["abc-gpu-0", "1bc-gpu-1"], None, "0.5.0"),
        (["abc-gpu-0"], "bind", "0.4.0"),
        (["9bc-gpu-0"], "bind", "0.5.0"),
    ],
    ids=["letter-uid", "digit-uid", "one-digit-among-two", "mount-type", "digit-and-mount-type"],
)
def test_version_is_the_minimum_the_features_need(
    names: list[str], mount_type: str | None, version: str
) -> None:
    spec = json.loads(cdi.render([device(n, mount_type=mount_type) for n in names]))
    assert spec["cdiVersion"] == version
    assert cdi_check.required_version(spec) == version


def test_written_spec_passes_the_runtime_checks(tmp_path: pathlib.Path) -> None:
    uid = "1b2c3d4e-0000-0000-0000-000000000001"
    name = cdi.device_name(
        claim_uid=uid, device="gpu-0", share_id="de323fb6-a4ab-45ff-8d3a-39922b4cb784"
    )
    path = cdi.write_spec(cdi_root=tmp_path, claim_uid=uid, content=cdi.render([device(name)]))
    assert path.name == f"gvirtus.io-gpu_{uid}.json"
    assert cdi.claim_uid_of(path) == uid
    spec = cdi_check.validate(path)
    assert spec["kind"] == "gvirtus.io/gpu"
    assert [d["name"] for d in spec["devices"]] == [
        f"{uid}-gpu-0-de323fb6-a4ab-45ff-8d3a-39922b4cb784"
    ]
    assert cdi.qualified_name(name) == f"gvirtus.io/gpu={name}"
    assert path == cdi.spec_path(cdi_root=tmp_path, claim_uid=uid)


@pytest.mark.parametrize(
    "name",
    ["", "-lead", "trail-", "has space", "slash/y"],
    ids=["empty", "lead", "trail", "space", "slash"],
)
def test_invalid_device_names_are_refused(name: str) -> None:
    with pytest.raises(pydantic.ValidationError, match="invalid CDI device name"):
        device(name)


def test_devices_without_edits_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least one container edit"):
        cdi.Device(name="x", container_edits=cdi.ContainerEdits())


@pytest.mark.parametrize(
    "name",
    ["gvirtus.io-gpu_x.yaml", "other-gpu_x.json", "gvirtus.io-gpu.json"],
    ids=["yaml", "vendor", "no-uid"],
)
def test_only_this_drivers_specs_are_recognised(name: str) -> None:
    assert cdi.claim_uid_of(pathlib.Path(name)) is None


@given(
    uid=st.uuids().map(str),
    device_name=st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z"),
    share=st.one_of(st.none(), st.uuids().map(str)),
)
def test_any_claim_device_and_share_makes_a_valid_spec(
    uid: str, device_name: str, share: str | None
) -> None:
    name = cdi.device_name(claim_uid=uid, device=device_name, share_id=share)
    spec = json.loads(cdi.render([device(name)]))
    assert cdi_check.RELEASED.index(spec["cdiVersion"]) >= cdi_check.RELEASED.index(
        cdi_check.required_version(spec)
    )
    assert spec["devices"][0]["name"] == name
