"""Fault injection over the whole event layout: every altered value and offset is refused by every reader.

For each table and column of the schema (iterated, not listed), one value of a small written file is changed
with h5py; for each object table one offset. ``vbes inspect``, the evaluation's load path
(:func:`vbes.evaluation.load_sample`, and ``vbes evaluate`` once) and ``vbes export-root`` must refuse the file
with one line naming what was altered, and export-root must leave nothing behind. Root and hash attributes
are swept the same way.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from vbes.datasets import EventWriter, export_root, read_events
from vbes.datasets.eventfile import example_tables
from vbes.datasets.schema import COUNT_FIELD, OBJECT_TABLES, TABLES
from vbes.errors import CorruptFileError, SchemaError
from vbes.evaluation import load_sample

N_EVENTS = 20
#: every column of the current layout, from the schema itself
COLUMNS = [(table, field.name) for table, fields in TABLES.items() for field in fields]
COUNT_COLUMNS = {("events", name): table for table, name in COUNT_FIELD.items()}


@pytest.fixture(scope="module")
def clean_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tables = example_tables(N_EVENTS, seed=5)
    assert all(len(next(iter(tables[t].values()))) > N_EVENTS // 2 for t in OBJECT_TABLES)  # rows to alter
    path = tmp_path_factory.mktemp("fault") / "clean.h5"
    with EventWriter(path, {"generator": "fault-injection"}) as writer:
        writer.append(tables)
    return path


def _copy(clean_file: Path, tmp_path: Path) -> Path:
    path = tmp_path / "altered.h5"
    shutil.copyfile(clean_file, path)
    return path


def _alter_value(path: Path, table: str, name: str) -> None:
    """Change one value in the middle of the column to another legal-looking value."""
    with h5py.File(path, "r+") as f:
        ds = f[table][name]
        row = ds.shape[0] // 2
        where = (row,) + (0,) * (ds.ndim - 1)
        old = ds[where]
        if ds.dtype.kind == "f":
            new = 1.0 if np.isnan(old) else old + 1.0
        else:
            new = old - 1 if old > 0 else old + 1
        ds[where] = new
        assert ds[where] != old or np.isnan(old)


def _expected(table: str, name: str) -> tuple[type[Exception], str]:
    if (table, name) in COUNT_COLUMNS:  # a count is checked against the offsets first
        return SchemaError, rf"events\.{name} of event \d+ .* offsets/{COUNT_COLUMNS[(table, name)]}"
    return CorruptFileError, rf"content digest check failed: {table}\.{name} differs"


def _assert_refused_everywhere(path: Path, tmp_path: Path, run_cli, error: type[Exception], match: str) -> None:
    result = run_cli("inspect", path)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vbes: error: ")
    assert re.search(match, result.stderr), result.stderr
    with pytest.raises(error, match=match):
        load_sample(path)
    out = tmp_path / "export" / "altered.root"
    out.parent.mkdir()
    with pytest.raises(error, match=match):
        export_root(path, out)
    assert list(out.parent.iterdir()) == []  # no ROOT file, no temporary file


def test_clean_file_passes_every_reader(clean_file: Path, tmp_path: Path, run_cli) -> None:
    result = run_cli("inspect", clean_file)
    assert result.exit_code == 0 and "integrity       content digest verified" in result.stdout
    assert load_sample(clean_file).info["n_events"] == N_EVENTS
    assert export_root(clean_file, tmp_path / "clean.root")["n_events"] == N_EVENTS


@pytest.mark.parametrize(("table", "name"), COLUMNS, ids=[f"{t}.{n}" for t, n in COLUMNS])
def test_changed_value_is_refused(clean_file: Path, tmp_path: Path, run_cli, table: str, name: str) -> None:
    path = _copy(clean_file, tmp_path)
    _alter_value(path, table, name)
    _assert_refused_everywhere(path, tmp_path, run_cli, *_expected(table, name))


@pytest.mark.parametrize("table", OBJECT_TABLES)
def test_changed_offset_is_refused(clean_file: Path, tmp_path: Path, run_cli, table: str) -> None:
    path = _copy(clean_file, tmp_path)
    with h5py.File(path, "r+") as f:
        f["offsets"][table][N_EVENTS // 2] += 3
    match = rf"events\.{COUNT_FIELD[table]} of event {N_EVENTS // 2 - 1} .* offsets/{table}"
    _assert_refused_everywhere(path, tmp_path, run_cli, SchemaError, match)


def test_vbes_evaluate_refuses_an_altered_sample(clean_file: Path, tmp_path: Path, run_cli) -> None:
    path = _copy(clean_file, tmp_path)
    _alter_value(path, "tracks", "helix_cov")  # a field the evaluation itself does not use
    result = run_cli("evaluate", "--sample", path, "--reference", clean_file, "--report", tmp_path / "report")
    # bad input, not a failed comparison: `vbes evaluate` exits 2 (pytest's convention)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "tracks.helix_cov differs" in result.stderr
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("key", ["vbes_format", "schema_version", "n_events", "mc", "content_digest"])
def test_root_attribute_replaced_by_an_array(clean_file: Path, tmp_path: Path, run_cli, key: str) -> None:
    path = _copy(clean_file, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs[key] = np.arange(3)
    result = run_cli("inspect", path)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert re.search(rf"altered\.h5: .*{key}.*array\(\[0, 1, 2\]\)", result.stderr), result.stderr


@pytest.mark.parametrize(("table", "name"), [COLUMNS[0], COLUMNS[len(COLUMNS) // 2], COLUMNS[-1]])
def test_field_hash_attribute_altered_or_removed(clean_file: Path, tmp_path: Path, table: str, name: str) -> None:
    path = _copy(clean_file, tmp_path)
    with h5py.File(path, "r+") as f:
        f[table][name].attrs["sha256"] = "0" * 64
    with pytest.raises(CorruptFileError, match="hash attributes were altered"):
        read_events(path)
    with h5py.File(path, "r+") as f:
        del f[table][name].attrs["sha256"]
    with pytest.raises(CorruptFileError, match=rf"{table}\.{name} has no sha256 attribute"):
        read_events(path)
