"""Benchmark: the full evaluation report for 1e6 against 1e6 events of 20 features.

Target (issue 5): at least 2e5 events per sample in the classifier test, the null from at least 5 disjoint
reference-vs-reference splits, the whole report (HTML + JSON) in at most 5 minutes on 2 cores.

Prints the time of every stage, the total against the 300 s budget, and a baseline measured in the same run:
the per-feature W1 + KS computed with scipy.stats (what the suite would cost without its shared-CDF pass).

Run: ``python benchmarks/bench_evaluation.py [--events 1000000] [--features 20]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from scipy import stats
from vbes.evaluation import EvaluationConfig, evaluate, write_report
from vbes.evaluation.metrics import w1_and_ks

BUDGET_S = 300.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    args = parser.parse_args()

    print(f"cores available: {len(os.sched_getaffinity(0))}")
    t0 = time.perf_counter()
    sample, reference = make_tables(args.events, args.features, seed=1)
    print(f"make tables      {time.perf_counter() - t0:7.1f} s  ({args.events} x {args.features} each)")

    config = EvaluationConfig(
        classifier_events=200_000, classifier_null_trials=5, distance_null_trials=5, null_trials=20, classifier_folds=5
    )
    t_eval = time.perf_counter()
    result = evaluate(
        sample,
        reference,
        config=config,
        progress=lambda m: print(f"  [{time.perf_counter() - t_eval:6.1f} s] {m}", flush=True),
    )
    t_report = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_report(result, folder)
        size = paths["html"].stat().st_size
    report_s = time.perf_counter() - t_report
    total = time.perf_counter() - t_eval

    print("\nstage timings")
    for stage, seconds in result.timings.items():
        print(f"  {stage:28s} {seconds:7.1f} s")
    print(f"  {'report (HTML + JSON)':28s} {report_s:7.1f} s   ({size / 1e6:.1f} MB HTML)")
    print(f"\nevents per sample in metrics     {result.n_used}")
    print(f"events per sample in classifier  {result.n_classifier} ({config.classifier_folds}-fold)")
    print(
        f"null splits                      {config.null_trials} (features, correlations), "
        f"{config.distance_null_trials} (FPD, KPD), {config.classifier_null_trials} (classifier)"
    )
    print(f"tests                            {len(result.tests)}, failed {len(result.failed)}")
    auc = result.test("classifier/auc")
    print(
        f"classifier AUC                   {auc.value:.4f} +- {auc.details['auc_error']:.4f} "
        f"(null {np.mean(auc.null_values):.4f} +- {np.std(auc.null_values):.4f})"
    )
    print(f"\nTOTAL evaluation + report        {total:7.1f} s   budget {BUDGET_S:.0f} s   ratio {total / BUDGET_S:.2f}")

    # baseline in the same run: scipy's W1 + KS for one sample-vs-reference pass over every feature
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
    print(
        f"W1+KS, {args.features} features, one pass: scipy.stats {scipy_s:.2f} s, vbes {ours_s:.2f} s, "
        f"speed-up {scipy_s / ours_s:.1f}x (x{config.null_trials + 1} passes with the null)"
    )


if __name__ == "__main__":
    main()
