"""The DST-level event file: HDF5 writer, chunked reader, validation, content digest, migrate-on-read.

Layout of one file (schema in :mod:`vbes.datasets.schema`)::

    /                      attrs: vbes_format, schema_version, mc, n_events, created, content_digest
    /provenance            attrs: generator, seed, runs, calibration_payloads (JSON where nested), ...
    /events/<field>        one row per event
    /tracks/<field>        object rows in event order (likewise /showers, /truth)
    /offsets/<table>       int64, n_events + 1: rows of event i are offsets[i]:offsets[i+1]

Every dataset carries ``unit``, ``description`` and ``nan_allowed`` attributes, and every field the SHA-256 of
its bytes (``sha256``); the root ``content_digest`` combines those (see :class:`_FieldHasher`). A read that
covers every event hashes what it reads on the way and checks it (see :class:`Verification`); the offsets are
checked against the per-event counts on every read, so they are covered exactly. Datasets are chunked and
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
    "check_column_range",
    "check_output_path",
    "EventTables",
    "Verification",
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
#: attribute of every field dataset: the SHA-256 of its bytes in row order (files written before it lack it)
_FIELD_HASH_ATTR = "sha256"
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
        # hashed through a view of the buffer: a .tobytes() copy would cost as much as the hash
        contiguous = np.ascontiguousarray(values, dtype=np.dtype(field.dtype))
        self.hashes[(table, name)].update(contiguous.reshape(-1).view(np.uint8).data)

    def field_hexdigests(self) -> dict[tuple[str, str], str]:
        """The SHA-256 of each field so far (what the writer stores as the field's ``sha256`` attribute)."""
        return {key: h.hexdigest() for key, h in self.hashes.items()}

    def hexdigest(self, n_events: int) -> str:
        return _combine_digest(self.schema_version, self.fields, self.field_hexdigests(), n_events)


def _combine_digest(
    schema_version: int,
    fields: Mapping[tuple[str, str], Field],
    field_hashes: Mapping[tuple[str, str], str],
    n_events: int,
) -> str:
    """The content digest from the per-field SHA-256s (so stored per-field hashes can be checked against it).

    Args:
        schema_version: the file's schema version.
        fields: ``{(table, name): Field}`` of that version.
        field_hashes: hex SHA-256 of every field's bytes.
        n_events: events in the file.
    """
    total = hashlib.sha256(f"{FORMAT_NAME} schema {schema_version} events {n_events}\n".encode())
    for (table, name), field in sorted(fields.items()):
        total.update(f"{table}.{name} {field.dtype} {field.shape} {field_hashes[(table, name)]}\n".encode())
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


def check_column_range(where: str, table: str, field: Field, values: Any) -> np.ndarray:
    """``values`` cast to the field's fixed-width dtype, refusing any value that the dtype cannot hold.

    A plain cast wraps integers (run 4294957296 becomes -10000) and turns large floats into infinity; here
    integers must lie within the dtype's range and finite floats must stay finite.

    Args:
        where: what the values come from (a file, an option), for the message.
        table: the table of the column.
        field: the column.
        values: the values before the cast.

    Returns:
        the cast values.

    Raises:
        SchemaError: naming the column, the first value out of range and the dtype's range.
    """
    target = np.dtype(field.dtype)
    python_ints = False
    if not isinstance(values, np.ndarray) and target.kind in "iu":
        # Python integers beyond int64 would make an object array or raise OverflowError: compare them as such
        flat = np.asarray(values, dtype=object).reshape(-1)
        python_ints = bool(flat.size) and all(isinstance(v, (int, np.integer)) for v in flat)
        if python_ints:
            values = np.asarray(values, dtype=np.int64 if -(2**63) <= min(flat) and max(flat) < 2**63 else object)
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int8)
    if arr.size and not python_ints and not np.can_cast(arr.dtype, target, "same_kind"):
        raise SchemaError(f"{where}: {table}.{field.name} has dtype {arr.dtype}, not castable to {target}")
    bad: np.ndarray | None = None
    if arr.size and not np.can_cast(arr.dtype, target, "safe"):
        if target.kind in "iu" and arr.dtype.kind in "iuO":
            info = np.iinfo(target)
            if arr.min() < info.min or arr.max() > info.max:
                bad = (arr < info.min) | (arr > info.max)
        elif target.kind == "f" and arr.dtype.kind == "f":
            with np.errstate(over="ignore"):
                cast = arr.astype(target)
            if not np.isfinite(cast).all():
                bad = np.isfinite(arr) & ~np.isfinite(cast)
                bad = bad if bad.any() else None
            if bad is None:
                return cast
    if bad is not None:
        flat_index = int(np.argmax(bad.reshape(-1)))
        row = flat_index // max(int(np.prod(field.shape, dtype=np.int64)), 1)
        value = arr.reshape(-1)[flat_index]
        if target.kind in "iu":
            limits = f"{np.iinfo(target).min}..{np.iinfo(target).max}"
        else:
            limits = f"-{np.finfo(target).max:.7g}..{np.finfo(target).max:.7g}"
        raise SchemaError(
            f"{where}: {table}.{field.name} value {getattr(value, 'item', lambda: value)()} (row {row}) does not "
            f"fit its {target.name} column (range {limits})"
        )
    return arr.astype(target, copy=False)


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
                target = np.dtype(field.dtype)
                arr = check_column_range(where, table, field, columns[field.name])
                if n_rows is None:
                    n_rows = len(arr) if arr.ndim else -1
                expected = (n_rows, *field.shape)
                if arr.shape != expected:
                    raise SchemaError(
                        f"{where}: {table}.{field.name} has shape {arr.shape}, expected {expected} "
                        f"(inconsistent lengths)"
                    )
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


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """The file to write, refused up front (before any work) if it names a directory or a missing folder.

    Args:
        path: the output file.

    Raises:
        InvalidInput: ``path`` is a directory.
        NotFound: its folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInput(f"{path}: is a directory; give the name of the file to write")
    if not path.parent.is_dir():
        raise NotFound(f"{path}: folder {path.parent} does not exist")
    return path


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
        expected_digest: when given, ``close`` refuses (:class:`CorruptFileError`, nothing written) unless the
            events written have this content digest: a copy of a file (e.g. ingest of its ROOT export) must
            hold the very arrays of the original.

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
        expected_digest: str | None = None,
    ) -> None:
        self.path = check_output_path(path)
        self.expected_digest = expected_digest
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
        check_output_path(self.path)
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
            if self.expected_digest is not None and self.digest != self.expected_digest:
                raise CorruptFileError(
                    f"{self.path} not written: the events have content digest {self.digest[:16]}..., not the "
                    f"expected {self.expected_digest[:16]}...; the source was altered after it was written"
                )
            f = self._file
            for (table, name), sha256 in self._hasher.field_hexdigests().items():
                f[table][name].attrs[_FIELD_HASH_ATTR] = sha256
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


def _describe(value: Any) -> str:
    """A short one-line rendering of an attribute value for a message (it may be an array of any size)."""
    text = _one_line(ValueError(repr(value)))
    return text if len(text) <= 60 else text[:57] + "..."


def _hex_digest_attr(path: Path, what: str, value: Any) -> str:
    """A stored SHA-256 attribute as text, or :class:`CorruptFileError` if it is not one."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        raise CorruptFileError(f"{path}: {what} attribute {_describe(value)} is not a SHA-256 in hex")
    return value


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


#: what a full read checks: "all" hashes every field (those not asked for are read for the hash only, so the
#: whole content digest is verified), "read" only the fields returned (each against its own stored hash),
#: "none" nothing
Verify = Literal["all", "read", "none"]
_VERIFY_MODES = ("all", "read", "none")
#: rows hashed at a time for a field that is read for its hash only (bounded memory)
_HASH_BLOCK_BYTES = 1 << 24


@dataclass(frozen=True)
class Verification:
    """What a read checked against the hashes the writer stored.

    Args:
        digest_verified: every array of the file was hashed on the way and matches the stored content digest.
        fields: ``table.field`` names whose bytes matched their own stored SHA-256.
        note: one line for people: "content digest verified" or "not verified: <why>".
    """

    digest_verified: bool
    fields: tuple[str, ...]
    note: str


def _not_verified(why: str) -> Verification:
    return Verification(False, (), f"not verified: {why}")


class EventTables(dict[str, dict[str, np.ndarray]]):
    """``{table: {field: array}}`` as read from a file, with :attr:`verification` saying what was checked."""

    verification: Verification = _not_verified("not read from a file")


def _tables_with(tables: Tables, verification: Verification) -> EventTables:
    out = EventTables(tables)
    out.verification = verification
    return out


class _Verifier:
    """Hashes fields of a file while a read streams it from event 0 to the end, then compares.

    Each field's SHA-256 is compared with its stored ``sha256`` attribute (so a mismatch names the field);
    when every field was hashed, the combination is compared with the stored content digest (which also
    verifies files written before per-field hashes existed).
    """

    def __init__(self, ef: _EventFile, keys: Iterable[tuple[str, str]]) -> None:
        self.ef = ef
        self.keys = set(keys)
        self.hasher = _FieldHasher(ef.version, ef.fields)
        self.stored = ef.stored_field_hashes()
        if self.stored is not None:
            combined = _combine_digest(ef.version, self.hasher.fields, self.stored, ef.n_events)
            if combined != ef.stored_digest:
                raise CorruptFileError(
                    f"{ef.path}: the fields' {_FIELD_HASH_ATTR} attributes do not combine to the stored content "
                    f"digest {ef.stored_digest[:16]}...; the digest or the hash attributes were altered"
                )
        self.next_event = 0

    def update(self, table: str, name: str, values: np.ndarray) -> None:
        self.hasher.update(table, name, values)

    def hash_rows(self, table: str, name: str, start: int, stop: int) -> None:
        """Hash rows ``start:stop`` of a field that the read does not return, a block at a time."""
        field = self.hasher.fields[(table, name)]
        row_bytes = np.dtype(field.dtype).itemsize * int(np.prod(field.shape, dtype=np.int64))
        step = max(1, _HASH_BLOCK_BYTES // max(row_bytes, 1))
        for a in range(start, stop, step):
            self.update(table, name, self.ef._read_dataset(table, name, a, min(a + step, stop)))

    def done_to(self, start: int, stop: int) -> None:
        if start != self.next_event:
            raise InvalidInput(f"{self.ef.path}: a verified read must cover the events in order from 0")
        self.next_event = stop

    def finish(self) -> Verification:
        """Compare (after the last event was read); raises :class:`CorruptFileError` naming the altered field."""
        ef = self.ef
        if self.next_event != ef.n_events:
            return _not_verified(f"events 0:{self.next_event} of {ef.n_events} read")
        got = self.hasher.field_hexdigests()
        checked = []
        for table, name in sorted(self.keys):
            if self.stored is None:
                break
            if got[(table, name)] != self.stored[(table, name)]:
                raise CorruptFileError(
                    f"{ef.path}: content digest check failed: {table}.{name} differs from what was written "
                    f"(SHA-256 {got[(table, name)][:16]}..., stored {self.stored[(table, name)][:16]}...); "
                    "the file was altered after writing"
                )
            checked.append(f"{table}.{name}")
        if self.keys != set(self.hasher.fields):
            why = (
                f"only {len(checked)} of {len(self.hasher.fields)} fields were read and checked"
                if self.stored is not None
                else "the file predates per-field hashes; only a read of every field verifies it"
            )
            return Verification(False, tuple(checked), f"not verified: {why}")
        digest = self.hasher.hexdigest(ef.n_events)
        if digest != ef.stored_digest:
            raise CorruptFileError(
                f"{ef.path}: content digest {digest[:16]}... differs from the stored "
                f"{ef.stored_digest[:16]}...; the arrays were altered after writing"
            )
        return Verification(True, tuple(checked), "content digest verified")


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
            fmt = fmt.decode(errors="replace")
        if not isinstance(fmt, str) or fmt != FORMAT_NAME:
            raise SchemaError(f"{path}: not a vbes event file (attribute vbes_format is {_describe(fmt)})")
        for key in ("schema_version", "n_events", "content_digest", "mc"):
            if key not in attrs:
                raise SchemaError(f"{path}: root attribute {key!r} is missing")
        version = attrs["schema_version"]
        if not isinstance(version, _NP_INT):
            raise SchemaError(f"{path}: schema_version attribute {_describe(version)} is not an integer")
        self.version = int(version)
        if self.version not in SCHEMA_VERSIONS:
            newest = max(SCHEMA_VERSIONS)
            hint = "upgrade vbes to read it" if self.version > newest else "no such version was ever released"
            raise UnsupportedSchemaVersion(
                f"{path}: schema version {self.version} is unknown to this vbes (it reads versions "
                f"{', '.join(map(str, sorted(SCHEMA_VERSIONS)))}); {hint}"
            )
        self.fields = layout(self.version)
        n_events, mc = attrs["n_events"], attrs["mc"]
        if not isinstance(n_events, _NP_INT) or int(n_events) < 0:
            raise SchemaError(f"{path}: n_events attribute {_describe(n_events)} is not a count")
        if not isinstance(mc, (bool, np.bool_, *_NP_INT)):
            raise SchemaError(f"{path}: mc attribute {_describe(mc)} is not a boolean")
        self.n_events = int(n_events)
        self.mc = bool(mc)
        self.stored_digest = _hex_digest_attr(path, "content_digest", attrs["content_digest"])
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
                    if off.dtype.kind not in "iu":
                        raise SchemaError(f"{path}: offsets/{table} has dtype {off.dtype}, not an integer")
                    first, n_rows = int(off[0]), int(off[-1])
                    if first != 0:
                        raise SchemaError(
                            f"{path}: offsets/{table} starts at {first}, not 0 (event 0's rows; offsets altered)"
                        )
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

    def stored_field_hashes(self) -> dict[tuple[str, str], str] | None:
        """The ``sha256`` attribute of every field, or ``None`` for a file written before there were any."""
        hashes: dict[tuple[str, str], str] = {}
        with _guard(self.path, "the field hash attributes"):
            for table, table_fields in self.fields.items():
                for field in table_fields:
                    value = self.h5[table][field.name].attrs.get(_FIELD_HASH_ATTR)
                    if value is not None:
                        where = f"{table}.{field.name} {_FIELD_HASH_ATTR}"
                        hashes[(table, field.name)] = _hex_digest_attr(self.path, where, value)
        n_fields = sum(len(fs) for fs in self.fields.values())
        if not hashes:
            return None
        if len(hashes) != n_fields:
            missing = next(f"{t}.{f.name}" for t, fs in self.fields.items() for f in fs if (t, f.name) not in hashes)
            raise CorruptFileError(
                f"{self.path}: field {missing} has no {_FIELD_HASH_ATTR} attribute while others do; "
                "the hash attributes were altered"
            )
        return hashes

    def verifier(self, wanted: Mapping[str, Sequence[str]], verify: str) -> _Verifier | None:
        """A :class:`_Verifier` for a pass over every event (``verify``: "all", "read" or "none")."""
        if verify not in _VERIFY_MODES:
            raise InvalidInput(f"verify={verify!r} is not one of {', '.join(_VERIFY_MODES)}")
        if verify == "none":
            return None
        file_fields = [(t, f.name) for t, fs in self.fields.items() for f in fs]
        if verify == "all":
            return _Verifier(self, file_fields)
        requested = {(t, n) for t, names in wanted.items() for n in names}
        requested |= {("events", COUNT_FIELD[t]) for t in wanted if t in COUNT_FIELD}  # returned with them
        return _Verifier(self, [key for key in file_fields if key in requested])

    def read(
        self,
        start: int,
        stop: int,
        wanted: Mapping[str, Sequence[str]],
        check: bool = True,
        verifier: _Verifier | None = None,
    ) -> Tables:
        """Events ``start:stop`` (already clipped), requested current-version fields, migrated.

        Args:
            start, stop: the event range.
            wanted: ``{table: [field, ...]}`` in current-version names.
            check: check NaN and the offsets against the per-event counts.
            verifier: hashes this range of its fields (ranges must come in order, from event 0).
        """
        path = self.path
        hashed = verifier.keys if verifier is not None else set()
        # rows of an object table come from its offsets, checked against the counts of the events read
        touched = set(wanted) | {t for t, _ in hashed}
        object_tables = [t for t in OBJECT_TABLES if t in touched]
        events_wanted = list(wanted.get("events", []))
        for t in object_tables:
            if t in wanted and COUNT_FIELD[t] not in events_wanted:
                events_wanted.append(COUNT_FIELD[t])
        row_ranges: dict[str, tuple[int, int]] = {"events": (start, stop)}
        offsets: dict[str, np.ndarray] = {}
        for t in object_tables:
            offsets[t] = self._read_dataset("offsets", t, start, stop + 1).astype(np.int64)
            row_ranges[t] = (int(offsets[t][0]), int(offsets[t][-1]))
        requested = dict(wanted)
        if events_wanted:
            requested["events"] = events_wanted
        to_read = {t: list(names) for t, names in requested.items()}
        if check or verifier is not None:
            counts = to_read.setdefault("events", [])
            counts += [COUNT_FIELD[t] for t in object_tables if COUNT_FIELD[t] not in counts]
        raw: Tables = {}
        file_fields = {t: {f.name: f for f in fs} for t, fs in self.fields.items()}
        for table, names in to_read.items():
            a, b = row_ranges[table]
            cols = {}
            for name in names:
                field = file_fields[table].get(name)
                if field is None:
                    continue  # added by a later schema version: the migration supplies it
                values = self._read_dataset(table, name, a, b)
                if check:
                    _check_nan(str(path), table, field, values, a)
                if (table, name) in hashed:
                    assert verifier is not None
                    verifier.update(table, name, values)
                cols[name] = values
            raw[table] = cols
        if check:
            _check_offsets(path, start, offsets, raw["events"])
        if verifier is not None:
            for table, name in sorted(hashed):
                if name not in raw.get(table, {}):
                    verifier.hash_rows(table, name, *row_ranges[table])
            verifier.done_to(start, stop)
        n_rows = {t: row_ranges[t][1] - row_ranges[t][0] for t in requested}
        out = migrate_tables({t: raw[t] for t in requested}, self.version, n_rows)
        for table, returned in requested.items():
            missing = [n for n in returned if n not in out.get(table, {})]
            if missing:
                raise SchemaError(
                    f"{path}: field {table}.{missing[0]} is missing and no migration supplies it"
                )
            out[table] = {n: out[table][n] for n in returned}
        return out


def _check_offsets(path: Path, start: int, offsets: Mapping[str, np.ndarray], events: Mapping[str, np.ndarray]) -> None:
    """Each event's rows per the offsets (``offsets[i+1] - offsets[i]``) must equal its count column.

    With the first offset 0 (checked when the file opens) this pins the offsets down exactly, so the counts'
    hashes cover them.
    """
    for table, off in offsets.items():
        count = COUNT_FIELD[table]
        counts = events[count].astype(np.int64)
        rows = np.diff(off)
        bad = (rows != counts) | (counts < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise SchemaError(
                f"{path}: events.{count} of event {start + i} is {int(counts[i])} but offsets/{table} give it "
                f"{int(rows[i])} rows (offsets[{start + i}:{start + i + 2}] = {off[i]}, {off[i + 1]}); "
                "the offsets or the counts were altered (inconsistent)"
            )


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
    verify: Verify = "all",
) -> EventTables:
    """Read events ``start:stop`` (only their rows are read, via the per-event offsets).

    Args:
        path: an event file.
        start, stop: event range (``stop=None``: to the end).
        tables: tables to return (default all).
        fields: ``["tracks.p", ...]`` or ``{"tracks": ["p"]}`` (default every field of the chosen tables).
        verify: for a read of every event: "all" (default) verifies the content digest, reading fields that
            were not asked for only to hash them; "read" checks the fields returned against their own stored
            hashes; "none" checks nothing. A part of the file is never verified (the digest covers all of it).

    Returns:
        ``{table: {field: array}}`` in the current schema version (older files are migrated on read), with
        ``.verification`` (:class:`Verification`). An object table always comes with the ``events`` count
        column that splits its rows into events.

    Raises:
        CorruptFileError: a field differs from what was written (named), or the file cannot be read.
        SchemaError: offsets disagree with the counts (table and event named), NaN where none is allowed, ...
    """
    with _EventFile(path) as ef:
        wanted = _parse_fields(fields, tables, layout(SCHEMA_VERSION))
        a, b = _clip(ef.n_events, start, stop)
        if (a, b) != (0, ef.n_events):
            return _tables_with(ef.read(a, b, wanted), _not_verified(f"events {a}:{b} of {ef.n_events} read"))
        verifier = ef.verifier(wanted, verify)
        out = ef.read(a, b, wanted, verifier=verifier)
        return _tables_with(out, _not_verified("verify='none'") if verifier is None else verifier.finish())


def iter_events(
    path: str | os.PathLike[str],
    chunk_events: int = 100_000,
    tables: Iterable[str] | None = None,
    fields: Mapping[str, Iterable[str]] | Iterable[str] | None = None,
    verify: Verify = "all",
) -> Iterator[EventTables]:
    """Yield the file in chunks of ``chunk_events`` whole events (same dicts as :func:`read_events`).

    Only one chunk is in memory at a time, so files of any size stream. The hashes are fed on the way and
    compared before the last chunk is yielded: a consumer that reaches the end has had verified data (the
    last chunk's ``.verification`` says so), and an altered file raises :class:`CorruptFileError` instead of
    yielding it. ``verify`` as in :func:`read_events`; earlier chunks say "not verified: ... so far".
    """
    if chunk_events < 1:
        raise InvalidInput("chunk_events must be positive")
    with _EventFile(path) as ef:
        wanted = _parse_fields(fields, tables, layout(SCHEMA_VERSION))
        verifier = ef.verifier(wanted, verify)
        for a in range(0, ef.n_events, chunk_events):
            b = min(a + chunk_events, ef.n_events)
            chunk = ef.read(a, b, wanted, verifier=verifier)
            if verifier is None:
                yield _tables_with(chunk, _not_verified("verify='none'"))
            elif b < ef.n_events:
                yield _tables_with(chunk, _not_verified(f"events 0:{b} of {ef.n_events} read so far"))
            else:
                yield _tables_with(chunk, verifier.finish())
        if verifier is not None and ef.n_events == 0:
            verifier.finish()  # nothing to yield, but the stored hashes must still agree


def file_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Metadata of an event file without reading its arrays.

    Returns:
        ``path``, ``n_events``, ``schema_version``, ``mc``, ``created``, ``provenance``, ``digest`` (the
        stored content digest, not verified here: no array is read), ``rows`` (per table), ``size_bytes``.
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


def _scan(ef: _EventFile, chunk_events: int, check: bool) -> _Verifier:
    """Read every field of every event once, hashing the stored (unmigrated) arrays on the way."""
    current = layout(SCHEMA_VERSION)
    wanted = {t: [f.name for f in fs] for t, fs in current.items()}
    verifier = _Verifier(ef, [(t, f.name) for t, fs in ef.fields.items() for f in fs])
    for a in range(0, ef.n_events, chunk_events):
        chunk = ef.read(a, min(a + chunk_events, ef.n_events), wanted, check=check, verifier=verifier)
        if check:
            _check_indices(str(ef.path), chunk, current, 0)
    return verifier


def content_digest(path: str | os.PathLike[str], chunk_events: int = 100_000) -> str:
    """SHA-256 over the file's arrays (schema version, event count, every field's bytes), streamed.

    Attributes such as the creation time do not enter it: two files holding the same events have the same
    digest. Equal to the ``content_digest`` attribute the writer stored unless the file was altered. The
    offsets do not enter it: every read checks them against the per-event counts, which do.
    """
    with _EventFile(path) as ef:
        return _scan(ef, chunk_events, check=False).hasher.hexdigest(ef.n_events)


def validate_file(path: str | os.PathLike[str], chunk_events: int = 100_000) -> dict[str, Any]:
    """Read every array of a file, check it against its schema and its stored digest.

    Raises :class:`SchemaError` (NaN, inconsistent counts or offsets, bad index), :class:`CorruptFileError`
    (unreadable chunk, digest mismatch naming the field) or :class:`UnsupportedSchemaVersion`; returns
    :func:`file_info` on success, with ``verification`` (:class:`Verification`).
    """
    with _EventFile(path) as ef:
        verification = _scan(ef, chunk_events, check=True).finish()
    return {**file_info(path), "verification": verification.note}


def summarize(path: str | os.PathLike[str], chunk_events: int = 100_000) -> dict[str, Any]:
    """:func:`file_info` plus, per field, ``count``, ``nan``, ``min``, ``max``, ``mean`` (streamed in chunks).

    Vector fields (helix, chi's) are summarised over all their components. NaN values are counted and left
    out of min/max/mean. The content digest is verified on the way (``verification`` says so; an altered
    file raises :class:`CorruptFileError`).
    """
    info = file_info(path)
    stats: dict[str, dict[str, Any]] = {}
    sums: dict[str, float] = {}
    verification = _not_verified("no events read")
    for chunk in iter_events(path, chunk_events=chunk_events):
        verification = chunk.verification
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
    if info["n_events"] == 0:  # no chunk to carry it: the empty read verifies the stored hashes
        verification = read_events(path).verification
    info["fields"] = stats
    info["verification"] = verification.note
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
