"""Every quality, speed and size target of the generative models, measured in one run on one registered version.

The project's acceptance text asks for, from one run of this script on one registered version of each model:

* **quality**: for each validation channel (rho pi, K_S K pi, e+e-, mu+mu-, p pbar) the classifier two-sample AUC
  of 1e5 surrogate events against a held-out reference is <= 0.55 with the suite's fixed feature set and
  settings (the suite's size matching, ``n = min(N_A, N_B / 2)``, so the reference holds 2e5 events and the
  classifier sees 1e5 of each), the mass peaks within the gates (``check_gates``, family ``surrogate``); the
  detector-response surrogate the same per particle species (its response to a held-out gun truth sample against
  the reference chain's reconstruction of the same gun, another seed); **conditioning**: for two run periods with
  different calibration constants (EMC energy scale 0.985 and 1.015, TOF and dE/dx resolutions) the surrogate
  reproduces the reference's difference between them (pi0 -> gamma gamma peak, electron E/p, TOF time residual and
  chi widths, within 2 sigma); the memorisation test passes. Where a channel misses, the table says by how much;
* **speed**: event-level sampling >= 100,000 rho pi events/s on 2 cores (FlashSim reported about 33,000/s on a
  GPU), beside the reference chain's rate measured in the same run; the response surrogate >= 200,000
  particles/s beside the reference detector simulation of the same particles;
* **size**: each model's bytes on disk (saved folder, preservation package in the archive) against the bytes of
  the training files it stands for;
* **training**: wall time to train (target <= 15 minutes on 2 cores). One event-level model serves every channel,
  so the per-channel figure is that model's total; the table says so. Per-epoch validation losses and times come
  from the run's MLflow metrics (step = epoch).

Stages, each skippable and resumable; every file is cached under the work folder (``VBES_HOME``, default
``benchmarks/out/models``; ``--quick``: ``benchmarks/out/models-quick``), so a rerun recomputes only what is missing:

1. ``data``: training samples per channel over ``--runs`` (default -30000:-1: the three MC periods of tag
   BOSS-6.6.4-sim-2), a particle-gun training sample (all 14 species, p 0.03..2 GeV/c), held-out references
   (other seeds), per-species gun truth and reference samples, single-period references for the conditioning test;
2. ``train``: training configurations written from ``training/configs/full-event-surrogate.yaml`` and
   ``full-response.yaml`` (or the families' default configurations where those are absent) pointing at the data,
   ``vbes.training.train``; the registered versions are remembered in ``bench_state.json``;
3. ``evaluate``: the evaluation suite per channel and per species, gates, memorisation, conditioning;
4. ``speed``: sampling rates in memory and through ``vbes sample -j 2``, the reference chain's rates, sizes.

Without the ``train`` stage the models are ``--model`` / ``--response-model`` (``models:/NAME/VERSION``,
``models:/NAME@ALIAS`` or a saved folder), else the versions the last training in the work folder registered.

Run: ``nice -n 10 python benchmarks/bench_models.py [--quick] [--stages data,train,evaluate,speed]
[--model models:/NAME/VERSION] [--response-model ...] [--json out.json]`` (``--help`` for every size).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CHANNELS = ("rhopi", "kskpi", "ee", "mumu", "ppbar")
STAGES = ("data", "train", "evaluate", "speed")

TARGET_AUC = 0.55
TARGET_EVENTS_PER_S = 100_000.0
TARGET_PARTICLES_PER_S = 200_000.0
TARGET_TRAIN_S = 15 * 60.0
FLASHSIM_EVENTS_PER_S = 33_000.0  # FlashSim (CMS), one GPU, as published
TARGET_W1_OVER_RESOLUTION = 0.5  # the surrogate gate of W1 in units of the detector resolution
MAX_CONDITIONING_Z = 2.0
#: the two MC periods of the conditioning test: EMC energy scale 0.985 vs 1.015, TOF 95 vs 100 ps, dE/dx 6.2 vs 6 %
CONDITIONING_PERIODS = ((-30000, -20001), (-20000, -10001))
GUN_P_RANGE = (0.03, 2.0)
PION_MASS = 0.13957039
C_CM_PER_NS = 29.9792458
BARREL_COS = 0.8
#: network sizes of --quick (each applies where the family has the key)
TINY_MODEL = {"hidden": [16, 16], "transforms": 2, "knots": 64, "shower_hidden": [16, 16], "shower_transforms": 2,
              "truth_hidden": [16, 16], "truth_transforms": 2, "truth_knots": 64}
#: the two models: key -> (family, template file in training/configs, default run name); the response first: the
#: event model takes it as its detector (``response_model``) and trains only its truth
MODELS = {"response": ("detector_response", "full-response.yaml", "bench-response"),
          "event": ("event_surrogate", "full-event-surrogate.yaml", "bench-event-surrogate")}
SEEDS = {"train": 1000, "reference": 2000, "gun_train": 3000, "gun_truth": 4000, "gun_reference": 5000,
         "period_reference": 6000, "model_sample": 7000, "speed": 8000}


@dataclass(frozen=True)
class Sizes:
    """Event counts of one benchmark run (the full figures or --quick)."""

    train_events: int = 200_000  # per channel
    gun_events: int = 400_000  # all species together (as training/configs/full-*.yaml say)
    eval_events: int = 100_000  # model events per channel or species; references hold twice as many
    conditioning_events: int = 100_000  # per channel and period, reference and surrogate each
    speed_events: int = 1_000_000  # event surrogate, in memory and through vbes sample
    reference_speed_events: int = 200_000  # the reference chain, in memory and to a file
    speed_particles: int = 1_000_000  # response surrogate
    chunk_events: int = 100_000
    epochs: int | None = None  # None: the template's
    tiny: bool = False
    classifier_folds: int | None = None  # None: the suite's defaults
    classifier_max_iter: int | None = None
    species: tuple[str, ...] | None = None  # None: all 14
    reports: bool = True


FULL = Sizes()
#: --quick: tiny samples and networks, a lighter classifier (a bad model's trees otherwise run every iteration),
#: four species (a photon, a lepton, a charged and a neutral hadron), no HTML reports
QUICK = Sizes(train_events=2000, gun_events=2000, eval_events=3000, conditioning_events=3000, speed_events=20_000,
              reference_speed_events=10_000, speed_particles=100_000, chunk_events=10_000, epochs=1, tiny=True,
              classifier_folds=2, classifier_max_iter=50, species=("gamma", "e-", "pi+", "n"), reports=False)


@dataclass
class Row:
    """One line of a result table: what, the figure, its target, and whether it is met (and by how much not)."""

    quantity: str
    measured: str
    target: str
    verdict: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Bench:
    """Everything the stages share: options, sizes, settings, folders, the models and every result."""

    args: argparse.Namespace
    sizes: Sizes
    settings: Any
    work: Path
    runs: tuple[int, int]
    channels: tuple[str, ...]
    species: tuple[str, ...]
    stages: tuple[str, ...]
    models: dict[str, str] = field(default_factory=dict)  # "event"/"response" -> URI
    results: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _store: Any = None
    _gun_training: Any = None

    @property
    def data(self) -> Path:
        return Path(self.settings.data_dir)

    @property
    def store(self) -> Any:
        """The calibration store of the work folder (defaults imported once)."""
        if self._store is None:
            from vbes.calibration import CalibrationStore

            self._store = CalibrationStore.from_settings(self.settings)
            self._store.init_defaults()
        return self._store

    def say(self, message: str) -> None:
        print(f"[{time.perf_counter() - T0:7.1f} s] {message}", flush=True)


T0 = time.perf_counter()


# --- small helpers ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def timed(bench: Bench, key: str) -> Iterator[None]:
    """Record the wall time of a block under ``bench.timings[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        bench.timings[key] = bench.timings.get(key, 0.0) + time.perf_counter() - t0


def slug(species: str) -> str:
    """A file-name form of a gun species (``pi+`` -> ``pi_plus``)."""
    return species.replace("+", "_plus").replace("-", "_minus")


def rate(n: float, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def fmt_rate(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}/s"


def at_most(value: float, bound: float, digits: int = 4) -> str:
    """``pass`` or ``MISS by <excess>`` for a figure that must not exceed ``bound``."""
    if not np.isfinite(value):
        return "MISS (not measured)"
    return "pass" if value <= bound else f"MISS by {value - bound:.{digits}g}"


def at_least(value: float, bound: float) -> str:
    """``pass (x ratio)`` or ``MISS by <shortfall> (x ratio)`` for a figure that must reach ``bound``."""
    if not np.isfinite(value):
        return "MISS (not measured)"
    ratio = value / bound
    return f"pass ({ratio:.2f}x)" if value >= bound else f"MISS by {bound - value:,.0f} ({ratio:.2f}x)"


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def print_table(title: str, rows: Sequence[Row], header: tuple[str, str, str, str] = ("quantity", "measured",
                                                                                        "target", "verdict")) -> None:
    """One section's table; each row's notes (which gates fail, by how much) indented below it."""
    print(f"\n{title}")
    if not rows:
        print("  (nothing measured)")
        return
    cells = [header] + [(r.quantity, r.measured, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    line = "  " + "  ".join(f"{h:{w}s}" for h, w in zip(header[:3], widths)) + f"  {header[3]}"
    print(line)
    print("  " + "-" * (len(line) - 2))
    for r in rows:
        print("  " + "  ".join(f"{c:{w}s}" for c, w in zip((r.quantity, r.measured, r.target), widths))
              + f"  {r.verdict}")
        for note in r.notes:
            print(f"      {note}")


# --- settings and data --------------------------------------------------------------------------------------------
def setup(args: argparse.Namespace) -> Bench:
    """Point VBES_HOME at the work folder, read the settings, resolve the options."""
    from vbes.datasets.gun import GUN_SPECIES
    from vbes.datasets.simulation import parse_runs
    from vbes.settings import load_settings

    sizes = QUICK if args.quick else FULL
    overrides = {k: getattr(args, k) for k in ("train_events", "gun_events", "eval_events", "conditioning_events",
                                                "speed_events", "reference_speed_events", "speed_particles", "epochs")
                 if getattr(args, k) is not None}
    if args.reports is not None:
        overrides["reports"] = args.reports
    sizes = replace(sizes, **overrides)
    work = Path(args.work or REPO / "benchmarks" / "out" / ("models-quick" if args.quick else "models")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["VBES_HOME"] = str(work)
    settings = load_settings()
    settings.ensure_home()
    species = tuple(args.species.split(",")) if args.species else sizes.species or tuple(GUN_SPECIES)
    unknown = sorted(set(species) - set(GUN_SPECIES))
    if unknown:
        raise SystemExit(f"bench_models: unknown species {', '.join(unknown)}; known: {', '.join(GUN_SPECIES)}")
    channels = tuple(args.channels.split(",")) if args.channels else CHANNELS
    if set(channels) - set(CHANNELS):
        raise SystemExit(f"bench_models: --channels takes {', '.join(CHANNELS)}")
    return Bench(args, sizes, settings, work, parse_runs(args.runs), channels, species, tuple(args.stage_list))


def ensure_sample(bench: Bench, name: str, channel: str, n_events: int, runs: tuple[int, int], seed: int,
                  species: Sequence[str] | None = None) -> Path:
    """The reference-chain sample ``name`` in the data folder, generated unless a file of the same request exists.

    Args:
        name: file name.
        channel: J/psi channel, or ``gun`` with ``species``.
        n_events, runs, seed: the request (a cached file must match all three).
        species: the gun's species (p flat in ``GUN_P_RANGE``).
    """
    from vbes.datasets import file_info, generate_sample
    from vbes.datasets.gun import GunSpec

    path = bench.data / name
    if path.is_file():
        info = file_info(path)
        prov = info["provenance"]
        if (info["n_events"] == n_events and prov.get("seed") == seed and list(prov.get("runs", [])) == list(runs)
                and prov.get("channel") == channel):
            return path
    gun = GunSpec(tuple(species), p_range=GUN_P_RANGE) if species else None
    t0 = time.perf_counter()
    generate_sample(channel, n_events, path, runs=runs, seed=seed, store=bench.store, workers=2, gun=gun)
    seconds = time.perf_counter() - t0
    bench.results.setdefault("data", {})[name] = {"events": n_events, "seconds": seconds,
                                                   "bytes": path.stat().st_size}
    bench.say(f"generated {name}: {n_events} {channel} events in {seconds:.1f} s")
    return path


def training_file(bench: Bench, channel: str) -> Path:
    return ensure_sample(bench, f"train-{channel}.h5", channel, bench.sizes.train_events, bench.runs,
                         SEEDS["train"] + CHANNELS.index(channel))


def gun_training_file(bench: Bench) -> Path:
    from vbes.datasets.gun import GUN_SPECIES

    return ensure_sample(bench, "train-gun.h5", "gun", bench.sizes.gun_events, bench.runs, SEEDS["gun_train"],
                         tuple(GUN_SPECIES))


def reference_file(bench: Bench, channel: str) -> Path:
    """The held-out reference of a channel: twice the model events (the suite's size matching)."""
    return ensure_sample(bench, f"reference-{channel}.h5", channel, 2 * bench.sizes.eval_events, bench.runs,
                         SEEDS["reference"] + CHANNELS.index(channel))


def gun_files(bench: Bench, species: str) -> tuple[Path, Path]:
    """Held-out gun truth (responded to by the surrogate) and the reference chain's reconstruction of the same gun
    (another seed, twice the events) for one species."""
    from vbes.datasets.gun import GUN_SPECIES

    k = list(GUN_SPECIES).index(species)
    truth = ensure_sample(bench, f"gun-{slug(species)}-truth.h5", "gun", bench.sizes.eval_events, bench.runs,
                          SEEDS["gun_truth"] + k, (species,))
    reference = ensure_sample(bench, f"gun-{slug(species)}-reference.h5", "gun", 2 * bench.sizes.eval_events,
                              bench.runs, SEEDS["gun_reference"] + k, (species,))
    return truth, reference


def period_reference(bench: Bench, channel: str, period: tuple[int, int]) -> Path:
    k = CONDITIONING_PERIODS.index(period)
    return ensure_sample(bench, f"period{k}-{channel}.h5", channel, bench.sizes.conditioning_events, period,
                         SEEDS["period_reference"] + 10 * k + CHANNELS.index(channel))


def stage_data(bench: Bench) -> None:
    """Every sample the other stages read (cached ones are kept)."""
    for channel in bench.channels:
        training_file(bench, channel)
        reference_file(bench, channel)
    gun_training_file(bench)
    for species in bench.species:
        gun_files(bench, species)
    for period in CONDITIONING_PERIODS:
        for channel in ("rhopi", "ee"):
            period_reference(bench, channel, period)


# --- training -----------------------------------------------------------------------------------------------------
def training_config(bench: Bench, key: str, files: Sequence[Path]) -> tuple[Path, str]:
    """Write the training configuration of model ``key`` (``event``/``response``); returns it and its template.

    The template is ``training/configs/<full-...>.yaml`` (or ``--event-config`` / ``--response-config``); without
    one, the family's default configuration with a cosine schedule. The data files are always the benchmark's;
    ``--quick`` makes the networks tiny, ``--epochs`` sets the epochs.
    """
    import yaml
    from vbes.models import get_family

    family, template_name, run_name = MODELS[key]
    template = Path(getattr(bench.args, f"{key}_config") or REPO / "training" / "configs" / template_name)
    if template.is_file():
        config: dict[str, Any] = yaml.safe_load(template.read_text())
        source = str(template)
    else:
        defaults = {k: v for k, v in get_family(family).default_config().items() if v is not None and k != "seed"}
        config = {"version": 1, "name": run_name, "family": family, "seed": 20260101,
                  "data": {"validation_fraction": 0.1}, "model": defaults,
                  "optimizer": {"lr": 0.001, "schedule": "cosine"},
                  "trainer": {"max_epochs": 40, "batch_size": 4096, "early_stopping_patience": 5, "threads": 2},
                  "registry": {"model_name": f"vbes-{run_name}"}}
        source = f"the {family} family's default configuration (no {template} yet)"
    config["data"] = {**config.get("data", {}), "files": [p.name for p in files]}
    config["data"].pop("archive", None)
    trainer = config.setdefault("trainer", {})
    trainer.setdefault("threads", 2)
    if bench.sizes.tiny:
        model = config.setdefault("model", {})
        model.update({k: v for k, v in TINY_MODEL.items() if k in get_family(family).default_config()})
        trainer["batch_size"] = min(int(trainer.get("batch_size", 1024)), 512)
    if bench.sizes.epochs is not None:
        trainer["max_epochs"] = bench.sizes.epochs
    path = bench.work / "configs" / f"{config['name']}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"# written by benchmarks/bench_models.py from {source}\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path, source


def _set_response_model(config: Path, uri: str) -> None:
    """Point the event model's configuration at the response model of this run (its detector, not retrained)."""
    import yaml

    text = config.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    data = yaml.safe_load(text)
    data.setdefault("model", {})["response_model"] = uri
    config.write_text(header + yaml.safe_dump(data, sort_keys=False))


def stage_train(bench: Bench) -> None:
    """Train and register both models on the benchmark's data; remember the versions in ``bench_state.json``."""
    from vbes.training import train

    channel_files = [training_file(bench, c) for c in bench.channels]
    # the event model takes the response model as its detector: it learns the channels' truth alone
    files = {"event": channel_files, "response": [gun_training_file(bench)] + channel_files}
    for key in MODELS:
        if key in bench.models and bench.models[key]:
            bench.say(f"{key} model given ({bench.models[key]}): not trained")
            continue
        config, source = training_config(bench, key, files[key])
        if key == "event" and bench.models.get("response"):
            _set_response_model(config, bench.models["response"])
        bench.say(f"training the {key} model: {config} (from {source})")
        t0 = time.perf_counter()
        result = train(config, bench.settings, echo=lambda line: bench.say(f"  {line}"))
        seconds = time.perf_counter() - t0
        uri = f"models:/{result.model_name}/{result.version}"
        bench.models[key] = uri
        bench.results.setdefault("training", {})[key] = {"uri": uri, "train_call_s": seconds, "config": str(config),
                                                          "template": source, "epochs": result.epochs,
                                                          "best_val_loss": result.best_val_loss}
        bench.say(f"registered {uri} in {seconds:.1f} s")
    state = bench.work / "bench_state.json"
    state.write_text(json.dumps({"models": bench.models, "training": bench.results.get("training", {})}, indent=2))


def resolve_models(bench: Bench) -> None:
    """The models of this run: --model / --response-model, else those the last training here registered."""
    state_path = bench.work / "bench_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    for key, option in (("event", bench.args.model), ("response", bench.args.response_model)):
        if option:
            bench.models[key] = option
        elif "train" not in bench.stages and state.get("models", {}).get(key):
            bench.models[key] = state["models"][key]
            bench.results.setdefault("training", {}).setdefault(key, state.get("training", {}).get(key, {}))
        if not bench.models.get(key) and "train" not in bench.stages and {"evaluate", "speed"} & set(bench.stages):
            option = "--model" if key == "event" else "--response-model"
            print(f"bench_models: no {key} model (give {option} or run the train stage): its figures are skipped")


def run_timeline(bench: Bench, uri: str) -> dict[str, Any]:
    """The model's MLflow run: start and end, and the validation loss and wall clock of every epoch."""
    from mlflow.tracking import MlflowClient
    from vbes.training.sampling import resolve_model

    ref = resolve_model(uri, bench.settings)
    if not ref.run_id:
        return {"note": "a saved folder: no MLflow run to read"}
    client = MlflowClient(tracking_uri=bench.settings.mlflow_tracking_uri)
    run = client.get_run(ref.run_id)
    start, end = run.info.start_time, run.info.end_time
    history = sorted(client.get_metric_history(ref.run_id, "val_loss"), key=lambda m: m.step)
    epochs = [{"epoch": int(m.step), "val_loss": float(m.value), "seconds": (m.timestamp - start) / 1000}
              for m in history]
    out: dict[str, Any] = {"run_id": ref.run_id, "run_s": (end - start) / 1000 if end else None, "epochs": epochs}
    if epochs:
        best = min(epochs, key=lambda e: e["val_loss"])
        out.update({"best_epoch": best["epoch"], "to_best_s": best["seconds"], "n_epochs": len(epochs)})
    return out


# --- evaluation ---------------------------------------------------------------------------------------------------
def model_key(bench: Bench, uri: str) -> str:
    """A folder name for the samples of one model version (name and version, or the saved folder's digest)."""
    from vbes.training.sampling import resolve_model

    ref = resolve_model(uri, bench.settings)
    if ref.version:
        return f"{ref.name}-v{ref.version}"
    return "folder-" + hashlib.sha256((ref.folder / "model.json").read_bytes()).hexdigest()[:12]


def cached(path: Path, n_events: int) -> bool:
    from vbes.datasets import file_info

    return path.is_file() and file_info(path)["n_events"] == n_events


def evaluation_config(bench: Bench) -> Any:
    """The suite's defaults except ``--threads`` (2) and ``--null-trials`` self-check splits (0: the self-check
    decides nothing, every test has its own p-value); --quick also lightens the classifier."""
    from vbes.evaluation import EvaluationConfig

    config = EvaluationConfig(threads=bench.args.threads, null_trials=bench.args.null_trials)
    if bench.sizes.classifier_folds is not None:
        config.classifier_folds = bench.sizes.classifier_folds
    if bench.sizes.classifier_max_iter is not None:
        config.classifier_max_iter = bench.sizes.classifier_max_iter
    return config


def describe_config(bench: Bench) -> str:
    """The suite's settings in a few words, for the table titles."""
    from vbes.evaluation import EvaluationConfig

    config, defaults = evaluation_config(bench), EvaluationConfig()
    changed = [f"{k}={v}" for k, v in asdict(config).items() if v != getattr(defaults, k)]
    return "suite defaults" + (f" except {', '.join(changed)}" if changed else "")


def gate_specs(channel: str, gate_file: str | None) -> dict[str, dict[str, Any]]:
    """The surrogate family's gates that apply to ``channel``, by label."""
    from vbes.evaluation.gates import load_gates

    family = load_gates(gate_file)["families"]["surrogate"]
    gates = list(family.get("default", [])) + list(family.get(channel, []))
    return {g.get("name") or g["metric"]: g for g in gates}


def gate_excess(row: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    """How far a failed gate row is from its bound."""
    if row["value"] is None:
        return f"{row['metric']}: no metric matches"
    value = float(row["value"])
    judged = abs(value) if spec.get("abs") else value
    if "max" in spec and judged > spec["max"]:
        return f"{row['metric']} = {value:.4g}, bound {row['bound']}, by {judged - spec['max']:.3g}"
    if "min" in spec and judged < spec["min"]:
        return f"{row['metric']} = {value:.4g}, bound {row['bound']}, by {spec['min'] - judged:.3g}"
    return f"{row['metric']} = {value:.4g}, bound {row['bound']}"


def summarise(result: Any, channel: str, gate_file: str | None) -> dict[str, Any]:
    """The figures of one evaluation the tables show: AUC, peaks and gates, worst W1, memorisation."""
    from vbes.evaluation import check_gates

    flat = result.flat()
    outcome = check_gates(flat, gate_file, "surrogate", channel)
    specs = gate_specs(channel, gate_file)
    failures = [{"gate": g["gate"], "metric": g["metric"], "value": g["value"], "bound": g["bound"],
                 "excess": gate_excess(g, specs.get(g["gate"], {}))} for g in outcome.gates if not g["passed"]]
    # the reference's peaks: one the sample's fit could not find is a miss, not a missing row
    reference_observables = result.samples[1].observables if result.samples else []
    peak_rows = []
    for peak in [o.name for o in reference_observables if o.kind == "peak"]:
        own = [g for g in outcome.gates if g["metric"].startswith(f"observables/{peak}/")]
        fitted = f"observables/{peak}/position.shift" in flat
        peak_rows.append({"name": peak, "shift": flat.get(f"observables/{peak}/position.shift"),
                          "shift_over_width": flat.get(f"observables/{peak}/position.shift_over_reference_width"),
                          "width_ratio": flat.get(f"observables/{peak}/width.ratio"),
                          "gates": len(own), "passed": fitted and all(g["passed"] for g in own),
                          "skipped": result.skipped.get(f"observables/{peak}"),
                          "failures": [f["excess"] for f in failures
                                       if f["metric"].startswith(f"observables/{peak}/")]})
    w1 = [(name, f["w1_over_resolution"]) for name, f in result.features.items()
          if f.get("w1_over_resolution") is not None]
    worst = max(w1, key=lambda kv: kv[1]) if w1 else (None, None)
    auc = next((t for t in result.tests if t.name == "classifier/auc"), None)
    memo = result.memorisation
    return {
        "channel": channel,
        "auc": auc.value if auc else None,
        "auc_error": auc.details.get("auc_error") if auc else None,
        "auc_excess": (auc.value - TARGET_AUC) if auc else None,
        "auc_skipped": result.skipped.get("classifier/auc"),
        "classifier_top_features": list(auc.details.get("feature_importance", {}))[:3] if auc else [],
        "peaks": peak_rows,
        "gates_passed": outcome.passed,
        "gates": len(outcome.gates),
        "gate_failures": failures,
        "worst_w1": {"feature": worst[0], "w1_over_resolution": worst[1]},
        "memorisation": None if memo is None else {"passed": memo.passed, "pvalue": memo.pvalue,
                                                   "distance_ratio": memo.distance_ratio,
                                                   "distance_ratio_error": memo.distance_ratio_error,
                                                   "near_copy_fraction": memo.near_copy_fraction},
        "memorisation_skipped": result.skipped.get("memorisation"),
        "n_used": result.n_used,
        "n_hypotheses": result.n_hypotheses,
        "n_rejected": len(result.findings),
        "seconds": result.timings.get("total"),
    }


def run_evaluation(bench: Bench, label: str, sample: Path, reference: Path, training: Any,
                   channel: str) -> dict[str, Any]:
    """Evaluate, write the report (unless --no-reports), summarise."""
    from vbes.evaluation import evaluate, write_report

    t0 = time.perf_counter()
    result = evaluate(sample, reference, config=evaluation_config(bench), training=training)
    summary = summarise(result, channel, bench.args.gates)
    if bench.sizes.reports:
        folder = bench.work / "reports" / label
        write_report(result, folder)
        summary["report"] = str(folder / "report.html")
    summary["wall_s"] = time.perf_counter() - t0
    bench.say(f"  {label}: AUC {summary['auc'] if summary['auc'] is not None else float('nan'):.4f}, "
              f"gates {'passed' if summary['gates_passed'] else 'FAILED'} ({summary['wall_s']:.0f} s)")
    return summary


def evaluate_event_model(bench: Bench) -> None:
    """Per channel: 1e5 (``--eval-events``) surrogate events against the 2e5-event held-out reference."""
    from vbes.training.sampling import sample_events

    uri = bench.models["event"]
    folder = bench.work / "samples" / model_key(bench, uri)
    out: dict[str, Any] = {}
    for channel in bench.channels:
        reference, training = reference_file(bench, channel), training_file(bench, channel)
        path = folder / f"{channel}.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = bench.sizes.eval_events
        if not cached(path, n):
            t0 = time.perf_counter()
            sample_events(uri, n, path, bench.settings, channel=channel, runs=bench.runs,
                          seed=SEEDS["model_sample"] + CHANNELS.index(channel), chunk_events=bench.sizes.chunk_events)
            bench.say(f"  drew {n} {channel} events from {uri} in {time.perf_counter() - t0:.1f} s")
        out[channel] = run_evaluation(bench, f"event-{channel}", path, reference, training, channel)
    bench.results["quality_event"] = {"model": uri, "model_events": bench.sizes.eval_events,
                                      "reference_events": 2 * bench.sizes.eval_events, "channels": out,
                                      "settings": describe_config(bench)}


def gun_training_of(bench: Bench, species: str) -> Any:
    """The gun training events of one species (the memorisation test's training set for its response)."""
    from vbes.datasets import read_events
    from vbes.datasets.gun import GUN_SPECIES
    from vbes.training.data import select_events

    if bench._gun_training is None:
        bench._gun_training = read_events(gun_training_file(bench))
    tables = bench._gun_training
    n_truth = np.asarray(tables["events"]["n_truth"], dtype=np.int64)
    first = np.cumsum(n_truth) - n_truth  # the gun's particle is each event's first truth row
    keep = np.asarray(tables["truth"]["pdg"])[first] == GUN_SPECIES[species]
    return select_events(tables, keep)


def evaluate_response_model(bench: Bench) -> None:
    """Per species: the surrogate's response to held-out gun truth against the reference chain's reconstruction."""
    from vbes.training.sampling import respond_file

    uri = bench.models["response"]
    folder = bench.work / "samples" / model_key(bench, uri)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    for k, species in enumerate(bench.species):
        truth, reference = gun_files(bench, species)
        path = folder / f"gun-{slug(species)}.h5"
        if not cached(path, bench.sizes.eval_events):
            respond_file(uri, truth, path, bench.settings, seed=SEEDS["model_sample"] + 100 + k)
        out[species] = run_evaluation(bench, f"response-{slug(species)}", path, reference,
                                      gun_training_of(bench, species), "gun")
    bench.results["quality_response"] = {"model": uri, "model_particles": bench.sizes.eval_events,
                                         "reference_particles": 2 * bench.sizes.eval_events, "species": out,
                                         "settings": describe_config(bench)}


def conditioning_quantities(tables: Mapping[str, Any], channel: str) -> dict[str, tuple[float, float]]:
    """Calibration-sensitive figures ``{name: (value, error)}`` of one sample: the pi0 -> gamma gamma peak (rho pi;
    EMC energy scale), the TOF time residual and chi widths of barrel pions (rho pi; TOF resolution), the electron
    E/p peak (e+e-; EMC energy scale)."""
    from vbes.errors import InsufficientSample
    from vbes.evaluation.observables import channel_observables, fit_peak

    out: dict[str, tuple[float, float]] = {}
    observables = {o.name: o for o in channel_observables(tables, channel)}

    def fit(name: str, values: np.ndarray, what: str) -> None:
        with contextlib.suppress(InsufficientSample):
            f = fit_peak(values)
            out[name] = (f.position, f.position_error) if what == "position" else (f.width, f.width_error)

    if channel == "rhopi":
        fit("m_gg peak position [GeV]", observables["m_gg"].values, "position")
        tracks = tables["tracks"]
        p = np.asarray(tracks["p"], np.float64)
        barrel = np.abs(np.asarray(tracks["cos_theta"])) < BARREL_COS
        expected = np.asarray(tracks["tof_path"], np.float64) * np.sqrt(p**2 + PION_MASS**2) / (p * C_CM_PER_NS)
        residual = np.where(barrel, np.asarray(tracks["tof"], np.float64) - expected, np.nan)
        fit("TOF residual width, barrel pi [ns]", residual, "width")
        fit("TOF chi_pi width, barrel", np.where(barrel, np.asarray(tracks["chi_tof"])[:, 2], np.nan), "width")
    if channel == "ee":
        fit("electron E/p peak position", observables["e_over_p_peak"].values, "position")
    return out


def evaluate_conditioning(bench: Bench) -> None:
    """The surrogate's difference between two calibration periods against the reference chain's, in sigma."""
    from vbes.datasets import read_events
    from vbes.training.sampling import sample_events

    uri = bench.models["event"]
    folder = bench.work / "samples" / model_key(bench, uri)
    n = bench.sizes.conditioning_events
    values: dict[str, dict[str, list[tuple[float, float]]]] = {"reference": {}, "surrogate": {}}
    for k, period in enumerate(CONDITIONING_PERIODS):
        for channel in ("rhopi", "ee"):
            reference = period_reference(bench, channel, period)
            sample = folder / f"period{k}-{channel}.h5"
            if not cached(sample, n):
                sample_events(uri, n, sample, bench.settings, channel=channel, runs=period,
                              seed=SEEDS["model_sample"] + 200 + 10 * k + CHANNELS.index(channel),
                              chunk_events=bench.sizes.chunk_events)
            for kind, path in (("reference", reference), ("surrogate", sample)):
                for name, v in conditioning_quantities(read_events(path), channel).items():
                    values[kind].setdefault(name, []).append(v)
    rows: list[dict[str, Any]] = []
    for name, ref in values["reference"].items():
        sur = values["surrogate"].get(name, [])
        if len(ref) != 2 or len(sur) != 2:
            rows.append({"quantity": name, "note": "a fit failed (too few events in the peak)"})
            continue
        d_ref, e_ref = ref[1][0] - ref[0][0], float(np.hypot(ref[0][1], ref[1][1]))
        d_sur, e_sur = sur[1][0] - sur[0][0], float(np.hypot(sur[0][1], sur[1][1]))
        z = (d_sur - d_ref) / float(np.hypot(e_ref, e_sur))
        rows.append({"quantity": name, "reference": [r[0] for r in ref], "surrogate": [s[0] for s in sur],
                     "reference_difference": d_ref, "reference_error": e_ref, "surrogate_difference": d_sur,
                     "surrogate_error": e_sur, "z": z, "passed": abs(z) <= MAX_CONDITIONING_Z})
    bench.results["conditioning"] = {"model": uri, "periods": [list(p) for p in CONDITIONING_PERIODS],
                                     "events": n, "quantities": rows}


def stage_evaluate(bench: Bench) -> None:
    if bench.models.get("event"):
        bench.say("evaluating the event-level surrogate per channel")
        with timed(bench, "evaluate: event surrogate"):
            evaluate_event_model(bench)
        bench.say("conditioning: two calibration periods")
        with timed(bench, "evaluate: conditioning"):
            evaluate_conditioning(bench)
    if bench.models.get("response"):
        bench.say("evaluating the response surrogate per species")
        with timed(bench, "evaluate: response surrogate"):
            evaluate_response_model(bench)


# --- speed and size -----------------------------------------------------------------------------------------------
def timed_calls(n_total: int, chunk: int, call: Callable[[int, int], Any]) -> float:
    """Seconds for ``call(chunk_index, n)`` over ``n_total`` items in chunks."""
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, n_total, chunk)):
        call(i, min(chunk, n_total - start))
    return time.perf_counter() - t0


def conditions_of(bench: Bench, runs: tuple[int, int]) -> Any:
    from vbes.datasets.simulation import SIM_TAG
    from vbes.models.conditions import Conditions

    return Conditions.from_store(bench.store, SIM_TAG, np.arange(runs[0], runs[1] + 1))


def speed_event(bench: Bench) -> dict[str, Any]:
    """rho pi events/s: the surrogate in memory (2 torch threads) and through ``vbes sample -j 2`` to a file; the
    reference chain in memory and to a file (2 workers)."""
    import torch
    from vbes.datasets import generate_sample
    from vbes.datasets.simulation import simulate
    from vbes.models import load
    from vbes.models.event_surrogate import EventSurrogate
    from vbes.training.sampling import resolve_model

    uri = bench.models["event"]
    model = load(resolve_model(uri, bench.settings).folder)
    if not isinstance(model, EventSurrogate):
        raise SystemExit(f"bench_models: {uri} is a {model.family} model, not event_surrogate")
    torch.set_num_threads(2)
    cond = conditions_of(bench, bench.runs)
    request = {"channel": "rhopi", "runs": bench.runs, "conditions": cond}
    n, chunk = bench.sizes.speed_events, bench.sizes.chunk_events
    model.sample(min(chunk, 2000), request, seed=1)  # warm-up outside the timing
    memory_s = timed_calls(n, chunk, lambda i, m: model.sample(m, request, seed=SEEDS["speed"] + i))
    out_file = bench.work / "speed" / "surrogate-rhopi.h5"
    out_file.parent.mkdir(exist_ok=True)
    out_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "vbes", "sample", uri, "-n", str(n), "-o", str(out_file), "--channel", "rhopi",
               f"--runs={bench.runs[0]}:{bench.runs[1]}", "-j", "2", "--chunk-events", str(chunk),
               "--seed", str(SEEDS["speed"])]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "VBES_HOME": str(bench.work)}, stdout=subprocess.DEVNULL)
    cli_s = time.perf_counter() - t0
    file_bytes = out_file.stat().st_size
    out_file.unlink()

    n_ref = bench.sizes.reference_speed_events
    simulate("rhopi", 2000, runs=bench.runs, seed=1, store=bench.store, workers=1)  # warm Pythia and imports
    t0 = time.perf_counter()
    simulate("rhopi", n_ref, runs=bench.runs, seed=SEEDS["speed"], store=bench.store, workers=2)
    ref_memory_s = time.perf_counter() - t0
    ref_file = bench.work / "speed" / "reference-rhopi.h5"
    t0 = time.perf_counter()
    generate_sample("rhopi", n_ref, ref_file, runs=bench.runs, seed=SEEDS["speed"], store=bench.store, workers=2)
    ref_file_s = time.perf_counter() - t0
    ref_file.unlink()
    return {"events": n, "chunk_events": chunk, "memory_per_s": rate(n, memory_s), "cli_per_s": rate(n, cli_s),
            "cli_wall_s": cli_s, "cli_file_bytes": file_bytes, "reference_events": n_ref,
            "reference_memory_per_s": rate(n_ref, ref_memory_s), "reference_file_per_s": rate(n_ref, ref_file_s)}


def speed_response(bench: Bench) -> dict[str, Any]:
    """Particles/s of the response surrogate (2 torch threads) on gun particles of every species and on the truth
    of rho pi events, beside the reference chain's material + detector simulation of the same gun (2 workers)."""
    import torch
    from vbes.datasets import read_events
    from vbes.datasets.gun import GUN_SPECIES, GunSpec, ParticleGun
    from vbes.datasets.simulation import simulate
    from vbes.models import load
    from vbes.models.response import ResponseSurrogate, truth_particles
    from vbes.training.sampling import resolve_model

    model = load(resolve_model(bench.models["response"], bench.settings).folder)
    if not isinstance(model, ResponseSurrogate):
        raise SystemExit(f"bench_models: {bench.models['response']} is a {model.family} model, not detector_response")
    torch.set_num_threads(2)
    spec = GunSpec(tuple(GUN_SPECIES), p_range=GUN_P_RANGE)
    n, chunk = bench.sizes.speed_particles, bench.sizes.chunk_events
    truth = ParticleGun(spec, seed=SEEDS["speed"]).generate(n)
    runs = np.linspace(bench.runs[0], bench.runs[1], n).astype(np.int64)
    p4 = np.column_stack([truth[c] for c in ("e", "px", "py", "pz")])
    vertex = np.column_stack([truth[c] for c in ("vx", "vy", "vz")])
    cond = conditions_of(bench, bench.runs)

    def respond(i: int, m: int) -> Any:
        rows = slice(i * chunk, i * chunk + m)
        return model.sample(m, {"pdg": truth["pdg"][rows], "p4": p4[rows], "vertex": vertex[rows],
                                "run": runs[rows], "conditions": cond}, seed=i)

    respond(0, min(chunk, 2000))  # warm-up
    gun_s = timed_calls(n, chunk, respond)

    tables = read_events(reference_file(bench, "rhopi"))
    n_particles = len(truth_particles(tables, cond))
    t0 = time.perf_counter()
    model.respond_tables(tables, cond, seed=SEEDS["speed"])
    rhopi_s = time.perf_counter() - t0

    n_ref = min(n, 10 * bench.sizes.reference_speed_events)
    t0 = time.perf_counter()
    simulate("gun", n_ref, runs=bench.runs, seed=SEEDS["speed"], store=bench.store, workers=2, gun=spec)
    ref_s = time.perf_counter() - t0
    return {"particles": n, "gun_per_s": rate(n, gun_s), "rhopi_events": len(tables["events"]["run"]),
            "rhopi_particles": n_particles, "rhopi_per_s": rate(n_particles, rhopi_s),
            "reference_particles": n_ref, "reference_per_s": rate(n_ref, ref_s)}


def model_sizes(bench: Bench, uri: str) -> dict[str, Any]:
    """Bytes of the saved model and of its preservation package, and of the training files it stands for."""
    from vbes.models import load
    from vbes.training.sampling import resolve_model

    ref = resolve_model(uri, bench.settings)
    files = load(ref.folder).card.training_domain.get("files", [])
    training = sum(Path(f["path"]).stat().st_size for f in files if Path(f["path"]).is_file())
    package = None
    name = ref.tags.get("vbes.preservation.name")
    if name:
        from vbes.archive import Archive

        with Archive.from_settings(bench.settings) as archive:
            package = int(archive.info(name).size)
    return {"model_bytes": dir_bytes(ref.folder), "package_bytes": package, "package": name,
            "training_bytes": training, "training_files": len(files)}


def stage_speed(bench: Bench) -> None:
    out: dict[str, Any] = {}
    if bench.models.get("event"):
        bench.say("speed: event-level surrogate and the reference chain (rho pi)")
        with timed(bench, "speed: event surrogate"):
            out["event"] = speed_event(bench)
    if bench.models.get("response"):
        bench.say("speed: response surrogate and the reference detector simulation")
        with timed(bench, "speed: response surrogate"):
            out["response"] = speed_response(bench)
    bench.results["speed"] = out
    bench.results["sizes"] = {key: model_sizes(bench, uri) for key, uri in bench.models.items() if uri}


# --- tables -------------------------------------------------------------------------------------------------------
def quality_rows(label: str, s: Mapping[str, Any]) -> list[Row]:
    """The rows of one channel or species."""
    rows = []
    if s["auc"] is None:
        rows.append(Row(f"{label}: classifier AUC", "not run", f"<= {TARGET_AUC}", "MISS",
                        [str(s.get("auc_skipped"))]))
    else:
        notes = [f"gives it away: {', '.join(s['classifier_top_features'])}"] if s["auc"] > TARGET_AUC else []
        rows.append(Row(f"{label}: classifier AUC", f"{s['auc']:.4f} +- {s['auc_error']:.4f}", f"<= {TARGET_AUC}",
                        at_most(s["auc"], TARGET_AUC, 3), notes))
    for peak in s["peaks"]:
        shift, ratio = peak["shift_over_width"], peak["width_ratio"]
        if shift is None or ratio is None:
            rows.append(Row(f"{label}: peak {peak['name']}", "not fitted in the sample", "fitted, within gates",
                            "MISS", [str(peak["skipped"])] + peak["failures"]))
            continue
        rows.append(Row(f"{label}: peak {peak['name']}", f"shift {peak['shift']:+.3g} ({shift:+.3f} widths), width "
                        f"x{ratio:.3f}", f"{peak['gates']} gates", "pass" if peak["passed"] else "MISS",
                        peak["failures"]))
    other = [f for f in s["gate_failures"] if not f["metric"].startswith("observables/")]
    rows.append(Row(f"{label}: surrogate gates", f"{s['gates'] - len(s['gate_failures'])} of {s['gates']} pass",
                    "all", "pass" if s["gates_passed"] else f"MISS ({len(s['gate_failures'])} fail)",
                    [f["excess"] for f in other[:6]] + ([f"... {len(other) - 6} more"] if len(other) > 6 else [])))
    worst = s["worst_w1"]
    if worst["feature"] is not None:
        rows.append(Row(f"{label}: worst W1 / resolution", f"{worst['w1_over_resolution']:.4g} ({worst['feature']})",
                        f"<= {TARGET_W1_OVER_RESOLUTION}", at_most(worst["w1_over_resolution"],
                                                                   TARGET_W1_OVER_RESOLUTION, 3)))
    memo = s["memorisation"]
    if memo is None:
        rows.append(Row(f"{label}: memorisation", "not run", "passes", "MISS (not run)",
                        [str(s.get("memorisation_skipped"))]))
    else:
        rows.append(Row(f"{label}: memorisation", f"p = {memo['pvalue']:.3g}, distance ratio "
                        f"{memo['distance_ratio']:.3f} +- {memo['distance_ratio_error']:.3f}", "p >= alpha",
                        "pass" if memo["passed"] else "MISS"))
    return rows


def print_tables(bench: Bench) -> None:
    """One table per section."""
    r = bench.results
    if "quality_event" in r:
        q = r["quality_event"]
        rows = [row for channel, s in q["channels"].items() for row in quality_rows(channel, s)]
        print_table(f"QUALITY: event-level surrogate {q['model']} ({q['model_events']:,} model vs "
                    f"{q['reference_events']:,} held-out reference events per channel; {q['settings']})", rows)
    if "conditioning" in r:
        c = r["conditioning"]
        rows = []
        for qty in c["quantities"]:
            if "z" not in qty:
                rows.append(Row(qty["quantity"], "not fitted", f"|z| <= {MAX_CONDITIONING_Z:g}", "MISS",
                                [qty["note"]]))
                continue
            measured = (f"ref {qty['reference_difference']:+.4g} +- {qty['reference_error']:.2g}, surrogate "
                        f"{qty['surrogate_difference']:+.4g} +- {qty['surrogate_error']:.2g} (z = {qty['z']:+.2f})")
            rows.append(Row(qty["quantity"], measured, f"|z| <= {MAX_CONDITIONING_Z:g}",
                            at_most(abs(qty["z"]), MAX_CONDITIONING_Z, 3),
                            [f"period values: reference {', '.join(f'{v:.5g}' for v in qty['reference'])}; "
                             f"surrogate {', '.join(f'{v:.5g}' for v in qty['surrogate'])}"]))
        (a0, a1), (b0, b1) = c["periods"]
        print_table(f"CONDITIONING: difference runs {b0}..{b1} minus runs {a0}..{a1} ({c['events']:,} events per "
                    "period and channel)", rows)
    if "quality_response" in r:
        q = r["quality_response"]
        rows = [row for species, s in q["species"].items() for row in quality_rows(species, s)]
        print_table(f"QUALITY: response surrogate {q['model']} (response to {q['model_particles']:,} held-out gun "
                    f"particles vs {q['reference_particles']:,} of the reference chain, per species; "
                    f"{q['settings']})", rows)
    if "speed" in r:
        s = r["speed"]
        rows = []
        if "event" in s:
            e = s["event"]
            rows += [
                Row("event surrogate, rho pi, in memory, 2 threads", fmt_rate(e["memory_per_s"], "events"),
                    f">= {TARGET_EVENTS_PER_S:,.0f}", at_least(e["memory_per_s"], TARGET_EVENTS_PER_S),
                    [f"{e['memory_per_s'] / e['reference_memory_per_s']:.1f}x the reference chain in memory, "
                     f"{e['memory_per_s'] / FLASHSIM_EVENTS_PER_S:.1f}x FlashSim's GPU figure"]),
                Row("event surrogate, vbes sample -j 2 to a file", fmt_rate(e["cli_per_s"], "events"),
                    f">= {TARGET_EVENTS_PER_S:,.0f}", at_least(e["cli_per_s"], TARGET_EVENTS_PER_S),
                    [f"{e['events']:,} events in {e['cli_wall_s']:.1f} s (process start and Dask included), "
                     f"{e['cli_per_s'] / e['reference_file_per_s']:.1f}x the reference chain to a file"]),
                Row("reference chain (Pythia 8 + detector), in memory, 2 workers",
                    fmt_rate(e["reference_memory_per_s"], "events"), "baseline", "-"),
                Row("reference chain to a file (generate_sample), 2 workers",
                    fmt_rate(e["reference_file_per_s"], "events"), "baseline", "-"),
                Row("FlashSim (CMS), one GPU, published", fmt_rate(FLASHSIM_EVENTS_PER_S, "events"), "comparison",
                    "-"),
            ]
        if "response" in s:
            p = s["response"]
            rows += [
                Row("response surrogate, gun particles (14 species), 2 threads", fmt_rate(p["gun_per_s"], "particles"),
                    f">= {TARGET_PARTICLES_PER_S:,.0f}", at_least(p["gun_per_s"], TARGET_PARTICLES_PER_S),
                    [f"{p['gun_per_s'] / p['reference_per_s']:.1f}x the reference material + detector simulation"]),
                Row("response surrogate, truth of rho pi events", fmt_rate(p["rhopi_per_s"], "particles"),
                    f">= {TARGET_PARTICLES_PER_S:,.0f}", at_least(p["rhopi_per_s"], TARGET_PARTICLES_PER_S),
                    [f"{p['rhopi_particles']:,} particles of {p['rhopi_events']:,} events"]),
                Row("reference gun + material + detector, 2 workers", fmt_rate(p["reference_per_s"], "particles"),
                    "baseline", "-"),
            ]
        print_table("SPEED (measured in this run)", rows)
    if "sizes" in r:
        rows = []
        for key, z in r["sizes"].items():
            ratio = z["training_bytes"] / z["model_bytes"] if z["model_bytes"] else float("nan")
            rows.append(Row(f"{key} model: saved folder", f"{z['model_bytes'] / 1e6:,.2f} MB",
                            f"training files {z['training_bytes'] / 1e6:,.1f} MB",
                            f"{ratio:,.0f}x smaller", [f"{z['training_files']} training files"]))
            if z["package_bytes"]:
                rows.append(Row(f"{key} model: preservation package", f"{z['package_bytes'] / 1e6:,.2f} MB",
                                f"training files {z['training_bytes'] / 1e6:,.1f} MB",
                                f"{z['training_bytes'] / z['package_bytes']:,.0f}x smaller", [z["package"]]))
        print_table("SIZE on disk, against the training files each model stands for", rows)
    if "training" in r:
        rows = []
        for key, t in r["training"].items():
            timeline = t.get("timeline", {})
            call = t.get("train_call_s")
            total = call if call is not None else timeline.get("run_s")
            notes = []
            if timeline.get("epochs"):
                notes.append(f"{timeline['n_epochs']} epochs, best val_loss at epoch {timeline['best_epoch']} after "
                             f"{timeline['to_best_s']:.0f} s of the MLflow run ({timeline['run_s'] or 0:.0f} s)")
            if key == "event":
                notes.append(f"one model serves every channel ({', '.join(bench.channels)}): each channel's time to "
                             "its gate is this total")
            what = "train() wall" if call is not None else "MLflow run wall"
            measured, verdict = "not known", "-"
            if total is not None:
                measured, verdict = f"{total / 60:.1f} min", at_most(total / 60, TARGET_TRAIN_S / 60, 3)
            rows.append(Row(f"{key} model {t.get('uri', '')}: {what}", measured, "<= 15 min on 2 cores", verdict,
                            notes))
        print_table("TRAINING wall time (to the registered version the gates judge)", rows)
    print("\nSTAGES")
    for key, seconds in bench.timings.items():
        print(f"  {key:34s} {seconds:8.1f} s")


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (2000 training events per channel, 1 epoch, tiny networks, 3000-event "
                             "evaluations with a 2-fold, 50-iteration classifier, species gamma, e-, pi+, n, no "
                             "reports): a few minutes, for developing this script")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    parser.add_argument("--work", help="work folder, used as VBES_HOME (default: benchmarks/out/models, with "
                                       "--quick benchmarks/out/models-quick)")
    parser.add_argument("--model", help="event-level surrogate to judge instead of training one (models:/NAME/VERSION, "
                                        "models:/NAME@ALIAS or a saved folder)")
    parser.add_argument("--response-model", help="detector-response surrogate to judge instead of training one")
    parser.add_argument("--event-config", help="template of the event model's training configuration (default: "
                                               "training/configs/full-event-surrogate.yaml, else the family's "
                                               "defaults)")
    parser.add_argument("--response-config", help="template of the response model's training configuration "
                                                  "(default: training/configs/full-response.yaml, else the "
                                                  "family's defaults)")
    parser.add_argument("--runs", default="-30000:-1",
                        help="run range of the training and reference samples; write --runs=FIRST:LAST "
                             "(default: -30000:-1, three MC periods)")
    parser.add_argument("--channels", help=f"subset of {','.join(CHANNELS)} (default: all five)")
    parser.add_argument("--species", help="comma-separated gun species of the response evaluation (default: all 14;"
                                          " --quick gamma,e-,pi+,n)")
    parser.add_argument("--gates", help="gate file, family surrogate (default: the one shipped with vbes)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the evaluation suite (default: 2)")
    parser.add_argument("--null-trials", type=int, default=0,
                        help="self-check splits of each evaluation; they decide nothing (0, the default, or at "
                             "least 19 at alpha 0.05)")
    for name, text in (("train-events", "training events per channel"), ("gun-events", "gun training events"),
                       ("eval-events", "model events per evaluation (references hold twice as many)"),
                       ("conditioning-events", "events per period and channel"),
                       ("speed-events", "surrogate events timed"),
                       ("reference-speed-events", "reference-chain events timed"),
                       ("speed-particles", "response particles timed")):
        key = name.replace("-", "_")
        parser.add_argument(f"--{name}", type=int, default=None,
                            help=f"{text} (default: {getattr(FULL, key):,}; --quick {getattr(QUICK, key):,})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the template's; --quick 1)")
    parser.add_argument("--reports", action=argparse.BooleanOptionalAction, default=None,
                        help="write each evaluation's HTML report under WORK/reports (default: yes; --quick no)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(args.stage_list) - set(STAGES)
    if unknown:
        parser.error(f"--stages: unknown {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # the tables are the output: MLflow's and Lightning's own chatter stays out of it (as in vbes demo)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for logger in ("lightning", "lightning.pytorch"):
        logging.getLogger(logger).setLevel(logging.WARNING)
    bench = setup(args)
    print(f"bench_models: work folder {bench.work}, stages {','.join(args.stage_list)}, "
          f"{'QUICK' if args.quick else 'full'} sizes {asdict(bench.sizes)}, cores {len(os.sched_getaffinity(0))}")
    resolve_models(bench)
    for stage, function in (("data", stage_data), ("train", stage_train), ("evaluate", stage_evaluate),
                            ("speed", stage_speed)):
        if stage in args.stage_list:
            bench.say(f"stage {stage}")
            with timed(bench, stage):
                function(bench)
    if any(s in args.stage_list for s in ("evaluate", "speed", "train")):
        for key, uri in bench.models.items():
            if uri:
                entry = bench.results.setdefault("training", {}).setdefault(key, {"uri": uri})
                entry["timeline"] = run_timeline(bench, uri)
    print_tables(bench)
    if args.json:
        payload = {"sizes": asdict(bench.sizes), "runs": list(bench.runs), "models": bench.models,
                   "stages_s": bench.timings, **bench.results}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
