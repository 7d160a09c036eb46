"""``vbes train``: one configuration file -> a Lightning run, tracked in MLflow, registered as a pyfunc model.

A run lives in ``$VBES_HOME/training/<name>/``: ``state.json`` (the MLflow run, the configuration's SHA-256,
``running`` or ``finished``), ``checkpoints/`` (``last.ckpt`` every epoch, ``best.ckpt`` by validation loss)
and ``model/`` (the saved model, :mod:`vbes.models.base` format). Running the same configuration again while
its run is ``running`` -- it was killed -- resumes from ``last.ckpt`` into the same MLflow run; a finished run
is trained afresh as a new MLflow run and a new registered version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vbes.errors import TrainingError
from vbes.training.config import config_sha256, load_config

__all__ = ["CANDIDATE_ALIAS", "TrainResult", "code_version", "lineage_tags", "train"]

#: the alias every newly registered version gets; ``production`` moves only through the evaluation's promote
CANDIDATE_ALIAS = "candidate"
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    run_id: str
    rank: int
    model_name: str
    version: str
    model_uri: str
    run_dir: Path
    resumed_from_epoch: int | None
    epochs: int
    best_val_loss: float

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def code_version() -> str:
    """``vbes <version>`` and, in a git checkout, the commit (``-dirty`` with uncommitted changes)."""
    from importlib.metadata import version

    text = f"vbes {version('vbes')}"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text} git {commit}{'-dirty' if dirty else ''}"


def lineage_tags(lineage: Mapping[str, Any], config_sha: str, family: str) -> dict[str, str]:
    """The lineage of a run as MLflow tags (set on the run and on its registered version).

    Args:
        lineage: :meth:`TrainingData.lineage` plus ``code_version``.
        config_sha: the resolved configuration's SHA-256.
        family: the model family.
    """
    tags = {
        "vbes.family": family,
        "vbes.config_sha256": config_sha,
        "vbes.code_version": str(lineage["code_version"]),
        "vbes.data.count": str(len(lineage["files"])),
        "vbes.calibration_tags": ",".join(lineage["calibration_tags"]),
        "vbes.calibration_payloads": json.dumps(lineage["calibration_payloads"], sort_keys=True),
        "vbes.channels": ",".join(lineage["channels"]),
    }
    for i, f in enumerate(lineage["files"]):
        tags[f"vbes.data.{i}.sha256"] = f["sha256"]
        tags[f"vbes.data.{i}.source"] = f["source"]
    for key, model in (lineage.get("models") or {}).items():
        tags[f"vbes.upstream.{key}"] = f"{model['uri']} version {model['version']} run {model['run_id']}"
    return tags


def _resolve_models(model_config: Mapping[str, Any], settings: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The family's configuration with every registered model it names (a ``models:/`` URI) fetched to a local
    saved-model folder, and those models' identities for the lineage."""
    from vbes.training.sampling import resolve_model

    resolved = dict(model_config)
    upstream: dict[str, Any] = {}
    for key, value in model_config.items():
        if isinstance(value, str) and value.startswith("models:/"):
            ref = resolve_model(value, settings)
            resolved[key] = str(ref.folder)
            upstream[key] = {"uri": value, "name": ref.name, "version": ref.version, "run_id": ref.run_id}
    return resolved, upstream


def _flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | type(None)) else str(value)
    return out


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    # Lightning's advice for large jobs, which a CPU run on in-memory tensors deliberately ignores
    with warnings.catch_warnings():
        for message in (
            r".*does not have many workers.*",
            r".*number of training batches.*is smaller than the logging interval.*",
            r".*GPU available but not used.*",
            r".*You are using `torch.load` with `weights_only=False`.*",
            r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
            # resuming: the folder holds the run's own checkpoints (a fresh run starts with it removed)
            r"Checkpoint directory .* exists and is not empty\.",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield


class _DictDataset(Dataset[dict[str, Any]]):
    """Rows of a dict of equal-length tensors; a batch is fetched with one indexing per tensor (``__getitems__``),
    not row by row."""

    def __init__(self, tensors: Mapping[str, Any]) -> None:
        self.tensors = dict(tensors)
        self.n = len(next(iter(self.tensors.values())))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        index = torch.as_tensor(rows, dtype=torch.int64)
        return {k: v[index] for k, v in self.tensors.items()}


def _whole_batch(batch: Any) -> Any:
    """The collate function of :class:`_DictDataset` batches: already tensors."""
    return batch


class _EpochBatches(Sampler[list[int]]):
    """Each epoch: the rows in a seeded random order (epoch by epoch) cut into ``n_batches`` nearly equal batches.

    A fixed number of batches lets several streams of different sizes (a family of several tables) advance
    together, each passed once per epoch. Under DDP every process takes an equal share of the batches.
    """

    def __init__(self, n_rows: int, n_batches: int, shuffle: bool, seed: int) -> None:
        self.n_rows, self.n_batches, self.shuffle, self.seed = n_rows, max(n_batches, 1), shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _share(self) -> tuple[int, int]:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        rank, world = self._share()
        return max(self.n_batches // world, 1)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        rows = rng.permutation(self.n_rows) if self.shuffle else np.arange(self.n_rows)
        batches = np.array_split(rows, self.n_batches)
        rank, world = self._share()
        if world > 1:
            batches = batches[rank::world][: len(self)]
        for b in batches:
            yield b.tolist()


def _stream_rows(tensors: Mapping[str, Any]) -> int:
    """Rows of the smallest stream (a single stream's rows)."""
    first = next(iter(tensors.values()))
    if isinstance(first, Mapping):
        return min(_stream_rows(v) for v in tensors.values())
    return len(first)


def _loaders(tensors: Mapping[str, Any], batch_size: int, shuffle: bool, seed: int) -> Any:
    """A loader of one stream of tensors, or of several streams advancing together (one batch of each per step)."""
    from lightning.pytorch.utilities import CombinedLoader

    streams = dict(tensors) if isinstance(next(iter(tensors.values())), Mapping) else {"": tensors}
    sizes = {k: len(next(iter(v.values()))) for k, v in streams.items()}
    if min(sizes.values()) == 0:
        raise TrainingError(f"a training stream is empty: {sizes}")
    n_batches = -(-max(sizes.values()) // batch_size)
    loaders = {k: DataLoader(_DictDataset(v), batch_sampler=_EpochBatches(sizes[k], n_batches, shuffle, seed + i),
                             collate_fn=_whole_batch)
               for i, (k, v) in enumerate(streams.items())}
    if "" in loaders:
        return loaders[""]
    return CombinedLoader(loaders, mode="min_size")


class _EpochMetrics(L.Callback):
    """Every epoch's aggregated metrics to the MLflow run, at step = epoch (from the rank-0 process only)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.first_epoch: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.first_epoch = int(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.client is None or not trainer.is_global_zero:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        epoch = int(trainer.current_epoch)
        metrics = [Metric(k, float(v), now, epoch) for k, v in trainer.callback_metrics.items()]
        metrics.append(Metric("epoch", float(epoch), now, epoch))
        self.client.log_batch(self.run_id, metrics=metrics)


def _global_rank(trainer_cfg: Mapping[str, Any]) -> int:
    """This process's rank in a DDP run (0 outside one): Lightning's launcher and torchrun set these."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return int(os.environ.get("NODE_RANK", "0")) * int(trainer_cfg["devices"]) + local


def _read_state(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except ValueError:
        return None
    return state


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(state), indent=2, sort_keys=True))
    tmp.replace(path)


def _experiment_id(client: Any, name: str, artifacts: str, tracking_uri: str) -> str:
    """The experiment ``name``, created if new with its artifacts under ``artifacts``.

    With a tracking server (``http(s)://``) and ``artifacts`` a local folder -- the default, the client's home --
    the server chooses (``mlflow-artifacts:/``, which it serves from its ``--artifacts-destination``): a path on
    this machine would be one that the server and every other client cannot read.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    local = "://" not in artifacts
    if local and tracking_uri.startswith(("http://", "https://")):
        return str(client.create_experiment(name))
    location = Path(artifacts).absolute().as_uri() if local else artifacts
    return str(client.create_experiment(name, artifact_location=f"{location.rstrip('/')}/{name}"))


def train(
    config_path: str | Path,
    settings: Any = None,
    *,
    fresh: bool = False,
    echo: Callable[[str], None] = print,
) -> TrainResult:
    """Train, track and register the run that ``config_path`` describes (resuming it if it was killed).

    Args:
        config_path: a training configuration (``training/configs/*.yaml``).
        settings: :class:`vbes.settings.Settings`; default the resolved settings.
        fresh: discard an unfinished run of this name instead of resuming it.
        echo: where progress lines go.

    Raises:
        TrainingConfigError: the configuration is invalid.
        TrainingError: an unfinished run of this name has another configuration (and not ``fresh``).
    """
    from vbes.models import get_family

    config = load_config(config_path)
    get_family(config["family"])  # an unknown family fails before any data is read
    threads = torch.get_num_threads()
    try:
        return _train(config, settings, fresh, echo)
    finally:
        # the configuration's thread count holds for the run, not for the rest of the calling process
        torch.set_num_threads(threads)


def _train(config: dict[str, Any], settings: Any, fresh: bool, echo: Callable[[str], None]) -> TrainResult:
    """:func:`train` after the configuration was read."""
    import mlflow
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from vbes.datasets.torchdata import split_of
    from vbes.models import build
    from vbes.settings import load_settings
    from vbes.training.data import load_training_data, select_events

    trainer_cfg = config["trainer"]
    # under DDP every process runs this function; only rank 0 keeps the state, tracks and registers
    rank = _global_rank(trainer_cfg)
    lead = rank == 0
    if not lead:
        echo = _silent
    settings = settings or load_settings()
    settings.ensure_home()
    run_dir = Path(settings.home) / "training" / config["name"]
    ckpt_dir = run_dir / "checkpoints"
    state_path = run_dir / "state.json"
    config_sha = config_sha256(config)
    state = _read_state(state_path)
    last = ckpt_dir / "last.ckpt"
    resume = bool(state and state.get("status") == "running" and last.is_file() and not fresh)
    if resume and state and state.get("config_sha256") != config_sha:
        raise TrainingError(
            f"an unfinished run of {config['name']} with another configuration is in {run_dir}; "
            "run again with --fresh to discard it"
        )
    if lead and not resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    if trainer_cfg.get("threads"):
        torch.set_num_threads(int(trainer_cfg["threads"]))
    L.seed_everything(config["seed"], workers=True, verbose=False)

    data = load_training_data(config["data"], settings, run_dir / "data")
    events = data.tables["events"]
    fraction = float(config["data"]["validation_fraction"])
    split = split_of(events["run"], events["event"], (1.0 - fraction, fraction, 0.0), salt=config["seed"])
    train_tables, val_tables = select_events(data.tables, split == 0), select_events(data.tables, split == 1)

    model_config, upstream = _resolve_models(config["model"], settings)
    model = build(config["family"], model_config, seed=config["seed"])
    model.optimizer_config = dict(config["optimizer"])
    if model.needs_conditions:
        from vbes.calibration import CalibrationStore

        with CalibrationStore.from_settings(settings) as store:
            model.conditions = data.conditions(store)
    model.fit_preprocessing(train_tables)
    lineage = {**data.lineage(), "code_version": code_version(), "models": upstream}
    runs = events["run"]
    model.card.training_domain.update({
        "files": lineage["files"],
        "channels": lineage["channels"],
        "runs": [int(runs.min()), int(runs.max())],
        "calibration_tags": lineage["calibration_tags"],
        "events": int(len(runs)),
    })
    batch = int(trainer_cfg["batch_size"])
    train_tensors, val_tensors = model.make_tensors(train_tables), model.make_tensors(val_tables)
    n_train, n_val = _stream_rows(train_tensors), _stream_rows(val_tensors)
    if n_train == 0 or n_val == 0:
        raise TrainingError(
            f"{config['name']}: {n_train} training and {n_val} validation rows; both must be non-empty"
        )
    with _quiet_lightning():  # a multi-stream CombinedLoader warns of Lightning's own use of torch's pytree
        train_loader = _loaders(train_tensors, batch, True, int(config["seed"]))
        val_loader = _loaders(val_tensors, batch, False, int(config["seed"]))

    client: Any = None
    run_id = ""
    tags: dict[str, str] = {}
    if lead:
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        mlflow.set_registry_uri(settings.mlflow_tracking_uri)
        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
        experiment_id = _experiment_id(client, config["registry"]["experiment"], settings.mlflow_artifacts,
                                       settings.mlflow_tracking_uri)
        tags = lineage_tags(lineage, config_sha, config["family"])
        if not resume and state and state.get("status") == "running" and state.get("run_id"):
            # the unfinished run this one replaces (--fresh, or killed before its first checkpoint)
            with contextlib.suppress(MlflowException), _stdout_to_stderr():  # a run the store no longer knows
                client.set_terminated(str(state["run_id"]), "KILLED")
        if resume and state:
            run_id = str(state["run_id"])
            echo(f"resuming {config['name']} from {last} (MLflow run {run_id})")
        else:
            run_id = client.create_run(experiment_id, run_name=config["name"], tags=tags).info.run_id
            echo(f"training {config['name']} ({config['family']}): {_describe(train_tensors)} training, "
                 f"{_describe(val_tensors)} validation rows; MLflow run {run_id} at {settings.mlflow_tracking_uri}")
            for key, value in _flat_params(config).items():
                client.log_param(run_id, key, value)
        _write_state(state_path, {"run_id": run_id, "config_sha256": config_sha, "status": "running"})
    epoch_metrics = _EpochMetrics(client, run_id)
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_loss", mode="min",
                                 save_top_k=1, save_last=True, enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=int(trainer_cfg["max_epochs"]),
        accelerator=trainer_cfg["accelerator"],
        devices=int(trainer_cfg["devices"]),
        strategy=trainer_cfg["strategy"],
        num_nodes=int(trainer_cfg["num_nodes"]),
        callbacks=[EarlyStopping("val_loss", patience=int(trainer_cfg["early_stopping_patience"])),
                   checkpoint, epoch_metrics],
        deterministic=True,
        logger=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        # the project's rule for progress bars (vbes.cli.progress): on a terminal, or when asked for
        enable_progress_bar=sys.stderr.isatty() or os.environ.get("VBES_PROGRESS") == "1",
        # the batch samplers shard by process themselves (_EpochBatches), so streams stay in step under DDP
        use_distributed_sampler=False,
        gradient_clip_val=trainer_cfg.get("gradient_clip"),
    )
    # Lightning's progress bar writes to stdout, which belongs to the command's result (--json)
    with _quiet_lightning(), contextlib.redirect_stdout(sys.stderr):
        trainer.fit(model, train_loader, val_loader, ckpt_path=str(last) if resume else None)
    resumed_from = epoch_metrics.first_epoch if resume else None
    if not lead:
        return TrainResult("", rank, config["registry"]["model_name"], "", "", run_dir, resumed_from,
                           int(trainer.current_epoch), float("nan"))
    best_path = Path(checkpoint.best_model_path or last)
    # weights_only: the checkpoint's tensors and plain values are read without unpickling code
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    model.eval()
    best_loss = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else float("nan")
    model.card.training_domain["best_val_loss"] = best_loss

    client.set_tag(run_id, "vbes.world_size", str(trainer.world_size))
    with _stdout_to_stderr():
        version = _register(client, run_id, config, model, train_tables, lineage, tags, run_dir, settings)
        client.set_terminated(run_id, "FINISHED")
    _write_state(state_path, {"run_id": run_id, "config_sha256": config_sha, "status": "finished",
                              "version": version})
    name = config["registry"]["model_name"]
    uri = f"models:/{name}@{CANDIDATE_ALIAS}"
    echo(f"registered {name} version {version} as {uri} (best val_loss {best_loss:.4g}, "
         f"{trainer.current_epoch} epochs)")
    return TrainResult(run_id, rank, name, version, uri, run_dir, resumed_from, int(trainer.current_epoch),
                       best_loss)


def _stdout_to_stderr() -> contextlib.redirect_stdout[Any]:
    """Where MLflow's own lines go: ending a run tracked on a server (``http(s)://``) writes "View run ... at"
    lines to stdout, which belongs to the command's result (``--json``)."""
    return contextlib.redirect_stdout(sys.stderr)


def _describe(tensors: Mapping[str, Any]) -> str:
    first = next(iter(tensors.values()))
    if isinstance(first, Mapping):
        return " + ".join(f"{len(next(iter(v.values())))} {k}" for k, v in tensors.items())
    return str(len(first))


def _silent(line: str) -> None:
    """The ``echo`` of processes other than rank 0."""


def _widened(values: np.ndarray) -> np.ndarray:
    kind = np.asarray(values).dtype.kind
    return np.asarray(values, dtype=np.int64 if kind in "iub" else np.float64 if kind == "f" else None)


def _register(client: Any, run_id: str, config: Mapping[str, Any], model: Any, tables: Any,
              lineage: Mapping[str, Any], tags: Mapping[str, str], run_dir: Path, settings: Any) -> str:
    """Log the model (pyfunc, models-from-code + the saved model as artifact), register it, archive its
    preservation package, tag and alias it."""
    import mlflow
    import pandas as pd  # type: ignore[import-untyped]
    import yaml
    from mlflow.models import infer_signature

    with warnings.catch_warnings():
        # MLflow's own module builds a schema from its type hints at import and warns about its own `Any`
        warnings.filterwarnings("ignore", message=r".*Any type hint is inferred as AnyType.*")
        import mlflow.pyfunc.model  # noqa: F401

    model_dir = run_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model.save(model_dir)
    # the served schema takes int64 and float64 columns (pandas' defaults): the model casts to its own dtypes
    example_rows = {k: _widened(v[:5]) for k, v in model.records_of(tables).items()}
    example = pd.DataFrame(example_rows)
    name = config["registry"]["model_name"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        (folder / "lineage.json").write_text(json.dumps(dict(lineage), indent=2, sort_keys=True))
        (folder / "model_card.json").write_text(json.dumps(model.card.to_dict(), indent=2, sort_keys=True))
        client.log_artifacts(run_id, str(folder))
    from importlib.metadata import version as dist_version

    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                    f"numpy=={np.__version__}", f"pandas=={pd.__version__}", f"vbes=={dist_version('vbes')}"]
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # integer columns never hold missing values here (NaN is allowed in float columns only)
        warnings.filterwarnings("ignore", message=r".*Hint: Inferred schema contains integer column.*")
        answer = {k: _widened(v) for k, v in model.predict_records(example_rows).items()}
        signature = infer_signature(example, pd.DataFrame(answer))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_PYFUNC_CODE),
            artifacts={"model": str(model_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    from vbes.training.preserve import archive_package, write_package

    package = write_package(run_dir / "package.tar", model_dir, config, lineage, model.card.to_dict())
    archived, sha = archive_package(settings, name, version, package, lineage)
    package.unlink()
    tags = {**tags, "vbes.preservation.name": archived, "vbes.preservation.sha256": sha}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, "vbes.training_run", run_id)
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version)
    return version
