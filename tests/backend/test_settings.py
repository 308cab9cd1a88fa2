"""Agent settings: flags beat environment, which beats the YAML file, which beats defaults."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from backend.settings import AgentSettings
from dra_driver.config import ConfigError, add_flags, load
from dra_driver.models import AccessMode


def settings(argv: list[str], env: dict[str, str]) -> AgentSettings:
    parser = argparse.ArgumentParser()
    add_flags(parser, AgentSettings)
    return load(
        AgentSettings,
        args=parser.parse_args(["--node-name", "n", "--address", "10.0.0.1", *argv]),
        environ=env,
    )


def test_file_settings_apply_below_flags_and_environment(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("probeInterval: 7\nplugins: cudart,cublas\nbackendBasePort: 20000\n")

    from_file = settings(["--config", str(config)], {})
    overridden = settings(
        ["--config", str(config), "--backend-base-port", "30000"],
        {"GVIRTUS_DRA_PROBE_INTERVAL": "3"},
    )

    assert (from_file.probe_interval, from_file.plugin_list, from_file.backend_base_port) == (
        7,
        ("cudart", "cublas"),
        20000,
    )
    assert (overridden.probe_interval, overridden.backend_base_port) == (3, 30000)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("probeIntervall: 3\n", "unknown settings probeIntervall"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("probeInterval: [1\n", "cannot read config file"),
        ("probeInterval: -1\n", "--probe-interval (env GVIRTUS_DRA_PROBE_INTERVAL)"),
        ("probeTimeout: 1\n", "unknown settings probeTimeout"),
        ("simulateOpenFiles: 8\n", "--simulate-open-files (env GVIRTUS_DRA_SIMULATE_OPEN_FILES)"),
        (
            "restartAfterSamples: 0\n",
            "--restart-after-samples (env GVIRTUS_DRA_RESTART_AFTER_SAMPLES)",
        ),
    ],
    ids=[
        "unknown-key",
        "not-a-mapping",
        "broken-yaml",
        "invalid-value",
        "probe-timeout-is-gone",
        "too-few-open-files",
        "restart-at-once",
    ],
)
def test_bad_files_are_reported_with_the_key(
    tmp_path: pathlib.Path, content: str, message: str
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError) as caught:
        settings(["--config", str(config)], {})
    assert message in str(caught.value)


def test_missing_file_is_reported(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        settings(["--config", str(tmp_path / "nope.yaml")], {})


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, AccessMode.ON),
        (["--access-control", "off"], {}, AccessMode.OFF),
        ([], {"GVIRTUS_DRA_ACCESS_CONTROL": "off"}, AccessMode.OFF),
        (["--access-control", "on"], {"GVIRTUS_DRA_ACCESS_CONTROL": "off"}, AccessMode.ON),
    ],
    ids=["on-by-default", "flag", "environment", "flag-beats-environment"],
)
def test_access_control_is_on_unless_turned_off(
    argv: list[str], env: dict[str, str], expected: AccessMode
) -> None:
    assert settings(argv, env).access_control is expected


def test_an_unknown_access_control_mode_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        settings(["--access-control", "audit"], {})
    assert "--access-control (env GVIRTUS_DRA_ACCESS_CONTROL): Input should be 'on' or 'off'" in (
        str(caught.value)
    )
