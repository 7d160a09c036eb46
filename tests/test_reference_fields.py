"""One meaning per field: a generated J/ψ → ρπ sample against the real BOSS DST, field by field.

The real file (``../shared/data/besiii-boss-jpsi-rhopi-10evt.dst``: 10 full-simulation J/ψ → ρ0π0 events, MC run
−9989, 19 tracks, 75 showers) is ingested; the same channel is generated for the same run. For every field the
DST provides, both must have the same unit and scale: where the physics is the same, medians agree within the
stated tolerance plus three times the real median's bootstrap error; where the models differ (named, with the
reason), the medians still agree within a factor 3 -- a unit or normalisation error is a factor 10 or more
(50 ns ticks, 550 ADC counts, mm vs cm). The numbers compared with come from the real file, pybes3 (BESIII's
own conversions and geometry) and published BESIII figures, never from the simulation's constants.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from vbes.datasets import read_events
from vbes.datasets.ingest import DST_UNITS, ingest_besiii_dst
from vbes.datasets.schema import TABLES, UNITS, unpack_symmetric
from vbes.datasets.simulation import simulate

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DST = "besiii-boss-jpsi-rhopi-10evt.dst"
Tables = dict[str, dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Tables:
    if not (SHARED_DATA / DST).exists():
        pytest.skip(f"{SHARED_DATA / DST} is absent")
    out = tmp_path_factory.mktemp("real") / "real.h5"
    ingest_besiii_dst(SHARED_DATA / DST, out, channel="rhopi")
    return read_events(out)


@pytest.fixture(scope="module")
def generated() -> Tables:
    return simulate("rhopi", 20000, runs=(-9989, -9989), seed=91)


def _truth_rows(t: Tables, table: str) -> np.ndarray:
    ev = t["events"]
    owner = np.repeat(np.arange(ev["run"].size), ev["n_tracks" if table == "tracks" else "n_showers"])
    first = np.concatenate([[0], np.cumsum(ev["n_truth"])])[:-1]
    index = t[table]["truth_index"]
    return np.where(index >= 0, first[owner] + index, -1)


def _pions(t: Tables) -> np.ndarray:
    rows = _truth_rows(t, "tracks")
    return (rows >= 0) & (np.abs(t["truth"]["pdg"][np.maximum(rows, 0)]) == 211)


def _sigma(k: int) -> Callable[[Tables], np.ndarray]:
    return lambda t: np.sqrt(unpack_symmetric(t["tracks"]["helix_cov"])[:, k, k])


def _has_tof(t: Tables) -> np.ndarray:
    return np.isfinite(t["tracks"]["tof"])


#: (name, values of a sample, absolute tolerance on the median where the physics is the same, or None where it
#: differs, with the reason in the last column)
FIELDS: list[tuple[str, Callable[[Tables], np.ndarray], float | None, str]] = [
    ("tracks.p", lambda t: t["tracks"]["p"], 0.1, ""),
    ("tracks.|cos_theta|", lambda t: np.abs(t["tracks"]["cos_theta"]), 0.1, ""),
    ("tracks.charge fraction > 0", lambda t: (t["tracks"]["charge"] > 0).astype(float), 0.1, ""),
    ("tracks.helix.dz", lambda t: np.abs(t["tracks"]["helix"][:, 3]), None,
     "beam-spot length: design σz = 1.5 cm against 0.8 cm in these 10 real events"),
    ("tracks.helix.tanl", lambda t: np.abs(t["tracks"]["helix"][:, 4]), 0.15, ""),
    ("tracks.sigma_dr", _sigma(0), 0.004, ""),
    ("tracks.sigma_phi0", _sigma(1), 0.0006, ""),
    ("tracks.sigma_kappa/kappa", lambda t: _sigma(2)(t) / np.abs(t["tracks"]["helix"][:, 2]), 0.0015, ""),
    ("tracks.sigma_dz", _sigma(3), 0.04, ""),
    ("tracks.sigma_tanl", _sigma(4), 0.0012, ""),
    ("tracks.fit_chi2/ndof", lambda t: t["tracks"]["fit_chi2"] / t["tracks"]["fit_ndof"], 0.15, ""),
    ("tracks.fit_ndof", lambda t: t["tracks"]["fit_ndof"].astype(float), 3.0, ""),
    ("tracks.mdc_layers", lambda t: t["tracks"]["mdc_layers"].astype(float), 2.0, ""),
    ("tracks.mdc_first_layer", lambda t: t["tracks"]["mdc_first_layer"].astype(float), 1.0, ""),
    ("tracks.mdc_last_layer", lambda t: t["tracks"]["mdc_last_layer"].astype(float), 1.0, ""),
    ("tracks.dedx (pions)", lambda t: t["tracks"]["dedx"][_pions(t)], 0.04, ""),
    ("tracks.dedx_ph (pions)", lambda t: t["tracks"]["dedx_ph"][_pions(t)], 22.0, ""),
    ("tracks.dedx_nhits", lambda t: t["tracks"]["dedx_nhits"].astype(float), 3.0, ""),
    ("tracks.chi_dedx pi (pions)", lambda t: t["tracks"]["chi_dedx"][_pions(t), 2], 0.6, ""),
    ("tracks.chi_dedx e (pions)", lambda t: t["tracks"]["chi_dedx"][_pions(t), 0], 0.5, ""),
    ("tracks.tof", lambda t: t["tracks"]["tof"][_has_tof(t)], 0.4, ""),
    ("tracks.tof_path", lambda t: t["tracks"]["tof_path"][_has_tof(t)], 10.0, ""),
    ("tracks.chi_tof pi", lambda t: t["tracks"]["chi_tof"][_has_tof(t), 2], 1.0, ""),
    ("tracks.emc_energy (matched)", lambda t: t["tracks"]["emc_energy"][t["tracks"]["emc_index"] >= 0], None,
     "pion showers in CsI: parametric MIP/hadronic model against Geant4"),
    ("showers.energy", lambda t: t["showers"]["energy"], 0.03, ""),
    ("showers.time", lambda t: t["showers"]["time"], 50.0, ""),
    ("showers.module barrel fraction", lambda t: (t["showers"]["module"] == 1).astype(float), 0.1, ""),
    ("showers.n_crystals", lambda t: t["showers"]["n_crystals"].astype(float), None,
     "shower shape model (parametric, per particle type) against Geant4"),
    ("showers.e3x3/energy", lambda t: t["showers"]["e3x3"] / t["showers"]["energy"], 0.06, ""),
    ("showers.e5x5/energy", lambda t: t["showers"]["e5x5"] / t["showers"]["energy"], 0.05, ""),
    ("showers.second_moment", lambda t: t["showers"]["second_moment"], None,
     "shower shape model (parametric, per particle type) against Geant4"),
    ("showers.lat_moment", lambda t: t["showers"]["lat_moment"], None,
     "shower shape model (parametric, per particle type) against Geant4"),
    ("showers.energy_err/energy", lambda t: t["showers"]["energy_err"] / t["showers"]["energy"], 0.004, ""),
    ("showers.theta_err", lambda t: t["showers"]["theta_err"], 0.004, ""),
    ("showers.phi_err", lambda t: t["showers"]["phi_err"], 0.006, ""),
    ("showers.e_seed/energy", lambda t: t["showers"]["e_seed"] / t["showers"]["energy"], 0.12, ""),
    ("showers.a20_moment", lambda t: t["showers"]["a20_moment"], 0.06, ""),
    ("showers.a42_moment", lambda t: t["showers"]["a42_moment"], None,
     "follows lat_moment, whose model differs (above)"),
    ("showers.status==2 fraction", lambda t: (t["showers"]["status"] == 2).astype(float), 0.04, ""),
    ("truth.vx (final)", lambda t: t["truth"]["vx"][t["truth"]["final"] == 1], 0.03, ""),
    ("truth.vy (final)", lambda t: t["truth"]["vy"][t["truth"]["final"] == 1], 0.003, ""),
]


def _bootstrap_error(values: np.ndarray, statistic: Callable[..., np.ndarray], rng: np.random.Generator,
                     n_boot: int = 400) -> float:
    draws = rng.choice(values, size=(n_boot, values.size), replace=True)
    return float(np.std(statistic(draws, axis=1)))


@pytest.mark.parametrize(("name", "values", "tolerance", "reason"), FIELDS, ids=[f[0] for f in FIELDS])
def test_field_same_unit_and_scale(name: str, values: Callable[[Tables], np.ndarray], tolerance: float | None,
                                   reason: str, real: Tables, generated: Tables) -> None:
    ours = np.asarray(values(generated), float)
    theirs = np.asarray(values(real), float)
    ours, theirs = ours[np.isfinite(ours)], theirs[np.isfinite(theirs)]
    assert theirs.size >= 5 and ours.size >= 500, name
    # fractions compare as means, everything else as medians
    statistic = np.mean if "fraction" in name else np.median
    m_ours, m_real = float(statistic(ours)), float(statistic(theirs))
    error = _bootstrap_error(theirs, statistic, np.random.default_rng(7))
    print(f"{name:32s} generated {m_ours:11.5g}  real {m_real:11.5g} ± {error:.2g}  (n = {theirs.size})"
          + (f"  differs: {reason}" if tolerance is None else ""))
    if tolerance is None:
        assert m_real != 0 and 1 / 3 < m_ours / m_real < 3, f"{name}: not even the same scale"
    else:
        assert abs(m_ours - m_real) <= tolerance + 3 * error, name


def test_every_dst_field_is_filled_and_compared(real: Tables, generated: Tables) -> None:
    """No column is always empty (NaN / -1) in generated files, and each the real DST fills is compared above."""
    # "tracks.sigma_dz" -> tracks.helix_cov, "tracks.helix.dz" -> tracks.helix, "showers.e3x3/energy" -> e3x3
    compared = set()
    for name, *_ in FIELDS:
        table, rest = name.split(".", 1)
        column = rest.split()[0].strip("|").split("/")[0].split(".")[0].split("==")[0]
        compared.add(f"{table}.{'helix_cov' if column.startswith('sigma_') else column}")
    not_compared = {"tracks.px", "tracks.py", "tracks.pz", "tracks.phi", "tracks.cos_theta",
                    "tracks.mass_hypothesis", "tracks.emc_index", "tracks.muc_depth", "tracks.truth_index",
                    "showers.x", "showers.y", "showers.z", "showers.theta", "showers.phi",
                    "showers.cell_id", "showers.truth_index", "truth.pdg", "truth.mother", "truth.px",
                    "truth.py", "truth.pz", "truth.e", "truth.vz", "truth.final", "truth.status_flags"}
    for table in ("tracks", "showers", "truth"):
        for f in TABLES[table]:
            column = np.asarray(generated[table][f.name], float)
            empty = np.isnan(column) | (column == -1) if f.fill is not None else np.zeros(column.shape, bool)
            assert not empty.all(), f"{table}.{f.name} is always empty in generated files"
            key = f"{table}.{f.name}"
            assert key in not_compared or key in compared, f"{key} is not compared with the real DST"


def test_units_are_the_schemas_and_besiii_s(shared_data: Path) -> None:
    """The two unit conversions both writers use are BESIII's: 50 ns EMC ticks (pybes3) and normPH = PH / 550."""
    import awkward as ak
    import pybes3.emc
    import uproot

    assert UNITS["EMC TDC tick"][1] / UNITS["ns"][1] == pytest.approx(float(pybes3.emc.emc_tdc_to_time(1)))
    with uproot.open(shared_data / DST) as f:
        dedx = f["Event"]["TDstEvent/m_mdcDedxCol"].array()
    ratio = ak.to_numpy(ak.flatten(dedx["m_probPH"])) / ak.to_numpy(ak.flatten(dedx["m_normPH"]))
    assert UNITS["normPH"][1] / UNITS["ADC counts"][1] == pytest.approx(np.median(ratio), rel=1e-6)
    for field, unit in DST_UNITS.items():
        table, name = field.split(".")
        assert UNITS[unit][0] == UNITS[next(f.unit for f in TABLES[table] if f.name == name)][0]


def test_beam_spot_offset_shows_in_dr(real: Tables, generated: Tables) -> None:
    """Prompt tracks from a displaced beam spot: dr = x0 cosφ0 + y0 sinφ0, with the same (x0, y0) in both."""
    def fit(t: Tables) -> np.ndarray:
        h = t["tracks"]["helix"]
        design = np.column_stack([np.cos(h[:, 1]), np.sin(h[:, 1])])
        used = np.abs(h[:, 0]) < 1.0
        for _ in range(2):  # then without tracks that do not come from the beam spot (decays, scatters)
            x0y0 = np.linalg.lstsq(design[used], h[used, 0], rcond=None)[0]
            used = np.abs(h[:, 0] - design @ x0y0) < 0.1
        return x0y0

    x0_real, y0_real = fit(real)
    x0_ours, y0_ours = fit(generated)
    print(f"beam spot from dr(phi0): generated ({x0_ours:.3f}, {y0_ours:.3f}) cm, real ({x0_real:.3f}, "
          f"{y0_real:.3f}) cm")
    # about 17 prompt real tracks measure each coordinate to ~0.02 cm (σ(dr) ≈ 0.015 cm, beam σx = 0.04 cm)
    assert x0_ours == pytest.approx(x0_real, abs=0.06) and y0_ours == pytest.approx(y0_real, abs=0.06)
    assert np.hypot(x0_real, y0_real) > 0.2  # the real offset is there: a centred beam spot fails this test


def test_cell_id_is_besiii_s_identifier(real: Tables, generated: Tables) -> None:
    """Generated crystal ids decode (pybes3) to the shower's own module and to a crystal near its direction."""
    import pybes3.emc
    from pybes3.identifier import emc_id_to_gid, emc_id_to_module

    for t in (real, generated):
        sh = t["showers"]
        cell = sh["cell_id"].astype(np.int64)
        assert np.array_equal(emc_id_to_module(cell), sh["module"])
        gid = emc_id_to_gid(cell)
        face = np.stack([pybes3.emc.emc_gid_to_front_center_x(gid), pybes3.emc.emc_gid_to_front_center_y(gid),
                         pybes3.emc.emc_gid_to_front_center_z(gid)], 1)
        direction = np.stack([np.sin(sh["theta"]) * np.cos(sh["phi"]), np.sin(sh["theta"]) * np.sin(sh["phi"]),
                              np.cos(sh["theta"])], 1)
        angle = np.arccos(np.clip(np.einsum("ij,ij->i", face / np.linalg.norm(face, axis=1)[:, None], direction),
                                  -1, 1))
        # a crystal face is ≈ 5 cm wide at ≈ 100 cm: the centre's crystal is within a crystal's size
        assert np.median(angle) < 0.03 and np.quantile(angle, 0.95) < 0.08


def test_generated_truth_status_flags_as_in_the_dst(real: Tables, generated: Tables) -> None:
    """Final pions carry BOSS's 'from generator' + 'leaf' bits (9) in the real file and in ours."""
    for t in (real, generated):
        pions = (np.abs(t["truth"]["pdg"]) == 211) & (t["truth"]["final"] == 1)
        assert np.all(t["truth"]["status_flags"][pions] == 9)


def test_evaluation_features_disagree_only_where_physics_differs(real: Tables, generated: Tables) -> None:
    """On the features `vbes evaluate` reads, exact two-sample KS tests (valid for 10 events) pass.

    The suite's own metrics need >= 100 events and skip every feature of a 10-event file (asserted), so the
    test runs exact KS p-values on the same feature table; Bonferroni over the features at 1 %. Features of
    the shower-shape model and the leading-shower slots the extra showers feed (see FIELDS) may differ.
    """
    from scipy.stats import ks_2samp
    from vbes.errors import NothingTested
    from vbes.evaluation.suite import EvaluationConfig, evaluate, load_sample

    # 10 events: the suite refuses every metric, as it must, and says that nothing was tested
    with pytest.raises(NothingTested, match="needs at least 100 values per sample"):
        evaluate(real, generated, channel="rhopi", config=EvaluationConfig(distances=False))
    a, b = load_sample(real, "rhopi").features, load_sample(generated, "rhopi").features
    differs = ("lat_moment", "n_crystals", "e3x3_over_e5x5")
    p_values = {}
    for i, name in enumerate(a.names):
        x, y = a.values[:, i], b.values[:, i]
        x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        if x.size >= 5:
            p_values[name] = float(ks_2samp(x, y, method="exact" if x.size < 50 else "auto").pvalue)
    threshold = 0.01 / len(p_values)
    failing = sorted(n for n, p in p_values.items() if p < threshold and not n.endswith(differs))
    print("lowest KS p-values:", sorted(p_values.items(), key=lambda kv: kv[1])[:6])
    assert len(p_values) > 40 and not failing, failing
