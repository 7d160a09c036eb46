"""Using registered models: ``vbes sample`` (surrogate MC) and ``vbes respond`` (detector response of truth files).

A model is named by its registry URI (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) or by the folder of a
saved model. :func:`resolve_model` fetches the registered version's saved model (verified tensor by tensor on load)
into ``$VBES_HOME/models/NAME/VERSION`` and reads its lineage from the registry.

Every output file carries its provenance: the model URI, name, version and MLflow run, the SHA-256 of every
training file, the calibration tag and the SHA-256 of every payload of the requested runs, the seed, the software
version and the share of inputs outside the model's training domain. The same request and seed give identical
arrays, whatever the number of files or Dask workers: chunk ``i`` of a request is drawn with a seed made of the
request's seed and ``i`` (:class:`vbes.datasets.production`).

Sampling modes, by the model's family:

* ``event_surrogate``: whole events of a channel, truth and reconstruction, from the model alone;
* ``detector_response``: the reference chain's generator (Pythia 8, J/ψ at rest boosted by the crossing angle) and
  the surrogate's response in place of the material and detector simulation -- truth + reconstruction.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vbes.errors import InvalidInput, NotFound

__all__ = [
    "DrawnSample",
    "GeneratorResponseChunks",
    "RegisteredModel",
    "SurrogateChunks",
    "respond_file",
    "resolve_model",
    "model_sample_for",
    "run_assignment",
    "sample_events",
]

_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class RegisteredModel:
    """A model to use: where its saved folder is and what the registry says about it."""

    uri: str
    folder: Path
    name: str = ""
    version: str = ""
    run_id: str = ""
    family: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    def training_files(self) -> list[str]:
        """SHA-256 of every training file (the registry's lineage tags)."""
        count = int(self.tags.get("vbes.data.count", "0") or 0)
        return [self.tags.get(f"vbes.data.{i}.sha256", "") for i in range(count)]

    def provenance(self) -> dict[str, Any]:
        return {
            "model_uri": self.uri,
            "model_name": self.name,
            "model_version": self.version,
            "mlflow_run": self.run_id,
            "model_family": self.family,
            "training_data_sha256": self.training_files(),
            "model_code_version": self.tags.get("vbes.code_version", ""),
        }


def resolve_model(uri: str, settings: Any) -> RegisteredModel:
    """Fetch a registered version's saved model (or take a local saved-model folder).

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a folder written by ``ModelFamily.save``.
        settings: :class:`vbes.settings.Settings` (tracking URI, home folder for the cache).

    Raises:
        NotFound: no such registered model, alias, version or folder.
    """
    if not uri.startswith("models:/"):
        folder = Path(uri).expanduser()
        if not (folder / "model.json").is_file():
            raise NotFound(f"{uri}: neither a model URI (models:/NAME@ALIAS) nor a saved model folder")
        family = json.loads((folder / "model.json").read_text()).get("family", "")
        return RegisteredModel(str(folder), folder, family=family)
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from vbes.training.registry import parse_model_uri

    name, alias, version = parse_model_uri(uri)
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
    except MlflowException:
        raise NotFound(f"{uri}: no such registered model version in {settings.mlflow_tracking_uri}") from None
    tags = dict(mv.tags or {})
    target = Path(settings.home) / "models" / name / str(mv.version)
    folder = target / "artifacts" / "model"
    if not (folder / "model.json").is_file():
        staging = target.with_name(f".{target.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        with _artifact_progress():
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(staging))
        shutil.rmtree(target, ignore_errors=True)
        staging.replace(target)
    return RegisteredModel(uri, folder, name, str(mv.version), str(mv.run_id or ""), tags.get("vbes.family", ""),
                           tags)


@contextlib.contextmanager
def _artifact_progress() -> Iterator[None]:
    """MLflow's download progress bar under the project's rule (:func:`vbes.cli.progress`): on a terminal, or
    when ``VBES_PROGRESS=1`` asks for it; never into a log or a pipe."""
    variable = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(variable)
    if before is None and not (sys.stderr.isatty() or os.environ.get("VBES_PROGRESS") == "1"):
        os.environ[variable] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)


def _model(folder: str) -> Any:
    """The saved model of ``folder``, loaded once per process (Dask workers keep it between chunks)."""
    if folder not in _CACHE:
        import torch

        from vbes.models import load

        torch.set_num_threads(1)  # one thread per worker process: the processes are the parallelism
        _CACHE[folder] = load(folder)
    return _CACHE[folder]


def run_assignment(start: int, stop: int, n_total: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Run and event numbers of events ``start..stop`` of a request of ``n_total`` events spread evenly over runs
    ``first..last`` -- the slice of :func:`vbes.datasets.simulation.assign_runs` without computing the rest.

    Example:
        >>> [a.tolist() for a in run_assignment(2, 5, 5, -3, -2)]
        [[-3, -2, -2], [2, 0, 1]]
    """
    n_runs = last - first + 1
    index = np.arange(start, stop, dtype=np.int64)
    offset = (index * n_runs) // max(n_total, 1)
    run_start = -((-offset * n_total) // n_runs)  # first event of each run: ceil(offset * n / n_runs)
    return first + offset, index - run_start


def _chunk_seed(seed: int, chunk_index: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(chunk_index), 0x5A3]).generate_state(1)[0])


@dataclass(frozen=True)
class _Chunks:
    """What chunk ``i`` of a request needs: the saved model, the channel, the run assignment, the conditions."""

    folder: str
    channel: str
    n_total: int
    runs: tuple[int, int]
    chunk_events: int
    seed: int
    conditions: Mapping[str, Any]

    def _slice(self, chunk_index: int, n: int) -> tuple[np.ndarray, np.ndarray, Any]:
        """Run and event numbers of the chunk's events, and the conditions."""
        from vbes.models.conditions import Conditions

        start = chunk_index * self.chunk_events
        run, event = run_assignment(start, start + n, self.n_total, *self.runs)
        return run, event, Conditions.from_periods(self.conditions["periods"], self.conditions["ranges"])


@dataclass(frozen=True)
class SurrogateChunks(_Chunks):
    """``make_chunk`` of an event surrogate: chunk ``i`` of the request, drawn with a seed of (seed, i)."""

    def __call__(self, chunk_index: int, n: int) -> dict[str, Any]:
        run, event, conditions = self._slice(chunk_index, n)
        return dict(_model(self.folder).sample(n, {"channel": self.channel, "run_numbers": run, "event_numbers": event,
                                                   "conditions": conditions}, seed=_chunk_seed(self.seed, chunk_index)))


@dataclass(frozen=True)
class GeneratorResponseChunks(_Chunks):
    """``make_chunk`` of the reference chain's generator followed by the response surrogate."""

    def __call__(self, chunk_index: int, n: int) -> dict[str, Any]:
        from vbes.datasets.generator import JpsiGenerator
        from vbes.datasets.schema import channel_code

        run, event, conditions = self._slice(chunk_index, n)
        key = f"gen:{self.channel}:{self.seed}"
        if key not in _CACHE:
            _CACHE[key] = JpsiGenerator(self.channel, seed=self.seed)
        beam = conditions.periods[int(conditions.period_of(run[:1])[0])].constants["Beam"]
        truth = _CACHE[key].generate(n, chunk=chunk_index, beam=beam)
        events = {"run": run.astype(np.int32), "event": event, "channel": np.full(n, channel_code(self.channel),
                                                                                      np.int16),
                  "n_truth": truth["n_truth"], "weight": np.ones(n, np.float32)}
        truth_table = {k: truth[k] for k in ("pdg", "mother", "px", "py", "pz", "e", "vx", "vy", "vz", "final")}
        # BOSS bits of generator particles (1 from the generator, 8 a leaf): the response takes the leaves
        truth_table["status_flags"] = np.where(truth["final"].astype(bool), 9, 1).astype(np.int32)
        model = _model(self.folder)
        return dict(model.respond_tables({"events": events, "truth": truth_table}, conditions,
                                         seed=_chunk_seed(self.seed, chunk_index)))


def _conditions(settings: Any, tag: str, runs: tuple[int, int]) -> Any:
    from vbes.calibration import CalibrationStore
    from vbes.models.conditions import Conditions

    with CalibrationStore.from_settings(settings) as store:
        try:
            store.tag_info(tag)
        except NotFound:
            raise NotFound(f"calibration tag {tag!r} is not in the store {settings.calib_url}") from None
        return Conditions.from_store(store, tag, np.arange(runs[0], runs[1] + 1))


def _check_runs(runs: tuple[int, int]) -> None:
    from vbes.datasets.simulation import parse_runs

    parse_runs(f"{runs[0]}:{runs[1]}")


def sample_events(
    uri: str,
    n_events: int,
    output: str | Path,
    settings: Any,
    channel: str | None = None,
    runs: tuple[int, int] | None = None,
    tag: str | None = None,
    seed: int = 0,
    fmt: str | None = None,
    files: int = 1,
    chunk_events: int = 100_000,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Draw ``n_events`` events from a model into one or several files; returns a summary with the provenance.

    Args:
        uri: the model (see :func:`resolve_model`).
        n_events: events to draw.
        output: file, pattern with ``{index}`` or folder (:func:`vbes.datasets.production.produce`).
        settings: the settings (tracking URI, calibration store).
        channel: the physics channel (default: the model's first).
        runs: ``(first, last)`` run range (default: the model's training runs).
        tag: calibration global tag (default: the simulation tag).
        seed: the request's seed.
        fmt: ``hdf5``, ``parquet`` or ``root`` (default: from the suffix).
        files: number of output files (in parallel on Dask when more than one).
        chunk_events: events per chunk.
        workers: local Dask worker processes.
        scheduler: address of a running Dask scheduler.
        progress: called per finished chunk and file.

    Raises:
        InvalidInput: a channel the model does not draw, a bad run range or count.
        NotFound: unknown model or calibration tag.
    """
    from vbes.datasets.production import produce
    from vbes.datasets.simulation import SIM_TAG

    import vbes

    if seed < 0:
        raise InvalidInput(f"--seed {seed}: a seed is a non-negative integer")
    model_ref = resolve_model(uri, settings)
    model = _model(str(model_ref.folder))
    family = model.family
    domain = model.card.training_domain
    if family == "event_surrogate":
        known = model.channels()
        channel = channel or known[0]
        if channel not in known:
            raise InvalidInput(f"--channel {channel}: {uri} draws {', '.join(known)}")
    elif family == "detector_response":
        from vbes.datasets.generator import GENERATOR_CHANNELS

        channel = channel or "rhopi"
        if channel not in GENERATOR_CHANNELS:
            raise InvalidInput(f"--channel {channel}: the generator knows {', '.join(GENERATOR_CHANNELS)}")
    else:
        raise InvalidInput(f"{uri} is a {family} model: vbes sample draws from event_surrogate and "
                           "detector_response models")
    if runs is None:
        trained = domain.get("runs") or [model.conditions.ranges[0][0], model.conditions.ranges[-1][1]]
        runs = (int(trained[0]), int(trained[1]))
    _check_runs(runs)
    tag = tag or SIM_TAG
    conditions = _conditions(settings, tag, runs)
    chunk_cls = SurrogateChunks if family == "event_surrogate" else GeneratorResponseChunks
    make_chunk = chunk_cls(str(model_ref.folder), channel, int(n_events), (int(runs[0]), int(runs[1])),
                           int(chunk_events), int(seed), conditions.as_dict())
    outside = _outside_domain(model, conditions)
    provenance = {
        "generator": ("vbes event surrogate" if family == "event_surrogate"
                      else "Pythia 8 (pythia8mc) + vbes detector-response surrogate"),
        **model_ref.provenance(),
        "channel": channel,
        "runs": [int(runs[0]), int(runs[1])],
        "seed": int(seed),
        "calibration_tag": tag,
        "calibration_payloads": {t: (v[0] if len(v) == 1 else v) for t, v in conditions.hashes().items()},
        "conditions_outside_training_domain": outside,
        "software": f"vbes {vbes.__version__}",
    }
    paths = produce(make_chunk, int(n_events), output, fmt=fmt, chunk_events=int(chunk_events), files=int(files),
                    scheduler=scheduler, workers=workers, provenance=provenance, progress=progress)
    return {"paths": [str(p) for p in paths], "events": int(n_events), "provenance": provenance}


def _inputs_outside(model: Any, truth: str | Path, conditions: Any, chunk_events: int) -> float:
    """Fraction of the truth file's particles outside the response's training domain (species, momentum range,
    calibration constants), read in chunks of the events and truth tables only."""
    from vbes.datasets import iter_events
    from vbes.models.response import truth_particles

    outside = total = 0.0
    for chunk in iter_events(truth, chunk_events, tables=["events", "truth"], verify="none"):
        particles = truth_particles(chunk, conditions)
        total += len(particles)
        outside += model.response.domain_fraction(particles, conditions) * len(particles)
    return outside / total if total else 0.0


def _outside_domain(model: Any, conditions: Any) -> list[str]:
    """The calibration constants of the request outside the range the model was trained on (sorted).

    Every numeric constant of the training periods counts, not only those the networks are conditioned on: a model
    trained on one run period has no conditioning keys at all, yet a request for another period, whose constants
    differ, is outside its training domain all the same.
    """
    trained = getattr(model, "conditions", None)
    if trained is None or not trained.periods:
        return []
    flats = [p.flat() for p in trained.periods]
    keys = set(flats[0]).intersection(*flats[1:])
    outside: set[str] = set()
    for period in conditions.periods:
        requested = period.flat()
        for key in keys & set(requested):
            lo, hi = min(f[key] for f in flats), max(f[key] for f in flats)
            tol = 1e-9 * max(abs(requested[key]), 1.0)
            if requested[key] < lo - tol or requested[key] > hi + tol:
                outside.add(key)
    return sorted(outside)


def respond_file(uri: str, truth: str | Path, output: str | Path, settings: Any, tag: str | None = None,
                 seed: int = 0, repeats: int = 1, fmt: str | None = None, chunk_events: int = 100_000,
                 progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Reconstructed objects for the truth particles of an event file, written with the truth beside them.

    Args:
        uri: a ``detector_response`` model.
        truth: an event file with a truth table (its final particles are responded to).
        output: the output file (format from its suffix unless ``fmt``).
        settings: the settings.
        tag: calibration tag (default: the truth file's, else the simulation tag).
        seed: the draw's seed.
        repeats: responses per truth event (oversampling; see :mod:`vbes.models.response`).
        fmt: output format.
        chunk_events: truth events read and responded to at a time (bounded memory).
        progress: called with the number of events done after each chunk.

    Raises:
        InvalidInput: a truth file without truth particles, ``repeats`` < 1.
    """
    from vbes.archive import checksum_file
    from vbes.datasets import file_info, iter_events, read_events
    from vbes.datasets.simulation import SIM_TAG
    from vbes.datasets.writers import open_writer

    import vbes

    if repeats < 1:
        raise InvalidInput(f"--repeats {repeats}: at least one response per event")
    if seed < 0:
        raise InvalidInput(f"--seed {seed}: a seed is a non-negative integer")
    model_ref = resolve_model(uri, settings)
    model = _model(str(model_ref.folder))
    if not hasattr(model, "respond_tables"):
        raise InvalidInput(f"{uri} is a {model.family} model: vbes respond needs a detector_response model")
    info = file_info(truth)
    if int(info["rows"].get("truth", 0)) == 0:
        raise InvalidInput(f"{truth}: no truth particles to respond to")
    tag = tag or str(info["provenance"].get("calibration_tag") or SIM_TAG)
    runs = np.asarray(read_events(truth, tables=["events"], fields={"events": ["run"]}, verify="none")["events"]["run"])
    conditions = _conditions(settings, tag, (int(runs.min()), int(runs.max())))
    conditions = conditions.subset(sorted({int(i) for i in np.unique(conditions.period_of(runs))}))
    outside = _inputs_outside(model, truth, conditions, chunk_events)
    provenance = {
        "generator": "vbes detector-response surrogate",
        **model_ref.provenance(),
        "truth_file": str(truth),
        "truth_sha256": checksum_file(Path(truth)).sha256,
        "truth_provenance": dict(info["provenance"]),
        "seed": int(seed),
        "repeats": int(repeats),
        "calibration_tag": tag,
        "calibration_payloads": {t: (v[0] if len(v) == 1 else v) for t, v in conditions.hashes().items()},
        "conditions_outside_training_domain": _outside_domain(model, conditions),
        "inputs_outside_training_domain": outside,
        "software": f"vbes {vbes.__version__}",
    }
    done = 0
    with open_writer(output, fmt, provenance, mc=True) as writer:
        for index, chunk in enumerate(iter_events(truth, chunk_events)):
            writer.append(model.respond_tables(chunk, conditions, seed=_chunk_seed(seed, index), repeats=repeats))
            done += len(chunk["events"]["run"])
            if progress is not None:
                progress(done)
    return {"path": str(output), "events": done * repeats, "provenance": provenance}




@dataclass(frozen=True)
class DrawnSample:
    """A model's sample drawn to match a reference file (:func:`model_sample_for`)."""

    path: Path
    run_id: str
    training: Path | None
    name: str = ""
    version: str = ""


def model_sample_for(uri: str, reference: str | Path, folder: str | Path, settings: Any, n_events: int | None = None,
                     seed: int = 0, progress: Callable[[str], None] | None = None) -> DrawnSample:
    """Draw a model's sample like ``reference`` (its channel, runs and calibration tag; half its events, the suite's
    size matching) into ``folder/model-sample.h5``; find the model's training file of that channel.

    Args:
        uri: the model.
        reference: the reference event file (held out from training).
        folder: where to write the sample (the report's folder).
        settings: the settings.
        n_events: events to draw (default: half the reference's).
        seed: the draw's seed.
        progress: called with one-line messages.
    """
    from vbes.datasets import file_info, read_events
    from vbes.evaluation.features import channel_of

    info = file_info(reference)
    prov = info["provenance"]
    events = read_events(reference, tables=["events"], fields={"events": ["run", "channel"]}, verify="none")
    channel = str(prov.get("channel") or channel_of(events))
    runs = prov.get("runs") or [int(np.min(events["events"]["run"])), int(np.max(events["events"]["run"]))]
    n = n_events or max(int(info["n_events"]) // 2, 1)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(f"drawing {n} {channel} events from {uri} (runs {runs[0]}..{runs[1]})")
    result = sample_events(uri, n, out / "model-sample.h5", settings, channel=channel,
                           runs=(int(runs[0]), int(runs[1])), tag=prov.get("calibration_tag"), seed=seed)
    model_ref = resolve_model(uri, settings)
    return DrawnSample(Path(result["paths"][0]), model_ref.run_id, _training_file(model_ref, channel, settings),
                       model_ref.name, model_ref.version)


def _training_file(model_ref: RegisteredModel, channel: str, settings: Any) -> Path | None:
    """The model's training file of ``channel``, where it can be had with its recorded SHA-256 (local or archived)."""
    from vbes.archive import checksum_file
    from vbes.datasets import file_info

    count = int(model_ref.tags.get("vbes.data.count", "0") or 0)
    for i in range(count):
        source = model_ref.tags.get(f"vbes.data.{i}.source", "")
        sha = model_ref.tags.get(f"vbes.data.{i}.sha256", "")
        path: Path | None = None
        if source.startswith("archive:"):
            from vbes.archive import Archive

            name = source.split(":", 1)[1]
            target = Path(settings.home) / "training" / "cache" / sha / Path(name.split(":", 1)[1]).name
            if not target.is_file():
                try:
                    with Archive.from_settings(settings) as archive:
                        archive.get(name, target, overwrite=True)
                except NotFound:
                    continue
            path = target
        else:
            candidate = Path(source).expanduser()
            candidate = candidate if candidate.is_absolute() else Path(settings.data_dir) / candidate
            path = candidate if candidate.is_file() else None
        if path is None or file_info(path)["provenance"].get("channel") != channel:
            continue
        if checksum_file(path).sha256 == sha:
            return path
    return None
