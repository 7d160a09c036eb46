"""The J/ψ generator: decay table vs PDG, crossing-angle boost, beam spot, FSR switch, channels, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from vbes.datasets.generator import JpsiGenerator, jpsi_table
from vbes.datasets.simulation import assign_runs, parse_runs, simulate

from vbes.errors import InvalidInput

# PDG J/ψ branching fractions quoted in MISSION.md
PDG = {"ee": 5.97e-2, "mumu": 5.96e-2, "rhopi": 1.69e-2, "ppbar": 2.12e-3}
# BESIII's own measurement, Phys. Rev. D 86 (2012) 032014: B(J/ψ → p p̄) = (2.112 ± 0.004 ± 0.031) × 10⁻³
BESIII_PPBAR, BESIII_PPBAR_ERR = 2.112e-3, np.hypot(0.004e-3, 0.031e-3)
CHANNELS = {"ee": [(-11, 11)], "mumu": [(-13, 13)], "ppbar": [(-2212, 2212)],
            "rhopi": [(111, 113), (-211, 213), (-213, 211)]}


def test_decay_table_matches_pdg() -> None:
    """Pythia's own J/ψ table agrees with PDG within 1 % (relative) for e+e−, μ+μ−, ρπ; it sums to one.

    (p p̄ is not in Pythia's table; the code adds it, so its rate is checked on generated events below.)
    """
    table = jpsi_table()
    assert sum(br for _, br in table) == pytest.approx(1.0, abs=1e-9)
    for name, channels in CHANNELS.items():
        if name == "ppbar":
            continue
        fraction = sum(br for prod, br in table if prod in channels)
        assert fraction == pytest.approx(PDG[name], rel=0.01), name


def test_inclusive_sample_has_table_fractions() -> None:
    """In generated inclusive decays, e+e− and μ+μ− pairs occur at the PDG rate (4 σ binomial tolerance)."""
    truth = JpsiGenerator("inclusive", seed=4).generate(20000)
    n = truth["n_truth"].size
    first = np.concatenate([[0], np.cumsum(truth["n_truth"])[:-1]])
    # the J/ψ's first two daughters follow it in the record
    d1, d2 = np.abs(truth["pdg"][first + 1]), np.abs(truth["pdg"][first + 2])
    for code, name in ((11, "ee"), (13, "mumu")):
        count = np.sum((d1 == code) & (d2 == code))
        expected = PDG[name] * n
        assert abs(count - expected) < 4 * np.sqrt(expected), name


def test_inclusive_ppbar_rate_is_besiii_s_measurement() -> None:
    """Generated inclusive J/ψ decays go to p p̄ at BESIII's measured rate (4 σ: Poisson ⊕ measurement error)."""
    truth = JpsiGenerator("inclusive", seed=8).generate(80000)
    n = truth["n_truth"].size
    first = np.concatenate([[0], np.cumsum(truth["n_truth"])[:-1]])
    # the J/ψ (first in each event) decaying to exactly p and p̄ (not p p̄ π0, p p̄ γ, ...)
    assert np.all(truth["pdg"][first] == 443)
    of_jpsi = truth["mother"] == 0
    n_daughters = np.bincount(truth["event"][of_jpsi], minlength=n)
    d1, d2 = truth["pdg"][first + 1], truth["pdg"][first + 2]
    count = int(np.sum((n_daughters == 2) & (((d1 == 2212) & (d2 == -2212)) | ((d1 == -2212) & (d2 == 2212)))))
    expected = BESIII_PPBAR * n
    assert abs(count - expected) < 4 * np.hypot(np.sqrt(expected), BESIII_PPBAR_ERR * n)


def test_crossing_angle_boost_and_beam_spot() -> None:
    """The J/ψ moves along +x with p = M tan(11 mrad); vertices spread like BEPCII's beam spot."""
    truth = JpsiGenerator("mumu", seed=2).generate(5000)
    jpsi = truth["pdg"] == 443
    mass = np.sqrt(truth["e"][jpsi] ** 2 - truth["px"][jpsi] ** 2 - truth["py"][jpsi] ** 2 - truth["pz"][jpsi] ** 2)
    assert np.allclose(mass, 3.0969, atol=1e-6)
    assert np.allclose(truth["px"][jpsi], 3.0969 * np.tan(0.011), atol=1e-6)
    assert np.allclose(truth["py"][jpsi], 0.0) and np.allclose(truth["pz"][jpsi], 0.0)
    # momentum is conserved among the final particles of each event
    final = truth["final"].astype(bool)
    sum_px = np.bincount(truth["event"][final], weights=truth["px"][final])
    assert np.allclose(sum_px, 3.0969 * np.tan(0.011), atol=1e-6)
    assert np.std(truth["vx"][jpsi]) == pytest.approx(0.038, rel=0.05)
    assert np.std(truth["vy"][jpsi]) == pytest.approx(0.00057, rel=0.05)
    assert np.std(truth["vz"][jpsi]) == pytest.approx(1.5, rel=0.05)


def test_fsr_switch() -> None:
    """FSR on: some μ+μ− events radiate photons and the muon spectrum has a low tail; off: none."""
    with_fsr = JpsiGenerator("mumu", seed=3).generate(5000)
    without = JpsiGenerator("mumu", seed=3, fsr=False).generate(5000)
    photons_with = np.sum((with_fsr["pdg"] == 22) & (with_fsr["final"] == 1) & (with_fsr["e"] > 0.01))
    photons_without = np.sum((without["pdg"] == 22) & (without["final"] == 1))
    assert photons_without == 0
    assert photons_with > 100
    mu = (np.abs(without["pdg"]) == 13) & (without["final"] == 1)
    assert np.all(without["e"][mu] > 1.5)  # two-body: E* = M/2 (up to the 34 MeV/c boost)


def test_kskpi_final_state() -> None:
    truth = JpsiGenerator("kskpi", seed=5).generate(500)
    for code in (310, 321):
        has = np.zeros(500, bool)
        has[truth["event"][np.abs(truth["pdg"]) == code]] = True
        assert has.all()
    # K_S flies: its daughters are produced away from the J/ψ vertex
    ks_rows = np.flatnonzero(truth["pdg"] == 310)
    starts = np.concatenate([[0], np.cumsum(truth["n_truth"])[:-1]])
    daughters = (truth["mother"] >= 0) & (truth["pdg"] != 22)
    mother_row = starts[truth["event"]] + truth["mother"]
    from_ks = daughters & np.isin(mother_row, ks_rows)
    flight = np.hypot(truth["vx"][from_ks] - truth["vx"][mother_row[from_ks]],
                      truth["vy"][from_ks] - truth["vy"][mother_row[from_ks]])
    assert np.median(flight) > 0.5  # cm: cτ(K_S) = 2.68 cm times βγ ~ 1-2


def test_same_seed_same_arrays_different_seed_different() -> None:
    a = simulate("rhopi", 3000, runs=(-10000, -9991), seed=7)
    b = simulate("rhopi", 3000, runs=(-10000, -9991), seed=7)
    c = simulate("rhopi", 3000, runs=(-10000, -9991), seed=8)
    for table in a:
        for col in a[table]:
            np.testing.assert_array_equal(a[table][col], b[table][col], err_msg=f"{table}.{col}")
    assert not np.array_equal(a["tracks"]["p"][:100], c["tracks"]["p"][:100])


def test_workers_do_not_change_the_arrays() -> None:
    from vbes.datasets.simulation import iter_simulated

    def collect(workers: int) -> list:
        chunks, _ = iter_simulated("mumu", 3000, (-10000, -9991), seed=9, workers=workers, chunk_events=1000)
        return [c["tracks"]["helix"] for c in chunks]

    for x, y in zip(collect(1), collect(2), strict=True):
        np.testing.assert_array_equal(x, y)


def test_runs_and_bad_input() -> None:
    run, event = assign_runs(10, -5, -1)
    assert run.tolist() == [-5, -5, -4, -4, -3, -3, -2, -2, -1, -1]
    assert event.tolist() == [0, 1] * 5
    assert parse_runs("-10000:-9000") == (-10000, -9000)
    for bad in ("-9000:-10000", "abc", "-1:1", "5"):
        with pytest.raises(InvalidInput, match="--runs"):
            parse_runs(bad)
    with pytest.raises(InvalidInput, match="unknown channel"):
        JpsiGenerator("psi2s")
