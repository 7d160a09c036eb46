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
tracks = read_events(sys.argv[3])["tracks"]
rows = flatten(tracks)
if len(sys.argv) > 4:
    rows = {k: v[: int(sys.argv[4])] for k, v in rows.items()}
out = model.predict(pd.DataFrame(rows))
print(json.dumps({"rows": len(out), "n": len(next(iter(rows.values()))), "columns": sorted(out.columns),
                  "max_abs_cos": float(np.abs(out["cos_theta"]).max()),
                  "charges": sorted(set(out["charge"].astype(int).tolist()))}))
"""


def predict_in_fresh_process(tracking_uri: str, model_uri: str, sample: Path, rows: int | None = None,
                             env: dict[str, str] | None = None) -> dict[str, object]:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model`` in a new Python process (nothing of this one's
    state) at ``tracking_uri`` and predict the track records of ``sample`` (its first ``rows`` tracks if given).

    Returns the number of rows asked for and answered, the answer's columns, max |cos_theta| and the charges.
    """
    args = [sys.executable, "-c", _FRESH_PROCESS, tracking_uri, model_uri, str(sample)]
    if rows is not None:
        args.append(str(rows))
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {}), "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return answer


@pytest.fixture(scope="session")
def fresh_process_predict() -> Callable[..., dict[str, object]]:
    """:func:`predict_in_fresh_process`, for test modules (they cannot import conftest)."""
    return predict_in_fresh_process
