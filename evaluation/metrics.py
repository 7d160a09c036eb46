"""Per-feature and correlation metrics between a sample A and a reference B.

Every metric takes the two samples as 1-D (or, for correlations, 2-D) arrays, ignores NaN entries (NaN marks
"not measured", e.g. no TOF hit; the fraction of present values is compared by :func:`presence_difference`),
and refuses with :class:`vbes.errors.InsufficientSample` below its stated minimum sample size
(:data:`MIN_EVENTS`).

Binned metrics use *fixed* binning: :func:`fixed_bins` derives the edges from the reference alone, once, and the
same edges are used for the sample test and every null split, so the values are comparable.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> a, b = rng.normal(0, 1, 5000), rng.normal(0, 1, 5000)
    >>> round(wasserstein1(a, b, resolution=0.5).value_over_resolution, 3) < 0.2
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from vbes.errors import InsufficientSample, InvalidInput

__all__ = [
    "MIN_EVENTS",
    "Chi2Result",
    "CorrelationDifference",
    "KSResult",
    "W1Result",
    "chi2_ndf",
    "correlation_difference",
    "finite",
    "fixed_bins",
    "kolmogorov_smirnov",
    "presence_difference",
    "require_events",
    "separation_power",
    "w1_and_ks",
    "wasserstein1",
]

#: minimum number of (finite) values per sample below which each metric refuses to report
MIN_EVENTS: dict[str, int] = {
    # W1 of two empirical distributions is meaningful from a few dozen values; 100 keeps its noise < ~10 %.
    "w1": 100,
    # the asymptotic KS p-value is accurate from ~100 values per sample
    "ks": 100,
    # chi2 needs ~5 expected entries per bin over the default 40 bins
    "chi2": 200,
    "separation_power": 200,
    "presence": 100,
    # a correlation coefficient's error is ~1/sqrt(n): 500 values give +-0.045
    "correlation": 500,
}


def require_events(metric: str, n: int, which: str = "sample", minimum: int | None = None) -> None:
    """Raise :class:`InsufficientSample` when ``n`` is below the metric's minimum."""
    need = MIN_EVENTS[metric] if minimum is None else minimum
    if n < need:
        raise InsufficientSample(f"{metric} needs at least {need} values per sample; the {which} has {n}")


def finite(values: np.ndarray) -> np.ndarray:
    """The finite entries of a 1-D array as float64."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _pair(metric: str, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = finite(a), finite(b)
    require_events(metric, a.size, "sample")
    require_events(metric, b.size, "reference")
    return a, b


@dataclass(frozen=True)
class W1Result:
    """Wasserstein-1 distance, in the feature's unit and (when a resolution is given) in units of it."""

    value: float
    resolution: float | None
    value_over_resolution: float | None


@dataclass(frozen=True)
class KSResult:
    """Two-sample Kolmogorov–Smirnov statistic and its p-value."""

    statistic: float
    pvalue: float


def _ecdf_distances(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    # W1 = integral |F_A - F_B| dx and KS = sup |F_A - F_B| from one pass over the merged sorted values. Same
    # formulas as scipy.stats.wasserstein_distance / ks_2samp, which handle weights and n-D inputs and cost ~5x
    # more per feature -- that matters with dozens of features times many null splits.
    a, b = np.sort(a), np.sort(b)
    merged = np.sort(np.concatenate([a, b]))
    gap = np.abs(np.searchsorted(a, merged, "right") / a.size - np.searchsorted(b, merged, "right") / b.size)
    return float(np.dot(gap[:-1], np.diff(merged))), float(gap.max())


def w1_and_ks(a: np.ndarray, b: np.ndarray, resolution: float | None = None) -> tuple[W1Result, KSResult]:
    """:func:`wasserstein1` and :func:`kolmogorov_smirnov` in one pass (the empirical CDFs are shared)."""
    a, b = _pair("w1", a, b)
    require_events("ks", min(a.size, b.size))
    w1, d = _ecdf_distances(a, b)
    # asymptotic two-sided p-value as scipy's ks_2samp(method="asymp")
    effective_n = round(a.size * b.size / (a.size + b.size))
    pvalue = float(np.clip(stats.kstwo.sf(d, effective_n), 0.0, 1.0))
    over = w1 / resolution if resolution else None
    return W1Result(w1, resolution, over), KSResult(d, pvalue)


def wasserstein1(a: np.ndarray, b: np.ndarray, resolution: float | None = None) -> W1Result:
    """Wasserstein-1 (earth mover's) distance of the two 1-D distributions.

    Args:
        a: sample values.
        b: reference values.
        resolution: the feature's detector resolution in the same unit; the distance is also reported in units
            of it (a W1 of 0.1 resolution means the distributions differ by a tenth of what the detector resolves).
    """
    a, b = _pair("w1", a, b)
    value = _ecdf_distances(a, b)[0]
    over = value / resolution if resolution else None
    return W1Result(value, resolution, over)


def kolmogorov_smirnov(a: np.ndarray, b: np.ndarray) -> KSResult:
    """Two-sample Kolmogorov–Smirnov test (asymptotic p-value; exact ties make it conservative)."""
    a, b = _pair("ks", a, b)
    return w1_and_ks(a, b)[1]


def fixed_bins(reference: np.ndarray, n_bins: int = 40, coverage: float = 0.998) -> np.ndarray:
    """Bin edges derived from the reference only: ``n_bins`` equal-width bins over its central ``coverage``.

    Values outside fall into an underflow and an overflow bin (``-inf`` and ``+inf`` outer edges), so no entry is
    lost. Integer-valued features (counts) get one bin per integer value instead.
    """
    ref = finite(reference)
    if ref.size == 0:
        raise InsufficientSample("fixed_bins needs at least one finite reference value")
    tail = (1.0 - coverage) / 2
    lo, hi = np.quantile(ref, [tail, 1.0 - tail])
    if np.all(ref == np.round(ref)) and hi - lo <= 2 * n_bins:
        inner = np.arange(np.floor(lo), np.ceil(hi) + 2) - 0.5
    elif hi <= lo:
        inner = np.array([lo - 0.5, lo + 0.5]) if lo == 0 else np.array([lo - abs(lo) * 1e-6, lo + abs(lo) * 1e-6])
    else:
        inner = np.linspace(lo, hi, n_bins + 1)
    return np.concatenate([[-np.inf], inner, [np.inf]])


@dataclass(frozen=True)
class Chi2Result:
    """Two-sample chi2 of histograms with fixed binning."""

    chi2: float
    ndf: int
    chi2_ndf: float
    pvalue: float


def chi2_ndf(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> Chi2Result:
    """Chi2 per degree of freedom between two unweighted histograms of different totals.

    Uses the two-sample statistic for unweighted histograms (Gagunashvili, NIM A 614 (2010) 287; ROOT's
    ``TH1::Chi2Test("UU")``): ``chi2 = sum_i (N_B n_i - N_A m_i)^2 / (N_A N_B (n_i + m_i))`` over bins with entries,
    ``ndf`` = (number of such bins) - 1.

    Args:
        a: sample values.
        b: reference values.
        edges: fixed bin edges (see :func:`fixed_bins`).
    """
    a, b = _pair("chi2", a, b)
    n, _ = np.histogram(a, edges)
    m, _ = np.histogram(b, edges)
    filled = (n + m) > 0
    n, m = n[filled].astype(np.float64), m[filled].astype(np.float64)
    total_a, total_b = n.sum(), m.sum()
    ndf = int(filled.sum()) - 1
    if ndf < 1:
        return Chi2Result(0.0, 0, 0.0, 1.0)
    chi2 = float(np.sum((total_b * n - total_a * m) ** 2 / (n + m)) / (total_a * total_b))
    return Chi2Result(chi2, ndf, chi2 / ndf, float(stats.chi2.sf(chi2, ndf)))


def separation_power(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """The CaloChallenge separation power ``0.5 * sum_i (h_A,i - h_B,i)^2 / (h_A,i + h_B,i)``.

    ``h`` are the histograms normalised to unit sum on the fixed ``edges``; 0 for identical histograms, 1 for
    disjoint ones.
    """
    a, b = _pair("separation_power", a, b)
    h_a = np.histogram(a, edges)[0].astype(np.float64)
    h_b = np.histogram(b, edges)[0].astype(np.float64)
    h_a /= h_a.sum()
    h_b /= h_b.sum()
    total = h_a + h_b
    mask = total > 0
    return float(0.5 * np.sum((h_a[mask] - h_b[mask]) ** 2 / total[mask]))


def presence_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Difference of the fractions of finite (present) values, and its significance in standard errors.

    A feature that is NaN when not measured (no TOF hit, no second track) carries information in how often it
    is present; this compares those fractions as binomial proportions (pooled two-proportion z-test).
    """
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    require_events("presence", a.size, "sample")
    require_events("presence", b.size, "reference")
    k_a, k_b = np.isfinite(a).sum(), np.isfinite(b).sum()
    f_a, f_b = k_a / a.size, k_b / b.size
    pooled = (k_a + k_b) / (a.size + b.size)
    se = np.sqrt(pooled * (1 - pooled) * (1 / a.size + 1 / b.size))
    z = 0.0 if se == 0 else (f_a - f_b) / se
    return float(f_a - f_b), float(z)


@dataclass(frozen=True)
class CorrelationDifference:
    """Difference of the Pearson correlation matrices ``corr(A) - corr(B)``."""

    names: tuple[str, ...]
    difference: np.ndarray
    max_abs: float
    rms: float


def correlation_difference(a: np.ndarray, b: np.ndarray, names: tuple[str, ...] | None = None) -> CorrelationDifference:
    """Correlation-matrix difference over the events where every column is finite.

    Args:
        a: sample, shape ``(n_events, n_features)``.
        b: reference, same number of columns.
        names: column names (for the report).

    Returns:
        the difference matrix, its largest absolute off-diagonal entry and the RMS of the off-diagonal entries.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InvalidInput(f"correlation_difference needs two 2-D arrays with equal columns; got {a.shape}, {b.shape}")
    a = a[np.isfinite(a).all(axis=1)]
    b = b[np.isfinite(b).all(axis=1)]
    require_events("correlation", a.shape[0], "sample (events with every feature present)")
    require_events("correlation", b.shape[0], "reference (events with every feature present)")
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.nan_to_num(np.corrcoef(a, rowvar=False)) - np.nan_to_num(np.corrcoef(b, rowvar=False))
    diff = np.atleast_2d(diff)
    off = ~np.eye(diff.shape[0], dtype=bool)
    values = np.abs(diff[off])
    names = tuple(names) if names is not None else tuple(f"x{i}" for i in range(diff.shape[0]))
    if values.size == 0:
        return CorrelationDifference(names, diff, 0.0, 0.0)
    return CorrelationDifference(names, diff, float(values.max()), float(np.sqrt(np.mean(values**2))))
