"""The conventional archive (issue 4): checksums, names, catalog on SQLite and PostgreSQL, get, datasets, CLI.

Audit/repair under random corruption, SIGKILLed puts and BagIt live in ``test_archive_integrity.py``; the
XRootD cold tier in ``test_archive_xrootd.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import zlib
from pathlib import Path

import pytest
from vbes.archive import Archive, checksum_file, parse_name
from vbes.demo import archive_step
from vbes.archive.checksums import ChecksumStream, checksum_chunks, read_chunks

from vbes.errors import (
    ChecksumMismatch,
    DatasetClosed,
    FileLost,
    InvalidInput,
    InvalidName,
    NameConflict,
    NotFound,
)
from vbes.settings import load_settings


def make_archive(tmp_path: Path, db_url: str | None = None) -> Archive:
    url = db_url or f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return Archive(url, {"hot": str(tmp_path / "hot"), "cold": str(tmp_path / "cold")})


def tier_files(root: Path) -> dict[str, bytes]:
    """Every file under a tier root, relative path -> bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -- checksums ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 65_537, 8 * 1024 * 1024 + 12_345])
def test_checksums_agree_with_md5sum_sha256sum_and_zlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "sample.bin"
    path.write_bytes(data)
    md5sum = subprocess.run(["md5sum", str(path)], check=True, capture_output=True, text=True).stdout.split()[
        0
    ]
    sha256sum = subprocess.run(
        ["sha256sum", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()[0]
    adler = f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"

    for chunk_size in (1000, 8 * 1024 * 1024):  # chunk boundaries must not matter
        sums = checksum_file(path, chunk_size=chunk_size)
        assert (sums.size, sums.md5, sums.adler32, sums.sha256) == (size, md5sum, adler, sha256sum)
    for threads in (0, 1, 2):  # nor how the digests are spread over helper threads
        with path.open("rb") as f, ChecksumStream(threads=threads) as stream:
            for chunk in read_chunks(f, 4096):
                stream.update(chunk)
            assert stream.finish() == checksum_file(path)

    with make_archive(tmp_path) as archive:
        record = archive.put(path, "test:sample.bin").record
    assert (record.size, record.md5, record.adler32, record.sha256) == (size, md5sum, adler, sha256sum)
    # content-addressed: the replica's file name is the SHA-256 of its bytes
    stored = tmp_path / "hot" / sha256sum[:2] / sha256sum[2:4] / sha256sum
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha256sum


def test_adler32_known_value() -> None:
    # the worked example of RFC 1950 / Wikipedia: adler32("Wikipedia") = 0x11E60398
    assert checksum_chunks([b"Wiki", b"pedia"]).adler32 == "11e60398"


# -- names --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "mc:../escape",
        "mc:a/../../b",
        "mc:/etc/passwd",
        "mc:a//b",
        "mc:a/./b",
        "mc:a\\b",
        "mc:nul\x00byte",
        "mc:new\nline",
        "mc:esc\x1b[31mred",
        "mc:bidi\u202egnp.exe",
        "mc: padded",
        "no-scope",
        ":no-scope",
        "mc:",
        "../mc:x",
        "sc ope:x",
    ],
)
def test_escaping_or_malformed_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidName, match="logical name"):
        parse_name(bad)
    src = tmp_path / "f.txt"
    src.write_text("x")
    with make_archive(tmp_path) as archive:
        with pytest.raises(InvalidName):
            archive.put(src, bad)
        assert archive.catalog.counts()["files"] == 0
    assert not (tmp_path / "hot").exists() or tier_files(tmp_path / "hot") == {}


def test_good_names_parse() -> None:
    assert parse_name("mc:jpsi/rhopi/run-8093.h5") == ("mc", "jpsi/rhopi/run-8093.h5")
    assert str(parse_name("data:a:b")) == "data:a:b"  # only the first colon separates the scope


# -- catalog, on SQLite and PostgreSQL --------------------------------------------------------------------


def test_same_name_same_content_is_noop_other_content_refused(tmp_path: Path, db_url: str) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"A" * 1000)
    b.write_bytes(b"B" * 1000)
    with make_archive(tmp_path, db_url) as archive:
        first = archive.put(a, "mc:x.bin", metadata={"seed": 1})
        assert first.created and set(first.written_tiers) == {"hot", "cold"}
        counts = archive.catalog.counts()
        hot = tier_files(tmp_path / "hot")
        again = archive.put(a, "mc:x.bin", metadata={"seed": 2})
        assert not again.created and again.written_tiers == ()
        assert again.record.metadata == {"seed": 1}  # the first put's provenance is kept
        with pytest.raises(NameConflict, match="mc:x.bin"):
            archive.put(b, "mc:x.bin")
        assert archive.catalog.counts() == counts
        assert tier_files(tmp_path / "hot") == hot
        # the same content under a second name shares one file and its replicas
        alias = archive.put(a, "mc:alias.bin")
        assert alias.created and alias.sha256 == first.sha256 and alias.written_tiers == ()
        assert archive.info("mc:alias.bin").names == ("mc:alias.bin", "mc:x.bin")
        assert archive.catalog.counts()["files"] == counts["files"]


def test_catalog_records_metadata_datasets_and_replica_states(tmp_path: Path, db_url: str) -> None:
    parent = tmp_path / "parent.bin"
    parent.write_bytes(b"parent sample")
    child = tmp_path / "child.bin"
    child.write_bytes(b"compressed child")
    with make_archive(tmp_path, db_url) as archive:
        p = archive.put(parent, "mc:parent.bin")
        archive.create_dataset("mc:set1", {"purpose": "test"})
        c = archive.put(
            child,
            "mc:child.bin",
            dataset="mc:set1",
            metadata={"parents": [p.sha256], "calibration_tag": "BOSS-6.6.4-v1", "provenance": "unit"},
        )
        info = archive.info("mc:child.bin")
        assert info.metadata["parents"] == [p.sha256]
        assert info.metadata["calibration_tag"] == "BOSS-6.6.4-v1"
        assert info.created_at.tzinfo is not None
        assert {r.tier: r.state for r in info.replicas} == {"hot": "available", "cold": "available"}
        assert info.status == "ok"

        archive.add_to_dataset("mc:set1", ["mc:parent.bin"])
        closed = archive.close_dataset("mc:set1")
        assert closed.state == "closed" and closed.members == ("mc:child.bin", "mc:parent.bin")
        assert closed.metadata == {"purpose": "test"}
        archive.add_to_dataset("mc:set1", ["mc:child.bin"])  # already a member: no change, no error
        other = tmp_path / "other.bin"
        other.write_bytes(b"other")
        archive.put(other, "mc:other.bin")
        with pytest.raises(DatasetClosed, match="mc:set1"):
            archive.add_to_dataset("mc:set1", ["mc:other.bin"])
        with pytest.raises(DatasetClosed):
            archive.put(other, "mc:other.bin", dataset="mc:set1")
        assert archive.dataset("mc:set1").members == ("mc:child.bin", "mc:parent.bin")
        with pytest.raises(NotFound, match="mc:nope"):
            archive.add_to_dataset("mc:nope", ["mc:other.bin"])
        with pytest.raises(NotFound, match="mc:missing"):
            archive.create_dataset("mc:set2")
            archive.add_to_dataset("mc:set2", ["mc:missing"])

        # a file is lost only when no replica is available; it stays in the catalog
        archive.catalog.set_replica(c.sha256, "hot", "suspicious", "test")
        assert archive.info("mc:child.bin").status == "degraded"
        archive.catalog.set_replica(c.sha256, "hot", "bad", "test")
        archive.catalog.set_replica(c.sha256, "cold", "bad", "test")
        assert archive.info("mc:child.bin").status == "lost"
        with pytest.raises(FileLost, match="mc:child.bin"):
            archive.get("mc:child.bin", tmp_path / "out.bin")
        assert not (tmp_path / "out.bin").exists()
        assert [n for n, _ in archive.ls("mc")] == ["mc:child.bin", "mc:other.bin", "mc:parent.bin"]


def test_get_verifies_and_falls_back_to_another_replica(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    data = os.urandom(100_000)
    src.write_bytes(data)
    with make_archive(tmp_path) as archive:
        sha = archive.put(src, "mc:f.bin").sha256
        hot = tmp_path / "hot" / sha[:2] / sha[2:4] / sha
        corrupted = bytearray(data)
        corrupted[5000] ^= 0x01
        assert hot.stat().st_mode & 0o777 == 0o444  # stored read-only
        hot.chmod(0o644)
        hot.write_bytes(bytes(corrupted))
        out = tmp_path / "out" / "f.bin"
        archive.get("mc:f.bin", out)
        assert out.read_bytes() == data
        # the replica that failed is flagged for the next audit, not condemned
        assert archive.info("mc:f.bin").replica("hot").state == "suspicious"  # type: ignore[union-attr]
        with pytest.raises(InvalidInput, match="already exists"):
            archive.get("mc:f.bin", out)
        # both replicas corrupt: an error, and no output file at all
        cold = tmp_path / "cold" / sha[:2] / sha[2:4] / sha
        cold.chmod(0o644)
        cold.write_bytes(data[:-1])
        out2 = tmp_path / "out2.bin"
        with pytest.raises(ChecksumMismatch, match="mc:f.bin"):
            archive.get("mc:f.bin", out2)
        assert not out2.exists() and not list(tmp_path.glob(".out2.bin*"))


def test_missing_replica_is_completed_by_retry_and_repair(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"only hot first")
    with make_archive(tmp_path) as archive:
        res = archive.put(src, "mc:f.bin", tiers=["hot"])
        assert res.written_tiers == ("hot",)
        report = archive.audit()
        # below the replica policy (a replica on every tier) is a finding (issue 8)
        assert [m["tier"] for m in report.missing_replicas] == ["cold"] and report.exit_code == 3
        report = archive.audit(repair=True)
        assert [r["tier"] for r in report.repaired] == ["cold"] and report.exit_code == 0
        assert {r.tier: r.state for r in archive.info("mc:f.bin").replicas} == {
            "hot": "available",
            "cold": "available",
        }
        src2 = tmp_path / "g.bin"
        src2.write_bytes(b"second")
        archive.put(src2, "mc:g.bin", tiers=["hot"])
        assert archive.put(src2, "mc:g.bin").written_tiers == ("cold",)  # a retry completes the replicas


# -- command line -----------------------------------------------------------------------------------------


def test_cli_put_get_info_ls_datasets(
    tmp_path: Path, vbes_home: Path, run_cli, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBES_ARCHIVE_URL", db_url)
    src = tmp_path / "events.h5"
    src.write_bytes(os.urandom(3000))
    parent = tmp_path / "parent.bin"
    parent.write_bytes(b"the generator input")
    assert run_cli("archive", "put", parent, "--name", "mc:parent.bin").exit_code == 0
    parent_sha = hashlib.sha256(b"the generator input").hexdigest()  # a parent must be archived (issue 8)
    assert run_cli("archive", "dataset", "create", "mc:run1", "--meta", "channel=rhopi").exit_code == 0
    res = run_cli(
        "archive",
        "put",
        src,
        "--name",
        "mc:events.h5",
        "--dataset",
        "mc:run1",
        "--meta",
        "seed=7",
        "--parent",
        parent_sha,
        "--calib-tag",
        "BOSS-6.6.4",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    put = json.loads(res.stdout)
    assert put["created"] is True and put["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()

    info = json.loads(run_cli("archive", "info", "mc:events.h5", "--json").stdout)
    assert info["size"] == 3000
    assert info["md5"] == hashlib.md5(src.read_bytes()).hexdigest()
    assert info["adler32"] == f"{zlib.adler32(src.read_bytes()):08x}"
    assert info["metadata"] == {"seed": 7, "parents": [parent_sha], "calibration_tag": "BOSS-6.6.4"}
    assert sorted((r["tier"], r["state"]) for r in info["replicas"]) == [
        ("cold", "available"),
        ("hot", "available"),
    ]

    out = tmp_path / "back.h5"
    assert run_cli("archive", "get", "mc:events.h5", "-o", out).exit_code == 0
    assert out.read_bytes() == src.read_bytes()
    assert "mc:events.h5" in run_cli("archive", "ls").stdout
    assert run_cli("archive", "dataset", "close", "mc:run1").exit_code == 0
    shown = json.loads(run_cli("archive", "dataset", "show", "mc:run1", "--json").stdout)
    assert shown["state"] == "closed" and [f["name"] for f in shown["files"]] == ["mc:events.h5"]

    other = tmp_path / "other.h5"
    other.write_bytes(b"other")
    res = run_cli("archive", "put", other, "--name", "mc:other.h5", "--dataset", "mc:run1")
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "closed" in res.stderr
    res = run_cli("archive", "put", other, "--name", "mc:events.h5")
    assert res.exit_code == 1 and "already names content" in res.stderr
    res = run_cli("archive", "put", tmp_path / "nope.h5", "--name", "mc:nope.h5")
    assert res.exit_code != 0 and "nope.h5" in res.stderr
    res = run_cli("archive", "info", "mc:unknown")
    assert res.exit_code == 1 and "mc:unknown" in res.stderr
    assert run_cli("archive", "audit").exit_code == 0


def test_catalog_url_comes_from_environment(
    tmp_path: Path, vbes_home: Path, run_cli, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBES_ARCHIVE_URL", pg_url.replace("postgresql+psycopg://", "postgresql://"))
    src = tmp_path / "a.txt"
    src.write_text("pg")
    assert run_cli("archive", "put", src, "--name", "x:a.txt").exit_code == 0
    assert not (vbes_home / "archive.sqlite").exists()
    with Archive(pg_url, {"hot": str(vbes_home / "archive" / "hot")}) as archive:
        assert archive.info("x:a.txt").size == 2


def test_demo_step_archives_given_files_and_audits(
    tmp_path: Path, vbes_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings()
    files = []
    for i in range(2):
        f = tmp_path / f"sample{i}.h5"
        f.write_bytes(os.urandom(1000 + i))
        files.append(f)
    report = archive_step(settings, files=files, scope="demo")
    out = capsys.readouterr().out
    assert report.exit_code == 0 and report.files_checked == 2
    assert "demo:sample0.h5" in out and "closed" in out and "audit" in out
    again = archive_step(settings, files=files, scope="demo")  # re-running changes nothing
    assert again.exit_code == 0 and "already archived" in capsys.readouterr().out
    default = archive_step(settings)  # no files, no calibration tag yet: the calibration bookkeeping table
    assert default.exit_code == 0
    from vbes.calibration import DEFAULT_TAG, CalibrationStore

    with CalibrationStore.from_settings(settings) as store:
        store.init_defaults()
    assert archive_step(settings).exit_code == 0  # now the default tag's snapshot
    with Archive.from_settings(settings) as archive:
        names = [n for n, _ in archive.ls("demo")]
        snapshot = archive.info(f"demo:calibration/{DEFAULT_TAG}.tar")
    assert "demo:calibration/besiii-offlinedb-calibration-6.6.4.tsv" in names
    assert snapshot.metadata["calibration_tag"] == DEFAULT_TAG and snapshot.size % 512 == 0  # a tar file
