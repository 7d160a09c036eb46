"""vbes.evaluation: does a sample reproduce the reference -- and how sure are we?

Public API::

    from vbes.evaluation import evaluate, EvaluationConfig, write_report, check_gates, promote, fidelity

    result = evaluate("model.h5", "reference.h5")          # every test with a calibrated p-value, Holm
    write_report(result, "report/")                         # report.html (figures embedded) + evaluation.json
    check_gates(result.flat(), "gates.yaml", "surrogate")   # thresholds per model family and channel
    promote("rhopi-flow", 3, result, "gates.yaml")          # moves @production only when every gate passed

Modules: :mod:`~vbes.evaluation.metrics` (W1, KS, chi2/ndf, separation power, correlations),
:mod:`~vbes.evaluation.classifier` (two-sample classifier test), :mod:`~vbes.evaluation.distances` (FPD, KPD),
:mod:`~vbes.evaluation.null` (p-values, Holm, self-check), :mod:`~vbes.evaluation.features` (feature set per channel),
:mod:`~vbes.evaluation.observables` (physics observables), :mod:`~vbes.evaluation.fidelity` (compression
fidelity), :mod:`~vbes.evaluation.report`, :mod:`~vbes.evaluation.gates`, :mod:`~vbes.evaluation.distortions`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vbes.evaluation.fidelity import FidelityReport, array_fidelity, fidelity
from vbes.evaluation.gates import DEFAULT_GATE_FILE, GateOutcome, check_gates, promote
from vbes.evaluation.report import write_report
from vbes.evaluation.suite import Evaluation, EvaluationConfig, Sample, evaluate, load_sample

__all__ = [
    "DEFAULT_GATE_FILE",
    "Evaluation",
    "EvaluationConfig",
    "FidelityReport",
    "GateOutcome",
    "Sample",
    "array_fidelity",
    "check_gates",
    "demo_step",
    "evaluate",
    "fidelity",
    "load_sample",
    "promote",
    "write_report",
]


def demo_step(
    settings: Any,
    sample: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    report_dir: str | os.PathLike[str] | None = None,
) -> Evaluation:
    """``vbes demo``'s evaluation step: compare two generated samples and write the report.

    Args:
        settings: the :class:`vbes.settings.Settings` (the report goes under its home folder by default).
        sample: event file A (e.g. a second seed of a channel, later a model's output).
        reference: event file B (needs about twice A's events for full size matching).
        report_dir: where to write (default ``$VBES_HOME/reports/evaluation``).
    """
    import click
    from vbes.evaluation.gates import check_gates as _check

    folder = Path(report_dir) if report_dir is not None else Path(settings.home) / "reports" / "evaluation"
    config = EvaluationConfig(classifier_folds=3)
    result = evaluate(sample, reference, config=config, progress=lambda m: click.echo(f"   {m}"))
    outcome = _check(result.flat(), None, "reference", result.channel)
    paths = write_report(result, folder, outcome.as_dict())
    auc = result.test("classifier/auc") if any(t.name == "classifier/auc" for t in result.tests) else None
    click.echo(
        f"   {Path(sample).name} vs {Path(reference).name} ({result.channel}): "
        f"{result.n_hypotheses - len(result.findings)}/{result.n_hypotheses} hypotheses passed (Holm)"
        + (f", classifier AUC {auc.value:.4f} +- {auc.details['auc_error']:.4f}" if auc else "")
    )
    click.echo(f"   gates ({outcome.family}): {'passed' if outcome.passed else 'FAILED'}")
    click.echo(f"   report {paths['html']}")
    return result
