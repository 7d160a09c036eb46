"""The command line's conventions: one-line errors, --debug tracebacks, settings resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vbes.errors import ConfigError
from vbes.settings import load_settings


def test_unknown_command_exits_nonzero(run_cli) -> None:
    result = run_cli("no-such-command")
    assert result.exit_code == 2
    assert "no-such-command" in result.stderr


def test_settings_defaults_live_under_home(tmp_path: Path) -> None:
    s = load_settings({"VBES_HOME": str(tmp_path)})
    assert s.calib_url == f"sqlite:///{tmp_path / 'calibration.sqlite'}"
    assert s.archive_hot.startswith(str(tmp_path))
    assert s.mlflow_tracking_uri.startswith("sqlite:///")


def test_settings_precedence_env_over_file(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('[calibration]\nurl = "sqlite:///from-file.db"\n'
                                          '[archive]\ncold = "root://127.0.0.1:1094//cold"\n')
    s = load_settings({"VBES_HOME": str(tmp_path), "VBES_CALIB_URL": "postgresql://x/y"})
    assert s.calib_url == "postgresql://x/y"
    assert s.archive_cold == "root://127.0.0.1:1094//cold"
    assert s.config_file == tmp_path / "config.toml"


def test_bad_config_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[calibration\n")
    with pytest.raises(ConfigError, match="config.toml"):
        load_settings({"VBES_HOME": str(tmp_path)})


def test_user_error_is_one_line_without_traceback_and_debug_shows_it(tmp_path: Path) -> None:
    env = {"VBES_HOME": str(tmp_path), "VBES_CONFIG": str(tmp_path / "missing.toml"), "PATH": ""}
    cmd = [sys.executable, "-m", "vbes", "demo"]
    plain = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert plain.returncode == 1
    assert plain.stderr.strip().count("\n") == 0, plain.stderr
    assert "missing.toml" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run(cmd[:3] + ["--debug", "demo"], env=env, capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_nothing_installs_top_level_component_modules(tmp_path: Path) -> None:
    # from a neutral folder, only the vbes namespace may resolve to this project's folders
    names = ["models", "datasets", "calibration", "archive", "evaluation", "training", "serving",
             "compression", "recast"]
    code = ("import importlib.util, json, sys; "
            f"print(json.dumps({{n: getattr(importlib.util.find_spec(n), 'origin', None) for n in {names!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    import json

    project = str(Path(__file__).resolve().parents[1])
    for name, origin in json.loads(out.stdout).items():
        assert origin is None or not origin.startswith(project), f"top-level {name!r} resolves to {origin}"
    import vbes.datasets

    assert vbes.datasets.__file__.startswith(project)
