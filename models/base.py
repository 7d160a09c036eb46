"""The one interface of every model family, its model card, the registry, and the pickle-free saved format.

A family is a :class:`ModelFamily`: a Lightning module that prepares its own training tensors from event tables,
computes its loss, and offers the operations it defines (``capabilities``: ``sample``, ``encode``, ``decode``,
``log_prob``). A saved model is a folder of two files that any language can read without executing code:

* ``model.json`` -- format name and version, family, configuration, model card, and for every tensor its
  dtype, shape and SHA-256;
* ``tensors.npz`` -- the tensors (NumPy's zip of ``.npy`` arrays, read with ``allow_pickle=False``).

Loading checks every tensor's SHA-256, builds the family from its configuration and loads the tensors
strictly: a missing, extra or altered tensor is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import lightning as L
import numpy as np
import torch

from vbes.errors import CorruptModelError, ModelError, UnknownFamily

__all__ = [
    "CAPABILITIES",
    "FORMAT",
    "FORMAT_VERSION",
    "ModelCard",
    "ModelFamily",
    "Tables",
    "build",
    "families",
    "get_family",
    "load",
    "register_family",
]

#: ``{table: {field: array}}``, as :func:`vbes.datasets.read_events` returns
Tables = Mapping[str, Mapping[str, np.ndarray]]

FORMAT = "vbes-model"
FORMAT_VERSION = 1
#: the operations a family may define beside training
CAPABILITIES = frozenset({"sample", "encode", "decode", "log_prob"})
_SPEC_FILE = "model.json"
_TENSOR_FILE = "tensors.npz"


@dataclass
class ModelCard:
    """What a model is for and where it may be trusted.

    Args:
        family: the family's registry name.
        inputs: one entry per input column: ``{"name", "dtype", "unit", "kind"}``.
        outputs: the same for the output columns.
        conditions: what the model is conditioned on (empty for an unconditional model).
        training_domain: where the training data lies: records, per-column ranges, channels, runs, files.
        gates: evaluation gate results (empty until the evaluation suite has judged the model).
        notes: anything a user must know (what is not modelled, known limitations).
    """

    family: str
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    training_domain: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-serialisable values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Inverse of :meth:`to_dict`.

        Args:
            data: a mapping as :meth:`to_dict` writes it.
        """
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class ModelFamily(L.LightningModule):
    """Base of every model family.

    Subclasses set ``family`` (the registry name) and ``capabilities``, take one JSON-serialisable
    configuration mapping (``default_config`` gives its keys), and implement :meth:`fit_preprocessing`,
    :meth:`make_tensors`, :meth:`loss` and :meth:`predict_records` (what the MLflow pyfunc model serves).
    Preprocessing state (normalisation constants, domains) lives in registered buffers so that it is saved
    with the weights.

    Args:
        config: the family's hyper-parameters (missing keys take ``default_config``'s values).
    """

    family: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: the family reads the calibration conditions of its training events (``self.conditions``, set by the trainer
    #: before :meth:`fit_preprocessing` from the calibration store, by the files' tags and runs)
    needs_conditions: ClassVar[bool] = False

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        merged = {**self.default_config(), **dict(config or {})}
        unknown = sorted(set(merged) - set(self.default_config()))
        if unknown:
            raise ModelError(f"family {self.family}: unknown hyper-parameter(s) {', '.join(unknown)}")
        self.config: dict[str, Any] = json.loads(json.dumps(merged))
        self.card = ModelCard(family=self.family)
        self.optimizer_config: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.0}
        self.conditions: Any = None
        #: the seed :func:`build` initialised the weights with (networks made later use it too)
        self.init_seed = 0

    @contextlib.contextmanager
    def seeded(self) -> Iterator[None]:
        """Weights made inside depend only on the build seed: for networks whose sizes the data decide, made in
        :meth:`fit_preprocessing` rather than at construction."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            yield

    def on_load(self) -> None:
        """Called by :func:`load` after the tensors and the card are in place (restore what the card holds)."""

    # --- to implement ---------------------------------------------------------------------------------
    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """The family's hyper-parameters and their defaults."""
        return {}

    def fit_preprocessing(self, tables: Tables) -> None:
        """Compute the preprocessing state (normalisation, domain, card) from the training tables.

        Args:
            tables: the training event tables.
        """
        raise NotImplementedError

    def make_tensors(self, tables: Tables) -> Mapping[str, Any]:
        """The training tensors of ``tables``: equal first dimension, one row per training example -- or, for a
        family made of several tables, ``{stream: {name: tensor}}`` with one such set per stream (the trainer then
        draws a batch of every stream at each step, each stream passed once per epoch).

        Args:
            tables: event tables.
        """
        raise NotImplementedError

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": total, ...components}`` of a batch of :meth:`make_tensors` rows.

        Args:
            batch: a batch of rows.
        """
        raise NotImplementedError

    def records_of(self, tables: Tables) -> dict[str, np.ndarray]:
        """The rows that :meth:`predict_records` takes, from event tables: 1-D columns of equal length
        (what the MLflow pyfunc model takes as a table).

        Args:
            tables: event tables.
        """
        raise NotImplementedError

    def predict_records(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """What the served model returns for input rows: 1-D physical columns in, 1-D physical columns out.

        Args:
            rows: the family's input columns, as :meth:`records_of` names them and the card lists them.
        """
        raise NotImplementedError

    # --- the optional operations ----------------------------------------------------------------------
    def _undefined(self, operation: str) -> ModelError:
        return ModelError(f"family {self.family} does not define {operation}")

    def sample_request(self, tables: Tables, n: int) -> Mapping[str, Any] | None:
        """Conditions for :meth:`sample` of ``n`` samples like those of ``tables`` (``None``: unconditional).

        Args:
            tables: event tables (e.g. the training data).
            n: number of samples.
        """
        return None

    def sample(self, n: int, conditions: Mapping[str, Any] | None = None, seed: int = 0) -> Any:
        """Draw ``n`` samples (families with ``"sample"``): a tensor, or event tables for event-level families.

        Args:
            n: number of samples.
            conditions: the family's conditions (see its docstring).
            seed: the draw's seed: the same seed gives the same samples.
        """
        raise self._undefined("sample")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent code of model-space inputs (families with ``"encode"``).

        Args:
            x: model-space inputs.
        """
        raise self._undefined("encode")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Model-space outputs of latent codes (families with ``"decode"``).

        Args:
            z: latent codes.
        """
        raise self._undefined("decode")

    def log_prob(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Log-likelihood per row (families with ``"log_prob"``).

        Args:
            batch: rows as :meth:`make_tensors` returns them.
        """
        raise self._undefined("log_prob")

    # --- Lightning --------------------------------------------------------------------------------------
    def _step(self, batch: Mapping[str, Any], stage: str) -> torch.Tensor:
        terms = self.loss(batch)
        n = _rows(batch)
        for key, value in terms.items():
            name = f"{stage}_loss" if key == "loss" else f"{stage}_{key}"
            # sync_dist: under DDP every process logs the mean over all processes (a no-op on one)
            self.log(name, value.detach(), on_step=False, on_epoch=True, batch_size=n, prog_bar=key == "loss",
                     sync_dist=True)
        return terms["loss"]

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        lr = float(self.optimizer_config["lr"])
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr,
                                      weight_decay=float(self.optimizer_config.get("weight_decay", 0.0)))
        if self.optimizer_config.get("schedule", "constant") != "cosine":
            return optimizer
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        # the last epochs refine at a hundredth of the rate: what a flow's fine structure needs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=lr / 100)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # --- saved format -------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer as a NumPy array (the content of ``tensors.npz``)."""
        return {k: v.detach().cpu().numpy().copy() for k, v in self.state_dict().items()}

    def save(self, folder: str | Path) -> Path:
        """Write the model as ``model.json`` + ``tensors.npz`` into ``folder`` (created); returns the folder.

        Args:
            folder: the output folder.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = self.tensors()
        spec = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "config": self.config,
            "card": self.card.to_dict(),
            "tensors": {
                k: {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": _array_sha256(a)}
                for k, a in sorted(arrays.items())
            },
        }
        np.savez(out / _TENSOR_FILE, **arrays)
        (out / _SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        return out


def _rows(batch: Mapping[str, Any]) -> int:
    """Rows of a batch: of its first tensor, or summed over the streams of a multi-stream batch."""
    first = next(iter(batch.values()))
    if isinstance(first, Mapping):
        return sum(_rows(stream) for stream in batch.values())
    return int(first.shape[0])


def _array_sha256(array: np.ndarray) -> str:
    # little-endian C order, so the hash does not depend on the machine that wrote it
    canonical = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return hashlib.sha256(canonical.tobytes()).hexdigest()


F = TypeVar("F", bound=type[ModelFamily])
_REGISTRY: dict[str, type[ModelFamily]] = {}


def register_family(cls: F) -> F:
    """Class decorator: add a family to the registry under its ``family`` name.

    Args:
        cls: a :class:`ModelFamily` subclass with a unique ``family`` and valid ``capabilities``.
    """
    if not cls.family or cls.family in _REGISTRY:
        raise ModelError(f"family name {cls.family!r} is empty or registered twice")
    if not cls.capabilities <= CAPABILITIES:
        raise ModelError(f"family {cls.family}: unknown capabilities {sorted(cls.capabilities - CAPABILITIES)}")
    _REGISTRY[cls.family] = cls
    return cls


def _load_builtin() -> None:
    # the built-in families register themselves on import
    from vbes.models import event_surrogate, record_ae, response, track_flow  # noqa: F401


def families() -> dict[str, type[ModelFamily]]:
    """Every registered family by name."""
    _load_builtin()
    return dict(sorted(_REGISTRY.items()))


def get_family(name: str) -> type[ModelFamily]:
    """The family registered as ``name``.

    Args:
        name: a registry name (``vbes.models.families()`` lists them).

    Raises:
        UnknownFamily: no family of that name.
    """
    known = families()
    if name not in known:
        raise UnknownFamily(f"unknown model family {name!r} (known: {', '.join(known)})")
    return known[name]


def build(name: str, config: Mapping[str, Any] | None = None, seed: int = 0) -> ModelFamily:
    """A new model of family ``name``; its initial weights depend only on ``config`` and ``seed``.

    Args:
        name: the family's registry name.
        config: hyper-parameters (missing keys take the family's defaults).
        seed: seed of the weight initialisation.
    """
    cls = get_family(name)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = cls(config)
    finally:
        torch.random.set_rng_state(state)
    model.init_seed = int(seed)
    return model


def load(folder: str | Path) -> ModelFamily:
    """Read a model written by :meth:`ModelFamily.save`, verifying every tensor.

    Args:
        folder: the model folder.

    Raises:
        NotFound: no such folder or no ``model.json`` in it.
        CorruptModelError: unknown format, a tensor missing, extra, of another shape or SHA-256.
    """
    from vbes.errors import NotFound

    root = Path(folder)
    spec_path = root / _SPEC_FILE
    if not spec_path.is_file():
        raise NotFound(f"{root}: no {_SPEC_FILE}: not a saved vbes model")
    try:
        spec = json.loads(spec_path.read_text())
    except ValueError as exc:
        raise CorruptModelError(f"{spec_path}: not valid JSON: {exc}") from None
    if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
        raise CorruptModelError(
            f"{spec_path}: format {spec.get('format')!r} version {spec.get('format_version')!r} "
            f"is not {FORMAT} version {FORMAT_VERSION}"
        )
    model = build(spec["family"], spec["config"])
    expected: dict[str, Any] = spec["tensors"]
    try:
        with np.load(root / _TENSOR_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise CorruptModelError(f"{root / _TENSOR_FILE}: cannot be read: {exc}") from None
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise CorruptModelError(f"{root}: tensors missing {missing}, unexpected {extra}")
    for key, array in arrays.items():
        if _array_sha256(array) != expected[key]["sha256"]:
            raise CorruptModelError(f"{root}: tensor {key} does not match its SHA-256")
    own = model.state_dict()
    if set(own) != set(arrays) or any(tuple(own[k].shape) != arrays[k].shape for k in own):
        raise CorruptModelError(f"{root}: tensors do not fit family {spec['family']} with its configuration")
    model.load_state_dict({k: torch.from_numpy(a) for k, a in arrays.items()}, strict=True)
    model.card = ModelCard.from_dict(spec.get("card") or {"family": model.family})
    model.on_load()
    model.eval()
    return model

