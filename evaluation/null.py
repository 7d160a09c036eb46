"""Null calibration and multiple testing: every test has a p-value, and the family of tests is judged by Holm.

Every test of the suite carries a calibrated p-value of its own: an exact or asymptotic one (KS, chi2, binomial
and peak z-scores, the classifier's per-fold Mann-Whitney AUC), one simulated from the asymptotic null of the
statistic (W1: a Brownian bridge on the reference's quantile function), or one from a permutation null (FPD,
KPD). Where a null is sampled (simulation, permutations), :func:`tail_pvalue` takes the empirical fraction while
enough draws exceed the observed value and a Pearson type III fit of the draws beyond that (the per-test levels
of Holm's procedure are far below 1/number of draws).

The family-wise false-alarm probability ``alpha`` is kept by Holm's step-down procedure over the *distinct*
hypotheses (:func:`holm`): sorted p-values ``p_(1) <= ... <= p_(m)`` are rejected while ``p_(k) < alpha / (m - k
+ 1)``. It is at least as powerful as Bonferroni with the same guarantee. A test that reuses another's p-value
(the separation power of the chi2's histograms, the presence of every variable of a missing track) is reported
beside it with ``reuses`` naming it, follows its verdict and is not counted in ``m``.

Reference-vs-reference null splits (two disjoint halves of the reference, each of the test's size; the halves of
different splits overlap) decide nothing: on them the p-value tests are run again as a *self-check*, giving each
test family's null ``z = Phi^-1(1 - p)`` (mean 0 and standard deviation 1 when the p-values are calibrated) and
how many splits would have failed. K splits resolve a false-alarm rate of ``1 / (K + 1)`` at best, so fewer than
:func:`minimum_null_trials` ``(alpha)`` are refused.

Example:
    >>> results = calibrate({"a": MetricValue(0.1, 0.01), "b": MetricValue(0.2, 0.04)}, [], alpha=0.05)
    >>> [r.passed for r in results]   # Holm: 0.01 < 0.05/2 is rejected, then 0.04 < 0.05/1 too
    [False, False]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from vbes.errors import InsufficientSample, InvalidInput, TooFewNullTrials

__all__ = [
    "MetricResult",
    "MetricValue",
    "calibrate",
    "check_null_trials",
    "family_of",
    "holm",
    "minimum_null_trials",
    "null_splits",
    "null_z",
    "self_check",
    "tail_pvalue",
]


@dataclass(frozen=True)
class MetricValue:
    """One test's outcome on one pair of samples.

    Args:
        value: the statistic (a distance, a z-score, chi2/ndf, an AUC).
        pvalue: its calibrated p-value.
        details: anything else worth reporting (fit results, errors, sizes).
        reuses: the name of the test whose p-value (and hypothesis) this one shares, or None.
    """

    value: float
    pvalue: float
    details: Mapping[str, Any] = field(default_factory=dict)
    reuses: str | None = None


@dataclass
class MetricResult:
    """A test's value, p-value, Holm level and verdict, with its values on the null splits (self-check)."""

    name: str
    value: float
    pvalue: float
    decision: str
    null_values: list[float]
    null_mean: float | None
    null_std: float | None
    #: the p-value below which this test fails (its Holm level; for a reused p-value, that of the test reused)
    threshold: float
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)
    reuses: str | None = None

    @property
    def counted(self) -> bool:
        """Whether this test is one of the m distinct hypotheses."""
        return self.reuses is None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counted"] = self.counted
        return out


def minimum_null_trials(alpha: float) -> int:
    """Fewest null splits whose self-check can resolve a false-alarm rate of ``alpha``: ``1/(K+1) <= alpha``."""
    return max(1, math.ceil(1.0 / alpha - 1e-9) - 1)


def null_splits(n_reference: int, size: int, n_trials: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_trials`` pairs of disjoint index sets of ``size`` events each, drawn from ``range(n_reference)``.

    The two halves of a split are disjoint; different splits are independent partitions, so they overlap.
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


def tail_pvalue(observed: float, draws: np.ndarray, min_exceedances: int = 10) -> float:
    """P(T >= observed) from draws of the null of T.

    With at least ``min_exceedances`` draws at or above the observed value: ``(k + 1) / (K + 1)``. Beyond that
    (far tail): a Pearson type III distribution with the draws' mean, spread and skewness, the skewness raised
    by one standard error of its estimate (``sqrt(6/K)``) so that a noisy estimate errs on the heavy, conservative
    side.
    """
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size < 20:
        raise InsufficientSample(f"a sampled null needs at least 20 draws; got {draws.size}")
    if not np.isfinite(observed):
        return 0.0 if observed > 0 else 1.0
    exceed = int(np.count_nonzero(draws >= observed))
    if exceed >= min_exceedances:
        return (exceed + 1) / (draws.size + 1)
    mean, sd = float(draws.mean()), float(draws.std(ddof=1))
    if sd == 0:
        return 1.0 if observed <= mean else 0.0
    skew = max(float(stats.skew(draws)), 0.0) + math.sqrt(6.0 / draws.size)
    return float(min(stats.pearson3.sf(observed, skew, loc=mean, scale=sd), (exceed + 1) / (draws.size + 1)))


def null_z(pvalue: float) -> float:
    """``Phi^-1(1 - p)``: standard normal when the p-value is uniform (calibrated) under the null."""
    return float(stats.norm.isf(min(max(pvalue, 1e-300), 1.0 - 1e-16)))


def holm(pvalues: Sequence[float], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down procedure.

    Args:
        pvalues: the p-values of m distinct hypotheses.
        alpha: family-wise false-alarm probability.

    Returns:
        ``(rejected, level)``: whether each hypothesis is rejected, and the level its p-value was compared with
        (``alpha / (m - rank + 1)``, rank 1 = smallest p-value).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    levels = np.empty(m)
    levels[order] = alpha / (m - np.arange(m))
    rejected = np.zeros(m, dtype=bool)
    for i in order:
        if not p[i] < levels[i]:
            break
        rejected[i] = True
    return rejected, levels


def family_of(name: str) -> str:
    """A test's family: its name with the feature or observable replaced by ``*`` (``features/*/ks``)."""
    parts = name.split("/")
    if parts[0] in ("features", "observables") and len(parts) == 3:
        return f"{parts[0]}/*/{parts[2]}"
    return name


def _verdicts(tests: Mapping[str, MetricValue], alpha: float) -> dict[str, tuple[bool, float]]:
    for name, test in tests.items():
        if test.pvalue is None or not (0.0 <= test.pvalue <= 1.0):
            raise InvalidInput(f"test {name!r} has no calibrated p-value ({test.pvalue!r})")
        if test.reuses is not None and (test.reuses not in tests or tests[test.reuses].reuses is not None):
            raise InvalidInput(f"test {name!r} reuses {test.reuses!r}, which is not a counted test of the family")
    primary = [name for name, test in tests.items() if test.reuses is None]
    rejected, levels = holm([tests[name].pvalue for name in primary], alpha)
    out = {name: (not bool(r), float(level)) for name, r, level in zip(primary, rejected, levels)}
    for name, test in tests.items():
        if test.reuses is not None:
            out[name] = out[test.reuses]
    return out


def calibrate(
    tests: Mapping[str, MetricValue],
    null_runs: Sequence[Mapping[str, MetricValue]],
    alpha: float = 0.05,
) -> list[MetricResult]:
    """Judge every test by Holm's procedure over the distinct hypotheses; attach its null-split values.

    Args:
        tests: the sample-vs-reference outcomes by test name.
        null_runs: one mapping per null split (self-check only; a name missing from a split is skipped there).
        alpha: family-wise false-alarm probability.
    """
    verdicts = _verdicts(tests, alpha)
    results = []
    for name, test in tests.items():
        passed, level = verdicts[name]
        null_values = [float(run[name].value) for run in null_runs if name in run]
        decision = (
            f"reuses the p-value of {test.reuses}" if test.reuses is not None else "Holm: p-value >= its level"
        )
        results.append(
            MetricResult(
                name=name,
                value=float(test.value),
                pvalue=float(test.pvalue),
                decision=decision,
                null_values=null_values,
                null_mean=float(np.mean(null_values)) if null_values else None,
                null_std=float(np.std(null_values, ddof=1)) if len(null_values) > 1 else None,
                threshold=level,
                passed=passed,
                details=dict(test.details),
                reuses=test.reuses,
            )
        )
    return results


def self_check(null_runs: Sequence[Mapping[str, MetricValue]], alpha: float) -> dict[str, Any]:
    """What the null splits say about the calibration: failing splits, and each family's null z.

    Returns:
        ``{"n_splits", "n_failed_splits", "failed_fraction", "binomial_pvalue", "families": {family: {"n", "mean",
        "std"}}}``; ``binomial_pvalue`` is P(at least that many failing splits | false-alarm rate alpha).
    """
    failed = 0
    z_by_family: dict[str, list[float]] = {}
    for run in null_runs:
        if not run:
            continue
        verdicts = _verdicts(run, alpha)
        failed += any(not passed for passed, _ in verdicts.values())
        for name, test in run.items():
            if test.reuses is None:
                z_by_family.setdefault(family_of(name), []).append(null_z(test.pvalue))
    n = len([run for run in null_runs if run])
    families = {
        family: {"n": len(z), "mean": float(np.mean(z)), "std": float(np.std(z, ddof=1)) if len(z) > 1 else None}
        for family, z in sorted(z_by_family.items())
    }
    return {
        "n_splits": n,
        "n_failed_splits": failed,
        "failed_fraction": failed / n if n else None,
        "binomial_pvalue": float(stats.binom.sf(failed - 1, n, alpha)) if n else None,
        "families": families,
    }


def check_null_trials(n_trials: int, alpha: float, option: str = "null_trials") -> None:
    """Refuse a number of null splits too small for ``alpha`` (see :func:`minimum_null_trials`)."""
    need = minimum_null_trials(alpha)
    if n_trials < need:
        raise TooFewNullTrials(
            f"{option} {n_trials} is too few for alpha = {alpha:g}: {n_trials} splits resolve a false-alarm rate of "
            f"1/{n_trials + 1} at best; use at least {need}"
        )
