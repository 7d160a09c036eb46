"""What the MLflow model registry holds: every registered model with versions, aliases and lineage."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from vbes.errors import InvalidInput, NotFound

__all__ = ["describe_version", "list_models", "log_evaluation", "parse_model_uri"]

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Args:
        uri: a model URI.

    Raises:
        InvalidInput: anything else.
    """
    match = _URI.match(uri)
    if not match:
        raise InvalidInput(f"{uri!r} is not a model URI (models:/NAME@ALIAS or models:/NAME/VERSION)")
    return match["name"], match["alias"], match["version"]


def _gate_status(tags: dict[str, str]) -> str:
    passed = tags.get("vbes.evaluation.passed")
    return "not evaluated" if passed is None else "passed" if passed == "true" else "failed"


def _lineage(tags: dict[str, str]) -> dict[str, Any]:
    count = int(tags.get("vbes.data.count", "0") or 0)
    payloads = tags.get("vbes.calibration_payloads")
    return {
        "files": [
            {"source": tags.get(f"vbes.data.{i}.source"), "sha256": tags.get(f"vbes.data.{i}.sha256")}
            for i in range(count)
        ],
        "calibration_tags": [t for t in tags.get("vbes.calibration_tags", "").split(",") if t],
        "calibration_payloads": json.loads(payloads) if payloads else {},
        "code_version": tags.get("vbes.code_version"),
        "config_sha256": tags.get("vbes.config_sha256"),
        "family": tags.get("vbes.family"),
    }


def _version_dict(name: str, mv: Any, aliases: dict[str, str]) -> dict[str, Any]:
    tags = dict(mv.tags or {})
    return {
        "version": str(mv.version),
        "uri": f"models:/{name}/{mv.version}",
        "aliases": sorted(f"models:/{name}@{a}" for a, v in aliases.items() if str(v) == str(mv.version)),
        "run_id": mv.run_id,
        "status": mv.status,
        "gate_status": _gate_status(tags),
        "lineage": _lineage(tags),
    }


def _all_pages(search: Any, *args: Any) -> list[Any]:
    """Every result of an MLflow search, page after page."""
    results: list[Any] = []
    token = None
    while True:
        page = search(*args, page_token=token)
        results.extend(page)
        token = page.token
        if not token:
            return results


def list_models(tracking_uri: str) -> dict[str, Any]:
    """Every registered model of the tracking store, with versions, aliases and lineage.

    Args:
        tracking_uri: the MLflow tracking (and registry) URI.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    models = []
    for rm in _all_pages(client.search_registered_models):
        aliases = {a: str(v) for a, v in (rm.aliases or {}).items()}
        versions = _all_pages(client.search_model_versions, f"name='{rm.name}'")
        models.append({
            "name": rm.name,
            "aliases": {f"models:/{rm.name}@{a}": v for a, v in sorted(aliases.items())},
            "versions": sorted((_version_dict(rm.name, mv, aliases) for mv in versions),
                               key=lambda v: int(v["version"])),
        })
    return {"tracking_uri": tracking_uri, "models": sorted(models, key=lambda m: m["name"])}


def describe_version(tracking_uri: str, uri: str) -> dict[str, Any]:
    """One registered version in full: lineage, gate status, the run's parameters and last metrics, the card.

    Args:
        tracking_uri: the MLflow tracking (and registry) URI.
        uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        NotFound: no such model, alias or version.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, version = parse_model_uri(uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
        aliases = {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        raise NotFound(f"{uri}: no such registered model version in {tracking_uri}") from None
    out = _version_dict(name, mv, aliases)
    out.update({"name": name, "tracking_uri": tracking_uri, "source": mv.source})
    card: dict[str, Any] | None = None
    if mv.run_id:
        run = client.get_run(mv.run_id)
        out["params"] = dict(run.data.params)
        out["metrics"] = dict(run.data.metrics)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                card = json.loads(Path(client.download_artifacts(mv.run_id, "model_card.json", tmp)).read_text())
            except (MlflowException, OSError, ValueError):
                card = None
    out["model_card"] = card
    return out


def log_evaluation(tracking_uri: str, run_id: str, report_dir: str | Path, reference: str | Path,
                   flat: dict[str, Any], gates: dict[str, Any] | None = None) -> None:
    """Log an evaluation report to a model's MLflow run: the report folder as artifacts under
    ``evaluations/<reference name>/``, and as tags ``vbes.evaluation.<reference name>.*`` its verdicts
    (``passed``, ``memorisation.passed``, with ``gates_passed`` and ``gate_family`` when gates were applied:
    ``true``/``false``) and its classifier AUC.

    Args:
        tracking_uri: the MLflow tracking URI.
        run_id: the model's training run.
        report_dir: the report folder (report.html, evaluation.json, the sample).
        reference: the reference file evaluated against.
        flat: the evaluation's flat metrics.
        gates: the gate outcome (:meth:`vbes.evaluation.gates.GateOutcome.as_dict`), if gates were applied.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    stem = Path(reference).stem
    folder = Path(report_dir)
    for name in ("report.html", "evaluation.json"):
        if (folder / name).is_file():
            client.log_artifact(run_id, str(folder / name), artifact_path=f"evaluations/{stem}")
    prefix = f"vbes.evaluation.{stem}"
    # flat metrics are numbers (a verdict is 1.0 or 0.0): verdicts are tagged as the registry's other verdicts
    for key in ("passed", "memorisation/passed"):
        if key in flat:
            client.set_tag(run_id, f"{prefix}.{key.replace('/', '.')}", "true" if flat[key] else "false")
    if "classifier/auc" in flat:
        client.set_tag(run_id, f"{prefix}.classifier.auc", str(flat["classifier/auc"]))
    if gates is not None:
        client.set_tag(run_id, f"{prefix}.gates_passed", "true" if gates["passed"] else "false")
        client.set_tag(run_id, f"{prefix}.gate_family", str(gates["family"]))
