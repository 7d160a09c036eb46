"""Compression fidelity: what a lossy codec lost, event by event, in units of the detector's resolution.

:func:`fidelity` compares the original events with the decoded ones (same events, same rows) and reports, per
variable:

* the error distribution in units of resolution -- per value where the value carries its own error (a track's
  helix parameters and momentum from its covariance matrix, a shower's energy from its ``energy_err``), else
  the detector figure of MISSION.md (see :mod:`vbes.evaluation.features`) -- its mean, spread, quantiles and
  maximum, and the fraction of values beyond a stated ``bound``;
* for variables without a resolution, the absolute and relative error;
* whether the decoded helix covariance matrices are still symmetric positive-definite;
* the shift of each physics observable (peak positions and widths, fractions) in units of its statistical error
  on the original sample.

:func:`array_fidelity` does the same for plain numeric tables with a resolution per column.

Example:
    >>> import numpy as np
    >>> original = np.random.default_rng(0).normal(size=(1000, 2))
    >>> decoded = original + 0.01
    >>> report = array_fidelity(original, decoded, resolution=[0.1, 0.1], names=["a", "b"], bound=0.5)
    >>> round(report.variables["a"]["max_abs"], 6), report.variables["a"]["fraction_beyond_bound"]
    (0.1, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from vbes.datasets.schema import unpack_symmetric
from vbes.evaluation.observables import channel_observables, fit_peak

from vbes.errors import InsufficientSample, InvalidInput

__all__ = [
    "FidelityReport",
    "array_fidelity",
    "error_summary",
    "fidelity",
    "helix_errors",
    "momentum_errors",
    "positive_definite_fraction",
]

_QUANTILES = (0.5, 0.9, 0.99, 0.999)


@dataclass
class FidelityReport:
    """Per-variable errors, covariance health and observable shifts of decoded vs original events."""

    bound: float
    variables: dict[str, dict[str, Any]]
    covariance: dict[str, Any] = field(default_factory=dict)
    observables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, float]:
        """``{"variables/<name>/<stat>": value, "covariance/<stat>": ..., "observables/<name>/<stat>": ...}``."""
        out: dict[str, float] = {}
        for group in ("variables", "observables"):
            for name, numbers in getattr(self, group).items():
                for key, value in numbers.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                        out[f"{group}/{name}/{key}"] = float(value)
        for key, value in self.covariance.items():
            if isinstance(value, (int, float)):
                out[f"covariance/{key}"] = float(value)
        return out


def error_summary(
    original: np.ndarray, decoded: np.ndarray, resolution: np.ndarray | float | None, bound: float
) -> dict[str, Any]:
    """Error statistics of one variable.

    Args:
        original, decoded: the values (same length); entries NaN in both are equal, NaN in one only count as
            beyond the bound.
        resolution: per value or one number (same unit); None: only absolute / relative errors.
        bound: the error bound in units of resolution.
    """
    original = np.asarray(original, dtype=np.float64).ravel()
    decoded = np.asarray(decoded, dtype=np.float64).ravel()
    if original.shape != decoded.shape:
        raise InvalidInput(f"original and decoded differ in length: {original.size} vs {decoded.size}")
    both_nan = np.isnan(original) & np.isnan(decoded)
    nan_mismatch = np.isnan(original) ^ np.isnan(decoded)
    ok = ~(both_nan | nan_mismatch)
    err = decoded[ok] - original[ok]
    out: dict[str, Any] = {
        "n_values": int(original.size),
        "nan_mismatch": int(nan_mismatch.sum()),
        "max_abs_error": float(np.abs(err).max()) if err.size else 0.0,
        "rms_error": float(np.sqrt(np.mean(err**2))) if err.size else 0.0,
    }
    scale = np.abs(original[ok])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(err) / scale
    rel = rel[np.isfinite(rel)]
    out["max_relative_error"] = float(rel.max()) if rel.size else 0.0
    if resolution is None:
        return out
    sigma = np.broadcast_to(np.asarray(resolution, dtype=np.float64), original.shape)[ok]
    good = np.isfinite(sigma) & (sigma > 0)
    pulls = err[good] / sigma[good]
    n = pulls.size
    beyond = int((np.abs(pulls) > bound).sum()) + int(nan_mismatch.sum())
    out.update(
        {
            "mean": float(pulls.mean()) if n else 0.0,
            "std": float(pulls.std()) if n else 0.0,
            "max_abs": float(np.abs(pulls).max()) if n else 0.0,
            **{f"q{int(q * 1000) / 10:g}": float(np.quantile(np.abs(pulls), q)) if n else 0.0 for q in _QUANTILES},
            "fraction_beyond_bound": beyond / max(n + int(nan_mismatch.sum()), 1),
            "n_without_resolution": int((~good).sum()),
        }
    )
    return out


def positive_definite_fraction(packed: np.ndarray) -> float:
    """Fraction of packed symmetric matrices (lower triangles) that are positive-definite."""
    packed = np.asarray(packed, dtype=np.float64)
    if packed.shape[0] == 0:
        return 1.0
    matrices = unpack_symmetric(packed)
    finite = np.isfinite(matrices).all(axis=(1, 2))
    eigen = np.full((len(matrices), matrices.shape[-1]), -1.0)
    if finite.any():
        eigen[finite] = np.linalg.eigvalsh(matrices[finite])
    return float(np.mean(eigen.min(axis=1) > 0))


def helix_errors(helix_cov: np.ndarray) -> np.ndarray:
    """Per-track standard deviations of the five helix parameters, from the packed covariance."""
    diag = np.diagonal(unpack_symmetric(np.asarray(helix_cov, dtype=np.float64)), axis1=1, axis2=2)
    return np.sqrt(np.clip(diag, 0, None))


def momentum_errors(helix: np.ndarray, helix_cov: np.ndarray) -> dict[str, np.ndarray]:
    """Per-track errors of p, pT, cos(theta) and phi propagated from the helix covariance (Jacobian, full 2x2).

    ``pT = 1/|kappa|``, ``p = sqrt(1 + tanl^2)/|kappa|``, ``cos(theta) = tanl / sqrt(1 + tanl^2)``, ``phi`` follows
    ``phi0``.
    """
    helix = np.asarray(helix, dtype=np.float64)
    cov = unpack_symmetric(np.asarray(helix_cov, dtype=np.float64))
    kappa, tanl = helix[:, 2], helix[:, 4]
    s = np.sqrt(1 + tanl**2)
    p = s / np.abs(kappa)
    c_kk, c_kt, c_tt = cov[:, 2, 2], cov[:, 2, 4], cov[:, 4, 4]
    d_k, d_t = -p / kappa, tanl / (np.abs(kappa) * s)  # dp/dkappa, dp/dtanl
    var_p = d_k**2 * c_kk + 2 * d_k * d_t * c_kt + d_t**2 * c_tt
    return {
        "p": np.sqrt(np.clip(var_p, 0, None)),
        "pt": np.sqrt(np.clip(c_kk, 0, None)) / kappa**2,
        "cos_theta": np.sqrt(np.clip(c_tt, 0, None)) / s**3,
        "phi": np.sqrt(np.clip(cov[:, 1, 1], 0, None)),
    }


# detector figures for variables without a per-value error (MISSION.md; as in vbes.evaluation.features)
def _static_resolution(table: str, name: str, values: np.ndarray) -> np.ndarray | float | None:
    if table == "tracks" and name == "dedx":
        return 0.06 * np.abs(values)
    if table == "tracks" and name == "tof":
        return 0.09
    if table == "tracks" and name == "emc_energy":
        return 0.025 * np.sqrt(np.clip(values, 1e-6, None))
    if table == "tracks" and name in ("chi_dedx", "chi_tof"):
        return 1.0
    if table == "showers" and name in ("energy", "e3x3", "e5x5"):
        return 0.025 * np.sqrt(np.clip(values, 1e-6, None))
    if table == "showers" and name in ("x", "y", "z"):
        return 0.6  # cm: ~6 mm position resolution at 1 GeV
    return None


def fidelity(
    original: Mapping[str, Mapping[str, np.ndarray]],
    decoded: Mapping[str, Mapping[str, np.ndarray]],
    bound: float = 1.0,
    channel: str | None = None,
    tables: Sequence[str] = ("tracks", "showers"),
) -> FidelityReport:
    """Compare decoded events with the originals (``{table: {field: array}}``, same events and rows).

    Args:
        original: the events before compression.
        decoded: after compression and decompression.
        bound: error bound in units of resolution for ``fraction_beyond_bound``.
        channel: channel for the observable shifts (default: from the events).
        tables: object tables whose float fields are compared.
    """
    variables: dict[str, dict[str, Any]] = {}
    for table in tables:
        if table not in original or table not in decoded:
            continue
        for name, values in original[table].items():
            if name not in decoded[table]:
                raise InvalidInput(f"decoded events lack {table}.{name}")
            values = np.asarray(values)
            if values.dtype.kind != "f" or name == "helix_cov":
                continue
            dec = np.asarray(decoded[table][name])
            if dec.shape != values.shape:
                raise InvalidInput(f"{table}.{name}: decoded shape {dec.shape} differs from original {values.shape}")
            if table == "tracks" and name == "helix" and "helix_cov" in original["tracks"]:
                sigma = helix_errors(original["tracks"]["helix_cov"])
                for i, label in enumerate(("dr", "phi0", "kappa", "dz", "tanl")):
                    variables[f"tracks.helix.{label}"] = error_summary(values[:, i], dec[:, i], sigma[:, i], bound)
                continue
            resolution: Any
            if table == "tracks" and name in ("p", "cos_theta", "phi") and "helix_cov" in original["tracks"]:
                resolution = momentum_errors(original["tracks"]["helix"], original["tracks"]["helix_cov"])[name]
            elif (
                table == "showers"
                and name == "energy"
                and "energy_err" in original["showers"]
                and np.isfinite(np.asarray(original["showers"]["energy_err"], dtype=np.float64)).all()
            ):
                resolution = np.asarray(original["showers"]["energy_err"], dtype=np.float64)
            elif (
                table == "showers"
                and name in ("theta", "phi")
                and f"{name}_err" in original["showers"]
                and np.isfinite(np.asarray(original["showers"][f"{name}_err"], dtype=np.float64)).all()
            ):
                resolution = np.asarray(original["showers"][f"{name}_err"], dtype=np.float64)
            else:
                resolution = _static_resolution(table, name, values.astype(np.float64))
            if values.ndim == 2:
                resolution = (
                    resolution
                    if resolution is None or np.ndim(resolution) == 0
                    else np.asarray(resolution)[:, None] * np.ones(values.shape[1])
                )
            variables[f"{table}.{name}"] = error_summary(values, dec, resolution, bound)
    covariance: dict[str, Any] = {}
    if "tracks" in decoded and "helix_cov" in decoded["tracks"]:
        covariance["positive_definite_fraction"] = positive_definite_fraction(decoded["tracks"]["helix_cov"])
        covariance["n_matrices"] = len(decoded["tracks"]["helix_cov"])
        orig_sigma, dec_sigma = (
            helix_errors(original["tracks"]["helix_cov"]),
            helix_errors(decoded["tracks"]["helix_cov"]),
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.abs(dec_sigma / orig_sigma - 1)
        rel = rel[np.isfinite(rel)]
        covariance["max_relative_error_of_sigmas"] = float(rel.max()) if rel.size else 0.0
    return FidelityReport(bound, variables, covariance, _observable_shifts(original, decoded, channel))


def _observable_shifts(
    original: Mapping[str, Mapping[str, np.ndarray]],
    decoded: Mapping[str, Mapping[str, np.ndarray]],
    channel: str | None,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    try:
        before, after = channel_observables(original, channel), channel_observables(decoded, channel)
    except KeyError:
        return out  # events without tracks/showers tables: no observables
    for obs_o, obs_d in zip(before, after):
        try:
            if obs_o.kind == "peak":
                fo, fd = fit_peak(obs_o.values, window=obs_o.window), fit_peak(obs_d.values, window=obs_d.window)
                out[f"{obs_o.name}.position"] = {
                    "original": fo.position,
                    "decoded": fd.position,
                    "shift_over_stat_error": (fd.position - fo.position) / fo.position_error,
                }
                out[f"{obs_o.name}.width"] = {
                    "original": fo.width,
                    "decoded": fd.width,
                    "shift_over_stat_error": (fd.width - fo.width) / fo.width_error,
                }
            elif obs_o.kind in ("fraction", "spectrum"):
                vo = obs_o.values[np.isfinite(obs_o.values)]
                vd = obs_d.values[np.isfinite(obs_d.values)]
                if vo.size < 2:
                    continue
                # same events: the mean's statistical error on the original sample
                error = vo.std() / np.sqrt(vo.size) or 1.0
                out[f"{obs_o.name}.mean"] = {
                    "original": float(vo.mean()),
                    "decoded": float(vd.mean()) if vd.size else None,
                    "shift_over_stat_error": float((vd.mean() - vo.mean()) / error) if vd.size else float("inf"),
                }
        except InsufficientSample:
            continue
    return out


def array_fidelity(
    original: np.ndarray,
    decoded: np.ndarray,
    resolution: Sequence[float | None] | None = None,
    names: Sequence[str] | None = None,
    bound: float = 1.0,
) -> FidelityReport:
    """:func:`fidelity` for plain numeric tables ``(n_events, n_columns)`` with one resolution per column."""
    original = np.asarray(original, dtype=np.float64)
    decoded = np.asarray(decoded, dtype=np.float64)
    if original.shape != decoded.shape or original.ndim != 2:
        raise InvalidInput(f"original {original.shape} and decoded {decoded.shape} must be equal 2-D shapes")
    names = list(names or [f"x{i}" for i in range(original.shape[1])])
    resolution = list(resolution) if resolution is not None else [None] * len(names)
    variables = {
        name: error_summary(original[:, i], decoded[:, i], resolution[i], bound) for i, name in enumerate(names)
    }
    return FidelityReport(bound, variables)
