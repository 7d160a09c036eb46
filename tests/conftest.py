"""Shared fixtures: an isolated VBES_HOME, the real shared data, fresh PostgreSQL databases, the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get("VBES_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real BESIII DST, CMS Open Data, the talk's bookkeeping table)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def vbes_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh VBES_HOME; every VBES_* setting from the outer environment is cleared."""
    for var in list(os.environ):
        if var.startswith("VBES_") and var not in ("VBES_TEST_PG",):
            monkeypatch.delenv(var)
    home = tmp_path / "vbes-home"
    monkeypatch.setenv("VBES_HOME", str(home))
    return home


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``vbes ARGS...`` in-process through :func:`vbes.cli.main`; returns exit code, stdout, stderr."""
    from vbes.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


def _pg_available() -> bool:
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_available() -> bool:
    return _pg_available()


@contextlib.contextmanager
def _fresh_pg_database(available: bool) -> Iterator[str]:
    """A brand-new PostgreSQL database, dropped on exit; skips (fails under CI) when PostgreSQL is absent."""
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must have it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    import sqlalchemy as sa

    name = f"vbes_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    """SQLAlchemy URL of a brand-new PostgreSQL database, dropped after the test."""
    with _fresh_pg_database(pg_available) as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_url(pg_available: bool) -> Iterator[str]:
    """Like ``pg_url``, one database for the whole test module (for a server that the module's tests share)."""
    with _fresh_pg_database(pg_available) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.sqlite'}"
    return request.getfixturevalue("pg_url")


def _simulated(factory: pytest.TempPathFactory, channel: str, seed: int) -> Path:
    """300 simulated events of ``channel`` (Pythia 8 + detector response), with their own calibration store."""
    from vbes.calibration import CalibrationStore
    from vbes.datasets import generate_sample

    folder = factory.mktemp(f"{channel}-sample")
    with CalibrationStore(f"sqlite:///{folder / 'calibration.sqlite'}") as store:
        store.init_defaults()
        return generate_sample(channel, 300, folder / f"jpsi-{channel}.h5", runs=(-10000, -9001), seed=seed,
                               store=store)


@pytest.fixture(scope="session")
def rhopi_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulated J/psi -> rho pi event file (300 events, seed 1), made once per session; named as
    `vbes demo` names its samples."""
    return _simulated(tmp_path_factory, "rhopi", 1)


@pytest.fixture(scope="session")
def mumu_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny simulated J/psi -> mu mu event file (300 events, seed 2)."""
    return _simulated(tmp_path_factory, "mumu", 2)


_FRESH_PROCESS = r"""
import json, sys
import mlflow, numpy as np, pandas as pd
from vbes.datasets import read_events
from vbes.models.records import flatten
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
spec = json.loads(sys.argv[3])
if spec["inputs"] is not None:
    rows = {k: np.asarray(v) for k, v in spec["inputs"].items()}
else:
    rows = flatten(read_events(spec["sample"])["tracks"])
if spec["rows"] is not None:
    rows = {k: v[: spec["rows"]] for k, v in rows.items()}
out = model.predict(pd.DataFrame(rows))
charge = out["charge"].to_numpy(dtype=float)
print(json.dumps({"rows": len(out), "n": len(next(iter(rows.values()))), "columns": sorted(out.columns),
                  "max_abs_cos": float(np.nanmax(np.abs(out["cos_theta"]))),
                  "charges": sorted(set(charge[~np.isnan(charge)].astype(int).tolist())),
                  "events": sorted(set(out["event"].astype(int).tolist())) if "event" in out else None}))
"""


def predict_in_fresh_process(tracking_uri: str, model_uri: str, sample: Path | None = None, rows: int | None = None,
                             env: dict[str, str] | None = None,
                             inputs: dict[str, list[Any]] | None = None) -> dict[str, object]:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model`` in a new Python process (nothing of this one's
    state) at ``tracking_uri`` and predict the track records of ``sample`` -- or the table ``inputs`` (column ->
    values: the input of families other than the record autoencoder, e.g. ``channel`` and ``run``) -- its first
    ``rows`` rows if given.

    Returns the number of rows asked for and answered, the answer's columns, max |cos_theta| and the charges
    (over the rows that have them), and the distinct ``event`` values of an answer with that column (else None).
    """
    spec = {"sample": None if sample is None else str(sample), "rows": rows, "inputs": inputs}
    args = [sys.executable, "-c", _FRESH_PROCESS, tracking_uri, model_uri, json.dumps(spec)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {}), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture(scope="session")
def fresh_process_predict() -> Callable[..., dict[str, object]]:
    """:func:`predict_in_fresh_process`, for test modules (they cannot import conftest)."""
    return predict_in_fresh_process


def invoke_served_model(tracking_uri: str, model_uri: str, inputs: dict[str, list[Any]], folder: Path) -> list[Any]:
    """Serve ``model_uri`` with ``mlflow models serve --env-manager local`` (a subprocess on a free loopback port,
    registry at ``tracking_uri``), POST the table ``inputs`` (column -> values; NaN sent as null) to
    ``/invocations`` and return the answer's ``predictions``; the server is stopped in every case.

    Args:
        tracking_uri: the MLflow tracking and registry URI.
        model_uri: ``models:/NAME@ALIAS``.
        inputs: the input table.
        folder: scratch folder (the server's working directory and a ``uvicorn`` shim).
    """
    import signal
    import socket
    import time
    import urllib.request

    # `mlflow models serve` execs `uvicorn` from PATH: one that runs this interpreter's uvicorn
    shim = folder / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "uvicorn").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m uvicorn "$@"\n')
    (shim / "uvicorn").chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "PATH": f"{shim}:{os.environ.get('PATH', '')}", "MLFLOW_TRACKING_URI": tracking_uri,
             "MLFLOW_REGISTRY_URI": tracking_uri},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=folder,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the model server did not come up"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        body = json.dumps({"dataframe_split": {"columns": list(inputs),
                                               "data": list(map(list, zip(*inputs.values())))}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=body.encode().replace(b"NaN", b"null"),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions: list[Any] = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    return predictions


@pytest.fixture(scope="session")
def served_model_predict() -> Callable[..., list[Any]]:
    """:func:`invoke_served_model`, for test modules."""
    return invoke_served_model


def cli_json(*args: object) -> dict[str, Any]:
    """Run ``vbes ARGS... --json`` in-process; the exit status must be 0; returns the printed JSON."""
    import io

    from vbes.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*map(str, args), "--json"])
    assert code == 0, out.getvalue()
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


@contextlib.contextmanager
def isolated_environment(values: dict[str, str], prefixes: tuple[str, ...] = ("VBES_",)) -> Iterator[None]:
    """Set ``values`` as environment variables for the block, every other variable of ``prefixes`` cleared (for
    module-scoped fixtures, where pytest's ``monkeypatch`` is not available)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith(prefixes) and var != "VBES_TEST_PG":
                mp.delenv(var)
        for key, value in values.items():
            mp.setenv(key, value)
        yield
