"""`vbes train` end to end on the smoke configuration: MLflow run, lineage, registered pyfunc model with alias
candidate (loaded in a fresh process), resume after SIGKILL, `vbes models list|show`, one-line config errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_json, isolated_environment
import yaml

from vbes.datasets import file_info

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "configs" / "smoke-record-ae.yaml"
FULL = ROOT / "training" / "configs" / "full-record-ae.yaml"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, rhopi_sample: Path) -> Iterator[dict[str, str]]:
    """One VBES_HOME for the module (one MLflow store), the rho pi sample in its data folder."""
    root = tmp_path_factory.mktemp("training")
    data = root / "data"
    data.mkdir()
    shutil.copy(rhopi_sample, data / rhopi_sample.name)
    values = {"VBES_HOME": str(root / "home"), "VBES_DATA": str(data)}
    with isolated_environment(values):
        yield values




def _tracking_uri(env: dict[str, str]) -> str:
    return f"sqlite:///{env['VBES_HOME']}/mlflow.sqlite"


@pytest.fixture(scope="module")
def trained(env: dict[str, str]) -> dict[str, Any]:
    """`vbes train` of the smoke configuration, exactly as shipped."""
    return cli_json("train", str(SMOKE))


def test_train_tracks_lineage_and_registers_a_candidate(env: dict[str, str], trained: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=_tracking_uri(env), registry_uri=_tracking_uri(env))
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["family"] == "record_autoencoder" and run.data.params["seed"] == "1"
    # one value per epoch, at step = epoch
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [0, 1] and trained["epochs"] == 2

    # lineage: the SHA-256 of the very bytes trained on, and the calibration the file says made it
    sample = Path(env["VBES_DATA"]) / "jpsi-rhopi.h5"
    provenance = file_info(sample)["provenance"]
    tags = run.data.tags
    assert tags["vbes.data.count"] == "1"
    assert tags["vbes.data.0.sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert tags["vbes.calibration_tags"] == provenance["calibration_tag"] == "BOSS-6.6.4-sim-2"
    assert json.loads(tags["vbes.calibration_payloads"]) == {"BOSS-6.6.4-sim-2": provenance["calibration_payloads"]}
    assert tags["vbes.code_version"].startswith("vbes ")

    # the resolved configuration is an artifact: every default written out
    folder = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(Path(env["VBES_HOME"]) / "dl")))
    resolved = yaml.safe_load(folder.read_text())
    assert resolved["trainer"]["accelerator"] == "cpu" and resolved["registry"]["model_name"] == trained["model_name"]

    version = client.get_model_version_by_alias(trained["model_name"], "candidate")
    assert str(version.version) == trained["version"] and version.run_id == run.info.run_id
    assert version.tags["vbes.data.0.sha256"] == tags["vbes.data.0.sha256"]
    assert "production" not in client.get_registered_model(trained["model_name"]).aliases


def test_each_registered_version_is_archived_as_a_preservation_package(env: dict[str, str], trained: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    import tarfile

    from mlflow.tracking import MlflowClient

    from vbes.archive import Archive
    from vbes.models import load
    from vbes.settings import load_settings

    client = MlflowClient(tracking_uri=_tracking_uri(env), registry_uri=_tracking_uri(env))
    tags = client.get_model_version(trained["model_name"], trained["version"]).tags
    assert tags["vbes.preservation.name"] == f"models:{trained['model_name']}/v{trained['version']}.tar"
    with Archive.from_settings(load_settings()) as archive:
        record = archive.get(tags["vbes.preservation.name"], tmp_path / "package.tar")
    assert record.sha256 == tags["vbes.preservation.sha256"]
    assert hashlib.sha256((tmp_path / "package.tar").read_bytes()).hexdigest() == record.sha256
    with tarfile.open(tmp_path / "package.tar") as tar:
        assert sorted(tar.getnames()) == ["config.yaml", "lineage.json", "model/model.json", "model/tensors.npz",
                                          "model_card.json", "requirements.lock"]
        tar.extractall(tmp_path / "package", filter="data")
    lock = (tmp_path / "package" / "requirements.lock").read_text().splitlines()
    assert any(line.startswith("torch==") for line in lock) and any(line.startswith("mlflow==") for line in lock)
    lineage = json.loads((tmp_path / "package" / "lineage.json").read_text())
    assert lineage["files"][0]["sha256"] == tags["vbes.data.0.sha256"]
    assert load(tmp_path / "package" / "model").family == "record_autoencoder"


def test_models_list_and_show(env: dict[str, str], trained: dict[str, Any]) -> None:
    listing = cli_json("models", "list")
    assert listing["tracking_uri"] == _tracking_uri(env)
    (entry,) = [m for m in listing["models"] if m["name"] == trained["model_name"]]
    alias = f"models:/{trained['model_name']}@candidate"
    assert entry["aliases"] == {alias: trained["version"]}
    version = entry["versions"][-1]
    assert version["aliases"] == [alias] and version["gate_status"] == "not evaluated"
    assert version["lineage"]["files"][0]["source"] == "jpsi-rhopi.h5"

    shown = cli_json("models", "show", alias)
    assert shown["version"] == trained["version"] and shown["run_id"] == trained["run_id"]
    assert shown["model_card"]["family"] == "record_autoencoder"
    assert shown["model_card"]["training_domain"]["channels"] == ["rhopi"]


def test_registered_model_loads_and_predicts_in_a_fresh_process(env: dict[str, str], trained: dict[str, Any],
                                                                fresh_process_predict: Any) -> None:
    sample = Path(env["VBES_DATA"]) / "jpsi-rhopi.h5"
    answer = fresh_process_predict(_tracking_uri(env), trained["model_uri"], sample)
    assert answer["rows"] == answer["n"] > 0
    assert {"cos_theta", "helix_cov_14", "charge", "dedx_nhits"} <= set(answer["columns"])
    assert answer["max_abs_cos"] <= 1.0 and set(answer["charges"]) <= {-1, 1}


def test_a_killed_run_resumes_from_its_last_checkpoint(env: dict[str, str], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = yaml.safe_load(SMOKE.read_text())
    config["name"] = "record-ae-resume"
    # small batches make epochs long enough (0.1 s) that the kill lands while training is still running
    config["trainer"].update({"max_epochs": 6, "batch_size": 8, "early_stopping_patience": 6})
    path = tmp_path / "resume.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = Path(env["VBES_HOME"]) / "training" / "record-ae-resume"
    last = run_dir / "checkpoints" / "last.ckpt"

    proc = subprocess.Popen([sys.executable, "-m", "vbes.cli", "train", str(path)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before its first checkpoint was seen"
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "running"

    result = cli_json("train", str(path))
    assert result["run_id"] == state["run_id"]
    assert result["resumed_from_epoch"] is not None and 1 <= result["resumed_from_epoch"] < 6
    client = MlflowClient(tracking_uri=_tracking_uri(env), registry_uri=_tracking_uri(env))
    assert client.get_run(state["run_id"]).info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(state["run_id"], "val_loss")}
    assert steps == set(range(result["epochs"]))
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"


def _bad(tmp_path: Path, edit: Any) -> Path:
    config = yaml.safe_load(SMOKE.read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(epochs=3), r"Additional properties are not allowed \('epochs' was unexpected\)"),
        (lambda c: c["trainer"].update(max_epochs=0), r"trainer\.max_epochs: 0 is less than the minimum of 1"),
        (lambda c: c["data"].pop("files"), r"data: name training files in 'files' or 'archive'"),
        (lambda c: c.update(version=2), r"version: 2 is not a known configuration version"),
        (lambda c: c.update(family="gan"), r"unknown model family 'gan'"),
        (lambda c: c["data"].update(files=["nowhere.h5"]), r"training file .*nowhere\.h5 does not exist"),
    ],
    ids=["unknown-key", "below-minimum", "no-data", "unknown-version", "unknown-family", "missing-file"],
)
def test_a_bad_config_fails_with_one_line(env: dict[str, str], run_cli: Any, tmp_path: Path, edit: Any,
                                          message: str) -> None:
    result = run_cli("train", _bad(tmp_path, edit))
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vbes: error: "), result.stderr
    assert __import__("re").search(message, lines[0]), lines[0]


def test_invalid_yaml_and_the_shipped_full_config(run_cli: Any, tmp_path: Path) -> None:
    from vbes.training.config import load_config

    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nname: [unclosed\n")
    result = run_cli("train", broken)
    assert result.exit_code != 0 and result.stderr.count("\n") == 1 and "not valid YAML: line" in result.stderr
    full = load_config(FULL)
    assert full["data"]["archive"][0] == "demo:jpsi-rhopi.h5" and full["registry"]["model_name"] == "vbes-record-ae"


def test_training_data_from_the_archive_is_verified_and_fingerprinted(env: dict[str, str], tmp_path: Path) -> None:
    from vbes.archive import Archive
    from vbes.settings import load_settings
    from vbes.training.data import load_training_data

    settings = load_settings()
    sample = Path(env["VBES_DATA"]) / "jpsi-rhopi.h5"
    with Archive.from_settings(settings) as archive:
        archive.put(sample, "mc:train/jpsi-rhopi.h5")
    data = load_training_data({"archive": ["mc:train/jpsi-rhopi.h5"]}, settings, tmp_path / "cache")
    (source,) = data.sources
    assert source.source == "archive:mc:train/jpsi-rhopi.h5"
    assert source.sha256 == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert source.path.read_bytes() == sample.read_bytes() and source.path.is_relative_to(tmp_path / "cache")
    assert data.lineage()["calibration_tags"] == ["BOSS-6.6.4-sim-2"]
    assert len(data.tables["events"]["run"]) == 300


def test_an_unfinished_run_of_another_configuration_is_not_resumed(env: dict[str, str], run_cli: Any,
                                                                   tmp_path: Path) -> None:
    config = yaml.safe_load(SMOKE.read_text())
    config["name"] = "record-ae-other"
    run_dir = Path(env["VBES_HOME"]) / "training" / "record-ae-other"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run_dir / "state.json").write_text(json.dumps({"run_id": "x", "config_sha256": "0" * 64, "status": "running"}))
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("train", path)
    assert result.exit_code != 0 and result.stderr.count("\n") == 1
    assert "unfinished run of record-ae-other with another configuration" in result.stderr
    assert "--fresh" in result.stderr
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    fresh = run_cli("train", path, "--fresh", "--json")
    assert fresh.exit_code == 0, fresh.stderr
    assert json.loads(fresh.stdout)["resumed_from_epoch"] is None
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"


def test_mlflow_models_serve_answers_invocations(env: dict[str, str], trained: dict[str, Any], tmp_path: Path,
                                                 served_model_predict: Any) -> None:
    import numpy as np

    from vbes.datasets import read_events
    from vbes.models.records import flatten

    tracks = read_events(Path(env["VBES_DATA"]) / "jpsi-rhopi.h5")["tracks"]
    rows = {k: np.asarray(v[:4]).tolist() for k, v in flatten(tracks).items()}
    predictions = served_model_predict(_tracking_uri(env), trained["model_uri"], rows, tmp_path)
    assert len(predictions) == 4
    assert all(abs(p["cos_theta"]) <= 1 and p["charge"] in (-1, 1) for p in predictions)


def test_two_process_ddp_on_cpu_trains_tracks_and_registers_once(env: dict[str, str], tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    config = yaml.safe_load(SMOKE.read_text())
    config["name"] = "record-ae-ddp"
    config["trainer"].update({"devices": 2, "strategy": "ddp", "max_epochs": 2})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "vbes.cli", "train", str(path), "--json"], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr
    result = json.loads(proc.stdout)  # one JSON document: the second process prints nothing
    client = MlflowClient(tracking_uri=_tracking_uri(env), registry_uri=_tracking_uri(env))
    run = client.get_run(result["run_id"])
    assert run.data.tags["vbes.world_size"] == "2" and run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(result["run_id"], "val_loss")) == [0, 1]
    versions = client.search_model_versions(f"name='{result['model_name']}'")
    assert [str(v.version) for v in versions] == [result["version"]]
    assert str(client.get_model_version_by_alias(result["model_name"], "candidate").version) == result["version"]
