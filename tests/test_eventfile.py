"""The event file: round trips, random access, digests, atomic writes, bad and corrupt input, old versions."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from vbes.datasets import EventWriter, content_digest, file_info, iter_events, read_events, validate_file
from vbes.datasets.eventfile import example_tables, slice_events
from vbes.datasets.schema import SCHEMA_VERSION, TABLES, TABLES_V1
from vbes.errors import CorruptFileError, InvalidInput, SchemaError, UnsupportedSchemaVersion

FIXTURES = Path(__file__).resolve().parent / "fixtures"
#: the content digests of the frozen fixtures, recorded when they were written: they must never change
FIXTURE_DIGESTS = {
    1: "5e2cde93cc18492f81c652b9199056bf7ef5e1179d77d0ef8af961b48e96ef08",
    2: "74aad9f3a41c95962c4b6e9f09ab883f1ca27706fcfbf685a1d4656aefb650c3",
    3: "db3e097fe9926de6ce0e7c7002c534d2f28b39b93307242bc728aa8b1418bc28",
}
PROVENANCE = {
    "generator": "test",
    "generator_version": "0",
    "channel": "rhopi",
    "seed": 7,
    "runs": [-10000, -9000],
    "detector_model": "none",
    "detector_model_version": "0",
    "calibration_tag": "BOSS-6.6.4-sim-2",
    "calibration_payloads": {"Emc": "ab" * 32, "Tof": "cd" * 32},
    "software": "vbes test",
}


def _assert_tables_equal(expected: dict, got: dict) -> None:
    assert set(expected) == set(got)
    for table, cols in expected.items():
        assert set(cols) <= set(got[table]), table
        for name, values in cols.items():
            want = np.asarray(values).astype(got[table][name].dtype)
            assert np.array_equal(want, got[table][name], equal_nan=True), f"{table}.{name}"


@pytest.fixture
def sample(tmp_path: Path) -> tuple[Path, dict]:
    tables = example_tables(1000, seed=3)
    path = tmp_path / "sample.h5"
    with EventWriter(path, PROVENANCE, chunk_events=300) as writer:
        for start in range(0, 1000, 250):
            writer.append(slice_events(tables, start, start + 250))
    return path, tables


def _load_fixture_recipe():
    spec = importlib.util.spec_from_file_location("make_fixtures", FIXTURES / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- round trip and access ----------------------------------------------------------------------------


def test_round_trip_all_fields(sample: tuple[Path, dict]) -> None:
    path, tables = sample
    got = read_events(path)
    _assert_tables_equal(tables, got)
    assert got["tracks"]["helix"].shape == (int(tables["events"]["n_tracks"].sum()), 5)
    info = file_info(path)
    assert info["n_events"] == 1000 and info["schema_version"] == SCHEMA_VERSION and info["mc"] is True
    assert info["provenance"] == PROVENANCE
    assert info["rows"]["showers"] == int(tables["events"]["n_showers"].sum())


def test_event_range_reads_exactly_those_events(sample: tuple[Path, dict]) -> None:
    path, tables = sample
    got = read_events(path, 437, 612, tables=["events", "tracks", "showers"])
    _assert_tables_equal({t: c for t, c in slice_events(tables, 437, 612).items() if t != "truth"}, got)
    only = read_events(path, 5, 9, fields=["tracks.p", "showers.energy"])
    assert set(only) == {"events", "tracks", "showers"}
    assert set(only["tracks"]) == {"p"} and set(only["events"]) == {"n_tracks", "n_showers"}
    assert len(only["tracks"]["p"]) == int(tables["events"]["n_tracks"][5:9].sum())
    assert read_events(path, 990, 5000)["events"]["event"].tolist() == list(range(990, 1000))


def test_iter_events_streams_whole_events(sample: tuple[Path, dict]) -> None:
    path, tables = sample
    chunks = list(iter_events(path, chunk_events=333, fields={"truth": ["pdg", "mother"]}))
    assert [len(c["events"]["n_truth"]) for c in chunks] == [333, 333, 333, 1]
    mothers = np.concatenate([c["truth"]["mother"] for c in chunks])
    assert np.array_equal(mothers, tables["truth"]["mother"])


def test_bad_requests_are_refused(sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with pytest.raises(InvalidInput, match="tracks.nope"):
        read_events(path, fields=["tracks.nope"])
    with pytest.raises(InvalidInput, match="TABLE.FIELD"):
        read_events(path, fields=["p"])
    with pytest.raises(InvalidInput, match="muons"):
        read_events(path, tables=["muons"])


def test_digest_names_content_not_layout_or_time(tmp_path: Path, sample: tuple[Path, dict]) -> None:
    path, tables = sample
    assert content_digest(path) == file_info(path)["digest"]
    other = tmp_path / "rechunked.h5"
    with EventWriter(other, {"generator": "other"}, chunk_events=64) as writer:
        writer.append(tables)
    assert file_info(other)["digest"] == file_info(path)["digest"]  # same arrays, other chunks/provenance
    tables["showers"]["energy"][17] += 1e-3
    changed = tmp_path / "changed.h5"
    with EventWriter(changed, PROVENANCE) as writer:
        writer.append(tables)
    assert file_info(changed)["digest"] != file_info(path)["digest"]


def test_data_file_without_truth(tmp_path: Path) -> None:
    tables = example_tables(50, seed=1, mc=False, run=8093)
    del tables["truth"]
    for name in ("truth_index",):
        del tables["tracks"][name], tables["showers"][name]
    path = tmp_path / "data.h5"
    with EventWriter(path, {"generator": "data"}, mc=False) as writer:
        writer.append(tables)
    got = read_events(path)
    assert file_info(path)["mc"] is False and len(got["truth"]["pdg"]) == 0
    assert (got["tracks"]["truth_index"] == -1).all()


def test_files_are_readable_with_plain_h5py(sample: tuple[Path, dict]) -> None:
    path, tables = sample
    with h5py.File(path, "r") as f:
        ds = f["tracks/p"]
        assert ds.compression == "gzip" and ds.fletcher32 and ds.attrs["unit"] == "GeV/c"
        offsets = f["offsets/tracks"][:]
        assert np.array_equal(np.diff(offsets), tables["events"]["n_tracks"])


# --- writing is atomic and validated ------------------------------------------------------------------


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), EventWriter(path, PROVENANCE, chunk_events=10) as writer:
        writer.append(example_tables(100, seed=2))  # flushed to the temporary file
        raise RuntimeError("generator crashed")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_file(tmp_path: Path, sample: tuple[Path, dict]) -> None:
    path, _ = sample
    before = path.read_bytes()
    bad = example_tables(10, seed=4)
    bad["tracks"]["p"][0] = np.nan
    with pytest.raises(SchemaError), EventWriter(path, PROVENANCE) as writer:
        writer.append(example_tables(10, seed=5))
        writer.append(bad)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda t: t["tracks"]["p"].__setitem__(3, np.nan), r"NaN in tracks\.p \(row 3\)"),
        (lambda t: t["showers"].pop("energy"), r"showers\.energy is missing"),
        (
            lambda t: t["tracks"].__setitem__("px", t["tracks"]["px"][:-1]),
            r"tracks\.px .*inconsistent lengths",
        ),
        (lambda t: t["events"]["n_tracks"].__setitem__(0, 9), r"tracks\.\w+ has shape"),
        (lambda t: t["tracks"].__setitem__("bogus", t["tracks"]["p"]), r"unknown field.*tracks\.bogus"),
        (lambda t: t["tracks"]["emc_index"].__setitem__(0, 99), r"tracks\.emc_index = 99 in row 0"),
        (
            lambda t: t["events"].__setitem__("run", t["events"]["run"].astype(float)),
            r"events\.run has dtype",
        ),
    ],
)
def test_bad_batches_are_refused_naming_the_field(tmp_path: Path, damage, message: str) -> None:
    tables = example_tables(20, seed=6)
    damage(tables)
    path = tmp_path / "bad.h5"
    with pytest.raises(SchemaError, match=message) as err, EventWriter(path, PROVENANCE) as writer:
        writer.append(tables)
    assert str(path) in str(err.value)
    assert not path.exists()


def test_truth_rows_in_a_data_file_are_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(SchemaError, match="data file"),
        EventWriter(tmp_path / "d.h5", {}, mc=False) as writer,
    ):
        writer.append(example_tables(5, seed=1, mc=True))


# --- damaged files ------------------------------------------------------------------------------------


def test_truncated_file(tmp_path: Path, sample: tuple[Path, dict]) -> None:
    path, _ = sample
    data = path.read_bytes()
    for keep in (len(data) // 2, 2048, 10):
        cut = tmp_path / f"cut{keep}.h5"
        cut.write_bytes(data[:keep])
        with pytest.raises(CorruptFileError, match=f"{cut.name}.*truncated"):
            read_events(cut)


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "text.h5"
    path.write_text("run,event\n1,2\n")
    with pytest.raises(CorruptFileError, match="text.h5"):
        file_info(path)


def test_flipped_bytes_in_a_chunk_are_detected(tmp_path: Path, sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with h5py.File(path, "r") as f:
        chunk = f["showers/energy"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    for i in range(chunk.byte_offset + 100, chunk.byte_offset + 108):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    file_info(path)  # metadata intact: the damage shows when the data are read
    with pytest.raises(CorruptFileError, match=r"sample\.h5: cannot read showers\.energy rows"):
        read_events(path, fields=["showers.energy"])
    with pytest.raises(CorruptFileError, match=r"showers\.energy"):
        validate_file(path)


def test_newer_schema_version(tmp_path: Path, sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(
        UnsupportedSchemaVersion, match=rf"sample\.h5: schema version {SCHEMA_VERSION + 1}.*upgrade"
    ):
        read_events(path)


def test_missing_field(sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with h5py.File(path, "r+") as f:
        del f["tracks/chi_dedx"]
    with pytest.raises(SchemaError, match=r"sample\.h5: field tracks\.chi_dedx is missing"):
        read_events(path, fields=["events.run"])


def test_nan_where_not_allowed(sample: tuple[Path, dict]) -> None:
    path, tables = sample
    with h5py.File(path, "r+") as f:
        f["showers/energy"][40] = np.nan
    read_events(path, fields=["showers.x"], verify="read")  # other fields still read (and verified)
    owner = int(np.searchsorted(np.cumsum(tables["events"]["n_showers"]), 40, side="right"))
    with pytest.raises(SchemaError, match=r"NaN in showers\.energy \(row 40\)"):
        read_events(path, owner, owner + 1)
    with pytest.raises(SchemaError, match=r"sample\.h5: NaN in showers\.energy"):
        validate_file(path)


def test_inconsistent_lengths(sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with h5py.File(path, "r+") as f:
        f["tracks/dedx"].resize(f["tracks/dedx"].shape[0] - 3, axis=0)
    with pytest.raises(SchemaError, match=r"tracks\.dedx has shape .* \(inconsistent lengths\)"):
        read_events(path)


def test_counts_disagreeing_with_offsets(sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with h5py.File(path, "r+") as f:
        f["events/n_showers"][2] += 1
    with pytest.raises(SchemaError, match=r"events\.n_showers .* offsets/showers"):
        read_events(path, 0, 10)


def test_altered_values_fail_the_digest(sample: tuple[Path, dict]) -> None:
    path, _ = sample
    with h5py.File(path, "r+") as f:
        f["truth/e"][5] = 1.0  # legal value, silently edited
    with pytest.raises(CorruptFileError, match=r"sample\.h5: content digest check failed: truth\.e differs"):
        read_events(path)
    with pytest.raises(CorruptFileError, match=r"truth\.e differs"):
        read_events(path, fields=["events.run"])  # the whole file is verified, not only what is returned
    part = read_events(path, 0, 10)  # a part cannot be verified, and says so
    assert part.verification.note == "not verified: events 0:10 of 1000 read"
    with pytest.raises(CorruptFileError, match="content digest"):
        validate_file(path)


# --- preservation: frozen files of every released version ---------------------------------------------


@pytest.mark.parametrize("version", sorted(FIXTURE_DIGESTS))
def test_frozen_fixture_reads_with_its_values(version: int, tmp_path: Path) -> None:
    path = FIXTURES / f"events-v{version}.h5"
    copy = tmp_path / path.name  # never touch the committed file
    shutil.copyfile(path, copy)
    info = validate_file(copy)
    assert info["schema_version"] == version and info["n_events"] == 300
    assert info["digest"] == FIXTURE_DIGESTS[version] == content_digest(copy)
    expected = _load_fixture_recipe().fixture_tables(version)
    got = read_events(copy)
    _assert_tables_equal(expected, got)
    # migrated on read: the current layout, every field present
    assert {t: set(c) for t, c in got.items()} == {t: {f.name for f in fs} for t, fs in TABLES.items()}
    added = [(t, f) for t, fs in TABLES.items() for f in fs if f.name not in {g.name for g in TABLES_V1[t]}]
    if version == 1:
        for table, field in added:
            fill = np.full(len(got[table][field.name]), field.fill, dtype=field.dtype)
            assert np.array_equal(got[table][field.name], fill, equal_nan=True), field.name
    partial = read_events(copy, 100, 103, fields=["showers.cell_id", "tracks.p"])
    assert len(partial["showers"]["cell_id"]) == 100 % 7 + 101 % 7 + 102 % 7
