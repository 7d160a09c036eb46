"""Null calibration: what every metric reads when sample and reference come from the same distribution.

The reference is split, ``n_trials`` times, into two disjoint halves of the size used for the real test (no event
in both halves of a split; each split is a fresh random partition), and every metric is computed on each
reference-vs-reference pair. Each test is then reported as its value, the null's mean +- spread, and pass/fail:

* tests with a known null distribution (KS, chi2, the classifier AUC, observable z-scores) pass when their
  p-value is at least ``alpha / m``;
* distances without one (W1, correlation differences, FPD, KPD) pass when the value lies below the null's
  one-sided prediction bound ``mean + t(1 - alpha/m; K-1) * std * sqrt(1 + 1/K)`` from the K null values
  (Student's t, because the spread itself is estimated from only K splits; computed on the logarithms for
  strictly positive statistics, whose nulls are right-skewed).

``m`` is the number of tests run: the Bonferroni trials factor keeps the probability that a sample drawn from the
reference fails *any* test at most ``alpha`` (family-wise). The null splits also check the p-value tests: their
values on the splits should scatter as the assumed null says (e.g. observable z-scores with mean 0 and spread 1).

Example:
    >>> results = calibrate({"w1": MetricValue(0.5, None)}, [{"w1": MetricValue(v, None)} for v in (0.4, 0.6, 0.5)],
    ...                     alpha=0.05)
    >>> results[0].passed
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from vbes.errors import InsufficientSample

__all__ = ["MetricResult", "MetricValue", "calibrate", "empirical_threshold", "null_splits"]


@dataclass(frozen=True)
class MetricValue:
    """One test's outcome on one pair of samples.

    Args:
        value: the statistic (a distance, a z-score, chi2/ndf, an AUC).
        pvalue: its p-value where its null distribution is known, else None (then the empirical null decides).
        details: anything else worth reporting (fit results, errors, sizes).
    """

    value: float
    pvalue: float | None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class MetricResult:
    """A test's value with its null calibration and verdict."""

    name: str
    value: float
    pvalue: float | None
    decision: str
    null_values: list[float]
    null_mean: float | None
    null_std: float | None
    threshold: float
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def null_splits(n_reference: int, size: int, n_trials: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_trials`` pairs of disjoint index sets of ``size`` events each, drawn from ``range(n_reference)``.

    Raises :class:`InsufficientSample` when the reference cannot hold two disjoint sets of that size.
    """
    if 2 * size > n_reference:
        raise InsufficientSample(
            f"null splits of {size} + {size} events need a reference of at least {2 * size}; it has {n_reference}"
        )
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_trials):
        perm = rng.permutation(n_reference)
        out.append((np.sort(perm[:size]), np.sort(perm[size : 2 * size])))
    return out


def empirical_threshold(null_values: Sequence[float], level: float) -> float:
    """One-sided upper prediction bound at confidence ``1 - level`` for one more draw from the null.

    Strictly positive statistics (W1, correlation differences, FPD) have right-skewed nulls; for them the bound
    is computed on the logarithms (a log-normal null), otherwise on the values (a normal null).
    """
    values = np.asarray(null_values, dtype=np.float64)
    k = values.size
    if k < 2:
        raise InsufficientSample(f"an empirical null needs at least 2 splits; got {k}")
    factor = stats.t.ppf(1 - level, k - 1) * np.sqrt(1 + 1 / k)
    # (values spanning many decades -- e.g. a W1 that is 0 up to rounding -- stay linear)
    if np.all(values > 0) and values.max() < 1e6 * values.min():
        logs = np.log(values)
        return float(np.exp(min(logs.mean() + factor * logs.std(ddof=1), 700.0)))
    return float(values.mean() + factor * values.std(ddof=1))


def calibrate(
    tests: Mapping[str, MetricValue],
    null_runs: Sequence[Mapping[str, MetricValue]],
    alpha: float = 0.05,
    n_tests: int | None = None,
) -> list[MetricResult]:
    """Attach null calibration and pass/fail to every test.

    Args:
        tests: the sample-vs-reference outcomes by test name.
        null_runs: one mapping per null split, same names (a name missing from a split is skipped there).
        alpha: family-wise false-alarm probability.
        n_tests: the trials factor m (default: the number of tests given).
    """
    m = n_tests or max(len(tests), 1)
    level = alpha / m
    results = []
    for name, test in tests.items():
        null = [run[name] for run in null_runs if name in run]
        null_values = [float(t.value) for t in null]
        mean = float(np.mean(null_values)) if null_values else None
        std = float(np.std(null_values, ddof=1)) if len(null_values) > 1 else None
        if test.pvalue is not None:
            decision, threshold = "p-value >= alpha/m", level
            passed = test.pvalue >= level
        else:
            decision = "value <= null prediction bound"
            threshold = empirical_threshold(null_values, level)
            passed = test.value <= threshold
        results.append(
            MetricResult(
                name,
                float(test.value),
                test.pvalue,
                decision,
                null_values,
                mean,
                std,
                float(threshold),
                bool(passed),
                dict(test.details),
            )
        )
    return results
