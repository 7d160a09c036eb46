"""The conditions store: global tags, content-addressed payloads and run-range IoVs, on SQLite or PostgreSQL.

Model (after the BESIII offline database, the HSF conditions-database reference design and Belle II):

* a **global tag** names a set of IoVs and records its BOSS release and purpose; its state is ``open``
  (editable), ``published`` (immutable for ever) or ``invalid`` (kept, refused for use);
* a **payload** is an immutable blob of constants + metadata identified by its SHA-256
  (:mod:`vbes.calibration.payload`); payloads are shared between tags;
* an **IoV** maps a payload type and an inclusive run range ``[first, last]`` of a tag to one payload.
  Positive runs are data, negative runs MC; a range never contains run 0. Within one tag and type ranges
  never overlap; a gap is a gap.

The rules are enforced by the database itself (triggers), not only by this class, so no other path -- a
second process, raw SQL -- can change a published tag or create an overlap. The guards do not depend on the
client's settings: on SQLite, ``INSERT OR REPLACE`` / ``UPDATE OR REPLACE`` delete the row they collide with
without firing a delete trigger (unless ``PRAGMA recursive_triggers``) and the sqlite3 shell runs with
foreign keys off, so every INSERT and UPDATE is refused before it can collide with a row of a published tag,
a stored payload (by hash or rowid) or the schema record.

A tag that leaves ``open`` records its **seal** (:func:`tag_seal`): the SHA-256 of its record and IoVs.
Every read of a published or invalid tag (lookups, ``iovs``, ``tag_info``, snapshots, clones) recomputes it,
and every payload read checks the payload's own SHA-256, so a change made behind the guards (triggers
dropped, PostgreSQL ``session_replication_role = replica``, the file edited) is refused with
:class:`~vbes.errors.TagSealBroken` / :class:`~vbes.errors.CorruptStore` instead of being served. A store of
schema 1 (before seals) is migrated when first opened: its tags that already left ``open`` are sealed as they
are then (the schema-1 guards had kept them unchanged). Writers serialise per tag:
SQLite takes the database write lock at ``BEGIN IMMEDIATE``; PostgreSQL locks the tag's row
(``SELECT ... FOR UPDATE``), and the IoV trigger takes the same lock, so a raw writer queues too. Publishing
never waits for a writer: if another transaction is writing, the publish is refused (and the writer is
refused if the publish got there first), so a publish never silently includes a write it did not see.

Lookups go through an in-process cache of each tag's IoVs that is re-validated against the database: every
IoV change bumps the tag's ``version`` (by trigger). On SQLite, ``PRAGMA data_version`` tells in about a
microsecond whether anything was committed since the last check, so every lookup is validated. On
PostgreSQL, a lookup in an open tag costs one prepared primary-key query for the tag's (state, version)
(one network round trip); a published tag's IoVs can never change, so its cache is trusted and only its
state is re-read every 0.1 s (a published tag can still be invalidated). A cache therefore never serves an
answer that another process has changed; an invalidation of a published tag is honoured within 0.1 s on
PostgreSQL and at once on SQLite.

Example:
    >>> store = CalibrationStore("sqlite://")
    >>> _ = store.create_tag("demo", boss_release="6.6.4")
    >>> p = store.put("demo", "EsTime", 100, 200, {"t0": 1.5}, {"serno": 7, "stver": "6.6.4"})
    >>> store.get("demo", "EsTime", 150).metadata["serno"]
    7
    >>> store.get("demo", "EsTime", 201)
    Traceback (most recent call last):
    ...
    vbes.errors.PayloadNotFound: no EsTime payload for run 201 in demo
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vbes.errors import (
    CalibrationError,
    CorruptStore,
    InvalidInput,
    InvalidIoV,
    IoVOverlap,
    PayloadNotFound,
    StoreUnavailable,
    TagExists,
    TagNotFound,
    TagSealBroken,
    TagStateError,
)

from .payload import Payload, now_iso

if TYPE_CHECKING:
    from .defaults import InitReport

__all__ = [
    "RECORD_FIELDS",
    "SCHEMA_VERSION",
    "TAG_STATES",
    "BatchResult",
    "CalibrationStore",
    "IoV",
    "IoVEntry",
    "check_run_range",
    "normalize_url",
    "tag_seal",
]

#: 2 added the seal of a tag's content (``global_tag.seal``); a version-1 store is migrated when opened
SCHEMA_VERSION = 2
TAG_STATES = ("open", "published", "invalid")
_BUSY_TIMEOUT_MS = 30_000
_RUN_MIN, _RUN_MAX = -(2**63), 2**63 - 1
_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+\-]{0,199}$")
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")
_PAYLOAD_CACHE_LIMIT = 4096
#: PostgreSQL: how long a cached *published* tag is trusted before its state is read again (invalidation)
_PUBLISHED_RECHECK_S = 0.1
_ORPHANS: list[Any] = []  # connections inherited over fork: kept referenced so they are never closed here


# --- schema ---------------------------------------------------------------------------------------------


class _Base(DeclarativeBase):
    pass


class GlobalTag(_Base):
    """A named set of IoVs; ``version`` counts IoV changes (bumped by trigger) for cache validation."""

    __tablename__ = "global_tag"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True, nullable=False)
    state: Mapped[str] = mapped_column(sa.String(16), nullable=False, default="open")
    boss_release: Mapped[str] = mapped_column(sa.String(64), nullable=False, default="")
    purpose: Mapped[str] = mapped_column(sa.Text, nullable=False, default="")
    parent: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    created: Mapped[str] = mapped_column(sa.String(40), nullable=False)
    published_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    invalidated_at: Mapped[str | None] = mapped_column(sa.String(40), nullable=True)
    version: Mapped[int] = mapped_column(sa.BigInteger, nullable=False, default=0)
    #: SHA-256 over the record and IoVs, set when the tag leaves ``open`` (see :func:`tag_seal`)
    seal: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    __table_args__ = (sa.CheckConstraint("state IN ('open', 'published', 'invalid')", name="tag_state_known"),)


class PayloadRow(_Base):
    """A payload's canonical bytes (see :mod:`vbes.calibration.payload`), keyed by their SHA-256."""

    __tablename__ = "payload"
    sha256: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    payload_type: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    blob: Mapped[bytes] = mapped_column(sa.LargeBinary, nullable=False)
    created: Mapped[str] = mapped_column(sa.String(40), nullable=False)


class IoVRow(_Base):
    """Payload type + inclusive run range of a tag -> payload."""

    __tablename__ = "iov"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    tag_id: Mapped[int] = mapped_column(sa.ForeignKey("global_tag.id", ondelete="RESTRICT"), nullable=False)
    payload_type: Mapped[str] = mapped_column(sa.String(100), nullable=False)
    first_run: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    last_run: Mapped[int] = mapped_column(sa.BigInteger, nullable=False)
    payload_sha256: Mapped[str] = mapped_column(sa.ForeignKey("payload.sha256", ondelete="RESTRICT"),
                                                nullable=False)
    __table_args__ = (
        sa.CheckConstraint("first_run <= last_run", name="iov_range_ordered"),
        sa.CheckConstraint("first_run > 0 OR last_run < 0", name="iov_range_one_side_of_zero"),
        sa.UniqueConstraint("tag_id", "payload_type", "first_run", name="iov_tag_type_first"),
        sa.Index("iov_payload", "payload_sha256"),  # "is this payload still used?" (delete guard)
    )


class SchemaInfo(_Base):
    __tablename__ = "vbes_calib_schema"
    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text, nullable=False)


def _table_of(model: type[_Base]) -> sa.Table:
    """The ``Table`` a declarative class maps (SQLAlchemy types ``__table__`` as the wider ``FromClause``)."""
    table = model.__table__
    if not isinstance(table, sa.Table):
        raise TypeError(f"{model.__name__} maps {type(table).__name__}, not a Table")
    return table


_TAG = _table_of(GlobalTag)
_PAYLOAD = _table_of(PayloadRow)
_IOV = _table_of(IoVRow)
_SCHEMA = _table_of(SchemaInfo)

# Database-side guards. Messages start with "vbes:<kind>:" so _translate() maps them to our exceptions.
# The overlap test relies on the invariant it maintains: ranges of one (tag, type) are disjoint, so only the
# range with the greatest first_run <= NEW.last_run can overlap NEW.
_SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER iov_guard_insert BEFORE INSERT ON iov
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the tag is not open; its IoVs cannot change')
        WHERE (SELECT state FROM global_tag WHERE id = NEW.tag_id) IS NOT 'open';
        SELECT RAISE(ABORT, 'vbes:overlap: the IoV overlaps an existing IoV of the same tag and type')
        WHERE EXISTS (SELECT 1 FROM (SELECT last_run FROM iov WHERE tag_id = NEW.tag_id
                      AND payload_type = NEW.payload_type AND first_run <= NEW.last_run
                      ORDER BY first_run DESC LIMIT 1) AS prev WHERE prev.last_run >= NEW.first_run);
        SELECT RAISE(ABORT, 'vbes:type: the IoV payload type differs from the payload''s type')
        WHERE (SELECT payload_type FROM payload WHERE sha256 = NEW.payload_sha256) IS NOT NEW.payload_type;
        SELECT RAISE(ABORT, 'vbes:immutable: the insert would replace an IoV of a published or invalid tag')
        WHERE EXISTS (SELECT 1 FROM iov i JOIN global_tag g ON g.id = i.tag_id
                      WHERE i.id = NEW.id AND g.state IS NOT 'open');
    END
    """,
    """
    CREATE TRIGGER iov_guard_update BEFORE UPDATE ON iov
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the tag is not open; its IoVs cannot change')
        WHERE (SELECT state FROM global_tag WHERE id = OLD.tag_id) IS NOT 'open'
           OR (SELECT state FROM global_tag WHERE id = NEW.tag_id) IS NOT 'open';
        SELECT RAISE(ABORT, 'vbes:overlap: the IoV overlaps an existing IoV of the same tag and type')
        WHERE EXISTS (SELECT 1 FROM (SELECT last_run FROM iov WHERE tag_id = NEW.tag_id
                      AND payload_type = NEW.payload_type AND first_run <= NEW.last_run AND id <> OLD.id
                      ORDER BY first_run DESC LIMIT 1) AS prev WHERE prev.last_run >= NEW.first_run);
        SELECT RAISE(ABORT, 'vbes:type: the IoV payload type differs from the payload''s type')
        WHERE (SELECT payload_type FROM payload WHERE sha256 = NEW.payload_sha256) IS NOT NEW.payload_type;
        SELECT RAISE(ABORT, 'vbes:immutable: the update would replace an IoV of a published or invalid tag')
        WHERE EXISTS (SELECT 1 FROM iov i JOIN global_tag g ON g.id = i.tag_id
                      WHERE i.id = NEW.id AND i.id <> OLD.id AND g.state IS NOT 'open');
    END
    """,
    """
    CREATE TRIGGER iov_guard_delete BEFORE DELETE ON iov
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the tag is not open; its IoVs cannot change')
        WHERE (SELECT state FROM global_tag WHERE id = OLD.tag_id) IS NOT 'open';
    END
    """,
    ("CREATE TRIGGER iov_bump_insert AFTER INSERT ON iov BEGIN "
     "UPDATE global_tag SET version = version + 1 WHERE id = NEW.tag_id; END"),
    ("CREATE TRIGGER iov_bump_update AFTER UPDATE ON iov BEGIN "
     "UPDATE global_tag SET version = version + 1 WHERE id IN (OLD.tag_id, NEW.tag_id); END"),
    ("CREATE TRIGGER iov_bump_delete AFTER DELETE ON iov BEGIN "
     "UPDATE global_tag SET version = version + 1 WHERE id = OLD.tag_id; END"),
    """
    CREATE TRIGGER tag_guard_insert BEFORE INSERT ON global_tag
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: a global tag is created open and without a seal')
        WHERE NEW.state IS NOT 'open' OR NEW.seal IS NOT NULL;
        SELECT RAISE(ABORT, 'vbes:immutable: the insert would replace a published or invalid tag')
        WHERE EXISTS (SELECT 1 FROM global_tag WHERE (id = NEW.id OR name = NEW.name) AND state IS NOT 'open');
    END
    """,
    """
    CREATE TRIGGER tag_guard_update_open BEFORE UPDATE ON global_tag WHEN OLD.state = 'open'
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: a tag leaves open only with the seal of its content')
        WHERE NEW.state IS NOT 'open' AND NEW.seal IS NULL;
        SELECT RAISE(ABORT, 'vbes:immutable: an open tag carries no seal')
        WHERE NEW.state IS 'open' AND NEW.seal IS NOT NULL;
        SELECT RAISE(ABORT, 'vbes:immutable: the update would replace a published or invalid tag')
        WHERE EXISTS (SELECT 1 FROM global_tag WHERE (id = NEW.id OR name = NEW.name) AND id <> OLD.id
                      AND state IS NOT 'open');
    END
    """,
    """
    CREATE TRIGGER tag_guard_update BEFORE UPDATE ON global_tag WHEN OLD.state <> 'open'
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the tag is published or invalid; it cannot change')
        WHERE NOT (OLD.state = 'published' AND NEW.state = 'invalid' AND NEW.id = OLD.id
                   AND NEW.name = OLD.name AND NEW.boss_release = OLD.boss_release
                   AND NEW.purpose = OLD.purpose AND NEW.parent IS OLD.parent AND NEW.created = OLD.created
                   AND NEW.published_at IS OLD.published_at AND NEW.version = OLD.version
                   AND NEW.seal IS OLD.seal);
    END
    """,
    """
    CREATE TRIGGER tag_guard_delete BEFORE DELETE ON global_tag WHEN OLD.state <> 'open'
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the tag is published or invalid; it cannot be deleted');
    END
    """,
    # the rowid counts too: INSERT OR REPLACE with an existing rowid replaces that row
    """
    CREATE TRIGGER payload_guard_insert BEFORE INSERT ON payload
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the insert would replace a stored payload; payloads are immutable')
        WHERE EXISTS (SELECT 1 FROM payload WHERE sha256 = NEW.sha256 OR rowid = NEW.rowid);
    END
    """,
    """
    CREATE TRIGGER payload_guard_update BEFORE UPDATE ON payload
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: payloads are immutable');
    END
    """,
    # a raw writer may run without PRAGMA foreign_keys, so referenced payloads are guarded here too
    """
    CREATE TRIGGER payload_guard_delete BEFORE DELETE ON payload
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the payload is used by an IoV and cannot be deleted')
        WHERE EXISTS (SELECT 1 FROM iov WHERE payload_sha256 = OLD.sha256);
    END
    """,
    # the schema record changes only in a migration, which drops and recreates every trigger
    """
    CREATE TRIGGER schema_guard_insert BEFORE INSERT ON vbes_calib_schema
    BEGIN
        SELECT RAISE(ABORT, 'vbes:immutable: the schema record is written by vbes migrations only')
        WHERE EXISTS (SELECT 1 FROM vbes_calib_schema WHERE key = NEW.key OR rowid = NEW.rowid);
    END
    """,
    ("CREATE TRIGGER schema_guard_update BEFORE UPDATE ON vbes_calib_schema BEGIN "
     "SELECT RAISE(ABORT, 'vbes:immutable: the schema record is written by vbes migrations only'); END"),
    ("CREATE TRIGGER schema_guard_delete BEFORE DELETE ON vbes_calib_schema BEGIN "
     "SELECT RAISE(ABORT, 'vbes:immutable: the schema record is written by vbes migrations only'); END"),
]

_PG_TRIGGERS = [
    """
    CREATE FUNCTION vbes_iov_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        st text;
        ptype text;
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            -- the row lock serialises every writer of this tag with publish/invalidate and each other
            SELECT state INTO st FROM global_tag WHERE id = OLD.tag_id FOR UPDATE;
            IF st IS DISTINCT FROM 'open' THEN
                RAISE EXCEPTION USING ERRCODE = 'P0001',
                    MESSAGE = 'vbes:immutable: the tag is ' || coalesce(st, 'missing') || '; its IoVs cannot change';
            END IF;
        END IF;
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        SELECT state INTO st FROM global_tag WHERE id = NEW.tag_id FOR UPDATE;
        IF st IS DISTINCT FROM 'open' THEN
            RAISE EXCEPTION USING ERRCODE = 'P0001',
                MESSAGE = 'vbes:immutable: the tag is ' || coalesce(st, 'missing') || '; its IoVs cannot change';
        END IF;
        IF EXISTS (SELECT 1 FROM (SELECT i.last_run FROM iov i WHERE i.tag_id = NEW.tag_id
                   AND i.payload_type = NEW.payload_type AND i.first_run <= NEW.last_run
                   AND (TG_OP = 'INSERT' OR i.id <> OLD.id)
                   ORDER BY i.first_run DESC LIMIT 1) prev WHERE prev.last_run >= NEW.first_run) THEN
            RAISE EXCEPTION USING ERRCODE = 'P0001',
                MESSAGE = 'vbes:overlap: the IoV overlaps an existing IoV of the same tag and type';
        END IF;
        SELECT payload_type INTO ptype FROM payload WHERE sha256 = NEW.payload_sha256;
        IF ptype IS DISTINCT FROM NEW.payload_type THEN
            RAISE EXCEPTION USING ERRCODE = 'P0001',
                MESSAGE = 'vbes:type: the IoV payload type differs from the payload''s type';
        END IF;
        RETURN NEW;
    END $$
    """,
    ("CREATE TRIGGER iov_guard BEFORE INSERT OR UPDATE OR DELETE ON iov "
     "FOR EACH ROW EXECUTE FUNCTION vbes_iov_guard()"),
    """
    CREATE FUNCTION vbes_iov_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE global_tag SET version = version + 1 WHERE id = OLD.tag_id;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            UPDATE global_tag SET version = version + 1 WHERE id = NEW.tag_id;
        END IF;
        RETURN NULL;
    END $$
    """,
    ("CREATE TRIGGER iov_bump AFTER INSERT OR UPDATE OR DELETE ON iov "
     "FOR EACH ROW EXECUTE FUNCTION vbes_iov_bump()"),
    """
    CREATE FUNCTION vbes_tag_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            IF NEW.state IS DISTINCT FROM 'open' OR NEW.seal IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'P0001',
                    MESSAGE = 'vbes:immutable: a global tag is created open and without a seal';
            END IF;
            RETURN NEW;
        END IF;
        IF OLD.state = 'open' THEN
            IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
            IF NEW.state IS DISTINCT FROM 'open' AND NEW.seal IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'P0001',
                    MESSAGE = 'vbes:immutable: a tag leaves open only with the seal of its content';
            END IF;
            IF NEW.state = 'open' AND NEW.seal IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'vbes:immutable: an open tag carries no seal';
            END IF;
            RETURN NEW;
        END IF;
        IF TG_OP = 'UPDATE' AND OLD.state = 'published' AND NEW.state = 'invalid'
           AND (NEW.id, NEW.name, NEW.boss_release, NEW.purpose, NEW.parent, NEW.created, NEW.published_at,
                NEW.version, NEW.seal)
               IS NOT DISTINCT FROM
               (OLD.id, OLD.name, OLD.boss_release, OLD.purpose, OLD.parent, OLD.created, OLD.published_at,
                OLD.version, OLD.seal) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'P0001',
            MESSAGE = 'vbes:immutable: tag ' || OLD.name || ' is ' || OLD.state || '; it cannot change';
    END $$
    """,
    ("CREATE TRIGGER tag_guard BEFORE INSERT OR UPDATE OR DELETE ON global_tag "
     "FOR EACH ROW EXECUTE FUNCTION vbes_tag_guard()"),
    """
    CREATE FUNCTION vbes_payload_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM iov WHERE payload_sha256 = OLD.sha256) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'vbes:immutable: payloads are immutable';
    END $$
    """,
    ("CREATE TRIGGER payload_guard BEFORE UPDATE OR DELETE ON payload "
     "FOR EACH ROW EXECUTE FUNCTION vbes_payload_guard()"),
    # TRUNCATE skips row triggers: refuse it outright while any tag is not open
    """
    CREATE FUNCTION vbes_truncate_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM global_tag WHERE state <> 'open') THEN
            RAISE EXCEPTION USING ERRCODE = 'P0001',
                MESSAGE = 'vbes:immutable: published or invalid tags exist; TRUNCATE is refused';
        END IF;
        RETURN NULL;
    END $$
    """,
    ("CREATE TRIGGER iov_truncate_guard BEFORE TRUNCATE ON iov "
     "FOR EACH STATEMENT EXECUTE FUNCTION vbes_truncate_guard()"),
    ("CREATE TRIGGER payload_truncate_guard BEFORE TRUNCATE ON payload "
     "FOR EACH STATEMENT EXECUTE FUNCTION vbes_truncate_guard()"),
    ("CREATE TRIGGER tag_truncate_guard BEFORE TRUNCATE ON global_tag "
     "FOR EACH STATEMENT EXECUTE FUNCTION vbes_truncate_guard()"),
    # the schema record changes only in a migration, which drops and recreates every trigger
    """
    CREATE FUNCTION vbes_schema_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION USING ERRCODE = 'P0001',
            MESSAGE = 'vbes:immutable: the schema record is written by vbes migrations only';
    END $$
    """,
    ("CREATE TRIGGER schema_guard BEFORE UPDATE OR DELETE ON vbes_calib_schema "
     "FOR EACH ROW EXECUTE FUNCTION vbes_schema_guard()"),
    ("CREATE TRIGGER schema_truncate_guard BEFORE TRUNCATE ON vbes_calib_schema "
     "FOR EACH STATEMENT EXECUTE FUNCTION vbes_schema_guard()"),
]


# --- values ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IoV:
    """One IoV of a tag: ``payload_type`` valid for runs ``first..last`` (inclusive) -> ``sha256``."""

    payload_type: str
    first: int
    last: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"payload_type": self.payload_type, "first": self.first, "last": self.last,
                "sha256": self.sha256}


@dataclass(frozen=True)
class IoVEntry:
    """One IoV to write in :meth:`CalibrationStore.put_many`; ``label`` names its source in reports."""

    payload_type: str
    first: int
    last: int
    payload: Payload
    label: str = ""


@dataclass
class BatchResult:
    """What :meth:`CalibrationStore.put_many` did with each entry."""

    tag: str
    added: list[IoVEntry] = field(default_factory=list)
    present: list[IoVEntry] = field(default_factory=list)
    refused: list[tuple[IoVEntry, str]] = field(default_factory=list)
    removed: int = 0
    created_tag: bool = False


def check_run_range(payload_type: str, first: int, last: int) -> None:
    """Raise :class:`InvalidIoV` unless ``first..last`` is an ordered range on one side of run 0."""
    for run in (first, last):
        if isinstance(run, bool) or not isinstance(run, int) or not _RUN_MIN <= run <= _RUN_MAX:
            raise InvalidIoV(f"{payload_type} IoV {first}..{last}: run {run!r} is not a 64-bit integer")
    if first > last:
        raise InvalidIoV(f"{payload_type} IoV {first}..{last}: first run {first} is after last run {last}")
    if first <= 0 <= last:
        raise InvalidIoV(f"{payload_type} IoV {first}..{last}: a range may not contain run 0 or mix MC "
                         "(negative) and data (positive) runs")


#: the tag's own fields a seal covers: all of RECORD_FIELDS except those that change after it left ``open``
SEALED_FIELDS = ("name", "boss_release", "purpose", "parent", "created", "published_at")


def tag_seal(record: Mapping[str, Any], iovs: Sequence[IoV]) -> str:
    """The seal of a tag: the SHA-256 of its sealed fields and its IoVs (type, runs, payload SHA-256).

    The payloads are covered through their SHA-256, which every read of a payload verifies; a payload's
    ``created`` time is outside its hash and so outside the seal.

    Args:
        record: the tag's fields (at least :data:`SEALED_FIELDS`).
        iovs: every IoV of the tag, in any order.
    """
    digest = hashlib.sha256(b"vbes-calib-seal/1\n")
    digest.update(json.dumps([record[k] for k in SEALED_FIELDS], ensure_ascii=True).encode() + b"\n")
    # sorted here, in code-point order: a database's collation must not change the seal
    ordered = sorted(iovs, key=lambda i: (i.payload_type, i.first))
    digest.update("".join(f"{i.payload_type}\t{i.first}\t{i.last}\t{i.sha256}\n" for i in ordered).encode())
    return digest.hexdigest()


def _check_type_name(payload_type: str) -> None:
    if not isinstance(payload_type, str) or not _TYPE_NAME.match(payload_type):
        raise InvalidInput(f"payload type {payload_type!r} is not a valid name (a letter, then letters, "
                           "digits or _)")


def normalize_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` URLs and use the psycopg (v3) driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _translate(exc: sa.exc.DBAPIError, context: str) -> Exception:
    """Map a guard trigger's message to our exception; anything else is returned unchanged."""
    text = str(exc.orig) if exc.orig is not None else str(exc)
    match = re.search(r"vbes:(\w+): ([^\n]*)", text)
    if not match:
        return exc
    kind, message = match.groups()
    cls = {"immutable": TagStateError, "overlap": IoVOverlap, "type": InvalidInput}.get(kind, CalibrationError)
    return cls(f"{context}: {message.rstrip('.').strip()}" if context else message)


# --- the lookup cache -----------------------------------------------------------------------------------


@dataclass
class _TagIndex:
    """One tag's IoVs as sorted arrays per type, valid while the tag's (name, state, version) is unchanged."""

    tag_id: int
    name: str
    state: str
    version: int
    firsts: dict[str, list[int]]
    lasts: dict[str, list[int]]
    shas: dict[str, list[str]]
    checked_at: float = field(default_factory=time.monotonic)


class _Probe:
    """Reads a tag's current (name, state, version) as cheaply as the backend allows, outside any snapshot.

    SQLite: a private autocommit connection whose ``PRAGMA data_version`` moves exactly when another
    connection commits, so most checks cost one pragma (~1 us). PostgreSQL: one prepared primary-key query
    sent straight through libpq (``psycopg.pq``) on a private autocommit connection (~25 us on loopback).
    """

    _PG_STATEMENT = b"vbes_tag_probe"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.kind = "query"
        self._conn: Any = None
        self._data_version: int | None = None
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            self.kind = "sqlite"
            self._path = database
        elif engine.dialect.name == "postgresql":
            from psycopg import pq

            self.kind = "postgresql"
            self._tuples_ok = pq.ExecStatus.TUPLES_OK

    def _connection(self) -> Any:
        if self._conn is None:
            if self.kind == "sqlite":
                self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                                             timeout=_BUSY_TIMEOUT_MS / 1000)
            else:
                raw = self.engine.raw_connection()
                driver = raw.driver_connection
                if driver is None:  # only for an invalidated connection, which a fresh checkout never is
                    raw.close()
                    raise CalibrationError(f"no live database connection for {self.engine.url!r}")
                raw.detach()  # ours alone: its autocommit setting must never leak back into the pool
                driver.autocommit = True
                result = driver.pgconn.prepare(
                    self._PG_STATEMENT, b"SELECT name, state, version FROM global_tag WHERE id = $1")
                self._check(result)
                self._conn = driver
        return self._conn

    @staticmethod
    def _check(result: Any) -> None:
        from psycopg import pq

        if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            message = (result.error_message or b"").decode("utf-8", "replace").strip()
            raise CalibrationError(f"calibration store probe failed: {message}")

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
                self._data_version = None

    def forget(self) -> None:
        """After fork: drop the parent's connection without closing it (closing would end the parent's)."""
        if self._conn is not None:
            _ORPHANS.append(self._conn)
        self._conn = None
        self._data_version = None

    def anything_committed(self) -> bool:
        """SQLite: True if any connection committed since the last call. Not meaningful elsewhere."""
        version = self._connection().execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    def states(self, tag_ids: Sequence[int]) -> dict[int, tuple[str, str, int]]:
        """``{tag_id: (name, state, version)}`` read now; absent ids are missing from the answer."""
        if not tag_ids:
            return {}
        if self.kind == "sqlite":
            marks = ",".join("?" * len(tag_ids))
            rows = self._connection().execute(
                f"SELECT id, name, state, version FROM global_tag WHERE id IN ({marks})", list(tag_ids))
            return {r[0]: (r[1], r[2], r[3]) for r in rows}
        if self.kind == "postgresql":
            out = {}
            for tag_id in tag_ids:
                state = self.state(tag_id)
                if state is not None:
                    out[tag_id] = state
            return out
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_TAG.c.id, _TAG.c.name, _TAG.c.state, _TAG.c.version)
                                .where(_TAG.c.id.in_(list(tag_ids))))
            return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def state(self, tag_id: int) -> tuple[str, str, int] | None:
        """One tag's (name, state, version), or None if it no longer exists."""
        if self.kind != "postgresql":
            return self.states([tag_id]).get(tag_id)
        pgconn = self._connection().pgconn
        result = pgconn.exec_prepared(self._PG_STATEMENT, [str(tag_id).encode()])
        if result.status != self._tuples_ok:  # the connection broke (server restart, ...): reconnect once
            self.close()
            pgconn = self._connection().pgconn
            result = pgconn.exec_prepared(self._PG_STATEMENT, [str(tag_id).encode()])
            self._check(result)
        if result.ntuples == 0:
            return None
        return (result.get_value(0, 0).decode(), result.get_value(0, 1).decode(),
                int(result.get_value(0, 2)))


# --- the store ------------------------------------------------------------------------------------------


class CalibrationStore:
    """Conditions store on any SQLAlchemy URL (SQLite file, ``sqlite://`` in memory, PostgreSQL).

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////home/me/.vbes/calibration.sqlite`` or
            ``postgresql+psycopg://user@host/db`` (``postgresql://`` is accepted too).
        cache: keep a validated in-process lookup cache (see the module docstring).

    The schema (tables and guard triggers) is created on first use. A store object is safe to share between
    threads; after ``fork`` the child re-opens its own connections.
    """

    def __init__(self, url: str, *, cache: bool = True) -> None:
        self.url = normalize_url(url)
        self.cache_enabled = cache
        try:
            sa_url = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise InvalidInput(f"calibration store URL {url!r} is not an SQLAlchemy URL") from exc
        self.dialect = sa_url.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise InvalidInput(f"calibration store URL {url!r}: only sqlite and postgresql are supported")
        if self.dialect == "sqlite":
            # no folder is created here: a mistyped path must fail, not leave folders behind
            self.engine = sa.create_engine(sa_url, connect_args={"timeout": _BUSY_TIMEOUT_MS / 1000})
            self._install_sqlite_hooks()
        else:
            self.engine = sa.create_engine(sa_url)
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._tags: dict[str, _TagIndex] = {}
        self._payloads: dict[str, Payload] = {}
        self._probe = _Probe(self.engine)
        try:
            self._ensure_schema()
        except sa.exc.DatabaseError as exc:  # OperationalError included; "file is not a database" is not one
            self.close()
            raise StoreUnavailable.opening(self._safe_url(), str(exc.orig)) from exc

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> CalibrationStore:
        """The store named by ``settings.calib_url`` (``VBES_CALIB_URL``, else the home folder's SQLite).

        The home folder is created when missing (it holds the default store); any other folder must exist.
        """
        Path(settings.home).mkdir(parents=True, exist_ok=True)
        return cls(settings.calib_url, **kwargs)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections (the object can still be used; it reconnects)."""
        with self._lock:
            self._probe.close()
            self.engine.dispose()

    def __repr__(self) -> str:
        return f"CalibrationStore({self._safe_url()!r})"

    def _safe_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # -- connections and transactions ------------------------------------------------------------------

    def _install_sqlite_hooks(self) -> None:
        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # we emit BEGIN ourselves (below): pysqlite's implicit transactions cannot take the write lock
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys = ON")
            if self.engine.url.database not in (None, "", ":memory:"):
                cur.execute("PRAGMA journal_mode = WAL")  # readers never block the writer (nor publish)
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            options = conn.get_execution_options()
            if not options.get("vbes_write"):
                conn.exec_driver_sql("BEGIN")
            elif options.get("vbes_nowait"):
                conn.exec_driver_sql("PRAGMA busy_timeout = 0")
                try:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                finally:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:
            # connections inherited from the parent belong to the parent; never touch them
            self._probe.forget()
            self.engine.dispose(close=False)
            self._tags.clear()
            self._pid = os.getpid()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self._after_fork()
        with self.engine.connect() as conn:
            if self.dialect == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot per read
            with conn.begin():
                yield conn

    @contextmanager
    def _write(self, context: str = "", nowait: bool = False) -> Iterator[Connection]:
        """One write transaction; trigger refusals become our exceptions prefixed with ``context``."""
        self._after_fork()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(vbes_write=True, vbes_nowait=nowait)
                with conn.begin():
                    yield conn
        except sa.exc.DBAPIError as exc:
            translated = _translate(exc, context)
            if translated is exc:
                raise
            raise translated from exc

    def _lock_tag(self, conn: Connection, name: str, nowait: bool = False) -> sa.Row[Any]:
        query = sa.select(_TAG).where(_TAG.c.name == name)
        if self.dialect == "postgresql":
            query = query.with_for_update(nowait=nowait)
        row = conn.execute(query).one_or_none()
        if row is None:
            raise TagNotFound(f"no global tag {name!r} in {self._safe_url()}")
        return row

    def _tag_row(self, conn: Connection, name: str) -> sa.Row[Any]:
        row = conn.execute(sa.select(_TAG).where(_TAG.c.name == name)).one_or_none()
        if row is None:
            raise TagNotFound(f"no global tag {name!r} in {self._safe_url()}")
        return row

    def _check_seal(self, conn: Connection, row: sa.Row[Any], iovs: Sequence[IoV] | None = None) -> list[IoV]:
        """The tag's IoVs, after checking that a tag that left ``open`` still matches its seal.

        Raises:
            TagSealBroken: the tag's record or IoVs were changed behind the guards (triggers dropped, the file
                edited), or an open tag carries a seal (it was reopened so).
        """
        if iovs is None:
            iovs = self._iovs(conn, row.id)
        if row.state == "open":
            self._check_open(row)
        elif row.seal is None or row.seal != tag_seal(dict(row._mapping), iovs):
            raise TagSealBroken(f"tag {row.name} in {self._safe_url()} is {row.state} but its content no longer "
                                "matches the seal recorded when it was published: it was changed outside vbes; "
                                "restore it from a snapshot")
        return list(iovs)

    def _verify_tag(self, conn: Connection, row: sa.Row[Any]) -> None:
        """:meth:`_check_seal` without loading the IoVs of an open tag (which has no seal to check)."""
        if row.state == "open":
            self._check_open(row)
        else:
            self._check_seal(conn, row)

    def _check_open(self, row: sa.Row[Any]) -> None:
        if row.seal is not None:
            raise TagSealBroken(f"tag {row.name} in {self._safe_url()} is open but carries the seal of a "
                                "published tag: it was reopened outside vbes; do not use it")

    # -- schema ----------------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        with self.engine.connect() as conn:
            if sa.inspect(conn).has_table(_SCHEMA.name):
                conn.rollback()
                if self._schema_version() < SCHEMA_VERSION:
                    self._migrate()
                return
            conn.rollback()
        with self._write() as conn:
            if self.dialect == "postgresql":
                # two processes creating the schema of a fresh database at once: the second waits here
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7204511309)"))
            if sa.inspect(conn).has_table(_SCHEMA.name):
                return
            _Base.metadata.create_all(conn)
            self._create_guards(conn)
            conn.execute(_SCHEMA.insert(), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        self._schema_version()

    def _create_guards(self, conn: Connection) -> None:
        for ddl in _SQLITE_TRIGGERS if self.dialect == "sqlite" else _PG_TRIGGERS:
            conn.exec_driver_sql(ddl)

    def _schema_version(self, conn: Connection | None = None) -> int:
        """The store's schema version; refuses a store written by a newer vbes."""
        if conn is None:
            with self._read() as fresh:
                return self._schema_version(fresh)
        value = conn.execute(sa.select(_SCHEMA.c.value).where(_SCHEMA.c.key == "schema_version")).scalar()
        if value is None or not str(value).isdigit() or int(value) > SCHEMA_VERSION:
            raise CalibrationError(f"calibration store {self._safe_url()} has schema version {value}; this vbes "
                                   f"reads up to {SCHEMA_VERSION} (upgrade vbes)")
        return int(value)

    def _migrate(self) -> None:
        """Bring a version-1 store to version 2 in one transaction: new guards, and a seal for every tag
        that already left ``open`` (computed from its content as it is now, which the v1 guards kept)."""
        with self._write("migrate the store's schema") as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7204511309)"))
            if self._schema_version(conn) >= SCHEMA_VERSION:
                return  # another process migrated it meanwhile
            self._drop_guards(conn)
            conn.exec_driver_sql("ALTER TABLE global_tag ADD COLUMN seal VARCHAR(64)")
            for row in conn.execute(sa.select(_TAG).where(_TAG.c.state != "open")).all():
                conn.execute(_TAG.update().where(_TAG.c.id == row.id)
                             .values(seal=tag_seal(dict(row._mapping), self._iovs(conn, row.id))))
            conn.execute(_SCHEMA.update().where(_SCHEMA.c.key == "schema_version")
                         .values(value=str(SCHEMA_VERSION)))
            self._create_guards(conn)

    def _drop_guards(self, conn: Connection) -> None:
        if self.dialect == "sqlite":
            names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all()
            for name in names:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
            return
        tables = [t.name for t in _Base.metadata.sorted_tables]
        triggers = conn.execute(sa.text(
            "SELECT t.tgname, c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE NOT t.tgisinternal AND c.relname = ANY(:tables)"), {"tables": tables}).all()
        for trigger, table in triggers:
            conn.exec_driver_sql(f'DROP TRIGGER "{trigger}" ON "{table}"')
        for function in re.findall(r"CREATE FUNCTION (\w+)\(\)", "\n".join(_PG_TRIGGERS)):
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {function}()")

    # -- tags ------------------------------------------------------------------------------------------

    @staticmethod
    def _check_tag_name(name: str) -> None:
        if not isinstance(name, str) or not _TAG_NAME.match(name):
            raise InvalidInput(f"tag name {name!r} is not valid (letters, digits and . _ + -, at most 200)")

    def create_tag(self, name: str, boss_release: str = "", purpose: str = "") -> dict[str, Any]:
        """Create an open global tag; returns :meth:`tag_info`."""
        self._check_tag_name(name)
        with self._write(f"create tag {name}") as conn:
            self._insert_tag(conn, name, boss_release, purpose, parent=None)
        return self.tag_info(name)

    def _insert_tag(self, conn: Connection, name: str, boss_release: str, purpose: str,
                    parent: str | None, created: str | None = None) -> int:
        if conn.execute(sa.select(_TAG.c.id).where(_TAG.c.name == name)).first() is not None:
            raise TagExists(f"global tag {name!r} already exists")
        try:
            with conn.begin_nested():
                result = conn.execute(_TAG.insert().values(
                    name=name, state="open", boss_release=str(boss_release or ""), purpose=str(purpose or ""),
                    parent=parent, created=created or now_iso(), version=0))
        except sa.exc.IntegrityError as exc:  # created concurrently by another process (PostgreSQL)
            raise TagExists(f"global tag {name!r} already exists") from exc
        key = result.inserted_primary_key
        if key is None:  # SQLAlchemy sets it for every single-row INSERT
            raise CalibrationError(f"the database returned no id for the new global tag {name!r}")
        return int(key[0])

    def clone_tag(self, source: str, name: str, purpose: str | None = None) -> dict[str, Any]:
        """An open copy of ``source`` (its IoVs, sharing the payloads); returns :meth:`tag_info`."""
        self._check_tag_name(name)
        with self._write(f"clone {source} to {name}") as conn:
            src = self._lock_tag(conn, source)
            if src.state == "invalid":
                raise TagStateError(f"tag {source} is invalid; it cannot be used, not even to clone")
            self._verify_tag(conn, src)
            new_id = self._insert_tag(conn, name, src.boss_release,
                                      purpose if purpose is not None else f"clone of {source}", parent=source)
            conn.execute(_IOV.insert().from_select(
                ["tag_id", "payload_type", "first_run", "last_run", "payload_sha256"],
                sa.select(sa.literal(new_id), _IOV.c.payload_type, _IOV.c.first_run, _IOV.c.last_run,
                          _IOV.c.payload_sha256).where(_IOV.c.tag_id == src.id).order_by(_IOV.c.id)))
        return self.tag_info(name)

    def publish_tag(self, name: str) -> dict[str, Any]:
        """Make an open tag published: immutable for ever. Refused while another writer is in flight."""
        return self._set_state(name, "published")

    def invalidate_tag(self, name: str) -> dict[str, Any]:
        """Mark an open or published tag invalid: kept as it is, refused for use."""
        return self._set_state(name, "invalid")

    def _set_state(self, name: str, new_state: Literal["published", "invalid"]) -> dict[str, Any]:
        verb = "publish" if new_state == "published" else "invalidate"
        try:
            # never wait behind a writer: a publish that waited would include a write its author never saw
            with self._write(f"{verb} {name}", nowait=True) as conn:
                row = self._lock_tag(conn, name, nowait=True)
                allowed = ("open",) if new_state == "published" else ("open", "published")
                if row.state not in allowed:
                    raise TagStateError(f"cannot {verb} tag {name}: it is {row.state}")
                self._verify_tag(conn, row)
                stamp = now_iso()
                values: dict[str, Any] = {"state": new_state}
                values["published_at" if new_state == "published" else "invalidated_at"] = stamp
                if row.state == "open":
                    values["seal"] = tag_seal({**row._mapping, **values}, self._iovs(conn, row.id))
                conn.execute(_TAG.update().where(_TAG.c.id == row.id).values(**values))
        except sa.exc.OperationalError as exc:
            if _is_lock_conflict(exc):
                raise TagStateError(f"cannot {verb} tag {name}: another transaction is writing to the store; "
                                    "nothing changed (retry when it has finished)") from exc
            raise
        return self.tag_info(name)

    def list_tags(self) -> list[dict[str, Any]]:
        """Every tag with its state, release, purpose and IoV count, by name."""
        counts = (sa.select(_IOV.c.tag_id, sa.func.count().label("n")).group_by(_IOV.c.tag_id).subquery())
        with self._read() as conn:
            rows = conn.execute(sa.select(_TAG, sa.func.coalesce(counts.c.n, 0).label("iovs"))
                                .outerjoin(counts, counts.c.tag_id == _TAG.c.id).order_by(_TAG.c.name)).all()
        return [{"name": r.name, "state": r.state, "boss_release": r.boss_release, "purpose": r.purpose,
                 "parent": r.parent, "created": r.created, "iovs": int(r.iovs)} for r in rows]

    def tag_info(self, name: str) -> dict[str, Any]:
        """A tag's record, its IoV count and, per payload type, the IoV count and data/MC run coverage."""
        with self._read() as conn:
            row = self._tag_row(conn, name)
            self._verify_tag(conn, row)
            stats = conn.execute(
                sa.select(_IOV.c.payload_type, sa.func.count(), sa.func.min(_IOV.c.first_run),
                          sa.func.max(_IOV.c.last_run),
                          sa.func.sum(sa.case((_IOV.c.last_run < 0, 1), else_=0)))
                .where(_IOV.c.tag_id == row.id).group_by(_IOV.c.payload_type)
                .order_by(_IOV.c.payload_type)).all()
        types = {t: {"iovs": int(n), "min_run": int(lo), "max_run": int(hi), "mc_iovs": int(mc),
                     "data_iovs": int(n) - int(mc)} for t, n, lo, hi, mc in stats}
        return {"name": row.name, "state": row.state, "boss_release": row.boss_release, "purpose": row.purpose,
                "parent": row.parent, "created": row.created, "published_at": row.published_at,
                "invalidated_at": row.invalidated_at, "version": int(row.version),
                "iovs": sum(t["iovs"] for t in types.values()), "payload_types": types}

    def iovs(self, tag: str, payload_type: str | None = None) -> list[IoV]:
        """The tag's IoVs ordered by type then first run."""
        with self._read() as conn:
            row = self._tag_row(conn, tag)
            iovs = self._check_seal(conn, row)
        return [i for i in iovs if payload_type is None or i.payload_type == payload_type]

    @staticmethod
    def _iovs(conn: Connection, tag_id: int, payload_type: str | None = None) -> list[IoV]:
        query = sa.select(_IOV.c.payload_type, _IOV.c.first_run, _IOV.c.last_run, _IOV.c.payload_sha256) \
            .where(_IOV.c.tag_id == tag_id).order_by(_IOV.c.payload_type, _IOV.c.first_run)
        if payload_type is not None:
            query = query.where(_IOV.c.payload_type == payload_type)
        return [IoV(t, int(a), int(b), s) for t, a, b, s in conn.execute(query)]

    # -- payloads and IoVs -----------------------------------------------------------------------------

    def _insert_payload(self, conn: Connection, payload: Payload) -> None:
        values = {"sha256": payload.sha256, "payload_type": payload.payload_type, "blob": payload.blob,
                  "created": payload.created}
        if self.dialect == "postgresql":
            conn.execute(pg_dialect.insert(_PAYLOAD).values(**values)
                         .on_conflict_do_nothing(index_elements=["sha256"]))
            return
        # SQLite's guard refuses any INSERT that meets a stored payload (INSERT OR REPLACE would swap the
        # blob), so a stored payload is not inserted at all; the write lock makes the test-then-insert safe
        conn.execute(_PAYLOAD.insert().from_select(list(values), sa.select(
            *(sa.literal(v, _PAYLOAD.c[k].type).label(k) for k, v in values.items()))
            .where(~sa.exists().where(_PAYLOAD.c.sha256 == payload.sha256))))

    def put_payload(self, payload: Payload) -> Payload:
        """Store a payload (no IoV); storing the same content twice is a no-op. Returns the stored payload."""
        _check_type_name(payload.payload_type)
        with self._write(f"put payload {payload.sha256[:12]}") as conn:
            self._insert_payload(conn, payload)
        return self.payload(payload.sha256)

    def payload(self, sha256: str) -> Payload:
        """The payload with that SHA-256 (or unique prefix of at least 8 hex digits), hash verified."""
        if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-f]{8,64}", sha256):
            raise InvalidInput(f"payload id {sha256!r} is not a SHA-256 (or a prefix of 8+ hex digits)")
        if len(sha256) == 64:
            return self._payload(sha256)
        with self._read() as conn:
            matches = conn.execute(sa.select(_PAYLOAD.c.sha256).where(_PAYLOAD.c.sha256.like(sha256 + "%"))
                                   .limit(2)).scalars().all()
        if not matches:
            raise PayloadNotFound(f"no payload with SHA-256 {sha256}...")
        if len(matches) > 1:
            raise InvalidInput(f"payload prefix {sha256} is ambiguous; give more digits")
        return self._payload(matches[0])

    def _payload(self, sha256: str) -> Payload:
        cached = self._payloads.get(sha256)
        if cached is not None:
            return cached
        with self._read() as conn:
            row = conn.execute(sa.select(_PAYLOAD.c.blob, _PAYLOAD.c.created)
                               .where(_PAYLOAD.c.sha256 == sha256)).one_or_none()
        if row is None:
            raise PayloadNotFound(f"no payload with SHA-256 {sha256}")
        try:
            payload = Payload.from_bytes(bytes(row.blob), created=row.created, expected_sha256=sha256)
        except InvalidInput as exc:
            raise CorruptStore(f"payload {sha256} is corrupt in {self._safe_url()}: {exc}") from exc
        if self.cache_enabled:
            with self._lock:
                if len(self._payloads) >= _PAYLOAD_CACHE_LIMIT:
                    self._payloads.clear()
                self._payloads[sha256] = payload
        return payload

    def add_iov(self, tag: str, payload_type: str, first: int, last: int, sha256: str) -> IoV:
        """Attach the stored payload ``sha256`` to ``tag`` for ``payload_type`` and runs ``first..last``."""
        payload = self.payload(sha256)
        if payload.payload_type != payload_type:
            raise InvalidInput(f"payload {sha256[:12]} is of type {payload.payload_type}, not {payload_type}")
        result = self.put_many(tag, [IoVEntry(payload_type, first, last, payload)], atomic=True)
        entry = (result.added or result.present)[0]
        return IoV(entry.payload_type, entry.first, entry.last, entry.payload.sha256)

    def put(self, tag: str, payload_type: str, first: int, last: int, constants: Mapping[str, Any],
            metadata: Mapping[str, Any] | None = None) -> Payload:
        """Store a payload built from ``constants`` + ``metadata`` and its IoV in ``tag``, in one transaction."""
        payload = Payload.build(payload_type, constants, metadata)
        self.put_many(tag, [IoVEntry(payload_type, first, last, payload)], atomic=True)
        return self.payload(payload.sha256)

    def put_many(self, tag: str, entries: Sequence[IoVEntry], *, atomic: bool = False, replace: bool = False,
                 create: Mapping[str, str] | None = None) -> BatchResult:
        """Write many IoVs (with their payloads) into an open tag in ONE transaction.

        Args:
            tag: the tag's name.
            entries: the IoVs; an entry equal to an IoV already in the tag is counted as present.
            atomic: refuse everything (raise the first refusal) if any entry is refused; otherwise valid
                entries are written and refused ones are reported with their reason.
            replace: remove the tag's existing IoVs first (open tags only).
            create: if the tag does not exist, create it with these fields (``boss_release``, ``purpose``,
                ``parent``; ``clone_of`` copies that tag's IoVs first).
        """
        result = BatchResult(tag=tag)
        with self._write(f"tag {tag}") as conn:
            row = conn.execute(sa.select(_TAG.c.id).where(_TAG.c.name == tag)).first()
            if row is None and create is not None:
                self._check_tag_name(tag)
                clone_of = create.get("clone_of")
                src = self._lock_tag(conn, clone_of) if clone_of else None
                if src is not None and src.state == "invalid":
                    raise TagStateError(f"tag {clone_of} is invalid; it cannot be used, not even to clone")
                if src is not None:
                    self._verify_tag(conn, src)
                try:
                    new_id: int | None = self._insert_tag(
                        conn, tag, create.get("boss_release", src.boss_release if src else ""),
                        create.get("purpose", ""), parent=clone_of or create.get("parent"))
                except TagExists:  # another process created it a moment ago (PostgreSQL): use theirs
                    new_id = None
                result.created_tag = new_id is not None
                if src is not None and new_id is not None:
                    conn.execute(_IOV.insert().from_select(
                        ["tag_id", "payload_type", "first_run", "last_run", "payload_sha256"],
                        sa.select(sa.literal(new_id), _IOV.c.payload_type, _IOV.c.first_run, _IOV.c.last_run,
                                  _IOV.c.payload_sha256).where(_IOV.c.tag_id == src.id).order_by(_IOV.c.id)))
            tag_row = self._lock_tag(conn, tag)
            closed = tag_row.state != "open"
            if not closed:
                self._check_open(tag_row)
            if closed and replace:
                raise TagStateError(f"tag {tag} is {tag_row.state}; its IoVs cannot change")
            if replace:
                result.removed = conn.execute(_IOV.delete().where(_IOV.c.tag_id == tag_row.id)).rowcount
            # re-writing what a closed tag already holds is a no-op, not an error (idempotent imports)
            held = {(i.payload_type, i.first, i.last, i.sha256) for i in self._check_seal(conn, tag_row)} \
                if closed else set()
            for entry in entries:
                if closed:
                    reason = self._check_closed_entry(tag_row, entry, held, result)
                else:
                    reason = self._write_entry(conn, tag_row, entry, result)
                if reason is not None:
                    if atomic:
                        raise type(reason)(f"{entry.label}: {reason}") if entry.label else reason
                    result.refused.append((entry, str(reason)))
        return result

    @staticmethod
    def _check_closed_entry(tag_row: sa.Row[Any], entry: IoVEntry, held: set[tuple[str, int, int, str]],
                            result: BatchResult) -> Exception | None:
        try:
            check_run_range(entry.payload_type, entry.first, entry.last)
        except InvalidIoV as exc:
            return exc
        if (entry.payload_type, entry.first, entry.last, entry.payload.sha256) in held:
            result.present.append(entry)
            return None
        return TagStateError(f"{entry.payload_type} IoV {entry.first}..{entry.last}: tag {tag_row.name} is "
                             f"{tag_row.state}; its IoVs cannot change")

    def _write_entry(self, conn: Connection, tag_row: sa.Row[Any], entry: IoVEntry,
                     result: BatchResult) -> Exception | None:
        """Write one IoV; returns the refusal (not raised) when it cannot be written."""
        try:
            _check_type_name(entry.payload_type)
            check_run_range(entry.payload_type, entry.first, entry.last)
        except (InvalidIoV, InvalidInput) as exc:
            return exc
        if entry.payload.payload_type != entry.payload_type:
            return InvalidInput(f"{entry.payload_type} IoV {entry.first}..{entry.last}: the payload is of type "
                                f"{entry.payload.payload_type}")
        clash = conn.execute(
            sa.select(_IOV.c.first_run, _IOV.c.last_run, _IOV.c.payload_sha256)
            .where(_IOV.c.tag_id == tag_row.id, _IOV.c.payload_type == entry.payload_type,
                   _IOV.c.first_run <= entry.last)
            .order_by(_IOV.c.first_run.desc()).limit(1)).first()
        if clash is not None and clash.last_run >= entry.first:
            if (clash.first_run, clash.last_run, clash.payload_sha256) == (entry.first, entry.last,
                                                                           entry.payload.sha256):
                result.present.append(entry)
                return None
            return IoVOverlap(f"{entry.payload_type} IoV {entry.first}..{entry.last} overlaps the existing IoV "
                              f"{clash.first_run}..{clash.last_run} (payload {clash.payload_sha256[:12]}) "
                              f"in {tag_row.name}")
        self._insert_payload(conn, entry.payload)
        conn.execute(_IOV.insert().values(tag_id=tag_row.id, payload_type=entry.payload_type,
                                          first_run=entry.first, last_run=entry.last,
                                          payload_sha256=entry.payload.sha256))
        result.added.append(entry)
        return None

    # -- lookups ---------------------------------------------------------------------------------------

    def _load_index(self, name: str) -> _TagIndex:
        with self._read() as conn:  # one snapshot: version and IoVs agree
            row = self._tag_row(conn, name)
            iovs = self._check_seal(conn, row)
        index = _TagIndex(row.id, row.name, row.state, int(row.version), {}, {}, {})
        for iov in iovs:  # ordered by type, first run
            index.firsts.setdefault(iov.payload_type, []).append(iov.first)
            index.lasts.setdefault(iov.payload_type, []).append(iov.last)
            index.shas.setdefault(iov.payload_type, []).append(iov.sha256)
        return index

    def _index(self, name: str) -> _TagIndex:
        """The tag's IoV index, checked against the database's current (name, state, version)."""
        self._after_fork()
        index: _TagIndex | None
        if not self.cache_enabled:
            index = self._load_index(name)
        else:
            with self._lock:
                if self._probe.kind == "sqlite":
                    if self._tags and self._probe.anything_committed():
                        # something was committed somewhere: re-check every cached tag in one query
                        current = self._probe.states([t.tag_id for t in self._tags.values()])
                        for key, cached in list(self._tags.items()):
                            if current.get(cached.tag_id) != (cached.name, cached.state, cached.version):
                                del self._tags[key]
                    elif not self._tags:
                        self._probe.anything_committed()  # baseline before loading: later commits will show
                    index = self._tags.get(name)
                else:
                    index = self._tags.get(name)
                    now = time.monotonic()
                    # an open tag is checked on every lookup; a published one can only turn invalid (its IoVs
                    # never change), which is noticed within _PUBLISHED_RECHECK_S
                    if index is not None and (index.state != "published"
                                              or now - index.checked_at > _PUBLISHED_RECHECK_S):
                        if self._probe.state(index.tag_id) != (index.name, index.state, index.version):
                            del self._tags[name]
                            index = None
                        else:
                            index.checked_at = now
                if index is None:
                    index = self._load_index(name)
                    self._tags[name] = index
        if index.state == "invalid":
            raise TagStateError(f"tag {name} is invalid; it is kept but refused for use")
        return index

    def iov_for(self, tag: str, payload_type: str, run: int) -> IoV:
        """The IoV of ``tag`` that holds ``run`` for ``payload_type`` (exactly one, or PayloadNotFound)."""
        index = self._index(tag)
        firsts = index.firsts.get(payload_type)
        if firsts:
            i = bisect.bisect_right(firsts, run) - 1
            if i >= 0 and run <= index.lasts[payload_type][i]:
                return IoV(payload_type, firsts[i], index.lasts[payload_type][i], index.shas[payload_type][i])
        raise PayloadNotFound(f"no {payload_type} payload for run {run} in {tag}")

    def get(self, tag: str, payload_type: str, run: int) -> Payload:
        """The one payload of ``payload_type`` valid for ``run`` in ``tag``.

        Raises:
            PayloadNotFound: ``no <type> payload for run <run> in <tag>`` when the run falls in a gap or
                outside every range (never the previous payload).
            TagNotFound, TagStateError: unknown tag; invalid tag.
        """
        return self._payload(self.iov_for(tag, payload_type, run).sha256)

    def resolve(self, tag: str, run: int) -> dict[str, Payload]:
        """Every payload type of ``tag`` valid for ``run``; types with a gap at ``run`` are absent."""
        index = self._index(tag)
        out: dict[str, Payload] = {}
        for payload_type, firsts in index.firsts.items():
            i = bisect.bisect_right(firsts, run) - 1
            if i >= 0 and run <= index.lasts[payload_type][i]:
                out[payload_type] = self._payload(index.shas[payload_type][i])
        return out

    # -- defaults, snapshots ---------------------------------------------------------------------------

    def restore_tag(self, record: Mapping[str, Any], payloads: Sequence[Payload], iovs: Sequence[IoV]) -> bool:
        """Recreate a tag exactly (record fields, IoVs, payload bytes, final state) in one transaction.

        Returns False (and changes nothing) if an identical tag already exists; raises TagExists if a
        different tag of that name exists. Used by :mod:`vbes.calibration.snapshot`.
        """
        name = record["name"]
        self._check_tag_name(name)
        by_sha = {p.sha256: p for p in payloads}
        with self._write(f"restore {name}") as conn:
            existing = conn.execute(sa.select(_TAG).where(_TAG.c.name == name)).one_or_none()
            if existing is not None:
                same = (self._iovs(conn, existing.id) == sorted(iovs, key=lambda i: (i.payload_type, i.first))
                        and all(existing._mapping[k] == record.get(k) for k in RECORD_FIELDS))
                if same:
                    return False
                raise TagExists(f"global tag {name!r} already exists here with different content; "
                                "restore it into another store")
            tag_id = self._insert_tag(conn, name, record["boss_release"], record["purpose"], record["parent"],
                                      created=record["created"])
            for payload in payloads:
                self._insert_payload(conn, payload)
            if iovs:
                conn.execute(_IOV.insert(), [{"tag_id": tag_id, "payload_type": i.payload_type,
                                              "first_run": i.first, "last_run": i.last,
                                              "payload_sha256": by_sha[i.sha256].sha256} for i in iovs])
            # replay the tag's history through the same guarded transitions: open -> published -> invalid
            seal = tag_seal(record, iovs)
            if record.get("published_at"):
                conn.execute(_TAG.update().where(_TAG.c.id == tag_id).values(
                    state="published", published_at=record["published_at"], seal=seal))
            if record["state"] == "invalid":
                conn.execute(_TAG.update().where(_TAG.c.id == tag_id).values(
                    state="invalid", invalidated_at=record.get("invalidated_at"), seal=seal))
        return True

    def tag_record(self, name: str) -> dict[str, Any]:
        """The tag's own fields that a snapshot preserves (no database ids or counters)."""
        with self._read() as conn:
            row = self._tag_row(conn, name)
            self._verify_tag(conn, row)
        return {k: row._mapping[k] for k in RECORD_FIELDS}

    def init_defaults(self) -> InitReport:
        """What ``vbes calib init`` does (idempotent): see :func:`vbes.calibration.defaults.init_defaults`."""
        from .defaults import init_defaults

        return init_defaults(self)


RECORD_FIELDS = ("name", "state", "boss_release", "purpose", "parent", "created", "published_at",
                  "invalidated_at")


def _is_lock_conflict(exc: sa.exc.OperationalError) -> bool:
    """True for "someone else holds the lock": SQLite busy, PostgreSQL lock_not_available (55P03)."""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "55P03":
        return True
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)
