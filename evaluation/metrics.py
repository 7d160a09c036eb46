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
    "CorrelationTest",
    "FeatureComparison",
    "KSResult",
    "SortedReference",
    "W1Result",
    "chi2_counts",
    "chi2_ndf",
    "compare_sorted",
    "correlation_difference",
    "correlation_test",
    "correlation_variances",
    "finite",
    "fixed_bins",
    "kolmogorov_smirnov",
    "ks_pvalue",
    "presence_difference",
    "require_events",
    "presence_test",
    "separation_of_counts",
    "separation_power",
    "w1_and_ks",
    "w1_null_draws",
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
    pvalue = ks_pvalue(d, a.size, b.size)
    over = w1 / resolution if resolution else None
    return W1Result(w1, resolution, over), KSResult(d, pvalue)


def ks_pvalue(statistic: float, n_a: int, n_b: int) -> float:
    """Asymptotic two-sided KS p-value as scipy's ``ks_2samp(method="asymp")`` (ties make it conservative)."""
    effective_n = max(round(n_a * n_b / (n_a + n_b)), 1)
    return float(np.clip(stats.kstwo.sf(statistic, effective_n), 0.0, 1.0))


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
    ``ndf`` = (number of such bins) - 1, after merging sparse adjacent bins (see :func:`chi2_counts`).

    Args:
        a: sample values.
        b: reference values.
        edges: fixed bin edges (see :func:`fixed_bins`).
    """
    a, b = _pair("chi2", a, b)
    return chi2_counts(np.histogram(a, edges)[0], np.histogram(b, edges)[0])


#: adjacent bins are merged until each holds at least this many entries of both samples together
MIN_POOLED_PER_BIN = 10


def _merge_sparse_bins(n: np.ndarray, m: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    # The chi2 distribution of the statistic needs ~5 expected entries per sample and bin; sparse tail bins (and
    # the empty corners of a Dalitz plot) made it anti-conservative. The merging looks at the pooled counts
    # only, which are the same under every relabelling of the events: the test stays valid.
    group = np.empty(n.size, dtype=np.int64)
    g, total = 0, 0.0
    for i, pooled in enumerate(n + m):
        group[i] = g
        total += pooled
        if total >= minimum:
            g, total = g + 1, 0.0
    if 0 < total < minimum and g > 0:
        group[group == g] = g - 1  # a sparse remainder joins the last full group
    return np.bincount(group, weights=n), np.bincount(group, weights=m)


def chi2_counts(n: np.ndarray, m: np.ndarray, min_pooled: int = MIN_POOLED_PER_BIN) -> Chi2Result:
    """:func:`chi2_ndf` of two histograms given as bin counts (same bins, in order).

    Adjacent bins are merged until each holds at least ``min_pooled`` entries of both samples together.
    """
    n, m = np.asarray(n, dtype=np.float64), np.asarray(m, dtype=np.float64)
    if min_pooled > 1:
        n, m = _merge_sparse_bins(n, m, min_pooled)
    filled = (n + m) > 0
    n, m = n[filled], m[filled]
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
    return separation_of_counts(np.histogram(a, edges)[0], np.histogram(b, edges)[0])


def separation_of_counts(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """:func:`separation_power` of two histograms given as bin counts (same bins)."""
    h_a = np.asarray(counts_a, dtype=np.float64)
    h_b = np.asarray(counts_b, dtype=np.float64)
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
    return presence_test(int(np.isfinite(a).sum()), a.size, int(np.isfinite(b).sum()), b.size)


def presence_test(k_a: int, n_a: int, k_b: int, n_b: int) -> tuple[float, float]:
    """:func:`presence_difference` from counts: ``k`` present values out of ``n`` events in each sample."""
    f_a, f_b = k_a / n_a, k_b / n_b
    pooled = (k_a + k_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
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


# --- one sorted pass per feature: W1, KS, binned counts -------------------------------------------------

#: Brownian-bridge draws of the W1 null (per feature: one matrix-vector product)
_BRIDGE_DRAWS = 4000


def _bridge_grid() -> np.ndarray:
    # quantile levels: uniform in the body, geometric towards both ends, where W1's tails are decided
    body = np.linspace(0.0, 1.0, 1025)
    ends = np.geomspace(1e-7, 1e-3, 40)
    return np.unique(np.concatenate([body, ends, 1.0 - ends]))


_BRIDGE_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _abs_bridge(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(u, |B(u)|)``: |Brownian bridge| at the grid levels u, ``_BRIDGE_DRAWS`` draws (cached per process)."""
    if seed not in _BRIDGE_CACHE:
        u = _bridge_grid()
        rng = np.random.default_rng(seed + 7919)
        steps = rng.standard_normal((_BRIDGE_DRAWS, u.size - 1)) * np.sqrt(np.diff(u))
        walk = np.concatenate([np.zeros((_BRIDGE_DRAWS, 1)), np.cumsum(steps, axis=1)], axis=1)
        bridge = walk - u * walk[:, -1:]
        _BRIDGE_CACHE[seed] = (u, np.abs(bridge).astype(np.float32))
    return _BRIDGE_CACHE[seed]


def w1_null_draws(reference_sorted: np.ndarray, seed: int = 0) -> np.ndarray:
    """Draws of ``T = W1 / sqrt(1/n_A + 1/n_B)`` under the null, for a feature distributed as the reference.

    Asymptotically ``F_A - F_B = sqrt(1/n_A + 1/n_B) B(F(x))`` with B a Brownian bridge, so ``T = integral_0^1
    |B(u)| dQ(u)`` with Q the reference's quantile function (atoms, i.e. integer features, are flat steps of Q).
    The integral is a trapezoid sum on a fixed grid of quantile levels, dense in the tails.

    Args:
        reference_sorted: the reference's finite values, sorted.
        seed: seed of the bridge draws.
    """
    u, bridge = _abs_bridge(seed)
    ranks = np.clip(np.floor(u * reference_sorted.size).astype(np.int64), 0, reference_sorted.size - 1)
    dq = np.diff(reference_sorted[ranks])
    weights = np.zeros(u.size)
    weights[:-1] += dq / 2
    weights[1:] += dq / 2
    scale = float(np.abs(weights).max()) or 1.0  # float32 products, kept near 1
    return np.asarray(bridge @ (weights / scale).astype(np.float32), dtype=np.float64) * scale


@dataclass(frozen=True)
class FeatureComparison:
    """What one sorted pass over a sample and a reference gives: W1, KS and the fixed-bin counts."""

    w1: float
    ks: float
    counts_a: np.ndarray
    counts_b: np.ndarray
    n_a: int
    n_b: int


def compare_sorted(
    values: np.ndarray,
    cum_a: np.ndarray,
    cum_b: np.ndarray,
    n_a: int,
    n_b: int,
    inner_edges: np.ndarray,
    layout: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> FeatureComparison:
    """W1, KS and bin counts from merged sorted values and the running counts of each sample along them.

    Args:
        values: the merged values, sorted (events of neither sample may be interleaved: they carry no count).
        cum_a, cum_b: number of sample-A / sample-B values at or before each position.
        n_a, n_b: totals.
        inner_edges: the fixed bin edges without the outer -inf/+inf.
        layout: ``(diff(values), ends of runs of ties, positions of the edges)`` when already known.
    """
    steps, ends, position = layout if layout is not None else _layout(values, inner_edges)
    gap = np.abs(cum_a * (1.0 / n_a) - cum_b * (1.0 / n_b))
    w1 = float(np.dot(gap[:-1], steps))
    ks = float(gap[ends].max())
    below_a = np.where(position > 0, cum_a[np.maximum(position - 1, 0)], 0)
    below_b = np.where(position > 0, cum_b[np.maximum(position - 1, 0)], 0)
    counts_a = np.diff(np.concatenate([[0], below_a, [n_a]]))
    counts_b = np.diff(np.concatenate([[0], below_b, [n_b]]))
    return FeatureComparison(w1, ks, counts_a, counts_b, n_a, n_b)


def _layout(values: np.ndarray, inner_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # the ECDFs are compared where the value changes (the last of each run of ties)
    ends = np.append(values[1:] != values[:-1], True)
    return np.diff(values), ends, np.searchsorted(values, inner_edges, side="left")


@dataclass
class SortedReference:
    """One feature of the reference, sorted once, with its fixed bins and W1 null (shared by every comparison).

    Args:
        column: the feature over all reference events (NaN = absent).
        edges: fixed bin edges (see :func:`fixed_bins`).
        seed: seed of the W1 null's Brownian bridges (a fixed numerical device: one set of draws, cached, serves
            every feature and evaluation of a process).
    """

    column: np.ndarray
    edges: np.ndarray
    seed: int = 0

    def __post_init__(self) -> None:
        column = self.column = np.asarray(self.column, dtype=np.float64)
        present = np.flatnonzero(np.isfinite(column))
        self.order = present[np.argsort(column[present], kind="stable")]
        self.sorted = column[self.order]
        self.inner_edges = self.edges[1:-1]
        self.layout = _layout(self.sorted, self.inner_edges)
        self._w1_null: np.ndarray | None = None

    @property
    def w1_null(self) -> np.ndarray:
        """Null draws of ``W1 / sqrt(1/n_A + 1/n_B)`` (see :func:`w1_null_draws`), computed on first use."""
        if self._w1_null is None:
            self._w1_null = w1_null_draws(self.sorted, self.seed)
        return self._w1_null

    def compare(self, sample: np.ndarray, rows: np.ndarray) -> FeatureComparison:
        """Sample values (any, NaN allowed) against the reference events ``rows``."""
        a = np.sort(finite(sample))
        mask = np.zeros(self.column.size, dtype=bool)
        mask[rows] = True
        b = self.sorted[mask[self.order]]
        merged = np.concatenate([a, b])
        order = np.argsort(merged, kind="stable")  # two sorted runs: a linear merge
        from_a = order < a.size
        cum_a = np.cumsum(from_a)
        cum_b = np.arange(1, merged.size + 1) - cum_a
        return compare_sorted(merged[order], cum_a, cum_b, a.size, b.size, self.inner_edges)

    def compare_split(self, label: np.ndarray) -> FeatureComparison:
        """Two halves of the reference against each other; ``label`` per reference event: 1, 2, or 0 (unused).

        Linear in the reference size: no sorting, the order of the whole reference serves every split.
        """
        along = label[self.order]
        cum_a = np.cumsum(along == 1)
        cum_b = np.cumsum(along == 2)
        return compare_sorted(
            self.sorted, cum_a, cum_b, int(cum_a[-1]), int(cum_b[-1]), self.inner_edges, self.layout
        )

    def gaussianised(self, values: np.ndarray) -> np.ndarray:
        """``Phi^-1`` of the reference's mid-rank CDF at each value (NaN stays NaN): a rank-Gauss transform."""
        out = np.full(values.shape, np.nan)
        if values is self.column:  # the reference itself: already sorted once
            ok = self.order
        else:
            ok = np.flatnonzero(np.isfinite(values))
            # sorted queries: the binary searches then walk the reference in order (several times faster)
            ok = ok[np.argsort(values[ok], kind="stable")]
        queries = values[ok]
        n = self.sorted.size
        mid = np.searchsorted(self.sorted, queries, "left") + np.searchsorted(self.sorted, queries, "right")
        out[ok] = stats.norm.ppf(np.clip(mid / (2.0 * n), 0.5 / n, 1 - 0.5 / n))
        return out


# --- correlations with distribution-free errors ----------------------------------------------------------


def correlation_variances(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation matrix of the columns of ``x`` and the asymptotic variance of each coefficient.

    The variance is that of the coefficient's influence function, ``z_i z_j - r (z_i^2 + z_j^2) / 2`` for the
    standardised columns z, over the events -- valid for any distribution with finite fourth moments (Fisher's
    z assumes bivariate normal pairs, which back-to-back tracks are not).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    sd = x.std(axis=0)
    sd[sd == 0] = np.inf
    # float32 products (twice as fast) of standardised columns: r to ~1e-6, far below its statistical error
    z = ((x - x.mean(axis=0)) / sd).astype(np.float32)
    z2 = z * z
    r = z.T @ z / n
    m22 = z2.T @ z2 / n
    m31 = (z2 * z).T @ z / n  # E[z_i^3 z_j]
    m4 = np.mean(z2 * z2, axis=0)
    r, m22, m31, m4 = (np.asarray(v, dtype=np.float64) for v in (r, m22, m31, m4))
    var = (m22 - r * (m31 + m31.T) + r * r / 4 * (m4[:, None] + m4[None, :] + 2 * m22)) / n
    return r, np.clip(var, 0.0, None)


@dataclass(frozen=True)
class CorrelationTest:
    """Every pairwise correlation of A against B with its z-score; the family's p-value from the largest."""

    names: tuple[str, ...]
    difference: np.ndarray
    z: np.ndarray
    max_abs_z: float
    worst_pair: tuple[str, str]
    n_pairs: int
    pvalue: float
    max_abs_difference: float


def correlation_test(a: np.ndarray, b: np.ndarray, names: tuple[str, ...]) -> CorrelationTest:
    """Compare the correlation matrices of two complete samples pair by pair.

    ``z_ij = (r_A - r_B) / sqrt(var_A + var_B)`` with the distribution-free variances of
    :func:`correlation_variances`; the test's p-value is Bonferroni's over the pairs for the largest ``|z|``
    (valid whatever the dependence between pairs). Pairs with a constant column in either sample are left out.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] != len(names):
        raise InvalidInput(f"correlation_test needs two 2-D arrays with {len(names)} columns; got {a.shape}, {b.shape}")
    require_events("correlation", a.shape[0], "sample")
    require_events("correlation", b.shape[0], "reference")
    r_a, v_a = correlation_variances(a)
    r_b, v_b = correlation_variances(b)
    usable = (a.std(axis=0) > 0) & (b.std(axis=0) > 0)
    upper = np.triu(np.ones_like(r_a, dtype=bool), 1) & usable[:, None] & usable[None, :]
    se = np.sqrt(v_a + v_b)
    diff = r_a - r_b
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(upper & (se > 0), diff / se, 0.0)
    n_pairs = int(upper.sum())
    if n_pairs == 0:
        raise InsufficientSample("correlation test: fewer than two non-constant features")
    flat = int(np.argmax(np.abs(z)))
    i, j = np.unravel_index(flat, z.shape)
    max_z = float(abs(z[i, j]))
    pvalue = float(min(1.0, n_pairs * 2 * stats.norm.sf(max_z)))
    diff = np.where(usable[:, None] & usable[None, :], diff, 0.0)
    return CorrelationTest(
        tuple(names), diff, z, max_z, (names[i], names[j]), n_pairs, pvalue, float(np.abs(diff[upper]).max())
    )
