"""Calibration-store lookup speed on SQLite and PostgreSQL, against a one-SQL-query-per-lookup baseline.

Targets (issue 2): at least 20,000 warm in-process lookups of (tag, type, run) per second, and under 1 ms to
resolve every payload type of a tag for one run, on both backends. Every warm lookup is validated against
the database (see vbes.calibration.store), so the figures include the price of never serving stale answers.

Run:  python benchmarks/bench_calibration.py [--seconds 1.0] [--pg postgresql+psycopg://postgres@127.0.0.1/test]
PostgreSQL is measured in a fresh database that the script creates and drops; it is skipped if unreachable.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from vbes.calibration import CalibrationStore
from vbes.calibration.defaults import DEFAULT_TAG, SIM_TAG

__all__ = ["main"]

TARGET_LOOKUPS_PER_S = 20_000
TARGET_RESOLVE_S = 1e-3


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str | None]:
    """A brand-new PostgreSQL database (dropped afterwards), or None if the server is unreachable."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"vbes_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        print(f"PostgreSQL unreachable at {admin_url}: {str(exc.orig).splitlines()[0]}; skipped")
        admin.dispose()
        yield None
        return
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def rate(work: Callable[[int], None], seconds: float) -> float:
    """Calls per second of ``work(i)`` over about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for i in range(n, n + 500):
            work(i)
        n += 500
    return n / elapsed


def baseline_lookup(store: CalibrationStore) -> Callable[[str, str, int], bytes]:
    """The naive store: one indexed SQL query per lookup (IoV + payload bytes), no cache."""
    query = sa.text(
        "SELECT p.blob, i.last_run FROM iov i JOIN global_tag g ON g.id = i.tag_id "
        "JOIN payload p ON p.sha256 = i.payload_sha256 WHERE g.name = :tag AND i.payload_type = :type "
        "AND i.first_run <= :run ORDER BY i.first_run DESC LIMIT 1")

    def lookup(tag: str, payload_type: str, run: int) -> bytes:
        with store.engine.connect() as conn:
            row = conn.execute(query, {"tag": tag, "type": payload_type, "run": run}).first()
        if row is None or row.last_run < run:
            raise LookupError(run)
        return bytes(row.blob)

    return lookup


def measure(label: str, url: str, seconds: float) -> dict[str, float]:
    store = CalibrationStore(url)
    try:
        report = store.init_defaults()
        store.clone_tag(DEFAULT_TAG, "BENCH-published", purpose="benchmark")
        store.publish_tag("BENCH-published")
        resolve_tag = SIM_TAG if report.sim is not None else DEFAULT_TAG
        # every lookup hits a payload: (type, run) drawn from the table's own IoVs
        rng = random.Random(1)
        iovs = store.iovs(DEFAULT_TAG)
        queries = [(i.payload_type, rng.randint(i.first, i.last)) for i in rng.choices(iovs, k=4096)]
        runs = [r for _, r in queries]

        base = baseline_lookup(store)
        base_rate = rate(lambda i: base(DEFAULT_TAG, *queries[i % 4096]), seconds)

        cold = CalibrationStore(url)
        t0 = time.perf_counter()
        cold.get(DEFAULT_TAG, *queries[0])
        cold_s = time.perf_counter() - t0
        cold.close()

        for t, r in queries:  # warm the payload cache
            store.get(DEFAULT_TAG, t, r)
        open_rate = rate(lambda i: store.get(DEFAULT_TAG, *queries[i % 4096]), seconds)
        published_rate = rate(lambda i: store.get("BENCH-published", *queries[i % 4096]), seconds)
        types = len(store.resolve(resolve_tag, -10000))
        store.resolve(resolve_tag, runs[0])
        samples = []
        for i in range(2000):
            t0 = time.perf_counter()
            store.resolve(resolve_tag, runs[i % 4096] if resolve_tag == DEFAULT_TAG else -10000 - i)
            samples.append(time.perf_counter() - t0)
        resolve_s = statistics.median(samples)
        p99_s = sorted(samples)[int(0.99 * len(samples))]
    finally:
        store.close()
    ok_rate = min(open_rate, published_rate) >= TARGET_LOOKUPS_PER_S
    print(f"\n[{label}] {url.split('@')[-1]}")
    print(f"  baseline (1 SQL query per lookup)  {base_rate:12,.0f} lookups/s")
    print(f"  cold first lookup (new store)      {cold_s * 1e3:12.2f} ms")
    print(f"  warm lookups, open tag             {open_rate:12,.0f} lookups/s   x{open_rate / base_rate:.1f} baseline")
    print(f"  warm lookups, published tag        {published_rate:12,.0f} lookups/s   "
          f"x{published_rate / base_rate:.1f} baseline")
    print(f"  resolve all {types:2d} types of {resolve_tag:15} {resolve_s * 1e6:9.1f} us median, {p99_s * 1e6:.1f} us p99")
    print(f"  targets: >= {TARGET_LOOKUPS_PER_S:,}/s {'PASS' if ok_rate else 'FAIL'}; resolve < 1 ms "
          f"{'PASS' if resolve_s < TARGET_RESOLVE_S else 'FAIL'}")
    return {"baseline": base_rate, "open": open_rate, "published": published_rate, "resolve_s": resolve_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per figure")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL admin URL (a fresh database is created next to it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("sqlite", f"sqlite:///{Path(tmp) / 'bench.sqlite'}", args.seconds)
    with postgres_database(args.pg) as pg_url:
        if pg_url is not None:
            measure("postgresql", pg_url, args.seconds)


if __name__ == "__main__":
    main()
