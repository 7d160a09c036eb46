"""The record autoencoder: DST-level track records -> a small latent code -> records (the learned codec's predictor).

Float32 throughout. Inputs are the model coordinates of :mod:`vbes.models.records`, each continuous coordinate
normalised by the mean and standard deviation of its observed training values (buffers, saved with the
weights). The decoder predicts the continuous coordinates (masked squared error), the flags (binary
cross-entropy) and the classes (cross-entropy); decoding takes the most probable flag and class, rounds the
integers into the training domain, and the inverse map of :mod:`vbes.models.records` makes every physical
bound hold (|cos θ| ≤ 1, E ≥ 0, positive-definite helix covariance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vbes.errors import ModelError
from vbes.models import records
from vbes.models.base import ModelFamily, Tables, register_family

__all__ = ["RecordAutoencoder"]

_N_X = len(records.COORDINATES)
_N_FLAGS = len(records.FLAGS)
_N_CLASSES = {name: len(values) for name, values in records.CATEGORIES.items()}
_N_IN = _N_X + _N_FLAGS + sum(_N_CLASSES.values())


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _column_info() -> list[dict[str, Any]]:
    from vbes.datasets.schema import TABLES

    fields = {f.name: f for f in TABLES["tracks"]}
    info = []
    for name in records.MODELLED_COLUMNS:
        f = fields[name]
        kind = "class" if name in records.CATEGORIES else "integer" if f.dtype[1] in "iu" else "float"
        info.append({"name": name, "dtype": f.dtype, "shape": list(f.shape), "unit": f.unit, "kind": kind})
    return info


@register_family
class RecordAutoencoder(ModelFamily):
    """Autoencoder of track records (``tracks`` table rows).

    Args:
        config: ``latent_dim`` (size of the code), ``hidden`` (widths of the hidden layers of the encoder;
            the decoder mirrors them).
    """

    family = "record_autoencoder"
    capabilities = frozenset({"encode", "decode"})
    x_mean: torch.Tensor
    x_std: torch.Tensor
    int_lo: torch.Tensor
    int_hi: torch.Tensor
    angle_low: torch.Tensor

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        hidden = [int(h) for h in self.config["hidden"]]
        latent = int(self.config["latent_dim"])
        if latent < 1 or any(h < 1 for h in hidden):
            raise ModelError(f"family {self.family}: latent_dim and hidden widths must be positive")
        n_out = _N_X + _N_FLAGS + sum(_N_CLASSES.values())
        self.encoder = _mlp([_N_IN, *hidden, latent])
        self.decoder = _mlp([latent, *reversed(hidden), n_out])
        self.register_buffer("x_mean", torch.zeros(_N_X))
        self.register_buffer("x_std", torch.ones(_N_X))
        n_int = len(records.INTEGER_COLUMNS)
        self.register_buffer("int_lo", torch.full((n_int,), -(2**15), dtype=torch.int64))
        self.register_buffer("int_hi", torch.full((n_int,), 2**15 - 1, dtype=torch.int64))
        self.register_buffer("angle_low", torch.full((len(records.ANGLES),), -np.pi, dtype=torch.float64))
        self.card.inputs = _column_info()
        self.card.outputs = _column_info()
        self.card.notes = [
            "emc_index and truth_index (pointers into other tables) are not modelled; a codec keeps them",
            "p, px, py, pz, cos_theta, phi are modelled beside the helix, not derived from it",
        ]

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {"latent_dim": 16, "hidden": [128, 128]}

    # --- preprocessing --------------------------------------------------------------------------------
    def fit_preprocessing(self, tables: Tables) -> None:
        tracks = tables["tracks"]
        space = records.to_model(tracks)
        if len(space) == 0:
            raise ModelError(f"family {self.family}: no track records to fit the normalisation on")
        seen = space.observed.sum(axis=0)
        mean = np.where(seen > 0, (space.x * space.observed).sum(axis=0) / np.maximum(seen, 1), 0.0)
        var = ((space.x - mean) ** 2 * space.observed).sum(axis=0) / np.maximum(seen, 1)
        std = np.sqrt(var)
        # a constant coordinate keeps unit scale so that its normalised value stays 0
        std = np.where(std > 1e-12 * np.maximum(np.abs(mean), 1.0), std, 1.0)
        self.x_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.x_std.copy_(torch.as_tensor(std, dtype=torch.float32))
        ints = [np.asarray(tracks[c]).astype(np.int64) for c in records.INTEGER_COLUMNS]
        self.int_lo.copy_(torch.as_tensor([int(v.min()) for v in ints]))
        self.int_hi.copy_(torch.as_tensor([int(v.max()) for v in ints]))
        flat = records.flatten(tracks)
        # an angle stored in [0, 2π) in the training data comes back in [0, 2π)
        self.angle_low.copy_(torch.as_tensor([0.0 if flat[a].min() >= 0 else -np.pi for a in records.ANGLES]))
        ranges = {}
        for name, values in flat.items():
            finite = np.asarray(values, dtype=np.float64)
            finite = finite[np.isfinite(finite)]
            ranges[name] = [float(finite.min()), float(finite.max())] if finite.size else None
        self.card.training_domain = {"records": len(space), "ranges": ranges}

    def _integer_range(self) -> dict[str, tuple[int, int]]:
        return {
            c: (int(lo), int(hi))
            for c, lo, hi in zip(records.INTEGER_COLUMNS, self.int_lo.tolist(), self.int_hi.tolist())
        }

    def make_tensors(self, tables: Tables) -> dict[str, torch.Tensor]:
        return self.records_to_tensors(tables["tracks"])

    def records_to_tensors(self, tracks: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Model-space tensors of track records: normalised ``x``, ``observed``, ``flags`` and class indices.

        Args:
            tracks: physical track columns.
        """
        space = records.to_model(tracks)
        x = torch.as_tensor(space.x, dtype=torch.float32)
        observed = torch.as_tensor(space.observed, dtype=torch.float32)
        x = (x - self.x_mean.cpu()) / self.x_std.cpu() * observed
        out = {"x": x, "observed": observed, "flags": torch.as_tensor(space.flags)}
        out.update({f"class_{k}": torch.as_tensor(v) for k, v in space.classes.items()})
        return out

    def inputs(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's input rows: normalised coordinates, flags and one-hot classes.

        Args:
            batch: tensors as :meth:`records_to_tensors` returns them.
        """
        parts = [batch["x"], batch["flags"]]
        parts += [F.one_hot(batch[f"class_{k}"], n).float() for k, n in _N_CLASSES.items()]
        return torch.cat(parts, dim=1)

    # --- the network ------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        x_hat, rest = out[:, :_N_X], out[:, _N_X:]
        flag_logits, rest = rest[:, :_N_FLAGS], rest[:, _N_FLAGS:]
        logits = {}
        for k, n in _N_CLASSES.items():
            logits[k], rest = rest[:, :n], rest[:, n:]
        return x_hat, flag_logits, logits

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x_hat, flag_logits, logits = self._split(self.decode(self.encode(self.inputs(batch))))
        observed = batch["observed"]
        mse = ((x_hat - batch["x"]) ** 2 * observed).sum() / observed.sum().clamp_min(1.0)
        bce = F.binary_cross_entropy_with_logits(flag_logits, batch["flags"])
        ce = sum((F.cross_entropy(logits[k], batch[f"class_{k}"]) for k in _N_CLASSES), torch.zeros(()))
        return {"loss": mse + bce + ce, "mse": mse, "flags": bce, "classes": ce}

    @torch.no_grad()
    def reconstruct(self, tracks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encode and decode track records; physical columns in the schema's dtypes.

        Args:
            tracks: physical track columns.
        """
        batch = self.records_to_tensors(tracks)
        return self.decode_records(self.encode(self.inputs(batch)))

    @torch.no_grad()
    def decode_records(self, z: torch.Tensor) -> dict[str, np.ndarray]:
        """Physical track records of latent codes.

        Args:
            z: ``(n, latent_dim)`` codes.
        """
        x_hat, flag_logits, logits = self._split(self.decode(z))
        x = (x_hat * self.x_std + self.x_mean).double().cpu().numpy()
        flags = (flag_logits > 0).cpu().numpy()
        classes = {k: v.argmax(dim=1).cpu().numpy() for k, v in logits.items()}
        angle_low = dict(zip(records.ANGLES, self.angle_low.tolist()))
        return records.from_model(x, flags, classes, self._integer_range(), angle_low)

    def records_of(self, tables: Tables) -> dict[str, np.ndarray]:
        return records.flatten(tables["tracks"])

    def predict_records(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return records.flatten(self.reconstruct(records.unflatten(rows)))
