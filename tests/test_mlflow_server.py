"""`vbes train` and `vbes models` against a real `mlflow server` process on loopback whose backend store is
PostgreSQL and which serves the artifacts itself: registration, lineage, the run's record and a fresh-process load."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_json, isolated_environment


# one server start (~10 s of imports and schema migrations) and one training: ~40 s on 2 busy cores
pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "configs" / "smoke-record-ae.yaml"
START_TIMEOUT_S = 120.0


@dataclass
class MlflowServer:
    """A started ``mlflow server``; :meth:`ready` waits until it answers."""

    uri: str
    backend_store_uri: str
    artifacts: Path
    log: Path
    proc: subprocess.Popen[bytes]
    answered: bool = False

    def ready(self) -> None:
        """Return once ``/health`` answers; fail with the log's tail if the server exits or takes too long."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answered:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode} before answering:\n{self.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health within {START_TIMEOUT_S:.0f} s:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    self.answered = response.status == 200
            except OSError:
                time.sleep(0.25)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else "(no log)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (mlflow, its uvicorn workers), SIGKILL what is left after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    # a worker may outlive its parent: the group goes whatever the parent did
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mlflow_server(pg_module_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` on 127.0.0.1 with its backend store in a fresh PostgreSQL database and artifacts proxied
    to a temporary folder (``mlflow-artifacts:/``); one per module, stopped with its workers afterwards.

    It is started, not yet answering: call :meth:`MlflowServer.ready` (its start, seconds of imports and schema
    migrations, overlaps whatever the caller prepares meanwhile)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts, log = root / "artifacts", root / "server.log"
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", pg_module_url,
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        # mlflow 3 checks the Host header (DNS rebinding): name exactly what the clients send
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]
    # the job runner (a huey consumer) serves the UI's jobs only: it costs seconds at start and is not used here
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    try:
        yield MlflowServer(f"http://127.0.0.1:{port}", pg_module_url, artifacts, log, proc)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def env(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory,
        rhopi_sample: Path) -> Iterator[dict[str, str]]:
    """One VBES_HOME for the module, the rho pi sample in its data folder, MLflow at the (answering) server."""
    root = tmp_path_factory.mktemp("training-on-server")
    data = root / "data"
    data.mkdir()
    shutil.copy(rhopi_sample, data / rhopi_sample.name)
    mlflow_server.ready()
    values = {"VBES_HOME": str(root / "home"), "VBES_DATA": str(data), "VBES_MLFLOW_URI": mlflow_server.uri}
    with isolated_environment(values, ("VBES_", "MLFLOW_")):
        yield values




@pytest.fixture(scope="module")
def trained(env: dict[str, str], mlflow_server: MlflowServer) -> dict[str, Any]:
    """`vbes train` of the smoke configuration, exactly as shipped, tracked on the server."""
    try:
        return cli_json("train", str(SMOKE))
    except BaseException:
        print(f"mlflow server log:\n{mlflow_server.tail()}", file=sys.stderr)
        raise


def test_a_candidate_registered_on_the_server_is_listed_and_loads_in_a_fresh_process(
        env: dict[str, str], mlflow_server: MlflowServer, trained: dict[str, Any], fresh_process_predict: Any) -> None:
    alias = f"models:/{trained['model_name']}@candidate"
    assert trained["version"] == "1" and trained["model_uri"] == alias

    listing = cli_json("models", "list")
    assert listing["tracking_uri"] == mlflow_server.uri
    (entry,) = [m for m in listing["models"] if m["name"] == trained["model_name"]]
    assert entry["aliases"] == {alias: "1"}
    (version,) = entry["versions"]
    assert version["aliases"] == [alias] and version["run_id"] == trained["run_id"]
    sample = Path(env["VBES_DATA"]) / "jpsi-rhopi.h5"
    assert version["lineage"]["files"] == [{"source": "jpsi-rhopi.h5",
                                            "sha256": hashlib.sha256(sample.read_bytes()).hexdigest()}]

    # the server holds the artifacts (proxied to its destination), not the client's home folder
    assert {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()} >= {"MLmodel", "config.yaml",
                                                                                   "tensors.npz"}
    home_artifacts = Path(env["VBES_HOME"]) / "mlartifacts"
    assert not [p for p in home_artifacts.rglob("*") if p.is_file()]

    answer = fresh_process_predict(mlflow_server.uri, alias, sample, rows=6,
                                   env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    assert answer["rows"] == answer["n"] == 6
    assert {"cos_theta", "helix_cov_14", "charge", "dedx_nhits"} <= set(answer["columns"])
    assert answer["max_abs_cos"] <= 1.0 and set(answer["charges"]) <= {-1, 1}


def test_the_run_and_the_version_lineage_are_in_postgresql(env: dict[str, str], mlflow_server: MlflowServer,
                                                             trained: dict[str, Any]) -> None:
    import sqlalchemy as sa
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    run = client.get_run(trained["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["family"] == "record_autoencoder" and run.data.params["seed"] == "1"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [0, 1] and all(m.value > 0 for m in history)

    sha = hashlib.sha256((Path(env["VBES_DATA"]) / "jpsi-rhopi.h5").read_bytes()).hexdigest()
    version = client.get_model_version_by_alias(trained["model_name"], "candidate")
    assert version.run_id == run.info.run_id and version.tags["vbes.training_run"] == run.info.run_id
    assert version.tags["vbes.data.0.sha256"] == run.data.tags["vbes.data.0.sha256"] == sha
    assert version.tags["vbes.calibration_tags"] == "BOSS-6.6.4-sim-2"

    # what the server answered is what its PostgreSQL database holds (not a store of its own elsewhere)
    engine = sa.create_engine(mlflow_server.backend_store_uri)
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.text("select run_uuid from runs")).scalars().all()
            steps = conn.execute(sa.text("select step from metrics where run_uuid = :r and key = 'val_loss'"),
                                 {"r": run.info.run_id}).scalars().all()
    finally:
        engine.dispose()
    assert runs == [run.info.run_id] and sorted(steps) == [0, 1]
