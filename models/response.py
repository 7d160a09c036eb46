"""The detector-response surrogate: reconstructed tracks and showers for truth particles (FlashSim's idea at BESIII).

For every final particle of the generator (species, four-momentum, production vertex) and the run period's
calibration conditions, :class:`DetectorResponse` draws what BESIII reconstructs of it, as five conditional tables
(:class:`vbes.models.tabular.ConditionalTable`), sampled in this order:

1. **particle**: how many tracks (0, 1, 2: a conversion pair or a kink) and how many EMC showers it leaves -- the
   reconstruction *efficiency* is ``P(tracks >= 1)``, learned, not a parametrisation;
2. **track** (per track): whether TOF measured it and whether a shower is matched to it, and its measurement as
   residuals from the true helix (``Δdr, Δφ0, δκ/κ, Δdz, Δtanλ``), dE/dx against the calibration's expected
   curve at the true velocity and the TOF time against the true flight time, each in units of the resolution the
   run's calibration states (pulls), the dE/dx hits, the fit's χ² and degrees of freedom, the first and last MDC
   layer and the muon-counter depth; then the **covariance** of the helix, conditioned on that measurement (a
   Cholesky factor: positive-definite by construction);
3. **shower** (per shower, the matched one first): crystals (a discrete column drawn first: the kind of shower
   follows it), energy (relative to the particle's energy for the first shower of a photon or electron),
   direction relative to where the particle's helix meets the EMC, TDC time, E5x5/E, E3x3/E5x5, second and
   lateral moments, seed fraction and Zernike moments -- conditioned on the track's curvature residual, so that
   electron bremsstrahlung moves E/p as it does;
4. **noise** (per event): the number of showers no particle made, and each of them (same shower table, its own
   quantile maps).

Derived fields are computed, not learned, with the reconstruction's formulas and the run's payload constants
(shared with the reference detector model, :mod:`vbes.datasets.detector`): momentum and angles from the helix,
χ(dE/dx) and χ(TOF) per hypothesis, the TOF path, dE/dx in ADC counts, the MDC layer span, shower positions on the
crystal faces, module, crystal id, errors and split-cluster status. Integers come out as integers (the quantile maps
hold them as atoms), E >= 0, |cos θ| <= 1, covariances positive-definite.

Conditions enter in two ways. Constants whose meaning is a scale or a resolution set the units of the learned
coordinates: shower energies are in units of the period's EMC energy scale, TOF and dE/dx residuals in units of
the period's TOF and dE/dx resolutions -- what the calibration says they are, so a period with other constants
gets the response those constants imply. And every constant that differs between the training periods
(:func:`vbes.models.conditions.varying_keys`) is an input of the networks, standardised, so that whatever else a
period changes is learned. Inputs outside the training domain (momentum, angle, species, constants) are counted by
:meth:`DetectorResponse.domain_fraction`.

Oversampling: :meth:`DetectorResponse.respond` accepts ``repeats``: each truth particle is responded to ``k`` times
with independent draws. The ``k`` responses of one event share its truth, so they are not independent events: an
efficiency or a histogram from ``N`` events with ``k`` responses each has the variance of ``N`` events' truth
fluctuation plus ``1/(N k)`` of the response's; the statistical error of a yield must come from the spread between
truth events (bootstrap over events), not from ``sqrt(N k)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vbes.errors import InvalidInput, ModelError
from vbes.models.base import ModelFamily, Tables, register_family
from vbes.models.conditions import Conditions
from vbes.models.kinematics import event_offsets, generator_final
from vbes.models.tabular import ConditionalTable

__all__ = [
    "MAX_CRYSTALS",
    "MAX_SHOWERS",
    "MAX_TRACKS",
    "SHOWER_COLUMNS",
    "SPECIES",
    "TRACK_COLUMNS",
    "DetectorResponse",
    "ParticleBatch",
    "ResponseRecords",
    "ResponseSurrogate",
    "objects_table",
    "particle_batch",
    "response_records",
    "truth_particles",
]

#: species with a context class of their own (others share one)
SPECIES = (22, 11, -11, 13, -13, 211, -211, 321, -321, 2212, -2212, 2112, -2112, 130)
MAX_TRACKS = 2
MAX_SHOWERS = 15
MAX_NOISE = 15
_CHARGE = {11: -1, 13: -1, 211: 1, 321: 1, 2212: 1}
_COV = [(i, j) for i in range(5) for j in range(i + 1)]
TRACK_COLUMNS = (
    "d_dr", "d_phi0", "d_kappa_rel", "d_dz", "d_tanl",
    *(f"cov_log_l{i}{i}" if i == j else f"cov_l{i}{j}_over_l{i}{i}" for i, j in _COV),
    "dedx_pull", "dedx_nhits", "tof_pull", "fit_chi2", "fit_ndof", "mdc_first_layer", "mdc_last_layer", "muc_depth",
)
_TRACK_INTEGERS = ("dedx_nhits", "fit_ndof", "mdc_first_layer", "mdc_last_layer")
# the track's measurement, and its helix covariance -- drawn after the measurement, conditioned on it: the
# covariance follows from the momentum, angle and hits the fit had, and learning it apart keeps the measurement's
# flow for what the physics sees
_MEASUREMENT = [i for i, c in enumerate(TRACK_COLUMNS) if not c.startswith("cov_")]
_COVARIANCE = [i for i, c in enumerate(TRACK_COLUMNS) if c.startswith("cov_")]
_COV_EXTRA = 7
SHOWER_COLUMNS = (
    "log_energy_ratio", "d_theta", "d_phi", "time", "e5x5_over_e", "e3x3_over_e5x5", "second_moment",
    "lat_moment", "seed_over_e3x3", "a20_moment", "a42_moment",
)
#: crystals of a shower: a discrete column drawn before the rest (shower shapes and the kind of shower -- MIP,
#: electromagnetic, hadronic -- follow it), codes 0..63 for 1..64 crystals (more are stored as 64)
MAX_CRYSTALS = 64
_N_PARTICLE_FEATURES = len(SPECIES) + 1 + 10
_COS_BINS, _P_BINS = 24, 16
_N_ENCODINGS = _COS_BINS + _P_BINS
_SHOWER_EXTRA = 7
_C_CM_PER_NS = 29.9792458
_TWO_PI = 2 * np.pi


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (np.asarray(angle) + np.pi) % _TWO_PI - np.pi


def _species_index(pdg: np.ndarray) -> np.ndarray:
    out = np.full(np.shape(pdg), len(SPECIES), dtype=np.int64)
    for i, code in enumerate(SPECIES):
        out[np.asarray(pdg) == code] = i
    return out


def _charge(pdg: np.ndarray) -> np.ndarray:
    apdg = np.abs(np.asarray(pdg))
    q = np.zeros(apdg.shape)
    for code, sign in _CHARGE.items():
        q[apdg == code] = sign
    return q * np.sign(pdg)


#: quantile groups of the shower table: noise; the first shower of each species class; later showers of
#: electromagnetic particles and of the others -- rows whose marginals differ by orders of magnitude get maps of
#: their own, so the flow only learns what the context changes within a group
_SHOWER_FIRST_GROUP = {22: 1, 11: 2, -11: 2, 13: 3, -13: 3, 211: 4, -211: 4, 321: 5, -321: 5, 2212: 6, -2212: 7}
N_SHOWER_GROUPS = 11
#: quantile groups of the track table: the particle's species class, and every second track
_TRACK_GROUP = {11: 0, -11: 0, 13: 1, -13: 1, 211: 2, -211: 2, 321: 3, -321: 3, 2212: 4, -2212: 4, 22: 5}
N_TRACK_GROUPS = 8


def _lookup(pdg: np.ndarray, table: Mapping[int, int], default: int) -> np.ndarray:
    pdg = np.asarray(pdg, dtype=np.int64)
    out = np.full(pdg.shape, default, dtype=np.int64)
    for code, group in table.items():
        out[pdg == code] = group
    return out


def shower_groups(owner_pdg: np.ndarray, owner: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Quantile group of each shower row (``owner`` -1: noise)."""
    first = _lookup(owner_pdg, _SHOWER_FIRST_GROUP, 8)
    em = np.isin(np.abs(owner_pdg), (11, 22))
    later = np.where(em, 9, 10)
    return np.where(owner < 0, 0, np.where(rank == 0, first, later))


def track_groups(owner_pdg: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Quantile group of each track row."""
    return np.where(rank > 0, 7, _lookup(owner_pdg, _TRACK_GROUP, 6))


@dataclass
class ParticleBatch:
    """Truth particles to respond to, with their kinematics in the detector's terms.

    Attributes:
        pdg: PDG id.
        p4: ``(n, 4)`` lab four-momentum (E, px, py, pz), GeV.
        vertex: ``(n, 3)`` production vertex, cm.
        event: event index of each particle (sorted).
        truth_row: the particle's row within its event's truth table (``truth_index`` of what it makes).
        period: calibration period of each particle (index into the conditions' periods).
        helix: ``(n, 5)`` true helix about the origin (zeros for neutrals).
        theta_ref, phi_ref: where the particle meets the EMC (its momentum direction if it does not).
        reaches_emc, barrel: impact flags.
        beta: true velocity.
    """

    pdg: np.ndarray
    p4: np.ndarray
    vertex: np.ndarray
    event: np.ndarray
    truth_row: np.ndarray
    period: np.ndarray
    helix: np.ndarray
    theta_ref: np.ndarray
    phi_ref: np.ndarray
    reaches_emc: np.ndarray
    barrel: np.ndarray
    beta: np.ndarray

    def __len__(self) -> int:
        return int(self.pdg.size)

    @property
    def p(self) -> np.ndarray:
        return np.linalg.norm(self.p4[:, 1:], axis=1)

    @property
    def betagamma(self) -> np.ndarray:
        """True βγ (capped for massless particles)."""
        p = self.p
        mass = np.sqrt(np.maximum(self.p4[:, 0] ** 2 - p**2, 0.0))
        return np.minimum(p / np.maximum(mass, 1e-6), 1e6)

    def period_constant(self, rows: np.ndarray, conditions: Conditions, payload: str, key: str) -> np.ndarray:
        """A payload constant of the period of each particle of ``rows``."""
        values = np.asarray([float(p.constants[payload][key]) for p in conditions.periods])
        return values[self.period[rows]]

    def tof_sigma(self, rows: np.ndarray, conditions: Conditions) -> np.ndarray:
        """The TOF resolution (ns) of the calibration for each particle: barrel or endcap by its true direction."""
        p = np.maximum(self.p[rows], 1e-12)
        barrel = np.abs(self.p4[rows, 3] / p) < self.period_constant(rows, conditions, "Tof", "barrel_cos_max")
        return np.where(barrel, self.period_constant(rows, conditions, "Tof", "sigma_barrel_ns"),
                        self.period_constant(rows, conditions, "Tof", "sigma_endcap_ns"))

    def dedx_sigma(self, rows: np.ndarray, nhits: np.ndarray, conditions: Conditions) -> np.ndarray:
        """The calibration's relative dE/dx resolution for ``nhits`` hits."""
        hits_mean = self.period_constant(rows, conditions, "Dedx", "hits_mean")
        return self.period_constant(rows, conditions, "Dedx", "sigma_rel") * np.sqrt(hits_mean / np.maximum(nhits, 1))

    def expected_dedx(self, rows: np.ndarray, conditions: Conditions) -> np.ndarray:
        """The calibration's expected dE/dx (normPH) at the true βγ of particles ``rows``, in their periods."""
        from vbes.datasets.detector import dedx_curve

        out = np.ones(rows.size)
        bg = self.betagamma[rows]
        period = self.period[rows]
        for k, p in enumerate(conditions.periods):
            sel = period == k
            if sel.any():
                out[sel] = dedx_curve(bg[sel], p.constants["Dedx"])
        return out

    def encodings(self) -> np.ndarray:
        """Piecewise-linear encodings of ``|cos θ|`` and ``log p`` (Gorishniy et al., NeurIPS 2022, "On embeddings
        for numerical features in tabular deep learning"): with them a small network draws the sharp edges of an
        acceptance or a threshold -- a track efficiency that drops at the MDC's edge -- instead of smoothing them."""
        p = np.maximum(self.p, 1e-6)
        return np.column_stack([_piecewise_linear(np.abs(self.p4[:, 3]) / p, 0.0, 1.0, _COS_BINS),
                                _piecewise_linear(np.log(p), np.log(0.02), np.log(3.0), _P_BINS)])

    def features(self) -> np.ndarray:
        """The particle part of every network's context, ``(n, _N_PARTICLE_FEATURES)``."""
        n = len(self)
        onehot = np.zeros((n, len(SPECIES) + 1))
        onehot[np.arange(n), _species_index(self.pdg)] = 1.0
        p = np.maximum(self.p, 1e-6)
        cos_t = self.p4[:, 3] / p
        phi = np.arctan2(self.p4[:, 2], self.p4[:, 1])
        rho = np.hypot(self.vertex[:, 0], self.vertex[:, 1])
        pt = np.hypot(self.p4[:, 1], self.p4[:, 2])
        return np.column_stack([
            onehot, np.log(p), cos_t, np.sin(phi), np.cos(phi), np.arcsinh(rho), np.arcsinh(self.vertex[:, 2] / 5.0),
            self.reaches_emc.astype(float), self.barrel.astype(float), np.log(np.maximum(pt, 1e-4)),
            np.arcsinh(np.sqrt(np.maximum(1 - self.beta**2, 0.0)) / np.maximum(self.beta, 1e-6)),
        ])


def _piecewise_linear(x: np.ndarray, lo: float, hi: float, bins: int) -> np.ndarray:
    edges = np.linspace(lo, hi, bins + 1)
    return np.clip((np.asarray(x)[:, None] - edges[None, :-1]) / (edges[1] - edges[0]), 0.0, 1.0)


def particle_batch(pdg: np.ndarray, p4: np.ndarray, vertex: np.ndarray, event: np.ndarray, truth_row: np.ndarray,
                   period: np.ndarray, conditions: Conditions) -> ParticleBatch:
    """A :class:`ParticleBatch` with the true helix and EMC impact computed in each particle's period's field and
    geometry (the reference detector model's own formulas).

    Args:
        pdg, p4, vertex, event, truth_row, period: see :class:`ParticleBatch`.
        conditions: the periods' payload constants.
    """
    from vbes.datasets.detector import emc_impact, true_helix

    n = pdg.size
    charge = _charge(pdg)
    helix = np.zeros((n, 5))
    theta_ref = np.zeros(n)
    phi_ref = np.zeros(n)
    reaches = np.zeros(n, bool)
    barrel = np.zeros(n, bool)
    px, py, pz = p4[:, 1], p4[:, 2], p4[:, 3]
    p = np.sqrt(px**2 + py**2 + pz**2)
    for k, period_def in enumerate(conditions.periods):
        rows = np.flatnonzero(period == k)
        if rows.size == 0:
            continue
        bfield = float(period_def.constants["Mdc"]["bfield_t"])
        charged = rows[charge[rows] != 0]
        if charged.size:
            helix[charged] = true_helix(charge[charged], px[charged], py[charged], pz[charged], vertex[charged, 0],
                                        vertex[charged, 1], vertex[charged, 2], bfield)
        hit, is_barrel, r, phi, z = emc_impact(charge[rows], px[rows], py[rows], pz[rows], vertex[rows, 2],
                                               period_def.constants["Emc"], bfield)
        reaches[rows] = hit
        barrel[rows] = is_barrel
        theta_ref[rows] = np.where(hit, np.arctan2(r, z), np.arccos(np.clip(pz[rows] / np.maximum(p[rows], 1e-12),
                                                                            -1, 1)))
        phi_ref[rows] = np.where(hit, _wrap(phi), np.arctan2(py[rows], px[rows]))
    energy = p4[:, 0]
    beta = np.where(energy > 0, p / np.maximum(energy, 1e-12), 1.0)
    return ParticleBatch(np.asarray(pdg, np.int64), p4, vertex, np.asarray(event, np.int64),
                         np.asarray(truth_row, np.int64), np.asarray(period, np.int64), helix, theta_ref, phi_ref,
                         reaches, barrel, beta)


# --- the coordinates of tracks and showers ------------------------------------------------------------------------
def _cov_parameters(cov_packed: np.ndarray) -> np.ndarray:
    from vbes.datasets.schema import unpack_symmetric

    cov = unpack_symmetric(np.asarray(cov_packed, dtype=np.float64))
    # a matrix that is not positive-definite (rounding in a file) gets a tiny diagonal lift
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        scale = np.maximum(np.abs(np.diagonal(cov, axis1=1, axis2=2)), 1e-30)
        chol = np.linalg.cholesky(cov + np.eye(5) * scale[:, None, :] * 1e-9)
    out = np.zeros((cov.shape[0], len(_COV)))
    for c, (i, j) in enumerate(_COV):
        out[:, c] = np.log(chol[:, i, i]) if i == j else chol[:, i, j] / chol[:, i, i]
    return out


def _cov_packed(params: np.ndarray) -> np.ndarray:
    from vbes.datasets.schema import pack_symmetric

    n = params.shape[0]
    chol = np.zeros((n, 5, 5))
    diag = {i: np.exp(np.clip(params[:, _COV.index((i, i))], -60, 30)) for i in range(5)}
    for c, (i, j) in enumerate(_COV):
        chol[:, i, j] = diag[i] if i == j else params[:, c] * diag[i]
    return pack_symmetric(chol @ np.transpose(chol, (0, 2, 1)))


@dataclass
class ResponseRecords:
    """Training rows of the tables, in physical coordinates (NumPy)."""

    particles: ParticleBatch
    particle_codes: np.ndarray  # (n, 2): tracks, showers
    track_particle: np.ndarray
    track_rank: np.ndarray
    track_codes: np.ndarray  # (t, 3): tof present, matched, mass hypothesis code
    track_values: np.ndarray  # (t, len(TRACK_COLUMNS))
    shower_particle: np.ndarray  # -1 for noise
    shower_rank: np.ndarray
    shower_values: np.ndarray  # (s, len(SHOWER_COLUMNS))
    shower_codes: np.ndarray  # (s, 1): crystals - 1
    shower_period: np.ndarray
    shower_track_kappa: np.ndarray
    shower_track_flags: np.ndarray  # (s, 2): the particle has a track, its first track is matched
    event_period: np.ndarray
    noise_counts: np.ndarray
    hypotheses: np.ndarray  # vocabulary of mass_hypothesis


def _ancestor_rows(truth: Mapping[str, np.ndarray], starts: np.ndarray, event_of: np.ndarray,
                   final: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The generator final particle each truth row descends from (itself if it is one; -1 if none)."""
    mother = np.asarray(truth["mother"], dtype=np.int64)
    mother_row = np.where(mother >= 0, mother + starts[event_of], -1)
    current = rows.copy()
    for _ in range(64):
        need = (current >= 0) & ~final[np.maximum(current, 0)]
        if not need.any():
            break
        current = np.where(need, mother_row[np.maximum(current, 0)], current)
    return np.where((current >= 0) & final[np.maximum(current, 0)], current, -1)


def response_records(tables: Mapping[str, Mapping[str, np.ndarray]], conditions: Conditions,
                     hypotheses: np.ndarray | None = None) -> ResponseRecords:
    """Training rows of event tables with truth: every generator final particle and what was reconstructed of it.

    Reconstructed objects are attributed to the generator particle they descend from (following ``truth_index``
    and the truth record's mothers through material secondaries); showers without a truth particle are noise.
    A particle's tracks beyond :data:`MAX_TRACKS` and showers beyond :data:`MAX_SHOWERS` (the least energetic) are
    dropped; only a particle's first track is matched to a shower (its first).

    Args:
        tables: event tables with ``truth`` (BOSS status flags) and ``events.run``.
        conditions: calibration periods covering every run.
        hypotheses: vocabulary of ``tracks.mass_hypothesis`` (default: the values met).
    """
    events, truth, tracks, showers = tables["events"], tables["truth"], tables["tracks"], tables["showers"]
    n_events = len(events["run"])
    event_period = conditions.period_of(events["run"])
    t_event, t_start = event_offsets(events["n_truth"])
    final = generator_final(truth)
    rows = np.flatnonzero(final)
    p4 = np.stack([np.asarray(truth[c], np.float64)[rows] for c in ("e", "px", "py", "pz")], 1)
    vertex = np.stack([np.asarray(truth[c], np.float64)[rows] for c in ("vx", "vy", "vz")], 1)
    particles = particle_batch(np.asarray(truth["pdg"])[rows], p4, vertex, t_event[rows], rows - t_start[t_event[rows]],
                               event_period[t_event[rows]], conditions)
    slot = np.full(final.size, -1, dtype=np.int64)
    slot[rows] = np.arange(rows.size)

    # --- tracks -> their particle
    trk_event, _ = event_offsets(events["n_tracks"])
    trk_truth = np.asarray(tracks["truth_index"], dtype=np.int64)
    trk_row = np.where(trk_truth >= 0, trk_truth + t_start[trk_event], -1)
    trk_owner = slot[np.maximum(_ancestor_rows(truth, t_start, t_event, final, trk_row), 0)]
    trk_owner = np.where(trk_row >= 0, trk_owner, -1)
    keep = np.flatnonzero(trk_owner >= 0)
    p_reco = np.asarray(tracks["p"], np.float64)
    order = keep[np.lexsort((-p_reco[keep], trk_owner[keep]))]
    owner = trk_owner[order]
    first = np.searchsorted(owner, owner, side="left")
    rank = np.arange(order.size) - first
    kept = rank < MAX_TRACKS
    order, owner, rank = order[kept], owner[kept], rank[kept]
    n_tracks = np.bincount(owner, minlength=len(particles))

    # --- showers -> their particle (or noise)
    sh_event, sh_start = event_offsets(events["n_showers"])
    sh_truth = np.asarray(showers["truth_index"], dtype=np.int64)
    sh_row = np.where(sh_truth >= 0, sh_truth + t_start[sh_event], -1)
    sh_owner = np.where(sh_row >= 0, slot[np.maximum(_ancestor_rows(truth, t_start, t_event, final, sh_row), 0)], -1)
    energy = np.asarray(showers["energy"], np.float64)
    # the shower matched to each particle's first track comes first among its showers
    matched_shower = np.full(len(particles), -1, dtype=np.int64)
    first_track = order[rank == 0]
    emc_index = np.asarray(tracks["emc_index"], dtype=np.int64)[first_track]
    has_match = emc_index >= 0
    global_match = emc_index + sh_start[trk_event[first_track]]
    same_owner = has_match & (sh_owner[np.maximum(global_match, 0)] == owner[rank == 0])
    matched_shower[owner[rank == 0][same_owner]] = global_match[same_owner]
    is_matched = np.zeros(energy.size, bool)
    is_matched[matched_shower[matched_shower >= 0]] = True
    owned = np.flatnonzero(sh_owner >= 0)
    s_order = owned[np.lexsort((-energy[owned], ~is_matched[owned], sh_owner[owned]))]
    s_owner = sh_owner[s_order]
    s_rank = np.arange(s_order.size) - np.searchsorted(s_owner, s_owner, side="left")
    s_keep = s_rank < MAX_SHOWERS
    s_order, s_owner, s_rank = s_order[s_keep], s_owner[s_keep], s_rank[s_keep]
    n_showers = np.bincount(s_owner, minlength=len(particles))
    noise = np.flatnonzero(sh_owner < 0)
    noise_counts = np.minimum(np.bincount(sh_event[noise], minlength=n_events), MAX_NOISE)
    # noise showers beyond the cap are dropped, the least energetic first
    noise = noise[np.lexsort((-energy[noise], sh_event[noise]))]
    noise_rank = np.arange(noise.size) - np.searchsorted(sh_event[noise], sh_event[noise], side="left")
    noise = noise[noise_rank < MAX_NOISE]

    # --- track rows
    hyp = np.asarray(tracks["mass_hypothesis"], dtype=np.int64)
    vocab = np.unique(hyp) if hypotheses is None else np.asarray(hypotheses)
    if vocab.size == 0:
        vocab = np.asarray([2])
    hyp_code = np.searchsorted(vocab, hyp[order]).clip(0, vocab.size - 1)
    tof = np.asarray(tracks["tof"], np.float64)[order]
    tof_present = np.isfinite(tof)
    matched = (rank == 0) & (matched_shower[owner] >= 0)
    track_codes = np.column_stack([tof_present.astype(np.int64), matched.astype(np.int64), hyp_code])
    track_values = _track_values(tracks, order, particles, owner, tof_present, conditions)

    # --- shower rows: the particles', then the noise
    shower_idx = np.concatenate([s_order, noise])
    shower_particle = np.concatenate([s_owner, np.full(noise.size, -1)])
    shower_rank = np.concatenate([s_rank, np.zeros(noise.size, np.int64)])
    sh_period = event_period[sh_event[shower_idx]]
    shower_values = _shower_values(showers, shower_idx, particles, shower_particle, shower_rank, sh_period,
                                   conditions)
    crystals = np.asarray(showers["n_crystals"], dtype=np.int64)[shower_idx]
    shower_codes = (np.clip(crystals, 1, MAX_CRYSTALS) - 1)[:, None]
    kappa = np.zeros(len(particles))
    track_flags = np.zeros((len(particles), 2))
    r0 = rank == 0
    kappa[owner[r0]] = track_values[r0, TRACK_COLUMNS.index("d_kappa_rel")]
    track_flags[owner[r0], 0] = 1.0
    track_flags[owner[r0], 1] = matched[r0]
    owner_safe = np.maximum(shower_particle, 0)
    sh_kappa = np.where(shower_particle >= 0, kappa[owner_safe], 0.0)
    sh_flags = np.where((shower_particle >= 0)[:, None], track_flags[owner_safe], 0.0)
    return ResponseRecords(
        particles, np.column_stack([n_tracks, n_showers]), owner, rank, track_codes, track_values, shower_particle,
        shower_rank, shower_values, shower_codes, sh_period, sh_kappa, sh_flags, event_period, noise_counts, vocab,
    )


def _covariance_context(measured: np.ndarray) -> np.ndarray:
    """What the helix covariance depends on, from a track's measurement (columns of ``_MEASUREMENT``): its
    curvature and dip residuals, dE/dx hits, fit degrees of freedom and χ², and the MDC layers it spans."""
    col = {TRACK_COLUMNS[i]: k for k, i in enumerate(_MEASUREMENT)}
    return np.column_stack([
        np.clip(measured[:, col["d_kappa_rel"]], -1.0, 1.0) * 10.0, np.clip(measured[:, col["d_tanl"]], -1, 1) * 10,
        measured[:, col["dedx_nhits"]] / 40.0, measured[:, col["fit_ndof"]] / 40.0,
        np.log1p(np.maximum(measured[:, col["fit_chi2"]], 0.0)) / 4.0,
        measured[:, col["mdc_first_layer"]] / 43.0, measured[:, col["mdc_last_layer"]] / 43.0,
    ])


def _track_groups_of(records: ResponseRecords) -> np.ndarray:
    return track_groups(records.particles.pdg[records.track_particle], records.track_rank)


def _shower_groups_of(records: ResponseRecords) -> np.ndarray:
    owner = records.shower_particle
    return shower_groups(records.particles.pdg[np.maximum(owner, 0)], owner, records.shower_rank)


def _track_values(tracks: Mapping[str, np.ndarray], order: np.ndarray, particles: ParticleBatch, owner: np.ndarray,
                  tof_present: np.ndarray, conditions: Conditions) -> np.ndarray:
    helix = np.asarray(tracks["helix"], np.float64)[order]
    true = particles.helix[owner]
    kappa_true = np.where(true[:, 2] != 0, true[:, 2], 1.0)
    resid = np.column_stack([
        helix[:, 0] - true[:, 0], _wrap(helix[:, 1] - true[:, 1]), helix[:, 2] / kappa_true - 1.0,
        helix[:, 3] - true[:, 3], helix[:, 4] - true[:, 4],
    ])
    cov = _cov_parameters(np.asarray(tracks["helix_cov"], np.float64)[order])
    tof = np.asarray(tracks["tof"], np.float64)[order]
    path = np.asarray(tracks["tof_path"], np.float64)[order]
    # the TOF time against the flight time at the true velocity, and dE/dx against the calibration's expectation at
    # the true velocity, each in units of the resolution the run's calibration states: pulls, one distribution
    # for every species and period, whatever the period's TOF and dE/dx resolutions
    tof_resid = tof - path / (np.maximum(particles.beta[owner], 1e-6) * _C_CM_PER_NS)
    tof_pull = np.where(tof_present, tof_resid / particles.tof_sigma(owner, conditions), np.nan)
    dedx = np.maximum(np.asarray(tracks["dedx"], np.float64)[order], 1e-6)
    nhits = np.asarray(tracks["dedx_nhits"], np.float64)[order]
    dedx_pull = np.log(dedx / particles.expected_dedx(owner, conditions)) / particles.dedx_sigma(owner, nhits,
                                                                                                  conditions)
    cols = [dedx_pull, nhits, tof_pull]
    cols += [np.asarray(tracks[c], np.float64)[order] for c in ("fit_chi2", "fit_ndof", "mdc_first_layer",
                                                                  "mdc_last_layer", "muc_depth")]
    return np.column_stack([resid, cov, *cols])


def _energy_ref(particles: ParticleBatch, owner: np.ndarray, rank: np.ndarray, period: np.ndarray,
                conditions: Conditions) -> np.ndarray:
    """Energy scale of each shower's coordinate: the particle's energy for the first shower of a photon or an
    electron (which deposits it all), else 1 GeV (a MIP's deposit hardly depends on its momentum); times the run
    period's EMC energy scale for what particles deposit (noise is electronics: not scaled)."""
    safe = np.maximum(owner, 0)
    e = particles.p4[safe, 0]
    em = np.isin(np.abs(particles.pdg[safe]), (11, 22))
    scale = np.asarray([float(p.constants["Emc"]["energy_scale"]) for p in conditions.periods])[period]
    return np.where(owner >= 0, scale, 1.0) * np.where((owner >= 0) & (rank == 0) & em, np.maximum(e, 1e-3), 1.0)


def _shower_values(showers: Mapping[str, np.ndarray], idx: np.ndarray, particles: ParticleBatch,
                   owner: np.ndarray, rank: np.ndarray, period: np.ndarray, conditions: Conditions) -> np.ndarray:
    energy = np.maximum(np.asarray(showers["energy"], np.float64)[idx], 1e-6)
    theta = np.asarray(showers["theta"], np.float64)[idx]
    phi = np.asarray(showers["phi"], np.float64)[idx]
    own = owner >= 0
    safe = np.maximum(owner, 0)
    d_theta = np.where(own, theta - particles.theta_ref[safe], theta)
    d_phi = np.where(own, _wrap(phi - particles.phi_ref[safe]), phi)
    e5 = np.asarray(showers["e5x5"], np.float64)[idx]
    e3 = np.asarray(showers["e3x3"], np.float64)[idx]
    seed = np.asarray(showers["e_seed"], np.float64)[idx]
    return np.column_stack([
        np.log(energy / _energy_ref(particles, owner, rank, period, conditions)), d_theta, d_phi,
        np.asarray(showers["time"], np.float64)[idx], e5 / energy, np.where(e5 > 0, e3 / np.where(e5 > 0, e5, 1.0), 1.0),
        np.asarray(showers["second_moment"], np.float64)[idx], np.asarray(showers["lat_moment"], np.float64)[idx],
        np.where(e3 > 0, seed / np.where(e3 > 0, e3, 1.0), 1.0),
        np.asarray(showers["a20_moment"], np.float64)[idx], np.asarray(showers["a42_moment"], np.float64)[idx],
    ])


# --- the model --------------------------------------------------------------------------------------------------
class DetectorResponse(nn.Module):
    """The four conditional tables of the response and their context (see the module docstring).

    Args:
        condition_keys: the calibration constants in the context (names as :func:`flatten_constants` makes them).
        hypotheses: vocabulary of the stored Kalman-fit mass hypothesis.
        hidden: hidden widths of the networks.
        transforms: coupling transforms per flow.
        knots: quantile knots per column.
        shower_hidden: hidden widths of the shower table (the most sampled one: showers outnumber tracks).
        shower_transforms: its coupling transforms.
    """

    cond_mean: torch.Tensor
    cond_std: torch.Tensor
    cond_min: torch.Tensor
    cond_max: torch.Tensor
    domain_p: torch.Tensor
    domain_species: torch.Tensor

    def __init__(self, condition_keys: list[str], hypotheses: list[int], hidden: list[int], transforms: int,
                 knots: int, shower_hidden: list[int], shower_transforms: int, context_features: int = 0,
                 shower_context_features: int = 0) -> None:
        super().__init__()
        self.condition_keys = list(condition_keys)
        self.hypotheses = np.asarray(hypotheses, dtype=np.int64)
        n_cond = len(self.condition_keys)
        ctx = _N_PARTICLE_FEATURES + n_cond
        self.particle_table = ConditionalTable(0, [MAX_TRACKS + 1, MAX_SHOWERS + 1], ctx + _N_ENCODINGS, hidden, 1,
                                               knots)
        self.track_table = ConditionalTable(len(_MEASUREMENT), [2, 2, max(len(hypotheses), 1)],
                                            ctx + _N_ENCODINGS + 2, hidden, transforms, knots, groups=N_TRACK_GROUPS,
                                            context_features=context_features)
        self.covariance_table = ConditionalTable(len(_COVARIANCE), [], ctx + _N_ENCODINGS + 2 + _COV_EXTRA, hidden,
                                                 transforms, knots, groups=N_TRACK_GROUPS,
                                                 context_features=context_features)
        self.shower_table = ConditionalTable(len(SHOWER_COLUMNS), [MAX_CRYSTALS], ctx + _SHOWER_EXTRA,
                                             shower_hidden, shower_transforms, knots, groups=N_SHOWER_GROUPS,
                                             context_features=shower_context_features)
        self.noise_table = ConditionalTable(0, [MAX_NOISE + 1], n_cond, hidden, 1, knots)
        self.register_buffer("cond_mean", torch.zeros(n_cond, dtype=torch.float64))
        self.register_buffer("cond_std", torch.ones(n_cond, dtype=torch.float64))
        self.register_buffer("cond_min", torch.zeros(n_cond, dtype=torch.float64))
        self.register_buffer("cond_max", torch.zeros(n_cond, dtype=torch.float64))
        self.register_buffer("domain_p", torch.zeros(len(SPECIES) + 1, 2, dtype=torch.float64))
        self.register_buffer("domain_species", torch.zeros(len(SPECIES) + 1, dtype=torch.float64))

    # --- context ---------------------------------------------------------------------------------------------
    def condition_vectors(self, conditions: Conditions) -> np.ndarray:
        """``(periods, n_cond)`` standardised condition vectors of the conditions' periods."""
        if not self.condition_keys:
            return np.zeros((len(conditions.periods), 0))
        values = conditions.values(self.condition_keys)
        return (values - self.cond_mean.numpy()) / self.cond_std.numpy()

    def _particle_context(self, particles: ParticleBatch, cond: np.ndarray) -> np.ndarray:
        return np.column_stack([particles.features(), cond[particles.period]])

    def _shower_context(self, pctx: np.ndarray, owner: np.ndarray, rank: np.ndarray, n_showers: np.ndarray,
                        kappa: np.ndarray, flags: np.ndarray, period_cond: np.ndarray) -> np.ndarray:
        own = owner >= 0
        base = np.where(own[:, None], pctx[np.maximum(owner, 0)], 0.0)
        n_cond = period_cond.shape[1]
        if n_cond:  # noise showers keep the period's conditions
            base[:, -n_cond:] = period_cond
        extra = np.column_stack([
            (~own).astype(float), own & (rank == 0), np.minimum(rank, 8) / 4.0,
            np.where(own, np.minimum(n_showers[np.maximum(owner, 0)], MAX_SHOWERS) / 4.0, 0.0),
            np.clip(kappa, -1.0, 1.0) * 10.0, flags[:, 0], flags[:, 1],
        ])
        return np.column_stack([base, extra])

    # --- training ----------------------------------------------------------------------------------------------
    def fit(self, records: ResponseRecords, conditions: Conditions) -> None:
        """Standardisation of the conditions, quantile maps of every table, training domain."""
        if self.condition_keys:
            values = conditions.values(self.condition_keys)[records.event_period]
            self.cond_mean.copy_(torch.as_tensor(values.mean(axis=0)))
            self.cond_std.copy_(torch.as_tensor(np.maximum(values.std(axis=0), 1e-12)))
            self.cond_min.copy_(torch.as_tensor(values.min(axis=0)))
            self.cond_max.copy_(torch.as_tensor(values.max(axis=0)))
        group = _track_groups_of(records)
        self.track_table.fit(records.track_values[:, _MEASUREMENT], records.track_codes, group)
        self.covariance_table.fit(records.track_values[:, _COVARIANCE], np.zeros((group.size, 0), np.int64), group)
        self.shower_table.fit(records.shower_values, records.shower_codes, _shower_groups_of(records))
        species = _species_index(records.particles.pdg)
        p = records.particles.p
        for s in range(len(SPECIES) + 1):
            sel = species == s
            self.domain_species[s] = float(sel.sum())
            if sel.any():
                self.domain_p[s] = torch.as_tensor([float(p[sel].min()), float(p[sel].max())])

    def tensors(self, records: ResponseRecords, conditions: Conditions,
                rng: np.random.Generator) -> dict[str, dict[str, torch.Tensor]]:
        """Training tensors of the tables, by stream."""
        cond = self.condition_vectors(conditions)
        pctx = self._particle_context(records.particles, cond)
        pctx_enc = np.column_stack([pctx, records.particles.encodings()])
        particle = self.particle_table.encode(np.zeros((len(records.particles), 0)), records.particle_codes, pctx_enc,
                                              rng)
        tctx = np.column_stack([pctx_enc[records.track_particle], records.track_rank,
                                records.particle_codes[records.track_particle, 1] / 4.0])
        group = _track_groups_of(records)
        track = self.track_table.encode(records.track_values[:, _MEASUREMENT], records.track_codes, tctx, rng, group)
        cctx = np.column_stack([tctx, _covariance_context(records.track_values[:, _MEASUREMENT])])
        covariance = self.covariance_table.encode(records.track_values[:, _COVARIANCE],
                                                  np.zeros((group.size, 0), np.int64), cctx, rng, group)
        sctx = self._shower_context(pctx, records.shower_particle, records.shower_rank, records.particle_codes[:, 1],
                                    records.shower_track_kappa, records.shower_track_flags,
                                    cond[records.shower_period])
        shower = self.shower_table.encode(records.shower_values, records.shower_codes, sctx, rng,
                                          _shower_groups_of(records))
        noise = self.noise_table.encode(np.zeros((records.noise_counts.size, 0)), records.noise_counts[:, None],
                                        cond[records.event_period], rng)
        return {"particle": particle, "track": track, "covariance": covariance, "shower": shower, "noise": noise}

    def tables(self) -> dict[str, ConditionalTable]:
        """The conditional tables by stream name."""
        return {"particle": self.particle_table, "track": self.track_table, "covariance": self.covariance_table,
                "shower": self.shower_table, "noise": self.noise_table}

    def loss_terms(self, batch: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Mean negative log-likelihood of each table's batch."""
        return {name: -table.log_prob(batch[name]).mean() for name, table in self.tables().items() if name in batch}

    # --- sampling ------------------------------------------------------------------------------------------------
    def domain_fraction(self, particles: ParticleBatch, conditions: Conditions) -> float:
        """Fraction of ``particles`` outside the training domain: a species or momentum the training data did not
        cover, or calibration constants outside the training periods' range."""
        species = _species_index(particles.pdg)
        seen = self.domain_species.numpy()[species] > 0
        lo, hi = self.domain_p.numpy()[species].T
        p = particles.p
        outside = ~seen | (p < lo) | (p > hi)
        if self.condition_keys:
            values = conditions.values(self.condition_keys)[particles.period]
            tol = 1e-9 * np.maximum(np.abs(values), 1.0)
            out_cond = ((values < self.cond_min.numpy() - tol) | (values > self.cond_max.numpy() + tol)).any(axis=1)
            outside |= out_cond
        return float(outside.mean()) if len(particles) else 0.0

    @torch.no_grad()
    def respond(self, particles: ParticleBatch, conditions: Conditions, n_events: int, event_period: np.ndarray,
                seed: int = 0) -> dict[str, Any]:
        """Reconstructed tracks and showers of ``particles`` (events ``0..n_events-1``), in the layout's columns.

        Args:
            particles: the truth particles (sorted by event).
            conditions: calibration periods (``particles.period`` and ``event_period`` index them).
            n_events: number of events.
            event_period: period of every event (for its noise showers).
            seed: the draw's seed.

        Returns:
            ``{"tracks": {...}, "showers": {...}, "n_tracks": (n_events,), "n_showers": (n_events,)}``.
        """
        rng_seeds = np.random.SeedSequence([int(seed), 0x5E5]).generate_state(5)
        cond = self.condition_vectors(conditions)
        pctx = self._particle_context(particles, cond)
        pctx_enc = np.column_stack([pctx, particles.encodings()])
        n = len(particles)
        _, pcodes = self.particle_table.sample(torch.as_tensor(pctx_enc), seed=int(rng_seeds[0]))
        pcodes_np = pcodes.numpy()
        n_tracks, n_showers = pcodes_np[:, 0], pcodes_np[:, 1]
        # tracks
        t_owner = np.repeat(np.arange(n), n_tracks)
        t_rank = np.arange(t_owner.size) - np.searchsorted(t_owner, t_owner, side="left")
        tctx = np.column_stack([pctx_enc[t_owner], t_rank, n_showers[t_owner] / 4.0])
        t_group = track_groups(particles.pdg[t_owner], t_rank)
        measured, t_codes = self.track_table.sample(torch.as_tensor(tctx), seed=int(rng_seeds[1]), group=t_group)
        cctx = np.column_stack([tctx, _covariance_context(measured.numpy())])
        cov, _ = self.covariance_table.sample(torch.as_tensor(cctx), seed=int(rng_seeds[4]), group=t_group)
        t_values_np = np.zeros((t_owner.size, len(TRACK_COLUMNS)))
        t_values_np[:, _MEASUREMENT] = measured.numpy()
        t_values_np[:, _COVARIANCE] = cov.numpy()
        t_codes_np = t_codes.numpy()
        matched = (t_codes_np[:, 1] == 1) & (t_rank == 0) & (n_showers[t_owner] > 0)
        # showers
        kappa = np.zeros(n)
        flags = np.zeros((n, 2))
        r0 = t_rank == 0
        kappa[t_owner[r0]] = t_values_np[r0, TRACK_COLUMNS.index("d_kappa_rel")]
        flags[t_owner[r0], 0] = 1.0
        flags[t_owner[r0], 1] = matched[r0]
        s_owner = np.repeat(np.arange(n), n_showers)
        s_rank = np.arange(s_owner.size) - np.searchsorted(s_owner, s_owner, side="left")
        _, ncodes = self.noise_table.sample(torch.as_tensor(cond[event_period]), seed=int(rng_seeds[2]))
        n_noise = ncodes.numpy()[:, 0]
        noise_event = np.repeat(np.arange(n_events), n_noise)
        owner_all = np.concatenate([s_owner, np.full(noise_event.size, -1)])
        rank_all = np.concatenate([s_rank, np.zeros(noise_event.size, np.int64)])
        period_all = np.concatenate([particles.period[s_owner], event_period[noise_event]]).astype(np.int64)
        safe = np.maximum(owner_all, 0)
        sctx = self._shower_context(pctx, owner_all, rank_all, n_showers, np.where(owner_all >= 0, kappa[safe], 0.0),
                                    np.where((owner_all >= 0)[:, None], flags[safe], 0.0), cond[period_all])
        group = shower_groups(particles.pdg[safe], owner_all, rank_all)
        s_values, s_codes = self.shower_table.sample(torch.as_tensor(sctx), seed=int(rng_seeds[3]), group=group)
        shower_event = np.concatenate([particles.event[s_owner], noise_event]).astype(np.int64)
        return _assemble(particles, conditions, n_events, t_owner, t_rank, t_values_np, t_codes_np, matched,
                         self.hypotheses, owner_all, rank_all, s_values.numpy(), s_codes.numpy()[:, 0] + 1,
                         shower_event, period_all)


def _assemble(particles: ParticleBatch, conditions: Conditions, n_events: int, t_owner: np.ndarray,
              t_rank: np.ndarray, t_values: np.ndarray, t_codes: np.ndarray, matched: np.ndarray,
              hypotheses: np.ndarray, s_owner: np.ndarray, s_rank: np.ndarray, s_values: np.ndarray,
              s_crystals: np.ndarray, s_event: np.ndarray, s_period: np.ndarray) -> dict[str, Any]:
    """The layout's tables from sampled coordinates: derived fields by the reconstruction's formulas."""
    from vbes.datasets.detector import dedx_chi, emc_surface_point, helix_momentum, tof_chi, tof_path
    from vbes.datasets.emcfields import reconstructed_shower_fields
    from vbes.datasets.schema import mdc_layer_span, to_field_unit

    col = {name: i for i, name in enumerate(TRACK_COLUMNS)}
    v = t_values
    true = particles.helix[t_owner]
    kappa = true[:, 2] * (1.0 + v[:, col["d_kappa_rel"]])
    kappa = np.where(np.abs(kappa) > 1e-6, kappa, np.sign(true[:, 2] + 1e-30) * 1e-6)
    helix = np.column_stack([true[:, 0] + v[:, col["d_dr"]], _wrap(true[:, 1] + v[:, col["d_phi0"]]), kappa,
                             true[:, 3] + v[:, col["d_dz"]], true[:, 4] + v[:, col["d_tanl"]]])
    mom = helix_momentum(helix)
    p = np.linalg.norm(mom, axis=1)
    cos_theta = mom[:, 2] / np.maximum(p, 1e-12)
    ints = {c: np.rint(v[:, col[c]]).astype(np.int64) for c in _TRACK_INTEGERS}
    nhits = np.maximum(ints["dedx_nhits"], 1)
    first = np.clip(ints["mdc_first_layer"], -1, 42)
    last = np.clip(np.maximum(ints["mdc_last_layer"], first), -1, 42)
    dedx_log_ratio = v[:, col["dedx_pull"]] * particles.dedx_sigma(t_owner, nhits, conditions)
    dedx = np.exp(np.clip(dedx_log_ratio, -20, 20)) * particles.expected_dedx(t_owner, conditions)
    tof_residual = v[:, col["tof_pull"]] * particles.tof_sigma(t_owner, conditions)
    tof_present = t_codes[:, 0] == 1
    n_t = t_owner.size
    chi_dedx = np.zeros((n_t, 5))
    tof = np.full(n_t, np.nan)
    path = np.full(n_t, np.nan)
    chi_tof = np.full((n_t, 5), np.nan)
    t_period = particles.period[t_owner]
    for k, period in enumerate(conditions.periods):
        rows = np.flatnonzero(t_period == k)
        if rows.size == 0:
            continue
        c = period.constants
        chi_dedx[rows] = dedx_chi(dedx[rows], p[rows], nhits[rows], c["Dedx"])
        path_k, barrel_k, _ = tof_path(helix[rows], cos_theta[rows], c["Tof"], float(c["Mdc"]["bfield_t"]))
        beta = np.maximum(particles.beta[t_owner[rows]], 1e-6)
        tof_k = tof_residual[rows] + path_k / (beta * _C_CM_PER_NS)
        has = tof_present[rows]
        tof[rows] = np.where(has, tof_k, np.nan)
        path[rows] = np.where(has, path_k, np.nan)
        chi_tof[rows] = np.where(has[:, None], tof_chi(tof_k, path_k, p[rows], barrel_k, c["Tof"]), np.nan)

    # showers
    sc = {name: i for i, name in enumerate(SHOWER_COLUMNS)}
    sv = s_values
    own = s_owner >= 0
    safe = np.maximum(s_owner, 0)
    energy = np.exp(sv[:, sc["log_energy_ratio"]]) * _energy_ref(particles, s_owner, s_rank, s_period, conditions)
    theta = np.clip(np.where(own, particles.theta_ref[safe] + sv[:, sc["d_theta"]], sv[:, sc["d_theta"]]), 1e-4,
                    np.pi - 1e-4)
    phi = _wrap(np.where(own, particles.phi_ref[safe] + sv[:, sc["d_phi"]], sv[:, sc["d_phi"]]))
    n_sh = s_owner.size
    x, y, z = np.zeros(n_sh), np.zeros(n_sh), np.zeros(n_sh)
    module = np.zeros(n_sh, np.int8)
    for k, period in enumerate(conditions.periods):
        rows = np.flatnonzero(s_period == k)
        if rows.size:
            x[rows], y[rows], z[rows], module[rows] = emc_surface_point(theta[rows], phi[rows], period.constants["Emc"])
    n_crystals = s_crystals.astype(np.int16)
    e5x5 = energy * np.clip(sv[:, sc["e5x5_over_e"]], 0.0, None)
    e3x3 = e5x5 * np.clip(sv[:, sc["e3x3_over_e5x5"]], 0.0, 1.0)
    showers: dict[str, np.ndarray] = {
        "energy": energy, "x": x, "y": y, "z": z, "theta": theta, "phi": phi,
        "time": sv[:, sc["time"]], "module": module, "n_crystals": n_crystals, "e3x3": e3x3, "e5x5": e5x5,
        "second_moment": np.maximum(sv[:, sc["second_moment"]], 0.0),
        "lat_moment": np.clip(sv[:, sc["lat_moment"]], 0.0, 1.0),
        "e_seed": e3x3 * np.clip(sv[:, sc["seed_over_e3x3"]], 0.0, 1.0),
        "a20_moment": np.clip(sv[:, sc["a20_moment"]], 0.0, 1.0),
        "a42_moment": np.clip(sv[:, sc["a42_moment"]], 0.0, 1.0),
    }
    # events in order, most energetic shower first (as BOSS writes them)
    order = np.lexsort((-energy, s_event))
    showers = {k: a[order] for k, a in showers.items()}
    s_event_sorted = s_event[order]
    s_owner_sorted = s_owner[order]
    position = np.empty(order.size, np.int64)
    position[order] = np.arange(order.size) - np.searchsorted(s_event_sorted, s_event_sorted, side="left")
    rest = {k: np.zeros(order.size) for k in ("energy_err", "theta_err", "phi_err")}
    cell = np.zeros(order.size, np.int32)
    status = np.zeros(order.size, np.int32)
    s_period_sorted = s_period[order]
    for k, period in enumerate(conditions.periods):
        rows = np.flatnonzero(s_period_sorted == k)
        if rows.size == 0:
            continue
        fields = reconstructed_shower_fields({c: a[rows] for c, a in showers.items()}, s_event_sorted[rows],
                                             period.constants["Emc"])
        for name in rest:
            rest[name][rows] = fields[name]
        cell[rows], status[rows] = fields["cell_id"], fields["status"]
    showers.update(rest)
    showers["cell_id"], showers["status"] = cell, status
    showers["truth_index"] = np.where(s_owner_sorted >= 0, particles.truth_row[np.maximum(s_owner_sorted, 0)],
                                      -1).astype(np.int32)

    # the first track of a particle points at the particle's first shower (what it was drawn as)
    first_shower = np.full(len(particles), -1, dtype=np.int64)
    first_in_draw = np.flatnonzero(own & (s_rank == 0))
    first_shower[s_owner[first_in_draw]] = position[first_in_draw]
    first_energy = np.zeros(len(particles))
    first_energy[s_owner[first_in_draw]] = energy[first_in_draw]
    emc_index = np.where(matched, first_shower[t_owner], -1)
    tracks: dict[str, np.ndarray] = {
        "charge": np.sign(helix[:, 2]).astype(np.int8),
        "helix": helix,
        "helix_cov": _cov_packed(v[:, [col[f"cov_log_l{i}{i}" if i == j else f"cov_l{i}{j}_over_l{i}{i}"]
                                       for i, j in _COV]]),
        "p": p, "px": mom[:, 0], "py": mom[:, 1], "pz": mom[:, 2], "cos_theta": cos_theta,
        "phi": np.arctan2(mom[:, 1], mom[:, 0]),
        "mass_hypothesis": hypotheses[np.clip(t_codes[:, 2], 0, hypotheses.size - 1)].astype(np.int8),
        "dedx": dedx, "dedx_nhits": nhits.astype(np.int16), "chi_dedx": chi_dedx,
        "tof": tof, "tof_path": path, "chi_tof": chi_tof,
        "emc_energy": np.where(emc_index >= 0, first_energy[t_owner], 0.0),
        "emc_index": emc_index.astype(np.int32),
        "muc_depth": np.maximum(v[:, col["muc_depth"]], 0.0),
        "truth_index": particles.truth_row[t_owner].astype(np.int32),
        "fit_chi2": np.maximum(v[:, col["fit_chi2"]], 0.0),
        "fit_ndof": ints["fit_ndof"].astype(np.int16),
        "mdc_layers": mdc_layer_span(first, last),
        "dedx_ph": to_field_unit(dedx, "normPH", "tracks", "dedx_ph"),
        "mdc_first_layer": first.astype(np.int16),
        "mdc_last_layer": last.astype(np.int16),
    }
    t_event = particles.event[t_owner]
    return {
        "tracks": tracks,
        "showers": showers,
        "n_tracks": np.bincount(t_event, minlength=n_events).astype(np.int32),
        "n_showers": np.bincount(s_event, minlength=n_events).astype(np.int32),
    }


def _check_particles(particles: ParticleBatch) -> None:
    if len(particles) and np.any(np.diff(particles.event) < 0):
        raise InvalidInput("truth particles must be in event order")
    if not np.all(np.isfinite(particles.p4)):
        raise InvalidInput("truth particles with non-finite four-momenta")
    if len(particles) and np.any(particles.p4[:, 0] <= 0):
        raise ModelError("truth particles with non-positive energy")


# --- the family ----------------------------------------------------------------------------------------------------
def truth_particles(tables: Mapping[str, Mapping[str, np.ndarray]], conditions: Conditions) -> ParticleBatch:
    """The particles to respond to in event tables with a truth table: the generator's final particles (BOSS status
    bits), or every ``final`` row where the truth has no generator bits (a truth file of a new model)."""
    events, truth = tables["events"], tables["truth"]
    event_of, starts = event_offsets(events["n_truth"])
    if "status_flags" in truth and np.any((np.asarray(truth["status_flags"]) & 1) > 0):
        final = generator_final(truth)
    else:
        final = np.asarray(truth["final"]).astype(bool)
    rows = np.flatnonzero(final)
    p4 = np.stack([np.asarray(truth[c], np.float64)[rows] for c in ("e", "px", "py", "pz")], 1)
    vertex = np.stack([np.asarray(truth[c], np.float64)[rows] for c in ("vx", "vy", "vz")], 1)
    period = conditions.period_of(np.asarray(events["run"]))[event_of[rows]]
    batch = particle_batch(np.asarray(truth["pdg"])[rows], p4, vertex, event_of[rows], rows - starts[event_of[rows]],
                           period, conditions)
    _check_particles(batch)
    return batch


def objects_table(reco: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Reconstructed tracks and showers as one flat table (the served models' output): a row per object with
    ``event``, ``object`` (0 track, 1 shower), ``truth_index`` and the main measured quantities."""
    tracks, showers = reco["tracks"], reco["showers"]
    t_event, _ = event_offsets(reco["n_tracks"])
    s_event, _ = event_offsets(reco["n_showers"])
    nt, ns = t_event.size, s_event.size
    nan_t, nan_s = np.full(nt, np.nan), np.full(ns, np.nan)
    return {
        "event": np.concatenate([t_event, s_event]).astype(np.int64),
        "object": np.concatenate([np.zeros(nt, np.int64), np.ones(ns, np.int64)]),
        "truth_index": np.concatenate([tracks["truth_index"], showers["truth_index"]]).astype(np.int64),
        "charge": np.concatenate([tracks["charge"].astype(np.float64), nan_s]),
        "p": np.concatenate([tracks["p"], nan_s]),
        "cos_theta": np.concatenate([tracks["cos_theta"], np.cos(showers["theta"])]),
        "phi": np.concatenate([tracks["phi"], showers["phi"]]),
        "dedx": np.concatenate([tracks["dedx"], nan_s]),
        "tof": np.concatenate([tracks["tof"], nan_s]),
        "emc_energy": np.concatenate([tracks["emc_energy"], nan_s]),
        "muc_depth": np.concatenate([tracks["muc_depth"], nan_s]),
        "energy": np.concatenate([nan_t, showers["energy"]]),
        "time": np.concatenate([nan_t, showers["time"]]),
        "n_crystals": np.concatenate([nan_t, showers["n_crystals"].astype(np.float64)]),
    }


def response_config() -> dict[str, Any]:
    """Hyper-parameters of a :class:`DetectorResponse` and their defaults (shared by the families using one)."""
    return {"hidden": [64, 64], "transforms": 6, "knots": 512, "shower_hidden": [48, 48], "shower_transforms": 5,
            "context_features": 0, "shower_context_features": 0, "condition_keys": None, "hypotheses": None}


def build_response(config: Mapping[str, Any]) -> DetectorResponse:
    """The :class:`DetectorResponse` of a configuration whose derived keys are set."""
    return DetectorResponse(list(config["condition_keys"]), list(config["hypotheses"]),
                            [int(h) for h in config["hidden"]], int(config["transforms"]), int(config["knots"]),
                            [int(h) for h in config["shower_hidden"]], int(config["shower_transforms"]),
                            int(config["context_features"]), int(config["shower_context_features"]))


def training_conditions(model: Any, events: Mapping[str, np.ndarray]) -> Conditions:
    """The conditions the trainer attached, restricted to check that they cover the events' runs."""
    if model.conditions is None:
        raise ModelError(f"family {model.family} needs the calibration conditions of its training events")
    conditions: Conditions = model.conditions
    conditions.period_of(np.asarray(events["run"]))  # every run covered
    return conditions


def used_periods(conditions: Conditions, runs: np.ndarray) -> Conditions:
    """Only the periods the runs use (so conditioning keys come from what the data cover)."""
    return conditions.subset([int(i) for i in np.unique(conditions.period_of(runs))])


@register_family
class ResponseSurrogate(ModelFamily):
    """The detector-response surrogate family: :class:`DetectorResponse` trained on truth and reconstruction.

    Train it on particle guns of every species (``vbes generate gun``: flat in momentum and angle over the
    acceptance) together with the physics channels. ``sample(n, {"pdg", "p4", "vertex", "run"})`` responds to one
    particle per event; :meth:`respond_tables` to the truth of event tables.

    Args:
        config: :func:`response_config`'s keys (``condition_keys`` and ``hypotheses`` are set from the data).
    """

    family = "detector_response"
    capabilities = frozenset({"sample", "log_prob"})
    needs_conditions = True

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.response: DetectorResponse | None = None
        if self.config["condition_keys"] is not None:
            self.response = build_response(self.config)
        self.card.inputs = [{"name": n, "dtype": "<f8", "unit": u, "kind": "float"} for n, u in
                            (("pdg", ""), ("e", "GeV"), ("px", "GeV/c"), ("py", "GeV/c"), ("pz", "GeV/c"),
                             ("vx", "cm"), ("vy", "cm"), ("vz", "cm"), ("run", ""))]
        self.card.outputs = [{"name": "tracks", "kind": "table"}, {"name": "showers", "kind": "table"}]
        self.card.notes = [
            "derived fields (p, angles, chi(dE/dx), chi(TOF), TOF path, positions, crystal ids, errors) are "
            "computed with the reconstruction's formulas from the drawn measurements and the run's payloads",
            "a particle's tracks beyond 2 and showers beyond 15 are not modelled; only its first track is matched "
            "to a shower",
        ]

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**response_config(), "seed": 0}

    def _model(self) -> DetectorResponse:
        if self.response is None:
            raise ModelError(f"family {self.family}: fit_preprocessing has not run (no networks yet)")
        return self.response

    def fit_preprocessing(self, tables: Tables) -> None:
        conditions = used_periods(training_conditions(self, tables["events"]), tables["events"]["run"])
        self.conditions = conditions
        from vbes.models.conditions import varying_keys

        records = response_records(tables, conditions)
        if len(records.particles) == 0:
            raise ModelError(f"family {self.family}: the training events hold no generator final particles")
        self.config["condition_keys"] = varying_keys(conditions.periods)
        self.config["hypotheses"] = [int(h) for h in records.hypotheses]
        with self.seeded():
            self.response = build_response(self.config)
        self.response.fit(records, conditions)
        self.card.conditions = [{"name": k, "source": "calibration store, by tag and run"}
                                for k in self.config["condition_keys"]]
        self.card.training_domain = _response_domain(records, conditions)

    def on_load(self) -> None:
        stored = self.card.training_domain.get("conditions")
        if stored:
            self.conditions = Conditions.from_periods(stored["periods"], stored["ranges"])

    def make_tensors(self, tables: Tables) -> dict[str, dict[str, torch.Tensor]]:
        conditions = training_conditions(self, tables["events"])
        records = response_records(tables, conditions, np.asarray(self._model().hypotheses))
        return self._model().tensors(records, conditions, np.random.default_rng(int(self.config["seed"])))

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        terms = self._model().loss_terms(batch)
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}

    def log_prob(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Per-row model-space log-likelihoods of every table's rows, concatenated (particle, track, shower, noise).

        Args:
            batch: ``{table: rows}`` as :meth:`make_tensors` returns them.
        """
        tables = self._model().tables()
        return torch.cat([tables[name].log_prob(batch[name]) for name in tables if name in batch])

    def respond_tables(self, tables: Tables, conditions: Conditions | None = None, seed: int = 0,
                       repeats: int = 1) -> dict[str, Any]:
        """Event tables whose tracks and showers are the surrogate's response to their truth.

        Args:
            tables: event tables with ``events`` and ``truth``.
            conditions: calibration periods covering the events' runs (default: the training periods).
            seed: the draw's seed.
            repeats: responses per event (oversampling: event ``i`` of the output is truth event ``i // repeats``;
                see the module docstring for the statistics).
        """
        conditions = conditions or self.conditions
        if conditions is None:
            raise ModelError("no calibration conditions: pass the conditions of the events' runs")
        if repeats < 1:
            raise InvalidInput(f"repeats must be at least 1, not {repeats}")
        events = {k: np.repeat(np.asarray(v), repeats, axis=0) for k, v in tables["events"].items()}
        truth_rows = _repeat_rows(tables["events"]["n_truth"], repeats)
        truth = {k: np.asarray(v)[truth_rows] for k, v in tables["truth"].items()}
        out_tables: dict[str, dict[str, np.ndarray]] = {"events": events, "truth": truth}
        particles = truth_particles(out_tables, conditions)
        n_events = len(events["run"])
        reco = self._model().respond(particles, conditions, n_events, conditions.period_of(events["run"]), seed)
        events["n_tracks"], events["n_showers"] = reco["n_tracks"], reco["n_showers"]
        return {"events": events, "tracks": reco["tracks"], "showers": reco["showers"], "truth": truth}

    def sample_request(self, tables: Tables, n: int) -> dict[str, Any]:
        """The first ``n`` generator final particles of ``tables``, one per event, with their events' runs."""
        rows = self.records_of(tables)
        take = slice(0, n)
        return {"pdg": rows["pdg"][take], "p4": np.stack([rows[c][take] for c in ("e", "px", "py", "pz")], 1),
                "vertex": np.stack([rows[c][take] for c in ("vx", "vy", "vz")], 1), "run": rows["run"][take]}

    def sample(self, n: int, conditions: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
        """Responses to ``n`` particles, one per event.

        Args:
            n: number of particles.
            conditions: ``{"pdg": (n,), "p4": (n, 4), "vertex": (n, 3), "run": (n,)}`` and optionally
                ``"conditions"`` (a :class:`Conditions` covering the runs; default the training periods).
            seed: the draw's seed.
        """
        if conditions is None:
            raise InvalidInput("the response needs particles: conditions with pdg, p4, vertex and run")
        cond = conditions.get("conditions") or self.conditions
        pdg = np.asarray(conditions["pdg"], dtype=np.int64)
        if pdg.shape != (n,):
            raise InvalidInput(f"pdg must have shape ({n},)")
        runs = np.asarray(conditions["run"], dtype=np.int64)
        particles = particle_batch(pdg, np.asarray(conditions["p4"], np.float64),
                                   np.asarray(conditions["vertex"], np.float64), np.arange(n), np.zeros(n, np.int64),
                                   cond.period_of(runs), cond)
        _check_particles(particles)
        return self._model().respond(particles, cond, n, cond.period_of(runs), seed)

    def records_of(self, tables: Tables) -> dict[str, np.ndarray]:
        events, truth = tables["events"], tables["truth"]
        event_of, _ = event_offsets(events["n_truth"])
        rows = np.flatnonzero(generator_final(truth))
        out = {"event": event_of[rows].astype(np.int64), "run": np.asarray(events["run"])[event_of[rows]]}
        out["pdg"] = np.asarray(truth["pdg"])[rows]
        for c in ("e", "px", "py", "pz", "vx", "vy", "vz"):
            out[c] = np.asarray(truth[c], np.float64)[rows]
        return out

    def predict_records(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Reconstructed objects (:func:`objects_table`) of truth particle rows (``event`` groups them; seed 0).

        Args:
            rows: ``event, run, pdg, e, px, py, pz, vx, vy, vz``.
        """
        missing = [c for c in ("event", "run", "pdg", "e", "px", "py", "pz", "vx", "vy", "vz") if c not in rows]
        if missing:
            raise InvalidInput(f"truth rows lack the column(s) {', '.join(missing)}")
        if self.conditions is None:
            raise ModelError("the model holds no calibration conditions")
        event = np.asarray(rows["event"], dtype=np.int64)
        _, event_index = np.unique(event, return_inverse=True)
        order = np.argsort(event_index, kind="stable")
        n_events = int(event_index.max()) + 1 if event.size else 0
        runs_per_event = np.zeros(n_events, dtype=np.int64)
        runs_per_event[event_index[order]] = np.asarray(rows["run"], dtype=np.int64)[order]
        p4 = np.stack([np.asarray(rows[c], np.float64)[order] for c in ("e", "px", "py", "pz")], 1)
        vertex = np.stack([np.asarray(rows[c], np.float64)[order] for c in ("vx", "vy", "vz")], 1)
        counts = np.bincount(event_index, minlength=n_events)
        truth_row = np.arange(order.size) - np.repeat(np.cumsum(counts) - counts, counts)
        period_events = self.conditions.period_of(runs_per_event)
        particles = particle_batch(np.asarray(rows["pdg"], np.int64)[order], p4, vertex, event_index[order],
                                   truth_row, period_events[event_index[order]], self.conditions)
        _check_particles(particles)
        reco = self._model().respond(particles, self.conditions, n_events, period_events, seed=0)
        return objects_table(reco)


def _repeat_rows(counts: np.ndarray, repeats: int) -> np.ndarray:
    """Row indices of a per-event grouped table with every event repeated ``repeats`` times in a row."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    ev = np.repeat(np.arange(counts.size), repeats)
    c = counts[ev]
    return np.repeat(starts[ev], c) + (np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c))


def _response_domain(records: ResponseRecords, conditions: Conditions) -> dict[str, Any]:
    species = _species_index(records.particles.pdg)
    p = records.particles.p
    cos_t = records.particles.p4[:, 3] / np.maximum(p, 1e-12)
    per_species = {}
    for s in np.unique(species):
        sel = species == s
        name = str(SPECIES[s]) if s < len(SPECIES) else "other"
        per_species[name] = {"particles": int(sel.sum()), "p": [float(p[sel].min()), float(p[sel].max())],
                             "cos_theta": [float(cos_t[sel].min()), float(cos_t[sel].max())]}
    return {"particles": len(records.particles), "tracks": int(records.track_values.shape[0]),
            "showers": int(records.shower_values.shape[0]), "species": per_species,
            "conditions": conditions.as_dict()}
