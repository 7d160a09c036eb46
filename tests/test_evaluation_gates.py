"""Gates and promotion: YAML thresholds per family and channel; the MLflow ``production`` alias moves only when
every gate passed, and the evaluation is recorded on the model version either way (real MLflow, SQLite store
under tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vbes.evaluation.gates import DEFAULT_GATE_FILE, check_gates, gate_file_sha256, load_gates, promote
from vbes.evaluation.suite import EvaluationConfig, evaluate

from vbes.errors import ConfigError, GateFailed, NotFound

# mlflow.pyfunc warns about its own type hints at import time; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")

CONFIG = EvaluationConfig(null_trials=0, classifier_folds=2, classifier_max_iter=50, permutations=100)


def test_default_gate_file_is_valid_and_packaged() -> None:
    data = load_gates(DEFAULT_GATE_FILE)
    assert {"reference", "surrogate", "codec"} <= set(data["families"])


def test_gates_match_patterns_bounds_and_channels(tmp_path: Path) -> None:
    gate_file = tmp_path / "gates.yaml"
    gate_file.write_text(
        "version: 1\nfamilies:\n  surrogate:\n    default:\n"
        "      - {metric: classifier/auc, max: 0.6}\n"
        "      - {metric: 'features/*/w1.w1_over_resolution', max: 0.5}\n"
        "    mumu:\n      - {metric: observables/m_ll/position, max: 3, abs: true}\n"
    )
    flat = {
        "classifier/auc": 0.55,
        "features/a/w1.w1_over_resolution": 0.2,
        "features/b/w1.w1_over_resolution": 0.7,
        "observables/m_ll/position": -4.0,
    }
    outcome = check_gates(flat, gate_file, "surrogate", "rhopi")
    assert not outcome.passed
    assert [g["metric"] for g in outcome.failed] == ["features/b/w1.w1_over_resolution"]
    mumu = check_gates(flat, gate_file, "surrogate", "mumu")
    assert {g["metric"] for g in mumu.failed} == {"features/b/w1.w1_over_resolution", "observables/m_ll/position"}
    # a gate that matches nothing fails rather than passing silently
    nothing = check_gates({"classifier/auc": 0.5}, gate_file, "surrogate")
    assert any(g["note"] == "no metric matches this pattern" for g in nothing.failed)
    assert outcome.gate_sha256 == gate_file_sha256(gate_file)


@pytest.mark.parametrize(
    "text, message",
    [
        ("families: [1, 2]", "families"),
        ("families:\n  x:\n    default:\n      - {metric: a}\n", "neither 'min' nor 'max'"),
        ("families:\n  x:\n    default:\n      - {metric: a, max: high}\n", "must be a number"),
        ("families:\n  x:\n    default:\n      - {metric: a, max: 1, typo: 2}\n", "unknown keys"),
        ("version: 9\nfamilies:\n  x: {}\n", "unknown version"),
        ("families: {a: [}", "not valid YAML"),
    ],
)
def test_broken_gate_files_give_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gates.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_gates(path)


@pytest.fixture(scope="module")
def evaluations() -> dict:
    rng = np.random.default_rng(11)
    reference = rng.normal(size=(12_000, 3))
    good = evaluate(rng.normal(size=(6000, 3)), reference, config=CONFIG)
    bad = evaluate(rng.normal(0.3, 1, (6000, 3)), reference, config=CONFIG)
    assert good.passed and not bad.passed
    return {"good": good, "bad": bad}


@pytest.fixture
def registered_model(tmp_path: Path) -> tuple[str, str, str]:
    """A tiny pyfunc model registered twice in a fresh SQLite MLflow store; returns (uri, name, run id of v2)."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    class Doubler(mlflow.pyfunc.PythonModel):
        def predict(self, model_input: list[float], params: dict[str, str] | None = None) -> list[float]:
            return [2 * x for x in model_input]

    uri = f"sqlite:///{tmp_path / 'mlflow.sqlite'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("evaluation-test", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(uri)
    run_ids = []
    try:
        for _ in range(2):
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.pyfunc.log_model(
                    name="model", python_model=Doubler(), pip_requirements=[], registered_model_name="fixture-model"
                )
                run_ids.append(run.info.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    client.set_registered_model_alias("fixture-model", "production", "1")
    return uri, "fixture-model", run_ids[1]


def test_promote_moves_production_only_when_every_gate_passes(registered_model, evaluations, tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    uri, name, run_id = registered_model
    client = MlflowClient(tracking_uri=uri)

    with pytest.raises(GateFailed, match="not moved"):
        promote(name, 2, evaluations["bad"], DEFAULT_GATE_FILE, uri, family="reference")
    assert str(client.get_model_version_by_alias(name, "production").version) == "1"
    failed_tags = client.get_model_version(name, "2").tags
    assert failed_tags["vbes.evaluation.passed"] == "false"
    assert int(failed_tags["vbes.evaluation.n_failed_gates"]) > 0

    result = promote(name, 2, evaluations["good"], DEFAULT_GATE_FILE, uri, family="reference")
    assert result.promoted
    assert str(client.get_model_version_by_alias(name, "production").version) == "2"
    tags = client.get_model_version(name, "2").tags
    assert tags["vbes.evaluation.passed"] == "true"
    assert tags["vbes.evaluation.gate_sha256"] == gate_file_sha256(DEFAULT_GATE_FILE)
    assert tags["vbes.evaluation.artifacts"] == f"runs:/{run_id}/evaluation/v2"

    # the report, the JSON and the gate file itself are stored with the version's run
    local = Path(client.download_artifacts(run_id, "evaluation/v2", str(tmp_path / "download")))
    names = {p.name for p in local.iterdir()}
    assert {"evaluation.json", "report.html"} <= names
    record = json.loads((local / "evaluation.json").read_text())
    assert record["gates"]["passed"] is True and record["n_tests"] == len(evaluations["good"].tests)
    assert any(n.startswith("gates-") and n.endswith(".yaml") for n in names)


def test_promote_refuses_an_unknown_version(registered_model, evaluations) -> None:
    uri, name, _ = registered_model
    with pytest.raises(NotFound, match="no version 7"):
        promote(name, 7, evaluations["good"], DEFAULT_GATE_FILE, uri, family="reference")


def test_promote_accepts_the_evaluation_json(registered_model, evaluations, tmp_path) -> None:
    from mlflow.tracking import MlflowClient
    from vbes.evaluation.report import write_json

    uri, name, _ = registered_model
    path = write_json(evaluations["good"], tmp_path / "evaluation.json")
    promote(name, 2, path, DEFAULT_GATE_FILE, uri, family="reference")
    assert str(MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, "production").version) == "2"


def test_cli_exits_nonzero_when_a_gate_fails(run_cli, tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    np.save(tmp_path / "ref.npy", rng.normal(size=(12_000, 2)))
    np.save(tmp_path / "same.npy", rng.normal(size=(6000, 2)))
    np.save(tmp_path / "off.npy", rng.normal(0.2, 1, (6000, 2)))
    common = (
        "--reference",
        tmp_path / "ref.npy",
        "--folds",
        "2",
        "--permutations",
        "100",
        "--gate",
        DEFAULT_GATE_FILE,
    )
    ok = run_cli("evaluate", "--sample", tmp_path / "same.npy", "--report", tmp_path / "r1", *common)
    assert ok.exit_code == 0, ok.stderr
    assert "gates (reference): passed" in ok.stdout
    off = run_cli("evaluate", "--sample", tmp_path / "off.npy", "--report", tmp_path / "r2", *common)
    assert off.exit_code == 1
    assert off.stderr.strip().splitlines()[-1].startswith("vbes: error:") and "gate" in off.stderr
    assert (tmp_path / "r2" / "report.html").is_file()  # the report is written before the verdict
    gates = json.loads((tmp_path / "r2" / "evaluation.json").read_text())["gates"]
    assert gates["passed"] is False


def test_cli_gate_decides_the_exit_status_of_a_surrogate(run_cli, tmp_path: Path) -> None:
    # statistically distinguishable (x0 shifted by 0.15 sd) but within a surrogate's loose gates: the gates decide
    rng = np.random.default_rng(13)
    np.save(tmp_path / "ref.npy", rng.normal(size=(12_000, 2)))
    np.save(tmp_path / "model.npy", rng.normal([0.15, 0.0], 1, (6000, 2)))
    gate_file = tmp_path / "gates.yaml"
    gate_file.write_text(
        "version: 1\nfamilies:\n  surrogate:\n    default:\n      - {metric: classifier/auc, max: 0.6}\n"
    )
    common = ("--reference", tmp_path / "ref.npy", "--folds", "2", "--permutations", "100", "--null-trials", "0")
    common += ("--json",)
    plain = run_cli("evaluate", "--sample", tmp_path / "model.npy", "--report", tmp_path / "r1", *common)
    assert plain.exit_code == 1 and json.loads(plain.stdout)["passed"] is False
    gated = run_cli(
        "evaluate", "--sample", tmp_path / "model.npy", "--report", tmp_path / "r2", *common,
        "--gate", gate_file, "--family", "surrogate",
    )
    assert gated.exit_code == 0, gated.stderr
    summary = json.loads(gated.stdout)
    assert summary["passed"] is False and summary["gates_passed"] is True

