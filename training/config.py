"""The training configuration: one versioned YAML file, validated against ``schema/train-config.v1.json``.

:func:`load_config` returns the *resolved* configuration: every default filled in, so that the file logged
with a run says everything the run did. An invalid file fails with one line naming the file, the place in it
and what is wrong.
"""

from __future__ import annotations

import copy
import hashlib
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vbes.errors import TrainingConfigError

__all__ = ["CONFIG_VERSION", "config_sha256", "load_config", "schema"]

CONFIG_VERSION = 1


@cache
def schema() -> dict[str, Any]:
    """The JSON schema of configuration version :data:`CONFIG_VERSION`."""
    text = resources.files("vbes.training").joinpath(f"schema/train-config.v{CONFIG_VERSION}.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _where(path: Any) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".") or "(top level)"


def _fill_defaults(node: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's ``default`` of every absent property filled in (recursively)."""
    if not isinstance(value, dict) or node.get("type") != "object":
        return value
    for key, prop in node.get("properties", {}).items():
        if key not in value and "default" in prop:
            value[key] = copy.deepcopy(prop["default"])
        if key in value:
            value[key] = _fill_defaults(prop, value[key])
    return value


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, validate and resolve a training configuration.

    Args:
        path: the YAML file.

    Raises:
        TrainingConfigError: unreadable file, invalid YAML, or a value the schema refuses (one line).
    """
    import jsonschema

    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text())
    except OSError as exc:
        raise TrainingConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TrainingConfigError(f"{source}: not valid YAML: {where}{' '.join(str(problem).split())}") from None
    if not isinstance(data, dict):
        raise TrainingConfigError(f"{source}: expected a mapping of settings, found {type(data).__name__}")
    if data.get("version") != CONFIG_VERSION:
        raise TrainingConfigError(
            f"{source}: version: {data.get('version')!r} is not a known configuration version ({CONFIG_VERSION})"
        )
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        message = " ".join(error.message.split())
        raise TrainingConfigError(f"{source}: {_where(error.absolute_path)}: {message}")
    if not data["data"].get("files") and not data["data"].get("archive"):
        raise TrainingConfigError(f"{source}: data: name training files in 'files' or 'archive' (or both)")
    resolved: dict[str, Any] = _fill_defaults(schema(), copy.deepcopy(data))
    resolved["registry"].setdefault("model_name", f"vbes-{resolved['name']}")
    return resolved


def config_sha256(config: dict[str, Any]) -> str:
    """SHA-256 of a configuration's canonical JSON: the identity of a run for resuming.

    Args:
        config: a resolved configuration.
    """
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
