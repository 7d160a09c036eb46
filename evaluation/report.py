"""The evaluation report: one self-contained HTML file (figures embedded as PNG data URIs) and a JSON file with
every number.

Figures use matplotlib with the mplhep (ROOT) style, drawn on :class:`matplotlib.figure.Figure` objects directly
so no global pyplot state or display is needed.

Example::

    evaluation = evaluate("model.h5", "reference.h5")
    paths = write_report(evaluation, "report/")   # report/report.html, report/evaluation.json
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from vbes.evaluation.metrics import fixed_bins
from vbes.evaluation.observables import fit_peak, peak_range
from vbes.evaluation.suite import Evaluation, Sample

from vbes.errors import InsufficientSample

__all__ = ["render_html", "write_json", "write_report"]

_PANELS = 16  # feature histograms per figure (4 x 4)


def _style() -> Any:
    import matplotlib.style
    import mplhep

    style = dict(mplhep.style.ROOT)
    style.update(
        {
            "font.size": 9,
            "axes.titlesize": 9,
            "axes.labelsize": 9,
            "legend.fontsize": 7,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "figure.dpi": 80,
            # ROOT's minor ticks on four sides are most of the drawing time of ~80 small panels
            "xtick.minor.visible": False,
            "ytick.minor.visible": False,
            "xtick.top": False,
            "ytick.right": False,
        }
    )
    return matplotlib.style.context(style)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    # fixed layouts, no "tight" bounding boxes: measuring every tick label's extent was most of the report's time
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _hist_pair(
    ax: Any,
    a: np.ndarray,
    b: np.ndarray,
    title: str,
    unit: str,
    limits: tuple[float, float] | None = None,
    ratio_ax: Any = None,
) -> None:
    """Normalised histograms of sample and reference; with ``ratio_ax``, sample / reference below them with the
    null band: the ratio's expected +-1 and +-2 standard deviations when both are drawn from the reference
    (Poisson counts of the two samples' sizes)."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if b.size == 0:
        ax.set_title(f"{title} (absent)")
        return
    edges = fixed_bins(b)[1:-1] if limits is None else np.linspace(*limits, 61)
    if edges.size < 2:
        return
    # stairs of precomputed counts: ax.hist draws one patch per bin, several times slower for the same picture
    counts_a = np.histogram(a, edges)[0].astype(np.float64)
    counts_b = np.histogram(b, edges)[0].astype(np.float64)
    widths = np.diff(edges)
    ax.stairs(counts_b / (counts_b.sum() * widths), edges, fill=True, alpha=0.35, label="reference", color="tab:blue")
    if a.size:
        ax.stairs(counts_a / (counts_a.sum() * widths), edges, label="sample", color="tab:red", linewidth=1.2)
    ax.set_title(title)
    ax.locator_params(nbins=4)  # few tick labels: their text is most of a small panel's drawing time
    if ratio_ax is None:
        ax.set_xlabel(unit)
        return
    scale = a.size / b.size if b.size else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = counts_a / (counts_b * scale)
        sigma = np.sqrt(1.0 / (counts_b * scale) + 1.0 / counts_b)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for k, alpha in ((2, 0.15), (1, 0.3)):
        ratio_ax.fill_between(
            centres, 1 - k * sigma, 1 + k * sigma, step="mid", color="grey", alpha=alpha, linewidth=0,
            label=f"null +-{k} sd" if k == 1 else None,
        )
    ratio_ax.plot(centres, ratio, "o", color="tab:red", markersize=2)
    ratio_ax.axhline(1.0, color="black", linewidth=0.6)
    ratio_ax.set_ylim(0.5, 1.5)
    ratio_ax.set_ylabel("sample / ref.")
    ratio_ax.set_xlabel(unit)


def _feature_figures(evaluation: Evaluation, samples: tuple[Sample, Sample]) -> list[str]:
    a, b = samples
    names = a.features.names
    images = []
    for start in range(0, len(names), _PANELS):
        chunk = names[start : start + _PANELS]
        rows = int(np.ceil(len(chunk) / 4))
        fig = Figure(figsize=(12, 2.6 * rows))
        axes = fig.subplots(rows, 4, squeeze=False)
        for ax, name in zip(axes.ravel(), chunk):
            i = names.index(name)
            summary = evaluation.features.get(name, {})
            flag = "" if summary.get("passed", True) else " [FAIL]"
            _hist_pair(
                ax, a.features.values[:, i], b.features.values[:, i], f"{name}{flag}", a.features.units.get(name, "")
            )
        for ax in axes.ravel()[len(chunk) :]:
            ax.set_visible(False)
        axes.ravel()[0].legend()
        fig.subplots_adjust(left=0.05, right=0.98, bottom=0.35 / rows, top=1 - 0.25 / rows, wspace=0.3, hspace=0.75)
        images.append(_png(fig))
    return images


def _correlation_figure(evaluation: Evaluation) -> str | None:
    corr = evaluation.correlation
    if "difference" not in corr:
        return None
    diff = np.asarray(corr["difference"])
    names = corr["names"]
    size = max(4.0, 0.22 * len(names) + 2)
    fig = Figure(figsize=(size + 1, size))
    ax = fig.subplots()
    limit = max(0.05, float(np.abs(diff).max()))
    image = ax.imshow(diff, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=5)
    ax.set_yticks(range(len(names)), names, fontsize=5)
    ax.set_title("corr(sample) - corr(reference), rank-Gauss design")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _png(fig)


def _pair_figures(evaluation: Evaluation, samples: tuple[Sample, Sample], n_pairs: int = 3) -> list[str]:
    # 2-D histograms of the pairs whose correlation differs most
    corr = evaluation.correlation
    if "difference" not in corr:
        return []
    diff = np.abs(np.asarray(corr["difference"]))
    names = corr["names"]
    iu = np.triu_indices(len(names), 1)
    # pairs of features (a presence indicator has no 2-D histogram worth drawing)
    features = np.array([not name.startswith("present(") for name in names])
    ranked = np.where(features[iu[0]] & features[iu[1]], diff[iu], -1.0)
    order = [k for k in np.argsort(ranked)[::-1][:n_pairs] if ranked[k] >= 0]
    a, b = samples
    images = []
    for k in order:
        x_name, y_name = names[iu[0][k]], names[iu[1][k]]
        fig = Figure(figsize=(8, 3.4))
        axes = fig.subplots(1, 2)
        for ax, sample, label in ((axes[0], b, "reference"), (axes[1], a, "sample")):
            x, y = sample.features.column(x_name), sample.features.column(y_name)
            ok = np.isfinite(x) & np.isfinite(y)
            xr = np.quantile(b.features.column(x_name)[np.isfinite(b.features.column(x_name))], [0.005, 0.995])
            yr = np.quantile(b.features.column(y_name)[np.isfinite(b.features.column(y_name))], [0.005, 0.995])
            ax.hist2d(x[ok], y[ok], bins=40, range=[xr, yr], cmap="viridis")
            ax.set_xlabel(x_name)
            ax.set_ylabel(y_name)
            ax.set_title(f"{label}: |d corr| = {diff[iu][k]:.3f}")
        fig.tight_layout()
        images.append(_png(fig))
    return images


def _observable_figures(evaluation: Evaluation, samples: tuple[Sample, Sample]) -> list[tuple[str, str]]:
    a, b = samples
    images = []
    for obs_a, obs_b in zip(a.observables, b.observables):
        fig = Figure(figsize=(5, 4.4))
        ax, ratio_ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.06})
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.11, top=0.93)
        if obs_a.kind == "spectrum2d":
            fig = Figure(figsize=(8, 3.4))
            axes = fig.subplots(1, 2)
            ref = obs_b.values[np.isfinite(obs_b.values).all(axis=1)]
            if len(ref) == 0:
                continue
            rng = [np.quantile(ref[:, 0], [0.001, 0.999]), np.quantile(ref[:, 1], [0.001, 0.999])]
            for ax, obs, label in ((axes[0], obs_b, "reference"), (axes[1], obs_a, "sample")):
                v = obs.values[np.isfinite(obs.values).all(axis=1)]
                ax.hist2d(v[:, 0], v[:, 1], bins=50, range=rng, cmap="viridis")
                ax.set_title(f"{obs.name}: {label}")
                ax.set_xlabel(f"[{obs.unit}]")
            fig.tight_layout()
            images.append((obs_a.name, _png(fig)))
            continue
        if obs_a.kind == "correlation":
            continue
        # (the fraction bar chart and the 2-D maps get figures of their own)
        va, vb = np.asarray(obs_a.values).ravel(), np.asarray(obs_b.values).ravel()
        if obs_a.kind == "fraction":
            fa, fb = (
                np.nanmean(va) if np.isfinite(va).any() else np.nan,
                np.nanmean(vb) if np.isfinite(vb).any() else np.nan,
            )
            fig = Figure(figsize=(5, 3.4))
            ax = fig.subplots()
            ax.bar(["reference", "sample"], [fb, fa], color=["tab:blue", "tab:red"], alpha=0.6)
            ax.set_title(obs_a.name)
        else:
            limits = (obs_a.window if obs_a.window else peak_range(vb)) if obs_a.kind == "peak" else None
            _hist_pair(ax, va, vb, obs_a.name, obs_a.unit, limits, ratio_ax)
            if obs_a.kind == "peak":
                for values, color in ((va, "tab:red"), (vb, "tab:blue")):
                    try:
                        fit = fit_peak(values, window=obs_a.window)
                    except (InsufficientSample, RuntimeError, ValueError):
                        continue  # a failed fit is reported by the tests; the figure just omits its line
                    ax.axvline(fit.position, color=color, linestyle=":", linewidth=1)
                    ax.text(
                        0.02,
                        0.95 if color == "tab:blue" else 0.85,
                        f"{fit.position:.5g} +- {fit.position_error:.2g}, sigma {fit.width:.3g}",
                        transform=ax.transAxes,
                        color=color,
                        fontsize=7,
                        va="top",
                    )
                if obs_a.expected is not None:
                    ax.axvline(obs_a.expected, color="black", linewidth=0.8, label="PDG")
            ax.legend(loc="upper right")
        if obs_a.kind == "fraction":
            fig.tight_layout()
        images.append((obs_a.name, _png(fig)))
    return images


def _memorisation_figure(evaluation: Evaluation) -> str | None:
    """Distances to the nearest training event: sample against reference (held out), with the near-copy line."""
    memorised = evaluation.memorisation
    if memorised is None or memorised.distances is None:
        return None
    d_s, d_h = memorised.distances
    top = float(np.quantile(np.concatenate([d_s, d_h]), 0.999))
    edges = np.linspace(0.0, top if top > 0 else 1.0, 61)
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    def density(d: np.ndarray) -> np.ndarray:
        return np.histogram(np.clip(d, 0, edges[-1]), edges, density=True)[0]

    ax.stairs(density(d_h), edges, fill=True, alpha=0.35, color="tab:blue", label="reference (held out)")
    ax.stairs(density(d_s), edges, color="tab:red", linewidth=1.2, label="sample")
    ax.axvline(memorised.near_copy_threshold, color="black", linestyle=":", linewidth=1,
               label=f"near copy: below {100 * memorised.near_copy_quantile:g} % of reference")
    ax.set_xlabel("distance to the nearest training event (rank-Gauss units)")
    ax.legend(loc="upper right")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.95)
    return _png(fig)


def _memorisation_section(evaluation: Evaluation) -> list[str]:
    m = evaluation.memorisation
    if m is None:
        if "memorisation" in evaluation.skipped:
            return [f"<h2>Memorisation</h2><p>not run: {html.escape(evaluation.skipped['memorisation'])}</p>"]
        return []
    cls = "pass" if m.passed else "fail"
    training = html.escape(str(evaluation.training_info.get("path", "in memory")))
    parts = [
        f"<h2>Memorisation: {'passed' if m.passed else 'FAILED'}</h2>",
        (
            f"<p>Is the sample closer to the model's training events ({training}) than independent events are? "
            f"For {m.n_sample} sample and {m.n_heldout} reference events (the reference is the held-out set: it must "
            f"be independent of the training set), the distance to the nearest of {m.n_training} training events "
            f"(of {m.n_training_total}), in the rank-Gauss design of {m.n_features} coordinates. Without "
            "memorisation both distances have the same distribution. The test is one-sided and not one of Holm's "
            f"hypotheses above: it asks about copying, not fidelity, and has its own verdict at alpha = "
            f"{evaluation.config.alpha:g} (p-value: Bonferroni over the two below).</p>"
        ),
        "<table><tr><th>quantity</th><th>value</th><th>expected without memorisation</th><th>p-value</th></tr>",
        (
            f"<tr><td>P(d_sample &lt; d_reference) (Mann-Whitney, one-sided)</td><td>{_fmt(m.closer_probability)}"
            f"</td><td>0.5</td><td>{_fmt(m.mann_whitney_pvalue)}</td></tr>"
        ),
        (
            f"<tr><td>median(d_sample) / median(d_reference)</td><td>{_fmt(m.distance_ratio)} +- "
            f"{_fmt(m.distance_ratio_error)}</td><td>1</td><td>&ndash;</td></tr>"
        ),
        (
            f"<tr><td>near copies (closer than the reference's {100 * m.near_copy_quantile:g} % quantile, "
            f"{_fmt(m.near_copy_threshold)})</td><td>{_fmt(100 * m.near_copy_fraction)} % ({m.near_copies})</td>"
            f"<td>{_fmt(100 * m.near_copy_expected)} %</td><td>{_fmt(m.near_copy_pvalue)}</td></tr>"
        ),
        (
            f"<tr class='{cls}'><td>memorisation test</td><td>{'pass' if m.passed else 'FAIL'}</td>"
            f"<td>p &ge; {evaluation.config.alpha:g}</td><td>{_fmt(m.pvalue)}</td></tr></table>"
        ),
    ]
    return parts


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _test_rows(tests: list[Any]) -> list[str]:
    rows = [
        "<table><tr><th>test</th><th>value</th><th>p-value</th><th>fails below (Holm level)</th><th>null mean</th>"
        "<th>null spread</th><th>decision</th><th>result</th></tr>"
    ]
    for t in tests:
        cls = "pass" if t.passed else "fail"
        rows.append(
            f"<tr class='{cls}'><td>{html.escape(t.name)}</td><td>{_fmt(t.value)}</td><td>{_fmt(t.pvalue)}</td>"
            f"<td>{_fmt(t.threshold)}</td><td>{_fmt(t.null_mean)}</td><td>{_fmt(t.null_std)}</td>"
            f"<td>{html.escape(t.decision)}</td><td>{'pass' if t.passed else 'FAIL'}</td></tr>"
        )
    rows.append("</table>")
    return rows


def render_html(
    evaluation: Evaluation, gate_outcome: dict[str, Any] | None = None, samples: tuple[Sample, Sample] | None = None
) -> str:
    """The report as one HTML string (figures embedded).

    Order: the verdict, gates, the memorisation test (when it ran) and failed tests (each distinct failure with
    the tests that reuse its p-value),
    the physics observables with sample / reference ratio panels and their null band, the per-feature table,
    the feature and correlation figures, the self-check, and the table of every test folded at the end.
    """
    samples = samples or evaluation.samples
    config = evaluation.config
    m = evaluation.n_hypotheses
    verdict = "PASSED" if evaluation.passed else "FAILED"
    colour = "#2a7" if evaluation.passed else "#c33"
    splits = (
        f"{config.null_trials} reference-vs-reference null splits (each split's two halves are disjoint "
        f"random sets of {evaluation.n_used} reference events; different splits overlap) repeat the per-feature "
        "tests, correlations and observables as a self-check"
        + (f", {config.distance_null_trials} of them FPD and KPD" if config.distance_null_trials else "")
        + (f", {config.classifier_null_trials} of them the classifier" if config.classifier_null_trials else "")
        + "; they decide nothing."
        if config.null_trials
        else "No null splits (self-check off)."
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>vbes evaluation</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1300px} table{border-collapse:collapse;font-size:12px}",
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td:first-child{text-align:left}",
        ".fail{background:#fdd} .pass{background:#efe} img{max-width:100%} h2{margin-top:1.5em}",
        "</style></head><body>",
        f"<h1>Evaluation: <span style='color:{colour}'>{verdict}</span></h1>",
        (
            f"<p>channel <b>{html.escape(evaluation.channel or 'numeric table')}</b>; sample "
            f"{html.escape(str(evaluation.sample_info.get('path', 'in memory')))} ({evaluation.n_sample} events), "
            f"reference {html.escape(str(evaluation.reference_info.get('path', 'in memory')))} "
            f"({evaluation.n_reference} events).</p>"
        ),
        (
            f"<p>{evaluation.n_used} events per sample in every test but the classifier ({evaluation.n_classifier} "
            f"per sample, {config.classifier_folds}-fold). {splits}</p>"
        ),
        (
            f"<p><b>Multiple testing:</b> {len(evaluation.tests)} tests are reported over <b>{m}</b> distinct "
            f"hypotheses (a test that reuses another's p-value follows its verdict and is not counted). Every test "
            f"has its own calibrated p-value; Holm's step-down procedure at alpha = {config.alpha:g} judges the "
            f"family (the k-th smallest p-value fails while below alpha/(m - k + 1), the smallest level being "
            f"{config.alpha / max(m, 1):.2e}), so a sample drawn from the reference fails any test with "
            f"probability at most {config.alpha:g}.</p>"
        ),
    ]
    if gate_outcome is not None:
        status = "passed" if gate_outcome["passed"] else "FAILED"
        parts.append(
            f"<h2>Gates ({html.escape(str(gate_outcome.get('family')))}, {status})</h2><table>"
            "<tr><th>gate</th><th>metric</th><th>value</th><th>bound</th><th>result</th></tr>"
        )
        for g in gate_outcome["gates"]:
            cls = "pass" if g["passed"] else "fail"
            parts.append(
                f"<tr class='{cls}'><td>{_fmt(g['gate'])}</td><td>{_fmt(g.get('metric'))}</td>"
                f"<td>{_fmt(g.get('value'))}</td><td>{_fmt(g.get('bound'))}</td>"
                f"<td>{'pass' if g['passed'] else 'FAIL'}</td></tr>"
            )
        parts.append("</table>")
    parts += _memorisation_section(evaluation)
    if evaluation.memorisation is not None:
        with _style():
            figure = _memorisation_figure(evaluation)
        if figure:
            parts.append(f"<img alt='memorisation' src='{figure}' style='width:40%'>")
    findings = evaluation.findings
    by_name = {t.name: t for t in evaluation.tests}
    parts.append(f"<h2>Failed tests ({len(findings)} of {m} hypotheses)</h2>" + ("<p>none</p>" if not findings else ""))
    if findings:
        rows: list[Any] = []
        for f in findings:
            rows.append(by_name[f["test"]])
            rows += [by_name[c] for c in f["consequences"]]
        parts += _test_rows(rows)
    if samples is not None:
        with _style():
            observables = _observable_figures(evaluation, samples)
        if observables:
            parts.append(
                "<h2>Physics observables</h2><p>Below each histogram: sample / reference, with the band that "
                "reference-vs-reference pairs of these sizes fill (+-1 and +-2 standard deviations).</p>"
            )
            parts += [f"<img alt='{html.escape(name)}' src='{uri}' style='width:32%'>" for name, uri in observables]
    parts.append(
        "<h2>Per-feature summary</h2><p>A feature fails when any of its tests fails (presence included).</p>"
        "<table><tr><th>feature</th><th>unit</th><th>W1</th><th>W1 / resolution</th><th>KS</th><th>chi2/ndf</th>"
        "<th>separation power</th><th>presence difference</th><th>smallest p-value</th><th>failed tests</th>"
        "<th>result</th></tr>"
    )
    for name, f in evaluation.features.items():
        cls = "pass" if f.get("passed", True) else "fail"
        failed = ", ".join(t.split("/")[-1] for t in f.get("failed_tests", []))
        parts.append(
            f"<tr class='{cls}'><td>{html.escape(name)}</td><td>{_fmt(f['unit'])}</td><td>{_fmt(f['w1'])}</td>"
            f"<td>{_fmt(f['w1_over_resolution'])}</td><td>{_fmt(f['ks'])}</td><td>{_fmt(f['chi2_ndf'])}</td>"
            f"<td>{_fmt(f['separation_power'])}</td><td>{_fmt(f.get('presence_difference'))}</td>"
            f"<td>{_fmt(f.get('min_pvalue'))}</td><td>{html.escape(failed)}</td>"
            f"<td>{'pass' if f.get('passed', True) else 'FAIL'}</td></tr>"
        )
    parts.append("</table>")
    if samples is not None:
        with _style():
            parts.append("<h2>Feature distributions</h2>")
            parts += [f"<img src='{uri}'>" for uri in _feature_figures(evaluation, samples)]
            corr = _correlation_figure(evaluation)
            if corr:
                parts.append("<h2>Correlations</h2>" + f"<img src='{corr}' style='max-width:70%'>")
            pairs = _pair_figures(evaluation, samples)
            if pairs:
                parts.append("<h3>Pairs whose correlation differs most</h3>")
                parts += [f"<img src='{uri}' style='max-width:70%'>" for uri in pairs]
    if evaluation.calibration:
        check = evaluation.calibration
        parts.append(
            "<h2>Self-check on the null splits</h2>"
            f"<p>{check['n_failed_splits']} of {check['n_splits']} reference-vs-reference splits would fail "
            f"(expected at most alpha = {config.alpha:g}; binomial p = {_fmt(check['binomial_pvalue'])}). Null "
            "z = Phi^-1(1 - p) per test family: mean 0 and spread 1 for calibrated continuous p-values (discrete "
            "or conservative ones read lower).</p><table><tr><th>family</th><th>values</th><th>mean</th>"
            "<th>spread</th></tr>"
        )
        for family, numbers in check["families"].items():
            parts.append(
                f"<tr><td>{html.escape(family)}</td><td>{numbers['n']}</td><td>{_fmt(numbers['mean'])}</td>"
                f"<td>{_fmt(numbers['std'])}</td></tr>"
            )
        parts.append("</table>")
    if evaluation.skipped:
        parts.append("<h2>Not computed (below a metric's minimum sample size)</h2><ul>")
        parts += [f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in evaluation.skipped.items()]
        parts.append("</ul>")
    parts.append(f"<details><summary><b>All {len(evaluation.tests)} tests</b></summary>")
    parts += _test_rows(evaluation.tests)
    parts.append("</details>")
    parts.append(
        "<h2>Timings</h2><table>"
        + "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f} s</td></tr>" for k, v in evaluation.timings.items())
        + "</table>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_json(evaluation: Evaluation, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> Path:
    """Write every number of the evaluation (plus ``extra``, e.g. the gate outcome) as JSON."""
    path = Path(path)
    data = evaluation.as_dict()
    if extra:
        data.update(extra)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, allow_nan=False))
    tmp.replace(path)
    return path


def write_report(
    evaluation: Evaluation,
    directory: str | os.PathLike[str],
    gate_outcome: dict[str, Any] | None = None,
    samples: tuple[Sample, Sample] | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` and ``evaluation.json`` into ``directory`` (created if needed).

    Returns:
        ``{"html": path, "json": path}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = {"gates": gate_outcome} if gate_outcome is not None else None
    json_path = write_json(evaluation, directory / "evaluation.json", extra)
    html_path = directory / "report.html"
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(render_html(evaluation, gate_outcome, samples))
    tmp.replace(html_path)
    return {"html": html_path, "json": json_path}
