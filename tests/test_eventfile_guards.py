"""Issue 8, event files: each reported case (items 1, 3, 4 and the event-file cases of 10), refused or verified.

Every command case asserts one line ``vbes: error: ...``, a non-zero exit and that nothing was written.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from vbes.datasets import EventWriter, export_root, file_info, ingest_root, read_events
from vbes.datasets.eventfile import example_tables, iter_events, validate_file
from vbes.errors import CorruptFileError, InvalidInput, SchemaError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.h5"
    with EventWriter(path, {"generator": "guards"}) as writer:
        writer.append(example_tables(30, seed=2))
    return path


def _one_line_error(result, match: str) -> None:
    assert result.exit_code != 0 and result.stdout == ""
    assert result.stderr.startswith("vbes: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert match in result.stderr, result.stderr


# --- 1: integers (and narrowed floats) that do not fit their column ------------------------------------


@pytest.mark.parametrize(
    ("runs", "value"), [("4294957296:4294958295", "4294957296"), ("1:100000000000", "100000000000")]
)
def test_generate_refuses_runs_beyond_the_run_column(
    run_cli, vbes_home: Path, tmp_path: Path, runs: str, value: str
) -> None:
    out = tmp_path / "w.h5"
    result = run_cli("generate", "rhopi", "-n", "5", "-o", out, f"--runs={runs}")
    _one_line_error(result, f"--runs={runs}: events.run value {value} (row ")
    assert "does not fit its int32 column (range -2147483648..2147483647)" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("table", "name", "values", "shown"),
    [
        ("events", "run", np.full(4, 4294957296, np.int64), "4294957296"),
        ("events", "event", np.full(4, 2**63 + 5, np.uint64), str(2**63 + 5)),
        ("events", "channel", [1, 2, 70000, 1], "70000"),
        ("events", "run", [1, 2, 3, 2**70], str(2**70)),
        ("events", "weight", np.array([1.0, 1e39, 1.0, 1.0]), "1e+39"),
    ],
)
def test_writer_refuses_values_that_would_wrap(
    tmp_path: Path, table: str, name: str, values: object, shown: str
) -> None:
    batch = example_tables(4, seed=1)
    batch[table][name] = values  # type: ignore[assignment]
    out = tmp_path / "wrap.h5"
    with pytest.raises(SchemaError, match=rf"{table}\.{name} value {re.escape(shown)} \(row \d\) does not fit its"):
        with EventWriter(out, {"generator": "guards"}) as writer:
            writer.append(batch)
    assert list(tmp_path.iterdir()) == []


# --- 3: every command that reads a file verifies the digest, or says it did not -------------------------


def test_inspect_says_verified(run_cli, small: Path) -> None:
    result = run_cli("inspect", small)
    assert result.exit_code == 0 and "integrity       content digest verified\n" in result.stdout


def test_reads_say_what_they_verified(small: Path) -> None:
    assert read_events(small).verification.digest_verified
    assert read_events(small, fields=["tracks.p"]).verification.note == "content digest verified"
    some = read_events(small, fields=["tracks.p"], verify="read")
    assert not some.verification.digest_verified and some.verification.fields == ("events.n_tracks", "tracks.p")
    assert some.verification.note.startswith("not verified: only 2 of ")
    assert read_events(small, 3, 9).verification.note == "not verified: events 3:9 of 30 read"
    chunks = list(iter_events(small, chunk_events=7))
    assert [c.verification.digest_verified for c in chunks] == [False] * 4 + [True]
    assert chunks[0].verification.note == "not verified: events 0:7 of 30 read so far"


@pytest.mark.parametrize("version", [1, 2])
def test_files_before_field_hashes_verify_by_the_full_scan(tmp_path: Path, run_cli, version: int) -> None:
    path = tmp_path / f"events-v{version}.h5"
    shutil.copyfile(FIXTURES / path.name, path)
    assert read_events(path).verification.note == "content digest verified"
    assert read_events(path, fields=["tracks.p"], verify="read").verification.note == (
        "not verified: the file predates per-field hashes; only a read of every field verifies it"
    )
    assert "integrity       content digest verified" in run_cli("inspect", path).stdout
    with h5py.File(path, "r+") as f:
        f["showers/energy"][7] += 1.0
    _one_line_error(run_cli("inspect", path), "content digest")  # no field hashes to name the field
    with pytest.raises(CorruptFileError, match=r"content digest .* differs from the stored"):
        read_events(path, fields=["events.run"])


def test_export_root_then_ingest_cannot_launder_a_change(
    small: Path, tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    altered = tmp_path / "altered.h5"
    shutil.copyfile(small, altered)
    with h5py.File(altered, "r+") as f:
        f["tracks/p"][3] += 1.0
    _one_line_error(run_cli("export-root", altered, "-o", tmp_path / "a.root"), "tracks.p differs")
    assert not (tmp_path / "a.root").exists()
    # a ROOT export whose arrays are not those its recorded digest names (as if edited in ROOT) is refused
    other = tmp_path / "other.h5"
    with EventWriter(other, {"generator": "guards"}) as writer:
        writer.append(example_tables(30, seed=3))
    forged = {**file_info(other), "digest": file_info(small)["digest"]}
    monkeypatch.setattr("vbes.datasets.ingest.file_info", lambda _: forged)
    export_root(other, tmp_path / "forged.root")
    monkeypatch.undo()
    out = tmp_path / "back.h5"
    with pytest.raises(CorruptFileError, match=r"back\.h5 not written: the events have content digest"):
        ingest_root(tmp_path / "forged.root", out)
    assert not out.exists() and not list(tmp_path.glob(".back.h5*"))


# --- 4: offsets are checked against the counts on every read ---------------------------------------------


def test_offset_plus_three_is_refused_by_every_read(small: Path, run_cli) -> None:
    with h5py.File(small, "r+") as f:
        f["offsets/tracks"][5] += 3
    message = r"events\.n_tracks of event 4 is \d+ but offsets/tracks give it \d+ rows"
    with pytest.raises(SchemaError, match=message):
        read_events(small)
    with pytest.raises(SchemaError, match=r"events\.n_tracks of event 5 is \d+ but offsets/tracks"):
        read_events(small, 5, 6)
    with pytest.raises(SchemaError, match=message):
        validate_file(small)
    _one_line_error(run_cli("inspect", small), "offsets/tracks")


def test_first_offset_must_be_zero(small: Path) -> None:
    with h5py.File(small, "r+") as f:
        f["offsets/showers"][0] = 2
    with pytest.raises(SchemaError, match=r"offsets/showers starts at 2, not 0"):
        read_events(small, 10, 12)


# --- 10: bad input, one line each ------------------------------------------------------------------------


def test_generate_negative_seed(run_cli, vbes_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.h5"
    result = run_cli("generate", "rhopi", "-n", "5", "-o", out, "--runs=-10:-1", "--seed", "-1")
    _one_line_error(result, "--seed -1: a seed is a non-negative integer")
    assert not out.exists()


def test_generate_impossible_size_is_refused_up_front(run_cli, vbes_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "big.h5"
    result = run_cli("generate", "rhopi", "-n", "99999999999999", "-o", out, "--runs=-10:-1")
    _one_line_error(result, "-n 99999999999999: the file would take at least 10,000,000 GB and ")
    assert not out.exists()


def test_ingest_with_a_binary_mapping_file(run_cli, small: Path, tmp_path: Path) -> None:
    root = tmp_path / "small.root"
    export_root(small, root)
    out = tmp_path / "x.h5"
    result = run_cli("ingest", root, "--map", small, "-o", out)
    _one_line_error(result, f"{small}: not a mapping file (not YAML text: 'utf-8' codec can't decode")
    assert not out.exists()


def test_inspect_format_attribute_as_array(run_cli, small: Path) -> None:
    with h5py.File(small, "r+") as f:
        f.attrs["vbes_format"] = np.array(["vbes-eventfile", "x"], dtype=h5py.string_dtype())
    _one_line_error(run_cli("inspect", small), "not a vbes event file (attribute vbes_format is array([")


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.9])
def test_ingest_truncated_root_file(run_cli, small: Path, tmp_path: Path, fraction: float) -> None:
    root = tmp_path / "small.root"
    export_root(small, root)
    data = root.read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(data[: int(len(data) * fraction)])
    out = tmp_path / "x.h5"
    result = run_cli("ingest", cut, "-o", out)
    _one_line_error(result, "cut.root: ")
    assert "truncated or corrupt" in result.stderr or "not a readable ROOT file" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".x.h5*"))


def test_output_directory_is_refused_before_any_work(run_cli, small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    # the source does not even exist: the output is checked first, so no conversion ever starts
    _one_line_error(run_cli("ingest", tmp_path / "missing.root", "-o", folder), f"{folder}: is a directory")
    _one_line_error(run_cli("export-root", small, "-o", folder), f"{folder}: is a directory")
    with pytest.raises(InvalidInput, match="is a directory"):
        EventWriter(folder, {"generator": "guards"})
    assert list(folder.iterdir()) == []
