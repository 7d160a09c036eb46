"""Writers of event tables (HDF5, Parquet, ROOT): exact round trips read by other readers, provenance, atomicity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pyarrow.parquet as pq
import pytest
import uproot
from fake_events import READERS, FakeChunks, assert_same_tables, concatenate

from vbes.datasets import content_digest, ingest_root, read_events
from vbes.datasets.schema import SCHEMA_VERSION
from vbes.datasets.writers import FORMATS, PARQUET_FORMAT_NAME, infer_format, open_writer
from vbes.errors import InvalidInput, NotFound, SchemaError, VbesError

PROVENANCE = {
    "generator": "vbes-sample-test",
    "seed": 7,
    "model": {"name": "flow", "sha256": "ab" * 32},
    "runs": [-10000, -9990],
}
SUFFIX = {"hdf5": ".h5", "parquet": ".parquet", "root": ".root"}

Tables = dict[str, dict[str, np.ndarray]]


def chunks(**options: Any) -> list[Tables]:
    fake = FakeChunks(seed=5, chunk_events=60, **options)
    return [fake(0, 60), fake(1, 60), fake(2, 17)]


def write(path: Path, batches: list[Tables], mc: bool = True, fmt: str | None = None) -> str:
    with open_writer(path, fmt, PROVENANCE, mc=mc) as writer:
        for batch in batches:
            writer.append(batch)
    assert writer.n_events == sum(len(b["events"]["run"]) for b in batches)
    assert writer.digest is not None
    return writer.digest


# --- round trips ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_field_exactly(tmp_path: Path, fmt: str) -> None:
    batches = chunks()
    expected = concatenate(batches)
    assert np.isnan(expected["tracks"]["tof"]).any() and np.isinf(expected["showers"]["energy"]).any()
    path = tmp_path / f"sample{SUFFIX[fmt]}"
    write(path, batches)
    got, provenance = READERS[fmt](path)
    assert_same_tables(got, expected)
    assert provenance == PROVENANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left beside it


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_empty_object_table_and_data(tmp_path: Path, fmt: str) -> None:
    batches = chunks(mc=False, empty=("showers",))
    expected = concatenate(batches)
    assert expected["showers"]["energy"].shape == (0,) and expected["truth"]["pdg"].shape == (0,)
    assert expected["tracks"]["p"].size > 0
    path = tmp_path / f"data{SUFFIX[fmt]}"
    write(path, batches, mc=False)
    got, _ = READERS[fmt](path)
    assert_same_tables(got, expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_without_events(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"empty{SUFFIX[fmt]}"
    write(path, [])
    got, provenance = READERS[fmt](path)
    assert provenance == PROVENANCE
    assert all(values.shape[0] == 0 for cols in got.values() for values in cols.values())


def test_same_digest_in_every_format_and_equal_to_the_event_file(tmp_path: Path) -> None:
    batches = chunks()
    digests = {fmt: write(tmp_path / f"s{SUFFIX[fmt]}", batches) for fmt in FORMATS}
    assert len(set(digests.values())) == 1
    assert digests["hdf5"] == content_digest(tmp_path / "s.h5")
    metadata = pq.read_metadata(tmp_path / "s.parquet").metadata
    assert metadata[b"vbes.content_digest"].decode() == digests["parquet"]
    assert metadata[b"vbes.n_events"] == b"137"
    with uproot.open(tmp_path / "s.root") as root_file:
        assert json.loads(str(root_file["vbes_info"]))["content_digest"] == digests["root"]
    # another seed, another digest: the digest sees the values
    assert write(tmp_path / "other.h5", [FakeChunks(seed=6)(0, 60)]) != digests["hdf5"]


def test_root_output_is_read_back_by_ingest(tmp_path: Path, run_cli: Any, vbes_home: Path) -> None:
    batches = chunks()
    write(tmp_path / "s.root", batches)
    # ingest_root checks the content digest stored in vbes_info against what it reads
    info = ingest_root(tmp_path / "s.root", tmp_path / "back.h5")
    assert info["n_events"] == 137 and info["provenance"] == PROVENANCE
    assert_same_tables(read_events(tmp_path / "back.h5"), concatenate(batches))
    result = run_cli("ingest", tmp_path / "s.root", "-o", tmp_path / "cli.h5")
    assert result.exit_code == 0, result.stderr
    assert content_digest(tmp_path / "cli.h5") == content_digest(tmp_path / "back.h5")


def test_parquet_layout_for_awkward_and_metadata(tmp_path: Path) -> None:
    batches = chunks()
    expected = concatenate(batches)
    path = tmp_path / "s.parquet"
    write(path, batches)
    events = ak.from_parquet(path)
    assert "?" not in str(events.type) and "option" not in str(events.type)  # plain records, nothing nullable
    assert np.array_equal(ak.to_numpy(ak.num(events.tracks)), expected["events"]["n_tracks"])
    helix = ak.to_numpy(ak.flatten(events.tracks.helix))
    assert helix.shape == expected["tracks"]["helix"].shape
    assert helix.tobytes() == expected["tracks"]["helix"].tobytes()
    metadata = pq.read_metadata(path)
    assert metadata.num_row_groups == 3  # one per append
    kv = metadata.metadata
    assert kv[b"vbes.format"].decode() == PARQUET_FORMAT_NAME
    assert int(kv[b"vbes.schema_version"]) == SCHEMA_VERSION and json.loads(kv[b"vbes.mc"]) is True
    assert json.loads(kv[b"vbes.units"])["tracks.p"] == "GeV/c"
    schema = pq.read_schema(path)
    assert json.loads(schema.metadata[b"vbes.provenance"]) == PROVENANCE
    assert schema.field("weight").metadata[b"description"] == b"event weight (1 for unweighted samples)"


# --- atomicity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_error_midway_leaves_nothing_and_keeps_an_old_file(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"s{SUFFIX[fmt]}"
    path.write_bytes(b"old content")
    batches = chunks()
    with pytest.raises(RuntimeError, match="midway"):
        with open_writer(path, None, PROVENANCE) as writer:
            writer.append(batches[0])
            writer.append(batches[1])
            raise RuntimeError("midway")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert path.read_bytes() == b"old content"


@pytest.mark.parametrize("fmt", FORMATS)
def test_interrupt_and_bad_batch_leave_nothing(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"s{SUFFIX[fmt]}"
    with pytest.raises(KeyboardInterrupt):
        with open_writer(path, None, PROVENANCE) as writer:
            writer.append(chunks()[0])
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    bad = chunks()[1]
    bad["tracks"]["p"][3] = np.nan  # tracks.p may not be NaN
    with pytest.raises(SchemaError, match=r"tracks\.p"):
        with open_writer(path, None, PROVENANCE) as writer:
            writer.append(chunks()[0])
            writer.append(bad)
    assert list(tmp_path.iterdir()) == []


# --- bad input ----------------------------------------------------------------------------------------------


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    cases: list[tuple[type[VbesError], Any, str]] = [
        (InvalidInput, lambda: open_writer(tmp_path / "x.h5", "csv", PROVENANCE), "unknown output format 'csv'"),
        (InvalidInput, lambda: open_writer(tmp_path / "x.dat", None, PROVENANCE), "cannot tell the format"),
        (NotFound, lambda: open_writer(tmp_path / "no" / "x.parquet", None, PROVENANCE), "does not exist"),
        (InvalidInput, lambda: open_writer(tmp_path, "root", PROVENANCE), "is a directory"),
        (InvalidInput, lambda: open_writer(tmp_path / "x.root", None, {"f": object()}), "not JSON"),
        (InvalidInput, lambda: open_writer(tmp_path / "x.pq", None, ["a"]), "provenance must be a mapping"),
    ]
    for error, call, text in cases:
        with pytest.raises(error) as info:
            call()
        assert text in str(info.value) and "\n" not in str(info.value)
    assert (infer_format("a.HDF5"), infer_format("b.pq"), infer_format("x", "root")) == ("hdf5", "parquet", "root")
    assert list(tmp_path.iterdir()) == []
