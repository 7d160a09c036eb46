"""Virtual BESIII: preserved surrogate models, learned compression, archive and conditions store.

The design card's top-level folders install as sub-packages of this one namespace:
``vbes.calibration``, ``vbes.datasets``, ``vbes.archive``, ``vbes.models``, ``vbes.training``,
``vbes.evaluation``, ``vbes.compression``, ``vbes.recast``, ``vbes.serving``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
