"""Small numeric helpers the detector-model modules share (so each rule is written once)."""

from __future__ import annotations

import numpy as np

__all__ = ["CM_PER_GEV_TESLA", "quadrature", "same_event_pairs", "wrap_angle"]

#: radius of curvature in cm of a track of pT = 1 GeV/c in 1 T
CM_PER_GEV_TESLA = 100.0 / 0.299792458


def quadrature(*terms: np.ndarray | float) -> np.ndarray:
    """``sqrt(a² + b² + ...)`` of the terms, element by element."""
    return np.sqrt(sum(np.square(t) for t in terms))


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles brought into [-π, π)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def same_event_pairs(owner_a: np.ndarray, owner_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) index pair with ``owner_a[a] == owner_b[b]`` (objects of the same event), vectorised."""
    order_b = np.argsort(owner_b, kind="stable")
    first = np.searchsorted(owner_b[order_b], owner_a, side="left")
    n_pairs = np.searchsorted(owner_b[order_b], owner_a, side="right") - first
    a_idx = np.repeat(np.arange(len(owner_a)), n_pairs)
    offset_in_range = np.arange(int(n_pairs.sum())) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    return a_idx, order_b[np.repeat(first, n_pairs) + offset_in_range]
