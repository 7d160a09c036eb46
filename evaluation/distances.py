"""Fréchet and kernel physics distances (FPD, KPD) of Kansal et al., arXiv:2211.10295.

Both compare the multivariate feature distributions of sample A and reference B after standardising every feature
on the reference (mean 0, standard deviation 1 *of the reference*; A gets the same transformation, so a shift in A
stays visible):

* **FPD** -- the Fréchet distance between Gaussians fitted to A and B,
  ``|mu_A - mu_B|^2 + Tr(S_A + S_B - 2 (S_A S_B)^(1/2))``. Its estimate at finite N is biased upwards by a term
  ~ 1/N, so it is measured at ``n_points`` batch sizes evenly spaced in 1/N (several batches each), fitted with
  a straight line in 1/N, and the intercept -- FPD at infinite N -- is reported with the fit's error.
* **KPD** -- the unbiased quadratic-time estimate of the squared maximum mean discrepancy with the cubic
  polynomial kernel ``k(x, y) = (x . y / d + 1)^3``, computed on ``n_batches`` batches; reported as the median over
  batches, with half the inter-quartile range as its error.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(2)
    >>> a, b = rng.normal(0, 1, (20000, 4)), rng.normal(0, 1, (20000, 4))
    >>> fpd(a, b, seed=1).value < 0.01
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize

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
    """A distance with its error (FPD: the extrapolation fit's; KPD: half the IQR over batches)."""

    value: float
    error: float
    n_sample: int
    n_reference: int


def _as_finite_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InvalidInput(f"{name} must be a 2-D array (events, features); got shape {x.shape}")
    return x[np.isfinite(x).all(axis=1)]


def _standardised_pair(sample: np.ndarray, reference: np.ndarray, minimum: int, metric: str
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Complete rows of both samples, standardised on the reference; refuses fewer than ``minimum`` events."""
    a = _as_finite_2d(sample, "sample")
    b = _as_finite_2d(reference, "reference")
    if min(len(a), len(b)) < minimum:
        raise InsufficientSample(
            f"{metric} needs at least {minimum} complete events per sample; got {len(a)} and {len(b)}"
        )
    return standardise_on_reference(a, b)


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


def fpd(
    sample: np.ndarray,
    reference: np.ndarray,
    min_batch: int | None = None,
    max_batch: int | None = None,
    n_points: int = 8,
    n_batches: int = 10,
    seed: int = 0,
) -> DistanceResult:
    """Fréchet physics distance extrapolated to infinite sample size.

    Args:
        sample: A, shape ``(n, d)``; rows with any NaN are dropped.
        reference: B, shape ``(m, d)``.
        min_batch: smallest batch size (default: a fifth of the smaller sample, at most 20,000 as in JetNet).
        max_batch: largest batch size (default: the smaller sample, at most 50,000 as in JetNet).
        n_points: batch sizes, evenly spaced in 1/N.
        n_batches: random batches (drawn with replacement) averaged per batch size.
        seed: seed of the batch draws.
    """
    a, b = _standardised_pair(sample, reference, MIN_EVENTS_FPD, "FPD")
    n = min(len(a), len(b))
    max_batch = max_batch or min(n, 50_000)
    min_batch = min_batch or min(max(n // 5, 1000), 20_000)
    sizes = (1.0 / np.linspace(1.0 / min_batch, 1.0 / max_batch, n_points)).astype(np.int64)
    rng = np.random.default_rng(seed)
    means = []
    for size in sizes:
        values = []
        for _ in range(n_batches):
            xa = a[rng.integers(0, len(a), size)]
            xb = b[rng.integers(0, len(b), size)]
            values.append(
                frechet_distance(
                    xa.mean(0),
                    np.atleast_2d(np.cov(xa, rowvar=False)),
                    xb.mean(0),
                    np.atleast_2d(np.cov(xb, rowvar=False)),
                )
            )
        means.append(np.mean(values))
    (intercept, _slope), cov = optimize.curve_fit(
        lambda x, c, s: c + s * x, 1.0 / sizes, np.asarray(means), bounds=([0, 0], [np.inf, np.inf])
    )
    return DistanceResult(float(intercept), float(np.sqrt(cov[0, 0])), len(a), len(b))


def _cubic_kernel_sum(x: np.ndarray, y: np.ndarray) -> float:
    block = x @ y.T
    block *= 1.0 / x.shape[1]
    block += 1.0
    cube = block * block
    cube *= block  # two multiplications: the generic power is several times slower
    return float(cube.sum(dtype=np.float64))


def _kernel_sum(x: np.ndarray, y: np.ndarray | None, chunk: int = 1000) -> float:
    # Sum of the cubic kernel over all pairs (x, y), or over distinct pairs of x when y is None, in row chunks so
    # memory stays ~ chunk * len(y). float32 products, float64 sums: the MMD of standardised features needs no
    # more, and it halves the time.
    x = x.astype(np.float32)
    total = 0.0
    if y is not None:
        y = y.astype(np.float32)
        for start in range(0, len(x), chunk):
            total += _cubic_kernel_sum(x[start : start + chunk], y)
        return total
    # symmetric: each chunk against itself and everything after it (counted twice), minus the diagonal
    for start in range(0, len(x), chunk):
        rows = x[start : start + chunk]
        total += _cubic_kernel_sum(rows, rows)
        if start + chunk < len(x):
            total += 2 * _cubic_kernel_sum(rows, x[start + chunk :])
    diagonal = (np.einsum("ij,ij->i", x, x, dtype=np.float64) / x.shape[1] + 1.0) ** 3
    return total - float(diagonal.sum())


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = len(x), len(y)
    kxx = _kernel_sum(x, None) / (m * (m - 1))
    kyy = _kernel_sum(y, None) / (n * (n - 1))
    kxy = _kernel_sum(x, y) / (m * n)
    return float(kxx + kyy - 2 * kxy)


def kpd(
    sample: np.ndarray,
    reference: np.ndarray,
    batch_size: int = 5000,
    n_batches: int = 10,
    seed: int = 0,
) -> DistanceResult:
    """Kernel physics distance: median over batches of the unbiased MMD^2 with the cubic polynomial kernel.

    Args:
        sample: A, shape ``(n, d)``; rows with any NaN are dropped.
        reference: B, shape ``(m, d)``.
        batch_size: events per batch and sample (JetNet's 5,000; lowered to the smaller sample when needed).
        n_batches: batches, each drawn without replacement (a repeated event would bias the unbiased estimate).
        seed: seed of the batch draws.
    """
    a, b = _standardised_pair(sample, reference, MIN_EVENTS_KPD, "KPD")
    n = min(len(a), len(b))
    size = min(batch_size, n)
    rng = np.random.default_rng(seed)
    values = np.array(
        [
            _mmd2_unbiased(a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)])
            for _ in range(n_batches)
        ]
    )
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return DistanceResult(float(median), float((q3 - q1) / 2), len(a), len(b))
