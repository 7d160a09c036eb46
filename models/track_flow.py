"""A conditional coupling flow over track kinematics ``(p, cos θ, φ)`` given the event's channel.

zuko's masked affine flow with ``passes=2``: each transform is an affine (RealNVP-type) coupling, so sampling
costs one network pass per transform -- on this machine 10-100x faster than autoregressive flows of the same
size. Coordinates: ``log p``, ``atanh(cos θ)`` and ``φ``, each standardised with the training mean and standard
deviation (buffers). Sampling maps back through ``exp``, ``tanh`` and ``atan2(sin, cos)``, so ``p > 0``,
``|cos θ| ≤ 1`` and ``φ ∈ [-π, π]`` hold for every draw. Without conditions, channels are drawn with their
training frequencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import zuko  # type: ignore[import-untyped]

from vbes.datasets.schema import CHANNELS, COUNT_FIELD
from vbes.errors import InvalidInput, ModelError
from vbes.models.base import ModelFamily, Tables, register_family

__all__ = ["TrackFlow"]

_COLUMNS = ("p", "cos_theta", "phi")
_N_CHANNELS = max(CHANNELS.values()) + 1
_EPS_COS = 1e-6


def _coordinates(tracks: Mapping[str, np.ndarray]) -> np.ndarray:
    p = np.asarray(tracks["p"], dtype=np.float64)
    cos = np.asarray(tracks["cos_theta"], dtype=np.float64)
    if (p <= 0).any():
        raise InvalidInput("tracks.p: the track flow needs positive momenta")
    phi = np.asarray(tracks["phi"], dtype=np.float64)
    return np.stack([np.log(p), np.arctanh(np.clip(cos, -1 + _EPS_COS, 1 - _EPS_COS)), phi], axis=1)


def _track_channels(tables: Tables) -> np.ndarray:
    events = tables["events"]
    return np.repeat(np.asarray(events["channel"], dtype=np.int64), np.asarray(events[COUNT_FIELD["tracks"]]))


@register_family
class TrackFlow(ModelFamily):
    """Conditional density of track kinematics given the channel.

    Args:
        config: ``transforms`` (number of affine couplings), ``hidden`` (widths of each coupling's network).
    """

    family = "track_flow"
    capabilities = frozenset({"sample", "log_prob"})
    x_mean: torch.Tensor
    x_std: torch.Tensor
    channel_weights: torch.Tensor

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        hidden = [int(h) for h in self.config["hidden"]]
        if int(self.config["transforms"]) < 1 or any(h < 1 for h in hidden):
            raise ModelError(f"family {self.family}: transforms and hidden widths must be positive")
        self.flow = zuko.flows.MAF(len(_COLUMNS), _N_CHANNELS, transforms=int(self.config["transforms"]),
                                   passes=2, hidden_features=hidden)
        self.register_buffer("x_mean", torch.zeros(len(_COLUMNS)))
        self.register_buffer("x_std", torch.ones(len(_COLUMNS)))
        self.register_buffer("channel_weights", torch.ones(_N_CHANNELS) / _N_CHANNELS)
        unit = {"p": "GeV/c", "cos_theta": "", "phi": "rad"}
        self.card.inputs = [{"name": "channel", "dtype": "<i2", "unit": "", "kind": "class"}]
        self.card.outputs = [{"name": c, "dtype": "<f4", "unit": unit[c], "kind": "float"} for c in _COLUMNS]
        self.card.conditions = [{"name": "channel", "values": dict(CHANNELS)}]
        self.card.notes = ["one track at a time: multiplicities and correlations between tracks are not modelled"]

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {"transforms": 4, "hidden": [64, 64]}

    def fit_preprocessing(self, tables: Tables) -> None:
        x = _coordinates(tables["tracks"])
        if len(x) == 0:
            raise ModelError(f"family {self.family}: no tracks to fit the normalisation on")
        self.x_mean.copy_(torch.as_tensor(x.mean(axis=0), dtype=torch.float32))
        self.x_std.copy_(torch.as_tensor(np.maximum(x.std(axis=0), 1e-6), dtype=torch.float32))
        counts = np.bincount(_track_channels(tables), minlength=_N_CHANNELS).astype(np.float64)
        self.channel_weights.copy_(torch.as_tensor(counts / counts.sum(), dtype=torch.float32))
        tracks = tables["tracks"]
        self.card.training_domain = {
            "records": len(x),
            "ranges": {c: [float(np.min(tracks[c])), float(np.max(tracks[c]))] for c in _COLUMNS},
            "channel_fractions": {k: float(counts[v] / counts.sum()) for k, v in CHANNELS.items() if counts[v]},
        }

    def _context(self, channels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(channels.long(), _N_CHANNELS).float()

    def make_tensors(self, tables: Tables) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(_coordinates(tables["tracks"]), dtype=torch.float32)
        return {"x": (x - self.x_mean) / self.x_std, "channel": torch.as_tensor(_track_channels(tables))}

    def log_prob(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # in the standardised coordinates: a constant shift (log of the scales) from the physical density
        return self.flow(self._context(batch["channel"])).log_prob(batch["x"])

    def loss(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss": -self.log_prob(batch).mean()}

    @torch.no_grad()
    def sample(self, n: int, conditions: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> torch.Tensor:
        """``(n, 3)`` physical ``(p, cos θ, φ)``.

        Args:
            n: number of tracks.
            conditions: ``{"channel": (n,) channel codes}``; default drawn with the training frequencies.
            seed: the draw's seed.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if conditions is None:
                channels = torch.multinomial(self.channel_weights, n, replacement=True)
            else:
                channels = torch.as_tensor(conditions["channel"]).long()
                if channels.shape != (n,):
                    raise InvalidInput(f"conditions['channel'] must have shape ({n},)")
            u = self.flow(self._context(channels)).sample()
        u = u * self.x_std + self.x_mean
        return torch.stack([torch.exp(u[:, 0]), torch.tanh(u[:, 1]), torch.atan2(torch.sin(u[:, 2]),
                                                                                  torch.cos(u[:, 2]))], dim=1)

    def records_of(self, tables: Tables) -> dict[str, np.ndarray]:
        return {"channel": _track_channels(tables).astype(np.int16)}

    def predict_records(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One track per input row, drawn for the row's channel (seed 0: the same rows give the same tracks).

        Args:
            rows: ``{"channel": channel codes}``.
        """
        channels = torch.as_tensor(np.array(rows["channel"], dtype=np.int64))  # a copy: pandas gives read-only
        if len(channels) and (int(channels.min()) < 0 or int(channels.max()) >= _N_CHANNELS):
            raise InvalidInput(f"channel codes must lie in 0..{_N_CHANNELS - 1}")
        out = self.sample(len(channels), {"channel": channels}, seed=0).numpy().astype(np.float32)
        return {c: out[:, i] for i, c in enumerate(_COLUMNS)}
