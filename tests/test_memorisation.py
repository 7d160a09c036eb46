"""Memorisation test (vbes.evaluation.memorisation): exact nearest neighbours, calibration on independent draws,
power against models that copy their training events (all or a few per cent), no alarm for a smoothed sample,
and its place in the suite (outside Holm's family), the flat metrics, the gates, the report and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import cKDTree
from vbes.evaluation.features import FeatureTable
from vbes.evaluation.gates import check_gates
from vbes.evaluation.memorisation import memorisation_test, nearest_distances
from vbes.evaluation.suite import EvaluationConfig, evaluate, load_sample

from vbes.errors import InsufficientSample, InvalidInput

FAST = EvaluationConfig(null_trials=0, classifier_folds=2, classifier_max_iter=50, permutations=100)


def _noisy_copies(table: FeatureTable, rows: np.ndarray, relative: float, seed: int) -> np.ndarray:
    """A memorising "model": the training events ``rows`` again, each value moved by ``relative`` of itself."""
    values = table.values[rows]
    return values * (1 + relative * np.random.default_rng(seed).normal(size=values.shape))


def _with(table: FeatureTable, values: np.ndarray) -> FeatureTable:
    return FeatureTable(table.names, values, table.units, table.resolution_rules, table.channel)


# --- nearest neighbours -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 8, 40])
def test_nearest_distances_are_exact(dim: int) -> None:
    rng = np.random.default_rng(dim)
    points = rng.normal(size=(20_000, dim))
    queries = np.concatenate(
        [rng.normal(size=(2000, dim)), points[:300] + 1e-7 * rng.normal(size=(300, dim)), points[300:400]]
    )
    distances, index, _ = nearest_distances(queries, points)
    expected, expected_index = cKDTree(points).query(queries)
    assert np.abs(distances - expected).max() < 1e-12
    assert np.array_equal(index, expected_index)
    assert np.all(distances[-100:] == 0.0) and np.all(distances[2000:2300] < 1e-6)


def test_nearest_distances_with_ties_fall_back_to_float64() -> None:
    rng = np.random.default_rng(1)
    points = rng.integers(0, 4, (5000, 3)).astype(float)  # a lattice: many equidistant neighbours
    queries = rng.integers(0, 4, (800, 3)) + 0.5
    distances, _, rechecked = nearest_distances(queries, points)
    assert np.allclose(distances, np.sqrt(3 * 0.25), rtol=0, atol=1e-12)  # every lattice cell is populated
    assert rechecked == len(queries)  # duplicate and equidistant corners: no float32 decision is sure


# --- calibration and power --------------------------------------------------------------------------------


def test_pvalues_are_uniform_when_sample_and_heldout_are_independent_draws() -> None:
    # 2-D: where a design built on the held-out events would call 93 % of such samples memorising at 0.05
    rng = np.random.default_rng(7)
    results = [
        memorisation_test(rng.normal(size=(600, 2)), rng.normal(size=(2000, 2)), rng.normal(size=(600, 2)), seed=i)
        for i in range(200)
    ]
    mann_whitney = np.array([r.mann_whitney_pvalue for r in results])
    assert stats.kstest(mann_whitney, "uniform").pvalue > 0.01
    near = np.array([r.near_copy_pvalue for r in results])
    combined = np.array([r.pvalue for r in results])
    # discrete p-values: P(p <= a) <= a; 200 draws put 5 % +- 1.5 %
    assert np.mean(near <= 0.05) < 0.05 + 3 * 0.015 and np.mean(near <= 0.5) > 0.35
    assert np.mean(combined < 0.05) < 0.05 + 3 * 0.015
    assert np.mean([r.near_copy_fraction for r in results]) == pytest.approx(0.01, abs=0.002)
    assert np.mean([r.distance_ratio for r in results]) == pytest.approx(1.0, abs=0.01)


@pytest.fixture(scope="module")
def rhopi() -> dict[str, FeatureTable]:
    """rho pi events of three independent seeds: training, held-out, and an honest "model"."""
    from vbes.datasets.simulation import simulate

    return {
        name: load_sample(simulate("rhopi", n, seed=seed)).features
        for name, n, seed in (("training", 20_000, 11), ("heldout", 5000, 12), ("sample", 5000, 13))
    }


def test_an_independent_physics_sample_is_not_memorising(rhopi: dict[str, FeatureTable]) -> None:
    result = memorisation_test(rhopi["sample"], rhopi["training"], rhopi["heldout"])
    # one draw of a uniform p-value (calibration: the test above); a memorising model's is below 1e-10
    assert result.pvalue > 1e-3
    assert result.n_features > 50 and result.n_training == 20_000 and result.n_sample == 5000
    assert abs(result.distance_ratio - 1) < 4 * result.distance_ratio_error
    assert result.near_copy_fraction == pytest.approx(0.01, abs=0.007)
    # an event without any reconstructed object has every feature at its median: such events coincide
    assert result.sample_exact_copies < 0.001 and result.heldout_exact_copies < 0.001


def test_a_model_that_returns_its_training_events_fails(rhopi: dict[str, FeatureTable]) -> None:
    training = rhopi["training"]
    copies = _with(training, _noisy_copies(training, np.arange(5000), 1e-4, seed=1))
    result = memorisation_test(copies, training, rhopi["heldout"])
    assert not result.passed and result.pvalue < 1e-100
    assert result.near_copy_fraction > 0.5 and result.distance_ratio < 0.5
    assert result.closer_probability > 0.9


def test_copying_three_percent_is_caught_by_the_near_copies(rhopi: dict[str, FeatureTable]) -> None:
    training, sample = rhopi["training"], rhopi["sample"]
    values = sample.values.copy()
    values[:150] = _noisy_copies(training, np.arange(150), 1e-4, seed=2)
    result = memorisation_test(_with(sample, values), training, rhopi["heldout"])
    # P(d_S < d_H) moves by 0.03 / 2 = 0.015, its null spread is 0.006: no decisive Mann-Whitney p-value
    assert result.mann_whitney_pvalue > 1e-4
    # 1 % + 3 % near copies where 1 % are expected
    assert result.near_copy_fraction > 0.035 and result.near_copy_pvalue < 1e-8
    assert not result.passed


def test_a_smoothed_or_different_sample_is_not_memorising(rhopi: dict[str, FeatureTable]) -> None:
    training, sample = rhopi["training"], rhopi["sample"]
    spread = np.nanstd(training.values, axis=0)
    smeared = sample.values + 0.2 * spread * np.random.default_rng(3).normal(size=sample.values.shape)
    result = memorisation_test(_with(sample, smeared), training, rhopi["heldout"])
    assert result.passed and result.pvalue == 1.0 and result.distance_ratio > 1.2
    rng = np.random.default_rng(4)
    far = memorisation_test(rng.normal(3, 1, (2000, 5)), rng.normal(size=(5000, 5)), rng.normal(size=(2000, 5)))
    assert far.passed and far.near_copy_fraction == 0


def test_events_on_a_shared_design_row_are_left_out() -> None:
    # 10 % of the events have no object: every feature absent, all at the median, all at distance 0
    def table(seed: int, n: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(n, 3))
        x[rng.random(n) < 0.1] = np.nan
        return x

    training, heldout = table(1, 5000), table(2, 2000)
    honest = memorisation_test(table(3, 2000), training, heldout)
    assert honest.passed and 150 < honest.heldout_on_atoms < 250 and 150 < honest.sample_on_atoms < 250
    assert honest.near_copy_threshold > 0 and 0 < honest.near_copy_fraction < 0.03
    copied = memorisation_test(training[:2000], training, heldout)
    assert not copied.passed and copied.near_copy_fraction == 1.0 and copied.sample_exact_copies == 1.0


def test_sizes_are_capped_and_small_or_mismatched_inputs_refused() -> None:
    rng = np.random.default_rng(5)
    result = memorisation_test(
        rng.normal(size=(3000, 3)), rng.normal(size=(4000, 3)), rng.normal(size=(2500, 3)),
        max_queries=1000, max_training=2000,
    )
    assert (result.n_sample, result.n_heldout, result.n_training) == (1000, 1000, 2000)
    assert (result.n_sample_total, result.n_heldout_total, result.n_training_total) == (3000, 2500, 4000)
    with pytest.raises(InsufficientSample, match="at least 500 held-out events"):
        memorisation_test(rng.normal(size=(600, 2)), rng.normal(size=(600, 2)), rng.normal(size=(100, 2)))
    with pytest.raises(InvalidInput, match="different features"):
        memorisation_test({"a": np.zeros(600)}, {"b": np.zeros(600)}, {"a": np.zeros(600)})


# --- in the suite -----------------------------------------------------------------------------------------


def _gaussians(seed: int, n: int) -> np.ndarray:
    cov = np.full((4, 4), 0.4) + 0.6 * np.eye(4)
    return np.random.default_rng(seed).multivariate_normal(np.zeros(4), cov, n)


def test_suite_runs_the_memorisation_test_outside_the_holm_family() -> None:
    training, reference = _gaussians(1, 20_000), _gaussians(2, 12_000)
    honest = evaluate(_gaussians(3, 6000), reference, config=FAST, training=training)
    plain = evaluate(_gaussians(3, 6000), reference, config=FAST)
    assert honest.memorisation is not None and plain.memorisation is None
    assert honest.passed and honest.memorisation.passed
    # the same Holm family with and without it
    assert [t.name for t in honest.tests] == [t.name for t in plain.tests]
    assert honest.n_hypotheses == plain.n_hypotheses and "memorisation" not in honest.failed
    assert "memorisation" in honest.timings and honest.as_dict()["memorisation"]["pvalue"] == honest.memorisation.pvalue
    assert not any(name.startswith("memorisation/") for name in plain.flat())

    # copies of the training events: as faithful to the reference as the training events are, but copied
    copies = training[:6000] * (1 + 1e-4 * np.random.default_rng(4).normal(size=(6000, 4)))
    copied = evaluate(copies, reference, config=FAST, training=training)
    assert copied.fidelity_passed and not copied.passed and copied.failed == ["memorisation"]
    flat = copied.flat()
    assert flat["memorisation/passed"] == 0.0 and flat["passed"] == 0.0 and flat["n_failed"] == 1.0
    assert flat["memorisation/pvalue"] < 1e-100 and flat["memorisation/near_copy_fraction"] > 0.9
    assert flat["memorisation/distance_ratio"] < 0.1
    assert honest.flat()["memorisation/passed"] == 1.0

    gates = check_gates(flat, family="surrogate")
    memorised = [g for g in gates.gates if g["metric"] == "memorisation/passed"]
    assert memorised and not memorised[0]["passed"]
    absent = [g for g in check_gates(plain.flat(), family="surrogate").gates if g["gate"].startswith("no memor")]
    assert absent[0]["passed"] and absent[0]["value"] is None  # optional: applies only where the test ran

    with pytest.raises(InvalidInput, match="held-out reference"):
        evaluate(_gaussians(3, 6000), reference, config=FAST, training=reference)


def test_cli_with_training_events(tmp_path: Path, run_cli) -> None:
    from vbes.datasets import EventWriter
    from vbes.datasets.eventfile import slice_events
    from vbes.datasets.simulation import simulate

    training_events = simulate("mumu", 5000, seed=21)
    files = {
        "training": training_events,
        "reference": simulate("mumu", 4000, seed=22),
        "sample": simulate("mumu", 2000, seed=23),
        "copies": slice_events(training_events, 0, 2000),  # a "model" that returns training events
    }
    for name, tables in files.items():
        with EventWriter(tmp_path / f"{name}.h5", {"generator": "test", "name": name}, mc=True) as writer:
            writer.append(tables)
    # alpha 0.001: the honest run below is one draw of a calibrated test
    options = ("--folds", "2", "--permutations", "100", "--null-trials", "0", "--alpha", "0.001", "--json")

    def run(sample: str, training: str, report: str) -> Any:
        return run_cli("evaluate", "--sample", tmp_path / f"{sample}.h5", "--reference", tmp_path / "reference.h5",
                       "--training", tmp_path / f"{training}.h5", "--report", tmp_path / report, *options)

    honest = run("sample", "training", "honest")
    summary = json.loads(honest.stdout)
    assert summary["memorisation"]["passed"] is True and honest.exit_code == 0, honest.stderr
    data = json.loads((tmp_path / "honest" / "evaluation.json").read_text())
    assert data["memorisation"]["n_training"] == 5000 and data["training"]["path"].endswith("training.h5")
    assert data["memorisation"]["n_features"] > 40
    html = (tmp_path / "honest" / "report.html").read_text()
    assert "Memorisation: passed" in html and "alt='memorisation'" in html

    copied = run("copies", "training", "copied")
    assert copied.exit_code == 1
    assert "closer to the training events" in copied.stderr.strip().splitlines()[-1]
    summary = json.loads(copied.stdout)
    assert summary["memorisation"]["passed"] is False and summary["memorisation"]["near_copy_fraction"] == 1.0
    assert "memorisation" in summary["failed"]
    assert "Memorisation: FAILED" in (tmp_path / "copied" / "report.html").read_text()

    gated = run_cli("evaluate", "--sample", tmp_path / "copies.h5", "--reference", tmp_path / "reference.h5",
                    "--training", tmp_path / "training.h5", "--report", tmp_path / "gated", "--gate",
                    Path(__file__).parents[1] / "evaluation" / "data" / "gates.yaml", "--family", "surrogate",
                    *options)
    assert gated.exit_code == 1 and "no memorisation of the training events" in " ".join(
        json.loads(gated.stdout)["failed_gates"]
    )

    same = run("sample", "reference", "same")
    assert same.exit_code == 2 and "held out from training" in same.stderr
