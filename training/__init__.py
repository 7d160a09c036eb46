"""vbes.training: ``vbes train CONFIG.yaml`` -- a versioned YAML configuration, Lightning, MLflow, the registry.

Public API::

    from vbes.training import load_config, train        # train imports torch, Lightning and MLflow
    result = train("training/configs/smoke-record-ae.yaml")  # -> TrainResult (run, version, models:/NAME@candidate)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbes.training.config import load_config

if TYPE_CHECKING:
    from vbes.training.run import TrainResult, train

__all__ = ["TrainResult", "load_config", "train"]


def __getattr__(name: str) -> object:
    if name in ("train", "TrainResult"):
        from vbes.training import run

        return getattr(run, name)
    raise AttributeError(f"module 'vbes.training' has no attribute {name!r}")
