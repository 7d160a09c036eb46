"""vbes.models: the registry of model families, their one interface and their pickle-free saved format.

Public API::

    from vbes.models import families, get_family, build, load, ModelFamily, ModelCard
    model = build("record_autoencoder", {"latent_dim": 8}, seed=1)
    model.fit_preprocessing(tables); model.save("folder"); same = load("folder")
"""

from __future__ import annotations

from vbes.models.base import ModelCard, ModelFamily, build, families, get_family, load, register_family

__all__ = ["ModelCard", "ModelFamily", "build", "families", "get_family", "load", "register_family"]
