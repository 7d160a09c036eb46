"""Physics acceptance of the reference samples: reconstructed quantities against known numbers (PDG, MISSION.md).

Nothing here compares the simulation with its own output: peaks are compared with PDG masses, widths with the
BESIII resolutions quoted in MISSION.md, angular fits with the input laws (1 + cos²θ, α = 0.6, sin²θ').
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import curve_fit
from vbes.datasets.detector import default_constants, simulate_detector
from vbes.datasets.generator import JpsiGenerator
from vbes.datasets.simulation import simulate

# PDG 2024 (GeV/c^2) and MISSION.md
M_PI0, M_KS, M_RHO, M_JPSI, M_MU, M_PI = 0.1349768, 0.497611, 0.77526, 3.0969, 0.1056584, 0.13957039
CROSSING = 0.011  # rad per beam (MISSION.md)
P_STAR_MUMU = np.sqrt(M_JPSI**2 / 4 - M_MU**2)  # 1.5448 GeV/c


def _event_index(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(counts.size), counts)


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)])


def _gauss_peak(values: np.ndarray, lo: float, hi: float, bins: int = 80) -> tuple[float, float]:
    """Mean and width of a Gaussian (+ linear background) fitted to the peak in [lo, hi]."""
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    x = 0.5 * (edges[1:] + edges[:-1])

    def model(x: np.ndarray, n: float, mu: float, s: float, a: float, b: float) -> np.ndarray:
        return n * np.exp(-0.5 * ((x - mu) / s) ** 2) + a + b * (x - mu)

    p0 = [counts.max(), x[np.argmax(counts)], (hi - lo) / 10, counts.min(), 0.0]
    par, _ = curve_fit(model, x, counts, p0=p0, sigma=np.sqrt(counts + 1.0), maxfev=20000)
    return float(par[1]), abs(float(par[2]))


def _boost_to_jpsi_frame(px: np.ndarray, py: np.ndarray, pz: np.ndarray, mass: float) -> np.ndarray:
    """Momentum magnitude in the J/ψ frame (the lab moves with β = sin(11 mrad) along +x)."""
    beta = np.sin(CROSSING)
    gamma = 1 / np.sqrt(1 - beta**2)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    px_star = gamma * (px - beta * e)
    return np.sqrt(px_star**2 + py**2 + pz**2)


def _shower_p4(showers: dict[str, np.ndarray], vertex_z: np.ndarray) -> np.ndarray:
    """Photon four-momenta from shower energy and position seen from the reconstructed vertex."""
    d = np.stack([showers["x"], showers["y"], showers["z"] - vertex_z], 1)
    d /= np.linalg.norm(d, axis=1)[:, None]
    e = showers["energy"].astype(float)
    return np.column_stack([d * e[:, None], e])


def _mass(*p4: np.ndarray) -> np.ndarray:
    tot = sum(p4)
    return np.sqrt(np.maximum(tot[:, 3] ** 2 - np.sum(tot[:, :3] ** 2, axis=1), 0.0))


def _p4(px: np.ndarray, py: np.ndarray, pz: np.ndarray, m: float) -> np.ndarray:
    return np.column_stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)])


@pytest.fixture(scope="module")
def rhopi() -> dict:
    return simulate("rhopi", 30000, runs=(-10000, -9001), seed=11)


@pytest.fixture(scope="module")
def mumu() -> dict:
    return simulate("mumu", 20000, runs=(-10000, -9001), seed=12)


def _two_track_events(tables: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events with exactly two opposite-charge tracks: (event ids, index of the + track, index of the − track)."""
    ev = tables["events"]
    tr = tables["tracks"]
    off = _offsets(ev["n_tracks"])
    two = np.flatnonzero(ev["n_tracks"] == 2)
    first, second = off[two], off[two] + 1
    opposite = tr["charge"][first] != tr["charge"][second]
    two, first, second = two[opposite], first[opposite], second[opposite]
    plus = np.where(tr["charge"][first] > 0, first, second)
    minus = np.where(tr["charge"][first] > 0, second, first)
    return two, plus, minus


def _pi0_candidates(tables: dict, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two most energetic showers not matched to a track, per event; (event mask, photon pair p4 sum)."""
    ev, sh, tr = tables["events"], tables["showers"], tables["tracks"]
    sh_event = _event_index(ev["n_showers"])
    matched = np.zeros(sh["energy"].size, bool)
    tr_event = _event_index(ev["n_tracks"])
    own = tr["emc_index"] >= 0
    matched[_offsets(ev["n_showers"])[tr_event[own]] + tr["emc_index"][own]] = True
    neutral = np.flatnonzero(~matched & (sh["energy"] > 0.025))
    neutral = neutral[np.lexsort((-sh["energy"][neutral], sh_event[neutral]))]
    counts = np.bincount(sh_event[neutral], minlength=ev["run"].size)
    start = _offsets(counts)[:-1]
    ok = counts[events] >= 2
    events = events[ok]
    g1, g2 = neutral[start[events]], neutral[start[events] + 1]
    # vertex z from the tracks of the event (the beam spot is 1.5 cm long)
    dz = tr["helix"][:, 3]
    vz = np.bincount(tr_event, weights=dz, minlength=ev["run"].size) / np.maximum(ev["n_tracks"], 1)
    p_g1 = _shower_p4({k: sh[k][g1] for k in ("x", "y", "z", "energy")}, vz[events])
    p_g2 = _shower_p4({k: sh[k][g2] for k in ("x", "y", "z", "energy")}, vz[events])
    return ok, p_g1 + p_g2


def test_pi0_mass_peak_and_width(rhopi: dict) -> None:
    """π0 → γγ peaks at the PDG mass with a BESIII-like width (MISSION.md: ≈ 5–7 MeV)."""
    events, _, _ = _two_track_events(rhopi)
    _, pair = _pi0_candidates(rhopi, events)
    mean, width = _gauss_peak(_mass(pair), 0.08, 0.19)
    assert mean == pytest.approx(M_PI0, abs=0.002)
    assert 0.004 < width < 0.0085


def test_rho_peak_and_helicity_pattern(rhopi: dict) -> None:
    """J/ψ → ρπ: the ρ0 → π+π− band peaks at 775 MeV, and the ρ decay angle follows sin²θ' (helicity ±1)."""
    events, plus, minus = _two_track_events(rhopi)
    tr = rhopi["tracks"]
    ok, pi0 = _pi0_candidates(rhopi, events)
    plus, minus = plus[ok], minus[ok]
    p_plus = _p4(tr["px"][plus], tr["py"][plus], tr["pz"][plus], M_PI)
    p_minus = _p4(tr["px"][minus], tr["py"][minus], tr["pz"][minus], M_PI)
    pi0_mass = _mass(pi0)
    good = np.abs(pi0_mass - M_PI0) < 0.02
    m_pm = _mass(p_plus, p_minus)[good]
    m_p0 = _mass(p_plus, pi0)[good]
    m_m0 = _mass(p_minus, pi0)[good]
    # ρ0 events: the π+π− mass in the ρ band and the other two pairs far from it (Dalitz-plot separation)
    rho0 = (m_p0 > 1.1) & (m_m0 > 1.1)
    counts, edges = np.histogram(m_pm[rho0], bins=40, range=(0.4, 1.2))
    centre = 0.5 * (edges[1:] + edges[:-1])
    smooth = np.convolve(counts, np.ones(3) / 3, mode="same")
    assert centre[np.argmax(smooth)] == pytest.approx(M_RHO, abs=0.03)
    peak_mean, peak_width = _gauss_peak(m_pm[rho0], 0.55, 1.0, bins=45)
    assert peak_mean == pytest.approx(M_RHO, abs=0.025)
    assert 0.04 < peak_width < 0.1  # Γ(ρ) = 149 MeV -> Gaussian core σ ≈ 50-70 MeV


def _rho_decay_cos(tables: dict) -> np.ndarray:
    """cosθ' of the π+ in the ρ0 rest frame relative to the ρ0 flight direction, from reconstructed tracks."""
    events, plus, minus = _two_track_events(tables)
    tr = tables["tracks"]
    ok, pi0 = _pi0_candidates(tables, events)
    plus, minus = plus[ok], minus[ok]
    p_plus = _p4(tr["px"][plus], tr["py"][plus], tr["pz"][plus], M_PI)
    p_minus = _p4(tr["px"][minus], tr["py"][minus], tr["pz"][minus], M_PI)
    good = (np.abs(_mass(pi0) - M_PI0) < 0.02) & (_mass(p_plus, pi0) > 1.1) & (_mass(p_minus, pi0) > 1.1)
    rho = (p_plus + p_minus)[good]
    beta = rho[:, :3] / rho[:, 3:4]
    b2 = np.sum(beta**2, 1)
    gamma = 1 / np.sqrt(1 - b2)
    q = p_plus[good]
    bq = np.sum(beta * q[:, :3], 1)
    q_rest = q[:, :3] + ((gamma - 1) * bq / b2 - gamma * q[:, 3])[:, None] * beta
    return np.sum(q_rest * beta, 1) / (np.linalg.norm(q_rest, axis=1) * np.sqrt(b2))


def _fit_quadratic_shape(cos: np.ndarray, weights_per_bin: np.ndarray | None, bins: int, lim: float) -> tuple:
    counts, edges = np.histogram(cos, bins=bins, range=(-lim, lim))
    x = 0.5 * (edges[1:] + edges[:-1])
    err = np.sqrt(counts + 1.0)
    if weights_per_bin is not None:
        counts, err = counts / weights_per_bin, err / weights_per_bin
    par, cov = curve_fit(lambda x, n, a: n * (1 + a * x**2), x, counts, p0=[counts.mean(), 0.0], sigma=err)
    return float(par[1]), float(np.sqrt(cov[1, 1]))


def test_rho_helicity_sin2(rhopi: dict) -> None:
    """The ρ decay angle: 1 + a cos²θ' fitted to the acceptance-corrected data gives a = −1 (pure sin²θ').

    The acceptance comes from Pythia's isotropic decays through the same detector (flat in cosθ').
    """
    cos_data = _rho_decay_cos(rhopi)
    truth = JpsiGenerator("rhopi", seed=5, angular=False).generate(30000)
    reco = simulate_detector(truth, default_constants(-9500), np.random.default_rng(5))
    n = truth["n_truth"].size
    iso_tables = {
        "events": {"n_tracks": reco["n_tracks"], "n_showers": reco["n_showers"], "run": np.zeros(n)},
        "tracks": reco["tracks"], "showers": reco["showers"],
    }
    cos_iso = _rho_decay_cos(iso_tables)
    bins, lim = 10, 0.9
    acceptance, _ = np.histogram(cos_iso, bins=bins, range=(-lim, lim))
    a, err = _fit_quadratic_shape(cos_data, acceptance / acceptance.mean(), bins, lim)
    assert a == pytest.approx(-1.0, abs=max(3 * err, 0.08))
    # the correction itself: a second, independent isotropic sample corrected with the first one's acceptance
    # is flat (a = 0, as an isotropic decay is), and the measured a is many errors away from that
    truth_b = JpsiGenerator("rhopi", seed=6, angular=False).generate(30000)
    reco_b = simulate_detector(truth_b, default_constants(-9500), np.random.default_rng(6))
    cos_iso_b = _rho_decay_cos({
        "events": {"n_tracks": reco_b["n_tracks"], "n_showers": reco_b["n_showers"], "run": np.zeros(n)},
        "tracks": reco_b["tracks"], "showers": reco_b["showers"],
    })
    a_iso, err_iso = _fit_quadratic_shape(cos_iso_b, acceptance / acceptance.mean(), bins, lim)
    assert abs(a_iso) < max(3 * err_iso, 0.05)
    assert abs(a - a_iso) > 5 * np.hypot(err, err_iso)


def test_mumu_momentum_peak_resolution_and_pulls(mumu: dict) -> None:
    """μ+μ−: p* peaks at 1.545 GeV/c in the J/ψ frame with σp/p ≈ 0.6–0.7 %; pulls from the covariance are N(0,1)."""
    from vbes.datasets.detector import helix_momentum_covariance
    from vbes.datasets.schema import unpack_symmetric

    tr, truth = mumu["tracks"], mumu["truth"]
    p_star = _boost_to_jpsi_frame(tr["px"].astype(float), tr["py"].astype(float), tr["pz"].astype(float), M_MU)
    mean, width = _gauss_peak(p_star, 1.50, 1.58, bins=80)
    assert mean == pytest.approx(P_STAR_MUMU, abs=0.002)
    assert 0.0055 < width / mean < 0.0075
    # pulls against the truth particle each track is matched to
    tr_event = _event_index(mumu["events"]["n_tracks"])
    truth_row = _offsets(mumu["events"]["n_truth"])[tr_event] + tr["truth_index"]
    p_true = np.sqrt(truth["px"][truth_row] ** 2 + truth["py"][truth_row] ** 2 + truth["pz"][truth_row] ** 2)
    sigma = np.sqrt(helix_momentum_covariance(tr["helix"], unpack_symmetric(tr["helix_cov"])))
    pull = (np.sqrt(1 + tr["helix"][:, 4] ** 2) / np.abs(tr["helix"][:, 2]) - p_true) / sigma
    # the Gaussian core (median absolute deviation; the fit tails and FSR sit outside it)
    assert np.median(pull) == pytest.approx(0.0, abs=0.05)
    assert 1.482602 * np.median(np.abs(pull - np.median(pull))) == pytest.approx(1.0, abs=0.05)


def test_muon_mip_peak(mumu: dict) -> None:
    """Muons leave a minimum-ionising deposit peaking at ≈ 0.16–0.2 GeV in the CsI(Tl) crystals."""
    e = mumu["tracks"]["emc_energy"][mumu["tracks"]["emc_index"] >= 0]
    counts, edges = np.histogram(e, bins=60, range=(0.0, 0.6))
    mode = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    assert 0.15 < mode < 0.22


def test_electron_e_over_p() -> None:
    """Electrons deposit their energy: E/p ≈ 1."""
    ee = simulate("ee", 10000, runs=(-10000, -9001), seed=13)
    tr = ee["tracks"]
    has = tr["emc_index"] >= 0
    e_over_p = tr["emc_energy"][has] / tr["p"][has]
    mean, _ = _gauss_peak(e_over_p, 0.85, 1.1)
    assert mean == pytest.approx(1.0, abs=0.02)


def _lepton_cos_theta(tables: dict) -> np.ndarray:
    """cosθ of the negative track of two-track events (lab frame: the 34 MeV/c boost changes it by < 0.01)."""
    _events, _plus, minus = _two_track_events(tables)
    tr = tables["tracks"]
    return tr["cos_theta"][minus].astype(float)


@pytest.mark.parametrize(("channel", "alpha"), [("ee", 1.0), ("mumu", 1.0), ("ppbar", 0.6)])
def test_two_body_angular_distribution(channel: str, alpha: float, mumu: dict) -> None:
    """1 + α cos²θ fitted to reconstructed events within the acceptance gives back α (1 for leptons, 0.6 for p p̄)."""
    tables = mumu if channel == "mumu" else simulate(channel, 20000, runs=(-10000, -9001), seed=14)
    cos = _lepton_cos_theta(tables)
    fitted, err = _fit_quadratic_shape(cos, None, bins=16, lim=0.8)
    assert fitted == pytest.approx(alpha, abs=max(3 * err, 0.08))


def _ks_candidates(tables: dict) -> np.ndarray:
    """π+π− masses of opposite-charge track pairs, with momenta taken at the 2D intersection of their circles."""
    from vbes.datasets.detector import CM_PER_GEV_TESLA

    ev, tr = tables["events"], tables["tracks"]
    off = _offsets(ev["n_tracks"])
    pairs_a, pairs_b = [], []
    max_n = int(ev["n_tracks"].max())
    for i in range(max_n):  # loops over track slots, not particles: vectorised across events
        for j in range(i + 1, max_n):
            ok = ev["n_tracks"] > j
            a, b = off[:-1][ok] + i, off[:-1][ok] + j
            opposite = tr["charge"][a] != tr["charge"][b]
            pairs_a.append(a[opposite])
            pairs_b.append(b[opposite])
    a, b = np.concatenate(pairs_a), np.concatenate(pairs_b)
    h = tr["helix"]
    momenta = []
    centres, radii = [], []
    for k in (a, b):
        rho = CM_PER_GEV_TESLA / h[k, 2]  # signed radius for B = 1 T
        centres.append(np.stack([(h[k, 0] + rho) * np.cos(h[k, 1]), (h[k, 0] + rho) * np.sin(h[k, 1])], 1))
        radii.append(np.abs(rho))
    d = np.linalg.norm(centres[1] - centres[0], axis=1)
    ra, rb = radii
    along = (d**2 + ra**2 - rb**2) / (2 * d)
    across = np.sqrt(np.maximum(ra**2 - along**2, 0.0))
    unit = (centres[1] - centres[0]) / d[:, None]
    normal = np.stack([-unit[:, 1], unit[:, 0]], 1)
    base = centres[0] + along[:, None] * unit
    cands = [base + across[:, None] * normal, base - across[:, None] * normal]
    # the decay point is the intersection nearer the origin that lies ahead of the momenta
    vertex = np.where((np.linalg.norm(cands[0], axis=1) < np.linalg.norm(cands[1], axis=1))[:, None], *cands)
    for k, c in zip((a, b), centres, strict=True):
        # momentum direction at the vertex: perpendicular to the radius, in the sense of motion
        radial = vertex - c
        q = np.sign(h[k, 2])
        tangent = np.stack([-radial[:, 1], radial[:, 0]], 1) * (-q)[:, None]
        tangent /= np.linalg.norm(tangent, axis=1)[:, None]
        pt = 1 / np.abs(h[k, 2])
        momenta.append(_p4(tangent[:, 0] * pt, tangent[:, 1] * pt, h[k, 4] * pt, M_PI))
    return _mass(*momenta)


def test_ks_mass_peak_and_width() -> None:
    """K_S → π+π− peaks at the PDG mass with a BESIII-like width (MISSION.md: ≈ 2–3 MeV)."""
    tables = simulate("kskpi", 15000, runs=(-10000, -9001), seed=15)
    mean, width = _gauss_peak(_ks_candidates(tables), 0.46, 0.535, bins=75)
    assert mean == pytest.approx(M_KS, abs=0.001)
    assert 0.0015 < width < 0.0035
