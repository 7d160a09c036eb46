"""vbes.evaluation: does a sample reproduce the reference -- and how sure are we?

Public API::

    from vbes.evaluation import evaluate, EvaluationConfig, write_report, check_gates, promote, fidelity

    result = evaluate("model.h5", "reference.h5")          # every test with a calibrated p-value, Holm
    write_report(result, "report/")                         # report.html (figures embedded) + evaluation.json
    check_gates(result.flat(), "gates.yaml", "surrogate")   # thresholds per model family and channel
    promote("rhopi-flow", 3, result, "gates.yaml")          # moves @production only when every gate passed

Modules: :mod:`~vbes.evaluation.metrics` (W1, KS, chi2/ndf, separation power, correlations),
:mod:`~vbes.evaluation.classifier` (two-sample classifier test), :mod:`~vbes.evaluation.distances` (FPD, KPD),
:mod:`~vbes.evaluation.null` (p-values, Holm, self-check), :mod:`~vbes.evaluation.memorisation` (copies of the
training events), :mod:`~vbes.evaluation.features` (feature set per channel),
:mod:`~vbes.evaluation.observables` (physics observables), :mod:`~vbes.evaluation.fidelity` (compression
fidelity), :mod:`~vbes.evaluation.report`, :mod:`~vbes.evaluation.gates`, :mod:`~vbes.evaluation.distortions`.
"""

from __future__ import annotations


from vbes.evaluation.fidelity import FidelityReport, array_fidelity, fidelity
from vbes.evaluation.gates import DEFAULT_GATE_FILE, GateOutcome, check_gates, promote
from vbes.evaluation.memorisation import memorisation_test
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
    "evaluate",
    "fidelity",
    "load_sample",
    "memorisation_test",
    "promote",
    "write_report",
]
