"""The whole comparison of a sample A with a reference B: every test with a calibrated p-value, one verdict.

:func:`evaluate` runs, on size-matched event sets (``n = min(N_A, N_B // 2)`` events of each, so the reference can
also supply two disjoint halves of that size for the self-check):

1. per feature: W1 (also in units of resolution), KS, chi2/ndf on fixed bins, separation power (it reuses the
   chi2's p-value: same histograms), and the fraction of events where the feature is present; features that are
   present in exactly the same events (every variable of a track slot) share one presence hypothesis;
2. correlations: every pairwise correlation of the multivariate design (below) with a distribution-free z-score;
3. FPD and KPD on the same design, each with a permutation significance;
4. the channel's physics observables (event files only);
5. the classifier two-sample test (at most ``classifier_events`` per sample) on the raw features (NaN routed
   natively by the trees).

The multivariate design covers every feature: a feature absent in some events (a second track, a third shower,
a TOF hit) is imputed at its reference median there, and one presence indicator (0/1) per distinct presence
pattern of the reference is added, so that neither the events without the object nor the object's correlations
are dropped.

Every test's p-value is its own (see :mod:`vbes.evaluation.null`); the family is judged by Holm's step-down
procedure at ``alpha`` over the distinct hypotheses. ``null_trials`` reference-vs-reference splits repeat the
cheap tests (features, correlations, observables) as a self-check of their calibration; the classifier, FPD and
KPD are repeated only when ``classifier_null_trials`` / ``distance_null_trials`` ask for it.

With the model's ``training`` events, the memorisation test (:mod:`vbes.evaluation.memorisation`) also runs: is
the sample closer to the training events than the reference's events are? The reference then serves as the
held-out set and must be independent of the training set. It asks another question than the family above
(copying, not fidelity), so it is not one of Holm's hypotheses: it has its own verdict at ``alpha``, and the
evaluation passes when the family and it both pass (a sample drawn from the reference, independently of the
training events, then fails with probability at most ``2 alpha``).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from vbes.evaluation import metrics
from vbes.evaluation.classifier import classifier_test
from vbes.evaluation.distances import fpd, kpd
from vbes.evaluation.features import FeatureTable, channel_of, feature_table, table_from_array
from vbes.evaluation.memorisation import MIN_EVENTS_MEMORISATION, MemorisationResult, memorisation_test
from vbes.evaluation.null import (
    MetricResult,
    MetricValue,
    calibrate,
    check_null_trials,
    null_splits,
    self_check,
    tail_pvalue,
)
from vbes.evaluation.observables import (
    Observable,
    channel_observables,
    compare_observable,
    fixed_edges,
    reference_half_width,
)

from vbes.errors import InsufficientSample, InvalidInput, NotFound, NothingTested

__all__ = [
    "Design",
    "Evaluation",
    "EvaluationConfig",
    "Sample",
    "evaluate",
    "flatten",
    "load_sample",
    "sample_from_tables",
]


@dataclass
class EvaluationConfig:
    """Knobs of :func:`evaluate` (all recorded in the JSON).

    Args:
        alpha: family-wise false-alarm probability (Holm's step-down over the distinct hypotheses).
        null_trials: reference-vs-reference splits of the self-check (features, correlations, observables);
            0 for none, else at least :func:`vbes.evaluation.null.minimum_null_trials` ``(alpha)``.
        distance_null_trials: splits on which FPD and KPD are repeated for the self-check (0: none).
        classifier_null_trials: splits on which the classifier is refitted for the self-check (0: none).
        classifier_events: most events per sample in the classifier test.
        classifier_folds: k of its k-fold.
        classifier_max_iter: most boosting iterations per fold (early stopping usually ends sooner).
        max_events: most events per sample for the other metrics (None: as many as size matching allows).
        distances: compute FPD and KPD.
        permutations: permutations of the FPD and KPD nulls.
        threads: OpenMP threads of the classifier.
        seed: seed of every subsampling.
        memorisation_queries: most sample and most reference events whose nearest training event the
            memorisation test searches (each; only with training events).
        memorisation_training: most training events it searches.
    """

    alpha: float = 0.05
    null_trials: int = 20
    distance_null_trials: int = 0
    classifier_null_trials: int = 0
    classifier_events: int = 200_000
    classifier_folds: int = 5
    classifier_max_iter: int = 200
    max_events: int | None = None
    distances: bool = True
    permutations: int = 200
    threads: int = 1
    seed: int = 0
    memorisation_queries: int = 20_000
    memorisation_training: int = 200_000

    def check(self) -> None:
        """Refuse settings under which a test, or the self-check, could not mean what it says."""
        if not 0 < self.alpha < 1:
            raise InvalidInput(f"alpha must lie in (0, 1); got {self.alpha}")
        for option in ("null_trials", "distance_null_trials", "classifier_null_trials"):
            value = getattr(self, option)
            if value < 0:
                raise InvalidInput(f"{option} must be >= 0; got {value}")
            if value:
                check_null_trials(value, self.alpha, option.replace("_", "-"))
        if self.permutations < 50:
            raise InvalidInput(f"permutations must be at least 50 for a sampled null; got {self.permutations}")
        if self.classifier_folds < 2:
            raise InvalidInput(f"classifier_folds must be at least 2; got {self.classifier_folds}")
        for option in ("memorisation_queries", "memorisation_training"):
            if getattr(self, option) < MIN_EVENTS_MEMORISATION:
                raise InvalidInput(f"{option} must be at least {MIN_EVENTS_MEMORISATION}; got {getattr(self, option)}")


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
    """Outcome of :func:`evaluate`: every test with its p-value and verdict, and what the report needs.

    ``memorisation`` is the memorisation test's outcome when training events were given (None otherwise, or
    when it could not run: then ``skipped`` says why); it is not one of the Holm family's ``tests``.
    """

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
    calibration: dict[str, Any] = field(default_factory=dict)
    memorisation: MemorisationResult | None = None
    training_info: dict[str, Any] = field(default_factory=dict)
    #: the size-matched sample and reference events the tests ran on (for the report's figures; not serialised)
    samples: tuple[Sample, Sample] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """Every test of the Holm family passed and, when it ran, the memorisation test too."""
        return self.fidelity_passed and (self.memorisation is None or self.memorisation.passed)

    @property
    def fidelity_passed(self) -> bool:
        """Every test of the Holm family passed (the memorisation test aside)."""
        return all(t.passed for t in self.tests)

    @property
    def failed(self) -> list[str]:
        """The failed tests; ``memorisation`` last when the memorisation test failed."""
        memorised = self.memorisation is not None and not self.memorisation.passed
        return [t.name for t in self.tests if not t.passed] + (["memorisation"] if memorised else [])

    @property
    def n_hypotheses(self) -> int:
        """m: the distinct hypotheses (tests that reuse another's p-value are not counted)."""
        return sum(t.counted for t in self.tests)

    @property
    def findings(self) -> list[dict[str, Any]]:
        """Each failed distinct hypothesis, with the tests that reuse its p-value grouped under it."""
        consequences: dict[str, list[str]] = {}
        for t in self.tests:
            if t.reuses is not None:
                consequences.setdefault(t.reuses, []).append(t.name)
        return [
            {"test": t.name, "pvalue": t.pvalue, "level": t.threshold, "consequences": consequences.get(t.name, [])}
            for t in sorted((t for t in self.tests if t.counted and not t.passed), key=lambda t: t.pvalue)
        ]

    def test(self, name: str) -> MetricResult:
        """The test of that name."""
        for t in self.tests:
            if t.name == name:
                return t
        raise NotFound(f"no test {name!r} in this evaluation")

    def as_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready."""
        m = self.n_hypotheses
        return _jsonable(
            {
                "format": "vbes-evaluation",
                "version": 2,
                "channel": self.channel,
                "passed": self.passed,
                "n_tests": len(self.tests),
                "n_hypotheses": m,
                "n_failed": len(self.failed),
                "failed": self.failed,
                "findings": self.findings,
                "multiple_testing": {
                    "rule": "Holm step-down over the distinct hypotheses: the k-th smallest p-value fails while it "
                    "is below alpha / (m - k + 1); a sample drawn from the reference fails any test with "
                    "probability <= alpha. Tests that reuse another's p-value follow its verdict, uncounted.",
                    "alpha_family": self.config.alpha,
                    "n_hypotheses": m,
                    "smallest_level": self.config.alpha / max(m, 1),
                    "memorisation": "not in the family: its own verdict at alpha (it tests copying of the "
                    "training events, not fidelity); 'passed' needs both",
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
                "fidelity_passed": self.fidelity_passed,
                "memorisation": self.memorisation.as_dict() if self.memorisation is not None else None,
                "training": self.training_info,
                "skipped": self.skipped,
                "features": self.features,
                "correlation": self.correlation,
                "self_check": self.calibration,
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
    test passed, the memorisation test included) and ``n_failed``; when the memorisation test ran,
    ``memorisation/<number>`` for each of its numbers (``memorisation/pvalue``, ``memorisation/passed`` (1 or 0),
    ``memorisation/distance_ratio``, ``memorisation/near_copy_fraction``, ...; see
    :class:`vbes.evaluation.memorisation.MemorisationResult`).
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
    for key, value in (data.get("memorisation") or {}).items():
        if isinstance(value, (bool, int, float)):
            out[f"memorisation/{key}"] = float(value)
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




class Design:
    """The multivariate design of a reference: every non-constant feature mapped onto a standard normal by the
    reference's own distribution (rank-Gauss: ``Phi^-1`` of its mid-rank CDF), absent values set to 0 (the
    reference median), plus one presence indicator (0/1) per distinct presence pattern of the reference's partly
    present features.

    Why rank-Gauss rather than standardising: a narrow peak on a long tail (a two-body momentum with its
    radiative tail) has a standard deviation set by the tail, so a shift of the peak by its own width is a small
    fraction of it; in rank-Gauss units it stays of order one. FPD's Gaussian fit also suits such coordinates.

    Args:
        reference: the reference's feature table (all its events).
        sorted_columns: each feature of the reference, sorted (see :class:`vbes.evaluation.metrics.SortedReference`).
    """

    def __init__(self, reference: FeatureTable, sorted_columns: Mapping[str, metrics.SortedReference]) -> None:
        values = reference.values
        present = np.isfinite(values)
        names = reference.names
        self.sorted = [sorted_columns[name] for name in names]
        self.columns = [
            i for i, column in enumerate(self.sorted) if column.sorted.size and column.sorted[-1] > column.sorted[0]
        ]
        seen: set[bytes] = set()
        self.indicators: list[int] = []
        for i in range(values.shape[1]):
            if present[:, i].all() or not present[:, i].any():
                continue
            key = hashlib.sha1(np.packbits(present[:, i]).tobytes()).digest()
            if key not in seen:
                seen.add(key)
                self.indicators.append(i)
        self.names = tuple(names[i] for i in self.columns) + tuple(f"present({names[i]})" for i in self.indicators)

    def matrix(self, values: np.ndarray | None = None) -> np.ndarray:
        """The design of a feature array ``(n_events, n_features)`` (same columns as the reference; None: the
        reference itself)."""
        columns = [s.column for s in self.sorted] if values is None else [values[:, i] for i in range(values.shape[1])]
        out = np.empty((len(columns[0]), len(self.names)))
        for k, i in enumerate(self.columns):
            out[:, k] = np.nan_to_num(self.sorted[i].gaussianised(columns[i]), nan=0.0)
        for k, i in enumerate(self.indicators, start=len(self.columns)):
            out[:, k] = np.isfinite(columns[i])
        return out


class _Reference:
    """Everything about the reference that every comparison with it shares (sorted features, bins, nulls)."""

    def __init__(self, b: Sample) -> None:
        table = b.features
        self.sorted: dict[str, metrics.SortedReference] = {}
        for i, name in enumerate(table.names):
            column = table.values[:, i]
            edges = metrics.fixed_bins(column) if np.isfinite(column).any() else np.array([-np.inf, 0, np.inf])
            self.sorted[name] = metrics.SortedReference(column, edges)
        self.resolutions = {name: table.resolution(name, table.values[:, i]) for i, name in enumerate(table.names)}
        self.design = Design(table, self.sorted)
        self.design_values = self.design.matrix()
        # presence per feature as contiguous rows: a split's rows are gathered from each without striding
        self.present = np.ascontiguousarray(np.isfinite(table.values).T)
        self.observable_edges: dict[str, Any] = {
            o.name: fixed_edges(o)
            for o in b.observables
            if o.kind in ("spectrum", "spectrum2d") and np.isfinite(o.values).any()
        }
        for o in b.observables:
            if o.kind == "peak" and o.window is None:
                try:
                    self.observable_edges[o.name] = reference_half_width(o)
                except InsufficientSample:
                    pass  # the comparison itself will refuse and record why


def _presence_key(present_a: np.ndarray, present_b: np.ndarray) -> bytes:
    return hashlib.sha1(np.packbits(present_a).tobytes() + b"|" + np.packbits(present_b).tobytes()).digest()


def _feature_values(
    name: str,
    comparison: metrics.FeatureComparison,
    reference: metrics.SortedReference,
    resolution: float | None,
) -> dict[str, MetricValue]:
    key = f"features/{name}"
    n_a, n_b = comparison.n_a, comparison.n_b
    w1_null = reference.w1_null
    scale = np.sqrt(1.0 / n_a + 1.0 / n_b)
    chi2 = metrics.chi2_counts(comparison.counts_a, comparison.counts_b)
    out = {
        f"{key}/w1": MetricValue(
            comparison.w1,
            tail_pvalue(comparison.w1 / scale, w1_null),
            {
                "w1_over_resolution": comparison.w1 / resolution if resolution else None,
                "resolution": resolution,
                "null_mean_w1": float(w1_null.mean() * scale),
                "pvalue_from": "Brownian-bridge null on the reference's quantiles",
            },
        ),
        f"{key}/ks": MetricValue(comparison.ks, metrics.ks_pvalue(comparison.ks, n_a, n_b)),
        f"{key}/chi2_ndf": MetricValue(chi2.chi2_ndf, chi2.pvalue, {"chi2": chi2.chi2, "ndf": chi2.ndf}),
        # with size-matched samples the separation power is chi2 / (2 n) of the same two histograms: one hypothesis
        f"{key}/separation_power": MetricValue(
            metrics.separation_of_counts(comparison.counts_a, comparison.counts_b),
            chi2.pvalue,
            {"pvalue_from": "chi2 of the same histograms"},
            reuses=f"{key}/chi2_ndf",
        ),
    }
    return out


def _feature_tests(
    ref: _Reference,
    names: tuple[str, ...],
    present_a: Callable[[int], np.ndarray],
    present_b: Callable[[int], np.ndarray],
    compare: Callable[[str, int], metrics.FeatureComparison],
    skipped: dict[str, str],
) -> dict[str, MetricValue]:
    """Every feature's tests; ``compare(name, i)`` does the sorted pass, ``present_*(i)`` the presence masks."""
    out: dict[str, MetricValue] = {}
    presence_owner: dict[bytes, str] = {}
    for i, name in enumerate(names):
        key = f"features/{name}"
        pa, pb = present_a(i), present_b(i)
        k_a, k_b = int(pa.sum()), int(pb.sum())
        which = "sample" if k_a < k_b else "reference"
        try:
            metrics.require_events("w1", min(k_a, k_b), which)
            values = _feature_values(name, compare(name, i), ref.sorted[name], ref.resolutions.get(name))
            try:
                metrics.require_events("chi2", min(k_a, k_b), which)
            except InsufficientSample as exc:
                skipped[f"{key}/chi2_ndf"] = str(exc)
                values = {k: v for k, v in values.items() if k.endswith(("/w1", "/ks"))}
            out.update(values)
        except InsufficientSample as exc:
            skipped[key] = str(exc)
        if k_a == pa.size and k_b == pb.size:
            continue
        try:
            metrics.require_events("presence", min(pa.size, pb.size))
        except InsufficientSample as exc:
            skipped[f"{key}/presence"] = str(exc)
            continue
        diff, z = metrics.presence_test(k_a, pa.size, k_b, pb.size)
        pattern = _presence_key(pa, pb)
        owner = presence_owner.setdefault(pattern, f"{key}/presence")
        out[f"{key}/presence"] = MetricValue(
            z,
            float(2 * stats.norm.sf(abs(z))),
            {"fraction_difference": diff, "fraction_sample": k_a / pa.size, "fraction_reference": k_b / pb.size},
            reuses=None if owner == f"{key}/presence" else owner,
        )
    return out


def _correlation_tests(
    design: Design, a: np.ndarray, b: np.ndarray, skipped: dict[str, str]
) -> tuple[dict[str, MetricValue], metrics.CorrelationTest | None]:
    try:
        result = metrics.correlation_test(a, b, design.names)
    except InsufficientSample as exc:
        skipped["correlations/max_abs_z"] = str(exc)
        return {}, None
    details = {
        "worst_pair": list(result.worst_pair),
        "n_pairs": result.n_pairs,
        "max_abs_difference": result.max_abs_difference,
        "pvalue_from": "largest |z| of every pair, Bonferroni over the pairs",
    }
    return {"correlations/max_abs_z": MetricValue(result.max_abs_z, result.pvalue, details)}, result


def _distance_tests(
    a: np.ndarray, b: np.ndarray, skipped: dict[str, str], config: EvaluationConfig, seed: int
) -> dict[str, MetricValue]:
    out: dict[str, MetricValue] = {}
    for label, function in (("fpd", fpd), ("kpd", kpd)):
        try:
            result = function(a, b, n_permutations=config.permutations, seed=seed)
        except InsufficientSample as exc:
            skipped[f"distances/{label}"] = str(exc)
            continue
        details = asdict(result)
        value = details.pop("value")
        details["pvalue_from"] = "permutation null" + (" of the full-size FPD" if label == "fpd" else "")
        out[f"distances/{label}"] = MetricValue(value, details.pop("pvalue"), details)
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
            threads=config.threads,
        )
    except InsufficientSample as exc:
        skipped["classifier/auc"] = str(exc)
        return {}
    details = result.as_dict()
    details.pop("auc")
    details["pvalue_from"] = "mean fold AUC against its exact Mann-Whitney null (one-sided)"
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
    training: Any = None,
) -> Evaluation:
    """Compare a sample with a reference; every test with a calibrated p-value, Holm over the family.

    Args:
        sample: A -- anything :func:`load_sample` takes (event file path, numeric table, event batch, ...).
        reference: B -- likewise; must have the same features as A.
        channel: channel of event files (default: read from the files).
        config: :class:`EvaluationConfig`.
        progress: called with a short message as each stage starts.
        null_cache: a dict kept by the caller: what depends on the reference only (a :class:`Sample` passed
            again as the same object) -- its sorted features, the W1 nulls, the self-check splits -- is then
            computed once and reused by later evaluations against it with the same sizes and configuration.
        training: the events the model was trained on (anything :func:`load_sample` takes), or None. Given, the
            memorisation test (:func:`vbes.evaluation.memorisation.memorisation_test`) runs with the reference
            as the held-out events -- the reference must then be independent of the training set. It is not
            one of Holm's hypotheses: its verdict, at ``alpha``, is its own (``Evaluation.memorisation``), and
            the evaluation passes only when it passes too.

    Raises:
        NothingTested: when no test could run at all.
        InvalidInput: the training events are the reference's, or have other features.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> config = EvaluationConfig(null_trials=19, classifier_folds=2, distances=False)
        >>> result = evaluate(rng.normal(size=(3000, 2)), rng.normal(size=(6000, 2)), config=config)
        >>> result.passed, len(result.tests), result.n_hypotheses
        (True, 10, 8)
    """
    config = config or EvaluationConfig()
    config.check()
    # every BLAS / OpenMP pool bounded: spin-waiting threads collapse on a machine busy with other work
    with threadpool_limits(limits=max(1, config.threads)):
        return _evaluate(sample, reference, channel, config, progress, null_cache, training)


def _evaluate(
    sample: Any,
    reference: Any,
    channel: str | None,
    config: EvaluationConfig,
    progress: Callable[[str], None] | None,
    null_cache: dict[Any, Any] | None,
    training: Any = None,
) -> Evaluation:
    say = progress or (lambda message: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    a = load_sample(sample, channel)
    b = load_sample(reference, channel or a.features.channel or None)
    if a.features.names != b.features.names:
        shared = set(a.features.names) & set(b.features.names)
        missing = sorted(set(b.features.names) ^ set(a.features.names))
        raise (NothingTested if not shared else InvalidInput)(
            f"sample and reference have different features ({len(shared)} shared; differing: {', '.join(missing[:8])})"
        )
    if not a.features.names:
        raise NothingTested("sample and reference have no features: nothing to compare")
    t_train = _load_training(training, reference, b, a.features.names, channel or a.features.channel or None)
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
    # a random (not file-order) subset for the classifier: files may be ordered by run
    classifier_rows = np.sort(rng.permutation(n)[:n_classifier])
    n_splits = max(config.null_trials, config.distance_null_trials, config.classifier_null_trials)

    key = (id(b), n, n_classifier, n_splits, config.distance_null_trials, config.classifier_null_trials,
           config.classifier_folds, config.classifier_max_iter, config.distances, config.permutations, config.seed)
    cached = null_cache.get(key) if null_cache is not None else None
    t_ref = time.perf_counter()
    ref: _Reference = cached[1] if cached is not None else _Reference(b)
    timings["reference"] = time.perf_counter() - t_ref
    names = a.features.names
    skipped: dict[str, str] = {}

    def run(x: Sample, y_rows: np.ndarray, label: np.ndarray | None, k: int, heavy: tuple[bool, bool],
            scratch: dict[str, str]) -> tuple[dict[str, MetricValue], metrics.CorrelationTest | None]:
        """One comparison: the test (label None: x against reference rows y_rows) or a null split."""
        results: dict[str, MetricValue] = {}
        t = time.perf_counter()
        if label is None:
            xv = x.features.values
            results.update(_feature_tests(
                ref, names, lambda i: np.isfinite(xv[:, i]), lambda i: ref.present[i][y_rows],
                lambda name, i: ref.sorted[name].compare(xv[:, i], y_rows), scratch))
            design_a, design_b = ref.design.matrix(xv), ref.design_values[y_rows]
        else:
            first, second = np.flatnonzero(label == 1), np.flatnonzero(label == 2)
            results.update(_feature_tests(
                ref, names, lambda i: ref.present[i][first], lambda i: ref.present[i][second],
                lambda name, i: ref.sorted[name].compare_split(label), scratch))
            design_a, design_b = ref.design_values[first], ref.design_values[second]
        timings["features"] = timings.get("features", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        corr_values, corr = _correlation_tests(ref.design, design_a, design_b, scratch)
        results.update(corr_values)
        timings["correlations"] = timings.get("correlations", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        y_obs = [o.subset(y_rows if label is None else np.flatnonzero(label == 2)) for o in b.observables]
        x_obs = x.observables if label is None else [o.subset(np.flatnonzero(label == 1)) for o in b.observables]
        results.update(_observable_tests(x_obs, y_obs, ref.observable_edges, scratch))
        timings["observables"] = timings.get("observables", 0.0) + time.perf_counter() - t
        if heavy[0] and config.distances:
            t = time.perf_counter()
            results.update(_distance_tests(design_a, design_b, scratch, config, config.seed + k))
            timings["distances"] = timings.get("distances", 0.0) + time.perf_counter() - t
        if heavy[1]:
            t = time.perf_counter()
            if label is None:
                fa, fb = x.features.subset(classifier_rows), b.features.subset(y_rows[classifier_rows])
            else:
                fa = b.features.subset(np.flatnonzero(label == 1)[classifier_rows])
                fb = b.features.subset(np.flatnonzero(label == 2)[classifier_rows])
            results.update(_classifier_tests(fa, fb, config, scratch, config.seed + k))
            timings["classifier"] = timings.get("classifier", 0.0) + time.perf_counter() - t
        return results, corr

    say("test: features, correlations, observables, distances, classifier")
    x = a.subset(a_rows)
    test_results, corr = run(x, b_rows, None, 0, (True, True), skipped)
    if not test_results:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3])
        raise NothingTested(f"no test could run on these samples ({reasons})")

    if cached is not None:
        null_runs = cached[2]
    else:
        null_runs = []
        for k, (first, second) in enumerate(null_splits(len(b), n, n_splits, seed=config.seed + 1), start=1):
            heavy = (k <= config.distance_null_trials, k <= config.classifier_null_trials)
            extra = (" (+ distances)" if heavy[0] else "") + (" (+ classifier)" if heavy[1] else "")
            say(f"null split {k}/{n_splits}{extra}")
            label = np.zeros(len(b), dtype=np.int8)
            label[first], label[second] = 1, 2
            null_runs.append(run(b, second, label, k, heavy, {})[0])
        if null_cache is not None:
            null_cache[key] = (b, ref, null_runs)  # holding b keeps its id() from being reused

    memorised: MemorisationResult | None = None
    if t_train is not None:
        say("memorisation: nearest training event of each sample and reference event")
        t_mem = time.perf_counter()
        try:
            memorised = memorisation_test(
                a.features,
                t_train.features,
                b.features,
                alpha=config.alpha,
                max_queries=config.memorisation_queries,
                max_training=config.memorisation_training,
                seed=config.seed,
                threads=config.threads,
            )
        except (InsufficientSample, NothingTested) as exc:
            skipped["memorisation"] = str(exc)
        timings["memorisation"] = time.perf_counter() - t_mem

    t_cal = time.perf_counter()
    tests = calibrate(test_results, null_runs, alpha=config.alpha)
    checked = self_check(null_runs, config.alpha) if null_runs else {}
    timings["calibration"] = time.perf_counter() - t_cal
    features_summary = _feature_summary(tests, names, a.features.units)
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
        correlation=_correlation_summary(corr),
        timings=timings,
        sample_info=a.info,
        reference_info=b.info,
        calibration=checked,
        memorisation=memorised,
        training_info=t_train.info if t_train is not None else {},
        samples=(x, b.subset(b_rows)),
    )


def _load_training(
    training: Any, reference: Any, b: Sample, names: tuple[str, ...], channel: str | None
) -> Sample | None:
    """The training events of the memorisation test, refused when they are the reference's own."""
    if training is None:
        return None
    if training is reference:
        raise InvalidInput("the training events are the reference: the memorisation test needs a held-out reference")
    t = load_sample(training, channel)
    paths = [Path(info["path"]).resolve() for info in (t.info, b.info) if "path" in info]
    same_file = len(paths) == 2 and paths[0] == paths[1]
    same_digest = t.info.get("digest") is not None and t.info.get("digest") == b.info.get("digest")
    if same_file or same_digest:
        raise InvalidInput(
            f"the training events are the reference file ({t.info['path']}): the memorisation test needs a "
            "reference held out from training"
        )
    if t.features.names != names:
        differing = sorted(set(t.features.names) ^ set(names))
        raise InvalidInput(
            f"training events and sample have different features (differing: {', '.join(differing[:8]) or 'order'})"
        )
    return t


def _feature_summary(
    tests: list[MetricResult], names: tuple[str, ...], units: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """One row per feature; its verdict is failed when any of its tests (presence included) failed."""
    by_feature: dict[str, list[MetricResult]] = {}
    for t in tests:
        parts = t.name.split("/")
        if parts[0] == "features" and len(parts) == 3:
            by_feature.setdefault(parts[1], []).append(t)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        own = {t.name.split("/")[2]: t for t in by_feature.get(name, [])}
        w1 = own.get("w1")
        presence = own.get("presence")
        out[name] = {
            "unit": units.get(name, ""),
            "w1": w1.value if w1 else None,
            "w1_over_resolution": w1.details.get("w1_over_resolution") if w1 else None,
            "ks": own["ks"].value if "ks" in own else None,
            "ks_pvalue": own["ks"].pvalue if "ks" in own else None,
            "chi2_ndf": own["chi2_ndf"].value if "chi2_ndf" in own else None,
            "separation_power": own["separation_power"].value if "separation_power" in own else None,
            "presence_difference": presence.details.get("fraction_difference") if presence else None,
            "min_pvalue": min((t.pvalue for t in own.values()), default=None),
            "n_tests": len(own),
            "failed_tests": sorted(t.name for t in own.values() if not t.passed),
            "passed": all(t.passed for t in own.values()),
        }
    return out


def _correlation_summary(corr: metrics.CorrelationTest | None) -> dict[str, Any]:
    if corr is None:
        return {"names": [], "skipped": "correlation test not run"}
    return {
        "names": list(corr.names),
        "difference": corr.difference,
        "z": corr.z,
        "max_abs": corr.max_abs_difference,
        "max_abs_z": corr.max_abs_z,
        "worst_pair": list(corr.worst_pair),
    }
