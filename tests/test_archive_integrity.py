"""Archive integrity (issue 4 acceptance): random corruption found and repaired, one faulty read never
condemns a replica, SIGKILLed puts leave nothing half-done, BagIt bags validate and tampering is refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bagit
import pytest
from vbes.archive import Archive, Tier, export_bag, import_bag

from vbes.errors import BagError, InvalidInput, TierError

ROOT = Path(__file__).resolve().parents[1]


def replica_path(tier_root: Path, sha: str) -> Path:
    return tier_root / sha[:2] / sha[2:4] / sha


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time (ns) of every file under ``root``."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def corrupt(path: Path, kind: str, rng: random.Random) -> None:
    path.chmod(0o644)  # replicas are stored read-only
    data = bytearray(path.read_bytes())
    if kind == "bitflip":
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    elif kind == "truncate":
        path.write_bytes(bytes(data[: rng.randrange(len(data))]))
    elif kind == "delete":
        path.unlink()
    else:
        raise ValueError(kind)


# -- random corruption across tiers ------------------------------------------------------------------------


def test_random_corruption_is_found_repaired_or_reported_lost(
    tmp_path: Path, vbes_home: Path, run_cli, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VBES_ARCHIVE_URL", db_url)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    hot, cold = vbes_home / "archive" / "hot", vbes_home / "archive" / "cold"
    originals: dict[str, bytes] = {}
    shas = []
    for i in range(14):
        data = os.urandom(rng.randrange(1, 150_000))
        src = tmp_path / f"f{i}.bin"
        src.write_bytes(data)
        res = run_cli("archive", "put", src, "--name", f"mc:f{i}.bin", "--json")
        assert res.exit_code == 0, res.stderr
        sha = json.loads(res.stdout)["sha256"]
        originals[sha] = data
        shas.append(sha)

    # two files lose both replicas, five lose one, the rest are left alone
    shuffled = rng.sample(shas, len(shas))
    doomed, damaged = shuffled[:2], shuffled[2:7]
    targets = [(sha, t) for sha in doomed for t in ("hot", "cold")]
    targets += [(sha, rng.choice(["hot", "cold"])) for sha in damaged]
    kinds = ["bitflip", "truncate", "delete"]
    for j, (sha, tier) in enumerate(targets):
        corrupt(
            replica_path(hot if tier == "hot" else cold, sha),
            kinds[j % 3] if j < 3 else rng.choice(kinds),
            rng,
        )
    untouched = {(sha, t) for sha in shas for t in ("hot", "cold")} - set(targets)
    before_hot, before_cold = snapshot(hot), snapshot(cold)

    def untouched_files(snap: dict[str, tuple[bytes, int]], tier: str) -> dict[str, tuple[bytes, int]]:
        return {k: v for k, v in snap.items() if (Path(k).name, tier) in untouched}

    res = run_cli("archive", "audit", "--json")
    assert res.exit_code == 3, f"seed {seed}"
    report = json.loads(res.stdout)
    assert {(b["sha256"], b["tier"]) for b in report["bad"]} == set(targets), f"seed {seed}"
    assert {item["sha256"] for item in report["lost"]} == set(doomed), f"seed {seed}"
    assert report["replicas_ok"] == len(untouched) and not report["transient"]
    assert "LOST" in res.stderr and all(f"sha256={sha}" in res.stderr for sha in doomed)

    res = run_cli("archive", "audit", "--repair", "--json")
    assert res.exit_code == 3, f"seed {seed}: lost files keep the exit status non-zero"
    report = json.loads(res.stdout)
    repairable = {(sha, t) for sha, t in targets if sha not in doomed}
    assert {(r["sha256"], r["tier"]) for r in report["repaired"]} == repairable, f"seed {seed}"
    assert {(r["sha256"], r["tier"]) for r in report["repair_failed"]} == {
        (s, t) for s, t in targets if s in doomed
    }
    assert {item["sha256"] for item in report["lost"]} == set(doomed)
    for sha, tier in repairable:
        assert replica_path(hot if tier == "hot" else cold, sha).read_bytes() == originals[sha]
    # nothing else changed: untouched replicas keep their bytes and their modification times
    assert untouched_files(snapshot(hot), "hot") == untouched_files(before_hot, "hot")
    assert untouched_files(snapshot(cold), "cold") == untouched_files(before_cold, "cold")

    with Archive(db_url, {"hot": str(hot), "cold": str(cold)}) as archive:
        for sha in shas:
            record = archive.catalog.file(sha)  # lost files are kept in the catalog
            expected = "lost" if sha in doomed else "ok"
            assert record.status == expected, f"seed {seed}: {sha}"
        assert archive.catalog.counts()["files"] == len(shas)
    report = json.loads(run_cli("archive", "audit", "--json").stdout)
    # a third audit: the repaired replicas are fine, the lost files' replicas are still bad and reported
    assert {b["sha256"] for b in report["bad"]} == set(doomed) and not report["repaired"]
    assert {i["sha256"] for i in report["lost"]} == set(doomed)


# -- a faulty read is not a bad replica ---------------------------------------------------------------------


class FlakyTier(Tier):
    """A real local tier whose next ``failures`` reads return one flipped byte (a transient I/O fault)."""

    def __init__(self, name: str, url: str) -> None:
        super().__init__(name, url)
        self.failures = 0
        self.unreachable = False
        self.reads = 0

    def probe(self) -> str | None:
        return "connection refused" if self.unreachable else super().probe()

    def read_chunks(self, sha256: str, chunk_size: int = 1 << 23) -> Iterator[bytes]:
        self.reads += 1
        if self.unreachable:
            raise TierError(f"tier {self.name!r}: connection refused")
        chunks = super().read_chunks(sha256, chunk_size)
        if self.failures > 0:
            self.failures -= 1
            first = bytearray(next(chunks))
            first[0] ^= 0xFF
            yield bytes(first)
        yield from chunks


def test_one_faulty_read_never_marks_bad_nor_lost(tmp_path: Path) -> None:
    hot, cold = FlakyTier("hot", str(tmp_path / "hot")), FlakyTier("cold", str(tmp_path / "cold"))
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(50_000))
    with Archive(f"sqlite:///{tmp_path / 'c.sqlite'}", {"hot": hot, "cold": cold}) as archive:
        sha = archive.put(src, "mc:f.bin").sha256
        hot.failures = cold.failures = 1  # every replica fails its first read
        report = archive.audit()
        assert {t["tier"] for t in report.transient} == {"hot", "cold"}
        assert not report.bad and not report.lost and report.exit_code == 0
        assert archive.info("mc:f.bin").status == "ok"

        # an unreachable tier leaves its replicas as they were and keeps the exit status non-zero; after the
        # first failure the tier is not asked again in this audit
        src.write_bytes(b"second file")
        archive.put(src, "mc:g.bin")
        cold.unreachable, cold.reads = True, 0
        report = archive.audit()
        assert [u["tier"] for u in report.unchecked] == ["cold", "cold"] and report.exit_code == 3
        assert list(report.unreachable_tiers) == ["cold"] and cold.reads == 1
        assert not report.bad and not report.lost
        for name in ("mc:f.bin", "mc:g.bin"):
            assert archive.info(name).replica("cold").state == "available"  # type: ignore[union-attr]
        cold.unreachable = False

        # a replica flagged by a failed get is cleared by an audit that reads it intact
        archive.catalog.set_replica(sha, "hot", "suspicious", "get: md5 differ on read")
        report = archive.audit()
        assert [r["tier"] for r in report.recovered] == ["hot"] and report.exit_code == 0


# -- SIGKILL during put ------------------------------------------------------------------------------------


def _partials(root: Path) -> list[Path]:
    return sorted((root / ".tmp").glob("*")) if (root / ".tmp").is_dir() else []


def _kill_when(proc: subprocess.Popen[bytes], condition, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` as soon as ``condition()`` holds; False if it finished first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    proc.wait()
    return False


def test_put_killed_with_sigkill_leaves_no_partial_file_nor_catalog_entry(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    home = tmp_path / "home"
    hot, cold = home / "archive" / "hot", home / "archive" / "cold"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VBES_")} | {"VBES_HOME": str(home)}
    size = 32 * 1024 * 1024
    base = bytearray(os.urandom(size))
    url = f"sqlite:///{home / 'archive.sqlite'}"

    killed_mid_write = 0
    phases = ["hot", "cold", "random", "hot", "cold", "random"]
    for trial, phase in enumerate(phases):
        base[:8] = trial.to_bytes(8, "little")  # new content each trial
        src = tmp_path / f"big{trial}.bin"
        src.write_bytes(base)
        name = f"mc:big{trial}.bin"
        proc = subprocess.Popen(
            [sys.executable, "-m", "vbes.cli", "archive", "put", str(src), "--name", name],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if phase == "random":
            start, delay = time.monotonic(), rng.uniform(0.0, 3.0)
            killed = _kill_when(proc, lambda start=start, delay=delay: time.monotonic() - start > delay)
        else:
            fraction = rng.uniform(0.02, 1.0)
            tier = hot if phase == "hot" else cold
            threshold = fraction * size

            def reached(tier: Path = tier, threshold: float = threshold) -> bool:
                for partial in _partials(tier):
                    try:
                        if partial.stat().st_size >= threshold:
                            return True
                    except FileNotFoundError:  # renamed into place meanwhile
                        pass
                return False

            killed = _kill_when(proc, reached)
        if not killed:
            src.unlink()
            continue
        left = _partials(hot) + _partials(cold)
        killed_mid_write += bool(left)

        # no content name holds anything but complete, correct bytes; the catalog points only at real replicas
        with Archive(url, {"hot": str(hot), "cold": str(cold)}) as archive:
            for tier in archive.tiers.values():
                for entry in tier.scan():
                    if entry.kind == "content":
                        assert entry.size == size, f"seed {seed} trial {trial}: partial file {entry.path}"
            report = archive.audit()
            assert not (report.bad or report.suspicious or report.lost or report.unchecked), f"seed {seed}"
            assert all(d["kind"] == "content" for d in report.dark)  # complete, just not catalogued yet
            # retry: succeeds, sweeps the dead writer's temporary files, leaves a clean archive
            result = archive.put(src, name)
            assert result.size == size
            assert {r.tier: r.state for r in archive.info(name).replicas} == {
                "hot": "available",
                "cold": "available",
            }
            assert _partials(hot) == [] and _partials(cold) == [], f"seed {seed} trial {trial}"
            report = archive.audit()
            assert report.exit_code == 0 and not report.dark and not report.partial, f"seed {seed}"
        src.unlink()
    print(f"seed {seed}: {killed_mid_write} of {len(phases)} kills landed mid-write")
    assert killed_mid_write >= 3, f"seed {seed}: only {killed_mid_write} kills landed mid-write"


# -- BagIt -------------------------------------------------------------------------------------------------


@pytest.fixture
def exported_bag(tmp_path: Path) -> tuple[Archive, Path, dict[str, bytes]]:
    archive = Archive(
        f"sqlite:///{tmp_path / 'src.sqlite'}", {"hot": str(tmp_path / "hot"), "cold": str(tmp_path / "cold")}
    )
    contents = {
        "mc:rhopi.h5": os.urandom(20_000),
        "mc:sub/dir/mumu.h5": os.urandom(5000),
        "calib:snapshot.json": b'{"tag": "BOSS-6.6.4"}',
    }
    archive.create_dataset("mc:release-1", {"provenance": "vbes test", "calibration_tag": "BOSS-6.6.4"})
    for i, (name, data) in enumerate(contents.items()):
        src = tmp_path / f"in{i}"
        src.write_bytes(data)
        archive.put(src, name, dataset="mc:release-1", metadata={"index": i})
    archive.close_dataset("mc:release-1")
    bag_dir = export_bag(archive, "mc:release-1", tmp_path / "bag")
    yield archive, bag_dir, contents
    archive.close()


def test_exported_bag_passes_the_bagit_validator(exported_bag, tmp_path: Path) -> None:
    archive, bag_dir, contents = exported_bag
    bag = bagit.Bag(str(bag_dir))
    bag.validate()  # the reference implementation, full checksum validation
    assert set(bag.algorithms) == {"sha256", "sha512"}
    for name in (
        "manifest-sha256.txt",
        "manifest-sha512.txt",
        "tagmanifest-sha256.txt",
        "tagmanifest-sha512.txt",
        "bag-info.txt",
        "bagit.txt",
        "vbes-catalog.json",
    ):
        assert (bag_dir / name).is_file(), name
    tag_manifest = (bag_dir / "tagmanifest-sha256.txt").read_text()
    assert "bag-info.txt" in tag_manifest and "vbes-catalog.json" in tag_manifest
    assert bag.info["VBES-Dataset"] == "mc:release-1"
    assert json.loads(bag.info["VBES-Provenance"])["calibration_tag"] == "BOSS-6.6.4"
    assert (bag_dir / "data" / "mc" / "sub" / "dir" / "mumu.h5").read_bytes() == contents[
        "mc:sub/dir/mumu.h5"
    ]
    # the bagit command-line validator agrees
    cli = subprocess.run(
        [sys.executable, "-m", "bagit", "--validate", str(bag_dir)], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr
    # no staging folder is left beside the bag; a second export to the same place is refused
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".bag")] == []
    with pytest.raises(InvalidInput, match="not an empty folder"):
        export_bag(archive, "mc:release-1", bag_dir)

    other = Archive(f"sqlite:///{tmp_path / 'dst.sqlite'}", {"hot": str(tmp_path / "hot2")})
    with other:
        record = import_bag(other, bag_dir)
        assert record.did == "mc:release-1" and record.state == "closed"
        assert record.members == archive.dataset("mc:release-1").members
        assert record.metadata["calibration_tag"] == "BOSS-6.6.4"
        for name, data in contents.items():
            info = other.info(name)
            assert info.sha256 == archive.info(name).sha256 and info.metadata == archive.info(name).metadata
            out = tmp_path / "check.bin"
            other.get(name, out, overwrite=True)
            assert out.read_bytes() == data
        again = import_bag(other, bag_dir)  # importing the same bag twice changes nothing
        assert again.members == record.members and other.catalog.counts()["files"] == 3


@pytest.mark.parametrize(
    "tamper", ["payload-bitflip", "payload-extra-file", "payload-removed", "bag-info-edit", "catalog-rename"]
)
def test_tampered_bag_is_refused_before_anything_is_archived(
    exported_bag, tmp_path: Path, tamper: str
) -> None:
    _archive, bag_dir, _contents = exported_bag
    bad = tmp_path / f"tampered-{tamper}"
    shutil.copytree(bag_dir, bad)
    payload = bad / "data" / "mc" / "rhopi.h5"
    if tamper == "payload-bitflip":
        data = bytearray(payload.read_bytes())
        data[1234] ^= 0x10
        payload.write_bytes(bytes(data))
    elif tamper == "payload-extra-file":
        (bad / "data" / "mc" / "smuggled.h5").write_bytes(b"not in the manifest")
    elif tamper == "payload-removed":
        payload.unlink()
    elif tamper == "bag-info-edit":
        info = bad / "bag-info.txt"
        info.write_text(info.read_text().replace("mc:release-1", "mc:release-2"))
    elif tamper == "catalog-rename":
        cat = bad / "vbes-catalog.json"
        cat.write_text(cat.read_text().replace("mc:rhopi.h5", "mc:evil.h5"))
    with pytest.raises(bagit.BagValidationError):
        bagit.Bag(str(bad)).validate()
    target = Archive(f"sqlite:///{tmp_path / 'dst.sqlite'}", {"hot": str(tmp_path / "hot2")})
    with target:
        with pytest.raises(BagError, match="invalid bag"):
            import_bag(target, bad)
        assert target.catalog.counts() == {
            "files": 0,
            "names": 0,
            "datasets": 0,
            "dataset_files": 0,
            "replicas": 0,
        }
    assert not (tmp_path / "hot2").exists() or not any(p.is_file() for p in (tmp_path / "hot2").rglob("*"))


def test_bag_cli_round_trip(exported_bag, tmp_path: Path, vbes_home: Path, run_cli) -> None:
    _archive, bag_dir, contents = exported_bag
    res = run_cli("archive", "import-bag", bag_dir)
    assert res.exit_code == 0, res.stderr
    assert "mc:release-1" in res.stdout
    res = run_cli("archive", "export-bag", "mc:release-1", tmp_path / "bag2")
    assert res.exit_code == 0, res.stderr
    bagit.Bag(str(tmp_path / "bag2")).validate()
    broken = tmp_path / "broken"
    shutil.copytree(bag_dir, broken)
    (broken / "data" / "calib" / "snapshot.json").write_text('{"tag": "tampered"}')
    res = run_cli("archive", "import-bag", broken)
    assert res.exit_code == 1 and "invalid bag" in res.stderr and res.stderr.count("\n") == 1
