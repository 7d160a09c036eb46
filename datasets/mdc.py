"""The drift chamber (MDC) of the detector model: hit pattern, track finding, helix resolution and the fit's χ².

Vectorised over tracks (NumPy; the 43 layers are one array axis). The constants come from the ``Mdc`` payload
(``calibration/data/boss-6.6.4-sim-2.yaml``); the layer radii and half-lengths are BESIII's sense-wire geometry
(BOSS's ``MdcGeomSvc`` as shipped by pybes3). What it models, and why:

* **Hit pattern.** A charged particle from its production point ``(vx, vy, vz)`` follows its helix outwards;
  it crosses layer ``i`` where the circle reaches the layer's radius and ``|z|`` is still inside the layer's
  half-length (a steep track leaves through the endplate; a soft one curls back before the outer layers; a
  K_S daughter born at radius R never sees the layers inside R). Each crossed layer gives a hit with the hit
  efficiency.
* **Finding.** A track needs ``min_hits`` hits, ``min_stereo_hits`` of them on stereo layers (its z), and is
  then found with a probability rising with the hits it has (``efficiency_hits_scale``), normalised to 1 for
  a prompt track crossing every layer (the low-pT turn-on is applied before). So the efficiency falls with the
  production radius as the layers beyond it run out, and with |cosθ| as the endplate cuts the track short.
* **Resolution.** ``σ(κ)`` is the Gluckstern measurement term of the single-wire resolution over the lever arm
  of the hits actually made, ``σ_w / (0.3 B L²) · sqrt(720 / (N + 4))``, in quadrature with a multiple-scattering
  term ``∝ 1 / (β sqrt(L sinθ))`` whose size is fixed so that a 1 GeV/c track at 90° crossing all layers has
  the published σ(pT)/pT. The other helix parameters have a measurement term scaled with the hits and lever
  arm and a multiple-scattering term ``∝ 1/(pβ)`` with the material's sinθ dependence. Each track's hit
  resolution varies by a log-normal factor (drift distances, hit mix), so covariances vary track to track as a
  Kalman fit's do; the stored covariance is the one the core was smeared with.
* **Tails.** A fraction of tracks (wrong hit assignments, hard scatters) get residuals ``tail_scale`` times
  wider than their covariance says: a second, wider Gaussian.
* **Fit χ².** ``ndof = hits − 5``; ``χ² = s · f² · χ²(ndof)`` with the track's resolution factor f and the
  scale s of the real DST's fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from vbes.datasets.numeric import CM_PER_GEV_TESLA, wrap_angle
from vbes.datasets.numeric import quadrature as _quad

__all__ = [
    "HitPattern",
    "finding_probability",
    "hit_pattern",
    "momentum_resolution_reference",
    "smear_helix",
]

#: tracks processed at once (bounds the (tracks x layers) temporaries)
_BLOCK = 32768


class HitPattern(dict[str, np.ndarray]):
    """Per track: ``n_hits``, ``n_stereo``, ``first_layer``, ``last_layer`` (-1 without hits), ``lever_arm_cm``."""


def _gluckstern(n_hits: np.ndarray | float, lever_cm: np.ndarray | float, mdc: Mapping[str, Any]) -> Any:
    """σ(κ) in (GeV/c)^-1 from the wire resolution over ``n_hits`` hits spread over ``lever_cm``."""
    sigma_w_m = float(mdc["single_wire_resolution_um"]) * 1e-6
    lever_m = np.maximum(np.asarray(lever_cm, float), 1.0) * 1e-2
    return sigma_w_m / (0.299792458 * float(mdc["bfield_t"]) * lever_m**2) * np.sqrt(720.0 / (np.asarray(n_hits) + 4.0))


def _reference(mdc: Mapping[str, Any]) -> tuple[float, float]:
    """(hits, lever arm in cm) of a prompt track at 90° crossing every layer."""
    radii = np.asarray(mdc["layer_radius_cm"], float)
    return float(radii.size * float(mdc["hit_efficiency"])), float(radii[-1] - radii[0])


def momentum_resolution_reference(mdc: Mapping[str, Any]) -> tuple[float, float]:
    """``(measurement, multiple scattering)`` terms of σ(pT)/pT at pT = 1 GeV/c, 90°, β = 1, all layers.

    The measurement term follows from the wire resolution and the layer radii; the multiple-scattering term is
    what the published total (``sigma_pt_rel_at_1gev``) leaves in quadrature.
    """
    from vbes.errors import CalibrationError

    n_ref, lever_ref = _reference(mdc)
    measurement = float(_gluckstern(n_ref, lever_ref, mdc))
    total = float(mdc["sigma_pt_rel_at_1gev"])
    if measurement >= total:
        raise CalibrationError(f"Mdc payload: the wire resolution alone gives σ(pT)/pT = {measurement:.4f} at "
                               f"1 GeV/c, more than the total sigma_pt_rel_at_1gev = {total}")
    return measurement, float(np.sqrt(total**2 - measurement**2))


def hit_pattern(charge: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, vx: np.ndarray,
                vy: np.ndarray, vz: np.ndarray, mdc: Mapping[str, Any], rng: np.random.Generator,
                end_radius: np.ndarray | None = None) -> HitPattern:
    """The MDC layers each particle crosses and the hits it leaves there.

    Args:
        charge: ±1 per particle.
        px, py, pz: momentum at the production point, GeV/c.
        vx, vy, vz: production point, cm.
        mdc: the ``Mdc`` payload's constants.
        rng: random stream.
        end_radius: transverse radius (cm) where each particle ends (a decay or interaction in flight); the
            layers beyond it get no hits. ``None``: every particle flies on.
    """
    radii = np.asarray(mdc["layer_radius_cm"], float)
    half = np.asarray(mdc["layer_half_length_cm"], float)
    n = charge.size
    stereo = np.asarray(mdc["layer_is_stereo"], bool)
    radii32, half32 = radii.astype(np.float32), half.astype(np.float32)
    out = HitPattern(n_hits=np.zeros(n, np.int16), n_stereo=np.zeros(n, np.int16), first_layer=np.full(n, -1, np.int16),
                     last_layer=np.full(n, -1, np.int16), lever_arm_cm=np.zeros(n))
    for lo in range(0, n, _BLOCK):
        s = slice(lo, min(lo + _BLOCK, n))
        q, x0, y0, z0 = charge[s], vx[s].astype(float), vy[s].astype(float), vz[s].astype(float)
        pt = np.maximum(np.hypot(px[s], py[s]), 1e-9)
        radius = CM_PER_GEV_TESLA * pt / float(mdc["bfield_t"])
        ux, uy = px[s] / pt, py[s] / pt
        cx, cy = x0 + q * radius * uy, y0 - q * radius * ux
        d_c = np.maximum(np.hypot(cx, cy), 1e-9)
        r0 = np.hypot(x0, y0)

        def centre_angle(r2: np.ndarray, d_c: np.ndarray, radius: np.ndarray) -> np.ndarray:
            # angle at the circle's centre between the origin's direction and the point at distance sqrt(r2)
            return np.arccos(np.clip((radius**2 + d_c**2 - r2) / (2 * radius * d_c), -1.0, 1.0))

        # the (tracks x layers) arrays in float32: millimetre precision is plenty and halves the time
        d32, rad32 = d_c.astype(np.float32)[:, None], radius.astype(np.float32)[:, None]
        psi0 = centre_angle(r0**2, d_c, radius).astype(np.float32)[:, None]
        psi = centre_angle(radii32**2, d32, rad32)
        outward = ((x0 * ux + y0 * uy) >= 0.0)[:, None]
        beyond = radii32 >= r0.astype(np.float32)[:, None]
        # arc from the production point to each layer: straight out, or in through the closest approach first
        arc = rad32 * np.where(outward, psi - psi0, np.where(beyond, psi + psi0, psi0 - psi))
        reached = (radii32 <= d32 + rad32) & (radii32 >= np.abs(d32 - rad32)) & (beyond | ~outward)
        if end_radius is not None:
            reached &= radii32 <= end_radius[s].astype(np.float32)[:, None]
        z = z0.astype(np.float32)[:, None] + arc * (pz[s] / pt).astype(np.float32)[:, None]
        through_endplate = reached & (np.abs(z) >= half32)
        # once through an endplate the particle has left the chamber
        crossed = reached & ~through_endplate & (np.cumsum(through_endplate, axis=1) == 0)
        hits = crossed & (rng.random(crossed.shape, dtype=np.float32) < float(mdc["hit_efficiency"]))
        n_hits = hits.sum(axis=1)
        first = np.where(n_hits > 0, np.argmax(hits, axis=1), -1)
        last = np.where(n_hits > 0, radii.size - 1 - np.argmax(hits[:, ::-1], axis=1), -1)
        out["n_hits"][s] = n_hits
        out["n_stereo"][s] = hits[:, stereo].sum(axis=1)
        out["first_layer"][s] = first
        out["last_layer"][s] = last
        out["lever_arm_cm"][s] = np.where(n_hits > 1, radii[np.maximum(last, 0)] - radii[np.maximum(first, 0)], 0.0)
    return out


def finding_probability(hits: HitPattern, mdc: Mapping[str, Any]) -> np.ndarray:
    """Probability that pattern recognition finds each track, from its hits (1 for a prompt track with all)."""
    n_min, scale = float(mdc["min_hits"]), float(mdc["efficiency_hits_scale"])
    n_ref, _ = _reference(mdc)
    rise = (1.0 - np.exp(-(hits["n_hits"] - n_min) / scale)) / (1.0 - np.exp(-(n_ref - n_min) / scale))
    enough = (hits["n_hits"] >= n_min) & (hits["n_stereo"] >= int(mdc["min_stereo_hits"]))
    return np.where(enough, np.clip(rise, 0.0, 1.0), 0.0)


def smear_helix(helix_true: np.ndarray, p_true: np.ndarray, beta: np.ndarray, hits: HitPattern,
                mdc: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Measured helices, their covariances and the fit χ² of found tracks.

    Args:
        helix_true: (n, 5) true helices about the origin.
        p_true: true momentum, GeV/c.
        beta: true velocity.
        hits: :func:`hit_pattern` of these tracks.
        mdc: the ``Mdc`` payload's constants.
        rng: random stream.

    Returns:
        ``helix`` (n, 5), ``cov`` (n, 5, 5), ``fit_chi2``, ``fit_ndof``.
    """
    n = helix_true.shape[0]
    kappa, tanl = helix_true[:, 2], helix_true[:, 4]
    sin_theta = 1.0 / np.sqrt(1.0 + tanl**2)
    n_hits = np.maximum(hits["n_hits"].astype(float), 6.0)
    lever = np.maximum(hits["lever_arm_cm"], 5.0)
    n_ref, lever_ref = _reference(mdc)
    _, ms_ref = momentum_resolution_reference(mdc)
    # this track's hit resolution relative to nominal: a Kalman fit's errors vary with the hits it got
    quality = np.exp(float(mdc["fit_quality_sigma"]) * rng.standard_normal(n))
    meas_scale = quality * np.sqrt(n_ref / n_hits) * (lever_ref / lever)
    pbeta = p_true * beta
    root_sin = np.sqrt(sin_theta)

    s_kappa = _quad(quality * _gluckstern(n_hits, lever, mdc),
                    np.abs(kappa) * ms_ref / beta * np.sqrt(lever_ref / lever) / root_sin)
    s_dr = _quad(mdc["sigma_dr_cm"][0] * meas_scale, mdc["sigma_dr_cm"][1] / (pbeta * root_sin))
    s_phi = _quad(mdc["sigma_phi0_rad"][0] * meas_scale, mdc["sigma_phi0_rad"][1] / (pbeta * root_sin))
    s_dz = _quad(mdc["sigma_dz_cm"][0] * meas_scale, mdc["sigma_dz_cm"][1] / (pbeta * sin_theta * root_sin))
    # tanλ = cotθ: σ(tanλ) = σ(λ) / sin²θ
    s_tanl = _quad(mdc["sigma_tanl"][0] * meas_scale, mdc["sigma_tanl"][1] / (pbeta * root_sin)) / sin_theta**2
    r1, r2 = float(mdc["corr_dr_phi0"]), float(mdc["corr_dz_tanl"])

    z = rng.standard_normal((n, 5))
    tail = rng.random(n) < float(mdc["tail_fraction"])
    z *= np.where(tail, float(mdc["tail_scale"]), 1.0)[:, None]
    helix = helix_true.copy()
    helix[:, 0] += s_dr * z[:, 0]
    helix[:, 1] += s_phi * (r1 * z[:, 0] + np.sqrt(1 - r1 * r1) * z[:, 1])
    helix[:, 2] += s_kappa * z[:, 2]
    helix[:, 3] += s_dz * z[:, 3]
    helix[:, 4] += s_tanl * (r2 * z[:, 3] + np.sqrt(1 - r2 * r2) * z[:, 4])
    helix[:, 1] = wrap_angle(helix[:, 1])
    cov = np.zeros((n, 5, 5))
    cov[:, 0, 0], cov[:, 1, 1], cov[:, 2, 2] = s_dr**2, s_phi**2, s_kappa**2
    cov[:, 3, 3], cov[:, 4, 4] = s_dz**2, s_tanl**2
    cov[:, 0, 1] = cov[:, 1, 0] = r1 * s_dr * s_phi
    cov[:, 3, 4] = cov[:, 4, 3] = r2 * s_dz * s_tanl

    ndof = np.maximum(hits["n_hits"].astype(np.int64) - 5, 1)
    chi2 = float(mdc["chi2_per_ndof_scale"]) * quality**2 * rng.chisquare(ndof)
    # a wrong hit or a hard scatter shows in the fit quality too
    chi2 = np.where(tail, chi2 + rng.chisquare(ndof) * (float(mdc["tail_scale"]) - 1.0), chi2)
    return {"helix": helix, "cov": cov, "fit_chi2": chi2, "fit_ndof": ndof.astype(np.int16)}
