"""The calibration store: payload identity, the talk's table, lookups, immutability, snapshots, specs, CLI.

Expected answers come from the bookkeeping table itself (``besiii-offlinedb-calibration-6.6.4.tsv``), read
by hand: e.g. EsTime 9947..10878 is SerNo 257, EsTime has nothing between 10878 and 11414.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from vbes.calibration import CalibrationStore, Payload, apply_tag_spec, export_snapshot, restore_snapshot
from vbes.calibration.bookkeeping import import_bookkeeping
from vbes.calibration.defaults import DEFAULT_TAG, TALK_TABLE

from vbes.errors import (
    InvalidInput,
    InvalidIoV,
    IoVOverlap,
    PayloadNotFound,
    SnapshotError,
    TagExists,
    TagNotFound,
    TagStateError,
)

TAG = DEFAULT_TAG


@pytest.fixture
def store(db_url: str) -> Iterator[CalibrationStore]:
    s = CalibrationStore(db_url)
    yield s
    s.close()


@pytest.fixture
def talk_store(store: CalibrationStore) -> CalibrationStore:
    import_bookkeeping(store, TALK_TABLE, TAG)
    return store


# --- payload identity ------------------------------------------------------------------------------------


def test_payload_hash_is_sha256_of_the_documented_canonical_bytes() -> None:
    # built by hand from the format description, not by the encoder
    expected = (b"vbes-payload/1\n"
                b'{"constants":{"gain":{"__ndarray__":{"dtype":"<f8","nbytes":16,"offset":0,"shape":[2]}},'
                b'"name":"barrel"},"metadata":{"serno":257,"stver":"6.6.2b"},"payload_type":"Emc"}\n'
                + struct.pack("<2d", 1.5, -2.0))
    p = Payload.build("Emc", {"name": "barrel", "gain": np.array([1.5, -2.0], dtype=">f8")},
                      {"stver": "6.6.2b", "serno": 257, "created": "2020-01-01T00:00:00+00:00"})
    assert p.blob == expected
    assert p.sha256 == hashlib.sha256(expected).hexdigest()
    assert p.metadata["created"] == "2020-01-01T00:00:00+00:00"  # kept, but not part of the identity


def test_equal_constants_with_different_serno_are_different_payloads() -> None:
    a = Payload.build("EsTime", {"t0": 1.0}, {"serno": 257})
    b = Payload.build("EsTime", {"t0": 1.0}, {"serno": 258})
    again = Payload.build("EsTime", {"t0": 1.0}, {"serno": 257, "created": "1999-01-01"})
    assert a.sha256 != b.sha256
    assert a.sha256 == again.sha256


def test_payload_constants_cannot_be_changed_through_a_returned_object() -> None:
    p = Payload.build("Tof", {"sigma": np.array([0.08, 0.11]), "layers": [1, 2]})
    p.constants["sigma"][0] = 99.0
    p.constants["layers"].append(3)
    assert p.constants["sigma"][0] == 0.08 and p.constants["layers"] == [1, 2]


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": object()}, {1: 2}, {"x": np.array(["a"])}])
def test_payload_refuses_values_it_cannot_encode_canonically(bad: dict) -> None:
    with pytest.raises(InvalidInput, match="payload"):
        Payload.build("Mdc", bad)


# --- the talk's table ------------------------------------------------------------------------------------


def test_import_reports_exactly_the_invalid_row_and_imports_the_other_44(store: CalibrationStore) -> None:
    report = import_bookkeeping(store, TALK_TABLE, TAG)
    assert [(r.line, r.text) for r in report.refused] == [(46, "271 6.6.4 DedxSim 50000 28648 6.6.2")]
    assert "first run 50000 is after last run 28648" in report.refused[0].reason
    assert len(report.added) == 44 and report.rows == 45
    info = store.tag_info(TAG)
    assert info["iovs"] == 44 and info["state"] == "open" and info["boss_release"] == "6.6.4"
    assert info["payload_types"]["EsToF"]["mc_iovs"] == 6 and "DedxSim" not in info["payload_types"]
    again = import_bookkeeping(store, TALK_TABLE, TAG)  # idempotent
    assert len(again.added) == 0 and len(again.present) == 44 and len(again.refused) == 1
    assert store.tag_info(TAG)["version"] == info["version"]


def test_import_reports_overlaps_and_bad_rows_one_by_one(store: CalibrationStore, tmp_path: Path) -> None:
    table = tmp_path / "t.tsv"
    table.write_text("SerNo\tBossRelease\tDataType\tRunFrom\tRunTo\tStVer\n"
                     "1\t6.6.4\tEsTime\t100\t200\t6.6.4\n"
                     "2\t6.6.4\tEsTime\t150\t300\t6.6.4\n"        # overlaps row 1
                     "3\t6.6.4\tEsTime\tabc\t300\t6.6.4\n"        # not a number
                     "4\t6.6.4\tEsTime\t-5\t5\t6.6.4\n"           # mixes MC and data
                     "5\t6.6.3\tMdc\t1\t2\t6.6.4\n"               # other release
                     "6\t6.6.4\tEsTime\t201\t300\t6.6.4\n")
    report = import_bookkeeping(store, table, "T")
    reasons = {r.line: r.reason for r in report.refused}
    assert sorted(reasons) == [3, 4, 5, 6]
    assert "overlaps the existing IoV 100..200" in reasons[3]
    assert "RunFrom 'abc' is not an integer" in reasons[4]
    assert "run 0" in reasons[5]
    assert "BossRelease 6.6.3" in reasons[6]
    assert [r.line for r in report.added] == [2, 7]


LOOKUPS = [
    # (type, run, expected SerNo or None for "no payload")  -- read off the TSV by hand
    ("EsTime", 10000, 257), ("EsTime", 9947, 257), ("EsTime", 10878, 257),   # inside, both edges
    ("EsTime", 10879, None), ("EsTime", 11000, None), ("EsTime", 11413, None),  # gap 10879..11413
    ("EsTime", 11414, 277), ("EsTime", 80000, 252), ("EsTime", 80001, None),    # outside the table
    ("EsTime", 8000, None), ("EsTime", -10000, None),                           # no MC EsTime at all
    ("EsToF", -10000, 260), ("EsToF", -9810, 260), ("EsToF", -9809, 333),      # MC, adjacent ranges
    ("EsToF", -28648, 281), ("EsToF", -27146, 331), ("EsToF", -29000, None),   # MC gap -29676..-28649
    ("EsToF", -80000, 274), ("EsToF", -80001, None), ("EsToF", -5000, None),
    ("Mdc", 9809, 275), ("Mdc", 9810, 240), ("MdcData", 28648, 236), ("MdcData", 28649, 255),
    ("Dedx", 26000, None), ("Dedx", 27091, 282), ("DedxSim", 30000, None),     # DedxSim row was refused
]


def _check_lookup(s: CalibrationStore, payload_type: str, run: int, serno: int | None) -> None:
    if serno is None:
        with pytest.raises(PayloadNotFound) as err:
            s.get(TAG, payload_type, run)
        assert str(err.value) == f"no {payload_type} payload for run {run} in {TAG}"
    else:
        p = s.get(TAG, payload_type, run)
        assert p.metadata["serno"] == serno and p.payload_type == payload_type


def test_lookups_and_resolve_on_both_backends(talk_store: CalibrationStore) -> None:
    for payload_type, run, serno in LOOKUPS:
        _check_lookup(talk_store, payload_type, run, serno)
    resolved = talk_store.resolve(TAG, 10000)
    assert {t: p.metadata["serno"] for t, p in resolved.items()} == {
        "EsTime": 257, "EsToF": 256, "Mdc": 240, "MdcAlign": 237, "MdcData": 236, "Dedx": 245}
    assert {t: p.metadata["serno"] for t, p in talk_store.resolve(TAG, -10000).items()} == {"EsToF": 260}
    assert talk_store.resolve(TAG, 11000) == {"MdcData": talk_store.get(TAG, "MdcData", 11000),
                                              "Dedx": talk_store.get(TAG, "Dedx", 11000)}
    with pytest.raises(TagNotFound):
        talk_store.get("no-such-tag", "EsTime", 1)


# --- tags, states, immutability --------------------------------------------------------------------------


def test_published_tag_is_immutable_through_the_python_api(talk_store: CalibrationStore) -> None:
    s = talk_store
    p = s.put(TAG, "Emc", 11000, 11100, {"sigma_e": 0.025}, {"serno": 9001})
    s.publish_tag(TAG)
    for attempt in (lambda: s.put(TAG, "Emc", 20000, 20001, {"x": 1}),
                    lambda: s.add_iov(TAG, "Emc", 1, 2, p.sha256),
                    lambda: s.publish_tag(TAG),
                    lambda: apply_tag_like_replace(s)):
        with pytest.raises(TagStateError):
            attempt()
    assert s.tag_info(TAG)["iovs"] == 45
    clone = s.clone_tag(TAG, "mine")
    assert clone["state"] == "open" and clone["parent"] == TAG and clone["iovs"] == 45
    s.put("mine", "Emc", 20000, 20001, {"x": 1})
    assert s.tag_info(TAG)["iovs"] == 45 and s.tag_info("mine")["iovs"] == 46
    s.invalidate_tag(TAG)
    with pytest.raises(TagStateError, match="invalid"):
        s.get(TAG, "EsTime", 10000)
    with pytest.raises(TagStateError):
        s.clone_tag(TAG, "from-invalid")
    assert s.get("mine", "EsTime", 10000).metadata["serno"] == 257  # the clone lives on
    with pytest.raises(TagExists):
        s.create_tag("mine")


def apply_tag_like_replace(s: CalibrationStore) -> None:
    s.put_many(TAG, [], replace=True)


def test_iov_rules(store: CalibrationStore) -> None:
    store.create_tag("T", "6.6.4")
    store.put("T", "Mdc", -200, -100, {"a": 1})
    with pytest.raises(IoVOverlap, match=r"overlaps the existing IoV -200..-100"):
        store.put("T", "Mdc", -100, -50, {"a": 2})
    with pytest.raises(InvalidIoV, match="after"):
        store.put("T", "Mdc", 10, 5, {"a": 3})
    with pytest.raises(InvalidIoV, match="run 0"):
        store.put("T", "Mdc", -1, 1, {"a": 3})
    store.put("T", "Tof", -100, -50, {"a": 2})  # other type: no overlap
    with pytest.raises(InvalidInput, match="type"):
        store.add_iov("T", "Mdc", 1, 2, store.get("T", "Tof", -60).sha256)


RAW_WRITES = [
    ("INSERT INTO iov (tag_id, payload_type, first_run, last_run, payload_sha256) "
     "SELECT tag_id, payload_type, 90000, 90001, payload_sha256 FROM iov LIMIT 1"),
    "UPDATE iov SET last_run = last_run + 1",
    "DELETE FROM iov",
    "UPDATE payload SET created = 'x'",
    "DELETE FROM payload",
    "UPDATE global_tag SET purpose = 'changed'",
    "UPDATE global_tag SET state = 'open'",
    "DELETE FROM global_tag",
]


def test_published_tag_is_immutable_through_raw_sql(talk_store: CalibrationStore) -> None:
    talk_store.publish_tag(TAG)
    before = talk_store.iovs(TAG)
    engine = sa.create_engine(talk_store.url)  # a plain writer that knows nothing of vbes
    try:
        statements = RAW_WRITES + (["TRUNCATE iov", "TRUNCATE payload CASCADE"]
                                   if talk_store.dialect == "postgresql" else [])
        for statement in statements:
            with pytest.raises(sa.exc.DBAPIError, match="vbes:immutable"), engine.begin() as conn:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()
    assert talk_store.iovs(TAG) == before
    assert talk_store.tag_info(TAG)["state"] == "published"


# --- snapshots -------------------------------------------------------------------------------------------


def test_snapshot_round_trip_is_bit_identical(talk_store: CalibrationStore, tmp_path: Path) -> None:
    talk_store.put(TAG, "Emc", -100, -1, {"sigma": np.linspace(0.01, 0.05, 5)}, {"serno": 1, "synthetic": True})
    talk_store.publish_tag(TAG)
    first = tmp_path / "a.tar"
    summary = export_snapshot(talk_store, TAG, first)
    assert summary["iovs"] == 45 and summary["payloads"] == 45
    with CalibrationStore(f"sqlite:///{tmp_path / 'elsewhere.sqlite'}") as other:
        assert restore_snapshot(other, first)["restored"] is True
        assert restore_snapshot(other, first)["restored"] is False  # identical: no-op
        export_snapshot(other, TAG, tmp_path / "b.tar")
        assert (tmp_path / "b.tar").read_bytes() == first.read_bytes()
        assert other.tag_info(TAG)["state"] == "published"
        for i in talk_store.iovs(TAG):
            assert other.payload(i.sha256).blob == talk_store.payload(i.sha256).blob
        np.testing.assert_array_equal(other.get(TAG, "Emc", -50).constants["sigma"], np.linspace(0.01, 0.05, 5))
        with pytest.raises(TagStateError):
            other.put(TAG, "Emc", 1, 2, {})


def _rewrite_tar(src: Path, dst: Path, mutate) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for info in tin:
            data = tin.extractfile(info).read()
            data = mutate(info.name, data)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_corrupted_snapshots_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with CalibrationStore(f"sqlite:///{tmp_path / 'a.sqlite'}") as a:
        import_bookkeeping(a, TALK_TABLE, TAG)
        a.put(TAG, "Emc", -100, -1, {"sigma": np.ones(4)})
        good = tmp_path / "good.tar"
        export_snapshot(a, TAG, good)

    def payload_flip(name: str, data: bytes) -> bytes:  # one bit of the Emc array's last byte
        return data[:-1] + bytes([data[-1] ^ 1]) if b'"payload_type":"Emc"' in data else data

    def manifest_edit(name: str, data: bytes) -> bytes:  # the Emc IoV now starts one run earlier
        return data.replace(b"-100,", b"-101,") if name == "manifest.json" else data

    cases = {"payload": payload_flip, "manifest": manifest_edit}
    for label, mutate in cases.items():
        bad = tmp_path / f"{label}.tar"
        _rewrite_tar(good, bad, mutate)
        assert bad.read_bytes() != good.read_bytes()
        with CalibrationStore(f"sqlite:///{tmp_path / f'{label}.sqlite'}") as b:
            with pytest.raises(SnapshotError, match=r"snapshot .*(does not match|corrupt)"):
                restore_snapshot(b, bad)
            assert b.list_tags() == []
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[:3000])
    with CalibrationStore("sqlite://") as b, pytest.raises(SnapshotError, match="truncated"):
        restore_snapshot(b, truncated)


# --- tag specs -------------------------------------------------------------------------------------------


SPEC = """\
spec_version: 1
tag: SIM
clone_of: BOSS-6.6.4
purpose: test simulation tag
payloads:
  - type: Emc
    first: -80000
    last: -1
    metadata: {author: test, synthetic: true}
    constants: {sigma_e_at_1gev: 2.5e-2, barrel_cos: 0.83, layers: [1, 2, 3]}
  - type: EsToF
    first: -8092
    last: -1
    constants: {t0_ns: 0.0}
"""


def test_apply_tag_spec_clones_adds_and_is_idempotent(talk_store: CalibrationStore, tmp_path: Path) -> None:
    spec = tmp_path / "sim.yaml"
    spec.write_text(SPEC)
    result = apply_tag_spec(talk_store, spec)
    assert (result.status, result.iovs) == ("created", 46)
    info = talk_store.tag_info("SIM")
    assert info["parent"] == TAG and info["boss_release"] == "6.6.4" and info["state"] == "open"
    emc = talk_store.get("SIM", "Emc", -10000)
    assert emc.constants == {"sigma_e_at_1gev": 0.025, "barrel_cos": 0.83, "layers": [1, 2, 3]}
    assert emc.metadata["synthetic"] is True
    assert talk_store.get("SIM", "EsToF", -10000).metadata["serno"] == 260  # cloned
    assert talk_store.get("SIM", "EsToF", -5000).constants == {"t0_ns": 0.0}  # gap filled by the spec
    version = talk_store.tag_info("SIM")["version"]
    assert apply_tag_spec(talk_store, spec).status == "unchanged"
    assert talk_store.tag_info("SIM")["version"] == version
    spec.write_text(SPEC.replace("2.5e-2", "3.0e-2"))
    assert apply_tag_spec(talk_store, spec).status == "updated"
    assert talk_store.get("SIM", "Emc", -10000).constants["sigma_e_at_1gev"] == 0.03
    talk_store.publish_tag("SIM")
    spec.write_text(SPEC.replace("2.5e-2", "4.0e-2"))
    with pytest.raises(TagStateError, match="sim.yaml.*published"):
        apply_tag_spec(talk_store, spec)


@pytest.mark.parametrize("edit,message", [
    (("first: -8092", "first: -9000"), r"sim.yaml: .*payloads\[1\].*overlaps the existing IoV -9809..-8093"),
    (("first: -80000", "first: abc"), r"sim.yaml: payloads\[0\]\.first: 'abc' is not of type 'integer'"),
    (("spec_version: 1", "spec_version: 2"), r"sim.yaml: spec_version: 1 was expected"),
    (("    last: -1\n    metadata", "    lats: -1\n    metadata"), r"sim.yaml: payloads\[0\]"),
    (("clone_of: BOSS-6.6.4", "clone_of: NOPE"), r"sim.yaml: .*NOPE"),
])
def test_bad_tag_specs_name_the_file_and_field(talk_store: CalibrationStore, tmp_path: Path, edit: tuple[str, str],
                                               message: str) -> None:
    spec = tmp_path / "sim.yaml"
    spec.write_text(SPEC.replace(*edit))
    with pytest.raises((InvalidInput, IoVOverlap, TagNotFound), match=message):
        apply_tag_spec(talk_store, spec)
    with pytest.raises(TagNotFound):
        talk_store.tag_info("SIM")  # nothing half-written


# --- command line ----------------------------------------------------------------------------------------


def test_cli_init_get_and_one_line_errors(vbes_home: Path, run_cli) -> None:
    first = run_cli("calib", "init")
    assert first.exit_code == 0, first.stderr
    assert "44 rows imported" in first.stdout
    assert first.stderr.strip().splitlines() == [
        ("refused: line 46 [271 6.6.4 DedxSim 50000 28648 6.6.2]: DedxSim IoV 50000..28648: "
         "first run 50000 is after last run 28648")]
    again = run_cli("calib", "init")
    assert again.exit_code == 0 and "0 rows imported, 44 already present" in again.stdout
    assert (vbes_home / "calibration.sqlite").is_file()

    got = run_cli("calib", "get", "--tag", TAG, "--type", "EsToF", "--run", "-10000", "--json")
    assert got.exit_code == 0, got.stderr
    out = json.loads(got.stdout)
    assert out["metadata"]["serno"] == 260 and out["metadata"]["stver"] == "6.6.2b"
    assert len(out["sha256"]) == 64 and out["iov"] == {"first": -10878, "last": -9810}
    shown = run_cli("calib", "payload", "show", out["sha256"][:12], "--json")
    assert json.loads(shown.stdout)["sha256"] == out["sha256"]

    gap = run_cli("calib", "get", "--tag", TAG, "--type", "EsTime", "--run", "11000")
    assert gap.exit_code == 1 and gap.stdout == ""
    assert gap.stderr == f"vbes: error: no EsTime payload for run 11000 in {TAG}\n"
    unknown = run_cli("calib", "tag", "show", "NOPE")
    assert unknown.exit_code == 1 and unknown.stderr.count("\n") == 1 and "NOPE" in unknown.stderr


def test_cli_import_exit_status_and_published_tag_refused(vbes_home: Path, run_cli, tmp_path: Path) -> None:
    imported = run_cli("calib", "import", str(TALK_TABLE), "--tag", "T")
    assert imported.exit_code == 1
    lines = imported.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("refused: line 46 ") and lines[1].startswith("vbes: error: ")
    assert "1 of 45 rows refused" in lines[1]
    assert "44 rows imported" in imported.stdout

    constants = tmp_path / "c.json"
    constants.write_text(json.dumps({"sigma": [0.08, 0.11]}))
    put = run_cli("calib", "payload", "put", "Tof", str(constants), "--serno", "77", "--tag", "T",
                  "--first=-100", "--last=-1", "--json")
    assert put.exit_code == 0, put.stderr
    assert json.loads(put.stdout)["metadata"]["serno"] == 77
    assert run_cli("calib", "tag", "publish", "T").exit_code == 0
    refused = run_cli("calib", "payload", "put", "Tof", str(constants), "--serno", "78", "--tag", "T",
                      "--first", "1", "--last", "2")
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "tag T is published" in refused.stderr
    assert run_cli("calib", "tag", "publish", "T").exit_code == 1
    listed = json.loads(run_cli("calib", "tag", "list", "--json").stdout)
    assert [(t["name"], t["state"], t["iovs"]) for t in listed] == [("T", "published", 45)]

    snap = tmp_path / "T.tar"
    assert run_cli("calib", "export", "T", "-o", str(snap)).exit_code == 0
    other = f"sqlite:///{tmp_path / 'other.sqlite'}"
    restored = run_cli("calib", "--url", other, "restore", str(snap), "--json")
    assert restored.exit_code == 0 and json.loads(restored.stdout)["restored"] is True
    shown = json.loads(run_cli("calib", "--url", other, "tag", "show", "T", "--json").stdout)
    assert shown["state"] == "published" and shown["iovs"] == 45


def test_cli_uses_vbes_calib_url(vbes_home: Path, run_cli, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VBES_CALIB_URL", pg_url.replace("postgresql+psycopg://", "postgresql://"))
    assert run_cli("calib", "init").exit_code == 0
    got = run_cli("calib", "get", "--tag", TAG, "--type", "Mdc", "--run", "9810", "--json")
    assert json.loads(got.stdout)["metadata"]["serno"] == 240
    assert not (vbes_home / "calibration.sqlite").exists()
    with CalibrationStore(pg_url) as s:
        assert s.tag_info(TAG)["iovs"] == 44
