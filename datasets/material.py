"""What happens to truth particles between the interaction point and the detectors that measure them.

Applied to the generator's final particles before the detector response (vectorised NumPy, one pass per
effect, no loop over particles), with the constants of the ``Material`` payload and the radii of the
``Mdc``/``Emc``/``Muc`` payloads:

* **bremsstrahlung** of e± in the material before the first MDC layer (gold coating, the two beryllium walls
  of the beam pipe and the oil between them, the MDC inner wall): the energy kept after ``t`` radiation
  lengths follows Bethe–Heitler, ``-ln(E'/E) ~ Gamma(t / ln 2)``; the photon goes on along the electron and
  merges with the electron's shower when both hit the EMC within one crystal;
* **photon conversions** in the same layers and the MDC gas, probability ``1 - exp(-7/9 · t)`` (PDG, pair
  production at high energy), the e+ e− sharing from the complete-screening Bethe–Heitler spectrum
  ``1 - 4/3 x(1 - x)``;
* **decays in flight** of π± (→ μν) and K± (→ μν, → π π0, the rarer channels folded in proportionally) with
  the PDG cτ, at the point of the helix where they happen: before the first MDC layer the daughter is the
  track; inside the MDC the parent is found when it left ``min_layers`` hits (its momentum then a hit-weighted
  mean of parent and daughter — a kinked track) and a daughter that turns by more than ``kink_merge_rad``
  makes its own track when it leaves enough hits; beyond the MDC the EMC, and beyond the EMC the muon
  counter, see the daughter;
* **hadronic interactions** of π, K, p in the same material (nuclear interaction lengths): the track is lost
  when the interaction leaves fewer than ``min_layers`` hits (no secondaries are made).

The truth record gets the secondaries (photons, e+e− pairs, decay products) as new rows after each event's
own particles, with ``mother`` pointing at their parent; a parent that decayed or converted is no longer
``final``. Each effect has a switch in the payload, so a tag can turn any of them off without code changes.

Example:
    >>> from vbes.datasets.detector import default_constants
    >>> from vbes.datasets.generator import JpsiGenerator
    >>> truth = JpsiGenerator("ee", seed=1).generate(200)
    >>> seen = propagate(truth, default_constants(), np.random.default_rng(1))
    >>> bool(seen.truth["n_truth"].sum() >= truth["n_truth"].sum())
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ELECTRON_MASS",
    "KAON_MASS",
    "MUON_MASS",
    "PI0_MASS",
    "PION_MASS",
    "Propagated",
    "bethe_heitler_keep",
    "helix_point",
    "material_thickness",
    "propagate",
]

# masses in GeV/c² (PDG 2024)
ELECTRON_MASS = 0.51099895e-3
MUON_MASS = 0.1056583755
PION_MASS = 0.13957039
PI0_MASS = 0.1349768
KAON_MASS = 0.493677
_CM_PER_GEV_TESLA = 100.0 / 0.299792458
_NEUTRINOS = (12, 14, 16)
_HADRONS = (211, 321, 2212)
# decay modes: parent |pdg| -> [(charged daughter |pdg|, neutral daughter pdg, neutral mass)]
_MODES = {211: [(13, 14, 0.0)], 321: [(13, 14, 0.0), (211, 111, PI0_MASS)]}
_MASS = {11: ELECTRON_MASS, 13: MUON_MASS, 211: PION_MASS, 321: KAON_MASS, 2212: 0.93827208816}


@dataclass(frozen=True)
class Propagated:
    """Truth after the material, and what each detector sees of every row.

    Attributes:
        truth: the truth record with the secondaries (rows of one event contiguous, in event order).
        mdc: ``truth`` as the drift chamber sees it: ``final`` says which rows can make a track, ``px, py, pz``
            the momentum the track fit measures.
        emc: ``truth`` as the calorimeter sees it: ``final`` says which rows reach it, momenta at its face.
        muc_row: per row, the row whose particle reaches the muon counter (a decay's muon, or itself).
        brem_parent: per row, the electron a bremsstrahlung photon came from, else -1 (the EMC merges the two
            showers when they hit within one crystal).
    """

    truth: dict[str, np.ndarray]
    mdc: dict[str, np.ndarray]
    emc: dict[str, np.ndarray]
    muc_row: np.ndarray
    brem_parent: np.ndarray


def material_thickness(material: Mapping[str, Any], kind: str, before_tracking: bool) -> np.ndarray:
    """Thickness of each layer at normal incidence, in radiation (``kind="x0"``) or interaction lengths.

    Args:
        material: the ``Material`` payload.
        kind: ``"x0"`` or ``"lambda"``.
        before_tracking: only layers inside the first MDC sense layer (what a track crosses before it is
            measured); otherwise all layers, the MDC gas included.
    """
    layers = material["layers"]
    length = np.asarray(layers["x0_cm" if kind == "x0" else "lambda_cm"], float)
    thickness = np.asarray(layers["thickness_cm"], float)
    if before_tracking:  # the part of each layer inside the first sense layer
        inside = float(material["mdc_first_layer_cm"]) - np.asarray(layers["radius_cm"], float)
        thickness = np.clip(inside, 0.0, thickness)
    return thickness / length


def bethe_heitler_keep(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fraction of its energy an electron keeps after ``t`` radiation lengths (Bethe–Heitler).

    ``-ln(E'/E)`` follows a Gamma distribution of shape ``t / ln 2``; the mean kept fraction is
    ``exp(-t)`` to first order, the PDG's ``dE/dx = -E/X0``.
    """
    shape = np.maximum(np.asarray(t, float) / np.log(2.0), 1e-12)
    return np.exp(-rng.gamma(shape))


def helix_point(charge: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, vx: np.ndarray,
                vy: np.ndarray, vz: np.ndarray, s_t: np.ndarray, bfield: float) -> tuple[np.ndarray, ...]:
    """Position and momentum after a transverse arc ``s_t`` (cm) along the helix (straight for neutrals).

    Same convention as :func:`vbes.datasets.detector.true_helix`: a positive track turns clockwise in a field
    along +z, so its azimuth decreases as ``phi(s) = phi0 - q s / R``.

    Returns:
        ``(x, y, z, px, py)`` at that point (pz does not change).
    """
    pt = np.maximum(np.hypot(px, py), 1e-12)
    radius = _CM_PER_GEV_TESLA * pt / bfield
    phi0 = np.arctan2(py, px)
    curved = charge != 0
    turn = np.where(curved, charge * s_t / radius, 0.0)
    phi = phi0 - turn
    safe_q = np.where(curved, charge, 1.0)
    x_c = vx + safe_q * radius * (np.sin(phi0) - np.sin(phi))
    y_c = vy + safe_q * radius * (np.cos(phi) - np.cos(phi0))
    x = np.where(curved, x_c, vx + s_t * np.cos(phi0))
    y = np.where(curved, y_c, vy + s_t * np.sin(phi0))
    z = vz + s_t * pz / pt
    return x, y, z, pt * np.cos(phi), pt * np.sin(phi)


def _exit_arc(charge: np.ndarray, pt: np.ndarray, pz: np.ndarray, vz: np.ndarray, radius_cm: float,
              half_length_cm: float, bfield: float) -> np.ndarray:
    """Transverse arc length at which a track from the beam line leaves a cylinder (a looper: half a turn)."""
    r_curv = np.where(charge != 0, _CM_PER_GEV_TESLA * np.maximum(pt, 1e-12) / bfield, 1e12)
    reaches = 2 * r_curv > radius_cm
    s_r = np.where(reaches, 2 * r_curv * np.arcsin(np.minimum(radius_cm / (2 * r_curv), 1.0)), np.pi * r_curv)
    tanl = np.abs(pz) / np.maximum(pt, 1e-12)
    s_z = (half_length_cm - np.sign(pz) * vz) / np.maximum(tanl, 1e-9)
    return np.minimum(s_r, np.maximum(s_z, 0.0))


def _two_body(parent_p: np.ndarray, parent_m: np.ndarray, m1: np.ndarray, m2: np.ndarray,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Momenta (n, 3) of both daughters of isotropic two-body decays of parents with momenta ``parent_p``."""
    n = parent_m.size
    m_p2 = parent_m**2
    q = np.sqrt(np.maximum((m_p2 - (m1 + m2) ** 2) * (m_p2 - (m1 - m2) ** 2), 0.0)) / (2 * parent_m)
    cos = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    sin = np.sqrt(1 - cos**2)
    k1 = q[:, None] * np.stack([sin * np.cos(phi), sin * np.sin(phi), cos], 1)
    e1 = np.sqrt(q**2 + m1**2)
    e_parent = np.sqrt(np.einsum("ij,ij->i", parent_p, parent_p) + m_p2)
    beta = parent_p / e_parent[:, None]
    gamma = e_parent / parent_m
    bk = np.einsum("ij,ij->i", beta, k1)
    b2 = np.einsum("ij,ij->i", beta, beta)
    coef = np.where(b2 > 0, (gamma - 1.0) * bk / np.where(b2 > 0, b2, 1.0), 0.0) + gamma * e1
    p1 = k1 + coef[:, None] * beta
    return p1, parent_p - p1


class _Rows:
    """New truth rows collected per effect, appended after each event's own particles at the end."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, parent: np.ndarray, pdg: np.ndarray, p: np.ndarray, mass: np.ndarray, vertex: np.ndarray,
            **flags: np.ndarray | float) -> None:
        n = parent.size
        self.parts.append({"parent": parent, "pdg": pdg.astype(np.int32), "px": p[:, 0], "py": p[:, 1],
                           "pz": p[:, 2], "e": np.sqrt(np.einsum("ij,ij->i", p, p) + mass**2),
                           "vx": vertex[:, 0], "vy": vertex[:, 1], "vz": vertex[:, 2],
                           **{k: np.broadcast_to(v, (n,)) for k, v in flags.items()}})

    def table(self, flags: tuple[str, ...]) -> dict[str, np.ndarray]:
        keys = ("parent", "pdg", "px", "py", "pz", "e", "vx", "vy", "vz", *flags)
        if not self.parts:
            return {k: np.zeros(0, np.int64 if k == "parent" else float) for k in keys}
        return {k: np.concatenate([np.asarray(part.get(k, np.zeros(part["parent"].size)), float)
                                   if k not in ("parent", "pdg") else part[k] for part in self.parts])
                for k in keys}


def _charge(pdg: np.ndarray) -> np.ndarray:
    apdg = np.abs(pdg)
    q = np.zeros(pdg.size)
    q[np.isin(apdg, (11, 13))] = -1.0
    q[np.isin(apdg, (211, 321, 2212))] = 1.0
    return q * np.sign(pdg)


def propagate(truth: Mapping[str, np.ndarray], constants: Mapping[str, Mapping[str, Any]],
              rng: np.random.Generator) -> Propagated:
    """Apply the material effects of ``constants["Material"]`` to a batch of truth events.

    Args:
        truth: flat truth arrays as :meth:`vbes.datasets.generator.JpsiGenerator.generate` returns them.
        constants: the detector payloads (``Material``, ``Mdc``, ``Emc``, ``Muc``); without a ``Material``
            payload nothing changes.
        rng: the batch's random stream.

    Returns:
        the :class:`Propagated` truth and the detectors' views of it.
    """
    mat = constants.get("Material")
    n_rows = truth["pdg"].size
    base = {k: np.asarray(v) for k, v in truth.items()}
    if mat is None or not mat.get("enabled", True):
        return Propagated(base, base, base, np.arange(n_rows), np.full(n_rows, -1))
    bfield = float(constants["Mdc"]["bfield_t"])
    emc_c, muc_c = constants["Emc"], constants["Muc"]
    pdg, apdg = base["pdg"], np.abs(base["pdg"])
    final = base["final"].astype(bool)
    p3 = np.stack([base["px"], base["py"], base["pz"]], 1).astype(float)
    vtx = np.stack([base["vx"], base["vy"], base["vz"]], 1).astype(float)
    p = np.linalg.norm(p3, axis=1)
    pt = np.hypot(p3[:, 0], p3[:, 1])
    inv_sin = p / np.maximum(pt, 1e-9)
    charge = _charge(pdg)

    layers = mat["layers"]
    radius = np.asarray(layers["radius_cm"], float)
    thick = np.asarray(layers["thickness_cm"], float)
    r_first, r_out = float(mat["mdc_first_layer_cm"]), float(mat["mdc_outer_radius_cm"])
    z_mdc = float(mat["mdc_half_length_cm"])
    n_layers, min_layers = float(mat["mdc_layers"]), float(mat["min_layers_found"])

    # per-row outcome; secondaries are collected and appended at the end
    mdc_ok = final & (charge != 0)
    emc_ok = final & ~np.isin(apdg, _NEUTRINOS)
    final_out = final.copy()
    mdc_p = p3.copy()
    emc_p = p3.copy()
    rows = _Rows()
    flags = ("mdc", "emc", "brem")

    # bremsstrahlung of the generator's electrons before the first sense layer
    if mat.get("bremsstrahlung", True):
        ele = np.flatnonzero(final & (apdg == 11))
        t_layers = material_thickness(mat, "x0", before_tracking=True)
        t_pre = float(t_layers.sum())
        keep = bethe_heitler_keep(t_pre * inv_sin[ele], rng)
        k = p[ele] * (1.0 - keep)
        mdc_p[ele] *= keep[:, None]
        emc_p[ele] *= keep[:, None]
        emitted = k > float(mat["brem_photon_min_gev"])
        src = ele[emitted]
        r_emit = float(np.sum(radius * t_layers) / max(t_pre, 1e-12))  # where the radiation lengths are
        direction = p3[src] / p[src, None]
        where = vtx[src] + direction * (r_emit * inv_sin[src])[:, None]
        rows.add(src, np.full(src.size, 22), direction * k[emitted, None], np.zeros(src.size), where,
                 mdc=0.0, emc=1.0, brem=1.0)

    # conversions of the generator's photons anywhere in the listed layers (the MDC gas included)
    if mat.get("conversions", True):
        gam = np.flatnonzero(final & (apdg == 22) & (p > 2 * ELECTRON_MASS))
        t_layers = material_thickness(mat, "x0", before_tracking=False)
        t_path = t_layers[None, :] * inv_sin[gam, None]
        converts = rng.random(gam.size) < 1.0 - np.exp(-7.0 / 9.0 * t_path.sum(axis=1))
        g = gam[converts]
        cum = np.cumsum(t_path[converts], axis=1)
        layer = np.minimum((rng.random(g.size)[:, None] * cum[:, -1:] > cum).sum(axis=1), radius.size - 1)
        r_conv = radius[layer] + rng.random(g.size) * thick[layer]
        direction = p3[g] / p[g, None]
        where = vtx[g] + direction * (r_conv * inv_sin[g])[:, None]
        x = _pair_fraction(g.size, rng)
        e_pos = np.maximum(x * p[g], ELECTRON_MASS * 1.0001)
        e_neg = np.maximum((1 - x) * p[g], ELECTRON_MASS * 1.0001)
        for code, energy in ((-11, e_pos), (11, e_neg)):
            mom = direction * np.sqrt(energy**2 - ELECTRON_MASS**2)[:, None]
            rows.add(g, np.full(g.size, code), mom, np.full(g.size, ELECTRON_MASS), where,
                     mdc=1.0, emc=1.0, brem=0.0)
        final_out[g] = False
        emc_ok[g] = False

    muc_from = np.zeros(0, np.int64)
    muc_child_slot = np.zeros(0, np.int64)
    if mat.get("decays_in_flight", True):
        muc_from, muc_child_slot = _decays(mat, emc_c, muc_c, base, final, apdg, charge, p3, vtx, p, pt,
                                           bfield, (r_first, r_out, z_mdc, n_layers, min_layers),
                                           rows, final_out, mdc_ok, emc_ok, mdc_p, rng)

    if mat.get("hadronic_interactions", True):
        had = np.flatnonzero(final_out & mdc_ok & np.isin(apdg, _HADRONS))
        lam = material_thickness(mat, "lambda", before_tracking=False)
        t_path = lam[None, :] * inv_sin[had, None]
        hits = rng.random(had.size) < 1.0 - np.exp(-t_path.sum(axis=1))
        h = had[hits]
        cum = np.cumsum(t_path[hits], axis=1)
        layer = np.minimum((rng.random(h.size)[:, None] * cum[:, -1:] > cum).sum(axis=1), radius.size - 1)
        r_int = radius[layer] + rng.random(h.size) * thick[layer]
        layers_before = n_layers * np.clip((r_int - r_first) / (r_out - r_first), 0.0, 1.0)
        mdc_ok[h[layers_before < min_layers]] = False

    return _assemble(base, rows.table(flags), final_out, mdc_ok, emc_ok, mdc_p, emc_p, muc_from,
                     muc_child_slot)


def _pair_fraction(n: int, rng: np.random.Generator) -> np.ndarray:
    """Energy fraction of the positron: complete-screening Bethe–Heitler ``1 - 4/3 x(1-x)`` by rejection."""
    x = rng.random(n)
    todo = rng.random(n) > 1.0 - 4.0 / 3.0 * x * (1 - x)
    while todo.any():
        fresh = rng.random(int(todo.sum()))
        ok = rng.random(fresh.size) <= 1.0 - 4.0 / 3.0 * fresh * (1 - fresh)
        idx = np.flatnonzero(todo)
        x[idx[ok]] = fresh[ok]
        todo[idx[ok]] = False
    return x


def _decays(mat: Mapping[str, Any], emc_c: Mapping[str, Any], muc_c: Mapping[str, Any],
            base: Mapping[str, np.ndarray], final: np.ndarray, apdg: np.ndarray, charge: np.ndarray,
            p3: np.ndarray, vtx: np.ndarray, p: np.ndarray, pt: np.ndarray, bfield: float,
            mdc_geom: tuple[float, float, float, float, float], rows: _Rows, final_out: np.ndarray,
            mdc_ok: np.ndarray, emc_ok: np.ndarray, mdc_p: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """π± and K± decays in flight; returns (parents whose daughter reaches the MUC, index of that daughter
    among the new rows)."""
    r_first, r_out, z_mdc, n_layers, min_layers = mdc_geom
    cand = np.flatnonzero(final & np.isin(apdg, (211, 321)))
    code = apdg[cand]
    mass = np.where(code == 211, PION_MASS, KAON_MASS)
    ctau = np.where(code == 211, float(mat["ctau_cm"]["pion"]), float(mat["ctau_cm"]["kaon"]))
    length = p[cand] / mass * ctau * rng.exponential(1.0, cand.size)
    s_t = length * pt[cand] / np.maximum(p[cand], 1e-12)
    q, pz, vz = charge[cand], p3[cand, 2], vtx[cand, 2]
    exit_arc = {name: _exit_arc(q, pt[cand], pz, vz, r, z, bfield) for name, r, z in (
        ("first", r_first, z_mdc), ("mdc", r_out, z_mdc),
        ("emc", float(emc_c["barrel_radius_cm"]), float(emc_c["endcap_z_cm"])),
        ("muc", float(muc_c["inner_radius_cm"]), float(muc_c["inner_z_cm"])))}
    decays = s_t < exit_arc["muc"]
    d = cand[decays]
    s_d = s_t[decays]
    x, y, z, px_d, py_d = helix_point(charge[d], p3[d, 0], p3[d, 1], p3[d, 2], vtx[d, 0], vtx[d, 1],
                                      vtx[d, 2], s_d, bfield)
    p_at = np.stack([px_d, py_d, p3[d, 2]], 1)
    # the channel: K± -> μν with the μν share of (μν + ππ0), the rarer channels folded in proportionally
    br_mu = float(mat["kaon_br_munu"]) / (float(mat["kaon_br_munu"]) + float(mat["kaon_br_pipi0"]))
    muon_mode = (apdg[d] == 211) | (rng.random(d.size) < br_mu)
    m_charged = np.where(muon_mode, MUON_MASS, PION_MASS)
    m_neutral = np.where(muon_mode, 0.0, PI0_MASS)
    parent_m = np.where(apdg[d] == 211, PION_MASS, KAON_MASS)
    p_ch, p_neu = _two_body(p_at, parent_m, m_charged, m_neutral, rng)
    sign = np.sign(base["pdg"][d])
    ch_pdg = np.where(muon_mode, -13 * sign, 211 * sign)  # π+ -> μ+ (pdg -13); K+ -> π+
    nu_pdg = 14 * sign
    where = np.stack([x, y, z], 1)
    r_dec = np.hypot(x, y)

    in_first = s_d < exit_arc["first"][decays]
    in_mdc = ~in_first & (s_d < exit_arc["mdc"][decays])
    before_emc = s_d < exit_arc["emc"][decays]
    frac = np.clip((r_dec - r_first) / (r_out - r_first), 0.0, 1.0)
    layers_before = np.where(in_first, 0.0, np.where(in_mdc, n_layers * frac, n_layers))
    parent_found = layers_before >= min_layers
    cos_kink = np.einsum("ij,ij->i", p_at, p_ch) / (np.linalg.norm(p_at, axis=1) *
                                                      np.maximum(np.linalg.norm(p_ch, axis=1), 1e-12))
    separate = ~parent_found | (np.arccos(np.clip(cos_kink, -1, 1)) > float(mat["kink_merge_rad"]))
    child_tracked = (in_first | in_mdc) & (n_layers - layers_before >= min_layers) & separate
    # a kinked track: the fit averages the curvature of the hits before and after the decay
    kinked = in_mdc & parent_found
    w = frac[kinked]
    p_par = p[d[kinked]]
    p_child = np.linalg.norm(p_ch[kinked], axis=1)
    mdc_p[d[kinked]] *= ((w * p_par + (1 - w) * p_child) / p_par)[:, None]
    mdc_ok[d] &= parent_found
    emc_ok[d] &= ~before_emc
    final_out[d] = False

    first_new = sum(part["parent"].size for part in rows.parts)
    rows.add(d, ch_pdg, p_ch, m_charged, where, mdc=child_tracked.astype(float),
             emc=before_emc.astype(float), brem=0.0)
    # neutrinos leave; π0 -> γγ at once (its photons are recorded as the kaon's daughters)
    nu = muon_mode
    rows.add(d[nu], nu_pdg[nu], p_neu[nu], np.zeros(int(nu.sum())), where[nu], mdc=0.0, emc=0.0,
             brem=0.0)
    pi0 = ~muon_mode
    g1, g2 = _two_body(p_neu[pi0], np.full(int(pi0.sum()), PI0_MASS), np.zeros(int(pi0.sum())),
                       np.zeros(int(pi0.sum())), rng)
    for g in (g1, g2):
        rows.add(d[pi0], np.full(int(pi0.sum()), 22), g, np.zeros(int(pi0.sum())), where[pi0], mdc=0.0,
                 emc=before_emc[pi0].astype(float), brem=0.0)
    # the charged daughter is what the muon counter sees of the parent's track
    return d, first_new + np.arange(d.size)


def _assemble(base: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], final_out: np.ndarray,
              mdc_ok: np.ndarray, emc_ok: np.ndarray, mdc_p: np.ndarray, emc_p: np.ndarray,
              muc_from: np.ndarray, muc_child_slot: np.ndarray) -> Propagated:
    """Insert the new rows after their event's particles; build the detector views on the new row order."""
    n_old = base["pdg"].size
    n_events = base["n_truth"].size
    parent = new["parent"].astype(np.int64)
    old_event = base["event"]
    new_event = old_event[parent]
    # destinations without a sort of all rows: each event moves down by the new rows of the events before it,
    # and its own new rows follow its old ones (in the order they were made)
    n_new = np.bincount(new_event, minlength=n_events)
    shift = np.cumsum(n_new) - n_new
    starts_old = np.searchsorted(old_event, np.arange(n_events))
    ends_old = np.append(starts_old[1:], n_old)
    order_new = np.argsort(new_event, kind="stable")
    rank = np.empty(parent.size, np.int64)
    rank[order_new] = np.arange(parent.size) - np.searchsorted(new_event[order_new], new_event[order_new])
    position = np.concatenate([np.arange(n_old) + shift[old_event], ends_old[new_event] + shift[new_event] + rank])
    total = n_old + parent.size
    mother_new = parent - starts_old[new_event]  # the parent's index within its event

    def column(old: np.ndarray, extra: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.empty(total, dtype)
        out[position[:n_old]] = old
        out[position[n_old:]] = extra
        return out

    truth: dict[str, np.ndarray] = {
        "n_truth": (np.asarray(base["n_truth"]) + n_new).astype(np.int32),
        "event": column(old_event, new_event, np.int64),
        "pdg": column(base["pdg"], new["pdg"], np.int32),
        "mother": column(base["mother"], mother_new, np.int32),
        "px": column(base["px"], new["px"], float),
        "py": column(base["py"], new["py"], float),
        "pz": column(base["pz"], new["pz"], float),
        "e": column(base["e"], new["e"], float),
        "vx": column(base["vx"], new["vx"], float),
        "vy": column(base["vy"], new["vy"], float),
        "vz": column(base["vz"], new["vz"], float),
        "final": column(final_out, np.ones(parent.size, np.int8), np.int8),
    }
    def momenta(seen_p: np.ndarray) -> dict[str, np.ndarray]:
        # the truth's columns, with the few rows whose momentum the material changed
        changed = np.flatnonzero(np.any(seen_p != p_old, axis=1))
        out = {k: truth[k].copy() for k in ("px", "py", "pz")}
        for i, k in enumerate(("px", "py", "pz")):
            out[k][position[changed]] = seen_p[changed, i]
        return out

    p_old = np.stack([base["px"], base["py"], base["pz"]], 1)
    mdc = {**truth, "final": column(mdc_ok, new["mdc"], np.int8), **momenta(mdc_p)}
    emc = {**truth, "final": column(emc_ok, new["emc"], np.int8), **momenta(emc_p)}
    # the energy at the EMC: the particle's own mass with the momentum it arrives with
    mass2 = np.maximum(truth["e"] ** 2 - truth["px"] ** 2 - truth["py"] ** 2 - truth["pz"] ** 2, 0.0)
    emc["e"] = np.sqrt(emc["px"] ** 2 + emc["py"] ** 2 + emc["pz"] ** 2 + mass2)
    muc_row = np.arange(total)
    muc_row[position[muc_from]] = position[n_old + muc_child_slot]
    brem_parent = np.full(total, -1, np.int64)
    brem = np.flatnonzero(new["brem"] > 0)
    brem_parent[position[n_old + brem]] = position[parent[brem]]
    return Propagated(truth, mdc, emc, muc_row, brem_parent)
