"""Settings: one home folder holds every embedded store; each store can be pointed elsewhere by URL.

Precedence, highest first: environment variables, the TOML config file, built-in defaults.

======================  =====================  =====================================================
environment variable    config key             default
======================  =====================  =====================================================
``VBES_HOME``           --                     ``~/.vbes``
``VBES_CONFIG``         --                     ``$VBES_HOME/config.toml``
``VBES_CALIB_URL``      ``calibration.url``    ``sqlite:///$VBES_HOME/calibration.sqlite``
``VBES_ARCHIVE_URL``    ``archive.url``        ``sqlite:///$VBES_HOME/archive.sqlite``
``VBES_ARCHIVE_HOT``    ``archive.hot``        ``$VBES_HOME/archive/hot`` (any fsspec URL)
``VBES_ARCHIVE_COLD``   ``archive.cold``       ``$VBES_HOME/archive/cold`` (any fsspec URL, e.g. ``root://``)
``VBES_MLFLOW_URI``     ``mlflow.tracking_uri`` ``sqlite:///$VBES_HOME/mlflow.sqlite``
``VBES_MLFLOW_ARTIFACTS`` ``mlflow.artifacts``  ``$VBES_HOME/mlartifacts``
``VBES_DATA``           ``data.dir``           ``$VBES_HOME/data``
======================  =====================  =====================================================
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vbes.errors import ConfigError

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """Resolved settings; every field is a plain string or path so it can be logged with results."""

    home: Path
    calib_url: str
    archive_url: str
    archive_hot: str
    archive_cold: str
    mlflow_tracking_uri: str
    mlflow_artifacts: str
    data_dir: Path
    config_file: Path | None

    def ensure_home(self) -> None:
        """Create the home folder and the local folders of the embedded defaults."""
        for path in (self.home, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        for url in (self.archive_hot, self.archive_cold, self.mlflow_artifacts):
            if "://" not in url:
                Path(url).mkdir(parents=True, exist_ok=True)

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


_KEYS = {
    # field: (environment variable, (config section, key))
    "calib_url": ("VBES_CALIB_URL", ("calibration", "url")),
    "archive_url": ("VBES_ARCHIVE_URL", ("archive", "url")),
    "archive_hot": ("VBES_ARCHIVE_HOT", ("archive", "hot")),
    "archive_cold": ("VBES_ARCHIVE_COLD", ("archive", "cold")),
    "mlflow_tracking_uri": ("VBES_MLFLOW_URI", ("mlflow", "tracking_uri")),
    "mlflow_artifacts": ("VBES_MLFLOW_ARTIFACTS", ("mlflow", "artifacts")),
    "data_dir": ("VBES_DATA", ("data", "dir")),
}


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Resolve the settings from ``environ`` (default: ``os.environ``) and the config file.

    Example:
        >>> s = load_settings({"VBES_HOME": "/tmp/vbes-doc"})
        >>> s.calib_url
        'sqlite:////tmp/vbes-doc/calibration.sqlite'
    """
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("VBES_HOME") or Path.home() / ".vbes").expanduser().absolute()
    config_path = Path(env["VBES_CONFIG"]).expanduser() if env.get("VBES_CONFIG") else home / "config.toml"
    if env.get("VBES_CONFIG") and not config_path.is_file():
        raise ConfigError(f"VBES_CONFIG names {config_path}, which does not exist")
    config = _read_config(config_path) if config_path.is_file() else {}

    defaults = {
        "calib_url": f"sqlite:///{home / 'calibration.sqlite'}",
        "archive_url": f"sqlite:///{home / 'archive.sqlite'}",
        "archive_hot": str(home / "archive" / "hot"),
        "archive_cold": str(home / "archive" / "cold"),
        "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.sqlite'}",
        "mlflow_artifacts": str(home / "mlartifacts"),
        "data_dir": str(home / "data"),
    }
    values: dict[str, str] = {}
    for field, (var, (section, key)) in _KEYS.items():
        from_config = config.get(section, {}).get(key) if isinstance(config.get(section), dict) else None
        value = env.get(var) or from_config or defaults[field]
        if not isinstance(value, str):
            raise ConfigError(f"config file {config_path}: [{section}] {key} must be a string")
        values[field] = value
    return Settings(
        home=home,
        calib_url=values["calib_url"],
        archive_url=values["archive_url"],
        archive_hot=values["archive_hot"],
        archive_cold=values["archive_cold"],
        mlflow_tracking_uri=values["mlflow_tracking_uri"],
        mlflow_artifacts=values["mlflow_artifacts"],
        data_dir=Path(values["data_dir"]),
        config_file=config_path if config_path.is_file() else None,
    )
