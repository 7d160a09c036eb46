"""Memorisation test: are generated events closer to the training events than independent events are?

A generative model may reproduce its training events instead of learning their distribution (JetPrism, 2026:
a model's samples must not be copies of training events). With T the training events, S the model's sample and
H held-out events of the same process that the model never saw (independent of T):

* ``d_S``: for each sample event, the Euclidean distance to its nearest training event;
* ``d_H``: for each held-out event, the distance to its nearest training event.

A model that generalises draws S from the process independently of *which* events it was trained on, so given T
the sample and held-out events are exchangeable and ``d_S`` is distributed like ``d_H``. A model that copies
(all or some of) its training events puts sample events on top of training events: ``d_S`` is stochastically
smaller. The test is one-sided: a sample further from the training events than held-out events are (a smoothed
or otherwise different distribution) is not memorising -- whether it is faithful is the fidelity tests' question.

Two statistics, each with an exact or asymptotically exact null:

* **Mann-Whitney** -- the one-sided U test of ``d_S`` smaller than ``d_H`` (asymptotic normal with tie
  correction); ``closer_probability`` is ``P(d_S < d_H) + P(d_S = d_H) / 2``, 0.5 without memorisation. It sees
  a global pull towards the training events.
* **Near copies** -- the fraction of sample events closer to a training event than the ``near_copy_quantile``
  (1 %) quantile of ``d_H`` (the k-th smallest of the held-out distances, ``k = ceil(0.01 n_H)``), against its
  expectation ``k / (n_H + 1)``. Under exchangeability the number of sample distances below the k-th smallest
  held-out one is negative-hypergeometric; its upper tail is the p-value. (A binomial with p = 1 % would ignore
  that the threshold is itself estimated from the held-out events, and be anti-conservative: at 2e4 events each
  the count's null spread is 1.4 times the binomial's.) It sees a model that copies a few per cent of its
  training events and is otherwise sound, which shifts the Mann-Whitney statistic by too little to notice.

The test's p-value is Bonferroni's of the two, ``min(1, 2 min(p_MW, p_near))``; it fails below ``alpha``. The
ratio ``median(d_S) / median(d_H)`` (1 without memorisation, bootstrap error) says how much closer.

Distances are taken in the suite's multivariate design (:class:`vbes.evaluation.suite.Design`: every feature
mapped onto a standard normal by rank-Gauss, absent values at the median, presence indicators), built on the
*training* events. Built on the held-out events instead, the design would treat them differently from the
sample: each held-out value sits at the centre of its own step of the rank transform, while a sample value falls
on the same step as the training values next to it, which then are at distance 0 in that coordinate. On 2-D
Gaussians that gave 93 % of independent samples a Mann-Whitney p-value below 0.05.

What the test cannot tell apart: a sample *narrower* than the process (pulled into the dense core of the
distribution: lost tails, mode collapse) also lies closer to the training events than held-out events do, and
fails (Gaussians shrunk by 10 %: p ~ 1e-27 in 5-D). Its alarm means "closer to the training events than
independent events are"; copying is the usual cause, not the only one. Such a sample fails the fidelity tests
too; the report's distance figure tells the two apart (copies pile up near distance 0, a narrower sample shifts
the whole distribution). Normalising each distance by the nearest training event's own distance to the other
training events (Alaa et al. 2022) does not remove this in 40-D, so it is not done.

Nearest neighbours are exact, by brute force: squared distances ``|t|^2 - 2 q.t`` of query chunks against
training chunks as float32 matrix products (BLAS), keeping the best and second-best candidate of every query.
Where the two are closer than twice a rigorous bound on the float32 rounding error, the query is searched again
in float64, so the neighbour found is the nearest one; the distance itself is then computed from the
coordinate differences in float64. Duplicate training rows are dropped first (they change no distance).

Atoms: several training events can share one design row (an event without any reconstructed object has every
feature at its median). A sample or held-out event on such a row is at distance 0 whether it was copied or not,
and ties at 0 would void the near-copy count; events that coincide with a training row that occurs more than
once are therefore left out of both statistics, and counted. The rule depends on the event and the training set
alone, so sample and held-out events stay exchangeable.

Sizes: at most ``max_queries`` sample and held-out events (20,000 each) and ``max_training`` training events
(200,000) are used, drawn at random with ``seed``; 2e4 + 2e4 queries against 2e5 training events of 60
features take about 20 s on one core. A memorised event whose training original is not among the training
events used is not seen as a copy: with ``N_T`` training events, a fraction ``max_training / N_T`` of the copies
can be found.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> training, heldout = rng.normal(size=(5000, 4)), rng.normal(size=(2000, 4))
    >>> fresh = memorisation_test(rng.normal(size=(2000, 4)), training, heldout)
    >>> copies = memorisation_test(training[:2000] + 1e-3 * rng.normal(size=(2000, 4)), training, heldout)
    >>> fresh.passed, copies.passed, copies.near_copy_fraction > 0.9
    (True, False, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from vbes.evaluation.features import FeatureTable
from vbes.evaluation.metrics import SortedReference

from vbes.errors import InsufficientSample, InvalidInput, NothingTested

__all__ = [
    "MAX_QUERIES",
    "MAX_TRAINING",
    "MIN_EVENTS_MEMORISATION",
    "NEAR_COPY_QUANTILE",
    "MemorisationResult",
    "design_of_training",
    "memorisation_test",
    "nearest_distances",
]

#: most sample and most held-out events whose nearest training event is searched (each)
MAX_QUERIES = 20_000
#: most training events searched
MAX_TRAINING = 200_000
#: fewest sample, held-out and training events (each): the 1 % quantile of d_H needs a few events below it
MIN_EVENTS_MEMORISATION = 500
#: held-out quantile of the distance below which a sample event is called a near copy
NEAR_COPY_QUANTILE = 0.01

_QUERY_CHUNK = 1024
_TRAINING_CHUNK = 8192
_UNIT_ROUNDOFF_32 = 2.0**-24
# the design needs sorted columns only, not the suite's bins
_NO_BINS = np.array([-np.inf, np.inf])


@dataclass(frozen=True)
class MemorisationResult:
    """Outcome of :func:`memorisation_test` (distances in rank-Gauss units of the training events).

    ``pvalue`` (Bonferroni over ``mann_whitney_pvalue`` and ``near_copy_pvalue``) decides ``passed`` at ``alpha``.
    ``n_sample`` and ``n_heldout`` events were searched; ``sample_on_atoms`` and ``heldout_on_atoms`` of them lay
    on a design row that several training events share and were left out of the statistics.
    ``sample_exact_copies`` / ``heldout_exact_copies``: the fraction of the others at distance 0 from a
    training event (held-out ones mean the held-out set overlaps the training set).
    """

    pvalue: float
    passed: bool
    alpha: float
    mann_whitney_pvalue: float
    closer_probability: float
    distance_ratio: float
    distance_ratio_error: float
    median_sample: float
    median_heldout: float
    near_copy_quantile: float
    near_copy_threshold: float
    near_copies: int
    near_copy_fraction: float
    near_copy_expected: float
    near_copy_pvalue: float
    sample_exact_copies: float
    heldout_exact_copies: float
    sample_on_atoms: int
    heldout_on_atoms: int
    n_sample: int
    n_heldout: int
    n_training: int
    n_sample_total: int
    n_heldout_total: int
    n_training_total: int
    n_features: int
    n_rechecked: int
    #: ``(d_S, d_H)``, for figures (not in :meth:`as_dict`)
    distances: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready (the distances themselves left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "distances"}
        out["pvalue_from"] = (
            "Bonferroni over the one-sided Mann-Whitney test of d_S < d_H and the negative-hypergeometric tail of "
            "the near-copy count"
        )
        return out


def design_of_training(training: FeatureTable) -> Any:
    """The suite's rank-Gauss :class:`~vbes.evaluation.suite.Design`, built on the training events."""
    from vbes.evaluation.suite import Design

    sorted_columns = {
        name: SortedReference(training.values[:, i], _NO_BINS) for i, name in enumerate(training.names)
    }
    return Design(training, sorted_columns)


def _distinct_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of x and how often each occurs."""
    x = np.ascontiguousarray(x) + 0.0  # + 0.0 turns -0.0 into 0.0, so equal rows have equal bytes
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, counts = np.unique(rows, return_index=True, return_counts=True)
    return x[first], counts


def _argmin_float64(queries: np.ndarray, points: np.ndarray, norms: np.ndarray) -> np.ndarray:
    best = np.full(len(queries), np.inf)
    index = np.zeros(len(queries), dtype=np.int64)
    for i in range(0, len(queries), _QUERY_CHUNK):
        q = queries[i : i + _QUERY_CHUNK]
        rows = np.arange(len(q))
        for j in range(0, len(points), _TRAINING_CHUNK):
            s = q @ points[j : j + _TRAINING_CHUNK].T
            s *= -2.0
            s += norms[j : j + _TRAINING_CHUNK]
            a = s.argmin(axis=1)
            v = s[rows, a]
            better = v < best[i : i + len(q)]
            best[i : i + len(q)][better] = v[better]
            index[i : i + len(q)][better] = a[better] + j
    return index


def nearest_distances(queries: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Exact Euclidean nearest neighbour among ``points`` of every row of ``queries``, by brute force.

    float32 matrix products find each query's best and second-best candidate; a query whose two candidates are
    within twice the float32 error bound of each other is searched again in float64 (see the module docstring).

    Args:
        queries: array ``(n, d)``, finite.
        points: array ``(m, d)``, finite, m >= 1.

    Returns:
        ``(distances, indices, n_rechecked)``: the distance to the nearest point (float64, from the coordinate
        differences), its row in ``points``, and how many queries were searched again in float64.
    """
    q = np.asarray(queries, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    if q.ndim != 2 or p.ndim != 2 or q.shape[1] != p.shape[1] or len(p) == 0:
        raise InvalidInput(f"nearest_distances needs (n, d) queries and (m >= 1, d) points; got {q.shape}, {p.shape}")
    centre = p.mean(axis=0)  # shorter vectors, smaller rounding errors; distances do not change
    q, p = q - centre, p - centre
    norms = np.einsum("ij,ij->i", p, p)
    p32, norms32 = p.astype(np.float32), norms.astype(np.float32)
    best = np.empty(len(q))
    second = np.empty(len(q))
    index = np.zeros(len(q), dtype=np.int64)
    for i in range(0, len(q), _QUERY_CHUNK):
        q32 = q[i : i + _QUERY_CHUNK].astype(np.float32)
        rows = np.arange(len(q32))
        b1 = np.full(len(q32), np.inf, dtype=np.float32)
        b2 = np.full(len(q32), np.inf, dtype=np.float32)
        i1 = np.zeros(len(q32), dtype=np.int64)
        for j in range(0, len(p32), _TRAINING_CHUNK):
            s = q32 @ p32[j : j + _TRAINING_CHUNK].T
            s *= np.float32(-2.0)
            s += norms32[j : j + _TRAINING_CHUNK]
            a = s.argmin(axis=1)
            v1 = s[rows, a]
            s[rows, a] = np.inf
            v2 = s.min(axis=1)
            # the two smallest of {b1 <= b2} and {v1 <= v2}
            b2 = np.minimum(np.maximum(b1, v1), np.minimum(b2, v2))
            take = v1 < b1
            i1[take] = a[take] + j
            b1 = np.minimum(b1, v1)
        best[i : i + len(q32)], second[i : i + len(q32)], index[i : i + len(q32)] = b1, b2, i1
    # |s32 - s| <= e for every candidate, with s = |t|^2 - 2 q.t: input rounding (2u|q||t|), the float32 dot
    # product (d u |q||t|, the worst-case bound of a sum of d terms), the norms and the final multiply-add
    # (u (|t|^2 + 2|q||t|) each) -- all below (2d + 10) u (|q| + max|t|)^2. A candidate that beats the second
    # best by more than 2e is the nearest point.
    reach = np.sqrt(np.einsum("ij,ij->i", q, q)) + math.sqrt(float(norms.max()))
    bound = (2 * q.shape[1] + 10) * _UNIT_ROUNDOFF_32 * reach**2
    unsure = np.flatnonzero(~(second.astype(np.float64) - best > 2 * bound))
    if unsure.size:
        index[unsure] = _argmin_float64(q[unsure], p, norms)
    distances = np.sqrt(np.einsum("ij,ij->i", q - p[index], q - p[index]))
    return distances, index, int(unsure.size)


def _as_table(source: Any, channel: str | None) -> FeatureTable:
    if isinstance(source, FeatureTable):
        return source
    from vbes.evaluation.suite import load_sample

    return load_sample(source, channel).features


def _subsample(table: FeatureTable, most: int, rng: np.random.Generator) -> FeatureTable:
    if len(table) <= most:
        return table
    return table.subset(np.sort(rng.permutation(len(table))[:most]))


def _median_ratio_error(d_s: np.ndarray, d_h: np.ndarray, rng: np.random.Generator, n_boot: int = 200) -> float:
    """Bootstrap spread of median(d_S) / median(d_H) (each resampled on its own; the two are independent)."""
    ratios = np.empty(n_boot)
    for k in range(n_boot):
        m_s = np.median(d_s[rng.integers(0, d_s.size, d_s.size)])
        m_h = np.median(d_h[rng.integers(0, d_h.size, d_h.size)])
        ratios[k] = m_s / m_h if m_h > 0 else np.nan
    ratios = ratios[np.isfinite(ratios)]
    return float(ratios.std(ddof=1)) if ratios.size > 1 else float("nan")


def memorisation_test(
    sample: Any,
    training: Any,
    heldout: Any,
    *,
    alpha: float = 0.05,
    max_queries: int = MAX_QUERIES,
    max_training: int = MAX_TRAINING,
    near_copy_quantile: float = NEAR_COPY_QUANTILE,
    seed: int = 0,
    threads: int = 1,
    channel: str | None = None,
) -> MemorisationResult:
    """Is the sample closer to the training events than held-out events are? (See the module docstring.)

    Args:
        sample: S, the model's events: a :class:`FeatureTable` or anything
            :func:`vbes.evaluation.suite.load_sample` takes (event file, numeric table, event batch, array).
        training: T, the events the model was trained on (same features).
        heldout: H, events of the same process that the model never saw -- *independent of the training set*
            (a held-out split or another seed); events shared with T make H look like copies and blind the test.
        alpha: the test fails when its p-value is below alpha.
        max_queries: most sample and most held-out events used (each; a random subset, see ``seed``).
        max_training: most training events searched.
        near_copy_quantile: the held-out quantile of the distance that defines a near copy.
        seed: seed of the subsets and of the bootstrap of the median ratio.
        threads: BLAS threads.
        channel: channel of event files (default: read from the files).

    Raises:
        InsufficientSample: fewer than :data:`MIN_EVENTS_MEMORISATION` events in any of the three.
        InvalidInput: the three do not have the same features, or bad settings.
        NothingTested: no feature varies among the training events.
    """
    if not 0 < alpha < 1:
        raise InvalidInput(f"alpha must lie in (0, 1); got {alpha}")
    if not 0 < near_copy_quantile < 0.5:
        raise InvalidInput(f"near_copy_quantile must lie in (0, 0.5); got {near_copy_quantile}")
    if min(max_queries, max_training) < MIN_EVENTS_MEMORISATION:
        raise InvalidInput(
            f"max_queries and max_training must be at least {MIN_EVENTS_MEMORISATION}; got {max_queries}, "
            f"{max_training}"
        )
    s_table = _as_table(sample, channel)
    t_table = _as_table(training, channel or s_table.channel or None)
    h_table = _as_table(heldout, channel or s_table.channel or None)
    for label, table in (("training", t_table), ("held-out", h_table)):
        if table.names != s_table.names:
            differing = sorted(set(table.names) ^ set(s_table.names))
            raise InvalidInput(
                f"sample and {label} events have different features (differing: {', '.join(differing[:8]) or 'order'})"
            )
    for label, table in (("sample", s_table), ("training", t_table), ("held-out", h_table)):
        if len(table) < MIN_EVENTS_MEMORISATION:
            raise InsufficientSample(
                f"the memorisation test needs at least {MIN_EVENTS_MEMORISATION} {label} events; got {len(table)}"
            )
    rng = np.random.default_rng(seed)
    t_used = _subsample(t_table, max_training, rng)
    s_used = _subsample(s_table, max_queries, rng)
    h_used = _subsample(h_table, max_queries, rng)
    design = design_of_training(t_used)
    if not design.columns:
        raise NothingTested("no feature varies among the training events: no distance to measure")
    with threadpool_limits(limits=max(1, threads)):
        points, multiplicity = _distinct_rows(design.matrix())
        d_s, i_s, rechecked_s = nearest_distances(design.matrix(s_used.values), points)
        d_h, i_h, rechecked_h = nearest_distances(design.matrix(h_used.values), points)
    # events on an atom (a design row several training events share) are at distance 0 copied or not
    atom_s = (d_s == 0) & (multiplicity[i_s] > 1)
    atom_h = (d_h == 0) & (multiplicity[i_h] > 1)
    d_s, d_h = d_s[~atom_s], d_h[~atom_h]
    n_s, n_h = d_s.size, d_h.size
    if min(n_s, n_h) < MIN_EVENTS_MEMORISATION // 5:
        raise InsufficientSample(
            f"the memorisation test needs at least {MIN_EVENTS_MEMORISATION // 5} sample and held-out events off "
            f"the training set's atoms; {n_s} and {n_h} are left"
        )
    mw = stats.mannwhitneyu(d_s, d_h, alternative="less", method="asymptotic")
    closer = 1.0 - float(mw.statistic) / (n_s * n_h)
    k = max(1, math.ceil(near_copy_quantile * n_h))
    threshold = float(np.partition(d_h, k - 1)[k - 1])
    near = int(np.count_nonzero(d_s < threshold))
    # sample events before the k-th held-out one in the pooled order: negative hypergeometric under the null
    near_pvalue = float(stats.nhypergeom.sf(near - 1, n_s + n_h, n_s, k))
    mw_pvalue = float(mw.pvalue)
    pvalue = min(1.0, 2.0 * min(mw_pvalue, near_pvalue))
    median_s, median_h = float(np.median(d_s)), float(np.median(d_h))
    return MemorisationResult(
        pvalue=pvalue,
        passed=pvalue >= alpha,
        alpha=alpha,
        mann_whitney_pvalue=mw_pvalue,
        closer_probability=closer,
        distance_ratio=median_s / median_h if median_h > 0 else float("inf"),
        distance_ratio_error=_median_ratio_error(d_s, d_h, np.random.default_rng(seed + 1)),
        median_sample=median_s,
        median_heldout=median_h,
        near_copy_quantile=near_copy_quantile,
        near_copy_threshold=threshold,
        near_copies=near,
        near_copy_fraction=near / n_s,
        near_copy_expected=k / (n_h + 1),
        near_copy_pvalue=near_pvalue,
        sample_exact_copies=float(np.mean(d_s == 0)),
        heldout_exact_copies=float(np.mean(d_h == 0)),
        sample_on_atoms=int(atom_s.sum()),
        heldout_on_atoms=int(atom_h.sum()),
        n_sample=n_s,
        n_heldout=n_h,
        n_training=len(t_used),
        n_sample_total=len(s_table),
        n_heldout_total=len(h_table),
        n_training_total=len(t_table),
        n_features=len(design.names),
        n_rechecked=rechecked_s + rechecked_h,
        distances=(d_s, d_h),
    )
