"""A BESIII-like detector response, vectorised over whole batches of truth particles (NumPy, no Python loops).

Every number comes from the calibration payloads handed in (``constants[type][name]``, see
``calibration/data/boss-6.6.4-sim-2.yaml``, which says for each constant whether it is published — NIM A 614
(2010) 345 via MISSION.md — or synthetic). The model:

* **MDC** (``Mdc``, :mod:`vbes.datasets.mdc`): acceptance |cosθ| < 0.93 and a low-pT turn-on; the hits each
  particle leaves on BESIII's 43 layers from its production point (so steep, soft and displaced tracks have
  fewer, and are found only with enough of them); the true helix (dr, phi0, kappa, dz, tanl) about the origin
  computed exactly from the production vertex; a Kalman-like covariance per track (Gluckstern term of the
  hits made ⊕ multiple scattering, 0.5 % at 1 GeV/c), a second wider Gaussian for a few tracks, the fit's χ².
* **dE/dx** (``Dedx``): a Bethe–Bloch shape with a Fermi plateau, in BESIII's normPH (minimum ionisation at
  the ``mip_norm_ph`` of the real DST), 6 % resolution scaled by the number of hits; χ per hypothesis.
* **TOF** (``Tof``): barrel/endcap coverage, path length along the helix, resolution per period; χ per
  hypothesis; NaN without a hit.
* **EMC** (``Emc``): photons and electrons shower with σE/E = a/√E ⊕ b and a low-side leakage tail,
  position σ = c/√E ⊕ d; muons and non-interacting hadrons leave the Landau most probable energy loss of
  their βγ in 28 cm of CsI (:func:`csi_mip_deposit`, Moyal-distributed); interacting hadrons a hadronic
  shower with split-offs; p̄/n̄ annihilate; noise showers per event; shower shapes per kind (crystals,
  E5x5/E, E3x3/E5x5, second and lateral moments, as BOSS stores them); a bremsstrahlung photon within a
  crystal of its electron joins its shower; an energy scale per run period; times in EMC TDC ticks (50 ns)
  as the DST has them; the DST's errors, seed energy, Zernike moments, crystal id and status
  (:mod:`vbes.datasets.emcfields`).
* **MUC** (``Muc``): penetration depth of what reaches the iron (a decay-in-flight muon counts as a muon):
  muons range out and are matched with an efficiency; punch-through hadrons go on until their first nuclear
  interaction in the iron.
* **Material** (``Material``, :mod:`vbes.datasets.material`): before any of this, bremsstrahlung,
  conversions, decays in flight and hadronic interactions in the beam pipe and MDC inner wall change what
  each detector sees and add secondaries to the truth record.

Truth matching: ``tracks.truth_index``/``showers.truth_index`` point at the truth particle (within the event)
of the propagated truth record (``simulate_detector(...)["truth"]``); ``tracks.emc_index`` at the track's own
shower.

Example:
    >>> from vbes.datasets.generator import JpsiGenerator
    >>> from vbes.datasets.detector import default_constants, simulate_detector
    >>> truth = JpsiGenerator("mumu", seed=1).generate(50)
    >>> reco = simulate_detector(truth, default_constants(), np.random.default_rng(1))
    >>> sorted(reco)
    ['n_showers', 'n_tracks', 'showers', 'tracks', 'truth']
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from vbes.datasets.emcfields import shower_dst_fields
from vbes.datasets.material import propagate
from vbes.datasets.mdc import HitPattern, finding_probability, hit_pattern, smear_helix
from vbes.datasets.numeric import CM_PER_GEV_TESLA
from vbes.datasets.numeric import quadrature as _quad
from vbes.datasets.numeric import wrap_angle as _wrap
from vbes.datasets.schema import HYPOTHESIS_MASSES, mdc_layer_span, pack_symmetric, to_field_unit

__all__ = [
    "CM_PER_GEV_TESLA",
    "C_CM_PER_NS",
    "REQUIRED_PAYLOAD_TYPES",
    "SIM_CONSTANTS_FILE",
    "csi_dedx_mean",
    "csi_mip_deposit",
    "dedx_chi",
    "dedx_curve",
    "default_constants",
    "emc_impact",
    "emc_surface_point",
    "helix_momentum",
    "helix_momentum_covariance",
    "simulate_detector",
    "tof_chi",
    "tof_path",
    "true_helix",
]

#: speed of light, cm/ns
C_CM_PER_NS = 29.9792458
_ELECTRON_MEV = 0.51099895
_K_BETHE = 0.307075  # 4π N_A r_e² m_e c², MeV cm²/mol (PDG)
#: payload types the detector model reads
REQUIRED_PAYLOAD_TYPES = ("Beam", "Mdc", "Dedx", "Tof", "Emc", "Muc", "Material")
#: the simulation tag's payload file (package data of vbes.calibration)
SIM_CONSTANTS_FILE = Path(__file__).resolve().parents[1] / "calibration" / "data" / "boss-6.6.4-sim-2.yaml"

Constants = Mapping[str, Mapping[str, Any]]
_MASSES = np.asarray(HYPOTHESIS_MASSES)
# |PDG id| -> (charge of the positive id, hypothesis index) for particles the MDC tracks
_CHARGED = {11: (-1, 0), 13: (-1, 1), 211: (1, 2), 321: (1, 3), 2212: (1, 4)}
_HADRONS = (211, 321, 2212, 2112, 130)
_NEUTRINOS = (12, 14, 16)
_KIND_EM, _KIND_MIP, _KIND_HAD, _KIND_SPLIT, _KIND_NOISE = range(5)


def default_constants(run: int = -9989) -> dict[str, dict[str, Any]]:
    """The detector constants of ``run`` read straight from the simulation tag's YAML file (no store needed).

    The calibration store (``vbes calib init``) holds the same payloads; this reader is for quick in-memory
    work and doctests.
    """
    import yaml

    data = yaml.safe_load(SIM_CONSTANTS_FILE.read_text())
    out: dict[str, dict[str, Any]] = {}
    for payload in data["payloads"]:
        if payload["first"] <= run <= payload["last"] and payload["type"] in REQUIRED_PAYLOAD_TYPES:
            out[payload["type"]] = payload["constants"]
    return out


def true_helix(charge: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, vx: np.ndarray,
               vy: np.ndarray, vz: np.ndarray, bfield: float) -> np.ndarray:
    """Exact helix ``(dr, phi0, kappa, dz, tanl)`` about the origin of particles produced at ``(vx, vy, vz)``.

    BESIII convention (as ``pybes3.helix``): the point of closest approach is ``dr (cos phi0, sin phi0)``,
    the momentum there ``(-sin phi0, cos phi0) / |kappa|``, the centre at ``(dr + rho)(cos phi0, sin phi0)``
    with signed radius ``rho = alpha / kappa``; a positive track turns clockwise in a field along +z.
    """
    pt = np.hypot(px, py)
    radius = CM_PER_GEV_TESLA * pt / bfield
    ux, uy = px / pt, py / pt
    cx, cy = vx + charge * radius * uy, vy - charge * radius * ux
    dist = np.hypot(cx, cy)
    phi0 = np.arctan2(charge * cy, charge * cx)
    dr = charge * (dist - radius)
    poca_x, poca_y = dr * np.cos(phi0), dr * np.sin(phi0)
    turned = _wrap(charge * (np.arctan2(poca_y - cy, poca_x - cx) - np.arctan2(vy - cy, vx - cx)))
    tanl = pz / pt
    dz = vz - radius * turned * tanl
    return np.stack([dr, phi0, charge / pt, dz, tanl], axis=1)


def helix_momentum(helix: np.ndarray) -> np.ndarray:
    """``(px, py, pz)`` at the point of closest approach, shape (n, 3)."""
    inv = 1.0 / np.abs(helix[:, 2])
    return np.stack([-np.sin(helix[:, 1]) * inv, np.cos(helix[:, 1]) * inv, helix[:, 4] * inv], axis=1)


def helix_momentum_covariance(helix: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Variance of the momentum magnitude ``p = sqrt(1 + tanl²)/|kappa|`` from the 5x5 helix covariance."""
    kappa, tanl = helix[:, 2], helix[:, 4]
    p = np.sqrt(1.0 + tanl**2) / np.abs(kappa)
    jac = np.zeros_like(helix)
    jac[:, 2] = -p / kappa
    jac[:, 4] = tanl / (np.abs(kappa) * np.sqrt(1.0 + tanl**2))
    return np.einsum("ni,nij,nj->n", jac, cov, jac)


def dedx_curve(betagamma: np.ndarray, dedx: Mapping[str, Any]) -> np.ndarray:
    """Expected dE/dx in BESIII's normPH at ``betagamma``: Bethe–Bloch with a Fermi plateau, ``mip_norm_ph`` at
    minimum ionisation."""
    return float(dedx["mip_norm_ph"]) * \
        _bethe(np.asarray(betagamma, float), float(dedx["bethe_k"]), float(dedx["plateau_betagamma"])) / \
        _bethe_minimum(float(dedx["bethe_k"]), float(dedx["plateau_betagamma"]))


def _bethe(bg: np.ndarray, k: float, plateau: float) -> np.ndarray:
    bg = np.maximum(bg, 0.05)
    beta2 = bg**2 / (1.0 + bg**2)
    return (np.log(k * np.minimum(bg, plateau) ** 2) - beta2) / beta2


@cache
def _bethe_minimum(k: float, plateau: float) -> float:
    return float(_bethe(np.geomspace(0.5, 50.0, 4000), k, plateau).min())


def _event_positions(event: np.ndarray, n_events: int) -> np.ndarray:
    """Position of each row within its event; ``event`` must be sorted."""
    starts = np.searchsorted(event, np.arange(n_events))
    return np.arange(event.size) - starts[event]


def _moyal(rng: np.random.Generator, n: int) -> np.ndarray:
    # Moyal's approximation of the Landau distribution (mode at 0, unit scale): -ln(Z²) for Z ~ N(0, 1)
    return -np.log(np.maximum(rng.standard_normal(n) ** 2, 1e-300))


def _charge_and_hypothesis(pdg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Charge and hypothesis index (e, μ, π, K, p) of particles the MDC tracks (0 and 0 for others)."""
    apdg = np.abs(pdg)
    charge = np.zeros(pdg.size)
    hypo = np.zeros(pdg.size, np.int64)
    for code, (q, h) in _CHARGED.items():
        charge[apdg == code] = q
        hypo[apdg == code] = h
    return charge * np.sign(pdg), hypo


def dedx_chi(measured: np.ndarray, p: np.ndarray, nhits: np.ndarray, dedx: Mapping[str, Any]) -> np.ndarray:
    """dE/dx χ per hypothesis (e, μ, π, K, p), ``(n, 5)``, as the reconstruction computes it: the measured normPH
    against the expectation at the measured momentum, in units of the resolution for ``nhits`` hits.

    Args:
        measured: measured dE/dx (normPH).
        p: measured momentum (GeV/c).
        nhits: dE/dx hits used.
        dedx: the ``Dedx`` payload's constants.
    """
    sigma = dedx["sigma_rel"] * np.sqrt(dedx["hits_mean"] / np.asarray(nhits))
    expected = dedx_curve(np.asarray(p)[:, None] / _MASSES[None, :], dedx)
    return (np.asarray(measured)[:, None] - expected) / (sigma[:, None] * expected)


def tof_path(helix: np.ndarray, cos_theta: np.ndarray, tof: Mapping[str, Any],
             bfield: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flight path (cm) along the measured helix to the TOF barrel cylinder or endcap plane, whether the track
    points at the barrel, and whether it can reach a counter at all (before the counters' efficiency).

    Args:
        helix: ``(n, 5)`` measured helices.
        cos_theta: measured cos θ.
        tof: the ``Tof`` payload's constants.
        bfield: solenoid field (T).
    """
    pt = 1.0 / np.abs(helix[:, 2])
    radius = CM_PER_GEV_TESLA * pt / bfield
    abs_cos = np.abs(cos_theta)
    barrel = abs_cos < tof["barrel_cos_max"]
    endcap = (abs_cos > tof["endcap_cos"][0]) & (abs_cos < tof["endcap_cos"][1])
    r_tof = float(tof["barrel_radius_cm"])
    reaches = 2 * radius > r_tof
    arc_barrel = 2 * radius * np.arcsin(np.minimum(r_tof / (2 * radius), 1.0))
    tanl = np.abs(helix[:, 4])
    arc_endcap = (tof["endcap_z_cm"] - np.sign(helix[:, 4]) * helix[:, 3]) / np.maximum(tanl, 1e-6)
    arc = np.where(barrel, arc_barrel, arc_endcap)
    reachable = (barrel & reaches) | (endcap & (arc_endcap < np.pi * radius))
    return arc * np.sqrt(1 + helix[:, 4] ** 2), barrel, reachable


def tof_chi(tof: np.ndarray, path: np.ndarray, p: np.ndarray, barrel: np.ndarray,
            constants: Mapping[str, Any]) -> np.ndarray:
    """TOF χ per hypothesis, ``(n, 5)``: measured time against the flight time of each mass at the measured
    momentum over ``path``, in units of the barrel's or endcap's resolution.

    Args:
        tof: measured times (ns).
        path: flight paths (cm), :func:`tof_path`.
        p: measured momenta (GeV/c).
        barrel: whether each track points at the barrel.
        constants: the ``Tof`` payload's constants.
    """
    sigma_t = np.where(barrel, float(constants["sigma_barrel_ns"]), float(constants["sigma_endcap_ns"]))
    p = np.asarray(p)
    t_expected = path[:, None] * np.sqrt(p[:, None] ** 2 + _MASSES[None, :] ** 2) / (p[:, None] * C_CM_PER_NS)
    return (np.asarray(tof)[:, None] - t_expected) / sigma_t[:, None]


def _tracks(truth: Mapping[str, np.ndarray], sel: np.ndarray, hits: HitPattern, c: Constants,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Reconstructed tracks of the final charged particles ``sel`` (truth row indices) with their MDC hits."""
    mdc, dedx_c, tof_c = c["Mdc"], c["Dedx"], c["Tof"]
    charge, hypo = _charge_and_hypothesis(truth["pdg"][sel])
    px, py, pz = truth["px"][sel], truth["py"][sel], truth["pz"][sel]
    p_true = np.sqrt(px**2 + py**2 + pz**2)
    beta_true = p_true / np.sqrt(p_true**2 + _MASSES[hypo] ** 2)
    bfield = float(mdc["bfield_t"])

    helix_true = true_helix(charge, px, py, pz, truth["vx"][sel], truth["vy"][sel], truth["vz"][sel], bfield)
    n = sel.size
    fit = smear_helix(helix_true, p_true, beta_true, hits, mdc, rng)
    helix, cov = fit["helix"], fit["cov"]

    mom = helix_momentum(helix)
    p = np.linalg.norm(mom, axis=1)
    pt = 1.0 / np.abs(helix[:, 2])
    cos_theta = mom[:, 2] / p
    out: dict[str, np.ndarray] = {
        "charge": np.sign(helix[:, 2]).astype(np.int8),
        "helix": helix,
        "helix_cov": pack_symmetric(cov),
        "p": p, "px": mom[:, 0], "py": mom[:, 1], "pz": mom[:, 2],
        "cos_theta": cos_theta,
        "phi": np.arctan2(mom[:, 1], mom[:, 0]),
        "mass_hypothesis": np.full(n, 2, np.int8),
        "fit_chi2": fit["fit_chi2"],
        "fit_ndof": fit["fit_ndof"],
        "mdc_first_layer": hits["first_layer"],
        "mdc_last_layer": hits["last_layer"],
        "mdc_layers": mdc_layer_span(hits["first_layer"], hits["last_layer"]),
    }

    # dE/dx: measured from the true velocity, expectations from the measured momentum (as BOSS does)
    sin_theta = np.sqrt(np.maximum(1 - cos_theta**2, 1e-6))
    nhits = np.clip(rng.poisson(dedx_c["hits_mean"] * np.minimum(1.0, sin_theta / dedx_c["hits_full_sin"])),
                    dedx_c["hits_min"], None).astype(np.int16)
    sigma = dedx_c["sigma_rel"] * np.sqrt(dedx_c["hits_mean"] / nhits)
    measured = dedx_curve(p_true / _MASSES[hypo], dedx_c) * (1.0 + sigma * rng.standard_normal(n))
    out["dedx"] = measured
    out["dedx_ph"] = to_field_unit(measured, "normPH", "tracks", "dedx_ph")
    out["dedx_nhits"] = nhits
    out["chi_dedx"] = dedx_chi(measured, p, nhits, dedx_c)

    # TOF: path along the helix to the barrel cylinder or the endcap plane
    path, barrel, reachable = tof_path(helix, cos_theta, tof_c, bfield)
    hit = reachable & (rng.random(n) < tof_c["efficiency"])
    # true time: the particle's own speed over its true path (from its production point)
    t_true = path / (beta_true * C_CM_PER_NS)
    sigma_t = np.where(barrel, float(tof_c["sigma_barrel_ns"]), float(tof_c["sigma_endcap_ns"]))
    tof = t_true + sigma_t * rng.standard_normal(n)
    out["tof"] = np.where(hit, tof, np.nan)
    out["tof_path"] = np.where(hit, path, np.nan)
    out["chi_tof"] = np.where(hit[:, None], tof_chi(tof, path, p, barrel, tof_c), np.nan)
    out["_hypo"] = hypo
    out["_charge_true"] = charge
    return out


def _muc_depth(pdg: np.ndarray, p: np.ndarray, cos_theta: np.ndarray, c: Mapping[str, Any],
               rng: np.random.Generator) -> np.ndarray:
    """Penetration depth (cm of iron) in the muon counter of what reaches it (a decay muon counts as a muon).

    Muons range out by ionisation and are matched to their hits with ``muon_match_efficiency`` (gaps between
    modules, dead strips); a hadron that reaches the iron without interacting (``punch_prob``) goes on like a
    MIP until its first nuclear interaction, ``Exp(iron_interaction_length_cm)``, or until it ranges out.
    """
    n = pdg.size
    apdg = np.abs(pdg)
    inside = np.abs(cos_theta) < c["cos_max"]
    max_depth = np.where(np.abs(cos_theta) < c["barrel_cos_max"], c["barrel_depth_cm"], c["endcap_depth_cm"])
    muon_range = (p - c["p_threshold_gev"]) / c["iron_loss_gev_per_cm"]
    depth_mu = np.minimum(muon_range, max_depth) + c["depth_sigma_cm"] * rng.standard_normal(n)
    muon = (apdg == 13) & (p > c["p_threshold_gev"]) & (rng.random(n) < c["muon_match_efficiency"])
    punch = np.isin(apdg, (211, 321, 2212)) & (p > c["punch_p_min_gev"]) & (rng.random(n) < c["punch_prob"])
    depth_had = np.minimum(rng.exponential(c["iron_interaction_length_cm"], n), np.maximum(muon_range, 0.0))
    depth = np.where(muon, np.clip(depth_mu, 0.0, max_depth), np.where(punch, np.minimum(depth_had, max_depth), 0.0))
    return np.where(inside, depth, 0.0)


def emc_impact(charge: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, vz: np.ndarray,
               emc: Mapping[str, Any], bfield: float) -> tuple[np.ndarray, ...]:
    """Impact point on the EMC (barrel cylinder or endcap plane) along the helix (straight for neutrals).

    Returns:
        ``(reaches, barrel, r, phi, z)``: whether the particle reaches the EMC, whether at the barrel, and the
        impact point's transverse radius (cm), azimuth and z (cm).
    """
    pt = np.maximum(np.hypot(px, py), 1e-9)
    p = np.sqrt(pt**2 + pz**2)
    cos_theta = pz / p
    abs_cos = np.abs(cos_theta)
    barrel = abs_cos < emc["barrel_cos_max"]
    endcap = (abs_cos > emc["endcap_cos"][0]) & (abs_cos < emc["endcap_cos"][1])
    # neutrals fly straight: a huge radius turns the helix formulas into straight lines without special cases
    radius = np.where(charge != 0, CM_PER_GEV_TESLA * pt / bfield, 1e12)
    r_b = float(emc["barrel_radius_cm"])
    half_turn_b = np.arcsin(np.minimum(r_b / (2 * radius), 1.0))
    reaches = barrel & (2 * radius > r_b) | endcap
    arc_b = 2 * radius * half_turn_b
    tanl = pz / pt
    z_end = float(emc["endcap_z_cm"])
    arc_e = (z_end - np.sign(pz) * vz) / np.maximum(np.abs(tanl), 1e-6)
    half_turn_e = arc_e / (2 * radius)
    reaches &= ~endcap | (half_turn_e < np.pi / 2)
    phi_mom = np.arctan2(py, px)
    phi = np.where(barrel, phi_mom - charge * half_turn_b, phi_mom - charge * half_turn_e)
    r = np.where(barrel, r_b, 2 * radius * np.sin(np.minimum(half_turn_e, np.pi / 2)))
    z = np.where(barrel, vz + arc_b * tanl, np.sign(pz) * z_end)
    return reaches, barrel, r, phi, z


def emc_surface_point(theta: np.ndarray, phi: np.ndarray, emc: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """Where a shower direction ``(θ, φ)`` from the origin meets the EMC's crystal faces, as the DST stores a
    shower position: the barrel cylinder for ``|cos θ|`` below the barrel's edge, else the endcap plane.

    Returns:
        ``(x, y, z, module)`` in cm, module 0 the endcap at z > 0, 1 the barrel, 2 the endcap at z < 0.
    """
    cos_t = np.cos(theta)
    sin_t = np.maximum(np.sin(theta), 1e-9)
    barrel = np.abs(cos_t) < emc["barrel_cos_max"]
    r_b, z_e = float(emc["barrel_radius_cm"]), float(emc["endcap_z_cm"])
    r = np.where(barrel, r_b, z_e * sin_t / np.maximum(np.abs(cos_t), 1e-9))
    z = np.where(barrel, r_b * cos_t / sin_t, np.sign(cos_t) * z_e)
    module = np.where(barrel, 1, np.where(z > 0, 0, 2)).astype(np.int8)
    return r * np.cos(phi), r * np.sin(phi), z, module


def _shower_shapes(kind: np.ndarray, energy: np.ndarray, shapes: Mapping[str, Any],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Cluster shapes per shower kind: crystals, E5x5/E, E3x3/E5x5, second and lateral moments.

    As in BOSS, ``e3x3``/``e5x5`` are raw sums a few per cent below the corrected ``energy``; clusters of at
    most three crystals lie inside their 3x3 (E3x3 = E5x5), and the lateral moment, which skips the two most
    energetic crystals, is zero for clusters of one or two crystals.
    """
    names = ("em", "mip", "hadronic", "splitoff", "noise")
    par = {key: np.asarray([shapes[name][key] for name in names], float)[kind]
           for key in ("crystals_base", "crystals_per_sqrt_gev", "e5x5_over_e_beta", "e3x3_over_e5x5_beta",
                       "second_moment_gamma", "lat_moment_beta")}
    e_pos = np.maximum(energy, 0.0)
    n_crystals = 1 + rng.poisson(par["crystals_base"] + par["crystals_per_sqrt_gev"] * np.sqrt(e_pos))
    e5x5 = energy * rng.beta(par["e5x5_over_e_beta"][:, 0], par["e5x5_over_e_beta"][:, 1])
    inner = rng.beta(par["e3x3_over_e5x5_beta"][:, 0], par["e3x3_over_e5x5_beta"][:, 1])
    e3x3 = e5x5 * np.where(n_crystals <= 3, 1.0, inner)
    second = np.where(n_crystals == 1, 0.0,
                      rng.gamma(par["second_moment_gamma"][:, 0], par["second_moment_gamma"][:, 1]))
    lat = np.where(n_crystals <= 2, 0.0, rng.beta(par["lat_moment_beta"][:, 0], par["lat_moment_beta"][:, 1]))
    return {"n_crystals": np.minimum(n_crystals, 32000).astype(np.int16), "e3x3": e3x3, "e5x5": e5x5,
            "second_moment": second, "lat_moment": lat}


def _tdc_time(t_ns: np.ndarray) -> np.ndarray:
    """Shower times as the EMC TDC records them (whole ticks, not before the event start), in the schema's unit."""
    tick_ns = float(to_field_unit(1.0, "EMC TDC tick", "showers", "time")) / \
        float(to_field_unit(1.0, "ns", "showers", "time"))
    return to_field_unit(np.maximum(np.round(t_ns / tick_ns), 0.0), "EMC TDC tick", "showers", "time")


def _density_effect(betagamma: np.ndarray, d: Mapping[str, float]) -> np.ndarray:
    """Sternheimer's density-effect correction δ(βγ) (PDG Review, Passage of particles through matter)."""
    x = np.log10(np.maximum(betagamma, 1e-6))
    mid = 2 * np.log(10.0) * x - d["c_bar"] + d["a"] * np.maximum(d["x1"] - x, 0.0) ** d["k"]
    return np.where(x < d["x0"], 0.0, np.where(x < d["x1"], mid, 2 * np.log(10.0) * x - d["c_bar"]))


def csi_dedx_mean(betagamma: np.ndarray, mass: float, csi: Mapping[str, Any]) -> np.ndarray:
    """Mean energy loss of a singly charged particle in CsI, MeV cm²/g (Bethe with the density effect).

    Args:
        betagamma: βγ of the particle.
        mass: its mass in GeV/c² (for the largest energy transfer to an electron).
        csi: the ``Emc`` payload's ``csi`` constants (Z/A, mean excitation energy, density-effect parameters).
    """
    bg = np.asarray(betagamma, float)
    beta2 = bg**2 / (1 + bg**2)
    gamma = np.sqrt(1 + bg**2)
    me = _ELECTRON_MEV
    ratio = me / (mass * 1e3)
    t_max = 2 * me * bg**2 / (1 + 2 * gamma * ratio + ratio**2)
    i_mev = float(csi["mean_excitation_ev"]) * 1e-6
    log_term = 0.5 * np.log(2 * me * bg**2 * t_max / i_mev**2)
    return _K_BETHE * float(csi["z_over_a"]) / beta2 * (log_term - beta2 - _density_effect(bg, csi["density_effect"]) / 2)


def csi_mip_deposit(betagamma: np.ndarray, path_cm: np.ndarray, csi: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """Landau most probable energy loss and its width ξ (GeV) over ``path_cm`` of CsI (PDG eq. 34.12)."""
    bg = np.asarray(betagamma, float)
    beta2 = bg**2 / (1 + bg**2)
    x = np.asarray(path_cm, float) * float(csi["density_g_cm3"])
    xi = _K_BETHE / 2 * float(csi["z_over_a"]) * x / beta2
    i_mev = float(csi["mean_excitation_ev"]) * 1e-6
    mpv = xi * (np.log(2 * _ELECTRON_MEV * bg**2 / i_mev) + np.log(xi / i_mev) + 0.200 - beta2
                - _density_effect(bg, csi["density_effect"]))
    return mpv * 1e-3, xi * 1e-3


def _showers(truth: Mapping[str, np.ndarray], brem_parent: np.ndarray, n_events: int, c: Constants,
             rng: np.random.Generator) -> dict[str, np.ndarray]:
    """EMC showers of all particles that reach the EMC, their split-offs and noise; unsorted, with ``event`` and
    ``_src``. A bremsstrahlung photon (``brem_parent`` >= 0) within ``brem_merge_cm`` of its electron joins the
    electron's shower."""
    emc = c["Emc"]
    bfield = float(c["Mdc"]["bfield_t"])
    final = np.flatnonzero(truth["final"].astype(bool) & ~np.isin(np.abs(truth["pdg"]), _NEUTRINOS))
    pdg = truth["pdg"][final]
    apdg = np.abs(pdg)
    charge = np.zeros(final.size)
    for code, (q, _) in _CHARGED.items():
        charge[apdg == code] = q
    charge *= np.sign(pdg)
    px, py, pz, e = (truth[k][final] for k in ("px", "py", "pz", "e"))
    reaches, barrel, r, phi, z = emc_impact(charge, px, py, pz, truth["vz"][final], emc, bfield)
    mass = np.sqrt(np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0))
    kinetic = e - mass
    n = final.size
    # a bremsstrahlung photon close to its electron on the EMC face is one cluster with it
    slot = np.full(truth["pdg"].size, -1, np.int64)
    slot[final] = np.arange(n)
    photon = np.flatnonzero(brem_parent[final] >= 0)
    parent = slot[brem_parent[final[photon]]]
    ok = parent >= 0
    photon, parent = photon[ok], parent[ok]
    gap = np.hypot(r[photon] * _wrap(phi[photon] - phi[parent]), np.hypot(r[photon] - r[parent], z[photon] - z[parent]))
    merged = reaches[photon] & reaches[parent] & (gap < emc["brem_merge_cm"])
    e = e.copy()
    np.add.at(e, parent[merged], e[photon[merged]])
    joined = np.zeros(n, bool)
    joined[photon[merged]] = True

    em = (apdg == 22) | (apdg == 11)
    hadron = np.isin(apdg, _HADRONS)
    interacts = hadron & (rng.random(n) < emc["hadron_interaction_prob"])
    antibaryon = (pdg == -2212) | (pdg == -2112)
    # electromagnetic: resolution a/sqrt(E) ⊕ b, low-side leakage tail
    stochastic = np.where(barrel, float(emc["sigma_e_stochastic_barrel"]), float(emc["sigma_e_stochastic_endcap"]))
    constant = np.where(barrel, float(emc["sigma_e_constant_barrel"]), float(emc["sigma_e_constant_endcap"]))
    rel = _quad(stochastic / np.sqrt(np.maximum(e, 1e-3)), constant)
    leak = np.where(rng.random(n) < emc["leakage_tail_prob"], rng.exponential(emc["leakage_tail_mean"], n), 0.0)
    e_em = e * (1.0 + rel * rng.standard_normal(n) - leak)
    # minimum ionising: Landau (Moyal) energy loss at the particle's βγ over its path through one crystal
    # (longer when a curling track enters at an angle), smeared by the electronics; at most the kinetic energy
    radius_curv = np.where(charge != 0, CM_PER_GEV_TESLA * np.hypot(px, py) / bfield, 1e12)
    cos_entry = np.sqrt(np.maximum(1 - (emc["barrel_radius_cm"] / (2 * radius_curv)) ** 2, 0.25))
    path = float(emc["crystal_length_cm"]) / np.where(barrel, cos_entry, 1.0)
    mpv, xi = csi_mip_deposit(np.sqrt(px**2 + py**2 + pz**2) / np.maximum(mass, 1e-6), path, emc["csi"])
    e_mip = np.minimum(mpv + xi * _moyal(rng, n) + emc["mip_width_gev"] * rng.standard_normal(n), kinetic)
    # hadronic: a visible fraction of the kinetic energy (plus annihilation energy for antibaryons)
    available = kinetic + np.where(antibaryon, 2 * mass, 0.0)
    e_had = available * rng.beta(emc["hadronic_visible_beta"][0], emc["hadronic_visible_beta"][1], n)
    neutral_hadron = hadron & (charge == 0)
    deposit = np.where(em, e_em, np.where(interacts | antibaryon, e_had, e_mip))
    kind = np.where(em, _KIND_EM, np.where(interacts | antibaryon, _KIND_HAD, _KIND_MIP))
    has_shower = reaches & (em | (apdg == 13) | hadron) & ~(neutral_hadron & ~interacts & ~antibaryon) & ~joined
    deposit = deposit * emc["energy_scale"]
    has_shower &= deposit > emc["threshold_gev"]

    idx = np.flatnonzero(has_shower)
    event = truth["event"][final[idx]]
    src = final[idx]
    sigma_pos = _quad(emc["sigma_pos_stochastic_cm"] / np.sqrt(np.maximum(deposit[idx], 1e-3)),
                      emc["sigma_pos_constant_cm"])
    energy = deposit[idx]
    kinds = kind[idx]
    # split-offs around their parent
    split_mean = np.asarray([emc["splitoff_mean_em"], emc["splitoff_mean_mip"], emc["splitoff_mean_hadronic"]])
    n_split = rng.poisson(split_mean[kinds])
    parent = np.repeat(np.arange(idx.size), n_split)
    n_sp = parent.size
    sp_energy = emc["threshold_gev"] + rng.exponential(emc["splitoff_energy_mean_gev"], n_sp)
    spread = emc["splitoff_spread_cm"]
    # noise showers, uniform over the EMC
    n_noise = rng.poisson(emc["noise_mean"], n_events)
    noise_event = np.repeat(np.arange(n_events), n_noise)
    n_no = noise_event.size
    noise_energy = emc["threshold_gev"] + rng.exponential(emc["noise_energy_mean_gev"], n_no)
    noise_cos = rng.uniform(-emc["endcap_cos"][1], emc["endcap_cos"][1], n_no)
    # the barrel-endcap gap has no crystals: its share goes to the barrel edge
    in_gap = (np.abs(noise_cos) >= emc["barrel_cos_max"]) & (np.abs(noise_cos) <= emc["endcap_cos"][0])
    noise_cos = np.where(in_gap, np.sign(noise_cos) * emc["barrel_cos_max"] * 0.999, noise_cos)
    noise_barrel = np.abs(noise_cos) < emc["barrel_cos_max"]
    noise_phi = rng.uniform(-np.pi, np.pi, n_no)
    r_b, z_e = float(emc["barrel_radius_cm"]), float(emc["endcap_z_cm"])
    noise_z = np.where(noise_barrel, r_b * noise_cos / np.sqrt(1 - noise_cos**2), np.sign(noise_cos) * z_e)
    noise_r = np.where(noise_barrel, r_b, z_e * np.sqrt(1 - noise_cos**2) / np.maximum(np.abs(noise_cos), 1e-6))

    # positions of primaries, smeared on the shower face (z-extent stretched by 1/sinθ in the barrel)
    r_p, phi_p, z_p, barrel_p = r[idx], phi[idx], z[idx], barrel[idx]
    sin_p = r_p / np.hypot(r_p, z_p)
    g = rng.standard_normal((idx.size, 2))
    phi_p = phi_p + sigma_pos * g[:, 0] / r_p
    z_p = np.where(barrel_p, z_p + sigma_pos * g[:, 1] / sin_p, z_p)
    r_p = np.where(barrel_p, r_p, np.abs(r_p + sigma_pos * g[:, 1]))
    g2 = rng.standard_normal((n_sp, 2)) * spread
    phi_s = phi_p[parent] + g2[:, 0] / r_p[parent]
    z_s = np.where(barrel_p[parent], z_p[parent] + g2[:, 1], z_p[parent])
    r_s = np.where(barrel_p[parent], r_p[parent], np.abs(r_p[parent] + g2[:, 1]))

    all_r = np.concatenate([r_p, r_s, noise_r])
    all_phi = _wrap(np.concatenate([phi_p, phi_s, noise_phi]))
    all_z = np.concatenate([z_p, z_s, noise_z])
    # a shower centroid lies on crystals: inside the barrel's length or the endcap's ring
    is_barrel = np.concatenate([barrel_p, barrel_p[parent], noise_barrel])
    tan_b = emc["barrel_cos_max"] / np.sqrt(1 - emc["barrel_cos_max"] ** 2)
    z_max = r_b * tan_b
    ring = [z_e * np.sqrt(1 - c**2) / c for c in (emc["endcap_cos"][1], emc["endcap_cos"][0])]
    all_z = np.where(is_barrel, np.clip(all_z, -z_max, z_max), all_z)
    all_r = np.where(is_barrel, all_r, np.clip(all_r, ring[0], ring[1]))
    all_energy = np.concatenate([energy, sp_energy * emc["energy_scale"], noise_energy])
    all_kind = np.concatenate([kinds, np.full(n_sp, _KIND_SPLIT), np.full(n_no, _KIND_NOISE)])
    all_event = np.concatenate([event, event[parent], noise_event])
    all_src = np.concatenate([src, src[parent], np.full(n_no, -1)])
    primary = np.concatenate([np.ones(idx.size, bool), np.zeros(n_sp + n_no, bool)])
    t_phys = emc["time_peak_ns"] + emc["time_sigma_ns"] * rng.standard_normal(all_energy.size)
    t_noise = rng.uniform(emc["noise_time_range_ns"][0], emc["noise_time_range_ns"][1], all_energy.size)
    # module numbering as in the real BOSS file: 0 the endcap at z > 0, 1 the barrel, 2 the endcap at z < 0
    module = np.where(is_barrel, 1, np.where(all_z > 0, 0, 2)).astype(np.int8)
    out = {
        "energy": all_energy,
        "x": all_r * np.cos(all_phi),
        "y": all_r * np.sin(all_phi),
        "z": all_z,
        "theta": np.arctan2(all_r, all_z),
        "phi": all_phi,
        "time": _tdc_time(np.where(all_kind == _KIND_NOISE, t_noise, t_phys)),
        "module": module,
        **_shower_shapes(all_kind, all_energy, emc["shapes"], rng),
        "event": all_event,
        "_src": all_src,
        "_primary": primary,
    }
    return out


def simulate_detector(truth: Mapping[str, np.ndarray], constants: Constants,
                      rng: np.random.Generator) -> dict[str, Any]:
    """Reconstructed tracks and showers of a batch of truth events.

    Args:
        truth: flat truth arrays as :meth:`vbes.datasets.generator.JpsiGenerator.generate` returns them
            (``n_truth`` per event; ``event``, ``pdg``, ``mother``, four-momenta, vertices, ``final``).
        constants: ``{payload type: constants}`` for every type of :data:`REQUIRED_PAYLOAD_TYPES`.
        rng: the random stream of this batch.

    Returns:
        ``{"tracks": {field: array}, "showers": {field: array}, "n_tracks", "n_showers", "truth"}`` with the
        schema's columns, objects in event order; ``truth`` is the truth record after the material
        (:func:`vbes.datasets.material.propagate`: secondaries added), the rows ``truth_index`` points at.
    """
    n_events = int(truth["n_truth"].size)
    # the material between the beam and the detectors: from here on `truth` is what the MDC sees
    seen = propagate(truth, constants, rng)
    truth = seen.mdc
    event_all = truth["event"]
    truth_pos = _event_positions(event_all, n_events)
    mdc = constants["Mdc"]

    # tracks: final charged particles inside the MDC acceptance that the pattern recognition finds
    apdg = np.abs(truth["pdg"])
    pt = np.hypot(truth["px"], truth["py"])
    p = np.sqrt(pt**2 + truth["pz"] ** 2)
    cos_theta = truth["pz"] / np.maximum(p, 1e-12)
    efficiency = mdc["efficiency_plateau"] * (1.0 - np.exp(-np.maximum(pt - mdc["pt_min_gev"], 0.0)
                                                           / mdc["efficiency_pt_scale_gev"]))
    candidate = truth["final"].astype(bool) & np.isin(apdg, tuple(_CHARGED)) & \
        (np.abs(cos_theta) < mdc["cos_theta_max"]) & (rng.random(p.size) < efficiency)
    cand = np.flatnonzero(candidate)
    hits = hit_pattern(_charge_and_hypothesis(truth["pdg"][cand])[0], truth["px"][cand], truth["py"][cand],
                       truth["pz"][cand], truth["vx"][cand], truth["vy"][cand], truth["vz"][cand], mdc, rng)
    # pattern recognition needs enough hits: displaced, steep and curling tracks run out of layers
    found = rng.random(cand.size) < finding_probability(hits, mdc)
    sel = cand[found]
    tracks = _tracks(truth, sel, HitPattern({k: v[found] for k, v in hits.items()}), constants, rng)
    # the muon counter sees what is left of the track there: a decay-in-flight muon, or the particle itself
    at_muc = seen.muc_row[sel]
    p_muc = np.sqrt(seen.truth["px"][at_muc] ** 2 + seen.truth["py"][at_muc] ** 2 + seen.truth["pz"][at_muc] ** 2)
    tracks["muc_depth"] = _muc_depth(seen.truth["pdg"][at_muc], p_muc, cos_theta[sel], constants["Muc"], rng)
    tracks["truth_index"] = truth_pos[sel].astype(np.int32)

    showers = _showers(seen.emc, seen.brem_parent, n_events, constants, rng)
    # showers in event order, most energetic first (as BOSS writes them)
    order = np.lexsort((-showers["energy"], showers["event"]))
    showers = {k: v[order] for k, v in showers.items()}
    shower_pos = _event_positions(showers["event"], n_events)
    src = showers.pop("_src")
    primary = showers.pop("_primary")
    # each track's own shower: the primary shower of its truth particle
    own = np.full(event_all.size, -1, np.int64)
    own[src[primary]] = np.flatnonzero(primary)
    match = own[sel]
    tracks["emc_index"] = np.where(match >= 0, shower_pos[np.maximum(match, 0)], -1).astype(np.int32)
    tracks["emc_energy"] = np.where(match >= 0, showers["energy"][np.maximum(match, 0)], 0.0)
    showers["truth_index"] = np.where(src >= 0, truth_pos[np.maximum(src, 0)], -1).astype(np.int32)
    showers.update(shower_dst_fields(showers, showers["event"], constants["Emc"], rng))
    for private in ("_hypo", "_charge_true"):
        tracks.pop(private)
    shower_event = showers.pop("event")
    return {
        "tracks": tracks,
        "showers": showers,
        "n_tracks": np.bincount(event_all[sel], minlength=n_events).astype(np.int32),
        "n_showers": np.bincount(shower_event, minlength=n_events).astype(np.int32),
        "truth": seen.truth,
    }
