"""Physics observables per channel, and how two samples' observables are compared.

Each observable is a per-event array (NaN where the event does not enter it), so the same observable can be
recomputed on any subset of events -- the test sample, the reference, or a null split -- without going back to
the tables. Kinds and their comparison:

* ``peak`` -- a resonance or kinematic peak (pi0 -> gamma gamma, K_S -> pi pi, rho -> pi pi, the J/psi mass from all
  final-state particles, recoil masses, two-body momenta, E/p). Each sample's peak is fitted with a Gaussian in
  +-2 sigma of its core (:func:`fit_peak`); position and width are compared as ``z = (A - B) / sqrt(err_A^2 +
  err_B^2)`` with the fits' statistical errors.
* ``fraction`` -- a selection efficiency or a tail fraction, compared as binomial proportions (z-test).
* ``spectrum`` -- a momentum, angular or PID spectrum, compared by chi2 on fixed bins from the reference.
* ``spectrum2d`` -- a two-dimensional distribution (the rho pi Dalitz plot), chi2 on fixed 2-D bins.
* ``correlation`` -- the Pearson correlation of a pair of quantities, compared as ``|r_A - r_B|`` in units of
  its distribution-free standard error (:func:`vbes.evaluation.metrics.correlation_variances`; Fisher's z needs
  bivariate normal pairs, which back-to-back tracks are not).

Every comparison yields a p-value from a known asymptotic null; :mod:`vbes.evaluation.null` checks it on
reference-vs-reference splits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats
from vbes.evaluation import metrics
from vbes.evaluation.features import (
    JPSI_MASS,
    KS_MASS,
    PI0_MASS,
    Objects,
    channel_of,
    derived_quantities,
    object_slots,
    slot_values,
)

from vbes.errors import InsufficientSample

__all__ = [
    "MIN_PEAK_EVENTS",
    "Observable",
    "PeakFit",
    "channel_observables",
    "compare_observable",
    "fit_peak",
    "fixed_edges",
    "peak_range",
    "reference_half_width",
]

#: fewest values inside the fit window of a peak
MIN_PEAK_EVENTS = 200
#: radiative tail: two-body mass below this (GeV/c^2), i.e. > ~9 resolutions below the J/psi peak
RADIATIVE_TAIL_BELOW = 3.0
#: PDG rho(770) mass and width in GeV/c^2
RHO_MASS = 0.77526
RHO_WIDTH = 0.1491


@dataclass
class Observable:
    """One observable's per-event values.

    Args:
        name: identifier used in the report and the gates.
        kind: ``peak``, ``fraction``, ``spectrum``, ``spectrum2d`` or ``correlation``.
        values: ``(n_events,)`` or ``(n_events, k)`` (k values pooled per event; for ``spectrum2d`` and
            ``correlation`` the two coordinates); NaN = not entering.
        unit: unit of the values.
        description: what it is, for the report.
        expected: the known value (PDG, MISSION.md) for the report, where there is one.
        window: for a broad peak, the fixed fit window (same for every sample); default: see
            :func:`reference_window`.
        window_sigmas: half-width of the reference-derived window in units of the core's sigma (narrower for
            a skewed peak such as a Landau, whose top only is Gaussian).
    """

    name: str
    kind: str
    values: np.ndarray
    unit: str = ""
    description: str = ""
    expected: float | None = None
    window: tuple[float, float] | None = None
    window_sigmas: float = 2.5

    def subset(self, rows: np.ndarray) -> Observable:
        return Observable(
            self.name,
            self.kind,
            self.values[rows],
            self.unit,
            self.description,
            self.expected,
            self.window,
            self.window_sigmas,
        )


def _pair(
    tables: Mapping[str, Mapping[str, np.ndarray]], objects: Objects, field: str, transform: str = ""
) -> np.ndarray:
    values = np.asarray(tables["tracks"][field], dtype=np.float64)
    if transform == "e_over_p":
        p = np.asarray(tables["tracks"]["p"], dtype=np.float64)
        values = values / np.where(p > 0, p, np.nan)
    n = objects.n_events
    return np.column_stack([slot_values(values, objects.track_event, objects.track_rank, k, n) for k in (0, 1)])


def _acollinearity(tables: Mapping[str, Mapping[str, np.ndarray]], objects: Objects) -> np.ndarray:
    p3 = [_pair(tables, objects, c) for c in ("px", "py", "pz")]
    first = np.column_stack([c[:, 0] for c in p3])
    second = np.column_stack([c[:, 1] for c in p3])
    cos = np.sum(first * second, axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
    return np.pi - np.arccos(np.clip(cos, -1, 1))


def channel_observables(tables: Mapping[str, Mapping[str, np.ndarray]], channel: str | None = None) -> list[Observable]:
    """The channel's observables of an event batch (``{table: {field: array}}``).

    Args:
        tables: events, tracks and showers tables.
        channel: default: the batch's own ``events.channel``.
    """
    channel = channel or channel_of(tables)
    objects = object_slots(tables)
    derived = derived_quantities(tables, channel, objects)
    n = objects.n_events
    events = tables["events"]
    out: list[Observable] = []
    if channel in ("ee", "mumu", "ppbar"):
        m_ll = derived["m_ll"]
        selected = np.isfinite(m_ll)
        label = {"ee": "e+e-", "mumu": "mu+mu-", "ppbar": "p pbar"}[channel]
        out += [
            Observable("m_ll", "peak", m_ll, "GeV/c^2", f"J/psi mass from the {label} pair", JPSI_MASS),
            Observable(
                "p_cm",
                "peak",
                np.column_stack([derived["p_cm_plus"], derived["p_cm_minus"]]),
                "GeV/c",
                "track momentum in the J/psi frame (both tracks)",
            ),
            Observable(
                "selection_efficiency",
                "fraction",
                selected.astype(np.float64),
                "",
                "fraction of events with exactly two opposite-charge tracks",
            ),
            Observable(
                "cos_theta",
                "spectrum",
                np.where(selected[:, None], _pair(tables, objects, "cos_theta"), np.nan),
                "",
                "polar-angle spectrum of the two tracks",
            ),
            Observable(
                "p_lab",
                "spectrum",
                np.where(selected[:, None], _pair(tables, objects, "p"), np.nan),
                "GeV/c",
                "momentum spectrum of the two tracks (detector frame)",
            ),
            Observable(
                "e_over_p",
                "spectrum",
                np.where(selected[:, None], _pair(tables, objects, "emc_energy", "e_over_p"), np.nan),
                "",
                "E/p of the two tracks",
            ),
            Observable(
                "muc_depth",
                "spectrum",
                np.where(selected[:, None], _pair(tables, objects, "muc_depth"), np.nan),
                "cm",
                "muon-counter penetration depth of the two tracks",
            ),
            Observable(
                "acollinearity",
                "spectrum",
                np.where(selected, _acollinearity(tables, objects), np.nan),
                "rad",
                "angle between the two tracks' directions, minus pi (0 = back to back)",
            ),
            Observable(
                "corr_cos_theta_pair",
                "correlation",
                np.where(selected[:, None], _pair(tables, objects, "cos_theta"), np.nan),
                "",
                "correlation of the two tracks' polar angles (back to back: close to -1)",
            ),
        ]
        if channel != "ppbar":
            out.append(
                Observable(
                    "radiative_tail",
                    "fraction",
                    np.where(selected, (m_ll < RADIATIVE_TAIL_BELOW).astype(np.float64), np.nan),
                    "",
                    f"fraction of selected events with m({label}) < {RADIATIVE_TAIL_BELOW} GeV/c^2 "
                    "(final-state radiation)",
                )
            )
        if channel == "ee":
            out.append(
                Observable(
                    "e_over_p_peak",
                    "peak",
                    np.where(selected[:, None], _pair(tables, objects, "emc_energy", "e_over_p"), np.nan),
                    "",
                    "electron E/p peak",
                    1.0,
                )
            )
        if channel == "mumu":
            out.append(
                Observable(
                    "emc_energy_mip",
                    "peak",
                    np.where(selected[:, None], _pair(tables, objects, "emc_energy"), np.nan),
                    "GeV",
                    "minimum-ionising EMC peak of the muons (Landau: its top, +-1 sigma, is fitted)",
                    window_sigmas=1.0,
                )
            )
    elif channel == "rhopi":
        ok = np.isfinite(derived["m_pipi"]) & np.isfinite(derived["m_gg"])
        both = np.column_stack([derived["m_pip_pi0"], derived["m_pim_pi0"]])
        out += [
            Observable(
                "m_gg", "peak", derived["m_gg"], "GeV/c^2", "pi0 -> gamma gamma (two leading good photons)", PI0_MASS
            ),
            Observable(
                "m2_recoil_pipi",
                "peak",
                derived["m2_recoil_pipi"],
                "GeV^2/c^4",
                "squared mass recoiling against pi+pi- (the pi0)",
                PI0_MASS**2,
            ),
            Observable(
                "m_all",
                "peak",
                np.where(ok, derived["m_all"], np.nan),
                "GeV/c^2",
                "J/psi mass from pi+ pi- gamma gamma",
                JPSI_MASS,
            ),
            Observable(
                "m_pipi", "spectrum", np.where(ok, derived["m_pipi"], np.nan), "GeV/c^2", "rho0 -> pi+pi- mass spectrum"
            ),
            Observable(
                "m_pipi0",
                "spectrum",
                np.where(ok[:, None], both, np.nan),
                "GeV/c^2",
                "rho+- -> pi+- pi0 mass spectrum (both charges)",
            ),
            Observable(
                "rho_peak",
                "peak",
                np.where(ok[:, None], np.column_stack([derived["m_pipi"], both]), np.nan),
                "GeV/c^2",
                "rho -> pi pi peak (all three charge states pooled; Gaussian core in a fixed "
                "window of +-1 width around the PDG mass)",
                RHO_MASS,
                window=(RHO_MASS - RHO_WIDTH, RHO_MASS + RHO_WIDTH),
            ),
            Observable(
                "dalitz",
                "spectrum2d",
                np.where(ok[:, None], both**2, np.nan),
                "GeV^2/c^4",
                "rho pi Dalitz plot: m^2(pi+ pi0) vs m^2(pi- pi0)",
            ),
            Observable(
                "selection_efficiency",
                "fraction",
                ok.astype(np.float64),
                "",
                "fraction of events with pi+ pi- and at least two good photons",
            ),
            Observable(
                "n_photons",
                "spectrum",
                np.bincount(objects.shower_event[objects.photon], minlength=n).astype(np.float64),
                "",
                "good-photon multiplicity",
            ),
            Observable(
                "p_pi",
                "spectrum",
                np.where(ok[:, None], _pair(tables, objects, "p"), np.nan),
                "GeV/c",
                "charged-pion momentum spectrum",
            ),
            Observable(
                "cos_theta",
                "spectrum",
                np.where(ok[:, None], _pair(tables, objects, "cos_theta"), np.nan),
                "",
                "charged-pion polar-angle spectrum",
            ),
        ]
    elif channel == "kskpi":
        ok = np.isfinite(derived["m_ks"])
        out += [
            Observable("m_ks", "peak", derived["m_ks"], "GeV/c^2", "K_S -> pi+ pi-", KS_MASS),
            Observable(
                "m2_recoil_kpi",
                "peak",
                derived["m2_recoil_kpi"],
                "GeV^2/c^4",
                "squared mass recoiling against K pi (the K_S)",
                KS_MASS**2,
            ),
            Observable("m_all", "peak", derived["m_all"], "GeV/c^2", "J/psi mass from K_S K pi", JPSI_MASS),
            Observable(
                "selection_efficiency",
                "fraction",
                ok.astype(np.float64),
                "",
                "fraction of events with four tracks of zero net charge",
            ),
            Observable("p_track", "spectrum", _pair(tables, objects, "p"), "GeV/c", "leading tracks' momenta"),
        ]
    else:
        out += [
            Observable(
                "n_tracks", "spectrum", np.asarray(events["n_tracks"], dtype=np.float64), "", "charged multiplicity"
            ),
            Observable(
                "n_showers", "spectrum", np.asarray(events["n_showers"], dtype=np.float64), "", "shower multiplicity"
            ),
            Observable("e_visible", "spectrum", derived["e_visible"], "GeV", "visible energy"),
        ]
    return out


@dataclass(frozen=True)
class PeakFit:
    """Gaussian core fit of a peak: position and width with their statistical errors."""

    position: float
    position_error: float
    width: float
    width_error: float
    n_window: int


def _core(values: np.ndarray) -> tuple[float, float]:
    # start at the mode, then iterate median / MAD in a +-3 sigma window so tails do not pull the core
    lo, hi = np.quantile(values, [0.005, 0.995])
    counts, edges = np.histogram(values, bins=100, range=(lo, hi))
    centre = 0.5 * (edges[counts.argmax()] + edges[counts.argmax() + 1])
    sigma = (hi - lo) / 8
    for _ in range(4):
        window = values[np.abs(values - centre) < 3 * sigma]
        if window.size < 10:
            break
        centre = float(np.median(window))
        sigma = float(1.4826 * np.median(np.abs(window - centre))) or sigma
    return centre, sigma


def fit_peak(
    values: np.ndarray, n_bins: int = 40, window: tuple[float, float] | None = None, half_width: float | None = None
) -> PeakFit:
    """Fit a Gaussian to the core of a peak (within +-2 sigma of a robust centre), binned, Poisson-weighted.

    Args:
        values: the peaked quantity (NaN ignored).
        n_bins: bins in the fit window.
        window: a fixed fit window instead (for broad peaks such as the rho, whose core depends on the window).
        half_width: a fixed half-width of the window, centred on the values' own robust core.

    Raises :class:`InsufficientSample` with fewer than :data:`MIN_PEAK_EVENTS` values in the window.
    """
    values = metrics.finite(values)
    if values.size < MIN_PEAK_EVENTS:
        raise InsufficientSample(f"a peak fit needs at least {MIN_PEAK_EVENTS} values; got {values.size}")
    if window is None:
        centre, sigma = _core(values)
        if half_width is not None:
            sigma = half_width / 2
        lo, hi = centre - 2 * sigma, centre + 2 * sigma
    else:
        lo, hi = window
        centre, sigma = 0.5 * (lo + hi), 0.5 * (hi - lo)
    inside = values[(values > lo) & (values < hi)]
    if inside.size < MIN_PEAK_EVENTS:
        raise InsufficientSample(f"a peak fit needs at least {MIN_PEAK_EVENTS} values in its window; got {inside.size}")
    counts, edges = np.histogram(inside, bins=n_bins, range=(lo, hi))
    x = 0.5 * (edges[1:] + edges[:-1])

    def gauss(x: np.ndarray, amplitude: float, mean: float, width: float) -> np.ndarray:
        return amplitude * np.exp(-0.5 * ((x - mean) / width) ** 2)

    try:
        params, cov = optimize.curve_fit(
            gauss,
            x,
            counts,
            p0=(counts.max(), centre, sigma),
            sigma=np.sqrt(np.maximum(counts, 1)),
            absolute_sigma=True,
            maxfev=5000,
        )
        errors = np.sqrt(np.diag(cov))
        if not (np.all(np.isfinite(errors)) and lo < params[1] < hi and 0 < abs(params[2]) < 4 * sigma):
            raise RuntimeError("fit left its window")
        return PeakFit(float(params[1]), float(errors[1]), float(abs(params[2])), float(errors[2]), int(inside.size))
    except (RuntimeError, optimize.OptimizeWarning):
        # fall back to the robust core estimates with their asymptotic Gaussian errors
        return PeakFit(
            centre, 1.2533 * sigma / np.sqrt(inside.size), sigma, 0.78 * sigma / np.sqrt(inside.size), int(inside.size)
        )


def peak_range(values: np.ndarray, sigmas: float = 5.0) -> tuple[float, float]:
    """The robust core of a peak +- ``sigmas`` of its width (for plotting the peak region)."""
    values = metrics.finite(values)
    if values.size == 0:
        return 0.0, 1.0
    centre, sigma = _core(values)
    return centre - sigmas * sigma, centre + sigmas * sigma


def reference_half_width(observable: Observable) -> float:
    """Half-width of a peak's fit window, fixed from the reference: ``window_sigmas`` times its core's sigma.

    Used for the sample, the reference and every null split alike (each window centred on that sample's own
    core): a width that followed each sample's fluctuations made the fitted widths scatter more than their
    errors say on reference-vs-reference splits.
    """
    values = metrics.finite(observable.values)
    if values.size < MIN_PEAK_EVENTS:
        raise InsufficientSample(f"a peak fit needs at least {MIN_PEAK_EVENTS} values; got {values.size}")
    return observable.window_sigmas * _core(values)[1]


def fixed_edges(observable: Observable, n_bins: int = 40) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Fixed bins for a spectrum from the reference's values (2-D: 12 x 12 bins for a Dalitz plot)."""
    if observable.kind == "spectrum2d":
        return (metrics.fixed_bins(observable.values[:, 0], n_bins=12),
                metrics.fixed_bins(observable.values[:, 1], n_bins=12))
    return metrics.fixed_bins(observable.values, n_bins=n_bins)


def _z_pvalue(z: float) -> float:
    return float(2 * stats.norm.sf(abs(z)))


def compare_observable(
    sample: Observable, reference: Observable, edges: np.ndarray | tuple[Any, Any] | float | None = None
) -> dict[str, dict[str, Any]]:
    """Compare one observable between a sample and a reference.

    ``edges``: fixed bins of a spectrum (2-D: a pair), or a peak's fixed window half-width (see
    :func:`reference_half_width`; default: the observable's own window, else each sample's adaptive one).

    Returns:
        ``{test name: {"value", "pvalue", ...}}``: for a peak ``position`` and ``width`` (value = z-score, plus
        both fits), for a fraction ``difference`` (value = z), for spectra ``chi2`` (value = chi2/ndf), for a
        correlation ``difference`` (value = ``|r_A - r_B|``, p-value from its z-score).
    """
    kind = sample.kind
    if kind == "peak":
        half = float(edges) if isinstance(edges, (int, float)) and sample.window is None else None
        fa = fit_peak(sample.values, window=sample.window, half_width=half)
        fb = fit_peak(reference.values, window=reference.window, half_width=half)
        z_pos = (fa.position - fb.position) / np.hypot(fa.position_error, fb.position_error)
        z_width = (fa.width - fb.width) / np.hypot(fa.width_error, fb.width_error)
        return {
            "position": {
                "value": float(z_pos),
                "pvalue": _z_pvalue(z_pos),
                "sample": fa.position,
                "sample_error": fa.position_error,
                "reference": fb.position,
                "reference_error": fb.position_error,
                "shift": fa.position - fb.position,
                "shift_over_reference_width": (fa.position - fb.position) / fb.width,
                "unit_of_value": "standard errors",
            },
            "width": {
                "value": float(z_width),
                "pvalue": _z_pvalue(z_width),
                "sample": fa.width,
                "sample_error": fa.width_error,
                "reference": fb.width,
                "reference_error": fb.width_error,
                "ratio": fa.width / fb.width,
                "unit_of_value": "standard errors",
            },
        }
    if kind == "fraction":
        a, b = metrics.finite(sample.values), metrics.finite(reference.values)
        metrics.require_events("presence", a.size, "sample")
        metrics.require_events("presence", b.size, "reference")
        pooled = (a.sum() + b.sum()) / (a.size + b.size)
        se = np.sqrt(pooled * (1 - pooled) * (1 / a.size + 1 / b.size))
        z = 0.0 if se == 0 else (a.mean() - b.mean()) / se
        return {
            "difference": {
                "value": float(z),
                "pvalue": _z_pvalue(z),
                "sample": float(a.mean()),
                "reference": float(b.mean()),
                "unit_of_value": "standard errors",
            }
        }
    if kind == "spectrum":
        assert isinstance(edges, np.ndarray)
        result = metrics.chi2_ndf(sample.values, reference.values, edges)
        return {
            "chi2": {
                "value": result.chi2_ndf,
                "pvalue": result.pvalue,
                "chi2": result.chi2,
                "ndf": result.ndf,
                "unit_of_value": "chi2/ndf",
            }
        }
    if kind == "spectrum2d":
        assert isinstance(edges, tuple)
        a = sample.values[np.isfinite(sample.values).all(axis=1)]
        b = reference.values[np.isfinite(reference.values).all(axis=1)]
        metrics.require_events("chi2", len(a), "sample")
        metrics.require_events("chi2", len(b), "reference")
        # a 2-D histogram is a 1-D one over the flattened bin index: reuse the 1-D two-sample chi2
        bins = [np.clip(np.digitize(x[:, i], edges[i]) - 1, 0, len(edges[i]) - 2) for x in (a, b) for i in range(2)]
        width = len(edges[1]) - 1
        flat_a, flat_b = bins[0] * width + bins[1], bins[2] * width + bins[3]
        flat_edges = np.arange((len(edges[0]) - 1) * width + 1) - 0.5
        result = metrics.chi2_ndf(flat_a, flat_b, flat_edges)
        return {
            "chi2": {
                "value": result.chi2_ndf,
                "pvalue": result.pvalue,
                "chi2": result.chi2,
                "ndf": result.ndf,
                "unit_of_value": "chi2/ndf",
            }
        }
    if kind == "correlation":
        a = sample.values[np.isfinite(sample.values).all(axis=1)]
        b = reference.values[np.isfinite(reference.values).all(axis=1)]
        metrics.require_events("correlation", len(a), "sample")
        metrics.require_events("correlation", len(b), "reference")
        # Fisher's z assumes bivariate normal pairs, and back-to-back tracks (|r| close to 1) are far from that
        # (its z-scores came out several sigma wide on reference splits): distribution-free variances instead
        (r_a, var_a), (r_b, var_b) = (metrics.correlation_variances(x) for x in (a, b))
        se = float(np.sqrt(var_a[0, 1] + var_b[0, 1]))
        z = float((r_a[0, 1] - r_b[0, 1]) / se) if se > 0 else 0.0
        return {
            "difference": {
                "value": float(abs(r_a[0, 1] - r_b[0, 1])),
                "pvalue": _z_pvalue(z),
                "z": z,
                "sample": float(r_a[0, 1]),
                "reference": float(r_b[0, 1]),
                "unit_of_value": "|r_A - r_B|",
            }
        }
    raise ValueError(f"unknown observable kind {kind!r}")
