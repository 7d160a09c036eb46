"""Fréchet and kernel physics distances (FPD, KPD) of Kansal et al., arXiv:2211.10295, each with a significance.

Both compare the multivariate feature distributions of sample A and reference B after standardising every feature
on the reference (mean 0, standard deviation 1 *of the reference*; A gets the same transformation, so a shift in A
stays visible). Both samples are cut to the same size n.

* **FPD** -- the Fréchet distance between Gaussians fitted to A and B,
  ``|mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A S_B)^(1/2))``. As in JetNet it is measured at ``n_points`` batch
  sizes evenly spaced in 1/N (``n_batches`` batches each), fitted with a straight line in 1/N, and the intercept
  -- FPD at infinite N -- is reported with the fit's error. Batches are drawn *without* replacement, so the
  estimate at size N exceeds the true distance by ~c/N alone and the intercept is unbiased (it scatters around 0
  for identical distributions; it is not clipped at 0). Its significance comes from a permutation null of the
  full-size FPD (the test statistic): both samples are cut into ``n_blocks`` random blocks of equal size, whose
  sums and second-moment matrices are computed once, and the blocks are relabelled A/B at random
  ``n_permutations`` times -- an exact permutation test (events are exchangeable under the null, so blocks are)
  that costs a few small matrix products per permutation instead of a pass over the events.
* **KPD** -- the unbiased quadratic-time estimate of the squared maximum mean discrepancy with the cubic
  polynomial kernel ``k(x, y) = (x . y / d + 1)^3``, averaged over ``n_batches`` *disjoint* batches; its error is
  the bootstrap spread of that average over the batches. Its significance comes from permuting the A/B labels
  within each batch (the kernel matrix of a batch is computed once; each permutation is a column of one matrix
  product), independently per batch.

p-values of both follow :func:`vbes.evaluation.null.tail_pvalue`.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> a, b = rng.normal(0, 1, (20000, 4)), rng.normal(0, 1, (20000, 4))
    >>> result = fpd(a, b, seed=1)
    >>> abs(result.value) < 0.01, result.pvalue > 0.001
    (True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg
from vbes.evaluation.null import tail_pvalue

from vbes.errors import InsufficientSample, InvalidInput

__all__ = [
    "MIN_EVENTS_FPD",
    "MIN_EVENTS_KPD",
    "DistanceResult",
    "fpd",
    "frechet_distance",
    "kpd",
    "standardise_on_reference",
]

#: per sample; with fewer, the batch sizes of the 1/N extrapolation become too small for a 20-feature covariance
MIN_EVENTS_FPD = 5000
#: per sample; a KPD batch of fewer than 500 events has an MMD noise larger than typical model differences
MIN_EVENTS_KPD = 1000


@dataclass(frozen=True)
class DistanceResult:
    """A distance with its error, its test statistic and that statistic's permutation null.

    ``value`` +- ``error``: FPD extrapolated to infinite N (fit error) or KPD averaged over batches (bootstrap
    error). ``statistic``: what the permutations are compared with (the full-size FPD; the KPD average itself).
    ``significance``: ``(statistic - null_mean) / null_std``; ``pvalue``: P(null >= statistic).
    """

    value: float
    error: float
    n_sample: int
    n_reference: int
    statistic: float
    pvalue: float
    null_mean: float
    null_std: float
    significance: float
    n_permutations: int


def _as_finite_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InvalidInput(f"{name} must be a 2-D array (events, features); got shape {x.shape}")
    return x[np.isfinite(x).all(axis=1)]


def _standardised_pair(
    sample: np.ndarray, reference: np.ndarray, minimum: int, metric: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Complete rows of both samples, standardised on the reference, cut to the same size in random order."""
    a = _as_finite_2d(sample, "sample")
    b = _as_finite_2d(reference, "reference")
    if min(len(a), len(b)) < minimum:
        raise InsufficientSample(
            f"{metric} needs at least {minimum} complete events per sample; got {len(a)} and {len(b)}"
        )
    a, b = standardise_on_reference(a, b)
    n = min(len(a), len(b))
    return a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]


def standardise_on_reference(sample: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both to the reference's mean and standard deviation per feature (constant features left at 1)."""
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    std[std == 0] = 1.0
    return (sample - mean) / std, (reference - mean) / std


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance squared between two Gaussians."""
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():
        # near-singular product: regularise as is customary for FID-type estimates
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def _frechet_many(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> np.ndarray:
    """:func:`frechet_distance` for stacks ``(k, d)`` / ``(k, d, d)``: Tr (S1 S2)^(1/2) = sum sqrt(eig(S1 S2))."""
    eig = np.linalg.eigvals(cov1 @ cov2)
    root = np.sqrt(np.clip(eig.real, 0.0, None)).sum(axis=1)
    diff = mu1 - mu2
    trace = np.trace(cov1, axis1=1, axis2=2) + np.trace(cov2, axis1=1, axis2=2)
    return np.asarray(np.einsum("ki,ki->k", diff, diff) + trace - 2 * root)


class _Blocks:
    """Sums and second-moment matrices of equal-size blocks of events: the Gaussian of any union of blocks."""

    def __init__(self, x: np.ndarray, n_blocks: int) -> None:
        size = len(x) // n_blocks
        x = x[: size * n_blocks].reshape(n_blocks, size, x.shape[1])
        self.size = size
        self.sums = x.sum(axis=1)
        self.moments = np.matmul(x.transpose(0, 2, 1), x).reshape(n_blocks, -1)

    def gaussians(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of the union of blocks, one union per row of 0/1 ``weights`` ``(k, n_blocks)``."""
        count = weights.sum(axis=1, keepdims=True) * self.size
        mean = weights @ self.sums / count
        d = mean.shape[1]
        second = (weights @ self.moments).reshape(-1, d, d)
        cov = (second - count[:, :, None] * mean[:, :, None] * mean[:, None, :]) / (count[:, :, None] - 1)
        return mean, cov


def fpd(
    sample: np.ndarray,
    reference: np.ndarray,
    n_points: int = 8,
    n_batches: int = 10,
    n_permutations: int = 200,
    n_blocks: int = 100,
    seed: int = 0,
) -> DistanceResult:
    """Fréchet physics distance extrapolated to infinite sample size, with a permutation significance.

    Args:
        sample: A, shape ``(n, d)``; rows with any NaN are dropped.
        reference: B, shape ``(m, d)``.
        n_points: batch sizes, evenly spaced in 1/N from a fifth of the sample size to all of it.
        n_batches: random batches (unions of blocks, without replacement) averaged per batch size.
        n_permutations: random A/B relabellings of the blocks for the null.
        n_blocks: blocks per sample (the batch sizes are multiples of the block size).
        seed: seed of the cut, the batches and the permutations.
    """
    rng = np.random.default_rng(seed)
    a, b = _standardised_pair(sample, reference, MIN_EVENTS_FPD, "FPD", rng)
    blocks = _Blocks(np.concatenate([a, b]), 2 * n_blocks)  # blocks 0..n_blocks-1 are A's
    observed = np.zeros((1, 2 * n_blocks))
    observed[0, :n_blocks] = 1
    mean, cov = blocks.gaussians(np.concatenate([observed, 1 - observed]))
    statistic = float(_frechet_many(mean[:1], cov[:1], mean[1:], cov[1:])[0])

    # JetNet's extrapolation in 1/N, batches as unions of k of each sample's blocks
    counts = np.unique(np.round(1.0 / np.linspace(5.0 / n_blocks, 1.0 / n_blocks, n_points)).astype(np.int64))
    counts = np.clip(counts, 2, n_blocks)
    rows_a, rows_b, sizes = [], [], []
    for k in counts:
        for _ in range(n_batches):
            w_a, w_b = np.zeros(2 * n_blocks), np.zeros(2 * n_blocks)
            w_a[rng.choice(n_blocks, k, replace=False)] = 1
            w_b[n_blocks + rng.choice(n_blocks, k, replace=False)] = 1
            rows_a.append(w_a)
            rows_b.append(w_b)
            sizes.append(k * blocks.size)
    mean_a, cov_a = blocks.gaussians(np.array(rows_a))
    mean_b, cov_b = blocks.gaussians(np.array(rows_b))
    values = _frechet_many(mean_a, cov_a, mean_b, cov_b)
    inverse = 1.0 / np.array(sizes, dtype=np.float64)
    x = np.unique(inverse)
    y = np.array([values[inverse == v].mean() for v in x])
    if x.size >= 3:
        (slope, intercept), fit_cov = np.polyfit(x, y, 1, cov=True)
        error = float(np.sqrt(fit_cov[1, 1]))
    else:
        slope, intercept = np.polyfit(x, y, 1) if x.size == 2 else (0.0, float(y[0]))
        error = float("nan")

    permuted = np.zeros((n_permutations, 2 * n_blocks))
    for row in permuted:
        row[rng.choice(2 * n_blocks, n_blocks, replace=False)] = 1
    mean_p, cov_p = blocks.gaussians(np.concatenate([permuted, 1 - permuted]))
    k = n_permutations
    null = _frechet_many(mean_p[:k], cov_p[:k], mean_p[k:], cov_p[k:])
    return _result(float(intercept), error, len(a), statistic, null)


def _result(value: float, error: float, n: int, statistic: float, null: np.ndarray) -> DistanceResult:
    null_mean, null_std = float(null.mean()), float(null.std(ddof=1))
    significance = (statistic - null_mean) / null_std if null_std > 0 else 0.0
    return DistanceResult(
        value, error, n, n, statistic, tail_pvalue(statistic, null), null_mean, null_std, float(significance), null.size
    )


def _permutation_mmd2(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 of the cubic kernel for each 0/1 labelling (a column of ``labels``) of the events z.

    The kernel is used minus 1 (``3t + 3t^2 + t^3`` with ``t = x.y/d``): the unbiased MMD^2 does not change under a
    constant shift of the kernel, and the smaller entries keep float32 sums accurate.
    """
    m = labels[:, 0].sum()
    t = z @ z.T
    t *= np.float32(1.0 / z.shape[1])
    kernel = t * (3 + t * (3 + t))
    del t
    diag = np.diagonal(kernel).astype(np.float64)
    row = kernel.sum(axis=1, dtype=np.float64)
    total = row.sum()
    k_l = (kernel @ labels).astype(np.float64)  # (2m, P)
    lab = labels.astype(np.float64)
    aa = np.einsum("ip,ip->p", lab, k_l)
    ar = row @ lab
    ab = ar - aa
    bb = total - 2 * ar + aa
    a_diag = diag @ lab
    b_diag = diag.sum() - a_diag
    return np.asarray((aa - a_diag) / (m * (m - 1)) + (bb - b_diag) / (m * (m - 1)) - 2 * ab / (m * m))


def kpd(
    sample: np.ndarray,
    reference: np.ndarray,
    batch_size: int = 1000,
    n_batches: int = 5,
    n_permutations: int = 200,
    seed: int = 0,
) -> DistanceResult:
    """Kernel physics distance: unbiased MMD^2 of the cubic polynomial kernel, with a permutation significance.

    Args:
        sample: A, shape ``(n, d)``; rows with any NaN are dropped.
        reference: B, shape ``(m, d)``.
        batch_size: events per batch and sample (lowered so that the batches stay disjoint).
        n_batches: disjoint batches.
        n_permutations: label permutations per batch for the null.
        seed: seed of the cut, the batches and the permutations.
    """
    rng = np.random.default_rng(seed)
    a, b = _standardised_pair(sample, reference, MIN_EVENTS_KPD, "KPD", rng)
    n = len(a)
    size = min(batch_size, n // n_batches)
    if size < 100:
        raise InsufficientSample(f"KPD needs {n_batches} disjoint batches of at least 100 events; got {n} events")
    observed = np.zeros(n_batches)
    null = np.zeros(n_permutations)
    base = np.concatenate([np.ones(size, dtype=np.float32), np.zeros(size, dtype=np.float32)])
    for k in range(n_batches):
        z = np.concatenate([a[k * size : (k + 1) * size], b[k * size : (k + 1) * size]]).astype(np.float32)
        labels = np.empty((2 * size, n_permutations + 1), dtype=np.float32)
        labels[:, 0] = base
        for p in range(1, n_permutations + 1):
            labels[:, p] = rng.permutation(base)
        values = _permutation_mmd2(z, labels)
        observed[k] = values[0]
        null += values[1:] / n_batches
    boot = rng.integers(0, n_batches, (1000, n_batches))
    error = float(observed[boot].mean(axis=1).std())
    statistic = float(observed.mean())
    return _result(statistic, error, n, statistic, null)
