"""Benchmark of the evaluation suite: its speed, and (``--calibration``) its own false-alarm rate and power.

Speed (default): the full report (HTML + JSON) for

* 1e6 against 1e6 events of 20 numeric features (issue 5: at least 2e5 events per sample in the classifier, the
  whole report in at most 5 minutes on 2 cores), with a baseline measured in the same run: the per-feature W1 + KS
  computed with scipy.stats;
* 1e5 against 2e5 generated events of one physics channel (issue 9: at most 60 s on 2 cores), with the
  self-check's 20 null splits, every test at the default settings.

Calibration (``--calibration``), on mu mu and rho pi at 2e4 events per sample (references of 4e4):

* the family-wise false-alarm rate over reference-vs-reference evaluations (independent seeds; a few references
  per channel, each compared with many samples) with its Clopper-Pearson 95 % interval, against the target
  [alpha/4, alpha];
* each test family's null ``z = Phi^-1(1 - p)`` (mean, standard deviation) and its rates of p < 0.05 and p < 0.01;
* a power table over a ladder of distortions (momentum scale x1.0002 ... x1.01, EMC energy scale, resolution
  widened, a 5 % tracking-efficiency drop, broken track pairing): the fraction of tries in which each test family
  rejected, and the smallest detected distortion per family.

Each failed null evaluation is listed with its seeds and every rejected hypothesis (test, p-value, Holm level),
so that a false alarm can be traced to a test, a family or a reference.

Run: ``python benchmarks/bench_evaluation.py [--events 1000000] [--features 20] [--channel rhopi]`` or
``nice -n 10 python benchmarks/bench_evaluation.py --calibration [--null-evaluations 120] [--workers 2]
[--channels rhopi] [--ladder fine|none]`` (one channel; only the x1.0005 momentum rung, or no power ladder).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from scipy import stats
from vbes.datasets.simulation import simulate
from vbes.evaluation import EvaluationConfig, evaluate, write_report
from vbes.evaluation import distortions as dist
from vbes.evaluation.metrics import w1_and_ks
from vbes.evaluation.null import family_of, null_z
from vbes.evaluation.suite import load_sample

BUDGET_NUMERIC_S = 300.0
BUDGET_PHYSICS_S = 60.0
N_CALIBRATION = 20_000
ALPHA = 0.05

#: the power ladder: (distortion, label, function of (tables, seed))
LADDER: list[tuple[str, str, Callable[[dict[str, Any], int], dict[str, Any]]]] = [
    *[(f"momentum scale x{f}", "p scale", lambda t, s, f=f: dist.scale_momenta(t, f))
      for f in (1.0002, 1.0005, 1.001, 1.002, 1.005, 1.01)],
    *[(f"EMC energy scale x{f}", "EMC scale", lambda t, s, f=f: dist.scale_emc_energy(t, f))
      for f in (1.002, 1.005, 1.01, 1.02)],
    *[(f"resolution x{f}", "resolution", lambda t, s, f=f: dist.widen_resolution(t, f)) for f in (1.05, 1.1, 1.2)],
    ("tracking efficiency -5 %", "efficiency", lambda t, s: dist.drop_tracks(t, 0.05, seed=s)),
    ("track pairing shuffled", "decorrelation", lambda t, s: dist.shuffle_tracks(t, seed=s)),
]
FAMILIES = (
    "features/*/w1",
    "features/*/ks",
    "features/*/chi2_ndf",
    "features/*/presence",
    "correlations/max_abs_z",
    "distances/fpd",
    "distances/kpd",
    "classifier/auc",
    "observables/*/position",
    "observables/*/width",
    "observables/*/difference",
    "observables/*/chi2",
)


def make_tables(n_events: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two samples of correlated, partly non-Gaussian features (the second from another seed)."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(n_features, n_features)) / np.sqrt(n_features)
    out = []
    for s in (seed, seed + 1):
        r = np.random.default_rng(s)
        x = r.normal(size=(n_events, n_features)) @ mixing
        x[:, ::3] = np.exp(0.5 * x[:, ::3])  # skewed columns, like momenta and energies
        x[:, 1::5] = np.round(3 + x[:, 1::5])  # integer-valued columns, like multiplicities
        out.append(x)
    return out[0], out[1]


def _timed_report(sample: Any, reference: Any, config: EvaluationConfig, label: str) -> tuple[Any, float, float]:
    t_eval = time.perf_counter()
    result = evaluate(
        sample, reference, config=config,
        progress=lambda m: print(f"  [{label} {time.perf_counter() - t_eval:6.1f} s] {m}", flush=True),
    )
    t_report = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        write_report(result, folder)
    report_s = time.perf_counter() - t_report
    return result, time.perf_counter() - t_eval, report_s


def _print_stages(result: Any, report_s: float) -> None:
    for stage, seconds in result.timings.items():
        print(f"  {stage:28s} {seconds:7.1f} s")
    print(f"  {'report (HTML + JSON)':28s} {report_s:7.1f} s")


def speed(args: argparse.Namespace) -> None:
    """The two speed figures."""
    print(f"cores available: {len(os.sched_getaffinity(0))}")
    config = EvaluationConfig()
    totals = {}
    if args.events:
        t0 = time.perf_counter()
        sample, reference = make_tables(args.events, args.features, seed=1)
        print(f"make tables      {time.perf_counter() - t0:7.1f} s  ({args.events} x {args.features} each)")
        result, total, report_s = _timed_report(sample, reference, config, "numeric")
        print("\nnumeric tables: stage timings")
        _print_stages(result, report_s)
        print(f"  events per sample {result.n_used}, classifier {result.n_classifier} "
              f"({config.classifier_folds}-fold), "
              f"{len(result.tests)} tests / {result.n_hypotheses} hypotheses, failed {len(result.failed)}")
        totals["numeric"] = (total, BUDGET_NUMERIC_S, f"{args.events} vs {args.events} x {args.features} features")
        n = result.n_used
        t = time.perf_counter()
        for i in range(args.features):
            stats.wasserstein_distance(sample[:n, i], reference[:n, i])
            stats.ks_2samp(sample[:n, i], reference[:n, i], method="asymp")
        scipy_s = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(args.features):
            w1_and_ks(sample[:n, i], reference[:n, i])
        ours_s = time.perf_counter() - t
        print(f"  W1+KS, {args.features} features, one pass: scipy.stats {scipy_s:.2f} s, vbes {ours_s:.2f} s, "
              f"speed-up {scipy_s / ours_s:.1f}x")
    if args.physics_events:
        t0 = time.perf_counter()
        tables_ref = simulate(args.channel, 2 * args.physics_events, seed=11)
        tables_sample = simulate(args.channel, args.physics_events, seed=12)
        print(f"\nsimulate {args.channel} {time.perf_counter() - t0:7.1f} s (not counted)")
        result, total, report_s = _timed_report(tables_sample, tables_ref, config, args.channel)
        print(f"\n{args.channel}: stage timings (feature extraction counted in 'load')")
        _print_stages(result, report_s)
        print(f"  {len(result.tests)} tests / {result.n_hypotheses} hypotheses, failed {len(result.failed)}; "
              f"self-check: {result.calibration.get('n_failed_splits')} of {result.calibration.get('n_splits')} "
              "null splits failing")
        totals["physics"] = (total, BUDGET_PHYSICS_S,
                             f"{args.physics_events} vs {2 * args.physics_events} {args.channel} events")
    print()
    for label, (total, budget, what) in totals.items():
        print(f"TOTAL {label:8s} evaluation + report  {total:7.1f} s   budget {budget:4.0f} s   "
              f"ratio {total / budget:.2f}   ({what})")


# --- calibration ----------------------------------------------------------------------------------------


def _families(result: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in result.tests:
        if not t.counted:
            continue
        family = family_of(t.name)
        entry = out.setdefault(family, {"p": [], "failed": False})
        entry["p"].append(t.pvalue)
        entry["failed"] = entry["failed"] or not t.passed
    return out


def _one_evaluation(job: tuple[str, int, int, str | None, int, int]) -> dict[str, Any]:
    channel, reference_seed, sample_seed, distortion, try_seed, n = job
    if (channel, reference_seed) not in _REFERENCES:
        _REFERENCES[channel, reference_seed] = load_sample(simulate(channel, 2 * n, seed=reference_seed))
    reference = _REFERENCES[channel, reference_seed]
    tables = simulate(channel, n, seed=sample_seed)
    if distortion is not None:
        tables = next(function for name, _, function in LADDER if name == distortion)(tables, try_seed)
    # the default seed: samples differ by their generator seeds; a fixed seed keeps one cached reference per block
    config = EvaluationConfig(null_trials=0, alpha=ALPHA)
    result = evaluate(tables, reference, config=config, null_cache=_CACHE)
    failures = [(t.name, family_of(t.name), t.pvalue, t.threshold) for t in result.tests if t.counted and not t.passed]
    return {"channel": channel, "distortion": distortion, "passed": result.passed, "families": _families(result),
            "seconds": result.timings["total"], "seeds": (reference_seed, sample_seed), "failures": failures}


_REFERENCES: dict[tuple[str, int], Any] = {}
_CACHE: dict[Any, Any] = {}


def calibration(args: argparse.Namespace) -> None:
    """False-alarm rate, null z per family and the power ladder, on mu mu and rho pi."""
    channels = tuple(args.channels)
    jobs = []
    for channel in channels:
        c = ("mumu", "rhopi").index(channel)  # seeds depend on the channel only, not on which others run
        for k in range(args.null_evaluations):
            reference_seed = 10_000 * (c + 1) + k // args.per_reference
            jobs.append((channel, reference_seed, 500_000 + 10_000 * c + k, None, k, args.calibration_events))
        for d, (name, _, _) in enumerate(LADDER):
            if args.ladder == "none" or (args.ladder == "fine" and name != "momentum scale x1.0005"):
                continue
            tries = args.tries_fine if name == "momentum scale x1.0005" else args.tries
            for k in range(tries):
                jobs.append((channel, 10_000 * (c + 1) + 90 + k % 2, 900_000 + 10_000 * c + 100 * d + k, name, k,
                             args.calibration_events))
    # one worker per reference block keeps its cached reference: jobs are ordered so each worker's share shares refs
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for i, out in enumerate(pool.map(_one_evaluation, jobs, chunksize=max(1, args.per_reference // 2))):
            results.append(out)
            if (i + 1) % 25 == 0:
                print(f"  {i + 1}/{len(jobs)} evaluations, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n{len(jobs)} evaluations at {args.calibration_events} events per sample in "
          f"{time.perf_counter() - t0:.0f} s "
          f"({args.workers} workers; median {np.median([r['seconds'] for r in results]):.1f} s per evaluation)")

    print("\nFailed null evaluations: (reference seed, sample seed) and each rejected hypothesis (p, Holm level)")
    for r in results:
        if r["distortion"] is None and not r["passed"]:
            print(f"  {r['channel']:6s} {r['seeds']}: " + "; ".join(
                f"{name} p={p:.2e} < {level:.2e}" for name, _, p, level in r["failures"]))

    print(f"\nFamily-wise false-alarm rate (alpha = {ALPHA:g}, target [{ALPHA / 4:g}, {ALPHA:g}])")
    print(f"  {'channel':10s} {'evaluations':>11s} {'failed':>6s} {'rate':>7s}   95 % interval")
    nulls = [r for r in results if r["distortion"] is None]
    for channel in (*channels, "both"):
        rows = [r for r in nulls if channel in ("both", r["channel"])]
        k, n = sum(not r["passed"] for r in rows), len(rows)
        low = stats.beta.ppf(0.025, k, n - k + 1) if k else 0.0
        high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        verdict = "in target" if ALPHA / 4 <= k / n <= ALPHA else ("above alpha" if k / n > ALPHA else "below alpha/4")
        print(f"  {channel:10s} {n:11d} {k:6d} {k / n:7.3f}   [{low:.3f}, {high:.3f}]  {verdict}")

    print("\nNull z = Phi^-1(1 - p) per test family (both channels; calibrated: mean 0, sd 1; discrete or "
          "conservative p-values read lower)")
    print(f"  {'family':26s} {'values':>7s} {'mean':>7s} {'sd':>6s} {'p<0.05':>7s} {'p<0.01':>7s}")
    for family in FAMILIES:
        p = np.array([v for r in nulls for v in r["families"].get(family, {}).get("p", [])])
        if p.size == 0:
            continue
        z = np.array([null_z(v) for v in p])
        print(f"  {family:26s} {p.size:7d} {z.mean():7.2f} {z.std(ddof=1):6.2f} {np.mean(p < 0.05):7.3f} "
              f"{np.mean(p < 0.01):7.4f}")

    print("\nPower: fraction of tries in which each family rejected (any test of it failed)")
    short = [f.replace("features/*/", "").replace("observables/*/", "obs ").replace("correlations/", "")
             .replace("distances/", "").replace("classifier/", "") for f in FAMILIES]
    for channel in channels:
        print(f"\n  {channel}")
        print(f"  {'distortion':28s} {'tries':>5s} {'any':>5s} " + " ".join(f"{s[:8]:>8s}" for s in short))
        smallest: dict[tuple[str, str], str] = {}
        for name, group, _ in LADDER:
            rows = [r for r in results if r["channel"] == channel and r["distortion"] == name]
            if not rows:
                continue
            any_rate = np.mean([not r["passed"] for r in rows])
            rates = [np.mean([r["families"].get(f, {}).get("failed", False) for r in rows]) for f in FAMILIES]
            print(f"  {name:28s} {len(rows):5d} {any_rate:5.2f} " + " ".join(f"{v:8.2f}" for v in rates))
            for family, rate in zip(("any", *FAMILIES), (any_rate, *rates)):
                if rate >= 0.9:
                    smallest.setdefault((group, family), name)
        print(f"\n  smallest distortion detected in >= 90 % of tries, per family ({channel})")
        for group in dict.fromkeys(g for _, g, _ in LADDER):
            cells = [smallest.get((group, f), "-") for f in ("any", *FAMILIES)]
            print(f"  {group:14s} any: {cells[0]}")
            print("                 " + "; ".join(f"{s}: {c.split(' x')[-1] if ' x' in c else c}"
                                               for s, c in zip(short, cells[1:]) if c != "-"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="numeric-table figure (0: skip)")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--physics-events", type=int, default=100_000, help="physics figure (0: skip)")
    parser.add_argument("--channel", default="rhopi")
    parser.add_argument("--calibration", action="store_true", help="false-alarm rate, null z and power ladder")
    parser.add_argument("--null-evaluations", type=int, default=120, help="per channel")
    parser.add_argument("--per-reference", type=int, default=30, help="null evaluations sharing one reference")
    parser.add_argument("--tries", type=int, default=3, help="tries per ladder rung")
    parser.add_argument("--tries-fine", type=int, default=10, help="tries at the x1.0005 momentum scale")
    parser.add_argument("--channels", nargs="+", choices=("mumu", "rhopi"), default=["mumu", "rhopi"],
                        help="calibration channels")
    parser.add_argument("--ladder", choices=("full", "fine", "none"), default="full",
                        help="power ladder: every rung, only the x1.0005 momentum scale, or none")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--calibration-events", type=int, default=N_CALIBRATION, help="events per sample")
    args = parser.parse_args()
    if args.calibration:
        calibration(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
