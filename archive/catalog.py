"""The archive catalog: files (by SHA-256), logical names, datasets and replicas, in SQLAlchemy Core.

One schema for SQLite (embedded default) and PostgreSQL (``VBES_ARCHIVE_URL``):

* ``files``: one row per distinct content: size, MD5, Adler-32, SHA-256 (the key), creation time and free
  metadata (provenance, calibration tag, parent files' SHA-256, ...). Rows are never deleted.
* ``names``: ``scope:name`` -> SHA-256. A name, once given, always means the same content.
* ``datasets`` / ``dataset_files``: named collections of logical names; ``closed`` datasets are immutable.
* ``replicas``: (SHA-256, tier) -> state ``available`` | ``suspicious`` | ``bad``, with the reason and time
  of the last check. A file with no ``available`` replica is *lost*; it stays in the catalog.

Every change is one transaction, so a process killed at any point leaves either the whole change or none.

Example:
    >>> cat = Catalog("sqlite://")
    >>> from vbes.archive.checksums import checksum_chunks
    >>> sums = checksum_chunks([b"payload"])
    >>> cat.add_file(LogicalName("mc", "a.h5"), sums, {"seed": 1}, tiers=["hot"])
    True
    >>> cat.lookup(LogicalName("mc", "a.h5")).replicas[0].state
    'available'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from vbes.archive.checksums import Checksums
from vbes.archive.names import LogicalName, parse_name

from vbes.errors import ConfigError, DatasetClosed, NameConflict, NotFound, StoreUnavailable

__all__ = [
    "Catalog",
    "as_logical_name",
    "FileRecord",
    "ReplicaRecord",
    "DatasetRecord",
    "REPLICA_STATES",
    "AVAILABLE",
    "SUSPICIOUS",
    "BAD",
]

AVAILABLE, SUSPICIOUS, BAD = "available", "suspicious", "bad"
REPLICA_STATES = (AVAILABLE, SUSPICIOUS, BAD)

_meta = sa.MetaData()

files_table = sa.Table(
    "archive_files",
    _meta,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
    sa.Column("adler32", sa.String(8), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("meta", sa.JSON, nullable=False),
)

names_table = sa.Table(
    "archive_names",
    _meta,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("sha256", sa.String(64), sa.ForeignKey("archive_files.sha256"), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

datasets_table = sa.Table(
    "archive_datasets",
    _meta,
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(8), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("closed_at", sa.DateTime(timezone=True)),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.CheckConstraint("state in ('open', 'closed')", name="archive_dataset_state"),
)

members_table = sa.Table(
    "archive_dataset_files",
    _meta,
    sa.Column("ds_scope", sa.String(64), primary_key=True),
    sa.Column("ds_name", sa.String(255), primary_key=True),
    sa.Column("scope", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["ds_scope", "ds_name"], ["archive_datasets.scope", "archive_datasets.name"]),
    sa.ForeignKeyConstraint(["scope", "name"], ["archive_names.scope", "archive_names.name"]),
)

replicas_table = sa.Table(
    "archive_replicas",
    _meta,
    sa.Column("sha256", sa.String(64), sa.ForeignKey("archive_files.sha256"), primary_key=True),
    sa.Column("tier", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(12), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("checked_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("state in ('available', 'suspicious', 'bad')", name="archive_replica_state"),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@overload
def _utc(value: dt.datetime) -> dt.datetime: ...
@overload
def _utc(value: None) -> None: ...
def _utc(value: dt.datetime | None) -> dt.datetime | None:
    # SQLite hands timestamps back without a zone; everything is stored in UTC
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def _sha256_of_name(conn: sa.Connection, lname: LogicalName) -> str | None:
    """The SHA-256 a logical name points to, or None when the name is unknown."""
    sha: str | None = conn.execute(
        sa.select(names_table.c.sha256).where(names_table.c.scope == lname.scope, names_table.c.name == lname.name)
    ).scalar_one_or_none()
    return sha


@dataclass(frozen=True)
class ReplicaRecord:
    """A replica of a file on one tier."""

    tier: str
    state: str
    reason: str | None
    updated_at: dt.datetime
    checked_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "state": self.state,
            "reason": self.reason,
            "updated_at": self.updated_at.isoformat(),
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
        }


@dataclass(frozen=True)
class FileRecord:
    """A file's catalog entry: its checksums, metadata, logical names and replicas."""

    sha256: str
    size: int
    md5: str
    adler32: str
    created_at: dt.datetime
    metadata: dict[str, Any]
    names: tuple[str, ...] = ()
    replicas: tuple[ReplicaRecord, ...] = ()
    #: the tiers that must each hold an available replica (the archive's configured tiers)
    policy: tuple[str, ...] = ()

    @property
    def checksums(self) -> Checksums:
        return Checksums(self.size, self.md5, self.adler32, self.sha256)

    @property
    def below_policy(self) -> tuple[str, ...]:
        """The tiers of the replica policy that hold no replica at all."""
        present = {r.tier for r in self.replicas}
        return tuple(t for t in self.policy if t not in present)

    @property
    def status(self) -> str:
        """``ok`` (an available replica on every tier of the policy and every replica available),
        ``degraded`` (some available) or ``lost`` (none available)."""
        available = sum(r.state == AVAILABLE for r in self.replicas)
        if available == 0:
            return "lost"
        return "ok" if available == len(self.replicas) and not self.below_policy else "degraded"

    def replica(self, tier: str) -> ReplicaRecord | None:
        return next((r for r in self.replicas if r.tier == tier), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "size": self.size,
            "md5": self.md5,
            "adler32": self.adler32,
            "sha256": self.sha256,
            "created_at": self.created_at.isoformat(),
            "metadata": self.metadata,
            "status": self.status,
            "below_policy": list(self.below_policy),
            "replicas": [r.as_dict() for r in self.replicas],
        }


@dataclass(frozen=True)
class DatasetRecord:
    """A named dataset and its members (logical names)."""

    scope: str
    name: str
    state: str
    created_at: dt.datetime
    closed_at: dt.datetime | None
    metadata: dict[str, Any]
    members: tuple[str, ...] = field(default=())

    @property
    def did(self) -> str:
        return f"{self.scope}:{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.did,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "closed_at": self.closed_at.isoformat() if self.closed_at else None,
            "metadata": self.metadata,
            "files": list(self.members),
        }


class Catalog:
    """The archive's bookkeeping in a SQL database.

    Args:
        url: SQLAlchemy URL (``sqlite:///path.sqlite`` or ``postgresql+psycopg://user@host/db``). The schema
            is created when missing; a SQLite file's folder is created too.
        policy: the tiers on which every file must have a replica (see :attr:`FileRecord.status`).
    """

    def __init__(self, url: str, policy: Sequence[str] = ()) -> None:
        self.policy = tuple(policy)
        try:
            sa_url = sa.engine.make_url(url)
        except sa.exc.ArgumentError as exc:
            raise ConfigError(
                f"archive catalog URL {url!r} is not a SQLAlchemy URL (VBES_ARCHIVE_URL)"
            ) from exc
        if sa_url.drivername in ("postgresql", "postgres"):
            sa_url = sa_url.set(drivername="postgresql+psycopg")  # the driver installed with vbes
        self.url = sa_url.render_as_string(hide_password=False)
        kwargs: dict[str, Any] = {}
        if sa_url.get_backend_name() == "sqlite":
            if sa_url.database and sa_url.database != ":memory:":
                Path(sa_url.database).parent.mkdir(parents=True, exist_ok=True)
            # concurrent writers (several `put`s) wait for the lock instead of failing at once
            kwargs["connect_args"] = {"timeout": 60}
        try:
            self.engine: Engine = sa.create_engine(sa_url, **kwargs)
        except (sa.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigError(f"archive catalog {self.safe_url}: no database driver: {exc}") from exc
        if sa_url.get_backend_name() == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            _meta.create_all(self.engine)
        except sa.exc.DatabaseError as exc:  # OperationalError included; "file is not a database" is not one
            self.engine.dispose()
            raise StoreUnavailable.opening(self.safe_url, str(exc.orig)) from exc

    def close(self) -> None:
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden (for reports and bag-info)."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # -- files and names ----------------------------------------------------------------------------------

    def add_file(
        self,
        lname: LogicalName,
        sums: Checksums,
        metadata: dict[str, Any],
        tiers: Iterable[str],
        dataset: LogicalName | None = None,
    ) -> bool:
        """Record a file, its name and its replicas (all ``available``) in one transaction.

        Returns ``True`` when the name is new, ``False`` when it already pointed to this content (no-op).
        Raises :class:`NameConflict` when the name points to other content, :class:`DatasetClosed` when
        the dataset is closed.
        """
        now = _now()
        with self.engine.begin() as conn:
            current = conn.execute(
                sa.select(names_table.c.sha256).where(
                    names_table.c.scope == lname.scope, names_table.c.name == lname.name
                )
            ).scalar_one_or_none()
            if current is not None and current != sums.sha256:
                raise NameConflict(
                    f"{lname} already names content sha256={current}; this file has sha256={sums.sha256}"
                )
            known = conn.execute(
                sa.select(files_table).where(files_table.c.sha256 == sums.sha256)
            ).one_or_none()
            if known is None:
                conn.execute(
                    files_table.insert().values(
                        sha256=sums.sha256,
                        size=sums.size,
                        md5=sums.md5,
                        adler32=sums.adler32,
                        created_at=now,
                        meta=metadata,
                    )
                )
            elif (known.size, known.md5, known.adler32) != (sums.size, sums.md5, sums.adler32):
                # a SHA-256 collision or a corrupted catalog row; either way nothing may be written
                raise NameConflict(f"content sha256={sums.sha256} is catalogued with other size/MD5/Adler-32")
            if current is None:
                conn.execute(
                    names_table.insert().values(
                        scope=lname.scope, name=lname.name, sha256=sums.sha256, created_at=now
                    )
                )
            for tier in tiers:
                self._set_replica(conn, sums.sha256, tier, AVAILABLE, None, now, checked=now)
            if dataset is not None:
                self._add_members(conn, dataset, [lname], now)
        return current is None

    def lookup(self, lname: LogicalName) -> FileRecord:
        """The file a logical name points to; :class:`NotFound` when there is none."""
        with self.engine.connect() as conn:
            sha = _sha256_of_name(conn, lname)
            if sha is None:
                raise NotFound(f"no file named {lname} in the archive catalog")
            return self._file(conn, sha)

    def file(self, sha256: str) -> FileRecord:
        """The file with content ``sha256``; :class:`NotFound` when there is none."""
        with self.engine.connect() as conn:
            return self._file(conn, sha256)

    def _file(self, conn: Connection, sha256: str) -> FileRecord:
        row = conn.execute(sa.select(files_table).where(files_table.c.sha256 == sha256)).one_or_none()
        if row is None:
            raise NotFound(f"no file with sha256={sha256} in the archive catalog")
        names = conn.execute(
            sa.select(names_table.c.scope, names_table.c.name)
            .where(names_table.c.sha256 == sha256)
            .order_by(names_table.c.scope, names_table.c.name)
        ).all()
        replicas = conn.execute(
            sa.select(replicas_table).where(replicas_table.c.sha256 == sha256).order_by(replicas_table.c.tier)
        ).all()
        return _file_record(row, [f"{n.scope}:{n.name}" for n in names], replicas, self.policy)

    def iter_files(self, batch: int = 500) -> Iterator[FileRecord]:
        """Every file, ordered by SHA-256, read in batches so a huge catalog does not fill memory."""
        last = ""
        while True:
            with self.engine.connect() as conn:
                shas = (
                    conn.execute(
                        sa.select(files_table.c.sha256)
                        .where(files_table.c.sha256 > last)
                        .order_by(files_table.c.sha256)
                        .limit(batch)
                    )
                    .scalars()
                    .all()
                )
                if not shas:
                    return
                records = [self._file(conn, sha) for sha in shas]
            yield from records
            last = shas[-1]

    def list_names(self, scope: str | None = None) -> list[tuple[str, FileRecord]]:
        """``(scope:name, file)`` for every logical name (of one scope when given), sorted by name."""
        query = sa.select(names_table.c.scope, names_table.c.name, names_table.c.sha256).order_by(
            names_table.c.scope, names_table.c.name
        )
        if scope is not None:
            query = query.where(names_table.c.scope == scope)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            cache: dict[str, FileRecord] = {}
            out = []
            for row in rows:
                if row.sha256 not in cache:
                    cache[row.sha256] = self._file(conn, row.sha256)
                out.append((f"{row.scope}:{row.name}", cache[row.sha256]))
        return out

    def replica_shas(self, tier: str) -> set[str]:
        """SHA-256 of every file the catalog expects on ``tier`` (for finding dark data)."""
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    sa.select(replicas_table.c.sha256).where(replicas_table.c.tier == tier)
                ).scalars()
            )

    def counts(self) -> dict[str, int]:
        """Numbers of files, names, datasets and replicas (a cheap fingerprint for tests and ``ls``)."""
        with self.engine.connect() as conn:
            return {
                table.name.removeprefix("archive_"): conn.execute(
                    sa.select(sa.func.count()).select_from(table)
                ).scalar_one()
                for table in (files_table, names_table, datasets_table, members_table, replicas_table)
            }

    # -- replicas -----------------------------------------------------------------------------------------

    def set_replica(
        self, sha256: str, tier: str, state: str, reason: str | None = None, checked: bool = True
    ) -> None:
        """Create or update the replica of ``sha256`` on ``tier``."""
        if state not in REPLICA_STATES:
            raise ValueError(f"replica state must be one of {REPLICA_STATES}, not {state!r}")
        now = _now()
        with self.engine.begin() as conn:
            self._set_replica(conn, sha256, tier, state, reason, now, checked=now if checked else None)

    def _set_replica(
        self,
        conn: Connection,
        sha256: str,
        tier: str,
        state: str,
        reason: str | None,
        now: dt.datetime,
        checked: dt.datetime | None,
    ) -> None:
        key = (replicas_table.c.sha256 == sha256) & (replicas_table.c.tier == tier)
        values: dict[str, Any] = {"state": state, "reason": reason, "updated_at": now}
        if checked is not None:
            values["checked_at"] = checked
        updated = conn.execute(replicas_table.update().where(key).values(**values)).rowcount
        if not updated:
            conn.execute(replicas_table.insert().values(sha256=sha256, tier=tier, **values))

    # -- datasets -----------------------------------------------------------------------------------------

    def create_dataset(
        self, did: LogicalName, metadata: dict[str, Any] | None = None, exist_ok: bool = False
    ) -> DatasetRecord:
        """Create an open dataset; with ``exist_ok`` an existing one is returned unchanged."""
        with self.engine.begin() as conn:
            if self._dataset_row(conn, did) is None:
                conn.execute(
                    datasets_table.insert().values(
                        scope=did.scope, name=did.name, state="open", created_at=_now(), meta=metadata or {}
                    )
                )
            elif not exist_ok:
                raise NameConflict(f"dataset {did} already exists")
        return self.dataset(did)

    def add_to_dataset(self, did: LogicalName, members: Iterable[LogicalName]) -> None:
        """Add logical names to an open dataset; names already in it are skipped, even when it is closed."""
        with self.engine.begin() as conn:
            self._add_members(conn, did, list(members), _now())

    def _add_members(
        self, conn: Connection, did: LogicalName, members: list[LogicalName], now: dt.datetime
    ) -> None:
        row = self._dataset_row(conn, did)
        if row is None:
            raise NotFound(f"no dataset {did} in the archive catalog (create it first)")
        present = {
            (m.scope, m.name)
            for m in conn.execute(
                sa.select(members_table.c.scope, members_table.c.name).where(
                    members_table.c.ds_scope == did.scope, members_table.c.ds_name == did.name
                )
            )
        }
        new = [m for m in dict.fromkeys(members) if (m.scope, m.name) not in present]
        if new and row.state == "closed":
            raise DatasetClosed(f"dataset {did} is closed; cannot add {new[0]}")
        for member in new:
            if _sha256_of_name(conn, member) is None:
                raise NotFound(f"no file named {member} in the archive catalog (put it first)")
            conn.execute(
                members_table.insert().values(
                    ds_scope=did.scope, ds_name=did.name, scope=member.scope, name=member.name, added_at=now
                )
            )

    def close_dataset(self, did: LogicalName) -> DatasetRecord:
        """Make a dataset immutable (closing a closed dataset changes nothing)."""
        with self.engine.begin() as conn:
            row = self._dataset_row(conn, did)
            if row is None:
                raise NotFound(f"no dataset {did} in the archive catalog")
            if row.state == "open":
                conn.execute(
                    datasets_table.update()
                    .where(datasets_table.c.scope == did.scope, datasets_table.c.name == did.name)
                    .values(state="closed", closed_at=_now())
                )
        return self.dataset(did)

    def dataset(self, did: LogicalName) -> DatasetRecord:
        with self.engine.connect() as conn:
            row = self._dataset_row(conn, did)
            if row is None:
                raise NotFound(f"no dataset {did} in the archive catalog")
            members = conn.execute(
                sa.select(members_table.c.scope, members_table.c.name)
                .where(members_table.c.ds_scope == did.scope, members_table.c.ds_name == did.name)
                .order_by(members_table.c.scope, members_table.c.name)
            ).all()
        return DatasetRecord(
            row.scope,
            row.name,
            row.state,
            _utc(row.created_at),
            _utc(row.closed_at),
            dict(row.meta),
            tuple(f"{m.scope}:{m.name}" for m in members),
        )

    def list_datasets(self) -> list[DatasetRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(datasets_table.c.scope, datasets_table.c.name).order_by(
                    datasets_table.c.scope, datasets_table.c.name
                )
            ).all()
        return [self.dataset(LogicalName(r.scope, r.name)) for r in rows]

    def _dataset_row(self, conn: Connection, did: LogicalName) -> Any:
        return conn.execute(
            sa.select(datasets_table).where(
                datasets_table.c.scope == did.scope, datasets_table.c.name == did.name
            )
        ).one_or_none()


def _file_record(row: Any, names: list[str], replicas: Sequence[Any], policy: tuple[str, ...]) -> FileRecord:
    return FileRecord(
        sha256=row.sha256,
        size=int(row.size),
        md5=row.md5,
        adler32=row.adler32,
        created_at=_utc(row.created_at),
        metadata=dict(row.meta),
        names=tuple(names),
        replicas=tuple(
            ReplicaRecord(r.tier, r.state, r.reason, _utc(r.updated_at), _utc(r.checked_at))
            for r in replicas
        ),
        policy=policy,
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def as_logical_name(value: str | LogicalName) -> LogicalName:
    """Accept ``scope:name`` text or an already parsed name."""
    return value if isinstance(value, LogicalName) else parse_name(value)
