"""GVirtuSConfig: validated strictly, mapped to the frontend's environment."""

from __future__ import annotations

from typing import Any

import pytest

from dra_driver.models import ConfigValidationError, merge_configs, parse_config
from tests.support.objects import gvirtus_config


@pytest.mark.parametrize(
    ("fields", "env"),
    [
        ({}, {}),
        ({"logLevel": "trace"}, {"GVIRTUS_LOGLEVEL": "0"}),
        ({"logLevel": "off"}, {"GVIRTUS_LOGLEVEL": "60000"}),
        ({"gvirtusHome": "/opt/gvirtus"}, {"GVIRTUS_HOME": "/opt/gvirtus"}),
        (
            {"libraryPath": "/opt/gvirtus/lib/frontend:/opt/gvirtus/lib"},
            {"LD_LIBRARY_PATH": "/opt/gvirtus/lib/frontend:/opt/gvirtus/lib"},
        ),
        ({"dumpStats": True}, {"GVIRTUS_DUMP_STATS": "true"}),
        ({"dumpStats": False}, {"GVIRTUS_DUMP_STATS": "false"}),
    ],
    ids=["empty", "trace", "off", "home", "library-path", "stats-on", "stats-off"],
)
def test_fields_become_the_frontends_environment(
    fields: dict[str, Any], env: dict[str, str]
) -> None:
    assert parse_config(gvirtus_config(**fields)).environment() == env


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            gvirtus_config(logLevl="debug"),
            "unknown field 'logLevl' (allowed: apiVersion, kind, logLevel",
        ),
        (
            {**gvirtus_config(), "apiVersion": "gpu.gvirtus.io/v1"},
            "apiVersion must be 'gpu.gvirtus.io/v1alpha1'",
        ),
        ({"kind": "GVirtuSConfig"}, "apiVersion is required"),
        ({**gvirtus_config(), "kind": "GpuConfig"}, "kind must be 'GVirtuSConfig'"),
        (gvirtus_config(logLevel="loud"), "logLevel: Input should be 'trace'"),
        (gvirtus_config(dumpStats="yes"), "dumpStats: Input should be a valid boolean"),
        (gvirtus_config(gvirtusHome="usr/local/gvirtus"), "gvirtusHome: must be an absolute path"),
        (
            gvirtus_config(gvirtusHome="/a\nb"),
            "gvirtusHome: must be an absolute path without control",
        ),
        (
            gvirtus_config(libraryPath="/a:lib"),
            "libraryPath: must be ':'-separated absolute directories",
        ),
        (["not", "an", "object"], "parameters must be an object"),
    ],
    ids=[
        "typo",
        "wrong-version",
        "no-version",
        "wrong-kind",
        "bad-level",
        "string-bool",
        "relative-home",
        "control-char",
        "relative-lib",
        "not-object",
    ],
)
def test_invalid_parameters_name_the_field(parameters: Any, message: str) -> None:
    with pytest.raises(ConfigValidationError) as caught:
        parse_config(parameters)
    assert message in str(caught.value)


def test_later_configs_win_field_by_field() -> None:
    from_class = parse_config(gvirtus_config(logLevel="debug", gvirtusHome="/opt/gvirtus"))
    from_claim = parse_config(gvirtus_config(logLevel="error"))
    assert merge_configs([from_class, from_claim]) == {
        "GVIRTUS_LOGLEVEL": "40000",
        "GVIRTUS_HOME": "/opt/gvirtus",
    }
