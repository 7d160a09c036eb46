"""Evaluation suite, unit level: every metric against numbers known in closed form, refusals, null calibration,
reports, the CLI on numeric tables. (Sensitivity on generated physics samples: test_evaluation_sensitivity.py;
gates and MLflow promotion: test_evaluation_gates.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from vbes.evaluation import metrics
from vbes.evaluation.classifier import auc_standard_error, classifier_test
from vbes.evaluation.distances import fpd, kpd
from vbes.evaluation.features import (
    JPSI_MASS,
    boost_to_rest_frame,
    feature_table,
    invariant_mass,
    jpsi_four_momentum,
)
from vbes.evaluation.fidelity import array_fidelity, error_summary, momentum_errors, positive_definite_fraction
from vbes.evaluation.null import MetricValue, calibrate, holm, minimum_null_trials, null_splits, tail_pvalue
from vbes.evaluation.observables import fit_peak
from vbes.evaluation.suite import EvaluationConfig, evaluate

from vbes.errors import InsufficientSample, InvalidInput, NothingTested, TooFewNullTrials

RNG = np.random.default_rng(20260)
FAST = EvaluationConfig(null_trials=0, classifier_folds=2, classifier_max_iter=50, permutations=100)


# --- per-feature metrics ---------------------------------------------------------------------------------


def test_w1_of_shifted_gaussians_is_the_shift_and_scales_with_resolution() -> None:
    a, b = RNG.normal(0.3, 1, 200_000), RNG.normal(0, 1, 200_000)
    result = metrics.wasserstein1(a, b, resolution=0.1)
    # W1 between N(d, 1) and N(0, 1) is exactly d
    assert result.value == pytest.approx(0.3, abs=0.01)
    assert result.value_over_resolution == pytest.approx(3.0, abs=0.1)
    assert metrics.wasserstein1(a, b).value_over_resolution is None


def test_w1_and_ks_agree_with_scipy_including_ties() -> None:
    a, b = RNG.integers(0, 6, 3000).astype(float), RNG.integers(0, 7, 2000).astype(float)
    w1, ks = metrics.w1_and_ks(a, b)
    assert w1.value == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-12)
    reference = stats.ks_2samp(a, b, method="asymp")
    assert ks.statistic == pytest.approx(reference.statistic)
    assert ks.pvalue == pytest.approx(reference.pvalue)


def test_ks_pvalue_is_uniform_under_the_null_and_tiny_for_a_shift() -> None:
    pvalues = [metrics.kolmogorov_smirnov(RNG.normal(size=2000), RNG.normal(size=2000)).pvalue for _ in range(200)]
    assert 0.4 < np.mean(pvalues) < 0.6
    assert metrics.kolmogorov_smirnov(RNG.normal(0.2, 1, 5000), RNG.normal(size=5000)).pvalue < 1e-10


def test_chi2_is_chi2_distributed_under_the_null() -> None:
    edges = metrics.fixed_bins(RNG.normal(size=100_000), n_bins=30)
    values = [metrics.chi2_ndf(RNG.normal(size=5000), RNG.normal(size=8000), edges) for _ in range(100)]
    assert np.mean([v.chi2_ndf for v in values]) == pytest.approx(1.0, abs=0.1)
    # 30 inner bins + under/overflow - 1, fewer where a sparse tail bin was merged with its neighbour
    assert 28 <= values[0].ndf <= 31


def test_chi2_of_sparse_histograms_keeps_its_level() -> None:
    # 40 bins over a steep power of an exponential: many nearly empty at 2000 events, where the chi2 distribution
    # does not hold (unmerged: p < 0.1 in 5 % of identical pairs). Merged to >= 10 entries per bin it does.
    edges = metrics.fixed_bins(RNG.exponential(1.0, 200_000) ** 3)
    pvalues = np.array(
        [metrics.chi2_ndf(RNG.exponential(1.0, 2000) ** 3, RNG.exponential(1.0, 2000) ** 3, edges).pvalue
         for _ in range(400)]
    )
    assert np.mean(pvalues < 0.01) < 0.025 and np.mean(pvalues < 0.1) == pytest.approx(0.1, abs=0.035)
    merged = metrics.chi2_counts(np.array([1, 0, 50, 50, 0, 2]), np.array([0, 1, 50, 50, 3, 0]))
    # pooled (1, 1, 100 | 100 | 3, 2): three bins close the first group, the sparse rest joins the second: ndf 1
    assert merged.ndf == 1


def test_separation_power_limits() -> None:
    edges = metrics.fixed_bins(np.linspace(0, 10, 1000), n_bins=20)
    assert metrics.separation_power(RNG.uniform(0, 4, 5000), RNG.uniform(6, 10, 5000), edges) == pytest.approx(1.0)
    same = metrics.separation_power(RNG.uniform(0, 10, 50_000), RNG.uniform(0, 10, 50_000), edges)
    assert same < 0.001


def test_fixed_bins_use_integers_for_counts_and_catch_everything() -> None:
    edges = metrics.fixed_bins(np.array([2, 2, 3, 4, 4, 4, 7], float))
    assert np.isneginf(edges[0]) and np.isposinf(edges[-1])
    assert np.allclose(np.diff(edges[1:-1]), 1.0)


def test_correlation_difference_finds_a_removed_correlation() -> None:
    cov = [[1, 0.8], [0.8, 1]]
    a = RNG.multivariate_normal([0, 0], cov, 20_000)
    b = np.column_stack([a[:, 0], RNG.permutation(a[:, 1])])
    result = metrics.correlation_difference(b, a, ("x", "y"))
    assert result.max_abs == pytest.approx(0.8, abs=0.03)


@pytest.mark.parametrize("metric", ["w1", "ks", "chi2", "separation_power", "correlation"])
def test_every_metric_refuses_below_its_minimum(metric: str) -> None:
    need = metrics.MIN_EVENTS[metric]
    few, many = RNG.normal(size=need - 1), RNG.normal(size=need * 2)
    calls = {
        "w1": lambda: metrics.wasserstein1(few, many),
        "ks": lambda: metrics.kolmogorov_smirnov(few, many),
        "chi2": lambda: metrics.chi2_ndf(few, many, metrics.fixed_bins(many)),
        "separation_power": lambda: metrics.separation_power(few, many, metrics.fixed_bins(many)),
        "correlation": lambda: metrics.correlation_difference(
            np.column_stack([few, few]), np.column_stack([many, many])
        ),
    }
    with pytest.raises(InsufficientSample, match=str(need)):
        calls[metric]()


def test_classifier_and_distances_refuse_small_samples() -> None:
    with pytest.raises(InsufficientSample, match="1000"):
        classifier_test(RNG.normal(size=(999, 2)), RNG.normal(size=(5000, 2)))
    with pytest.raises(InsufficientSample, match="5000"):
        fpd(RNG.normal(size=(4000, 2)), RNG.normal(size=(9000, 2)))
    with pytest.raises(InsufficientSample, match="1000"):
        kpd(RNG.normal(size=(900, 2)), RNG.normal(size=(9000, 2)))


# --- classifier, FPD, KPD --------------------------------------------------------------------------------


def test_auc_error_at_half_is_the_mann_whitney_null() -> None:
    n1, n2 = 5000, 7000
    assert auc_standard_error(0.5, n1, n2) == pytest.approx(np.sqrt((n1 + n2 + 1) / (12 * n1 * n2)), rel=1e-3)


def test_classifier_reaches_the_optimal_auc_of_two_gaussians() -> None:
    # the best possible classifier of N(d, 1) vs N(0, 1) has AUC = Phi(d / sqrt 2)
    shift = 0.5
    a = np.column_stack([RNG.normal(shift, 1, 20_000), RNG.normal(size=20_000)])
    b = RNG.normal(size=(20_000, 2))
    result = classifier_test(a, b, n_folds=3, seed=2, max_iter=100)
    assert result.auc == pytest.approx(stats.norm.cdf(shift / np.sqrt(2)), abs=0.01)
    assert next(iter(result.feature_importance)) == "x0"


def test_classifier_on_identical_distributions_gives_half_within_its_error() -> None:
    result = classifier_test(RNG.normal(size=(20_000, 3)), RNG.normal(size=(20_000, 3)), n_folds=3, seed=3)
    assert abs(result.auc - 0.5) < 3 * result.auc_error
    assert result.pvalue > 0.001


def test_fpd_extrapolates_to_the_known_frechet_distance() -> None:
    # Frechet distance of N(mu, I) and N(0, I) is |mu|^2; of N(0, s^2 I) and N(0, I) it is d (1 - s)^2
    d = 4
    b = RNG.normal(size=(60_000, d))
    shifted = fpd(RNG.normal(0.2, 1, (60_000, d)), b, seed=1)
    assert shifted.value == pytest.approx(d * 0.2**2, abs=max(5 * shifted.error, 0.01))
    assert shifted.pvalue < 1e-6
    wider = fpd(RNG.normal(0, 1.2, (60_000, d)), b, seed=1)
    assert wider.value == pytest.approx(d * 0.2**2, abs=max(5 * wider.error, 0.01))
    same = fpd(RNG.normal(size=(60_000, d)), b, seed=1)
    # extrapolated without clipping at 0: an identical distribution scatters around 0
    assert abs(same.value) < 0.005 and same.pvalue > 1e-3


def test_kpd_is_zero_for_the_same_distribution_and_positive_for_a_shift() -> None:
    b = RNG.normal(size=(20_000, 3))
    same = kpd(RNG.normal(size=(20_000, 3)), b, seed=1)
    assert abs(same.value) < 4 * same.null_std and same.pvalue > 1e-3
    shifted = kpd(RNG.normal(0.1, 1, (20_000, 3)), b, seed=1)
    assert shifted.value > 5 * same.null_std and shifted.pvalue < 1e-6


@pytest.mark.parametrize("function, sizes", [(fpd, {}), (kpd, {"batch_size": 300, "n_batches": 3})])
def test_distance_pvalues_are_uniform_under_the_null(function, sizes) -> None:
    # 40 reference-vs-reference pairs: about 4 p-values below 0.1 expected, none near 0
    pvalues = np.array(
        [
            function(RNG.normal(size=(6000, 3)), RNG.normal(size=(6000, 3)), n_permutations=100, seed=k, **sizes).pvalue
            for k in range(40)
        ]
    )
    assert 0.3 < pvalues.mean() < 0.7
    assert np.mean(pvalues < 0.1) < 0.25 and pvalues.min() > 1e-3


def test_classifier_leaves_out_features_too_sparse_to_split_on() -> None:
    # slots no event fills (a third track of single-particle gun events) made the trees' binning crash
    def sample(shift: float) -> np.ndarray:
        x = np.column_stack([RNG.normal(shift, 1, 4000), np.full(4000, np.nan), np.full(4000, np.nan)])
        x[:3, 2] = 1.0  # present in 3 events per sample: 6 < MIN_LEAF values in all
        return x

    names = ["p", "track3_p", "shower4_energy"]
    result = classifier_test(sample(0.5), sample(0.0), n_folds=2, seed=5, max_iter=50, feature_names=names)
    assert result.dropped_features == ["track3_p", "shower4_energy"]
    assert result.n_features == 1 and list(result.feature_importance) == ["p"]
    # what the remaining feature tells apart is still found: Phi(0.5 / sqrt 2) = 0.638
    assert result.auc == pytest.approx(stats.norm.cdf(0.5 / np.sqrt(2)), abs=0.03)
    with pytest.raises(InsufficientSample, match="no feature"):
        classifier_test(sample(0.0)[:, 1:], sample(0.0)[:, 1:])


def test_suite_compares_samples_with_a_feature_absent_everywhere() -> None:
    def table(seed: int, n: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {"p": rng.normal(size=n), "e": rng.exponential(size=n), "never": np.full(n, np.nan)}

    result = evaluate(table(1, 3000), table(2, 6000), config=FAST)
    auc = result.test("classifier/auc")
    assert auc.details["dropped_features"] == ["never"] and auc.details["n_features"] == 2
    assert abs(auc.value - 0.5) < 4 * auc.details["null_error"]


def test_classifier_null_error_is_the_per_fold_mann_whitney_error() -> None:
    result = classifier_test(RNG.normal(size=(3000, 2)), RNG.normal(size=(3000, 2)), n_folds=3, seed=4, max_iter=20)
    # three folds of 1000 + 1000: each fold AUC has variance 2001 / (12 1000^2); their mean a third of it
    assert result.null_error == pytest.approx(np.sqrt(2001 / 12e6 / 3), rel=1e-6)
    assert result.auc == pytest.approx(np.mean(result.fold_aucs))


# --- null calibration and multiple testing -------------------------------------------------------------


def test_null_splits_are_disjoint_and_size_matched() -> None:
    for first, second in null_splits(1000, 400, 5, seed=1):
        assert first.size == second.size == 400
        assert not set(first) & set(second)
    with pytest.raises(InsufficientSample):
        null_splits(1000, 501, 1)


def test_holm_is_at_least_as_powerful_as_bonferroni() -> None:
    # ten tests at alpha = 0.05: Bonferroni judges each at 0.005; Holm judges the second smallest at 0.05/9
    pvalues = [0.004, 0.0054] + [0.5] * 8
    rejected, levels = holm(pvalues, 0.05)
    assert list(rejected[:2]) == [True, True] and not rejected[2:].any()
    assert levels[0] == pytest.approx(0.005) and levels[1] == pytest.approx(0.05 / 9)
    # step-down: 0.0049 < 0.05/2 is rejected after 0.001 < 0.05/3, then 0.04 < 0.05/1
    assert list(holm([0.001, 0.04, 0.0049], 0.05)[0]) == [True, True, True]
    assert list(holm([0.001, 0.06, 0.0049], 0.05)[0]) == [True, False, True]
    assert list(holm([0.03, 0.04], 0.05)[0]) == [False, False]


def test_calibrate_counts_distinct_hypotheses_and_reused_pvalues_follow() -> None:
    tests = {f"t{i}": MetricValue(0.0, 0.5) for i in range(8)}
    tests |= {"rare": MetricValue(2.6, 0.01), "rarer": MetricValue(2.9, 0.004)}
    results = {r.name: r for r in calibrate(tests, [], alpha=0.05)}
    assert results["rare"].passed and not results["rarer"].passed
    assert results["rare"].threshold == pytest.approx(0.05 / 9)
    # a test that reuses "rarer"'s p-value fails with it and does not enlarge m
    by_name = {r.name: r for r in calibrate(tests | {"copy": MetricValue(0.1, 0.004, reuses="rarer")}, [], 0.05)}
    assert not by_name["copy"].passed and not by_name["copy"].counted
    assert by_name["rarer"].threshold == pytest.approx(0.005)
    assert not calibrate({"rare": MetricValue(2.6, 0.01)}, [], alpha=0.05)[0].passed


def test_tail_pvalue_follows_the_null_far_beyond_its_draws() -> None:
    # 200 draws of a chi2(4) null; the exact tail probability from scipy is the outside number
    for target in (1e-3, 1e-5):
        observed = stats.chi2.isf(target, 4)
        estimates = [tail_pvalue(observed, RNG.chisquare(4, 200)) for _ in range(50)]
        assert 0.3 * target < np.median(estimates) < 5 * target
    # inside the draws it is the empirical fraction: uniform for draws from the null itself
    pvalues = [tail_pvalue(RNG.chisquare(4), RNG.chisquare(4, 200)) for _ in range(2000)]
    assert np.mean(np.array(pvalues) < 0.05) == pytest.approx(0.05, abs=0.015)


def test_w1_pvalues_are_calibrated_for_continuous_and_integer_features() -> None:
    from vbes.evaluation.metrics import SortedReference, fixed_bins

    for draw in (lambda size: RNG.exponential(1.0, size), lambda size: RNG.poisson(2.0, size).astype(float)):
        reference = draw(40_000)
        sorted_reference = SortedReference(reference, fixed_bins(reference))
        t = []
        for _ in range(300):
            c = sorted_reference.compare(draw(4000), RNG.choice(40_000, 4000, replace=False))
            t.append(c.w1 / np.sqrt(2 / 4000))
        pvalues = np.array([tail_pvalue(v, sorted_reference.w1_null) for v in t])
        assert np.mean(pvalues < 0.05) == pytest.approx(0.05, abs=0.03)
    # the null mean against the closed form: E integral |B(F(x))| dx = integral sqrt(2 F (1 - F) / pi) dx
    from scipy import integrate

    reference = RNG.normal(size=200_000)
    exact = integrate.quad(lambda x: np.sqrt(2 * stats.norm.cdf(x) * stats.norm.sf(x) / np.pi), -10, 10)[0]
    null = SortedReference(reference, fixed_bins(reference)).w1_null
    assert null.mean() == pytest.approx(exact, rel=0.03)


def test_too_few_null_splits_for_alpha_are_refused() -> None:
    assert minimum_null_trials(0.05) == 19 and minimum_null_trials(0.01) == 99
    with pytest.raises(TooFewNullTrials, match="null-trials 2 is too few for alpha = 0.05.*at least 19"):
        EvaluationConfig(null_trials=2).check()
    EvaluationConfig(null_trials=0).check()  # no self-check at all is a choice, not a weaker test


# --- kinematics, peaks, fidelity -------------------------------------------------------------------------


def test_boost_puts_the_jpsi_at_rest_and_two_body_momentum_is_recovered() -> None:
    jpsi = jpsi_four_momentum()
    assert invariant_mass(jpsi) == pytest.approx(JPSI_MASS)
    assert np.allclose(boost_to_rest_frame(jpsi[None], jpsi)[0], [JPSI_MASS, 0, 0, 0], atol=1e-12)
    assert jpsi[1] == pytest.approx(JPSI_MASS * np.tan(0.011))


def test_fit_peak_recovers_a_gaussian_on_a_background() -> None:
    values = np.concatenate([RNG.normal(0.135, 0.006, 20_000), RNG.uniform(0.0, 0.3, 5000)])
    fit = fit_peak(values)
    assert fit.position == pytest.approx(0.135, abs=4 * fit.position_error)
    assert fit.width == pytest.approx(0.006, rel=0.05)
    with pytest.raises(InsufficientSample):
        fit_peak(values[:100])


def test_feature_table_of_schema_valid_events() -> None:
    from vbes.datasets.eventfile import example_tables

    tables = example_tables(500, seed=3)
    table = feature_table(tables, "rhopi")
    assert table.values.shape == (500, len(table.names))
    assert "m_gg" in table.names and "track1_chi_dedx_K" in table.names and "shower2_lat_moment" in table.names
    # slot 0 is present exactly in events with at least one track
    present = np.isfinite(table.column("track0_p"))
    assert np.array_equal(present, tables["events"]["n_tracks"] > 0)


def test_fidelity_errors_in_units_of_resolution() -> None:
    original = RNG.normal(size=(10_000, 2))
    decoded = original + np.array([0.05, 0.5]) * RNG.uniform(-1, 1, (10_000, 2))
    report = array_fidelity(original, decoded, resolution=[0.1, None], names=["a", "b"], bound=0.4)
    assert report.variables["a"]["max_abs"] <= 0.5 + 1e-9
    assert report.variables["a"]["fraction_beyond_bound"] == pytest.approx(0.2, abs=0.02)
    assert "fraction_beyond_bound" not in report.variables["b"]
    assert report.flat()["variables/a/fraction_beyond_bound"] == report.variables["a"]["fraction_beyond_bound"]
    summary = error_summary(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 0.1, 1.0)
    assert summary["nan_mismatch"] == 1 and summary["fraction_beyond_bound"] == 0.5


def test_positive_definiteness_of_packed_covariances() -> None:
    from vbes.datasets.schema import pack_symmetric

    good = pack_symmetric(np.stack([np.eye(5) * 2, np.diag([1, 2, 3, 4, 5.0])]))
    bad = pack_symmetric(np.diag([1, 1, -1e-9, 1, 1.0])[None])
    assert positive_definite_fraction(np.concatenate([good, bad])) == pytest.approx(2 / 3)


def test_momentum_error_propagation_matches_monte_carlo() -> None:
    from vbes.datasets.schema import pack_symmetric

    helix = np.array([[0.1, 0.3, 0.8, 0.2, 0.5]])
    cov = np.diag([1e-4, 1e-6, 4e-6, 1e-4, 2e-6])
    cov[2, 4] = cov[4, 2] = 1.5e-6
    draws = RNG.multivariate_normal(helix[0], cov, 200_000)
    p = np.sqrt(1 + draws[:, 4] ** 2) / np.abs(draws[:, 2])
    assert momentum_errors(helix, pack_symmetric(cov[None]))["p"][0] == pytest.approx(p.std(), rel=0.02)


# --- whole suite on numeric tables ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numeric_reference() -> np.ndarray:
    cov = np.full((5, 5), 0.3) + 0.7 * np.eye(5)
    return np.random.default_rng(5).multivariate_normal(np.zeros(5), cov, 40_000)


def test_suite_passes_a_sample_of_the_same_distribution(numeric_reference: np.ndarray) -> None:
    cov = np.full((5, 5), 0.3) + 0.7 * np.eye(5)
    sample = np.random.default_rng(6).multivariate_normal(np.zeros(5), cov, 20_000)
    result = evaluate(sample, numeric_reference, config=EvaluationConfig(null_trials=19, classifier_folds=2))
    assert result.passed, result.failed
    # 5 features x (W1, KS, chi2, separation) + correlations + FPD + KPD + classifier; separation reuses chi2
    assert len(result.tests) == 5 * 4 + 4 and result.n_hypotheses == 5 * 3 + 4
    auc = result.test("classifier/auc")
    assert abs(auc.value - 0.5) < 3 * auc.details["auc_error"]
    assert auc.null_values == [] and len(result.test("features/x0/w1").null_values) == 19
    assert result.calibration["n_splits"] == 19 and "features/*/ks" in result.calibration["families"]


def test_suite_flags_a_broken_correlation_through_correlations_and_classifier(numeric_reference: np.ndarray) -> None:
    cov = np.full((5, 5), 0.3) + 0.7 * np.eye(5)
    sample = np.random.default_rng(7).multivariate_normal(np.zeros(5), cov, 20_000)
    sample[:, 2] = np.random.default_rng(8).permutation(sample[:, 2])  # marginals unchanged
    result = evaluate(sample, numeric_reference, config=FAST)
    corr = result.test("correlations/max_abs_z")
    assert not corr.passed and "x2" in corr.details["worst_pair"]
    assert not result.test("classifier/auc").passed
    assert not result.test("distances/fpd").passed and not result.test("distances/kpd").passed
    assert all(result.test(f"features/x{i}/ks").passed for i in range(5))


def test_multivariate_tests_see_features_present_in_few_events() -> None:
    # x1 exists in 30 % of events only, where it follows x0; the sample breaks that pairing
    def table(seed: int, n: int, paired: bool) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        x0 = rng.normal(size=n)
        x1 = (x0 if paired else rng.permutation(x0)) + 0.3 * rng.normal(size=n)
        return {"x0": x0, "x1": np.where(rng.random(n) < 0.3, x1, np.nan)}

    result = evaluate(table(1, 20_000, False), table(2, 40_000, True), config=FAST)
    assert "present(x1)" in result.correlation["names"] and "x1" in result.correlation["names"]
    assert not result.test("correlations/max_abs_z").passed
    assert set(result.test("correlations/max_abs_z").details["worst_pair"]) == {"x0", "x1"}
    assert result.test("features/x1/presence").passed and result.test("features/x1/ks").passed


def test_presence_tests_of_one_missing_object_are_one_hypothesis() -> None:
    # a and b are present in the same events (one "track"); the sample loses it in 5 % of the events
    def table(seed: int, n: int, lost: float) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        there = rng.random(n) >= 0.1 + lost
        return {k: np.where(there, rng.normal(size=n), np.nan) for k in ("a", "b", "c")}

    result = evaluate(table(1, 10_000, 0.05), table(2, 20_000, 0.0), config=FAST)
    presence = {k: result.test(f"features/{k}/presence") for k in "abc"}
    assert [p.counted for p in presence.values()] == [True, False, False]
    assert not any(p.passed for p in presence.values())
    finding = next(f for f in result.findings if f["test"] == "features/a/presence")
    assert finding["consequences"] == ["features/b/presence", "features/c/presence"]
    assert not any(result.features[k]["passed"] for k in "abc")  # the verdict of a feature includes presence


def test_suite_skips_what_is_too_small_and_says_why() -> None:
    result = evaluate(RNG.normal(size=(150, 2)), RNG.normal(size=(400, 2)), config=FAST)
    assert "classifier/auc" in result.skipped and "1000" in result.skipped["classifier/auc"]
    assert "distances/fpd" in result.skipped
    assert "features/x0/chi2_ndf" in result.skipped and "200" in result.skipped["features/x0/chi2_ndf"]
    assert result.test("features/x0/w1").pvalue > 0.001
    with pytest.raises(NothingTested, match="no test could run"):
        evaluate(RNG.normal(size=(50, 2)), RNG.normal(size=(100, 2)), config=FAST)


def test_suite_refuses_mismatched_features() -> None:
    with pytest.raises(NothingTested, match="different features .0 shared"):
        evaluate({"a": np.zeros(10)}, {"b": np.zeros(20)}, config=FAST)
    with pytest.raises(InvalidInput, match="different features .1 shared"):
        evaluate({"a": np.zeros(10), "c": np.ones(10)}, {"a": np.zeros(20)}, config=FAST)


# --- report and CLI ---------------------------------------------------------------------------------------


def _cli_options(*extra: object) -> tuple[object, ...]:
    return ("--folds", "2", "--permutations", "100", *extra)


def test_report_and_cli_on_numeric_tables(tmp_path, run_cli, numeric_reference: np.ndarray) -> None:
    reference = tmp_path / "reference.npy"
    sample = tmp_path / "sample.npy"
    np.save(reference, numeric_reference)
    np.save(sample, numeric_reference[:15_000] + np.array([0.1, 0, 0, 0, 0]))  # x0 shifted
    report = tmp_path / "report"
    result = run_cli(
        "evaluate", "--sample", sample, "--reference", reference, "--report", report, "--json", *_cli_options()
    )
    # a failed evaluation exits 1 after writing its report (pytest's convention)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vbes: error: the sample differs")
    summary = json.loads(result.stdout)
    assert summary["passed"] is False and "features/x0/ks" in summary["failed"]
    assert summary["failed_features"] == ["x0"]
    data = json.loads((report / "evaluation.json").read_text())
    counted = [t for t in data["tests"] if t["counted"]]
    assert data["n_tests"] == len(data["tests"]) and data["multiple_testing"]["n_hypotheses"] == len(counted)
    assert data["multiple_testing"]["smallest_level"] == pytest.approx(0.05 / len(counted))
    assert data["features"]["x0"]["passed"] is False and data["features"]["x1"]["passed"] is True
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and "Holm" in html and "features/x0/ks" in html
    # what a physicist reads first comes first; the table of every test is folded at the end
    assert html.index("Failed tests") < html.index("Per-feature summary") < html.index("<details>")
    assert "overlap" in html  # the null splits are described as they are

    same = tmp_path / "same.npy"
    np.save(same, np.random.default_rng(9).multivariate_normal(np.zeros(5), np.full((5, 5), 0.3) + 0.7 * np.eye(5),
                                                               15_000))
    ok = run_cli("evaluate", "--sample", same, "--reference", reference, "--report", tmp_path / "r0", *_cli_options())
    assert ok.exit_code == 0, ok.stderr
    assert "evaluation PASSED: 0 of" in ok.stdout


@pytest.mark.parametrize(
    "arguments, message",
    [
        (("--null-trials", "2"), "null-trials 2 is too few for alpha = 0.05"),
        (("--gate", "missing.yaml"), "missing.yaml"),
        (("--null-trials", "19", "--alpha", "0.01"), "at least 99"),
    ],
)
def test_cli_refuses_bad_usage_with_exit_2(tmp_path, run_cli, arguments, message) -> None:
    np.save(tmp_path / "reference.npy", RNG.normal(size=(4000, 2)))
    np.save(tmp_path / "sample.npy", RNG.normal(size=(2000, 2)))
    arguments = tuple(tmp_path / a if a.endswith(".yaml") else a for a in arguments)
    result = run_cli("evaluate", "--sample", tmp_path / "sample.npy", "--reference", tmp_path / "reference.npy",
                     "--report", tmp_path / "report", *arguments)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vbes: error:") and message in lines[0]
    assert not (tmp_path / "report").exists()


def test_cli_evaluation_that_tests_nothing_is_an_error(tmp_path, run_cli) -> None:
    np.savez(tmp_path / "a.npz", energy=RNG.normal(size=3000))
    np.savez(tmp_path / "b.npz", momentum=RNG.normal(size=6000))
    result = run_cli("evaluate", "--sample", tmp_path / "a.npz", "--reference", tmp_path / "b.npz",
                     "--report", tmp_path / "report")
    assert result.exit_code == 2 and "PASSED" not in result.stdout
    assert result.stderr.strip().startswith("vbes: error: sample and reference have different features (0 shared")
    missing = run_cli("evaluate", "--sample", tmp_path / "nope.npy", "--reference", tmp_path / "b.npz",
                      "--report", tmp_path / "report")
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_fidelity_of_decoded_events_uses_each_tracks_covariance() -> None:
    from vbes.datasets.schema import unpack_symmetric
    from vbes.datasets.simulation import simulate
    from vbes.evaluation.fidelity import fidelity, helix_errors

    original = simulate("mumu", 3000, seed=7)
    decoded = {t: {k: np.array(v, copy=True) for k, v in cols.items()} for t, cols in original.items()}
    tracks = decoded["tracks"]
    sigma = helix_errors(original["tracks"]["helix_cov"])
    # every helix parameter off by exactly 0.5 of its own error, and 1 % of tracks by 3 errors in kappa
    tracks["helix"] = original["tracks"]["helix"] + 0.5 * sigma
    bad = np.arange(0, len(sigma), 100)
    tracks["helix"][bad, 2] = original["tracks"]["helix"][bad, 2] + 3 * sigma[bad, 2]
    # one covariance matrix no longer positive-definite
    cov = unpack_symmetric(tracks["helix_cov"][:1])
    cov[0, 2, 2] = -cov[0, 2, 2]
    tracks["helix_cov"][0] = cov[0][np.tril_indices(5)]
    report = fidelity(original, decoded, bound=1.0)
    kappa = report.variables["tracks.helix.kappa"]
    assert kappa["max_abs"] == pytest.approx(3.0, rel=1e-6)
    assert kappa["fraction_beyond_bound"] == pytest.approx(len(bad) / len(sigma))
    assert report.variables["tracks.helix.dr"]["max_abs"] == pytest.approx(0.5, rel=1e-6)
    assert report.variables["tracks.helix.dr"]["fraction_beyond_bound"] == 0.0
    assert report.covariance["positive_definite_fraction"] == pytest.approx(1 - 1 / len(sigma))
    # untouched observables do not move; the report carries each one's shift in statistical errors
    assert report.observables["m_ll.position"]["shift_over_stat_error"] == 0.0
    assert "covariance/positive_definite_fraction" in report.flat()
    # the shipped codec gates catch both: 1 % of kappa values beyond the bound, a broken covariance
    from vbes.evaluation.gates import check_gates

    failed = {g["metric"] for g in check_gates(report.flat(), family="codec").failed}
    assert failed == {"variables/tracks.helix.kappa/fraction_beyond_bound", "covariance/positive_definite_fraction"}
