"""Helpers of the writer and production tests: a fake chunk producer (no physics in it) and readers of each format.

``FakeChunks(seed)(chunk_index, n)`` fills every field of the current layout with values drawn from
``numpy.random.default_rng([seed, chunk_index])`` in the field's own dtype: integers over the dtype's whole range,
floats with NaN (where the schema allows it), +-inf, -0.0 and the float32 extremes, so a writer that narrows,
rounds or drops anything is caught. Index columns (``emc_index``, ``truth_index``, ``mother``) stay within their
event, as the layout requires. Events are numbered ``chunk_index * chunk_events + i``.

Dask workers unpickle it by reference: they need this folder (``tests/``) on their ``PYTHONPATH``.

:data:`READERS` read a file of each format back with that format's own tools (h5py via
:func:`vbes.datasets.read_events`, pyarrow, uproot), not with the writers under test.
"""

from __future__ import annotations

import time
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vbes.datasets import file_info, read_events
from vbes.datasets.schema import COUNT_FIELD, OBJECT_TABLES, SCHEMA_VERSION, TABLES, Field

Tables = dict[str, dict[str, np.ndarray]]

#: the most objects of each table in one event
MAX_ROWS = {"tracks": 4, "showers": 7, "truth": 9}


class ChunkFailure(RuntimeError):
    """What :class:`FakeChunks` raises for its ``fail_at`` chunk."""


def _values(rng: np.random.Generator, field: Field, n: int) -> np.ndarray:
    shape = (n, *field.shape)
    dtype = np.dtype(field.dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    values = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, size=shape)).astype(dtype)
    flat = values.reshape(-1)
    specials = np.array([np.inf, -np.inf, -0.0, np.finfo(dtype).max, np.finfo(dtype).tiny], dtype)
    picks = rng.random(flat.size)
    flat[picks < 0.02] = rng.choice(specials, size=int((picks < 0.02).sum()))
    if field.nan_allowed:
        flat[picks > 0.9] = np.nan
    return values


def _local_index(rng: np.random.Generator, owner: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """A row index within each row's event (``owner``), ``0 <= i < limit[owner]``, or -1 (also where none)."""
    top = limit[owner]
    index = np.floor(rng.random(len(owner)) * top).astype(np.int32)
    return np.where((top > 0) & (rng.random(len(owner)) < 0.8), index, -1).astype(np.int32)


@dataclass(frozen=True)
class FakeChunks:
    """``make_chunk(chunk_index, n)`` of random, schema-valid events.

    Args:
        seed: the same seed and chunk index give the same arrays.
        chunk_events: events of a full chunk (for the event numbers only).
        mc: with truth rows (else ``n_truth`` is 0 and truth indices are -1).
        empty: object tables that get no rows at all.
        fail_at: chunk index for which :class:`ChunkFailure` is raised (to test that nothing is left).
        delay: seconds each chunk takes (to have file tasks still running when another one fails).
        log: a file to which each call appends its chunk index (what the workers made).
    """

    seed: int = 0
    chunk_events: int = 100
    mc: bool = True
    empty: tuple[str, ...] = ()
    fail_at: int | None = None
    delay: float = 0.0
    log: str | None = None

    def __call__(self, chunk_index: int, n: int) -> Tables:
        if self.log is not None:
            with open(self.log, "a") as stream:
                stream.write(f"{chunk_index}\n")
        time.sleep(self.delay)
        if chunk_index == self.fail_at:
            raise ChunkFailure(f"chunk {chunk_index} failed on purpose")
        rng = np.random.default_rng([self.seed, chunk_index])
        counts = {
            t: np.zeros(n, np.int32)
            if t in self.empty or (t == "truth" and not self.mc)
            else rng.integers(0, MAX_ROWS[t], size=n, endpoint=True).astype(np.int32)
            for t in OBJECT_TABLES
        }
        events = {f.name: _values(rng, f, n) for f in TABLES["events"]}
        events["event"] = chunk_index * self.chunk_events + np.arange(n, dtype=np.int64)
        for table in OBJECT_TABLES:
            events[COUNT_FIELD[table]] = counts[table]
        out: Tables = {"events": events}
        for table in OBJECT_TABLES:
            rows = int(counts[table].sum())
            owner = np.repeat(np.arange(n), counts[table])
            cols: dict[str, np.ndarray] = {}
            for f in TABLES[table]:
                if f.index_into is not None:
                    cols[f.name] = _local_index(rng, owner, counts[f.index_into])
                else:
                    cols[f.name] = _values(rng, f, rows)
            if table == "truth":
                # a mother comes before its daughter in the event
                position = np.arange(rows) - np.repeat(np.cumsum(counts[table]) - counts[table], counts[table])
                cols["mother"] = np.minimum(cols["mother"], position - 1).astype(np.int32)
            out[table] = cols
        return out


def concatenate(chunks: list[Tables]) -> Tables:
    """The events of several batches, in order."""
    return {t: {name: np.concatenate([c[t][name] for c in chunks]) for name in chunks[0][t]} for t in chunks[0]}


def assert_same_tables(got: dict[str, dict[str, np.ndarray]], expected: Tables) -> None:
    """Every field of ``expected`` is in ``got`` with the same dtype, shape and bytes (NaN payloads, -0.0)."""
    for table, cols in expected.items():
        assert set(got[table]) == set(cols), table
        for name, values in cols.items():
            actual = np.asarray(got[table][name])
            where = f"{table}.{name}"
            assert actual.dtype == values.dtype, (where, actual.dtype, values.dtype)
            assert actual.shape == values.shape, (where, actual.shape, values.shape)
            assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(values).tobytes(), where


# --- readers that are not the writers' ------------------------------------------------------------------------


def read_hdf5(path: Path) -> tuple[Tables, dict[str, Any]]:
    return read_events(path), file_info(path)["provenance"]


def read_parquet(path: Path) -> tuple[Tables, dict[str, Any]]:
    """pyarrow only: events columns, and per object table its list<struct> column flattened."""
    import pyarrow.parquet as pq  # here, not at the top: Dask workers import this module for FakeChunks

    table = pq.read_table(path)
    out: Tables = {"events": {f.name: table.column(f.name).to_numpy() for f in TABLES["events"]}}
    for name in OBJECT_TABLES:
        column = table.column(name).combine_chunks()
        counts = column.value_lengths().to_numpy(zero_copy_only=False)
        assert np.array_equal(counts, out["events"][COUNT_FIELD[name]]), name
        rows = column.flatten()
        cols = {}
        for f in TABLES[name]:
            child = rows.field(f.name)
            if f.shape:
                child = child.flatten()
            cols[f.name] = child.to_numpy(zero_copy_only=False).reshape(-1, *f.shape)
        out[name] = cols
    metadata = pq.read_metadata(path).metadata
    return out, json.loads(metadata[b"vbes.provenance"])


def read_root(path: Path) -> tuple[Tables, dict[str, Any]]:
    """uproot only: per-event branches, the jagged ``<table>_<field>[_i]`` branches and their counters."""
    import awkward as ak
    import uproot

    with uproot.open(path) as root_file:
        tree = root_file["events"]
        arrays = tree.arrays(library="ak", how=dict)
        info = json.loads(str(root_file["vbes_info"]))
    out: Tables = {"events": {}}
    for f in TABLES["events"]:
        if f.name not in COUNT_FIELD.values():
            out["events"][f.name] = ak.to_numpy(arrays[f.name])
    for name in OBJECT_TABLES:
        out["events"][COUNT_FIELD[name]] = ak.to_numpy(arrays[f"n{name}"]).astype(np.int32)
        cols = {}
        for f in TABLES[name]:
            if f.shape:
                parts = [ak.to_numpy(ak.flatten(arrays[f"{name}_{f.name}_{i}"])) for i in range(f.shape[0])]
                cols[f.name] = np.stack(parts, axis=1)
            else:
                cols[f.name] = ak.to_numpy(ak.flatten(arrays[f"{name}_{f.name}"]))
        out[name] = cols
    assert info["schema_version"] == SCHEMA_VERSION
    return out, info["provenance"]


READERS = {"hdf5": read_hdf5, "parquet": read_parquet, "root": read_root}
