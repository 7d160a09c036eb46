"""Benchmark: one-pass ``put`` (MD5 + Adler-32 + SHA-256 while writing the hot replica, fsync, rename)
against the two-pass baseline ``sha256sum FILE`` then ``cp FILE DEST`` then ``sync DEST``, on the same file in
the same run.

The baseline computes one checksum, ``put`` three; both end with the copy on disk (``put`` fsyncs its file and
folder, the baseline runs ``sync DEST``, which fsyncs just that file - coreutils >= 8.24). Before each timed
part everything pending is flushed (``os.sync``) so neither pays for the other's dirty pages. The source file
is in the page cache for both (it was just written). The cold replica is NOT in the timed ``put`` path: the
timed call writes the hot tier only; the copy to the cold tier (read hot, checksum, write, fsync, rename) is
then timed on its own, as is a default ``put`` that writes both tiers.

Usage::

    python benchmarks/bench_archive.py                 # 1 GiB
    python benchmarks/bench_archive.py --size-mb 64    # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vbes.archive import Archive

__all__ = ["main"]


def _timed(func: Callable[[], object]) -> float:
    os.sync()
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def _write_source(path: Path, size: int) -> None:
    block = 8 * 1024 * 1024
    with path.open("wb") as f:
        remaining = size
        while remaining:
            n = min(block, remaining)
            f.write(os.urandom(n))
            remaining -= n
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MiB (default 1024 = 1 GiB)")
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary folder)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="repetitions; the best time of each is reported (the machine is shared and noisy)"
    )
    args = parser.parse_args(argv)
    size = args.size_mb * 1024 * 1024

    scratch = Path(tempfile.mkdtemp(prefix="vbes-bench-archive-", dir=args.dir))
    try:
        src = scratch / "source.bin"
        print(f"writing a {args.size_mb} MiB random source file in {scratch} ...")
        _write_source(src, size)
        baseline_hash, baseline_copy, put_hot, cold_copy, put_both = [], [], [], [], []
        for rep in range(args.repeat):
            dest = scratch / f"copy{rep}.bin"
            sha = subprocess.run(["sha256sum", str(src)], check=True, capture_output=True, text=True)
            _ = sha  # warm-up of the tool itself is negligible; the timed run follows
            baseline_hash.append(
                _timed(lambda: subprocess.run(["sha256sum", str(src)], check=True, capture_output=True))
            )
            baseline_copy.append(
                _timed(
                    lambda d=dest: (
                        subprocess.run(["cp", str(src), str(d)], check=True),
                        subprocess.run(["sync", str(d)], check=True),
                    )
                )
            )
            dest.unlink()

            with Archive(
                f"sqlite:///{scratch / f'cat{rep}.sqlite'}",
                {"hot": str(scratch / f"hot{rep}"), "cold": str(scratch / f"cold{rep}")},
            ) as archive:
                put_hot.append(_timed(lambda a=archive: a.put(src, "bench:one-pass.bin", tiers=["hot"])))
                cold_copy.append(_timed(lambda a=archive: a.replicate("bench:one-pass.bin", "cold")))
            shutil.rmtree(scratch / f"hot{rep}")
            shutil.rmtree(scratch / f"cold{rep}")
            with Archive(
                f"sqlite:///{scratch / f'catb{rep}.sqlite'}",
                {"hot": str(scratch / f"hot{rep}"), "cold": str(scratch / f"cold{rep}")},
            ) as archive:
                put_both.append(_timed(lambda a=archive: a.put(src, "bench:both.bin")))
            shutil.rmtree(scratch / f"hot{rep}")
            shutil.rmtree(scratch / f"cold{rep}")

        mib = size / 2**20
        base = min(baseline_hash) + min(baseline_copy)
        one = min(put_hot)
        print(f"\nfile: {mib:.0f} MiB, best of {args.repeat}, cpus: {os.cpu_count()}")
        print(f"baseline  sha256sum                      {min(baseline_hash):7.2f} s")
        print(f"baseline  cp + sync DEST                 {min(baseline_copy):7.2f} s")
        print(f"baseline  total (two passes, 1 checksum) {base:7.2f} s  {mib / base:7.0f} MiB/s")
        print(
            f"put, hot tier only (one pass, MD5 + Adler-32 + SHA-256, fsync, rename, catalog) "
            f"{one:7.2f} s  {mib / one:7.0f} MiB/s"
        )
        print(
            f"ratio put / baseline = {one / base:.2f}  "
            f"(target <= 1.0: {'MET' if one / base <= 1.0 else 'NOT MET'})"
        )
        print("cold replica: written AFTER the timed put path, timed separately:")
        print(f"  replicate hot -> cold (read, 3 checksums, write, fsync, rename)  {min(cold_copy):7.2f} s")
        print(
            f"  default put writing both tiers (hot pass + cold copy)           {min(put_both):7.2f} s  "
            f"(ratio to baseline {min(put_both) / base:.2f})"
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
