"""The DST-level event file: HDF5 writer, chunked reader, validation, content digest, migrate-on-read.

Layout of one file (schema in :mod:`vbes.datasets.schema`)::

    /                      attrs: vbes_format, schema_version, mc, n_events, created, content_digest
    /provenance            attrs: generator, seed, runs, calibration_payloads (JSON where nested), ...
    /events/<field>        one row per event
    /tracks/<field>        object rows in event order (likewise /showers, /truth)
    /offsets/<table>       int64, n_events + 1: rows of event i are offsets[i]:offsets[i+1]

Every dataset carries ``unit``, ``description`` and ``nan_allowed`` attributes. Datasets are chunked and
compressed, by default with the filters every HDF5 build has (gzip level 1 with byte shuffle, plus the
Fletcher-32 checksum so a flipped byte is detected rather than read as a wrong number): any h5py, HDF5 C,
Julia or MATLAB reader opens them without plugins. ``compression="lzf"`` writes ~3x faster for scratch files
(every h5py reads LZF; other HDF5 readers need its plugin). See :data:`COMPRESSION`.

Writing goes to a temporary file beside the target that is validated, checksummed, fsynced and atomically
renamed on success and removed on failure, so ``path`` either holds a complete file or is untouched.

Example::

    >>> import numpy as np, tempfile, os
    >>> from vbes.datasets import EventWriter, read_events
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.h5")
    >>> ev = {"run": np.array([-1]), "event": np.array([0]), "channel": np.array([0]),
    ...       "n_tracks": np.array([0]), "n_showers": np.array([0]), "n_truth": np.array([0]),
    ...       "weight": np.array([1.0])}
    >>> with EventWriter(path, {"generator": "doctest"}, mc=False) as w:
    ...     w.append({"events": ev})
    >>> int(read_events(path)["events"]["run"][0])
    -1
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vbes.datasets.schema import (
    COUNT_FIELD,
    OBJECT_TABLES,
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    Field,
    Tables,
    layout,
    migrate_tables,
)
from vbes.errors import CorruptFileError, InvalidInput, NotFound, SchemaError, UnsupportedSchemaVersion

__all__ = [
    "FORMAT_NAME",
    "COMPRESSION",
    "EventWriter",
    "read_events",
    "iter_events",
    "file_info",
    "content_digest",
    "validate_file",
    "example_tables",
    "slice_events",
    "summarize",
    "Tables",
]

#: value of the root attribute ``vbes_format`` that marks an event file
FORMAT_NAME = "vbes-eventfile"
#: HDF5 filters by ``compression`` choice. "gzip" (default, for files that are kept): built into every HDF5
#: library, so any reader opens the file without plugins. "lzf": ~3x faster to write, bundled with every h5py
#: but needs a plugin elsewhere (scratch and training files). "none": no compression. All keep byte shuffle
#: and the Fletcher-32 checksum, so a flipped byte is detected rather than read as a wrong number.
COMPRESSION: dict[str, dict[str, Any]] = {
    "gzip": {"compression": "gzip", "compression_opts": 1, "shuffle": True, "fletcher32": True},
    "lzf": {"compression": "lzf", "shuffle": True, "fletcher32": True},
    "none": {"shuffle": False, "fletcher32": True},
}
#: target size of one HDF5 chunk: big enough to compress well, small enough for cheap random access
_CHUNK_BYTES = 1 << 16


_NP_INT = (np.integer, int)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (errors are printed as one line)."""
    return " ".join(str(exc).split())


def _now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _chunk_rows(field: Field, max_rows: int) -> int:
    row_bytes = np.dtype(field.dtype).itemsize * int(np.prod(field.shape, dtype=np.int64))
    return int(max(256, min(max_rows, _CHUNK_BYTES // max(row_bytes, 1))))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_provenance(group: h5py.Group, provenance: Mapping[str, Any]) -> None:
    json_keys = []
    for key, value in provenance.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (str, bool, int, float)) and not (
            isinstance(value, int) and abs(value) >= 2**63
        ):
            group.attrs[key] = value
        else:
            group.attrs[key] = json.dumps(value, default=_json_default, sort_keys=True)
            json_keys.append(key)
    group.attrs["_json_keys"] = json.dumps(sorted(json_keys))


def _read_provenance(group: h5py.Group) -> dict[str, Any]:
    json_keys = set(json.loads(group.attrs.get("_json_keys", "[]")))
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        if key == "_json_keys":
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if key in json_keys:
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


class _FieldHasher:
    """SHA-256 of every field's bytes, fed in row order; combined into one content digest."""

    def __init__(self, schema_version: int, tables: Mapping[str, Sequence[Field]]) -> None:
        self.schema_version = schema_version
        self.fields = {(t, f.name): f for t, fs in tables.items() for f in fs}
        self.hashes = {key: hashlib.sha256() for key in self.fields}

    def update(self, table: str, name: str, values: np.ndarray) -> None:
        field = self.fields[(table, name)]
        self.hashes[(table, name)].update(np.ascontiguousarray(values, dtype=np.dtype(field.dtype)).tobytes())

    def hexdigest(self, n_events: int) -> str:
        total = hashlib.sha256(f"{FORMAT_NAME} schema {self.schema_version} events {n_events}\n".encode())
        for (table, name), field in sorted(self.fields.items()):
            line = f"{table}.{name} {field.dtype} {field.shape} {self.hashes[(table, name)].hexdigest()}\n"
            total.update(line.encode())
        return total.hexdigest()


# --- validation of in-memory batches -----------------------------------------------------------------


def _check_nan(where: str, table: str, field: Field, values: np.ndarray, row0: int = 0) -> None:
    if field.nan_allowed or values.dtype.kind != "f":
        return
    bad = np.isnan(values)
    if bad.any():
        row = int(np.argmax(bad.reshape(len(values), -1).any(axis=1))) + row0
        raise SchemaError(
            f"{where}: NaN in {table}.{field.name} (row {row}), which the schema does not allow"
        )


def _event_of_rows(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts)


def _check_indices(where: str, tables: Tables, fields: Mapping[str, Sequence[Field]], row0: int = 0) -> None:
    """Index columns point inside their own event: -1 or ``0 <= i < count``."""
    events = tables["events"]
    for table, table_fields in fields.items():
        for field in table_fields:
            if field.index_into is None or field.name not in tables.get(table, {}):
                continue
            values = tables[table][field.name].astype(np.int64)
            if table == "events":
                continue
            owner = _event_of_rows(events[COUNT_FIELD[table]])
            limit = events[COUNT_FIELD[field.index_into]][owner]
            bad = (values != -1) & ((values < 0) | (values >= limit))
            if bad.any():
                row = int(np.argmax(bad))
                raise SchemaError(
                    f"{where}: {table}.{field.name} = {int(values[row])} in row {row + row0} points outside "
                    f"its "
                    f"event's {int(limit[row])} {field.index_into} rows"
                )


def _coerce_batch(
    where: str, batch: Mapping[str, Mapping[str, Any]], fields: Mapping[str, Sequence[Field]], mc: bool
) -> Tables:
    """Check one batch of whole events against the layout and cast it to the schema dtypes."""
    if not isinstance(batch, Mapping) or "events" not in batch:
        raise SchemaError(f"{where}: a batch is a mapping of tables and needs the 'events' table")
    unknown = set(batch) - set(fields)
    if unknown:
        raise SchemaError(f"{where}: unknown table(s) {sorted(unknown)}; the layout has {list(fields)}")
    out: Tables = {}
    for table, table_fields in fields.items():
        columns = batch.get(table, {})
        if not isinstance(columns, Mapping):
            raise SchemaError(f"{where}: table {table!r} must be a mapping of field name to array")
        unknown = set(columns) - {f.name for f in table_fields}
        if unknown:
            raise SchemaError(
                f"{where}: unknown field(s) {', '.join(f'{table}.{u}' for u in sorted(unknown))}"
            )
        if table == "events":
            n_rows = None
        else:
            counts = out["events"][COUNT_FIELD[table]]
            n_rows = int(counts.sum())
            if table == "truth" and not mc and n_rows:
                raise SchemaError(
                    f"{where}: a data file (mc=False) cannot hold truth rows (events.n_truth > 0)"
                )
        cols: dict[str, np.ndarray] = {}
        for field in table_fields:
            if field.name in columns:
                arr = np.asarray(columns[field.name])
                if arr.dtype.kind == "b":
                    arr = arr.astype(np.int8)
                target = np.dtype(field.dtype)
                if not np.can_cast(arr.dtype, target, "same_kind") and not (arr.size == 0):
                    raise SchemaError(
                        f"{where}: {table}.{field.name} has dtype {arr.dtype}, not castable to {target}"
                    )
                if n_rows is None:
                    n_rows = len(arr) if arr.ndim else -1
                expected = (n_rows, *field.shape)
                if arr.shape != expected:
                    raise SchemaError(
                        f"{where}: {table}.{field.name} has shape {arr.shape}, expected {expected} "
                        f"(inconsistent lengths)"
                    )
                arr = arr.astype(target, copy=False)
                if target.kind == "f":
                    _check_nan(where, table, field, arr)
            elif field.fill is not None or (field.mc_only and not mc) or (table != "events" and n_rows == 0):
                if n_rows is None:
                    raise SchemaError(f"{where}: events.{field.name} is missing")
                fill = -1 if field.fill is None and field.mc_only else (field.fill or 0)
                arr = np.full((n_rows, *field.shape), fill, dtype=field.dtype)
            else:
                raise SchemaError(f"{where}: field {table}.{field.name} is missing")
            cols[field.name] = arr
        if table == "events":
            for name in COUNT_FIELD.values():
                if (cols[name] < 0).any():
                    raise SchemaError(f"{where}: negative count in events.{name}")
        out[table] = cols
    _check_indices(where, out, fields)
    return out


# --- writer ------------------------------------------------------------------------------------------


class EventWriter:
    """Write whole events batch by batch into an event file, atomically.

    Args:
        path: the file to create (replaced atomically if it exists).
        provenance: generator, generator_version, channel, seed, runs, detector_model, detector_model_version,
            calibration_tag, calibration_payloads {type: sha256}, software, ... (JSON-serialisable values).
        mc: whether the file holds simulation (with a truth table); data files must have no truth rows.
        chunk_events: events buffered in memory before they are written (and the chunk length of the events
            table); object tables use chunks of about 1 MiB.
        schema_version: layout to write; the current one unless an old-version file is wanted (fixtures).
        compression: "gzip" (default: readable by every HDF5 library), "lzf" (faster, h5py) or "none".

    ``append`` takes ``{"events": {col: array}, "tracks": {...}, "showers": {...}, "truth": {...}}`` holding
    whole events; object rows are in event order and counted by ``events.n_tracks`` etc. Fields with a
    ``fill`` in the schema, and MC-only fields of data files, may be left out. Every batch is checked
    (fields, dtypes, lengths, NaN, index ranges) and a bad one raises :class:`SchemaError` naming the field.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        provenance: Mapping[str, Any],
        mc: bool = True,
        chunk_events: int = 65536,
        *,
        schema_version: int = SCHEMA_VERSION,
        compression: str = "gzip",
    ) -> None:
        self.path = Path(path)
        if compression not in COMPRESSION:
            raise InvalidInput(
                f"{self.path}: compression {compression!r} is not one of {', '.join(COMPRESSION)}"
            )
        self.filters = COMPRESSION[compression]
        if schema_version not in SCHEMA_VERSIONS:
            raise UnsupportedSchemaVersion(
                f"{self.path}: cannot write unknown schema version {schema_version}"
            )
        if not isinstance(provenance, Mapping):
            raise InvalidInput(f"{self.path}: provenance must be a mapping")
        try:
            json.dumps(dict(provenance), default=_json_default)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{self.path}: provenance is not JSON-serialisable: {exc}") from None
        if chunk_events < 1:
            raise InvalidInput(f"{self.path}: chunk_events must be positive")
        self.provenance = dict(provenance)
        self.mc = bool(mc)
        self.chunk_events = int(chunk_events)
        self.schema_version = schema_version
        self.fields = layout(schema_version)
        self.n_events = 0
        self._rows = {t: 0 for t in self.fields}
        self._buffer: list[Tables] = []
        self._buffered_events = 0
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self._closed = False
        self._hasher = _FieldHasher(schema_version, self.fields)

    # context manager -----------------------------------------------------------------------------
    def __enter__(self) -> EventWriter:
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        """Create the temporary file and its empty datasets (``with`` does this)."""
        if self._file is not None or self._closed:
            raise InvalidInput(f"{self.path}: writer already opened")
        if not self.path.parent.is_dir():
            raise NotFound(f"{self.path}: folder {self.path.parent} does not exist")
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:12]}.partial"
        self._file = h5py.File(self._tmp, "w")
        try:
            for table, table_fields in self.fields.items():
                group = self._file.create_group(table)
                for field in table_fields:
                    rows = self.chunk_events if table == "events" else 1 << 16
                    ds = group.create_dataset(
                        field.name,
                        shape=(0, *field.shape),
                        maxshape=(None, *field.shape),
                        dtype=field.dtype,
                        chunks=(_chunk_rows(field, rows), *field.shape),
                        **self.filters,
                    )
                    ds.attrs["unit"] = field.unit
                    ds.attrs["description"] = field.description
                    ds.attrs["nan_allowed"] = field.nan_allowed
                    if field.index_into:
                        ds.attrs["index_into"] = field.index_into
            offsets = self._file.create_group("offsets")
            for table in OBJECT_TABLES:
                ds = offsets.create_dataset(
                    table, data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1 << 15,), **self.filters
                )
                ds.attrs["description"] = f"rows of event i in '{table}' are offsets[i]:offsets[i+1]"
        except BaseException:
            self.abort()
            raise

    # writing -------------------------------------------------------------------------------------
    def append(self, tables: Mapping[str, Mapping[str, Any]]) -> None:
        """Add one batch of whole events (validated; raises :class:`SchemaError` naming the bad field)."""
        if self._file is None:
            if self._closed:
                raise InvalidInput(f"{self.path}: writer is closed")
            self.open()
        batch = _coerce_batch(str(self.path), tables, self.fields, self.mc)
        n = len(batch["events"]["run"])
        if n == 0:
            return
        self._buffer.append(batch)
        self._buffered_events += n
        if self._buffered_events >= self.chunk_events:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        assert self._file is not None
        merged = {
            t: {f.name: np.concatenate([b[t][f.name] for b in self._buffer]) for f in fs}
            for t, fs in self.fields.items()
        }
        self._buffer.clear()
        self._buffered_events = 0
        n_new = len(merged["events"]["run"])
        for table, table_fields in self.fields.items():
            cols = merged[table]
            n_rows = len(cols[table_fields[0].name])
            start = self._rows[table]
            for field in table_fields:
                ds = self._file[table][field.name]
                ds.resize(start + n_rows, axis=0)
                ds[start:] = cols[field.name]
                self._hasher.update(table, field.name, cols[field.name])
            self._rows[table] = start + n_rows
            if table in COUNT_FIELD:
                off = self._file["offsets"][table]
                ends = start + np.cumsum(merged["events"][COUNT_FIELD[table]], dtype=np.int64)
                off.resize(self.n_events + n_new + 1, axis=0)
                off[self.n_events + 1 :] = ends
        self.n_events += n_new

    def close(self) -> None:
        """Finish the file: write attributes and digest, fsync, rename atomically to ``path``."""
        if self._closed:
            return
        if self._file is None:
            self.open()
        assert self._file is not None and self._tmp is not None
        try:
            self._flush()
            self.digest = self._hasher.hexdigest(self.n_events)
            f = self._file
            f.attrs["vbes_format"] = FORMAT_NAME
            f.attrs["schema_version"] = self.schema_version
            f.attrs["mc"] = self.mc
            f.attrs["n_events"] = self.n_events
            f.attrs["created"] = _now_utc()
            f.attrs["content_digest"] = self.digest
            for table in self.fields:
                f[table].attrs["n_rows"] = self._rows[table]
            _write_provenance(f.create_group("provenance"), self.provenance)
            f.close()
            self._file = None
            fd = os.open(self._tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self.path)
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def abort(self) -> None:
        """Drop everything written so far; ``path`` is left untouched."""
        self._closed = True
        self._buffer.clear()
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()


# --- reader ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _guard(path: Path, what: str) -> Iterator[None]:
    """Turn HDF5 read failures into one clear :class:`CorruptFileError` naming the file and the field."""
    try:
        yield
    except (SchemaError, UnsupportedSchemaVersion, CorruptFileError, InvalidInput):
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CorruptFileError(
            f"{path}: cannot read {what} ({_one_line(exc)}); the file is truncated or corrupt"
        ) from exc


def _parse_fields(
    fields: Mapping[str, Iterable[str]] | Iterable[str] | None,
    tables: Iterable[str] | None,
    current: Mapping[str, Sequence[Field]],
) -> dict[str, list[str]]:
    """Requested ``{table: [field, ...]}`` in schema order, checked against the current layout."""
    wanted_tables = list(current) if tables is None else list(tables)
    if isinstance(tables, str):
        wanted_tables = [tables]
    for t in wanted_tables:
        if t not in current:
            raise InvalidInput(f"unknown table {t!r}; tables are {', '.join(current)}")
    if fields is None:
        return {t: [f.name for f in current[t]] for t in wanted_tables}
    requested: dict[str, set[str]] = {}
    items = fields.items() if isinstance(fields, Mapping) else None
    if items is None:
        if isinstance(fields, str):
            fields = [fields]
        pairs = []
        for spec in fields:
            if "." not in spec:
                raise InvalidInput(f"field {spec!r} must be written TABLE.FIELD (e.g. tracks.p)")
            pairs.append(tuple(spec.split(".", 1)))
    else:
        pairs = [(t, name) for t, names in items for name in ([names] if isinstance(names, str) else names)]
    for t, name in pairs:
        if t not in current:
            raise InvalidInput(f"unknown table {t!r} in field {t}.{name}")
        if name not in {f.name for f in current[t]}:
            raise InvalidInput(f"unknown field {t}.{name}")
        if tables is None or t in wanted_tables:
            requested.setdefault(t, set()).add(name)
    return {t: [f.name for f in current[t] if f.name in names] for t, names in requested.items()}


class _EventFile:
    """An open event file with its layout checked (metadata only; arrays are read on demand)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise NotFound(f"{self.path}: no such event file")
        with _guard(self.path, "the HDF5 structure"):
            try:
                self.h5 = h5py.File(self.path, "r")
            except OSError as exc:
                raise CorruptFileError(
                    f"{self.path}: not a readable HDF5 file ({_one_line(exc)}); "
                    "truncated, corrupt or another format"
                ) from exc
        try:
            self._check_layout()
        except BaseException:
            self.h5.close()
            raise

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> _EventFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_layout(self) -> None:
        path, h5 = self.path, self.h5
        with _guard(path, "the root attributes"):
            attrs = dict(h5.attrs)
        fmt = attrs.get("vbes_format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode()
        if fmt != FORMAT_NAME:
            raise SchemaError(f"{path}: not a vbes event file (attribute vbes_format is {fmt!r})")
        for key in ("schema_version", "n_events", "content_digest", "mc"):
            if key not in attrs:
                raise SchemaError(f"{path}: root attribute {key!r} is missing")
        version = attrs["schema_version"]
        if not isinstance(version, _NP_INT):
            raise SchemaError(f"{path}: schema_version attribute {version!r} is not an integer")
        self.version = int(version)
        if self.version not in SCHEMA_VERSIONS:
            newest = max(SCHEMA_VERSIONS)
            hint = "upgrade vbes to read it" if self.version > newest else "no such version was ever released"
            raise UnsupportedSchemaVersion(
                f"{path}: schema version {self.version} is unknown to this vbes (it reads versions "
                f"{', '.join(map(str, sorted(SCHEMA_VERSIONS)))}); {hint}"
            )
        self.fields = layout(self.version)
        self.n_events = int(attrs["n_events"])
        self.mc = bool(attrs["mc"])
        self.stored_digest = str(attrs["content_digest"])
        self.created = str(attrs.get("created", ""))
        self.n_rows: dict[str, int] = {}
        with _guard(path, "the table layout"):
            for table, table_fields in self.fields.items():
                if table not in h5:
                    raise SchemaError(f"{path}: table {table!r} is missing")
                if table in COUNT_FIELD:
                    if table not in h5.get("offsets", {}):
                        raise SchemaError(f"{path}: offsets/{table} is missing")
                    off = h5["offsets"][table]
                    if off.shape != (self.n_events + 1,):
                        raise SchemaError(
                            f"{path}: offsets/{table} has {off.shape[0]} entries for {self.n_events} events "
                            f"(inconsistent lengths)"
                        )
                    n_rows = int(off[-1])
                else:
                    n_rows = self.n_events
                self.n_rows[table] = n_rows
                for field in table_fields:
                    if field.name not in h5[table]:
                        raise SchemaError(f"{path}: field {table}.{field.name} is missing")
                    ds = h5[table][field.name]
                    if not isinstance(ds, h5py.Dataset):
                        raise SchemaError(f"{path}: {table}.{field.name} is not a dataset")
                    if ds.dtype != np.dtype(field.dtype):
                        raise SchemaError(
                            f"{path}: field {table}.{field.name} has dtype {ds.dtype}, "
                            f"schema says {field.dtype}"
                        )
                    if ds.shape != (n_rows, *field.shape):
                        raise SchemaError(
                            f"{path}: field {table}.{field.name} has shape {ds.shape}, expected "
                            f"{(n_rows, *field.shape)} (inconsistent lengths)"
                        )

    def provenance(self) -> dict[str, Any]:
        with _guard(self.path, "the provenance attributes"):
            return _read_provenance(self.h5["provenance"]) if "provenance" in self.h5 else {}

    def _read_dataset(self, table: str, name: str, start: int, stop: int) -> np.ndarray:
        with _guard(self.path, f"{table}.{name} rows {start}:{stop}"):
            return self.h5[table][name][start:stop]

    def read(self, start: int, stop: int, wanted: Mapping[str, Sequence[str]], check: bool = True) -> Tables:
        """Events ``start:stop`` (already clipped), requested current-version fields, migrated."""
        path = self.path
        object_tables = [t for t in wanted if t in COUNT_FIELD]
        # object rows of the range come from the offsets; the counts go along so rows can be split per event
        events_wanted = list(wanted.get("events", []))
        for t in object_tables:
            if COUNT_FIELD[t] not in events_wanted:
                events_wanted.append(COUNT_FIELD[t])
        row_ranges: dict[str, tuple[int, int]] = {"events": (start, stop)}
        for t in object_tables:
            off = self._read_dataset("offsets", t, start, stop + 1)
            row_ranges[t] = (int(off[0]), int(off[-1]))
        raw: Tables = {}
        file_fields = {t: {f.name: f for f in fs} for t, fs in self.fields.items()}
        requested = dict(wanted)
        if events_wanted:
            requested["events"] = events_wanted
        for table, names in requested.items():
            a, b = row_ranges[table]
            cols = {}
            for name in names:
                field = file_fields[table].get(name)
                if field is None:
                    continue  # added by a later schema version: the migration supplies it
                values = self._read_dataset(table, name, a, b)
                if check:
                    _check_nan(str(path), table, field, values, a)
                cols[name] = values
            raw[table] = cols
        if check:
            events = raw.get("events", {})
            for t in object_tables:
                a, b = row_ranges[t]
                if int(events[COUNT_FIELD[t]].sum()) != b - a:
                    raise SchemaError(
                        f"{path}: events.{COUNT_FIELD[t]} of events {start}:{stop} sum to "
                        f"{int(events[COUNT_FIELD[t]].sum())} but offsets/{t} give {b - a} rows "
                        "(inconsistent)"
                    )
        n_rows = {t: row_ranges[t][1] - row_ranges[t][0] for t in requested}
        out = migrate_tables(raw, self.version, n_rows)
        for table, names in requested.items():
            missing = [n for n in names if n not in out.get(table, {})]
            if missing:
                raise SchemaError(
                    f"{path}: field {table}.{missing[0]} is missing and no migration supplies it"
                )
            out[table] = {n: out[table][n] for n in names}
        return out


def _clip(n_events: int, start: int, stop: int | None) -> tuple[int, int]:
    if start < 0 or (stop is not None and stop < 0):
        raise InvalidInput(f"event range {start}:{stop} must be non-negative")
    stop = n_events if stop is None else min(stop, n_events)
    return min(start, stop), stop


def read_events(
    path: str | os.PathLike[str],
    start: int = 0,
    stop: int | None = None,
    tables: Iterable[str] | None = None,
    fields: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
) -> Tables:
    """Read events ``start:stop`` (only their rows are read, via the per-event offsets).

    Args:
        path: an event file.
        start, stop: event range (``stop=None``: to the end).
        tables: tables to return (default all).
        fields: ``["tracks.p", ...]`` or ``{"tracks": ["p"]}`` (default every field of the chosen tables).

    Returns:
        ``{table: {field: array}}`` in the current schema version (older files are migrated on read).
        An object table always comes with the ``events`` count column that splits its rows into events.
    """
    with _EventFile(path) as ef:
        wanted = _parse_fields(fields, tables, layout(SCHEMA_VERSION))
        a, b = _clip(ef.n_events, start, stop)
        return ef.read(a, b, wanted)


def iter_events(
    path: str | os.PathLike[str],
    chunk_events: int = 100_000,
    tables: Iterable[str] | None = None,
    fields: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
) -> Iterator[Tables]:
    """Yield the file in chunks of ``chunk_events`` whole events (same dicts as :func:`read_events`).

    Only one chunk is in memory at a time, so files of any size stream.
    """
    if chunk_events < 1:
        raise InvalidInput("chunk_events must be positive")
    with _EventFile(path) as ef:
        wanted = _parse_fields(fields, tables, layout(SCHEMA_VERSION))
        for a in range(0, ef.n_events, chunk_events):
            yield ef.read(a, min(a + chunk_events, ef.n_events), wanted)


def file_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata of an event file without reading its arrays.

    Returns:
        ``path``, ``n_events``, ``schema_version``, ``mc``, ``created``, ``provenance``, ``digest`` (the
        stored content digest), ``rows`` (per table), ``size_bytes``.
    """
    with _EventFile(path) as ef:
        return {
            "path": str(ef.path),
            "n_events": ef.n_events,
            "schema_version": ef.version,
            "mc": ef.mc,
            "created": ef.created,
            "provenance": ef.provenance(),
            "digest": ef.stored_digest,
            "rows": dict(ef.n_rows),
            "size_bytes": ef.path.stat().st_size,
        }


def _scan(ef: _EventFile, chunk_events: int, check: bool) -> str:
    hasher = _FieldHasher(ef.version, ef.fields)
    wanted = {t: [f.name for f in fs] for t, fs in ef.fields.items()}
    for a in range(0, ef.n_events, chunk_events):
        b = min(a + chunk_events, ef.n_events)
        # hash the stored (unmigrated) arrays: the digest names what the file holds
        raw: Tables = {}
        for table in wanted:
            if table == "events":
                lo, hi = a, b
            else:
                off = ef._read_dataset("offsets", table, a, b + 1)
                lo, hi = int(off[0]), int(off[-1])
            raw[table] = {}
            for field in ef.fields[table]:
                values = ef._read_dataset(table, field.name, lo, hi)
                if check:
                    _check_nan(str(ef.path), table, field, values, lo)
                raw[table][field.name] = values
                hasher.update(table, field.name, values)
        if check:
            for t, count in COUNT_FIELD.items():
                if int(raw["events"][count].sum()) != len(raw[t][ef.fields[t][0].name]):
                    raise SchemaError(
                        f"{ef.path}: events.{count} disagree with offsets/{t} in events {a}:{b}"
                    )
            _check_indices(str(ef.path), raw, ef.fields, 0)
    return hasher.hexdigest(ef.n_events)


def content_digest(path: str | os.PathLike[str], chunk_events: int = 100_000) -> str:
    """SHA-256 over the file's arrays (schema version, event count, every field's bytes), streamed.

    Attributes such as the creation time do not enter it: two files holding the same events have the same
    digest. Equal to the ``content_digest`` attribute the writer stored unless the file was altered.
    """
    with _EventFile(path) as ef:
        return _scan(ef, chunk_events, check=False)


def validate_file(path: str | os.PathLike[str], chunk_events: int = 100_000) -> dict[str, Any]:
    """Read every array of a file, check it against its schema and its stored digest.

    Raises :class:`SchemaError` (NaN, inconsistent counts, bad index), :class:`CorruptFileError` (unreadable
    chunk, digest mismatch) or :class:`UnsupportedSchemaVersion`; returns :func:`file_info` on success.
    """
    with _EventFile(path) as ef:
        digest = _scan(ef, chunk_events, check=True)
        if digest != ef.stored_digest:
            raise CorruptFileError(
                f"{ef.path}: content digest {digest[:16]}... differs from the stored "
                f"{ef.stored_digest[:16]}...; "
                f"the arrays were altered after writing"
            )
    return file_info(path)


def summarize(path: str | os.PathLike[str], chunk_events: int = 100_000) -> dict[str, Any]:
    """:func:`file_info` plus, per field, ``count``, ``nan``, ``min``, ``max``, ``mean`` (streamed in chunks).

    Vector fields (helix, chi's) are summarised over all their components. NaN values are counted and left
    out of min/max/mean.
    """
    info = file_info(path)
    stats: dict[str, dict[str, Any]] = {}
    sums: dict[str, float] = {}
    for chunk in iter_events(path, chunk_events=chunk_events):
        for table, cols in chunk.items():
            for name, values in cols.items():
                key = f"{table}.{name}"
                entry = stats.setdefault(key, {"count": 0, "nan": 0, "min": None, "max": None, "mean": None})
                flat = values.reshape(-1).astype(np.float64)
                finite = flat[~np.isnan(flat)]
                entry["count"] += int(flat.size)
                entry["nan"] += int(flat.size - finite.size)
                if finite.size:
                    lo, hi = float(finite.min()), float(finite.max())
                    entry["min"] = lo if entry["min"] is None else min(entry["min"], lo)
                    entry["max"] = hi if entry["max"] is None else max(entry["max"], hi)
                    sums[key] = sums.get(key, 0.0) + float(finite.sum())
    for key, entry in stats.items():
        valid = entry["count"] - entry["nan"]
        entry["mean"] = sums[key] / valid if valid and key in sums else None
    info["fields"] = stats
    return info


def slice_events(tables: Mapping[str, Mapping[str, np.ndarray]], start: int, stop: int) -> Tables:
    """Events ``start:stop`` of an in-memory batch, with exactly their object rows.

    The ``events`` table must hold the count column of every object table present.
    """
    events = tables["events"]
    out: Tables = {"events": {k: v[start:stop] for k, v in events.items()}}
    for table, cols in tables.items():
        if table == "events":
            continue
        counts = np.asarray(events[COUNT_FIELD[table]])
        lo, hi = int(counts[:start].sum()), int(counts[:stop].sum())
        out[table] = {k: v[lo:hi] for k, v in cols.items()}
    return out


def example_tables(
    n_events: int,
    seed: int = 0,
    mc: bool = True,
    first_event: int = 0,
    run: int = -9989,
    schema_version: int = SCHEMA_VERSION,
) -> Tables:
    """A batch of schema-valid random events (layout tests, fixtures, benchmarks; no physics in it).

    Args:
        n_events: events in the batch.
        seed: NumPy seed; the same seed gives the same arrays.
        mc: include truth rows and truth indices.
        first_event: event number of the first event.
        run: run number of every event.
        schema_version: layout whose fields to fill.
    """
    rng = np.random.default_rng(seed)
    n_tracks = rng.integers(0, 5, n_events)
    n_showers = rng.integers(0, 12, n_events)
    n_truth = rng.integers(3, 9, n_events) if mc else np.zeros(n_events, np.int64)
    out: Tables = {
        "events": {
            "run": np.full(n_events, run),
            "event": first_event + np.arange(n_events),
            "channel": np.full(n_events, 1),
            "n_tracks": n_tracks,
            "n_showers": n_showers,
            "n_truth": n_truth,
            "weight": np.ones(n_events),
        }
    }

    def local_index(counts: np.ndarray, target: np.ndarray) -> np.ndarray:
        # a random index within the owning event, or -1 where the event has none
        limit = target[_event_of_rows(counts)]
        idx = np.floor(rng.random(len(limit)) * limit).astype(np.int64)
        return np.where(limit > 0, idx, -1)

    for table, counts in (("tracks", n_tracks), ("showers", n_showers), ("truth", n_truth)):
        n = int(counts.sum())
        cols: dict[str, np.ndarray] = {}
        for f in layout(schema_version)[table]:
            shape = (n, *f.shape)
            kind = np.dtype(f.dtype).kind
            if f.index_into is not None:
                cols[f.name] = local_index(counts, out["events"][COUNT_FIELD[f.index_into]])
                if f.name == "mother":
                    cols[f.name] = np.minimum(
                        cols[f.name], np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts) - 1
                    )
            elif kind == "f":
                values = rng.normal(size=shape).astype(f.dtype)
                if f.nan_allowed:
                    values[rng.random(shape) < 0.1] = np.nan
                cols[f.name] = values
            else:
                cols[f.name] = rng.integers(0, 3, shape).astype(f.dtype)
        if table == "tracks":
            cols["charge"] = np.where(rng.random(n) < 0.5, -1, 1).astype(np.int8)
            cols["p"] = np.abs(cols["p"])
        out[table] = cols
    return out
