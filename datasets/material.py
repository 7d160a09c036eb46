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
from dataclasses import field as dataclass_field
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

    @property
    def size(self) -> int:
        return sum(part["parent"].size for part in self.parts)

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


@dataclass
class _Batch:
    """The truth rows of a batch, and what the material has done to each so far (changed in place)."""

    base: dict[str, np.ndarray]
    p3: np.ndarray
    vtx: np.ndarray
    charge: np.ndarray
    final_out: np.ndarray  # still a final particle after the material (not converted, not decayed)
    mdc_ok: np.ndarray  # can make an MDC track
    emc_ok: np.ndarray  # reaches the EMC as itself
    mdc_p: np.ndarray  # the momentum the MDC measures
    emc_p: np.ndarray  # the momentum at the EMC
    rows: _Rows
    muc_from: np.ndarray = dataclass_field(default_factory=lambda: np.zeros(0, np.int64))
    muc_child: np.ndarray = dataclass_field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def of(cls, base: dict[str, np.ndarray]) -> _Batch:
        p3 = np.stack([base["px"], base["py"], base["pz"]], 1).astype(float)
        charge = _charge(base["pdg"])
        final = base["final"].astype(bool)
        return cls(base, p3, np.stack([base["vx"], base["vy"], base["vz"]], 1).astype(float), charge,
                   final.copy(), final & (charge != 0), final & ~np.isin(np.abs(base["pdg"]), _NEUTRINOS),
                   p3.copy(), p3.copy(), _Rows())

    @property
    def final(self) -> np.ndarray:
        """Final particles of the generator."""
        return self.base["final"].astype(bool)

    @property
    def apdg(self) -> np.ndarray:
        return np.abs(self.base["pdg"])

    @property
    def p(self) -> np.ndarray:
        return np.linalg.norm(self.p3, axis=1)

    @property
    def pt(self) -> np.ndarray:
        return np.hypot(self.p3[:, 0], self.p3[:, 1])


def propagate(truth: Mapping[str, np.ndarray], constants: Mapping[str, Mapping[str, Any]],
              rng: np.random.Generator) -> Propagated:
    """Apply the material effects of ``constants["Material"]`` to a batch of truth events.

    Args:
        truth: flat truth arrays as :meth:`vbes.datasets.generator.JpsiGenerator.generate` returns them.
        constants: the detector payloads (``Material``, ``Mdc``, ``Emc``, ``Muc``); without a ``Material``
            payload, or with ``enabled: false``, nothing changes.
        rng: the batch's random stream.

    Returns:
        the :class:`Propagated` truth and the detectors' views of it.
    """
    mat = constants.get("Material")
    n_rows = truth["pdg"].size
    base = {k: np.asarray(v) for k, v in truth.items()}
    if mat is None or not mat.get("enabled", True):
        return Propagated(base, base, base, np.arange(n_rows), np.full(n_rows, -1))
    batch = _Batch.of(base)
    if mat.get("bremsstrahlung", True):
        _bremsstrahlung(batch, mat, rng)
    if mat.get("conversions", True):
        _conversions(batch, mat, rng)
    if mat.get("decays_in_flight", True):
        _decays(batch, mat, constants, rng)
    if mat.get("hadronic_interactions", True):
        _hadronic_interactions(batch, mat, rng)
    return _assemble(batch)


def _bremsstrahlung(b: _Batch, mat: Mapping[str, Any], rng: np.random.Generator) -> None:
    """The generator's electrons radiate in the material before the first sense layer."""
    p, inv_sin = b.p, b.p / np.maximum(b.pt, 1e-9)
    ele = np.flatnonzero(b.final & (b.apdg == 11))
    t_layers = material_thickness(mat, "x0", before_tracking=True)
    t_pre = float(t_layers.sum())
    keep = bethe_heitler_keep(t_pre * inv_sin[ele], rng)
    k = p[ele] * (1.0 - keep)
    b.mdc_p[ele] *= keep[:, None]
    b.emc_p[ele] *= keep[:, None]
    emitted = k > float(mat["brem_photon_min_gev"])
    src = ele[emitted]
    radius = np.asarray(mat["layers"]["radius_cm"], float)
    r_emit = float(np.sum(radius * t_layers) / max(t_pre, 1e-12))  # where the radiation lengths are
    direction = b.p3[src] / p[src, None]
    where = b.vtx[src] + direction * (r_emit * inv_sin[src])[:, None]
    b.rows.add(src, np.full(src.size, 22), direction * k[emitted, None], np.zeros(src.size), where,
               mdc=0.0, emc=1.0, brem=1.0)


def _conversions(b: _Batch, mat: Mapping[str, Any], rng: np.random.Generator) -> None:
    """The generator's photons convert anywhere in the layers (the MDC gas included)."""
    p, inv_sin = b.p, b.p / np.maximum(b.pt, 1e-9)
    gam = np.flatnonzero(b.final & (b.apdg == 22) & (p > 2 * ELECTRON_MASS))
    t_path = material_thickness(mat, "x0", before_tracking=False)[None, :] * inv_sin[gam, None]
    converts = rng.random(gam.size) < 1.0 - np.exp(-7.0 / 9.0 * t_path.sum(axis=1))
    g = gam[converts]
    r_conv = _where_in_layers(t_path[converts], mat, rng)
    direction = b.p3[g] / p[g, None]
    where = b.vtx[g] + direction * (r_conv * inv_sin[g])[:, None]
    x = _pair_fraction(g.size, rng)
    for code, share in ((-11, x), (11, 1 - x)):
        energy = np.maximum(share * p[g], ELECTRON_MASS * 1.0001)
        mom = direction * np.sqrt(energy**2 - ELECTRON_MASS**2)[:, None]
        b.rows.add(g, np.full(g.size, code), mom, np.full(g.size, ELECTRON_MASS), where, mdc=1.0, emc=1.0,
                   brem=0.0)
    b.final_out[g] = False
    b.emc_ok[g] = False


def _hadronic_interactions(b: _Batch, mat: Mapping[str, Any], rng: np.random.Generator) -> None:
    """π, K, p that interact before leaving ``min_layers`` hits lose their track (no secondaries are made)."""
    inv_sin = b.p / np.maximum(b.pt, 1e-9)
    had = np.flatnonzero(b.final_out & b.mdc_ok & np.isin(b.apdg, _HADRONS))
    t_path = material_thickness(mat, "lambda", before_tracking=False)[None, :] * inv_sin[had, None]
    hits = rng.random(had.size) < 1.0 - np.exp(-t_path.sum(axis=1))
    r_int = _where_in_layers(t_path[hits], mat, rng)
    b.mdc_ok[had[hits][_layers_before(r_int, mat) < float(mat["min_layers_found"])]] = False


def _layers_before(radius: np.ndarray, mat: Mapping[str, Any]) -> np.ndarray:
    """MDC layers a track from the beam line has crossed when it reaches ``radius`` (layers evenly spread)."""
    first, outer = float(mat["mdc_first_layer_cm"]), float(mat["mdc_outer_radius_cm"])
    return float(mat["mdc_layers"]) * np.clip((radius - first) / (outer - first), 0.0, 1.0)


def _where_in_layers(t_path: np.ndarray, mat: Mapping[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Radius of an interaction that happened somewhere in the layers: a layer in proportion to its share of
    ``t_path`` (n, layers), uniform across its thickness."""
    radius: np.ndarray = np.asarray(mat["layers"]["radius_cm"], float)
    thick: np.ndarray = np.asarray(mat["layers"]["thickness_cm"], float)
    cum = np.cumsum(t_path, axis=1)
    layer: np.ndarray = np.minimum((rng.random((cum.shape[0], 1)) * cum[:, -1:] > cum).sum(axis=1), radius.size - 1)
    return np.asarray(radius[layer] + rng.random(layer.size) * thick[layer])


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


def _decays(b: _Batch, mat: Mapping[str, Any], constants: Mapping[str, Mapping[str, Any]],
            rng: np.random.Generator) -> None:
    """π± and K± decays in flight, at their point on the helix; records which daughter the MUC sees."""
    bfield = float(constants["Mdc"]["bfield_t"])
    emc_c, muc_c = constants["Emc"], constants["Muc"]
    p, pt = b.p, b.pt
    cand = np.flatnonzero(b.final & np.isin(b.apdg, (211, 321)))
    is_pion = b.apdg[cand] == 211
    mass = np.where(is_pion, PION_MASS, KAON_MASS)
    ctau = np.where(is_pion, float(mat["ctau_cm"]["pion"]), float(mat["ctau_cm"]["kaon"]))
    s_t = p[cand] / mass * ctau * rng.exponential(1.0, cand.size) * pt[cand] / np.maximum(p[cand], 1e-12)
    z_mdc = float(mat["mdc_half_length_cm"])
    exit_arc = {name: _exit_arc(b.charge[cand], pt[cand], b.p3[cand, 2], b.vtx[cand, 2], r, z, bfield)
                for name, r, z in (
                    ("first", float(mat["mdc_first_layer_cm"]), z_mdc),
                    ("mdc", float(mat["mdc_outer_radius_cm"]), z_mdc),
                    ("emc", float(emc_c["barrel_radius_cm"]), float(emc_c["endcap_z_cm"])),
                    ("muc", float(muc_c["inner_radius_cm"]), float(muc_c["inner_z_cm"])))}
    decays = s_t < exit_arc["muc"]
    d, s_d = cand[decays], s_t[decays]
    x, y, z, px_d, py_d = helix_point(b.charge[d], b.p3[d, 0], b.p3[d, 1], b.p3[d, 2], b.vtx[d, 0], b.vtx[d, 1],
                                      b.vtx[d, 2], s_d, bfield)
    p_at = np.stack([px_d, py_d, b.p3[d, 2]], 1)
    # the channel: K± -> μν with the μν share of (μν + ππ0), the rarer channels folded in proportionally
    br_mu = float(mat["kaon_br_munu"]) / (float(mat["kaon_br_munu"]) + float(mat["kaon_br_pipi0"]))
    muon_mode = is_pion[decays] | (rng.random(d.size) < br_mu)
    m_charged = np.where(muon_mode, MUON_MASS, PION_MASS)
    p_ch, p_neu = _two_body(p_at, mass[decays], m_charged, np.where(muon_mode, 0.0, PI0_MASS), rng)
    sign = np.sign(b.base["pdg"][d])
    where = np.stack([x, y, z], 1)

    in_first = s_d < exit_arc["first"][decays]
    in_mdc = ~in_first & (s_d < exit_arc["mdc"][decays])
    before_emc = s_d < exit_arc["emc"][decays]
    n_layers, min_layers = float(mat["mdc_layers"]), float(mat["min_layers_found"])
    layers_before = np.where(in_first, 0.0, np.where(in_mdc, _layers_before(np.hypot(x, y), mat), n_layers))
    parent_found = layers_before >= min_layers
    cos_kink = np.einsum("ij,ij->i", p_at, p_ch) / (np.linalg.norm(p_at, axis=1) *
                                                      np.maximum(np.linalg.norm(p_ch, axis=1), 1e-12))
    separate = ~parent_found | (np.arccos(np.clip(cos_kink, -1, 1)) > float(mat["kink_merge_rad"]))
    child_tracked = (in_first | in_mdc) & (n_layers - layers_before >= min_layers) & separate
    # a kinked track: the fit averages the curvature of the hits before and after the decay
    kinked = in_mdc & parent_found
    w = layers_before[kinked] / n_layers
    p_par, p_child = p[d[kinked]], np.linalg.norm(p_ch[kinked], axis=1)
    b.mdc_p[d[kinked]] *= ((w * p_par + (1 - w) * p_child) / p_par)[:, None]
    b.mdc_ok[d] &= parent_found
    b.emc_ok[d] &= ~before_emc
    b.final_out[d] = False

    # the charged daughter is what the muon counter sees of the parent's track
    b.muc_from = d
    b.muc_child = b.rows.size + np.arange(d.size)
    b.rows.add(d, np.where(muon_mode, -13 * sign, 211 * sign),  # π+ -> μ+ (pdg -13); K+ -> π+
               p_ch, m_charged, where, mdc=child_tracked.astype(float), emc=before_emc.astype(float), brem=0.0)
    # neutrinos leave; π0 -> γγ at once (its photons are recorded as the kaon's daughters)
    nu, pi0 = muon_mode, ~muon_mode
    b.rows.add(d[nu], 14 * sign[nu], p_neu[nu], np.zeros(int(nu.sum())), where[nu], mdc=0.0, emc=0.0, brem=0.0)
    zeros = np.zeros(int(pi0.sum()))
    for g in _two_body(p_neu[pi0], zeros + PI0_MASS, zeros, zeros, rng):
        b.rows.add(d[pi0], np.full(zeros.size, 22), g, zeros, where[pi0], mdc=0.0,
                   emc=before_emc[pi0].astype(float), brem=0.0)


def _assemble(b: _Batch) -> Propagated:
    """Insert the new rows after their event's particles; build the detector views on the new row order."""
    base, new = b.base, b.rows.table(("mdc", "emc", "brem"))
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
        "final": column(b.final_out, np.ones(parent.size, np.int8), np.int8),
    }

    def momenta(seen_p: np.ndarray) -> dict[str, np.ndarray]:
        # the truth's columns, with the few rows whose momentum the material changed
        changed = np.flatnonzero(np.any(seen_p != b.p3, axis=1))
        out = {k: truth[k].copy() for k in ("px", "py", "pz")}
        for i, k in enumerate(("px", "py", "pz")):
            out[k][position[changed]] = seen_p[changed, i]
        return out

    mdc = {**truth, "final": column(b.mdc_ok, new["mdc"], np.int8), **momenta(b.mdc_p)}
    emc = {**truth, "final": column(b.emc_ok, new["emc"], np.int8), **momenta(b.emc_p)}
    # the energy at the EMC: the particle's own mass with the momentum it arrives with
    mass2 = np.maximum(truth["e"] ** 2 - truth["px"] ** 2 - truth["py"] ** 2 - truth["pz"] ** 2, 0.0)
    emc["e"] = np.sqrt(emc["px"] ** 2 + emc["py"] ** 2 + emc["pz"] ** 2 + mass2)
    muc_row = np.arange(total)
    muc_row[position[b.muc_from]] = position[n_old + b.muc_child]
    brem_parent = np.full(total, -1, np.int64)
    brem = np.flatnonzero(new["brem"] > 0)
    brem_parent[position[n_old + brem]] = position[parent[brem]]
    return Propagated(truth, mdc, emc, muc_row, brem_parent)
