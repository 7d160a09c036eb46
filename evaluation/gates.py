"""Gates: thresholds per model family and channel that decide what may be called ``production``.

A gate file (YAML)::

    version: 1
    default_family: reference
    families:
      surrogate:                      # model family
        default:                      # gates for every channel
          - {metric: classifier/auc, max: 0.60}
          - {metric: "features/*/w1.w1_over_resolution", max: 0.5}
        mumu:                         # added for this channel
          - {metric: observables/m_ll/position, max: 5, abs: true}

Each gate names a ``metric`` -- a glob pattern over the flat metric names of an evaluation (see
:func:`vbes.evaluation.suite.flatten`; a fidelity report's :meth:`~vbes.evaluation.fidelity.FidelityReport.flat`
works the same way) -- and a ``min`` and/or ``max`` bound; ``abs: true`` bounds the absolute value. Every matching
metric must satisfy the bound; a pattern that matches nothing fails (a gate that silently checks nothing is worse
than none) unless ``optional: true``.

:func:`promote` moves an MLflow registered model version's ``production`` alias only when every gate passed,
and records the evaluation (report, JSON, the gate file's SHA-256, the verdict) on that version either way.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vbes.errors import ConfigError, GateFailed, NotFound

__all__ = [
    "DEFAULT_GATE_FILE",
    "PRODUCTION_ALIAS",
    "GateOutcome",
    "check_gates",
    "gate_file_sha256",
    "load_gates",
    "promote",
]

#: the alias that marks the version a service should use
PRODUCTION_ALIAS = "production"


def _default_gate_file() -> Path:
    return Path(str(resources.files("vbes.evaluation") / "data" / "gates.yaml"))


#: the gate file shipped with vbes
DEFAULT_GATE_FILE = _default_gate_file()


def gate_file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the gate file's bytes (recorded with every promotion)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_gates(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Read and check a gate file; one clear :class:`ConfigError` line names what is wrong."""
    path = Path(path) if path is not None else DEFAULT_GATE_FILE
    if not path.is_file():
        raise NotFound(f"gate file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"gate file {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict) or not data["families"]:
        raise ConfigError(f"gate file {path}: needs a 'families' mapping (family -> channel -> list of gates)")
    if data.get("version", 1) != 1:
        raise ConfigError(f"gate file {path}: unknown version {data.get('version')!r} (this vbes reads version 1)")
    for family, channels in data["families"].items():
        if not isinstance(channels, dict):
            raise ConfigError(f"gate file {path}: family {family!r} must map channels to lists of gates")
        for channel, gates in channels.items():
            if not isinstance(gates, list):
                raise ConfigError(f"gate file {path}: {family}.{channel} must be a list of gates")
            for i, gate in enumerate(gates):
                where = f"gate file {path}: {family}.{channel}[{i}]"
                if not isinstance(gate, dict) or not isinstance(gate.get("metric"), str):
                    raise ConfigError(f"{where}: each gate needs a 'metric' pattern")
                if "min" not in gate and "max" not in gate:
                    raise ConfigError(f"{where}: gate on {gate['metric']!r} has neither 'min' nor 'max'")
                for key in ("min", "max"):
                    if key in gate and not isinstance(gate[key], (int, float)):
                        raise ConfigError(f"{where}: '{key}' must be a number, got {gate[key]!r}")
                unknown = set(gate) - {"metric", "min", "max", "abs", "optional", "name", "why"}
                if unknown:
                    raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return data


@dataclass
class GateOutcome:
    """The verdict of a gate file on one evaluation."""

    family: str
    channel: str
    passed: bool
    gates: list[dict[str, Any]]
    gate_file: str
    gate_sha256: str

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [g for g in self.gates if not g["passed"]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_gates(
    flat: Mapping[str, float],
    gate_file: str | os.PathLike[str] | None = None,
    family: str | None = None,
    channel: str = "",
) -> GateOutcome:
    """Apply the gates of ``family`` (default: the file's ``default_family``) for ``channel`` to the metrics.

    Args:
        flat: ``{metric name: value}``, e.g. :meth:`Evaluation.flat`.
        gate_file: YAML gate file (default: the one shipped with vbes).
        family: model family (``reference``, ``surrogate``, ``codec``, ...).
        channel: the channel; its gates are added to the family's ``default`` ones.

    Returns:
        one row per (gate, matching metric) with value, bound and result.
    """
    path = Path(gate_file) if gate_file is not None else DEFAULT_GATE_FILE
    data = load_gates(path)
    family = family or data.get("default_family") or next(iter(data["families"]))
    if family not in data["families"]:
        raise ConfigError(f"gate file {path}: no family {family!r}; known: {', '.join(data['families'])}")
    channels = data["families"][family]
    gates = list(channels.get("default", [])) + (
        list(channels.get(channel, [])) if channel and channel != "default" else []
    )
    rows: list[dict[str, Any]] = []
    for gate in gates:
        label = gate.get("name") or gate["metric"]
        matches = sorted(name for name in flat if fnmatch.fnmatchcase(name, gate["metric"]))
        if not matches:
            rows.append(
                {
                    "gate": label,
                    "metric": gate["metric"],
                    "value": None,
                    "bound": _bound(gate),
                    "passed": bool(gate.get("optional", False)),
                    "note": "no metric matches this pattern",
                }
            )
            continue
        for name in matches:
            value = float(flat[name])
            judged = abs(value) if gate.get("abs") else value
            ok = not math.isnan(value)  # NaN never passes
            if "min" in gate:
                ok = ok and judged >= gate["min"]
            if "max" in gate:
                ok = ok and judged <= gate["max"]
            rows.append({"gate": label, "metric": name, "value": value, "bound": _bound(gate), "passed": bool(ok)})
    return GateOutcome(family, channel, all(r["passed"] for r in rows), rows, str(path), gate_file_sha256(path))


def _bound(gate: Mapping[str, Any]) -> str:
    parts = []
    wrap = "|x|" if gate.get("abs") else "x"
    if "min" in gate:
        parts.append(f"{wrap} >= {gate['min']}")
    if "max" in gate:
        parts.append(f"{wrap} <= {gate['max']}")
    return " and ".join(parts)


@dataclass
class PromotionResult:
    """What :func:`promote` did."""

    model_name: str
    version: str
    promoted: bool
    outcome: GateOutcome
    artifact_path: str | None


def promote(
    model_name: str,
    version: str | int,
    evaluation: Any,
    gate_file: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    family: str | None = None,
    channel: str | None = None,
) -> PromotionResult:
    """Move ``models:/<model_name>@production`` to ``version`` only if the evaluation passes every gate.

    Either way the evaluation is recorded on the model version: ``evaluation.json`` (every number plus the gate
    outcome) and ``report.html`` as artifacts of the version's run under ``evaluation/v<version>/``, and tags
    ``vbes.evaluation.passed``, ``vbes.evaluation.gate_sha256``, ``vbes.evaluation.gate_family``,
    ``vbes.evaluation.n_tests``, ``vbes.evaluation.n_failed_gates``, ``vbes.evaluation.artifacts``,
    ``vbes.evaluation.time``.

    Args:
        model_name: registered model name.
        version: its version.
        evaluation: an :class:`~vbes.evaluation.suite.Evaluation`, or its JSON (dict or path).
        gate_file: YAML gate file (default: the shipped one).
        tracking_uri: MLflow tracking URI (default: MLflow's current one).
        family: gate family (default: the gate file's default).
        channel: channel for channel-specific gates (default: the evaluation's).

    Raises:
        GateFailed: after recording, when a gate failed (the alias is left where it was).
        NotFound: no such model version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from vbes.evaluation.suite import Evaluation, flatten

    if isinstance(evaluation, Evaluation):
        data = evaluation.as_dict()
    elif isinstance(evaluation, Mapping):
        data = dict(evaluation)
    else:
        data = json.loads(Path(evaluation).read_text())
    channel = channel if channel is not None else str(data.get("channel") or "")
    outcome = check_gates(flatten(data), gate_file, family, channel)

    client = MlflowClient(tracking_uri=tracking_uri)
    version = str(version)
    try:
        model_version = client.get_model_version(model_name, version)
    except MlflowException as exc:
        raise NotFound(f"model {model_name!r} has no version {version} in {client.tracking_uri}") from exc

    artifact_path: str | None = f"evaluation/v{version}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        record = dict(data)
        record["gates"] = outcome.as_dict()
        (folder / "evaluation.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
        if isinstance(evaluation, Evaluation):
            from vbes.evaluation.report import render_html

            (folder / "report.html").write_text(render_html(evaluation, outcome.as_dict()))
        gate_path = Path(outcome.gate_file)
        (folder / f"gates-{outcome.gate_sha256[:12]}.yaml").write_bytes(gate_path.read_bytes())
        if model_version.run_id:
            client.log_artifacts(model_version.run_id, str(folder), artifact_path)
        else:
            artifact_path = None
    tags = {
        "vbes.evaluation.passed": str(outcome.passed).lower(),
        "vbes.evaluation.gate_sha256": outcome.gate_sha256,
        "vbes.evaluation.gate_family": outcome.family,
        "vbes.evaluation.channel": channel,
        "vbes.evaluation.n_tests": str(data.get("n_tests", "")),
        "vbes.evaluation.n_failed_gates": str(len(outcome.failed)),
        "vbes.evaluation.artifacts": f"runs:/{model_version.run_id}/{artifact_path}" if artifact_path else "",
        "vbes.evaluation.time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if not outcome.passed:
        names = ", ".join(sorted({f"{g['gate']} ({g['metric']})" for g in outcome.failed})[:5])
        raise GateFailed(
            f"model {model_name} version {version} failed {len(outcome.failed)} gate check(s) of family "
            f"{outcome.family!r}: {names}; alias {PRODUCTION_ALIAS!r} not moved"
        )
    client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, version)
    return PromotionResult(model_name, version, True, outcome, artifact_path)
