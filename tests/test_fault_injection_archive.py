"""Fault injection on the archive: every command that writes, killed with SIGKILL at random moments.

For ``put``, ``get``, ``audit --repair``, ``export-bag`` and ``import-bag``, the real command line runs in a
subprocess that is killed after a random delay (several delays per command; the seed is printed). After each
kill:

* nothing is falsely ``ok``: a file the catalog calls ``ok`` has a verified replica on every tier, and an
  audit that exits 0 leaves no temporary, dark or below-policy file behind; whatever the kill left is a
  finding (non-zero exit);
* no stray file survives the recovery: the retry of the same command plus ``audit --repair`` leaves only
  catalogued content in the tiers, only the requested output beside a ``get``, only the bag in the export
  folder, and a final audit that exits 0.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bagit
import pytest
from vbes.archive import Archive
from vbes.archive.bagit_io import export_bag, import_bag
from vbes.archive.store import _unnamed_files_work

ROOT = Path(__file__).resolve().parents[1]
SIZE = 24 * 1024 * 1024
KILLS_PER_COMMAND = 3


class Home:
    """A VBES_HOME with its archive, for the CLI subprocess and for in-process checks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hot, self.cold = path / "archive" / "hot", path / "archive" / "cold"
        self.url = f"sqlite:///{path / 'archive.sqlite'}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("VBES_")} | {"VBES_HOME": str(path)}

    def archive(self) -> Archive:
        return Archive(self.url, {"hot": str(self.hot), "cold": str(self.cold)})

    def killed(self, rng: random.Random, writes: int, *args: str) -> bool:
        """Run ``vbes archive ARGS`` and SIGKILL it at a random point of its work; False if it finished first.

        The point is a random fraction of the ``writes`` bytes the command writes when it runs to the end
        (read from ``/proc/PID/io``), so kills land in the interpreter's start, in every write and between.
        """
        proc = subprocess.Popen([sys.executable, "-m", "vbes.cli", "archive", *args], env=self.env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threshold = rng.uniform(0.0, 1.0) * writes
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and _written(proc.pid) < threshold:
            time.sleep(0.0005)
        if proc.poll() is not None:
            return False
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        KILLS.append(" ".join(args[:1]))
        return True

    def tier_files(self) -> list[Path]:
        return sorted(p for root in (self.hot, self.cold) if root.is_dir() for p in root.rglob("*") if p.is_file())


KILLS: list[str] = []


def _written(pid: int) -> int:
    """Bytes the process has written so far (``wchar``), 0 before it can be read."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _truthful(home: Home) -> int:
    """Check that nothing is falsely ok after a kill; returns the audit's exit status."""
    with home.archive() as archive:
        for record in archive.catalog.iter_files():
            if record.status == "ok":
                for tier in archive.tiers.values():
                    assert _sha256(Path(tier.content_path(record.sha256))) == record.sha256, record.names
        report = archive.audit()
        catalogued = {
            Path(tier.content_path(r.sha256))
            for r in archive.catalog.iter_files() for tier in archive.tiers.values() if r.replica(tier.name)
        }
        leftovers = [p for p in home.tier_files() if p not in catalogued]
        not_ok = [r.names for r in archive.catalog.iter_files() if r.status != "ok"]
        if report.exit_code == 0:
            assert not leftovers and not not_ok, (leftovers, not_ok)
        else:
            assert report.problems, report.as_dict()
        return report.exit_code


def _recovered(home: Home, retry: Callable[[Archive], object]) -> None:
    """The retry and a repairing audit leave a clean archive: only catalogued, verified content."""
    with home.archive() as archive:
        retry(archive)
        archive.audit(repair=True)
        report = archive.audit()
        assert report.exit_code == 0, report.as_dict()
        assert all(r.status == "ok" for r in archive.catalog.iter_files())
        expected = {Path(t.content_path(r.sha256)) for r in archive.catalog.iter_files() for t in archive.tiers.values()}
    assert set(home.tier_files()) == expected


@pytest.fixture
def rng() -> Iterator[random.Random]:
    seed = random.randrange(2**32)
    KILLS.clear()
    yield random.Random(seed)
    print(f"seed {seed}: killed {KILLS}")
    # a kill lands unless the command happened to finish between the threshold and the signal
    assert len(KILLS) >= KILLS_PER_COMMAND - 1, f"seed {seed}: only {len(KILLS)} kills landed"


def _content(tmp_path: Path, label: str) -> Path:
    src = tmp_path / f"{label}.bin"
    data = bytearray(os.urandom(SIZE))
    data[:len(label)] = label.encode()
    src.write_bytes(data)
    return src


def test_killed_put(tmp_path: Path, rng: random.Random) -> None:
    home = Home(tmp_path / "home")
    for trial in range(KILLS_PER_COMMAND):
        src = _content(tmp_path, f"put{trial}")
        name = f"mc:put{trial}.bin"
        if home.killed(rng, 2 * SIZE, "put", str(src), "--name", name):
            _truthful(home)
        _recovered(home, lambda a, src=src, name=name: a.put(src, name))
        src.unlink()


def test_killed_get(tmp_path: Path, rng: random.Random) -> None:
    home = Home(tmp_path / "home")
    src = _content(tmp_path, "get")
    with home.archive() as archive:
        archive.put(src, "mc:get.bin")
    for trial in range(KILLS_PER_COMMAND):
        out = tmp_path / f"out{trial}"
        out.mkdir()
        home.killed(rng, SIZE, "get", "mc:get.bin", "-o", str(out / "get.bin"))
        # nothing but the complete, verified output may appear beside it (and only once it is complete);
        # where the filesystem has no unnamed files, a dead get's locked temporary waits for the next get
        left = [p.name for p in out.iterdir() if p.name != "get.bin"]
        if _unnamed_files_work(out):
            assert left == [], left
        else:
            assert all(n.startswith(".get.bin.vbes-get-") and n.endswith(".part") for n in left), left
        if (out / "get.bin").exists():
            assert _sha256(out / "get.bin") == _sha256(src)
        assert _truthful(home) == 0  # a get writes nothing in the archive
        with home.archive() as archive:
            archive.get("mc:get.bin", out / "get.bin", overwrite=True)
        assert [p.name for p in out.iterdir()] == ["get.bin"] and _sha256(out / "get.bin") == _sha256(src)


def test_killed_repair(tmp_path: Path, rng: random.Random) -> None:
    home = Home(tmp_path / "home")
    src = _content(tmp_path, "repair")
    with home.archive() as archive:
        sha = archive.put(src, "mc:repair.bin").sha256
        cold = Path(archive.tiers["cold"].content_path(sha))
    for _trial in range(KILLS_PER_COMMAND):
        cold.chmod(0o644)
        cold.write_bytes(os.urandom(SIZE))  # rot on the cold tier, same size, found by an audit
        with home.archive() as archive:
            assert [b["tier"] for b in archive.audit().bad] == ["cold"]
        if home.killed(rng, SIZE, "audit", "--repair"):
            _truthful(home)
        _recovered(home, lambda a: a.audit(repair=True))
        assert _sha256(cold) == sha


def test_killed_bag_export_and_import(tmp_path: Path, rng: random.Random) -> None:
    home = Home(tmp_path / "home")
    with home.archive() as archive:
        archive.create_dataset("mc:ds")
        for i in range(2):
            archive.put(_content(tmp_path, f"bag{i}"), f"mc:bag{i}.bin", dataset="mc:ds")
        archive.close_dataset("mc:ds")
    bags = tmp_path / "bags"
    for trial in range(KILLS_PER_COMMAND):
        dest = bags / f"bag{trial}"
        home.killed(rng, 2 * SIZE, "export-bag", "mc:ds", str(dest))
        # only a complete, valid bag ever appears under the bag's name
        if dest.exists():
            bagit.Bag(str(dest)).validate()
        with home.archive() as archive:
            if not dest.exists():
                export_bag(archive, "mc:ds", dest)
            export_bag(archive, "mc:ds", bags / "again")  # the next export sweeps a killed one's staging
        assert sorted(p.name for p in bags.iterdir()) == sorted([f"bag{t}" for t in range(trial + 1)] + ["again"])
        for leftover in (bags / "again",):
            for path in sorted(leftover.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            leftover.rmdir()
        _truthful(home)

        target = Home(tmp_path / f"import{trial}")
        if target.killed(rng, 4 * SIZE, "import-bag", str(bags / "bag0")):
            _truthful(target)
        _recovered(target, lambda a: import_bag(a, bags / "bag0"))
        with target.archive() as archive:
            assert archive.dataset("mc:ds").state == "closed" and len(archive.dataset("mc:ds").members) == 2
