"""Acceptance of the evaluation suite on generated J/psi samples at fixed sizes (1e5 events per sample, all of
them in the classifier): an independent sample of the reference passes; a 1 % momentum-scale shift, a 20 %
resolution widening, a removed radiative tail and a broken correlation are each flagged by a named physics
observable AND by the classifier; reference-vs-reference classifier AUCs are 0.5 within their stated error.

Distortions are made with known sizes, and the observables must also measure those sizes (a 1 % scale moves the
J/psi peak by 1 % of its mass), so the test checks physics numbers, not the code against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from vbes.datasets.simulation import simulate
from vbes.evaluation import distortions
from vbes.evaluation.suite import Evaluation, EvaluationConfig, Sample, evaluate, load_sample

pytestmark = pytest.mark.slow

N = 100_000  # events per sample; the reference has 2N so the null has two disjoint halves of N
CONFIG = EvaluationConfig(
    null_trials=20,
    distance_null_trials=3,
    classifier_null_trials=3,
    classifier_folds=3,
    classifier_max_iter=100,
    classifier_events=N,
)
# rho pi is only used for flagged distortions: every deciding test there has an analytic null
LIGHT = EvaluationConfig(
    null_trials=4,
    distance_null_trials=2,
    classifier_null_trials=2,
    classifier_folds=3,
    classifier_max_iter=100,
    classifier_events=N,
)


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


def _flagged(result: Evaluation, name: str) -> bool:
    return not result.test(name).passed


def test_independent_sample_passes_every_test(mumu_independent: Evaluation) -> None:
    result = mumu_independent
    assert result.passed, result.failed
    assert result.n_used == N and result.n_classifier == N
    assert len(result.tests) > 150  # features x 4 metrics, correlations, FPD, KPD, classifier, observables
    # physics of the reference itself, against PDG / MISSION.md: the J/psi peak from mu+mu- and p* = 1.5448 GeV/c
    assert result.test("observables/m_ll/position").details["reference"] == pytest.approx(3.0969, abs=0.003)
    assert result.test("observables/p_cm/position").details["reference"] == pytest.approx(1.5448, abs=0.002)


def test_reference_vs_reference_auc_is_one_half_within_its_error(mumu_independent: Evaluation) -> None:
    auc = mumu_independent.test("classifier/auc")
    error = auc.details["auc_error"]
    assert error == pytest.approx(np.sqrt((2 * N + 1) / (12 * N * N)), rel=0.01)
    assert abs(auc.value - 0.5) < 2 * error
    # the null splits are reference-vs-reference tests of the same size: each 0.5 within its error
    assert len(auc.null_values) == CONFIG.classifier_null_trials
    assert all(abs(v - 0.5) < 3 * error for v in auc.null_values)


def test_null_splits_calibrate_the_observable_errors(mumu_independent: Evaluation) -> None:
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


def test_momentum_scale_shift_of_one_percent(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> None:
    result = evaluate(
        distortions.scale_momenta(mumu_sample, 1.01), mumu_reference, config=CONFIG, null_cache=null_cache
    )
    assert _flagged(result, "observables/m_ll/position") and _flagged(result, "observables/p_cm/position")
    assert _flagged(result, "classifier/auc")
    # the J/psi peak moves by 1 % of its mass, the muon momentum by 1 % of 1.545 GeV/c
    assert result.test("observables/m_ll/position").details["shift"] == pytest.approx(0.031, rel=0.1)
    assert result.test("observables/p_cm/position").details["shift"] == pytest.approx(0.01545, rel=0.1)


def test_resolution_widening_in_the_muon_momentum(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> None:
    result = evaluate(
        distortions.widen_resolution(mumu_sample, 1.2), mumu_reference, config=CONFIG, null_cache=null_cache
    )
    assert _flagged(result, "observables/p_cm/width") and _flagged(result, "classifier/auc")
    assert result.test("observables/p_cm/width").details["ratio"] == pytest.approx(1.2, abs=0.06)
    assert not _flagged(result, "observables/p_cm/position")  # a resolution, not a scale


@pytest.fixture(scope="session")
def rhopi_reference() -> Sample:
    return load_sample(simulate("rhopi", 2 * N, seed=201))


@pytest.fixture(scope="session")
def rhopi_sample() -> dict:
    return simulate("rhopi", N, seed=202)


def test_independent_rhopi_sample_passes_every_test(rhopi_sample: dict, rhopi_reference: Sample) -> None:
    # the channel with most objects (tracks, pi0 photons, split-offs): an independent seed must pass too
    result = evaluate(rhopi_sample, rhopi_reference, config=CONFIG)
    assert result.passed, result.failed
    assert len(result.tests) > 150


def test_resolution_widening_in_the_pi0_mass(rhopi_sample: dict, rhopi_reference: Sample) -> None:
    reference = rhopi_reference
    sample = distortions.widen_resolution(rhopi_sample, 1.2)
    result = evaluate(sample, reference, config=LIGHT)
    assert _flagged(result, "observables/m_gg/width") and _flagged(result, "classifier/auc")
    # the pi0 peak: PDG mass, a BESIII-like 5-7 MeV width in the reference, wider by the photons' share
    width = result.test("observables/m_gg/width").details
    assert result.test("observables/m_gg/position").details["reference"] == pytest.approx(0.1350, abs=0.002)
    assert 0.005 < width["reference"] < 0.0075
    assert 1.05 < width["ratio"] < 1.25


def test_removed_radiative_tail(mumu_reference: Sample, null_cache: dict) -> None:
    result = evaluate(simulate("mumu", N, seed=103, fsr=False), mumu_reference, config=CONFIG, null_cache=null_cache)
    tail = result.test("observables/radiative_tail/difference")
    assert not tail.passed and _flagged(result, "classifier/auc")
    assert tail.details["reference"] > 0.02 and tail.details["sample"] < 0.5 * tail.details["reference"]


def test_broken_correlation(mumu_sample: dict, mumu_reference: Sample, null_cache: dict) -> None:
    result = evaluate(
        distortions.shuffle_tracks(mumu_sample, charge=-1, seed=5), mumu_reference, config=CONFIG, null_cache=null_cache
    )
    assert _flagged(result, "observables/m_ll/width") and _flagged(result, "observables/acollinearity/chi2")
    assert _flagged(result, "classifier/auc")
    # the momentum spectrum is unchanged: only the pairing is broken
    assert result.test("observables/p_lab/chi2").passed


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
        "--null-trials",
        "5",
        "--distance-null-trials",
        "2",
        "--classifier-null-trials",
        "2",
        "--folds",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["channel"] == "mumu"
    data = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    assert data["sample"]["digest"] and data["reference"]["path"].endswith("reference.h5")
    assert any(t["name"] == "observables/m_ll/position" for t in data["tests"])
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Physics observables" in html and "m_ll" in html


def test_demo_step_compares_two_generated_samples(vbes_home: Path, small_event_files) -> None:
    from vbes.evaluation import demo_step

    from vbes.settings import load_settings

    sample, reference = small_event_files
    result = demo_step(load_settings(), sample, reference)
    assert (vbes_home / "reports" / "evaluation" / "report.html").is_file()
    assert result.channel == "mumu" and result.n_used == 6000
