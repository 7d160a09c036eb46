"""Issue 8, calibration store and command line: each reported case, on SQLite and PostgreSQL.

2. raw SQL cannot reopen a published tag nor swap a payload, whatever the client's pragmas; a tag that was
   changed behind the guards is refused by every read (its seal); stores of schema 1 are migrated and sealed.
10. a store URL that is not a database, or lies in a missing folder, is one line "cannot open store ...";
   argument-parser errors are one line for every subcommand.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from vbes.archive import Archive
from vbes.calibration import CalibrationStore, Payload, export_snapshot
from vbes.calibration.store import SCHEMA_VERSION, normalize_url

from vbes.errors import (
    CorruptStore,
    DatasetClosed,
    InvalidInput,
    NameConflict,
    NotFound,
    StoreUnavailable,
    TagSealBroken,
    TagStateError,
)

TAG = "P"


@pytest.fixture
def store(db_url: str) -> Iterator[CalibrationStore]:
    with CalibrationStore(db_url) as s:
        s.create_tag(TAG, "6.6.4")
        s.put(TAG, "EsTime", 100, 200, {"t0": 1.5}, {"serno": 1})
        s.put(TAG, "MdcCal", 100, 300, {"gain": 2.0}, {"serno": 2})
        s.publish_tag(TAG)
        yield s


def _sqlite_path(store: CalibrationStore) -> str:
    database = store.engine.url.database
    assert database
    return database


def _behind_the_guards(store: CalibrationStore, *statements: str) -> None:
    """Run SQL with every guard bypassed: SQLite triggers dropped, PostgreSQL replica role (superuser)."""
    if store.dialect == "sqlite":
        conn = sqlite3.connect(_sqlite_path(store), isolation_level=None)
        try:
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                conn.execute(f'DROP TRIGGER "{name}"')
            for sql in statements:
                conn.execute(sql)
        finally:
            conn.close()
        return
    engine = sa.create_engine(normalize_url(store.url))
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        for sql in statements:
            conn.exec_driver_sql(sql)
    engine.dispose()


# --- 2: raw SQL ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recursive", ["OFF", "ON"])
def test_sqlite_shell_insert_or_replace_cannot_reopen_a_tag_nor_swap_a_payload(tmp_path: Path,
                                                                                 recursive: str) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    with CalibrationStore(url) as s:
        s.create_tag(TAG, "6.6.4")
        payload = s.put(TAG, "EsTime", 100, 200, {"t0": 1.5})
        s.publish_tag(TAG)
    shell = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    shell.execute("PRAGMA foreign_keys = OFF")  # as the sqlite3 shell runs
    shell.execute(f"PRAGMA recursive_triggers = {recursive}")
    with pytest.raises(sqlite3.IntegrityError, match="would replace a published or invalid tag"):
        shell.execute("INSERT OR REPLACE INTO global_tag (id, name, state, boss_release, purpose, created, "
                      "version) SELECT id, name, 'open', boss_release, purpose, created, version FROM global_tag")
    with pytest.raises(sqlite3.IntegrityError, match="payloads are immutable"):
        shell.execute("INSERT OR REPLACE INTO payload (sha256, payload_type, blob, created) "
                      "VALUES (?, 'EsTime', X'00', 'now')", (payload.sha256,))
    with pytest.raises(sqlite3.IntegrityError, match="its IoVs cannot change"):
        shell.execute("INSERT OR REPLACE INTO iov SELECT * FROM iov")
    shell.close()
    with CalibrationStore(url) as s:
        assert s.tag_info(TAG)["state"] == "published"
        assert s.get(TAG, "EsTime", 150).constants == {"t0": 1.5}


def test_postgresql_refuses_upserts_on_a_published_tag(pg_url: str) -> None:
    with CalibrationStore(pg_url) as s:
        s.create_tag(TAG, "6.6.4")
        s.put(TAG, "EsTime", 100, 200, {"t0": 1.5})
        s.publish_tag(TAG)
    engine = sa.create_engine(normalize_url(pg_url))
    attempts = [
        "INSERT INTO global_tag SELECT * FROM global_tag ON CONFLICT (id) DO UPDATE SET state = 'open'",
        "INSERT INTO payload SELECT * FROM payload ON CONFLICT (sha256) DO UPDATE SET blob = '\\x00'",
        "INSERT INTO iov SELECT * FROM iov ON CONFLICT (id) DO UPDATE SET last_run = 150",
        "INSERT INTO global_tag (name, state, boss_release, purpose, created, version, seal) "
        "VALUES ('Q', 'published', '', '', 'now', 0, NULL)",
    ]
    for sql in attempts:
        with pytest.raises(sa.exc.DBAPIError, match="vbes:immutable"), engine.begin() as conn:
            conn.exec_driver_sql(sql)
    engine.dispose()


def test_every_read_of_a_published_tag_checks_its_seal(store: CalibrationStore, tmp_path: Path) -> None:
    assert store.get(TAG, "EsTime", 150).metadata["serno"] == 1  # cached in this process
    _behind_the_guards(store, "UPDATE iov SET last_run = 250 WHERE payload_type = 'EsTime'")
    with CalibrationStore(store.url) as fresh:
        reads = {
            "get": lambda: fresh.get(TAG, "EsTime", 150),
            "iov_for": lambda: fresh.iov_for(TAG, "MdcCal", 150),
            "resolve": lambda: fresh.resolve(TAG, 150),
            "iovs": lambda: fresh.iovs(TAG),
            "tag_info": lambda: fresh.tag_info(TAG),
            "snapshot": lambda: export_snapshot(fresh, TAG, tmp_path / "p.tar"),
            "clone": lambda: fresh.clone_tag(TAG, "copy"),
            "invalidate": lambda: fresh.invalidate_tag(TAG),
        }
        for what, read in reads.items():
            with pytest.raises(TagSealBroken, match=f"tag {TAG} .* is published but its content no longer "
                                                    "matches the seal"):
                read()
            assert what
        assert not (tmp_path / "p.tar").exists()
        assert "copy" not in {t["name"] for t in fresh.list_tags()}


def test_a_payload_swapped_behind_the_guards_is_refused(store: CalibrationStore) -> None:
    sha = store.get(TAG, "EsTime", 150).sha256
    other = store.put_payload(Payload.build("EsTime", {"t0": 9.9}, {"serno": 1}))
    _behind_the_guards(store, f"UPDATE payload SET blob = (SELECT blob FROM payload WHERE sha256 = "
                              f"'{other.sha256}') WHERE sha256 = '{sha}'")
    with CalibrationStore(store.url) as fresh:
        with pytest.raises(CorruptStore, match=f"payload {sha} is corrupt in .*: payload bytes hash to {other.sha256}, not {sha}"):
            fresh.get(TAG, "EsTime", 150)


def test_a_tag_reopened_behind_the_guards_is_refused(store: CalibrationStore) -> None:
    _behind_the_guards(store, f"UPDATE global_tag SET state = 'open' WHERE name = '{TAG}'")
    with CalibrationStore(store.url) as fresh:
        with pytest.raises(TagSealBroken, match="is open but carries the seal of a published tag"):
            fresh.get(TAG, "EsTime", 150)
        with pytest.raises(TagSealBroken, match="reopened outside vbes"):
            fresh.put(TAG, "EsTime", 300, 400, {"t0": 2.0})
        with pytest.raises(TagSealBroken):
            fresh.publish_tag(TAG)


def test_seal_detection_on_the_command_line(store: CalibrationStore, vbes_home: Path, run_cli: Any) -> None:
    _behind_the_guards(store, "DELETE FROM iov WHERE payload_type = 'MdcCal'")
    result = run_cli("calib", "--url", store.url, "get", "--tag", TAG, "--type", "EsTime", "--run", "150")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("vbes: error: tag P in ") and result.stderr.count("\n") == 1
    assert "no longer matches the seal" in result.stderr


def test_a_schema_1_store_is_migrated_and_its_published_tags_sealed(store: CalibrationStore) -> None:
    # make the store what schema 1 was: no seal column, schema_version 1 (the migration drops every guard)
    store.create_tag("O")
    store.put("O", "EsTime", 1, 9, {"t0": 3.0})
    store.close()
    column_drop = "ALTER TABLE global_tag DROP COLUMN seal"
    _behind_the_guards(store, "UPDATE vbes_calib_schema SET value = '1'", column_drop)
    with CalibrationStore(store.url) as migrated:
        assert migrated.get(TAG, "EsTime", 150).metadata["serno"] == 1
        assert migrated.tag_info("O")["state"] == "open"
        migrated.put("O", "EsTime", 10, 19, {"t0": 4.0})  # open tags stay open and writable
        migrated.publish_tag("O")
        assert migrated.get("O", "EsTime", 15).constants == {"t0": 4.0}
        with migrated.engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT value FROM vbes_calib_schema").scalar()
            seals = dict(conn.exec_driver_sql("SELECT name, seal FROM global_tag").all())
        assert version == str(SCHEMA_VERSION)
        assert all(len(seal) == 64 for seal in seals.values()), seals
        with pytest.raises(TagStateError, match="cannot change"):
            migrated.put(TAG, "EsTime", 300, 400, {"t0": 2.0})


# --- 10: store URLs --------------------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path, vbes_home: Path, run_cli: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "random.bin"
    junk.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(StoreUnavailable, match=r"cannot open store sqlite:///.*random\.bin: not a database"):
        CalibrationStore(f"sqlite:///{junk}")
    calib = run_cli("calib", "--url", f"sqlite:///{junk}", "get", "--tag", "T", "--type", "EsTime", "--run", "1")
    monkeypatch.setenv("VBES_ARCHIVE_URL", f"sqlite:///{junk}")
    archive = run_cli("archive", "ls")
    for result in (calib, archive):
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.startswith(f"vbes: error: cannot open store sqlite:///{junk}: not a database")
        assert result.stderr.count("\n") == 1
    assert junk.read_bytes() == bytes(range(256)) * 40  # not touched


def test_a_store_in_a_missing_folder_is_refused_and_nothing_is_created(tmp_path: Path, vbes_home: Path,
                                                                        run_cli: Any) -> None:
    missing = tmp_path / "missing" / "dir"
    result = run_cli("calib", "--url", f"sqlite:///{missing / 'x.sqlite'}", "get", "--tag", "T", "--type",
                     "EsTime", "--run", "1")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"vbes: error: cannot open store sqlite:///{missing / 'x.sqlite'}: ")
    assert "no global tag" not in result.stderr
    assert not (tmp_path / "missing").exists()


def _every_command(group: click.Group, ctx: click.Context, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None:
            continue
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _every_command(command, click.Context(command, parent=ctx, info_name=name), (*path, name))


def test_usage_errors_are_one_line_for_every_subcommand(vbes_home: Path, run_cli: Any) -> None:
    from vbes.cli import cli

    commands = list(_every_command(cli, click.Context(cli, info_name="vbes"), ()))
    assert ("archive", "put") in commands and ("calib", "tag", "publish") in commands
    for command in [(), *commands]:
        result = run_cli(*command, "--no-such-option")
        assert result.exit_code == 2, (command, result)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert result.stderr.startswith("vbes: error: ") and "--no-such-option" in result.stderr, result.stderr
        assert "Usage:" not in result.stderr
    missing = run_cli("archive", "put")
    assert missing.stderr == ("vbes: error: vbes archive put: Missing argument 'FILE'. "
                              "(see 'vbes archive put --help')\n")


# --- archive: 5, 6, 7, 8, 9 ------------------------------------------------------------------------------


def _archive(tmp_path: Path, db_url: str) -> Archive:
    return Archive(db_url, {"hot": str(tmp_path / "hot"), "cold": str(tmp_path / "cold")})


def _content_files(root: Path) -> list[Path]:
    """Every file of a tier, temporary ones included."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def _condemn(archive: Archive, sha: str) -> None:
    """Both replicas destroyed and confirmed bad by an audit."""
    for tier in archive.tiers.values():
        path = Path(tier.content_path(sha))
        path.chmod(0o644)
        path.write_bytes(b"rot")
    report = archive.audit()
    assert len(report.bad) == 2 and len(report.lost) == 1


@pytest.mark.parametrize("new_name", [False, True], ids=["same-name", "new-name"])
def test_putting_known_bytes_again_heals_every_replica(tmp_path: Path, db_url: str, new_name: bool,
                                                        vbes_home: Path, run_cli: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"the only copy of run 8093" * 100)
    monkeypatch.setenv("VBES_ARCHIVE_URL", db_url)
    monkeypatch.setenv("VBES_ARCHIVE_HOT", str(tmp_path / "hot"))
    monkeypatch.setenv("VBES_ARCHIVE_COLD", str(tmp_path / "cold"))
    assert run_cli("archive", "put", src, "--name", "mc:f.bin").exit_code == 0
    with _archive(tmp_path, db_url) as archive:
        sha = archive.info("mc:f.bin").sha256
        _condemn(archive, sha)
        assert archive.info("mc:f.bin").status == "lost"
    result = run_cli("archive", "put", src, "--name", "mc:g.bin" if new_name else "mc:f.bin", "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(json.loads(result.stdout)["written_tiers"]) == ["cold", "hot"]
    with _archive(tmp_path, db_url) as archive:
        record = archive.info("mc:f.bin")
        assert record.status == "ok" and {r.state for r in record.replicas} == {"available"}
        for tier in archive.tiers.values():
            assert Path(tier.content_path(sha)).read_bytes() == src.read_bytes()
        assert archive.audit().exit_code == 0


def test_a_refused_put_writes_nothing_and_audit_reports_dark_files(tmp_path: Path, db_url: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"refused content")
    with _archive(tmp_path, db_url) as archive:
        (tmp_path / "a.bin").write_bytes(b"a")
        archive.put(tmp_path / "a.bin", "mc:a.bin")
        archive.create_dataset("mc:closed")
        archive.close_dataset("mc:closed")
        before = _content_files(tmp_path / "hot") + _content_files(tmp_path / "cold")
        with pytest.raises(NotFound, match="no dataset mc:nope in the archive catalog"):
            archive.put(src, "mc:f.bin", dataset="mc:nope")
        with pytest.raises(DatasetClosed, match="dataset mc:closed is closed; cannot add mc:f.bin"):
            archive.put(src, "mc:f.bin", dataset="mc:closed")
        with pytest.raises(NameConflict, match="mc:a.bin already names content"):
            archive.put(src, "mc:a.bin")
        assert _content_files(tmp_path / "hot") + _content_files(tmp_path / "cold") == before
        assert archive.audit().exit_code == 0
        # a file nobody catalogued is a finding
        (tmp_path / "hot" / "stray.dat").write_bytes(b"dark")
        report = archive.audit()
        assert [d["kind"] for d in report.dark] == ["stray"] and report.exit_code == 3


def test_a_put_that_stopped_after_the_hot_write_is_below_policy(tmp_path: Path, db_url: str,
                                                                vbes_home: Path, run_cli: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"hot only" * 1000)
    with _archive(tmp_path, db_url) as archive:
        archive.put(src, "mc:f.bin", tiers=["hot"])  # what a put killed before the cold copy leaves
    monkeypatch.setenv("VBES_ARCHIVE_URL", db_url)
    monkeypatch.setenv("VBES_ARCHIVE_HOT", str(tmp_path / "hot"))
    monkeypatch.setenv("VBES_ARCHIVE_COLD", str(tmp_path / "cold"))
    info = run_cli("archive", "info", "mc:f.bin")
    assert "status      degraded" in info.stdout and "cold: none (below replica policy)" in info.stdout
    audit = run_cli("archive", "audit")
    assert audit.exit_code == 3
    assert "below policy   mc:f.bin  cold  below replica policy: no replica on this tier" in audit.stdout
    assert "1 below replica policy" in audit.stdout
    repaired = run_cli("archive", "audit", "--repair")
    assert repaired.exit_code == 0, repaired.stdout + repaired.stderr
    assert run_cli("archive", "audit").exit_code == 0
    assert "status      ok" in run_cli("archive", "info", "mc:f.bin").stdout


@pytest.mark.parametrize("parent, error, message", [
    ("notahash", InvalidInput, "parent 'notahash' is not a SHA-256 \\(64 hex digits\\)"),
    ("ab" * 31, InvalidInput, "is not a SHA-256"),
    ("ab" * 32, NotFound, "parent sha256=(ab){32} is not in the archive"),
])
def test_a_parent_must_be_an_archived_sha256(tmp_path: Path, db_url: str, parent: str,
                                             error: type[Exception], message: str) -> None:
    src = tmp_path / "child.bin"
    src.write_bytes(b"child")
    with _archive(tmp_path, db_url) as archive:
        with pytest.raises(error, match=message):
            archive.put(src, "mc:child.bin", parents=[parent])
        assert archive.ls() == [] and _content_files(tmp_path / "hot") == []
        mother = tmp_path / "mother.bin"
        mother.write_bytes(b"mother")
        sha = archive.put(mother, "mc:mother.bin").sha256
        record = archive.put(src, "mc:child.bin", parents=[sha.upper()]).record
        assert record.metadata["parents"] == [sha]


def test_cli_refuses_a_parent_that_is_not_a_hash(tmp_path: Path, vbes_home: Path, run_cli: Any) -> None:
    src = tmp_path / "child.bin"
    src.write_bytes(b"child")
    result = run_cli("archive", "put", src, "--name", "mc:child.bin", "--parent", "notahash")
    assert result.exit_code == 1
    assert result.stderr == "vbes: error: parent 'notahash' is not a SHA-256 (64 hex digits)\n"
    assert run_cli("archive", "ls").stdout == ""


def test_a_killed_get_leaves_no_temporary_file_that_survives_the_next_get(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1 << 16))
    out = tmp_path / "out"
    out.mkdir()
    # what a get killed mid-write leaves where the filesystem has no unnamed files: a dead writer's temp
    dead = out / f".f.bin.vbes-get-{socket.gethostname()}-999999999-{'0' * 32}.part"
    dead.write_bytes(b"half")
    with _archive(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite'}") as archive:
        archive.put(src, "mc:f.bin")
        archive.get("mc:f.bin", out / "other.bin")
    assert sorted(p.name for p in out.iterdir()) == ["other.bin"]
    assert (out / "other.bin").read_bytes() == src.read_bytes()
