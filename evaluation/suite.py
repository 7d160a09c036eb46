"""The whole comparison of a sample A with a reference B: every metric, its null calibration, one verdict.

:func:`evaluate` runs, on size-matched event sets (``n = min(N_A, N_B // 2)`` events of each, so the reference can
also supply two disjoint halves of that size for the null):

1. per feature: W1 (also in units of resolution), KS, chi2/ndf on fixed bins, separation power, and the fraction
   of events where the feature is present;
2. correlations: the largest absolute difference of the correlation matrices;
3. the classifier two-sample test (at most ``classifier_events`` per sample);
4. FPD and KPD;
5. the channel's physics observables (event files only);

and the same on ``null_trials`` reference-vs-reference splits (``distance_null_trials`` for FPD and KPD,
``classifier_null_trials`` for the classifier), then :func:`vbes.evaluation.null.calibrate` gives every test its null mean +- spread and pass/fail with the
trials factor m = number of tests.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from vbes.evaluation import metrics
from vbes.evaluation.classifier import classifier_test
from vbes.evaluation.distances import fpd, kpd
from vbes.evaluation.features import FeatureTable, channel_of, feature_table, table_from_array
from vbes.evaluation.null import MetricResult, MetricValue, calibrate, null_splits
from vbes.evaluation.observables import (
    Observable,
    channel_observables,
    compare_observable,
    fixed_edges,
    reference_half_width,
)

from vbes.errors import InsufficientSample, InvalidInput, NotFound

__all__ = ["Evaluation", "EvaluationConfig", "Sample", "evaluate", "flatten", "load_sample", "sample_from_tables"]

#: a feature enters the correlation matrix and FPD/KPD when present in at least this fraction of reference events
PRESENCE_FOR_MULTIVARIATE = 0.9


@dataclass
class EvaluationConfig:
    """Knobs of :func:`evaluate` (all recorded in the JSON).

    Args:
        alpha: family-wise false-alarm probability (split over all tests, Bonferroni).
        null_trials: reference-vs-reference splits for the per-feature metrics, correlations and observables
            (cheap; distances without a known null need many splits for a trustworthy prediction bound).
        distance_null_trials: splits for FPD and KPD.
        classifier_null_trials: splits for the classifier test.
        classifier_events: most events per sample in the classifier test.
        classifier_folds: k of its k-fold.
        classifier_max_iter: most boosting iterations per fold (early stopping usually ends sooner).
        max_events: most events per sample for the other metrics (None: as many as size matching allows).
        distances: compute FPD and KPD.
        seed: seed of every subsampling.
    """

    alpha: float = 0.05
    null_trials: int = 20
    distance_null_trials: int = 5
    classifier_null_trials: int = 5
    classifier_events: int = 200_000
    classifier_folds: int = 5
    classifier_max_iter: int = 200
    max_events: int | None = None
    distances: bool = True
    seed: int = 0


@dataclass
class Sample:
    """What is compared: the feature table, the physics observables (event files only) and where it came from."""

    features: FeatureTable
    observables: list[Observable] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, rows: np.ndarray) -> Sample:
        return Sample(self.features.subset(rows), [o.subset(rows) for o in self.observables], self.info)


_EVENT_FIELDS = {
    "events": ["run", "event", "channel", "n_tracks", "n_showers", "n_truth", "weight"],
    "tracks": [
        "charge",
        "p",
        "px",
        "py",
        "pz",
        "cos_theta",
        "phi",
        "dedx",
        "chi_dedx",
        "tof",
        "emc_energy",
        "emc_index",
        "muc_depth",
    ],
    "showers": ["energy", "theta", "phi", "time", "n_crystals", "e3x3", "e5x5", "lat_moment"],
}


def sample_from_tables(
    tables: Mapping[str, Mapping[str, np.ndarray]], channel: str | None = None, info: dict[str, Any] | None = None
) -> Sample:
    """A :class:`Sample` from an event batch ``{table: {field: array}}``."""
    channel = channel or channel_of(tables)
    n = len(tables["events"]["n_tracks"])
    return Sample(
        feature_table(tables, channel),
        channel_observables(tables, channel),
        {"n_events": n, "channel": channel, **(info or {})},
    )


def _is_event_file(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "vbes_format" in f.attrs
    except OSError:
        return False


def load_sample(
    source: str | os.PathLike[str] | Mapping[str, Any] | np.ndarray | FeatureTable | Sample, channel: str | None = None
) -> Sample:
    """Turn what the user brings into a :class:`Sample`.

    Accepts an event file (the vbes HDF5 layout), a numeric table file (``.npy`` 2-D or structured, ``.npz`` of
    equal-length columns, ``.csv`` with a header line, or a plain HDF5 file whose top-level 1-D datasets are the
    columns), an in-memory event batch, an array / dict of columns, a :class:`FeatureTable` or a :class:`Sample`.
    """
    if isinstance(source, Sample):
        return source
    if isinstance(source, FeatureTable):
        return Sample(source, [], {"n_events": len(source)})
    if isinstance(source, Mapping) and "events" in source:
        return sample_from_tables(source, channel)
    if isinstance(source, (Mapping, np.ndarray)):
        table = table_from_array(source)
        return Sample(table, [], {"n_events": len(table)})
    path = Path(source)
    if not path.exists():
        raise NotFound(f"{path}: no such file")
    info: dict[str, Any] = {"path": str(path)}
    if path.suffix in (".h5", ".hdf5") and _is_event_file(path):
        from vbes.datasets import file_info, read_events

        meta = file_info(path)
        info.update({"n_events": meta["n_events"], "digest": meta["digest"], "provenance": meta["provenance"]})
        tables = read_events(path, fields=_EVENT_FIELDS)
        return sample_from_tables(tables, channel, info)
    table = _read_numeric_table(path)
    info["n_events"] = len(table)
    return Sample(table, [], info)


def _read_numeric_table(path: Path) -> FeatureTable:
    try:
        if path.suffix == ".npy":
            return table_from_array(np.load(path, allow_pickle=False))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return table_from_array({k: data[k] for k in data.files})
        if path.suffix == ".csv":
            data = np.genfromtxt(path, delimiter=",", names=True)
            return table_from_array(data)
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                columns = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset) and f[k].ndim == 1}
            if not columns:
                raise InvalidInput(f"{path}: neither an event file nor an HDF5 file with 1-D column datasets")
            return table_from_array(columns)
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path}: cannot read as a numeric table: {exc}") from exc
    raise InvalidInput(f"{path}: unknown table format {path.suffix!r} (use .h5 event files, .npy, .npz, .csv)")


@dataclass
class Evaluation:
    """Outcome of :func:`evaluate`: every test with its null calibration, and what the report needs."""

    channel: str
    n_sample: int
    n_reference: int
    n_used: int
    n_classifier: int
    config: EvaluationConfig
    tests: list[MetricResult]
    skipped: dict[str, str]
    features: dict[str, dict[str, Any]]
    correlation: dict[str, Any]
    timings: dict[str, float]
    sample_info: dict[str, Any]
    reference_info: dict[str, Any]
    #: the size-matched sample and reference events the tests ran on (for the report's figures; not serialised)
    samples: tuple[Sample, Sample] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.tests)

    @property
    def failed(self) -> list[str]:
        return [t.name for t in self.tests if not t.passed]

    def test(self, name: str) -> MetricResult:
        """The test of that name."""
        for t in self.tests:
            if t.name == name:
                return t
        raise NotFound(f"no test {name!r} in this evaluation")

    def as_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready."""
        return _jsonable(
            {
                "format": "vbes-evaluation",
                "version": 1,
                "channel": self.channel,
                "passed": self.passed,
                "n_tests": len(self.tests),
                "n_failed": len(self.failed),
                "failed": self.failed,
                "trials_factor": {
                    "n_tests": len(self.tests),
                    "alpha_family": self.config.alpha,
                    "alpha_per_test": self.config.alpha / max(len(self.tests), 1),
                    "rule": "Bonferroni: each test is judged at alpha/m so that a sample drawn from the reference "
                    "fails any test with probability <= alpha",
                },
                "sizes": {
                    "sample": self.n_sample,
                    "reference": self.n_reference,
                    "per_sample_used": self.n_used,
                    "classifier_per_sample": self.n_classifier,
                    "null_trials": self.config.null_trials,
                    "distance_null_trials": self.config.distance_null_trials,
                    "classifier_null_trials": self.config.classifier_null_trials,
                },
                "config": asdict(self.config),
                "sample": self.sample_info,
                "reference": self.reference_info,
                "tests": [t.as_dict() for t in self.tests],
                "skipped": self.skipped,
                "features": self.features,
                "correlation": self.correlation,
                "timings_s": self.timings,
            }
        )

    def flat(self) -> dict[str, float]:
        """``{metric name: number}`` for gates, see :func:`flatten`."""
        return flatten(self.as_dict())


def flatten(data: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of an evaluation (its :meth:`Evaluation.as_dict` / JSON) as ``{name: value}`` for gates.

    Names: ``<test>`` (the test's value, e.g. ``classifier/auc``, ``observables/m_ll/position``), ``<test>.passed``
    (1 or 0), ``<test>.<detail>`` for numeric details (e.g. ``features/track0_p/w1.w1_over_resolution``,
    ``classifier/auc.auc_error``, ``observables/m_gg/width.sample``), ``<test>.null_mean``, ``passed`` (every
    test passed) and ``n_failed``.
    """
    out: dict[str, float] = {}
    for test in data.get("tests", []):
        name = test["name"]
        if test.get("value") is not None:
            out[name] = float(test["value"])
        out[f"{name}.passed"] = float(bool(test["passed"]))
        if test.get("null_mean") is not None:
            out[f"{name}.null_mean"] = float(test["null_mean"])
        for key, value in (test.get("details") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{name}.{key}"] = float(value)
    out["passed"] = float(bool(data.get("passed")))
    out["n_failed"] = float(data.get("n_failed", 0))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if np.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _feature_tests(
    a: FeatureTable,
    b: FeatureTable,
    edges: Mapping[str, np.ndarray],
    resolutions: Mapping[str, float | None],
    skipped: dict[str, str],
) -> dict[str, MetricValue]:
    out: dict[str, MetricValue] = {}
    for i, name in enumerate(a.names):
        x, y = a.values[:, i], b.values[:, i]
        key = f"features/{name}"
        try:
            w1, ks = metrics.w1_and_ks(x, y, resolutions.get(name))
            out[f"{key}/w1"] = MetricValue(
                w1.value, None, {"w1_over_resolution": w1.value_over_resolution, "resolution": w1.resolution}
            )
            out[f"{key}/ks"] = MetricValue(ks.statistic, ks.pvalue)
            chi2 = metrics.chi2_ndf(x, y, edges[name])
            out[f"{key}/chi2_ndf"] = MetricValue(chi2.chi2_ndf, chi2.pvalue, {"chi2": chi2.chi2, "ndf": chi2.ndf})
            # with size-matched samples the separation power is chi2 / (2 n) of the same two histograms, so the
            # chi2's p-value is its p-value too (its empirical null is far too skewed for few splits)
            out[f"{key}/separation_power"] = MetricValue(
                metrics.separation_power(x, y, edges[name]), chi2.pvalue, {"pvalue_from": "chi2 of the same histograms"}
            )
        except InsufficientSample as exc:
            skipped[key] = str(exc)
        if np.isnan(y).any() or np.isnan(x).any():
            try:
                diff, z = metrics.presence_difference(x, y)
                from scipy import stats

                out[f"{key}/presence"] = MetricValue(z, float(2 * stats.norm.sf(abs(z))), {"fraction_difference": diff})
            except InsufficientSample as exc:
                skipped[f"{key}/presence"] = str(exc)
    return out


def _multivariate_columns(reference: FeatureTable) -> list[int]:
    present = np.isfinite(reference.values).mean(axis=0)
    spread = np.nanstd(np.where(np.isfinite(reference.values), reference.values, np.nan), axis=0)
    return [i for i in range(len(reference.names)) if present[i] >= PRESENCE_FOR_MULTIVARIATE and spread[i] > 0]


def _correlation_tests(
    a: FeatureTable, b: FeatureTable, columns: list[int], skipped: dict[str, str]
) -> dict[str, MetricValue]:
    names = tuple(a.names[i] for i in columns)
    try:
        corr = metrics.correlation_difference(a.values[:, columns], b.values[:, columns], names)
    except InsufficientSample as exc:
        skipped["correlations/max_abs_difference"] = str(exc)
        return {}
    return {"correlations/max_abs_difference": MetricValue(corr.max_abs, None, {"rms": corr.rms})}


def _distance_tests(
    a: FeatureTable, b: FeatureTable, columns: list[int], skipped: dict[str, str], seed: int
) -> dict[str, MetricValue]:
    out: dict[str, MetricValue] = {}
    for label, function in (("fpd", fpd), ("kpd", kpd)):
        try:
            result = function(a.values[:, columns], b.values[:, columns], seed=seed)
            out[f"distances/{label}"] = MetricValue(result.value, None, {"error": result.error})
        except InsufficientSample as exc:
            skipped[f"distances/{label}"] = str(exc)
    return out


def _classifier_tests(
    a: FeatureTable, b: FeatureTable, config: EvaluationConfig, skipped: dict[str, str], seed: int
) -> dict[str, MetricValue]:
    try:
        result = classifier_test(
            a.values,
            b.values,
            n_folds=config.classifier_folds,
            seed=seed,
            max_iter=config.classifier_max_iter,
            feature_names=list(a.names),
        )
    except InsufficientSample as exc:
        skipped["classifier/auc"] = str(exc)
        return {}
    details = result.as_dict()
    details.pop("auc")
    return {"classifier/auc": MetricValue(result.auc, result.pvalue, details)}


def _observable_tests(
    a: list[Observable], b: list[Observable], edges: Mapping[str, Any], skipped: dict[str, str]
) -> dict[str, MetricValue]:
    out: dict[str, MetricValue] = {}
    for obs_a, obs_b in zip(a, b):
        try:
            compared = compare_observable(obs_a, obs_b, edges.get(obs_a.name))
        except InsufficientSample as exc:
            skipped[f"observables/{obs_a.name}"] = str(exc)
            continue
        for test, numbers in compared.items():
            numbers = dict(numbers)
            value, pvalue = numbers.pop("value"), numbers.pop("pvalue")
            numbers.update(
                {"kind": obs_a.kind, "unit": obs_a.unit, "description": obs_a.description, "expected": obs_a.expected}
            )
            out[f"observables/{obs_a.name}/{test}"] = MetricValue(value, pvalue, numbers)
    return out


def evaluate(
    sample: Any,
    reference: Any,
    channel: str | None = None,
    config: EvaluationConfig | None = None,
    progress: Callable[[str], None] | None = None,
    null_cache: dict[Any, Any] | None = None,
) -> Evaluation:
    """Compare a sample with a reference; every test null-calibrated.

    Args:
        sample: A -- anything :func:`load_sample` takes (event file path, numeric table, event batch, ...).
        reference: B -- likewise; must have the same features as A.
        channel: channel of event files (default: read from the files).
        config: :class:`EvaluationConfig`.
        progress: called with a short message as each stage starts.
        null_cache: a dict kept by the caller: the null splits of a reference (a :class:`Sample` passed again as
            the same object) are then computed once and reused by later evaluations against it with the same
            sizes and configuration (the null depends only on the reference).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> config = EvaluationConfig(null_trials=3, classifier_null_trials=2, classifier_folds=2, distances=False)
        >>> result = evaluate(rng.normal(size=(3000, 2)), rng.normal(size=(6000, 2)), config=config)
        >>> result.passed, len(result.tests)
        (True, 10)
    """
    config = config or EvaluationConfig()
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    a = load_sample(sample, channel)
    b = load_sample(reference, channel or a.features.channel or None)
    if a.features.names != b.features.names:
        missing = sorted(set(b.features.names) ^ set(a.features.names))
        raise InvalidInput(f"sample and reference have different features (differing: {', '.join(missing[:8])})")
    timings["load"] = time.perf_counter() - t0

    n = min(len(a), len(b) // 2)
    if config.max_events:
        n = min(n, config.max_events)
    if n < 1:
        raise InsufficientSample(f"the reference ({len(b)} events) must hold at least two events per sample event")
    n_classifier = min(n, config.classifier_events)
    rng = np.random.default_rng(config.seed)
    a_rows = np.sort(rng.permutation(len(a))[:n])
    b_rows = np.sort(rng.permutation(len(b))[:n])
    splits = null_splits(
        len(b),
        n,
        max(config.null_trials, config.distance_null_trials, config.classifier_null_trials),
        seed=config.seed + 1,
    )

    # fixed binning and resolutions from the whole reference, shared by the test and every split
    edges = {
        name: metrics.fixed_bins(b.features.values[:, i])
        if np.isfinite(b.features.values[:, i]).any()
        else np.array([-np.inf, 0, np.inf])
        for i, name in enumerate(b.features.names)
    }
    resolutions = {
        name: b.features.resolution(name, b.features.values[:, i]) for i, name in enumerate(b.features.names)
    }
    observable_edges: dict[str, Any] = {
        o.name: fixed_edges(o)
        for o in b.observables
        if o.kind in ("spectrum", "spectrum2d") and np.isfinite(o.values).any()
    }
    for o in b.observables:
        if o.kind == "peak" and o.window is None:
            try:
                observable_edges[o.name] = reference_half_width(o)
            except InsufficientSample:
                pass  # the comparison itself will refuse and record why
    columns = _multivariate_columns(b.features)
    # a random (not file-order) subset for the classifier: files may be ordered by run
    classifier_rows = np.sort(rng.permutation(n)[:n_classifier])
    skipped: dict[str, str] = {}

    key = (
        id(b),
        n,
        n_classifier,
        config.null_trials,
        config.distance_null_trials,
        config.classifier_null_trials,
        config.classifier_folds,
        config.classifier_max_iter,
        config.distances,
        config.seed,
    )
    cached = null_cache.get(key) if null_cache is not None else None
    # pair 0 is the test; pairs 1.. are null splits. Each pair's events are gathered once, run through every
    # stage that needs it, and dropped: 20 splits of 1e6-event tables would not fit in memory at once.
    pair_rows: list[tuple[str, Sample, np.ndarray, np.ndarray]] = [("test", a, a_rows, b_rows)]
    if cached is None:
        pair_rows += [(f"null split {k}", b, i, j) for k, (i, j) in enumerate(splits)]
    stages: list[tuple[str, Callable[[Sample, Sample, dict[str, str], int], dict[str, MetricValue]], int]] = [
        (
            "features",
            lambda x, y, s, k: _feature_tests(x.features, y.features, edges, resolutions, s),
            config.null_trials,
        ),
        ("correlations", lambda x, y, s, k: _correlation_tests(x.features, y.features, columns, s), config.null_trials),
        (
            "distances",
            lambda x, y, s, k: _distance_tests(x.features, y.features, columns, s, config.seed + k),
            config.distance_null_trials if config.distances else -1,
        ),
        (
            "observables",
            lambda x, y, s, k: _observable_tests(x.observables, y.observables, observable_edges, s),
            config.null_trials,
        ),
        (
            "classifier",
            lambda x, y, s, k: _classifier_tests(
                x.features.subset(classifier_rows), y.features.subset(classifier_rows), config, s, config.seed + k
            ),
            config.classifier_null_trials,
        ),
    ]
    timings.update({stage: 0.0 for stage, _, trials in stages if trials >= 0})
    timings["gather events"] = 0.0
    runs: list[dict[str, MetricValue]] = []
    test_pair: tuple[Sample, Sample] | None = None
    for k, (label, first, rows_first, rows_second) in enumerate(pair_rows):
        needed = [(stage, function) for stage, function, trials in stages if k <= trials]
        if not needed:
            break
        say(f"{label}: {', '.join(stage for stage, _ in needed)}")
        t_gather = time.perf_counter()
        x, y = first.subset(rows_first), b.subset(rows_second)
        timings["gather events"] += time.perf_counter() - t_gather
        results: dict[str, MetricValue] = {}
        for stage, function in needed:
            t_stage = time.perf_counter()
            scratch: dict[str, str] = {}
            results.update(function(x, y, scratch, k))
            if k == 0:
                skipped.update(scratch)
            timings[stage] += time.perf_counter() - t_stage
        runs.append(results)
        if k == 0:
            test_pair = (x, y)
    assert test_pair is not None
    if cached is not None:
        runs += cached[1]
    elif null_cache is not None:
        null_cache[key] = (b, runs[1:])  # holding b keeps its id() from being reused

    t_cal = time.perf_counter()
    tests = calibrate(runs[0], runs[1:], alpha=config.alpha)
    timings["calibration"] = time.perf_counter() - t_cal
    features_summary = _feature_summary(tests, a.features.names, a.features.units)
    corr = _correlation_summary(test_pair[0].features, test_pair[1].features, columns)
    timings["total"] = time.perf_counter() - t0
    return Evaluation(
        channel=a.features.channel or "",
        n_sample=len(a),
        n_reference=len(b),
        n_used=n,
        n_classifier=n_classifier,
        config=config,
        tests=tests,
        skipped=skipped,
        features=features_summary,
        correlation=corr,
        timings=timings,
        sample_info=a.info,
        reference_info=b.info,
        samples=test_pair,
    )


def _feature_summary(
    tests: list[MetricResult], names: tuple[str, ...], units: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    by_name = {t.name: t for t in tests}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        key = f"features/{name}"
        w1 = by_name.get(f"{key}/w1")
        ks = by_name.get(f"{key}/ks")
        chi2 = by_name.get(f"{key}/chi2_ndf")
        sep = by_name.get(f"{key}/separation_power")
        out[name] = {
            "unit": units.get(name, ""),
            "w1": w1.value if w1 else None,
            "w1_over_resolution": w1.details.get("w1_over_resolution") if w1 else None,
            "ks": ks.value if ks else None,
            "ks_pvalue": ks.pvalue if ks else None,
            "chi2_ndf": chi2.value if chi2 else None,
            "separation_power": sep.value if sep else None,
            "passed": all(t.passed for t in (w1, ks, chi2, sep) if t is not None),
        }
    return out


def _correlation_summary(a: FeatureTable, b: FeatureTable, columns: list[int]) -> dict[str, Any]:
    names = [a.names[i] for i in columns]
    try:
        corr = metrics.correlation_difference(a.values[:, columns], b.values[:, columns], tuple(names))
    except InsufficientSample as exc:
        return {"names": names, "skipped": str(exc)}
    return {"names": names, "difference": corr.difference, "max_abs": corr.max_abs, "rms": corr.rms}
