"""Event-file throughput: write/read events/s and bytes/event, against ``np.save`` of the same arrays.

    python benchmarks/bench_eventfile.py [--events 200000]

The synthetic events (:func:`vbes.datasets.eventfile.example_tables`: ~2 tracks, ~5.5 showers, ~5.5 truth
particles per event, random values) are close to incompressible, so the size ratio is a worst case; the event
file also pays for validation, Fletcher-32 checksums and the content digest, which ``np.save`` does not do.
Reads are of the default (gzip) file. The machine's load (other jobs) moves every figure; the ratios are
measured in the same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from vbes.datasets import EventWriter, content_digest, iter_events, read_events
from vbes.datasets.eventfile import example_tables, slice_events


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000, help="events per append")
    args = parser.parse_args()
    n = args.events
    tables = example_tables(n, seed=1)
    batches = [slice_events(tables, a, min(a + args.batch, n)) for a in range(0, n, args.batch)]
    work = Path(tempfile.mkdtemp(prefix="bench-eventfile-"))
    try:
        t_write_by = {}
        for compression in ("lzf", "gzip"):  # gzip (the default) last: it is the file read below
            path = work / f"events-{compression}.h5"
            t0 = time.perf_counter()
            with EventWriter(path, {"generator": "benchmark"}, compression=compression) as writer:
                for batch in batches:
                    writer.append(batch)
            t_write_by[compression] = (time.perf_counter() - t0, path.stat().st_size)
        t_write = t_write_by["gzip"][0]

        t0 = time.perf_counter()
        read_events(path)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in iter_events(path, chunk_events=50_000):
            pass
        t_iter = time.perf_counter() - t0
        t0 = time.perf_counter()
        for start in np.random.default_rng(0).integers(0, n - 100, 200):
            read_events(path, int(start), int(start) + 100)
        t_random = (time.perf_counter() - t0) / 200
        t0 = time.perf_counter()
        content_digest(path)
        t_digest = time.perf_counter() - t0
        size = path.stat().st_size

        baseline = work / "npy"
        baseline.mkdir()
        t0 = time.perf_counter()
        for table, cols in tables.items():
            for name, values in cols.items():
                np.save(baseline / f"{table}.{name}.npy", values)
        t_np_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        for file in baseline.iterdir():
            np.load(file)
        t_np_read = time.perf_counter() - t0
        np_size = _folder_size(baseline)
    finally:
        shutil.rmtree(work)

    print(f"events: {n} ({sum(len(c[next(iter(c))]) for t, c in tables.items() if t != 'events')} objects)")
    print(f"{'':24s} {'event file':>14s} {'np.save':>14s} {'ratio':>8s}")
    print(f"{'write events/s':24s} {n / t_write:14,.0f} {n / t_np_write:14,.0f} {t_np_write / t_write:8.2f}")
    t_lzf, size_lzf = t_write_by["lzf"]
    print(
        f"{'write events/s (lzf)':24s} {n / t_lzf:14,.0f} {n / t_np_write:14,.0f} {t_np_write / t_lzf:8.2f}"
    )
    print(f"{'read all events/s':24s} {n / t_read:14,.0f} {n / t_np_read:14,.0f} {t_np_read / t_read:8.2f}")
    print(f"{'stream (iter) events/s':24s} {n / t_iter:14,.0f} {'':>14s} {t_np_read / t_iter:8.2f}")
    print(f"{'bytes/event':24s} {size / n:14,.1f} {np_size / n:14,.1f} {size / np_size:8.2f}")
    print(f"{'bytes/event (lzf)':24s} {size_lzf / n:14,.1f} {np_size / n:14,.1f} {size_lzf / np_size:8.2f}")
    print(f"random access, 100 events: {t_random * 1e3:.1f} ms; content digest: {n / t_digest:,.0f} events/s")


if __name__ == "__main__":
    main()
