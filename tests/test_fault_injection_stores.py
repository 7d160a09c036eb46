"""Fault injection on the calibration store: raw SQL against every table, on SQLite and PostgreSQL.

For each table of the store's metadata and each row that belongs to a published tag (its record, its IoVs,
its payloads, the schema record), every column is changed by UPDATE and by REPLACE (SQLite ``INSERT OR
REPLACE`` / ``UPDATE OR REPLACE``, PostgreSQL ``INSERT ... ON CONFLICT DO UPDATE``), the row is deleted and a
sibling row is inserted. Two kinds of client:

* ``guarded``: a raw SQL client as the sqlite3 shell is (foreign keys OFF; recursive triggers off and on) or
  a plain PostgreSQL session: every change to the published tag must be refused by the database;
* ``bypassed``: the guards are gone (SQLite: the triggers dropped; PostgreSQL: a superuser's
  ``session_replication_role = replica``, which skips triggers and foreign keys): whatever the change, the
  next read of the tag must either see the tag unchanged or fail loudly (the seal, a payload's hash).

After every attack the tables are put back as they were, so each attack starts from the same published tag.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from vbes.calibration import CalibrationStore
from vbes.calibration.store import TAG_STATES, _Base, normalize_url

from vbes.errors import CorruptStore, PayloadNotFound, TagNotFound

TABLES = list(_Base.metadata.sorted_tables)
TAG = "P"
#: failures that are loud: the tag or a payload is refused with a specific error, never served changed
LOUD = (CorruptStore, TagNotFound, PayloadNotFound)


def _fill(store: CalibrationStore) -> None:
    store.create_tag(TAG, "6.6.4", "published for the attacks")
    store.put(TAG, "EsTime", 100, 200, {"t0": 1.5}, {"serno": 1})
    store.put(TAG, "MdcCal", 100, 300, {"gain": [1.0, 2.0]}, {"serno": 2})
    store.publish_tag(TAG)
    store.create_tag("O", "6.6.4", "open neighbour")
    store.put("O", "EsTime", 100, 200, {"t0": 9.5}, {"serno": 3})


def _content(store: CalibrationStore) -> tuple[Any, ...]:
    """What a reader is served about the published tag (raises what a reader would get)."""
    record = store.tag_record(TAG)
    iovs = store.iovs(TAG)
    blobs = tuple(store.payload(i.sha256).blob for i in iovs)
    state = record.pop("state")
    record.pop("invalidated_at")  # invalidating a published tag is a permitted change
    return state, tuple(sorted(record.items())), tuple(iovs), blobs


def _changed(column: sa.Column[Any], value: Any) -> list[Any]:
    """Other values of the column's type (same length for strings, so a VARCHAR(n) accepts them)."""
    if column.name == "state":
        return [s for s in TAG_STATES if s != value]
    if value is None:
        return ["x"]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, -value - 7]
    if isinstance(value, (bytes, memoryview)):
        data = bytes(value)
        return [data[:-1] + bytes([data[-1] ^ 1])]
    text = str(value)
    return [text[:-1] + ("1" if text[-1] != "1" else "2")]


@dataclass
class Raw:
    """A raw SQL client on the store's database, and the original rows to put back."""

    engine: sa.Engine
    dialect: str
    original: dict[str, list[dict[str, Any]]]
    triggers: list[str]

    @contextmanager
    def session(self, bypass: bool) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            if bypass:
                self._guards(conn, on=False)
            yield conn

    def _guards(self, conn: sa.Connection, on: bool) -> None:
        if self.dialect == "postgresql":
            # LOCAL: the setting ends with the transaction, never leaks into the next session on this connection
            conn.exec_driver_sql(f"SET LOCAL session_replication_role = {'origin' if on else 'replica'}")
            return
        if on:
            present = set(conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'trigger'").scalars())
            for ddl in self.triggers:
                if ddl not in present:
                    conn.exec_driver_sql(ddl)
        else:
            for name in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars():
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')

    def reset(self) -> None:
        """Every table back to its original rows, the guards back in place."""
        with self.engine.begin() as conn:
            self._guards(conn, on=False)
            for table in reversed(TABLES):
                conn.execute(table.delete())
            for table in TABLES:
                if self.original[table.name]:
                    conn.execute(table.insert(), self.original[table.name])
            self._guards(conn, on=True)


def _belongs(table: sa.Table, row: dict[str, Any], tag_id: int, shas: set[str]) -> bool:
    """Whether a row is part of the published tag (or is the schema record every read relies on)."""
    if "tag_id" in row:
        return bool(row["tag_id"] == tag_id)
    if "sha256" in row:
        return row["sha256"] in shas
    if "name" in row and "state" in row:
        return bool(row["id"] == tag_id)
    return True


@pytest.fixture(params=["sqlite-fk-off", "sqlite-fk-off-recursive", "postgresql"])
def attacked(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[CalibrationStore, Raw]]:
    if request.param.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'store.sqlite'}"
        recursive = request.param.endswith("recursive")
        engine = sa.create_engine(url)

        @sa.event.listens_for(engine, "connect")
        def _like_the_shell(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA foreign_keys = OFF")
            dbapi_conn.execute(f"PRAGMA recursive_triggers = {'ON' if recursive else 'OFF'}")
    else:
        url = request.getfixturevalue("pg_url")
        engine = sa.create_engine(normalize_url(url))
    store = CalibrationStore(url, cache=False)
    _fill(store)
    with engine.connect() as conn:
        original = {t.name: [dict(r._mapping) for r in conn.execute(sa.select(t))] for t in TABLES}
        triggers = [] if engine.dialect.name != "sqlite" else list(
            conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'trigger'").scalars())
    raw = Raw(engine, engine.dialect.name, original, triggers)
    try:
        yield store, raw
    finally:
        store.close()
        engine.dispose()


def _attacks(raw: Raw) -> Iterator[tuple[str, str, Callable[[sa.Connection], Any]]]:
    """Every (table, label, statement) aimed at the published tag's rows, built from the metadata."""
    tag_row = next(r for r in raw.original["global_tag"] if r["name"] == TAG)
    shas = {r["payload_sha256"] for r in raw.original["iov"] if r["tag_id"] == tag_row["id"]}
    for table in TABLES:
        key = [c.name for c in table.primary_key.columns]
        for row in raw.original[table.name]:
            if not _belongs(table, row, tag_row["id"], shas):
                continue
            where = sa.and_(*(table.c[k] == row[k] for k in key))
            label = f"{table.name}[{','.join(str(row[k])[:12] for k in key)}]"
            yield table.name, f"DELETE {label}", lambda c, w=where, t=table: c.execute(t.delete().where(w))
            sibling = dict(row)
            for k in key:
                sibling[k] = _changed(table.c[k], row[k])[-1]
            yield table.name, f"INSERT sibling of {label}", lambda c, t=table, v=sibling: c.execute(t.insert().values(**v))
            for column in table.columns:
                for value in _changed(column, row[column.name]):
                    what = f"{label}.{column.name}={str(value)[:16]}"
                    update = table.update().where(where).values({column.name: value})
                    yield table.name, f"UPDATE {what}", lambda c, s=update: c.execute(s)
                    replaced = {**row, column.name: value}
                    if raw.dialect == "sqlite":
                        yield table.name, f"UPDATE OR REPLACE {what}", lambda c, s=update: c.execute(s.prefix_with("OR REPLACE"))
                        yield table.name, f"INSERT OR REPLACE {what}", lambda c, t=table, v=replaced: c.execute(
                            t.insert().prefix_with("OR REPLACE").values(**v))
                    else:
                        upsert = pg_dialect.insert(table).values(**replaced)
                        upsert = upsert.on_conflict_do_update(
                            index_elements=key, set_={column.name: upsert.excluded[column.name]})
                        yield table.name, f"INSERT ON CONFLICT DO UPDATE {what}", lambda c, s=upsert: c.execute(s)


@pytest.mark.parametrize("bypass", [False, True], ids=["guarded", "bypassed"])
def test_raw_sql_on_every_table_of_a_published_tag_is_refused_or_detected(
        attacked: tuple[CalibrationStore, Raw], bypass: bool) -> None:
    store, raw = attacked
    before = _content(store)
    outcomes: dict[str, list[str]] = {"refused": [], "detected": [], "unchanged": []}
    silent = []
    attacks = list(_attacks(raw))
    assert {table for table, _label, _attack in attacks} == {t.name for t in TABLES}
    for _table, label, attack in attacks:
        try:
            with raw.session(bypass) as conn:
                attack(conn)
        except sa.exc.DBAPIError:
            outcomes["refused"].append(label)
            continue
        try:
            after = _content(store)
        except LOUD:
            outcomes["detected"].append(label)
        else:
            if after == before or (after[0] == "invalid" and after[1:] == before[1:]):
                outcomes["unchanged"].append(label)
            else:
                silent.append(label)
        raw.reset()
        assert _content(store) == before, f"reset after {label}"
    assert not silent, f"changed without a word: {silent}"
    if not bypass:
        # a guarded database refuses every change to the tag itself: nothing is left to the seal
        assert not outcomes["detected"], outcomes["detected"]
    else:
        assert outcomes["detected"], "the bypassed attacks must include changes the seal catches"
