"""``vbes evaluate``: compare a sample with a reference, write the report, apply gates.

Exit status (pytest's convention): 0 when the evaluation passed, 1 when it failed, 2 for bad input or usage
(unreadable or mismatched files, nothing that could be tested, too few null splits for ``--alpha``). With
``--gate`` the gates decide between 0 and 1 (their promotion meaning: a surrogate may pass its family's gates
while failing statistical identity); the report and the JSON are written in every case but the last.

With ``--training`` (the model's training events) the memorisation test runs too: the sample must be no closer
to the training events than the reference's events are, so the reference must be held out from training. Its
verdict is its own, at ``--alpha``, outside Holm's family; the evaluation passes when both pass.

Example::

    vbes evaluate --sample model.h5 --reference reference.h5 --report out/ --gate gates.yaml --family surrogate
    vbes evaluate --sample model.h5 --reference heldout.h5 --training train.h5 --report out/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vbes.cli import emit

__all__ = ["evaluate"]


@click.command("evaluate")
@click.option(
    "--sample",
    "sample_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sample A: an event file or a numeric table (.npy, .npz, .csv, HDF5 columns).",
)
@click.option(
    "--model",
    "model_uri",
    default=None,
    help="Instead of --sample: a generative model (models:/NAME@ALIAS, models:/NAME/VERSION or a saved folder); "
    "half as many events as the reference holds are drawn for its channel, runs and tag, the report is logged "
    "to the model's MLflow run, and its training files of that channel are the memorisation test's --training.",
)
@click.option(
    "--events",
    "model_events",
    type=click.IntRange(min=1),
    default=None,
    help="With --model: events to draw (default: half the reference's, the suite's size matching).",
)
@click.option(
    "--reference",
    "reference_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Reference B, same kind; needs at least twice A's events for full size matching.",
)
@click.option(
    "--training",
    "training_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The model's training events, same kind: runs the memorisation test (the sample must be no closer to "
    "them than the reference's events are), so --reference must be held out from training.",
)
@click.option(
    "--report",
    "report_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.html and evaluation.json.",
)
@click.option(
    "--gate",
    "gate_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML gate file; the command exits non-zero when a gate fails.",
)
@click.option("--family", default=None, help="Gate family (default: the gate file's default_family).")
@click.option("--channel", default=None, help="Channel of event files (default: read from the files).")
@click.option(
    "--null-trials",
    type=click.IntRange(0, 1000),
    default=20,
    show_default=True,
    help="Reference-vs-reference splits of the self-check (per-feature tests, correlations, observables); they "
    "decide nothing but must resolve --alpha: at least 1/alpha - 1 (0: no self-check).",
)
@click.option(
    "--distance-null-trials",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Splits on which FPD and KPD are repeated for the self-check (their p-values come from permutations).",
)
@click.option(
    "--classifier-null-trials",
    type=click.IntRange(0, 1000),
    default=0,
    show_default=True,
    help="Splits on which the classifier is refitted for the self-check (its p-value is exact per fold).",
)
@click.option(
    "--permutations",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Permutations of the FPD and KPD nulls.",
)
@click.option(
    "--threads", type=click.IntRange(1, 256), default=1, show_default=True, help="BLAS / OpenMP threads."
)
@click.option(
    "--classifier-events",
    type=click.IntRange(1000),
    default=200_000,
    show_default=True,
    help="Most events per sample in the classifier test.",
)
@click.option("--folds", type=click.IntRange(2, 20), default=5, show_default=True, help="k of the k-fold classifier.")
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="Family-wise false-alarm probability (Holm's step-down over the distinct hypotheses).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def evaluate(
    sample_path: Path | None,
    model_uri: str | None,
    model_events: int | None,
    reference_path: Path,
    training_path: Path | None,
    report_dir: Path,
    gate_file: Path | None,
    family: str | None,
    channel: str | None,
    null_trials: int,
    distance_null_trials: int,
    classifier_null_trials: int,
    permutations: int,
    threads: int,
    classifier_events: int,
    folds: int,
    alpha: float,
    seed: int,
    as_json: bool,
) -> None:
    """Compare --sample with --reference: every test with a calibrated p-value; HTML + JSON report; gates."""
    from vbes.evaluation.gates import check_gates, load_gates
    from vbes.evaluation.report import write_report
    from vbes.evaluation.suite import EvaluationConfig
    from vbes.evaluation.suite import evaluate as run_evaluation

    from vbes.errors import ConfigError, DatasetError, EvaluationFailed, GateFailed, InsufficientSample, NotFound
    from vbes.errors import EvaluationInputError, InvalidInput

    model_run = None
    drawn = None
    if (sample_path is None) == (model_uri is None):
        raise click.UsageError("give either --sample or --model")
    try:
        if gate_file is not None:
            load_gates(gate_file)  # a broken gate file fails before minutes of work
        if model_uri is not None:
            from vbes.cli import settings_from_context
            from vbes.training.sampling import model_sample_for

            drawn = model_sample_for(model_uri, reference_path, report_dir, settings_from_context(), model_events,
                                     seed, progress=lambda message: click.echo(f"evaluate: {message}", err=True))
            sample_path, model_run = drawn.path, drawn.run_id
            if training_path is None and drawn.training is not None:
                training_path = drawn.training
                click.echo(f"evaluate: memorisation test against the model's training file {training_path}", err=True)
        config = EvaluationConfig(
            alpha=alpha,
            null_trials=null_trials,
            distance_null_trials=distance_null_trials,
            classifier_null_trials=classifier_null_trials,
            classifier_events=classifier_events,
            classifier_folds=folds,
            permutations=permutations,
            threads=threads,
            seed=seed,
        )
        config.check()
        assert sample_path is not None
        result = run_evaluation(
            sample_path,
            reference_path,
            channel=channel,
            config=config,
            progress=lambda message: click.echo(f"evaluate: {message}", err=True),
            training=training_path,
        )
    except EvaluationInputError:
        raise
    except (InvalidInput, NotFound, InsufficientSample, ConfigError, DatasetError) as exc:
        raise EvaluationInputError(str(exc)) from exc
    outcome = None
    if gate_file is not None:
        outcome = check_gates(result.flat(), gate_file, family, result.channel).as_dict()
    paths = write_report(result, report_dir, outcome)
    if model_run:
        from vbes.cli import settings_from_context
        from vbes.training.registry import log_evaluation

        log_evaluation(settings_from_context().mlflow_tracking_uri, model_run, report_dir, reference_path,
                       result.flat(), outcome)
    if drawn is not None and drawn.version:
        from vbes.cli import settings_from_context
        from vbes.training.preserve import archive_evaluated_package

        archived = archive_evaluated_package(settings_from_context(), drawn.name, drawn.version, Path(report_dir),
                                             Path(reference_path).stem)
        if archived is not None:
            click.echo(f"evaluate: preservation package with this report archived as {archived[0]}", err=True)
    findings = result.findings
    memorised = result.memorisation
    summary: dict[str, Any] = {
        "passed": result.passed,
        "channel": result.channel,
        "n_tests": len(result.tests),
        "n_hypotheses": result.n_hypotheses,
        "n_failed": len(result.failed),
        "failed": result.failed,
        "findings": findings,
        "failed_features": sorted(name for name, f in result.features.items() if not f["passed"]),
        "classifier_auc": next((t.value for t in result.tests if t.name == "classifier/auc"), None),
        "memorisation": None
        if memorised is None
        else {
            "passed": memorised.passed,
            "pvalue": memorised.pvalue,
            "distance_ratio": memorised.distance_ratio,
            "near_copy_fraction": memorised.near_copy_fraction,
        },
        "report": str(paths["html"]),
        "json": str(paths["json"]),
    }
    if outcome is not None:
        summary["gates_passed"] = outcome["passed"]
        summary["gate_family"] = outcome["family"]
        summary["failed_gates"] = [f"{g['gate']}: {g['metric']}" for g in outcome["gates"] if not g["passed"]]
    memorisation_lines: list[str] = []
    if memorised is not None:
        memorisation_lines.append(
            f"memorisation {'passed' if memorised.passed else 'FAILED'} (p = {memorised.pvalue:.2g}, alpha = "
            f"{alpha:g}): median distance to the training events {memorised.distance_ratio:.3f} +- "
            f"{memorised.distance_ratio_error:.3f} of the reference's, near copies "
            f"{100 * memorised.near_copy_fraction:.2f} % (expected {100 * memorised.near_copy_expected:.2f} %)"
        )
    elif "memorisation" in result.skipped:
        memorisation_lines.append(f"memorisation not run: {result.skipped['memorisation']}")
    text = "\n".join(
        [
            (
                f"evaluation {'PASSED' if result.passed else 'FAILED'}: {len(findings)} of {result.n_hypotheses} "
                f"distinct hypotheses rejected (Holm, alpha = {alpha:g}); {len(result.tests)} tests reported"
            ),
            *(
                f"  failed: {f['test']} (p = {f['pvalue']:.2g})"
                + (f", with {len(f['consequences'])} tests that reuse it" if f["consequences"] else "")
                for f in findings[:20]
            ),
            *([f"  ... and {len(findings) - 20} more"] if len(findings) > 20 else []),
            *memorisation_lines,
            *([f"gates ({outcome['family']}): {'passed' if outcome['passed'] else 'FAILED'}"] if outcome else []),
            *(f"  failed gate: {line}" for line in summary.get("failed_gates", [])[:20]),
            f"report: {paths['html']}",
            f"json:   {paths['json']}",
        ]
    )
    emit(summary, as_json, text)
    if outcome is not None:
        if not outcome["passed"]:
            raise GateFailed(
                f"{len(summary['failed_gates'])} gate check(s) of family {outcome['family']!r} failed; "
                f"see {paths['html']}"
            )
        return
    if not result.fidelity_passed:
        raise EvaluationFailed(
            f"the sample differs from the reference: {len(findings)} of {result.n_hypotheses} hypotheses rejected"
            + ("" if memorised is None or memorised.passed else ", and it is closer to the training events")
            + f"; see {paths['html']}"
        )
    if memorised is not None and not memorised.passed:
        raise EvaluationFailed(
            f"the sample is closer to the training events than the reference is (memorisation p = "
            f"{memorised.pvalue:.2g}); see {paths['html']}"
        )
