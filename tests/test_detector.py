"""The BESIII-like detector response: helix convention, pulls, acceptances, PID χ's, calibration dependence,
comparison with the real BOSS DST, and ``vbes generate`` end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vbes.datasets.detector import default_constants, simulate_detector, true_helix
from vbes.datasets.generator import JpsiGenerator
from vbes.datasets.schema import unpack_symmetric
from vbes.datasets.simulation import simulate


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)])


def _matched_truth_rows(tables: dict) -> np.ndarray:
    tr_event = np.repeat(np.arange(tables["events"]["n_tracks"].size), tables["events"]["n_tracks"])
    return _offsets(tables["events"]["n_truth"])[tr_event] + tables["tracks"]["truth_index"]


@pytest.fixture(scope="module")
def kskpi() -> dict:
    return simulate("kskpi", 4000, runs=(-10000, -9001), seed=21)


def test_true_helix_agrees_with_pybes3(kskpi: dict) -> None:
    """Our helix of a displaced positive track, moved by pybes3 to the production point, has dr = dz = 0 and the
    true momentum. (pybes3's change_pivot uses an unsigned radius, so it is only an independent check for
    positive tracks; negative ones are checked through the mirror symmetry y -> -y, which flips the charge.)"""
    import pybes3.helix

    truth = kskpi["truth"]
    rows = np.flatnonzero((truth["pdg"] == 211) & (truth["final"] == 1))[:40]
    vertex = [truth[k][rows].astype(float) for k in ("vx", "vy", "vz")]
    helix = true_helix(np.ones(rows.size), truth["px"][rows], truth["py"][rows], truth["pz"][rows], *vertex, 1.0)
    assert np.max(np.hypot(vertex[0], vertex[1])) > 1.0  # some are K_S daughters
    for h, row in zip(helix, rows, strict=True):
        obj = pybes3.helix.HelixObject(*h)
        moved = obj.change_pivot((float(truth["vx"][row]), float(truth["vy"][row]), float(truth["vz"][row])))
        assert moved.dr == pytest.approx(0.0, abs=1e-3)
        assert moved.dz == pytest.approx(0.0, abs=1e-3)
        mom = moved.momentum
        assert [mom.px, mom.py, mom.pz] == pytest.approx([truth["px"][row], truth["py"][row], truth["pz"][row]],
                                                         abs=1e-6)
        assert obj.charge == 1
    negative = true_helix(-np.ones(rows.size), truth["px"][rows], -truth["py"][rows], truth["pz"][rows],
                          vertex[0], -vertex[1], vertex[2], 1.0)
    expected = np.column_stack([-helix[:, 0], np.pi - helix[:, 1], -helix[:, 2], helix[:, 3], helix[:, 4]])
    expected[:, 1] = (expected[:, 1] + np.pi) % (2 * np.pi) - np.pi
    np.testing.assert_allclose(negative, expected, atol=1e-9)


def _robust_sigma(x: np.ndarray) -> float:
    """σ of a Gaussian core from the median absolute deviation (insensitive to the tails)."""
    return float(1.482602 * np.median(np.abs(x - np.median(x))))


def test_helix_pulls_are_standard_normal() -> None:
    """The Gaussian core of every helix pull is N(0, 1) with the track's own covariance; beyond it, a tail far
    above a Gaussian's (beyond 4σ: 6.3e-5) from the second, wider component, as real track fits have."""
    tables = simulate("rhopi", 8000, runs=(-10000, -9001), seed=22)
    tr, truth = tables["tracks"], tables["truth"]
    rows = _matched_truth_rows(tables)
    # a pion that decayed in flight inside the MDC leaves a kinked track, which has no single true helix, and
    # an electron (π0 Dalitz decays) measures what is left after bremsstrahlung in the beam pipe
    undecayed = (truth["final"][rows] == 1) & (np.abs(truth["pdg"][rows]) != 11)
    tr, rows = {k: v[undecayed] for k, v in tr.items()}, rows[undecayed]
    charge = np.sign(truth["pdg"][rows]).astype(float)
    charge[np.abs(truth["pdg"][rows]) == 11] *= -1
    charge[np.abs(truth["pdg"][rows]) == 13] *= -1
    h_true = true_helix(charge, truth["px"][rows], truth["py"][rows], truth["pz"][rows], truth["vx"][rows].astype(float),
                        truth["vy"][rows].astype(float), truth["vz"][rows].astype(float), 1.0)
    cov = unpack_symmetric(tr["helix_cov"])
    residual = tr["helix"] - h_true
    residual[:, 1] = (residual[:, 1] + np.pi) % (2 * np.pi) - np.pi
    for k, name in enumerate(("dr", "phi0", "kappa", "dz", "tanl")):
        pull = residual[:, k] / np.sqrt(cov[:, k, k])
        assert np.median(pull) == pytest.approx(0.0, abs=0.05), name
        assert _robust_sigma(pull) == pytest.approx(1.0, abs=0.05), name
        assert 0.003 < np.mean(np.abs(pull) > 4) < 0.1, name  # a Gaussian: 6.3e-5
    # the full covariance, correlations included: chi² of 5 parameters has median 4.35 (its core)
    chi2 = np.einsum("ni,nij,nj->n", residual, np.linalg.inv(cov), residual)
    assert np.median(chi2) == pytest.approx(4.351, abs=0.25)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_acceptance_and_low_momentum_efficiency() -> None:
    truth = JpsiGenerator("inclusive", seed=23).generate(10000)
    reco = simulate_detector(truth, default_constants(), np.random.default_rng(23))
    truth = reco["truth"]  # the tracks' truth rows include the secondaries made in the material
    tr, sh = reco["tracks"], reco["showers"]
    # acceptance acts on the particle; the measured angle is smeared around it
    ev_of_track = np.repeat(np.arange(reco["n_tracks"].size), reco["n_tracks"])
    rows = _offsets(truth["n_truth"])[ev_of_track] + tr["truth_index"]
    assert np.all(np.abs(truth["pz"][rows] / np.sqrt(truth["px"][rows] ** 2 + truth["py"][rows] ** 2
                                                      + truth["pz"][rows] ** 2)) < 0.93)
    assert np.mean(np.abs(tr["cos_theta"]) < 0.935) > 0.995
    cos_sh = np.cos(sh["theta"])
    assert np.all(np.abs(cos_sh) < 0.9301)
    barrel = sh["module"] == 1
    assert np.all(np.abs(cos_sh[barrel]) < 0.8301) and np.all(np.abs(cos_sh[~barrel]) > 0.8499)
    assert set(np.unique(sh["module"][sh["z"] > 100])) == {0, 1}
    # efficiency: found / produced charged final particles in the MDC acceptance, by pT
    found = np.zeros(truth["pdg"].size, bool)
    found[_offsets(truth["n_truth"])[ev_of_track] + tr["truth_index"]] = True
    charged = (truth["final"] == 1) & np.isin(np.abs(truth["pdg"]), (11, 13, 211, 321, 2212))
    # the generator's particles: not the secondaries of the material (conversions, bremsstrahlung, decays)
    mother_pdg = truth["pdg"][_offsets(truth["n_truth"])[:-1][truth["event"]] + np.maximum(truth["mother"], 0)]
    charged &= ~np.isin(np.abs(mother_pdg), (11, 22, 211, 321))
    pt = np.hypot(truth["px"], truth["py"])
    cos = truth["pz"] / np.sqrt(pt**2 + truth["pz"] ** 2)
    inside = charged & (np.abs(cos) < 0.9)
    low = found[inside & (pt < 0.08)].mean()
    high = found[inside & (pt > 0.3)].mean()
    assert high > 0.97 and low < 0.6


def test_pid_chis_of_the_true_hypothesis() -> None:
    """dE/dx and TOF χ of the true particle type are N(0, 1); the wrong hypothesis is far off at low momentum."""
    tables = simulate("ppbar", 4000, runs=(-10000, -9001), seed=24)
    tr = tables["tracks"]
    chi_p = tr["chi_dedx"][:, 4]
    assert np.std(chi_p) == pytest.approx(1.0, abs=0.08)
    hit = np.isfinite(tr["tof"])
    assert 0.8 < hit.mean() < 0.99
    assert np.std(tr["chi_tof"][hit, 4]) == pytest.approx(1.0, abs=0.08)
    # at 1.23 GeV/c protons and pions are separated by TOF by several σ
    assert np.median(np.abs(tr["chi_tof"][hit, 2])) > 5


def test_truth_matching(kskpi: dict) -> None:
    tr, truth = kskpi["tracks"], kskpi["truth"]
    rows = _matched_truth_rows(kskpi)
    p_true = np.sqrt(truth["px"][rows] ** 2 + truth["py"][rows] ** 2 + truth["pz"][rows] ** 2)
    assert np.median(np.abs(tr["p"] - p_true) / p_true) < 0.01
    # matched to a final particle, or to a pion/kaon whose decay in flight left a kinked track
    assert np.all((truth["final"][rows] == 1) | np.isin(np.abs(truth["pdg"][rows]), (211, 321)))
    sh = kskpi["showers"]
    assert (sh["truth_index"] == -1).any() and (sh["truth_index"] >= 0).any()  # noise and real showers
    own = tr["emc_index"] >= 0
    assert np.all(tr["emc_energy"][own] > 0) and np.all(tr["emc_energy"][~own] == 0)


def test_shower_multiplicity_like_the_real_boss_file(shared_data: Path) -> None:
    """ρπ events have as many showers as the real BOSS DST (4–12, mean ≈ 7.5, ≈ 45 % below 50 MeV)."""
    import awkward as ak
    import pybes3.emc  # (also registers the BESIII classes with uproot)
    import uproot

    with uproot.open(shared_data / "besiii-boss-jpsi-rhopi-10evt.dst") as f:
        emc = f["Event"]["TDstEvent/m_emcTrackCol"].array()
    energy, time = emc["m_energy"], emc["m_time"]
    real_counts = ak.num(energy).to_numpy()
    real_low = float(np.mean(ak.flatten(energy).to_numpy() < 0.05))
    ours = simulate("rhopi", 5000, runs=(-10000, -9001), seed=25)
    counts = ours["events"]["n_showers"]
    assert np.mean(counts) == pytest.approx(np.mean(real_counts), abs=1.0)
    assert np.mean(ours["showers"]["energy"] < 0.05) == pytest.approx(real_low, abs=0.1)
    lo, hi = np.quantile(counts, [0.05, 0.95])
    assert lo >= real_counts.min() - 2 and hi <= real_counts.max() + 2
    # the real file's shower times (TDC ticks of 50 ns converted to ns by pybes3's rule): ours peak where
    # they do, within one tick
    real_time = pybes3.emc.emc_tdc_to_time(ak.flatten(time).to_numpy().astype(np.int64))
    assert np.median(ours["showers"]["time"]) == pytest.approx(np.median(real_time), abs=50.0)


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory: pytest.TempPathFactory):
    from vbes.calibration import CalibrationStore

    store = CalibrationStore(f"sqlite:///{tmp_path_factory.mktemp('calib') / 'calib.sqlite'}")
    store.init_defaults()
    yield store
    store.close()


def test_run_ranges_use_their_own_calibration(sim_store) -> None:
    """Two MC periods with different EMC energy scales (synthetic 0.985 vs 1.015) give different E/p."""
    def e_over_p(runs: tuple[int, int]) -> float:
        t = simulate("ee", 6000, runs=runs, seed=26, store=sim_store)
        own = t["tracks"]["emc_index"] >= 0
        return float(np.median(t["tracks"]["emc_energy"][own] / t["tracks"]["p"][own]))

    scale_b = sim_store.get("BOSS-6.6.4-sim-2", "Emc", -25000).constants["energy_scale"]
    scale_c = sim_store.get("BOSS-6.6.4-sim-2", "Emc", -15000).constants["energy_scale"]
    assert scale_b != scale_c
    ratio = e_over_p((-15100, -15001)) / e_over_p((-25100, -25001))
    assert ratio == pytest.approx(scale_c / scale_b, abs=0.006)


def test_generate_command_end_to_end(run_cli, vbes_home: Path, tmp_path: Path) -> None:
    from vbes.calibration import CalibrationStore
    from vbes.datasets import file_info, read_events

    from vbes.settings import load_settings

    assert run_cli("calib", "init").exit_code == 0
    out = tmp_path / "rhopi.h5"
    # the run range straddles the synthetic period boundary at -10000/-10001
    result = run_cli("generate", "rhopi", "-n", "3000", "-o", out, "--runs=-10010:-9991", "--seed", "5")
    assert result.exit_code == 0, result.stderr
    info = file_info(out)
    assert info["n_events"] == 3000
    prov = info["provenance"]
    assert prov["channel"] == "rhopi" and prov["seed"] == 5 and prov["runs"] == [-10010, -9991]
    assert prov["calibration_tag"] == "BOSS-6.6.4-sim-2"
    with CalibrationStore.from_settings(load_settings()) as store:
        for run in (-10010, -9991):
            for ptype in ("Emc", "Tof", "Mdc", "Dedx", "Muc", "Beam"):
                recorded = prov["calibration_payloads"][ptype]
                recorded = [recorded] if isinstance(recorded, str) else recorded
                assert store.get("BOSS-6.6.4-sim-2", ptype, run).sha256 in recorded
    assert len(prov["calibration_payloads"]["Emc"]) == 2
    events = read_events(out)
    assert events["events"]["run"].min() == -10010 and events["events"]["run"].max() == -9991
    # same seed, same arrays, also through the file
    again = tmp_path / "again.h5"
    assert run_cli("generate", "rhopi", "-n", "3000", "-o", again, "--runs=-10010:-9991", "--seed", "5").exit_code == 0
    assert file_info(again)["digest"] == info["digest"]


def test_generate_command_errors(run_cli, vbes_home: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    result = run_cli("generate", "rhopi", "-n", "10", "-o", out, "--runs=-10:-20")
    assert result.exit_code == 1 and "--runs" in result.stderr
    result = run_cli("generate", "rhopi", "-n", "10", "-o", out, "--runs=-20:-10")
    assert result.exit_code == 1 and "calib init" in result.stderr  # no store initialised yet
    assert not out.exists()
    assert run_cli("calib", "init").exit_code == 0
    result = run_cli("generate", "rhopi", "-n", "10", "-o", out, "--runs=5:10")
    assert result.exit_code == 1 and "no Beam" in result.stderr and not out.exists()
