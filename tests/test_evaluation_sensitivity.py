"""Acceptance of the evaluation suite on generated J/psi samples at 2e4 events per sample (the reference has 4e4,
so the self-check has two disjoint halves of that size) and the suite's default settings: an independent sample
passes; known distortions are each flagged by the test that should see them -- a x1.01 momentum scale, a 20 %
resolution widening, a removed radiative tail and broken track pairing by named physics observables and the
classifier; a x1.005 momentum scale by FPD and by KPD; the broken pairing by the correlation test, which sees
the second track; 3 % of TOF hits lost by the TOF feature's verdict, in the JSON and in the HTML.

Distortions are made with known sizes, and the observables must also measure those sizes (a 1 % scale moves the
J/psi peak by 1 % of its mass), so the test checks physics numbers, not the code against itself. (The power at a
x1.0005 scale, 10 tries, and the false-alarm rate over 200+ null evaluations are measured by
``benchmarks/bench_evaluation.py --calibration``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vbes.datasets.simulation import simulate
from vbes.evaluation import distortions
from vbes.evaluation.report import write_report
from vbes.evaluation.suite import Evaluation, EvaluationConfig, Sample, evaluate, load_sample

pytestmark = pytest.mark.slow

N = 20_000  # events per sample; the reference has 2N
CONFIG = EvaluationConfig(classifier_folds=3, classifier_max_iter=100)


@pytest.fixture(scope="session")
def null_cache() -> dict:
    return {}


@pytest.fixture(scope="session")
def mumu_reference() -> Sample:
    return load_sample(simulate("mumu", 2 * N, seed=101))


@pytest.fixture(scope="session")
def mumu_sample() -> dict:
    return simulate("mumu", N, seed=102)


@pytest.fixture(scope="session")
def mumu_independent(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> Evaluation:
    return evaluate(mumu_sample, mumu_reference, config=CONFIG, null_cache=null_cache)


def _mumu(tables: dict, reference: Sample, cache: dict) -> Evaluation:
    return evaluate(tables, reference, config=CONFIG, null_cache=cache)


def _flagged(result: Evaluation, name: str) -> bool:
    return not result.test(name).passed


def test_independent_sample_passes_every_test(mumu_independent: Evaluation) -> None:
    result = mumu_independent
    assert result.passed, result.failed
    assert result.n_used == N and result.n_classifier == N
    assert len(result.tests) > 150 and result.n_hypotheses < len(result.tests)
    # every test has a p-value of its own; the multivariate tests cover the second track
    assert all(0 <= t.pvalue <= 1 for t in result.tests)
    assert {"track1_p", "track1_cos_theta", "m_ll", "present(track1_p)"} <= set(result.correlation["names"])
    # physics of the reference itself, against PDG / MISSION.md: the J/psi peak from mu+mu- and p* = 1.5448 GeV/c
    assert result.test("observables/m_ll/position").details["reference"] == pytest.approx(3.0969, abs=0.003)
    assert result.test("observables/p_cm/position").details["reference"] == pytest.approx(1.5448, abs=0.002)


def test_reference_vs_reference_auc_is_one_half_within_its_error(mumu_independent: Evaluation) -> None:
    auc = mumu_independent.test("classifier/auc")
    error = auc.details["null_error"]
    assert error == pytest.approx(np.sqrt((2 * N + 1) / (12 * N * N)), rel=0.01)
    assert abs(auc.value - 0.5) < 3 * error


def test_self_check_calibrates_the_pvalue_tests(mumu_independent: Evaluation) -> None:
    # on reference-vs-reference splits the peak z-scores must scatter as N(0, 1): the fit errors are right
    z = np.concatenate(
        [
            t.null_values
            for t in mumu_independent.tests
            if t.name.startswith("observables/") and t.name.endswith(("/position", "/width"))
        ]
    )
    assert abs(z.mean()) < 0.5
    assert 0.6 < z.std() < 1.5
    check = mumu_independent.calibration
    assert check["n_splits"] == CONFIG.null_trials
    for family in ("features/*/w1", "features/*/chi2_ndf", "observables/*/position"):
        assert 0.7 < check["families"][family]["std"] < 1.3, family
    assert check["binomial_pvalue"] > 0.001  # not more failing splits than alpha allows


def test_momentum_scale_shift_of_one_percent(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> None:
    result = _mumu(distortions.scale_momenta(mumu_sample, 1.01), mumu_reference, null_cache)
    assert _flagged(result, "observables/m_ll/position") and _flagged(result, "observables/p_cm/position")
    assert _flagged(result, "classifier/auc")
    # the J/psi peak moves by 1 % of its mass, the muon momentum by 1 % of 1.545 GeV/c
    assert result.test("observables/m_ll/position").details["shift"] == pytest.approx(0.031, rel=0.1)
    assert result.test("observables/p_cm/position").details["shift"] == pytest.approx(0.01545, rel=0.1)


def test_fpd_and_kpd_each_fail_at_half_a_percent_momentum_scale(
    mumu_sample: dict, mumu_reference: Sample, null_cache: dict
) -> None:
    result = _mumu(distortions.scale_momenta(mumu_sample, 1.005), mumu_reference, null_cache)
    assert _flagged(result, "distances/fpd") and _flagged(result, "distances/kpd")
    fpd = result.test("distances/fpd")
    assert fpd.value > 5 * fpd.details["error"] and fpd.details["significance"] > 5


def test_resolution_widening_in_the_muon_momentum(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> None:
    result = _mumu(distortions.widen_resolution(mumu_sample, 1.2), mumu_reference, null_cache)
    assert _flagged(result, "observables/p_cm/width") and _flagged(result, "classifier/auc")
    assert result.test("observables/p_cm/width").details["ratio"] == pytest.approx(1.2, abs=0.06)
    assert not _flagged(result, "observables/p_cm/position")  # a resolution, not a scale


def test_broken_correlation(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> None:
    result = _mumu(distortions.shuffle_tracks(mumu_sample, charge=-1, seed=5), mumu_reference, null_cache)
    assert _flagged(result, "observables/m_ll/width") and _flagged(result, "observables/acollinearity/chi2")
    assert _flagged(result, "classifier/auc")
    # a multivariate test sees it: the pairing of the two tracks (the second one included) is what changed
    corr = result.test("correlations/max_abs_z")
    assert not corr.passed
    names = result.correlation["names"]
    pair = names.index("track0_cos_theta"), names.index("track1_cos_theta")
    assert abs(result.correlation["z"][min(pair)][max(pair)]) > 10
    assert _flagged(result, "distances/fpd") and _flagged(result, "distances/kpd")
    # the momentum spectrum is unchanged: only the pairing is broken
    assert result.test("observables/p_lab/chi2").passed


def test_lost_tof_hits_fail_the_feature_in_json_and_html(
    mumu_sample: dict, mumu_reference: Sample, null_cache: dict, tmp_path: Path
) -> None:
    result = _mumu(distortions.drop_tof(mumu_sample, 0.03, seed=4), mumu_reference, null_cache)
    presence = result.test("features/track0_tof/presence")
    assert not presence.passed
    # 3 % of ~90 % of tracks lose their TOF hit: the present fraction drops by ~2.7 %
    assert presence.details["fraction_difference"] == pytest.approx(-0.027, abs=0.006)
    paths = write_report(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["features"]["track0_tof"]["passed"] is False
    assert "features/track0_tof/presence" in data["features"]["track0_tof"]["failed_tests"]
    html = paths["html"].read_text()
    row = html[html.index("<tr class='fail'><td>track0_tof</td>") :]
    assert row[: row.index("</tr>")].endswith("<td>FAIL</td>")


def test_removed_radiative_tail(mumu_reference: Sample, null_cache: dict) -> None:
    result = _mumu(simulate("mumu", N, seed=103, fsr=False), mumu_reference, null_cache)
    tail = result.test("observables/radiative_tail/difference")
    assert not tail.passed and _flagged(result, "classifier/auc")
    assert tail.details["reference"] > 0.02 and tail.details["sample"] < 0.5 * tail.details["reference"]


@pytest.fixture(scope="session")
def rhopi_reference() -> Sample:
    return load_sample(simulate("rhopi", 2 * N, seed=201))


@pytest.fixture(scope="session")
def rhopi_sample() -> dict:
    return simulate("rhopi", N, seed=202)


def test_independent_rhopi_sample_passes_every_test(rhopi_sample: dict, rhopi_reference: Sample, null_cache) -> None:
    # the channel with most objects (tracks, pi0 photons, split-offs): an independent seed must pass too
    result = evaluate(rhopi_sample, rhopi_reference, config=CONFIG, null_cache=null_cache)
    assert result.passed, result.failed
    assert len(result.tests) > 150
    assert {"shower2_energy", "present(shower2_energy)"} <= set(result.correlation["names"])


def test_resolution_widening_in_the_pi0_mass(rhopi_sample: dict, rhopi_reference: Sample, null_cache) -> None:
    sample = distortions.widen_resolution(rhopi_sample, 1.2)
    result = evaluate(sample, rhopi_reference, config=CONFIG, null_cache=null_cache)
    assert _flagged(result, "observables/m_gg/width") and _flagged(result, "classifier/auc")
    # the pi0 peak: PDG mass, a BESIII-like 5-7 MeV width in the reference, wider by the photons' share
    width = result.test("observables/m_gg/width").details
    assert result.test("observables/m_gg/position").details["reference"] == pytest.approx(0.1350, abs=0.002)
    assert 0.005 < width["reference"] < 0.0075
    assert 1.05 < width["ratio"] < 1.25


@pytest.fixture(scope="session")
def small_event_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from vbes.datasets import EventWriter

    folder = tmp_path_factory.mktemp("evaluation-files")
    paths = []
    for name, n, seed in (("sample.h5", 6000, 302), ("reference.h5", 12_000, 301)):
        path = folder / name
        with EventWriter(path, {"generator": "test", "seed": seed}, mc=True) as writer:
            writer.append(simulate("mumu", n, seed=seed))
        paths.append(path)
    return paths[0], paths[1]


def test_cli_on_event_files_writes_the_physics_report(run_cli, small_event_files, tmp_path: Path) -> None:
    sample, reference = small_event_files
    result = run_cli(
        "evaluate",
        "--sample",
        sample,
        "--reference",
        reference,
        "--report",
        tmp_path / "report",
        "--folds",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["channel"] == "mumu" and summary["passed"] is True
    data = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert data["sample"]["digest"] and data["reference"]["path"].endswith("reference.h5")
    assert any(t["name"] == "observables/m_ll/position" for t in data["tests"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Physics observables" in html and "m_ll" in html and "sample / reference" in html


def test_demo_step_compares_two_generated_samples(vbes_home: Path, small_event_files) -> None:
    from vbes.demo import evaluation_step

    from vbes.settings import load_settings

    sample, reference = small_event_files
    result = evaluation_step(load_settings(), sample, reference)
    assert (vbes_home / "reports" / "evaluation" / "report.html").is_file()
    assert result.channel == "mumu" and result.n_used == 6000
