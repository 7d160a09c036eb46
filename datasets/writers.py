"""Writers of event tables to HDF5, Parquet and ROOT, each atomic and carrying its provenance.

One interface for the three formats a sample can be written in (``vbes sample``, :mod:`vbes.datasets.production`)::

    with open_writer("out.parquet", None, {"generator": "flow"}, mc=True) as writer:
        for tables in chunks:               # {table: {field: array}}, whole events (see vbes.datasets.schema)
            writer.append(tables)

* ``hdf5`` -- the event file itself (:class:`vbes.datasets.eventfile.EventWriter`: per-field SHA-256, content
  digest, read by :func:`vbes.datasets.read_events`).
* ``parquet`` -- one row per event: the ``events`` fields as columns (count columns included) and one column per
  object table, a list of structs (``tracks: list<struct<charge: int8, helix: fixed_size_list<double>[5], ...>>``)
  holding that event's rows in order; no value is nullable, so awkward reads plain records
  (``ak.from_parquet(path).tracks.p``). Each append is one row group, so memory stays bounded. The key-value
  metadata holds ``vbes.format``, ``vbes.schema_version``, ``vbes.mc``, ``vbes.units`` and ``vbes.provenance``
  (JSON; also in the Arrow schema, so ``pq.read_schema`` sees them) and, written at close,
  ``vbes.n_events`` and ``vbes.content_digest``; every Arrow field carries its ``unit`` and ``description``.
* ``root`` -- the layout of :func:`vbes.datasets.ingest.export_root` (one TTree ``events``: per-event branches,
  jagged ``<table>_<field>`` branches, one per component of a vector field; a ``vbes_info`` TObjString with the
  schema version, mc flag, provenance, content digest and units), filled chunk by chunk with ``tree.extend``.
  ``vbes ingest OUT.root -o OUT.h5`` reads it back without a mapping file and checks the content digest.

Every batch is validated and cast to the schema's dtypes as the event file does (a bad field raises
:class:`~vbes.errors.SchemaError` naming it), and every writer computes the event file's content digest of what
it wrote: the same events give the same digest in every format. A writer writes to a hidden temporary name in
the target's folder and renames it over the target only when :meth:`close` succeeds; an error or an interrupt
(``with`` block left by an exception, :meth:`abort`) removes it, so the target either is complete or untouched.

Example:
    >>> import os, tempfile
    >>> from vbes.datasets.eventfile import example_tables
    >>> path = os.path.join(tempfile.mkdtemp(), "sample.parquet")
    >>> with open_writer(path, None, {"generator": "doctest"}) as writer:
    ...     writer.append(example_tables(10, seed=1))
    >>> import pyarrow.parquet as pq
    >>> pq.read_metadata(path).num_rows
    10
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from vbes.datasets.eventfile import (
    EventWriter,
    _coerce_batch,
    _FieldHasher,
    _json_default,
    check_output_path,
)
from vbes.datasets.schema import COUNT_FIELD, OBJECT_TABLES, SCHEMA_VERSION, TABLES, Field, Tables
from vbes.errors import InvalidInput, SchemaError

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "PARQUET_FORMAT_NAME",
    "TableWriter",
    "HDF5Writer",
    "ParquetWriter",
    "RootWriter",
    "infer_format",
    "open_writer",
]

#: output formats, by the name ``fmt`` takes
FORMATS = ("hdf5", "parquet", "root")
#: file suffix -> format, for :func:`infer_format`
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".parquet": "parquet", ".pq": "parquet", ".root": "root"}
#: value of the Parquet key ``vbes.format``
PARQUET_FORMAT_NAME = "vbes-events-parquet/1"
#: Parquet compression: zstd is read by every current Parquet reader (Arrow, Spark, DuckDB, polars)
_PARQUET_COMPRESSION = "zstd"
#: name of the TTree, as :func:`vbes.datasets.ingest.export_root` writes and ``vbes ingest`` reads by default
_ROOT_TREE = "events"


class TableWriter(Protocol):
    """What :func:`open_writer` returns: a context manager taking batches of whole events.

    Attributes:
        path: the file written (it exists only after a successful :meth:`close`).
        fmt: one of :data:`FORMATS`.
        n_events: events appended so far.
        digest: the content digest of what was written (the event file's, see
            :func:`vbes.datasets.content_digest`), set by :meth:`close`.
    """

    @property
    def path(self) -> Path: ...

    @property
    def fmt(self) -> str: ...

    @property
    def n_events(self) -> int: ...

    @property
    def digest(self) -> str | None: ...

    def append(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Add a batch of whole events (validated; :class:`~vbes.errors.SchemaError` names a bad field)."""
        ...

    def close(self) -> None:
        """Finish the file and rename it over :attr:`path` (removed instead if finishing fails)."""
        ...

    def abort(self) -> None:
        """Drop everything written; :attr:`path` is left untouched."""
        ...

    def __enter__(self) -> TableWriter: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


def infer_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given (checked), else the one of ``path``'s suffix (:data:`SUFFIXES`).

    Raises:
        InvalidInput: an unknown ``fmt``, or no ``fmt`` and a suffix that names no format.

    Example:
        >>> infer_format("run1.root"), infer_format("x.dat", "parquet")
        ('root', 'parquet')
    """
    if fmt is not None:
        if fmt not in FORMATS:
            raise InvalidInput(f"unknown output format {fmt!r}; formats are {', '.join(FORMATS)}")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InvalidInput(
            f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; use one of "
            f"{', '.join(SUFFIXES)} or name the format ({', '.join(FORMATS)})"
        )
    return SUFFIXES[suffix]


def _check_provenance(path: Path, provenance: Any) -> dict[str, Any]:
    if not isinstance(provenance, Mapping):
        raise InvalidInput(f"{path}: provenance must be a mapping")
    try:
        json.dumps(dict(provenance), default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{path}: provenance is not JSON-serialisable: {exc}") from None
    return dict(provenance)


def _units() -> dict[str, str]:
    return {f"{t}.{f.name}": f.unit for t, fs in TABLES.items() for f in fs}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, path: Path) -> None:
    """Make the finished ``tmp`` durable and rename it over ``path`` (one atomic step for readers)."""
    _fsync_path(tmp)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        _fsync_path(path.parent)


class HDF5Writer:
    """The HDF5 event file through :class:`~vbes.datasets.eventfile.EventWriter` (same arguments)."""

    fmt = "hdf5"

    def __init__(self, path: str | os.PathLike[str], provenance: Mapping[str, Any], mc: bool = True) -> None:
        self._writer = EventWriter(path, provenance, mc=mc)
        self.path = self._writer.path
        self.digest: str | None = None

    @property
    def n_events(self) -> int:
        """Events appended so far (buffered ones included)."""
        return self._writer.n_events + self._writer._buffered_events

    def append(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Add a batch of whole events (validated by the event file)."""
        self._writer.append(tables)

    def close(self) -> None:
        """Finish the event file (digest, fsync, rename)."""
        self._writer.close()
        self.digest = self._writer.digest

    def abort(self) -> None:
        """Drop everything written."""
        self._writer.abort()

    def __enter__(self) -> HDF5Writer:
        self._writer.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _AtomicWriter:
    """Shared part of the Parquet and ROOT writers: validation, content digest, temporary file, rename."""

    fmt = ""

    def __init__(self, path: str | os.PathLike[str], provenance: Mapping[str, Any], mc: bool = True) -> None:
        self.path = check_output_path(path)
        self.provenance = _check_provenance(self.path, provenance)
        self.mc = bool(mc)
        self.n_events = 0
        self.digest: str | None = None
        self._hasher = _FieldHasher(SCHEMA_VERSION, TABLES)
        self._tmp: Path | None = None
        self._closed = False

    # subclasses ----------------------------------------------------------------------------------------
    def _open(self, tmp: Path) -> None:
        raise NotImplementedError

    def _write(self, batch: Tables) -> None:
        raise NotImplementedError

    def _finish(self, digest: str) -> None:
        """Write what is known only at the end and close the file (it is renamed afterwards)."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Close the open file without finishing it (it is removed afterwards); must not raise."""
        raise NotImplementedError

    # public --------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Create the temporary file (``with`` and the first :meth:`append` do this)."""
        if self._tmp is not None or self._closed:
            raise InvalidInput(f"{self.path}: writer already opened")
        check_output_path(self.path)
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.partial"
        try:
            self._open(self._tmp)
        except BaseException:
            self.abort()
            raise

    def append(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Add a batch of whole events (validated as the event file does; one row group / basket set)."""
        if self._closed:
            raise InvalidInput(f"{self.path}: writer is closed")
        if self._tmp is None:
            self.open()
        batch = _coerce_batch(str(self.path), tables, TABLES, self.mc)
        n = len(batch["events"]["run"])
        if n == 0:
            return
        try:
            self._write(batch)
        except BaseException:
            self.abort()
            raise
        for table, fields in TABLES.items():
            for f in fields:
                self._hasher.update(table, f.name, batch[table][f.name])
        self.n_events += n

    def close(self) -> None:
        """Finish the file and rename it over :attr:`path`; on failure nothing is left."""
        if self._closed:
            return
        if self._tmp is None:
            self.open()
        assert self._tmp is not None
        try:
            digest = self._hasher.hexdigest(self.n_events)
            self._finish(digest)
            _publish(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self.digest = digest
        self._closed = True

    def abort(self) -> None:
        """Drop everything written; :attr:`path` is left untouched."""
        self._closed = True
        if self._tmp is not None:
            with contextlib.suppress(Exception):
                self._discard()
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()

    def __enter__(self) -> _AtomicWriter:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --- Parquet ----------------------------------------------------------------------------------------------


def _arrow_type(field: Field) -> Any:
    import pyarrow as pa

    base = pa.from_numpy_dtype(np.dtype(field.dtype))
    if not field.shape:
        return base
    size = int(np.prod(field.shape, dtype=np.int64))
    return pa.list_(pa.field("item", base, nullable=False), size)


def _arrow_field(field: Field) -> Any:
    import pyarrow as pa

    meta = {"unit": field.unit, "description": field.description}
    return pa.field(field.name, _arrow_type(field), nullable=False, metadata=meta)


def _arrow_schema(metadata: Mapping[str, str]) -> Any:
    """One row per event: the ``events`` fields, then per object table a ``list<struct<fields>>`` column."""
    import pyarrow as pa

    columns = [_arrow_field(f) for f in TABLES["events"]]
    for table in OBJECT_TABLES:
        row = pa.struct([_arrow_field(f) for f in TABLES[table]])
        columns.append(
            pa.field(
                table,
                pa.list_(pa.field("item", row, nullable=False)),
                nullable=False,
                metadata={"description": f"the event's {table} rows, in order (count: events.{COUNT_FIELD[table]})"},
            )
        )
    return pa.schema(columns, metadata=dict(metadata))


def _arrow_column(field: Field, values: np.ndarray, arrow_type: Any) -> Any:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    if not field.shape:
        return flat
    return pa.FixedSizeListArray.from_arrays(flat, type=arrow_type)


class ParquetWriter(_AtomicWriter):
    """Events as Parquet, one row group per :meth:`append` (see the module docstring for the layout)."""

    fmt = "parquet"

    def _open(self, tmp: Path) -> None:
        import pyarrow.parquet as pq

        metadata = {
            "vbes.format": PARQUET_FORMAT_NAME,
            "vbes.schema_version": str(SCHEMA_VERSION),
            "vbes.mc": json.dumps(self.mc),
            "vbes.units": json.dumps(_units(), sort_keys=True),
            "vbes.provenance": json.dumps(self.provenance, default=_json_default, sort_keys=True),
        }
        self._schema = _arrow_schema(metadata)
        # no dictionary pages: detector values are nearly all distinct, so pyarrow would build each dictionary and
        # then drop it (twice the writing time); zstd still packs the few low-cardinality columns
        self._file = pq.ParquetWriter(tmp, self._schema, compression=_PARQUET_COMPRESSION, use_dictionary=False)

    def _write(self, batch: Tables) -> None:
        import pyarrow as pa

        arrays = [
            _arrow_column(f, batch["events"][f.name], self._schema.field(f.name).type) for f in TABLES["events"]
        ]
        for table in OBJECT_TABLES:
            list_type = self._schema.field(table).type
            row_type = list_type.value_type
            children = [
                _arrow_column(f, batch[table][f.name], row_type.field(f.name).type) for f in TABLES[table]
            ]
            rows = pa.StructArray.from_arrays(children, fields=list(row_type))
            counts = batch["events"][COUNT_FIELD[table]].astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            if offsets[-1] > np.iinfo(np.int32).max:
                raise SchemaError(
                    f"{self.path}: {offsets[-1]} {table} rows in one batch exceed Parquet's list offsets "
                    f"({np.iinfo(np.int32).max}); append fewer events at a time"
                )
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), rows, type=list_type))
        table = pa.Table.from_arrays(arrays, schema=self._schema)
        self._file.write_table(table, row_group_size=table.num_rows)

    def _finish(self, digest: str) -> None:
        self._file.add_key_value_metadata({"vbes.n_events": str(self.n_events), "vbes.content_digest": digest})
        self._file.close()

    def _discard(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


# --- ROOT -------------------------------------------------------------------------------------------------


def _empty_tables() -> Tables:
    return {t: {f.name: np.zeros((0, *f.shape), f.dtype) for f in fs} for t, fs in TABLES.items()}


class RootWriter(_AtomicWriter):
    """Events as the ROOT TTree of :func:`vbes.datasets.ingest.export_root`, extended once per :meth:`append`."""

    fmt = "root"

    def _open(self, tmp: Path) -> None:
        import uproot

        # the export's own branch builder: one layout for 'vbes export-root' and these files
        from vbes.datasets.ingest import _export_branches

        self._export_branches = _export_branches
        self._file = uproot.recreate(tmp)
        types = {
            name: (b.type if hasattr(b, "type") else b.dtype) for name, b in _export_branches(_empty_tables()).items()
        }
        self._tree = self._file.mktree(
            _ROOT_TREE, types, title="vbes event file (jagged <table>_<field> branches)"
        )

    def _write(self, batch: Tables) -> None:
        self._tree.extend(self._export_branches(batch))

    def _finish(self, digest: str) -> None:
        # the payload export_root writes; 'source' names the event file an export came from (none here)
        payload = {
            "schema_version": SCHEMA_VERSION,
            "mc": self.mc,
            "provenance": self.provenance,
            "content_digest": digest,
            "source": None,
            "n_events": self.n_events,
            "units": _units(),
        }
        self._file["vbes_info"] = json.dumps(payload, default=_json_default, sort_keys=True)
        self._file.close()

    def _discard(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


_WRITERS: dict[str, type[HDF5Writer] | type[ParquetWriter] | type[RootWriter]] = {
    "hdf5": HDF5Writer,
    "parquet": ParquetWriter,
    "root": RootWriter,
}


def open_writer(
    path: str | os.PathLike[str], fmt: str | None, provenance: Mapping[str, Any], mc: bool = True
) -> TableWriter:
    """A writer of event tables to ``path`` in ``fmt`` (default: from the suffix, see :func:`infer_format`).

    Args:
        path: the file to create (replaced atomically if it exists).
        fmt: "hdf5", "parquet", "root" or ``None``.
        provenance: JSON-serialisable mapping stored with the events (generator, seed, model, ...).
        mc: whether the events are simulation (with a truth table); data must have no truth rows.

    Returns:
        a :class:`TableWriter`; use it as a context manager (the file appears when the block ends without an
        exception) or call :meth:`~TableWriter.close` / :meth:`~TableWriter.abort`.

    Raises:
        InvalidInput: unknown format, a folder as ``path``, provenance not JSON-serialisable.
        NotFound: the folder of ``path`` does not exist.
    """
    fmt = infer_format(path, fmt)
    check_output_path(path)
    return _WRITERS[fmt](path, provenance, mc=mc)
