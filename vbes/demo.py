"""``vbes demo``: the main job on embedded defaults, from an empty home folder to every component's output.

Each step is a function taking the settings and the state earlier steps left (files they made), and printing
what it did; the steps compose the components' public APIs, and no component knows of the demo.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from vbes.cli import settings_from_context
from vbes.settings import Settings

if TYPE_CHECKING:
    from vbes.archive import AuditReport
    from vbes.evaluation import Evaluation
    from vbes.evaluation.gates import GateOutcome

__all__ = [
    "DEMO_GUN_SPECIES",
    "STEPS",
    "archive_step",
    "calibration_step",
    "demo",
    "evaluation_step",
    "gun_sample",
    "reference_samples",
    "surrogate_step",
]

#: species of the demo's particle gun (``gun.h5``, the detector-response surrogate's training sample with the rho
#: pi sample: training/configs/smoke-response.yaml): every charged species and the photon
DEMO_GUN_SPECIES = ("gamma", "e-", "e+", "mu-", "mu+", "pi-", "pi+", "K-", "K+", "p", "pbar")
#: the smoke event surrogate that the demo trains (training/configs/smoke-event-surrogate.yaml)
SMOKE_EVENT_SURROGATE = "models:/vbes-event-surrogate-smoke@candidate"


def calibration_step(settings: Settings) -> None:
    """The calibration step: run ``calib init`` on the configured store and show what it holds."""
    from vbes.calibration import DEFAULT_TAG, CalibrationStore
    from vbes.errors import PayloadNotFound

    with CalibrationStore.from_settings(settings) as store:
        click.echo(f"   store {store.engine.url.render_as_string(hide_password=True)}")
        report = store.init_defaults()
        click.echo(f"   {report.table.summary()}")
        for refused in report.table.refused:
            click.echo(f"     refused {refused}")
        for line in report.lines()[1:]:
            click.echo(f"   {line}")
        for tag in store.list_tags():
            info = store.tag_info(tag["name"])
            types = ", ".join(f"{t} {v['iovs']}" for t, v in info["payload_types"].items())
            click.echo(f"   tag {tag['name']} [{tag['state']}, BOSS {tag['boss_release']}] {tag['iovs']} IoVs: "
                       f"{types}")
        for payload_type, run in (("EsTime", 10000), ("EsTime", 11000), ("EsToF", -10000)):
            try:
                p = store.get(DEFAULT_TAG, payload_type, run)
                answer = f"SerNo {p.metadata['serno']} (StVer {p.metadata['stver']}, sha256 {p.sha256[:12]})"
            except PayloadNotFound as exc:  # a gap is a gap: part of what the demo shows
                answer = f"gap: {exc}"
            click.echo(f"   get {DEFAULT_TAG} {payload_type} run {run}: {answer}")


def reference_samples(settings: Settings, n_events: int = 2000, runs: tuple[int, int] = (-10000, -9001),
                      echo: Callable[[str], None] = print) -> list[Path]:
    """Generate a small sample of every channel under ``settings.data_dir``.

    The calibration store of ``settings`` must hold the simulation tag (``vbes calib init``).
    """
    from vbes.calibration import CalibrationStore
    from vbes.datasets import generate_sample
    from vbes.datasets.generator import GENERATOR_CHANNELS

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with CalibrationStore.from_settings(settings) as store:
        for i, channel in enumerate(GENERATOR_CHANNELS):
            path = generate_sample(channel, n_events, settings.data_dir / f"jpsi-{channel}.h5", runs=runs,
                                   seed=i, store=store)
            echo(f"   {channel:9s} {n_events} events, runs {runs[0]}..{runs[1]} -> {path}")
            paths.append(path)
    return paths


def gun_sample(settings: Settings, n_events: int = 3000, runs: tuple[int, int] = (-10000, -9001), seed: int = 7,
               store: Any = None) -> Path:
    """The particle-gun sample ``gun.h5`` in ``settings.data_dir``: :data:`DEMO_GUN_SPECIES`, the gun's default
    momentum and angle ranges, through the material and the detector model (``vbes generate gun``).

    Args:
        settings: the settings (data folder; calibration store unless ``store`` is given).
        n_events: events (one particle each).
        runs: MC run range.
        seed: the gun's seed.
        store: an open calibration store holding the simulation tag.
    """
    from vbes.calibration import CalibrationStore
    from vbes.datasets import generate_sample
    from vbes.datasets.gun import GunSpec

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "gun.h5"
    if store is not None:
        return generate_sample("gun", n_events, path, runs=runs, seed=seed, store=store, gun=GunSpec(DEMO_GUN_SPECIES))
    with CalibrationStore.from_settings(settings) as own:
        return generate_sample("gun", n_events, path, runs=runs, seed=seed, store=own, gun=GunSpec(DEMO_GUN_SPECIES))


def _calibration_snapshot(settings: Settings, folder: Path, scope: str) -> list[tuple[Path, str, dict[str, Any]]]:
    """The default tag's snapshot from the configured calibration store, or (before ``calib init`` ran) the
    calibration bookkeeping table shipped with vbes.calibration."""
    from vbes.calibration import DEFAULT_TAG, CalibrationStore, export_snapshot

    from vbes.errors import TagNotFound

    with CalibrationStore.from_settings(settings) as store:
        try:
            summary = export_snapshot(store, DEFAULT_TAG, folder / f"{DEFAULT_TAG}.tar")
        except TagNotFound:
            summary = None
    if summary is not None:
        meta = {
            "kind": "calibration snapshot",
            "calibration_tag": DEFAULT_TAG,
            "tag_state": summary["state"],
            "manifest_sha256": summary["manifest_sha256"],
            "provenance": "vbes demo: vbes.calibration.export_snapshot",
        }
        return [(Path(summary["file"]), f"{scope}:calibration/{DEFAULT_TAG}.tar", meta)]
    click.echo(
        f"   (no tag {DEFAULT_TAG} in the calibration store yet: archiving the bookkeeping table instead)"
    )
    with resources.as_file(resources.files("vbes.calibration") / "data") as data:
        tables = sorted(p for p in Path(data).iterdir() if p.is_file())
    meta = {"kind": "calibration bookkeeping table", "provenance": "vbes.calibration package data"}
    return [(t, f"{scope}:calibration/{t.name}", meta) for t in tables]


def archive_step(
    settings: Settings,
    files: Sequence[str | Path] | None = None,
    scope: str = "demo",
    dataset: str | None = None,
) -> AuditReport:
    """The archive step: archive ``files`` (default: the calibration snapshot), audit, report.

    Each given file is named ``scope:<file name>`` (``scope:<sha256 prefix>/<file name>`` if that name already
    holds other content, e.g. from an earlier demo run) and collected in a dataset (default
    ``scope:files-<digest of the members>``, so re-running with the same files is a no-op) that is closed.

    Args:
        settings: :class:`vbes.settings.Settings` (catalog URL and tiers).
        files: local files to archive; default the default tag's calibration snapshot.
        scope: scope of the logical names.
        dataset: name of the dataset to record them in.
    """
    from vbes.archive import Archive, PutResult, checksum_file, parse_name
    from vbes.errors import NameConflict

    settings.ensure_home()
    with Archive.from_settings(settings) as archive, tempfile.TemporaryDirectory() as scratch:
        tiers = ", ".join(f"{t.name}={t.url}" for t in archive.tiers.values())
        click.echo(f"   catalog {archive.catalog.safe_url}; tiers {tiers}")
        if files is None:
            items = _calibration_snapshot(settings, Path(scratch), scope)
        else:
            items = [(Path(f), f"{scope}:{Path(f).name}", {"provenance": "vbes demo"}) for f in files]
        results: list[PutResult] = []
        for path, name, meta in items:
            try:
                result = archive.put(path, name, metadata=meta)
            except NameConflict:
                lname = parse_name(name)
                prefix = checksum_file(path).sha256[:12]
                result = archive.put(path, f"{lname.scope}:{prefix}/{lname.name}", metadata=meta)
            results.append(result)
            state = "archived" if result.created else "already archived"
            replicas = ", ".join(f"{r.tier}={r.state}" for r in result.record.replicas)
            click.echo(
                f"   {state:16s} {result.name}  {result.size} B  md5={result.record.md5}  "
                f"adler32={result.record.adler32}  sha256={result.sha256[:16]}…  replicas: {replicas}"
            )
        digest = hashlib.sha256(
            "\n".join(sorted(f"{r.name} {r.sha256}" for r in results)).encode()
        ).hexdigest()
        did = dataset or f"{scope}:files-{digest[:12]}"
        archive.create_dataset(did, {"created_by": "vbes demo"}, exist_ok=True)
        archive.add_to_dataset(did, [r.name for r in results])
        closed = archive.close_dataset(did)
        click.echo(f"   dataset {closed.did}: {len(closed.members)} files, {closed.state}")
        report = archive.audit()
        click.echo(f"   audit: {report.summary()} -> {'OK' if report.exit_code == 0 else 'PROBLEMS'}")
        for item in report.lost:
            click.echo(f"   LOST: {', '.join(item['names'])} sha256={item['sha256']}: no available replica")
        return report


def evaluation_step(
    settings: Settings,
    sample: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    report_dir: str | os.PathLike[str] | None = None,
    family: str = "reference",
    training: str | os.PathLike[str] | None = None,
) -> Evaluation:
    """The evaluation step: compare two samples, apply the shipped gates of ``family``, write the report.

    Args:
        settings: the :class:`vbes.settings.Settings` (the report goes under its home folder by default).
        sample: event file A (e.g. a second seed of a channel, or a model's output).
        reference: event file B (needs about twice A's events for full size matching).
        report_dir: where to write (default ``$VBES_HOME/reports/evaluation``).
        family: gate family (``reference``: statistical identity; ``surrogate``: a generative model's bounds).
        training: the model's training events, for the memorisation test (``reference`` held out from them).
    """
    return _evaluate(settings, sample, reference, report_dir, family, training)[0]


def _evaluate(
    settings: Settings,
    sample: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    report_dir: str | os.PathLike[str] | None,
    family: str,
    training: str | os.PathLike[str] | None,
) -> tuple[Evaluation, GateOutcome, dict[str, Path]]:
    """:func:`evaluation_step`, returning the gate outcome and the report's paths too."""
    from vbes.evaluation import EvaluationConfig, check_gates, evaluate, write_report

    folder = Path(report_dir) if report_dir is not None else Path(settings.home) / "reports" / "evaluation"
    config = EvaluationConfig(classifier_folds=3)
    result = evaluate(sample, reference, config=config, progress=lambda m: click.echo(f"   {m}"), training=training)
    outcome = check_gates(result.flat(), None, family, result.channel)
    paths = write_report(result, folder, outcome.as_dict())
    auc = result.test("classifier/auc") if any(t.name == "classifier/auc" for t in result.tests) else None
    click.echo(
        f"   {Path(sample).name} vs {Path(reference).name} ({result.channel}): "
        f"{result.n_hypotheses - len(result.findings)}/{result.n_hypotheses} hypotheses passed (Holm)"
        + (f", classifier AUC {auc.value:.4f} +- {auc.details['auc_error']:.4f}" if auc else "")
    )
    if result.memorisation is not None:
        click.echo(f"   memorisation: {'passed' if result.memorisation.passed else 'FAILED'} "
                   f"(p = {result.memorisation.pvalue:.2g})")
    click.echo(f"   gates ({outcome.family}): {'passed' if outcome.passed else 'FAILED'}"
               + (f" ({len(outcome.failed)} of {len(outcome.gates)} checks failed)" if not outcome.passed else ""))
    click.echo(f"   report {paths['html']}")
    return result, outcome, paths


def surrogate_step(
    settings: Settings,
    reference: str | os.PathLike[str],
    model_uri: str = SMOKE_EVENT_SURROGATE,
    n_events: int = 20_000,
    report_dir: str | os.PathLike[str] | None = None,
    seed: int = 1,
) -> Evaluation:
    """The surrogate step: draw events of the reference's channel from a registered event surrogate (the function
    ``vbes sample`` uses), evaluate them against the held-out ``reference`` with the surrogate gates, and log the
    report to the model's MLflow run (as ``vbes evaluate --model`` does).

    Args:
        settings: the settings (MLflow registry, calibration store).
        reference: an event file no model was trained on, with about twice ``n_events`` events.
        model_uri: the model.
        n_events: events to draw.
        report_dir: where the sample and the report go (default ``$VBES_HOME/reports/surrogate``).
        seed: the draw's seed.
    """
    from vbes.training.registry import log_evaluation
    from vbes.training.sampling import model_sample_for

    folder = Path(report_dir) if report_dir is not None else Path(settings.home) / "reports" / "surrogate"
    reference = Path(reference)
    t0 = time.perf_counter()
    drawn = model_sample_for(model_uri, reference, folder, settings, n_events, seed,
                             progress=lambda m: click.echo(f"   {m}"))
    click.echo(f"   drew {n_events} events in {time.perf_counter() - t0:.1f} s -> {drawn.path}")
    result, outcome, _paths = _evaluate(settings, drawn.path, reference, folder, "surrogate", drawn.training)
    if drawn.run_id:
        log_evaluation(settings.mlflow_tracking_uri, drawn.run_id, folder, reference, result.flat(),
                       outcome.as_dict())
        click.echo(f"   report logged to MLflow run {drawn.run_id[:12]} "
                   f"(artifacts evaluations/{reference.stem}/)")
    if not outcome.passed and "smoke" in model_uri:
        click.echo("   smoke settings: not trained to any quality gate")
    return result


def _step_calibration(settings: Settings, state: dict[str, Any]) -> None:
    calibration_step(settings)


def _step_generate(settings: Settings, state: dict[str, Any]) -> None:
    state["samples"] = reference_samples(settings, echo=click.echo)
    # two independent samples of one channel (other seeds) for the evaluation step
    from vbes.calibration import CalibrationStore
    from vbes.datasets import generate_sample

    # the suite's null splits want a reference of about twice the sample's size
    pair = []
    with CalibrationStore.from_settings(settings) as store:
        for seed, n_events in ((101, 20_000), (102, 40_000)):
            path = settings.data_dir / f"jpsi-mumu-seed{seed}.h5"
            pair.append(generate_sample("mumu", n_events, path, runs=(-10000, -9001), seed=seed, store=store))
            click.echo(f"   mumu      {n_events} events, seed {seed} -> {path}")
        # the response surrogate's particle gun, and a rho pi reference that no model trains on (other seed)
        state["gun"] = gun_sample(settings, store=store)
        click.echo(f"   gun       3000 events ({', '.join(DEMO_GUN_SPECIES)}) -> {state['gun']}")
        path = settings.data_dir / "jpsi-rhopi-seed103.h5"
        state["surrogate_reference"] = generate_sample("rhopi", 40_000, path, runs=(-10000, -9001), seed=103,
                                                       store=store)
        click.echo(f"   rhopi     40000 events, seed 103 (held out from training) -> {path}")
    state["evaluation_pair"] = pair


def _step_archive(settings: Settings, state: dict[str, Any]) -> None:
    files = list(state.get("samples", [])) + list(state.get("evaluation_pair", []))
    files += [state[key] for key in ("gun", "surrogate_reference") if key in state]
    archive_step(settings, files=files, scope="demo")


def _step_train(settings: Settings, state: dict[str, Any]) -> None:
    from vbes.training import train

    # the demo prints one line per model: MLflow's and Lightning's own chatter stays out of it
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for logger in ("lightning", "lightning.pytorch"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    configs = resources.files("vbes.training") / "configs"
    for name in ("smoke-record-ae.yaml", "smoke-track-flow.yaml", "smoke-response.yaml",
                 "smoke-event-surrogate.yaml"):
        with resources.as_file(configs / name) as config:
            result = train(config, settings, echo=lambda line: None)
        click.echo(f"   {result.model_uri} = version {result.version} "
                   f"(MLflow run {result.run_id[:12]}, {result.epochs} epochs, best validation loss "
                   f"{result.best_val_loss:.3f}); smoke settings: not trained to any quality gate")


def _step_evaluate(settings: Settings, state: dict[str, Any]) -> None:
    sample, reference = state["evaluation_pair"]
    evaluation_step(settings, sample=sample, reference=reference, report_dir=settings.home / "reports" / "mumu")


def _step_surrogates(settings: Settings, state: dict[str, Any]) -> None:
    surrogate_step(settings, state["surrogate_reference"])


STEPS: list[tuple[str, Callable[[Settings, dict[str, Any]], None]]] = [
    ("calibration store: import the talk's table, build the simulation tag", _step_calibration),
    ("reference samples: Pythia 8 + BESIII-like detector response, one per channel", _step_generate),
    ("archive: checksummed, replicated on hot and cold tiers, audited", _step_archive),
    ("models: smoke training of the record autoencoder, the track flow and the two surrogates, registered in "
     "MLflow", _step_train),
    ("evaluation: two independent mumu samples, reference vs reference", _step_evaluate),
    ("surrogates: sample from candidate and evaluate", _step_surrogates),
]


@click.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults under VBES_HOME."""
    settings = settings_from_context()
    settings.ensure_home()
    click.echo(f"VBES_HOME = {settings.home}")
    t_all = time.perf_counter()
    state: dict[str, Any] = {}
    for i, (name, step) in enumerate(STEPS, 1):
        click.secho(f"\n== [{i}/{len(STEPS)}] {name}", bold=True)
        t0 = time.perf_counter()
        step(settings, state)
        click.echo(f"   ({time.perf_counter() - t0:.1f} s)")
    click.echo(f"\ndemo finished in {time.perf_counter() - t_all:.1f} s")
