"""DST-level track records <-> model coordinates: the representation the record autoencoder learns.

Every column of the ``tracks`` table except the two index columns (``emc_index``, ``truth_index``: pointers
into other tables, which a codec keeps losslessly) maps onto

* **continuous coordinates** (float32, normalised per coordinate by the model): each chosen so that the
  physical bound holds by construction after the inverse map -- ``cos θ = tanh(u)`` (|cos θ| ≤ 1), angles as
  ``(cos, sin)`` and back through ``atan2``, ``p``, ``|κ|``, energies and depths through ``log`` (> 0), the helix
  covariance as its Cholesky factor with log-diagonal (so ``L Lᵀ`` is positive-definite), heavy-tailed χ values
  through ``asinh``;
* **flags** (binary): "not measured" (NaN) per value of a NaN-allowed column, and "exactly zero" for
  ``emc_energy`` (no matched shower) and ``muc_depth`` (no muon-counter hit) -- the spikes of the data;
* **classes**: ``charge`` (-1, +1; also the sign of κ) and ``mass_hypothesis`` (e, μ, π, K, p);
* **integers** (``dedx_nhits``, ``fit_ndof``, ``mdc_layers``, ``mdc_first_layer``, ``mdc_last_layer``):
  continuous coordinates, rounded and clipped to the training domain on the way back.

:func:`to_model` and :func:`from_model` are exact inverses on every column up to float32 rounding of the
continuous values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vbes.datasets.schema import TABLES, pack_symmetric, unpack_symmetric

__all__ = [
    "ANGLES",
    "CATEGORIES",
    "COORDINATES",
    "FLAGS",
    "INTEGER_COLUMNS",
    "MODELLED_COLUMNS",
    "ModelSpace",
    "flatten",
    "from_model",
    "to_model",
    "unflatten",
]

_FIELDS = {f.name: f for f in TABLES["tracks"]}
#: the tracks columns the representation covers (the index columns are not record content)
MODELLED_COLUMNS = tuple(f.name for f in TABLES["tracks"] if f.index_into is None)
#: class columns and their values, in class-index order
CATEGORIES: dict[str, tuple[int, ...]] = {"charge": (-1, 1), "mass_hypothesis": (0, 1, 2, 3, 4)}
INTEGER_COLUMNS = ("dedx_nhits", "fit_ndof", "mdc_layers", "mdc_first_layer", "mdc_last_layer")
_COV_N = 5
_EPS_COS = 1e-7
# exp and sinh arguments are clipped so that every decoded value fits float32 (no inf, no overflow)
_MAX_EXP = 88.0


@dataclass(frozen=True)
class _Scalar:
    """One element of a column, its transform and the flag that masks it."""

    column: str
    index: int | None  # element of a vector column
    transform: str  # identity | asinh | log | atanh | angle
    flag: str | None = None  # nan | zero
    nonneg: bool = False  # clamp at 0 after the inverse transform (asinh of a non-negative quantity)

    @property
    def name(self) -> str:
        return self.column if self.index is None else f"{self.column}_{self.index}"


def _vector(column: str, transform: str, flag: str | None) -> list[_Scalar]:
    return [_Scalar(column, i, transform, flag) for i in range(_FIELDS[column].shape[0])]


_SCALARS: list[_Scalar] = [
    _Scalar("helix", 0, "identity"),
    _Scalar("helix", 1, "angle"),
    _Scalar("helix", 2, "log"),  # |kappa|; its sign is the charge
    _Scalar("helix", 3, "identity"),
    _Scalar("helix", 4, "identity"),
    _Scalar("p", None, "log"),
    _Scalar("px", None, "identity"),
    _Scalar("py", None, "identity"),
    _Scalar("pz", None, "identity"),
    _Scalar("cos_theta", None, "atanh"),
    _Scalar("phi", None, "angle"),
    _Scalar("dedx", None, "asinh", nonneg=True),
    *_vector("chi_dedx", "asinh", "nan"),
    _Scalar("tof", None, "identity", "nan"),
    _Scalar("tof_path", None, "asinh", "nan", nonneg=True),
    *_vector("chi_tof", "asinh", "nan"),
    _Scalar("emc_energy", None, "log", "zero"),
    _Scalar("muc_depth", None, "log", "zero"),
    _Scalar("fit_chi2", None, "asinh", "nan", nonneg=True),
    _Scalar("dedx_ph", None, "asinh", "nan", nonneg=True),
    *[_Scalar(c, None, "identity") for c in INTEGER_COLUMNS],
]


# a field added to the layout must be given a representation here, or it would be dropped without a word
_UNCOVERED = set(MODELLED_COLUMNS) - {s.column for s in _SCALARS} - set(CATEGORIES) - {"helix_cov"}
if _UNCOVERED:
    raise ImportError(f"vbes.models.records: tracks columns without a model coordinate: {sorted(_UNCOVERED)}")


def _coordinate_names() -> tuple[str, ...]:
    names: list[str] = []
    for s in _SCALARS:
        names += [f"{s.name}.cos", f"{s.name}.sin"] if s.transform == "angle" else [s.name]
        if s.column == "helix" and s.index == 4:
            # the covariance right after the helix it belongs to
            names += [f"helix_cov.L{i}{j}" for i in range(_COV_N) for j in range(i + 1)]
    return tuple(names)


#: names of the continuous coordinates, in column order of ``ModelSpace.x``
COORDINATES = _coordinate_names()
#: the angles, by scalar name (``helix_1`` is φ0), in the order of ``angle_low``
ANGLES = tuple(s.name for s in _SCALARS if s.transform == "angle")
#: names of the binary flags, in column order of ``ModelSpace.flags``
FLAGS = tuple(f"{s.name}.{s.flag}" for s in _SCALARS if s.flag)


@dataclass
class ModelSpace:
    """Track records in model coordinates (before normalisation).

    Attributes:
        x: ``(n, len(COORDINATES))`` float64 continuous coordinates; 0 where ``observed`` is 0.
        observed: same shape, 1.0 where the coordinate carries a value (its flag does not mask it).
        flags: ``(n, len(FLAGS))`` 0/1 float32.
        classes: ``{column: (n,) int64 class index}`` for :data:`CATEGORIES`.
    """

    x: np.ndarray
    observed: np.ndarray
    flags: np.ndarray
    classes: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _element(tracks: Mapping[str, np.ndarray], s: _Scalar) -> np.ndarray:
    values = np.asarray(tracks[s.column], dtype=np.float64)
    return values if s.index is None else values[:, s.index]


def _cholesky_coordinates(packed: np.ndarray) -> np.ndarray:
    """``(n, 15)`` packed covariances -> the 15 coordinates of their Cholesky factor (log-diagonal)."""
    cov = unpack_symmetric(np.asarray(packed, dtype=np.float64))
    # a covariance that rounding made slightly indefinite is moved to the nearest positive-definite matrix
    w, v = np.linalg.eigh(cov)
    floor = np.maximum(w.max(axis=-1, keepdims=True), 1e-300) * 1e-12
    w = np.maximum(w, floor)
    chol = np.linalg.cholesky((v * w[..., None, :]) @ np.swapaxes(v, -1, -2))
    diag = np.diagonal(chol, axis1=-2, axis2=-1)
    # off-diagonal elements relative to their column's diagonal: scale-free, any real value is valid
    scaled = chol / diag[..., None, :]
    idx = np.arange(_COV_N)
    scaled[..., idx, idx] = np.log(diag)
    return pack_symmetric(scaled)


def _covariance_from_coordinates(coords: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_cholesky_coordinates`: always a positive-definite packed covariance."""
    m = np.tril(unpack_symmetric(np.asarray(coords, dtype=np.float64)))
    idx = np.arange(_COV_N)
    diag = np.exp(np.clip(m[..., idx, idx], -350.0, 350.0))
    chol = m * diag[..., None, :]
    chol[..., idx, idx] = diag
    return pack_symmetric(chol @ np.swapaxes(chol, -1, -2))


def to_model(tracks: Mapping[str, np.ndarray]) -> ModelSpace:
    """Track records (physical columns) in model coordinates.

    Args:
        tracks: ``{column: array}`` holding at least :data:`MODELLED_COLUMNS`.
    """
    n = len(tracks["charge"])
    x = np.zeros((n, len(COORDINATES)))
    observed = np.ones_like(x)
    flags = np.zeros((n, len(FLAGS)), dtype=np.float32)
    col = 0
    flag_col = 0
    for s in _SCALARS:
        values = _element(tracks, s)
        present = np.ones(n, dtype=bool)
        if s.flag:
            present = ~np.isnan(values) if s.flag == "nan" else values != 0
            flags[:, flag_col] = ~present
            flag_col += 1
        safe = np.where(present, values, 1.0)
        if s.transform == "angle":
            x[:, col], x[:, col + 1] = np.cos(safe), np.sin(safe)
            width = 2
        else:
            if s.transform == "log":
                coord = np.log(np.maximum(np.abs(safe), 1e-300))
            elif s.transform == "asinh":
                coord = np.arcsinh(safe)
            elif s.transform == "atanh":
                coord = np.arctanh(np.clip(safe, -1 + _EPS_COS, 1 - _EPS_COS))
            else:
                coord = safe
            x[:, col] = coord
            width = 1
        x[:, col : col + width] *= present[:, None]
        observed[:, col : col + width] = present[:, None]
        col += width
        if s.column == "helix" and s.index == 4:
            x[:, col : col + 15] = _cholesky_coordinates(tracks["helix_cov"])
            col += 15
    classes = {}
    for name, allowed in CATEGORIES.items():
        column = np.asarray(tracks[name]).astype(np.int64)
        lookup = {v: i for i, v in enumerate(allowed)}
        unknown = set(np.unique(column).tolist()) - set(lookup)
        if unknown:
            from vbes.errors import InvalidInput

            raise InvalidInput(f"tracks.{name}: values {sorted(unknown)} are not among {list(allowed)}")
        classes[name] = np.searchsorted(np.asarray(allowed), column)
    return ModelSpace(x=x, observed=observed, flags=flags, classes=classes)


def from_model(
    x: np.ndarray,
    flags: np.ndarray,
    classes: Mapping[str, np.ndarray],
    integer_range: Mapping[str, tuple[int, int]] | None = None,
    angle_low: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Physical track columns (the schema's dtypes) from model coordinates; inverse of :func:`to_model`.

    Args:
        x: ``(n, len(COORDINATES))`` continuous coordinates.
        flags: ``(n, len(FLAGS))`` flags, true where ``> 0.5``.
        classes: ``{column: class index}`` of :data:`CATEGORIES`.
        integer_range: ``{column: (lo, hi)}`` the integer columns are clipped to (the training domain).
        angle_low: ``{angle: lo}`` -- each angle (:data:`ANGLES`) comes back in ``[lo, lo + 2π)``; default -π
            (a real DST stores φ0 in [0, 2π), the simulation in [-π, π)).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    out: dict[str, np.ndarray] = {
        name: np.asarray(values)[np.asarray(classes[name])] for name, values in CATEGORIES.items()
    }
    vectors = {c: np.zeros((n, *_FIELDS[c].shape)) for c in ("helix", "chi_dedx", "chi_tof")}
    col = 0
    flag_col = 0
    for s in _SCALARS:
        if s.transform == "angle":
            lo = (angle_low or {}).get(s.name, -np.pi)
            value = lo + np.mod(np.arctan2(x[:, col + 1], x[:, col]) - lo, 2 * np.pi)
            col += 2
        else:
            u = x[:, col]
            if s.transform == "log":
                value = np.exp(np.clip(u, -_MAX_EXP, _MAX_EXP))
            elif s.transform == "asinh":
                value = np.sinh(np.clip(u, -_MAX_EXP, _MAX_EXP))
            elif s.transform == "atanh":
                value = np.tanh(u)
            else:
                value = u
            col += 1
        if s.nonneg:
            value = np.maximum(value, 0.0)
        if s.column == "helix" and s.index == 2:
            value = value * out["charge"]
        if s.flag:
            masked = np.asarray(flags[:, flag_col]) > 0.5
            value = np.where(masked, np.nan if s.flag == "nan" else 0.0, value)
            flag_col += 1
        if s.column in INTEGER_COLUMNS:
            lo, hi = (integer_range or {}).get(s.column, (-(2**15), 2**15 - 1))
            value = np.clip(np.rint(value), lo, hi)
        if s.index is None:
            out[s.column] = value
        else:
            vectors[s.column][:, s.index] = value
        if s.column == "helix" and s.index == 4:
            out["helix_cov"] = _covariance_from_coordinates(x[:, col : col + 15])
            col += 15
    out.update(vectors)
    return {c: np.asarray(out[c]).astype(_FIELDS[c].dtype) for c in MODELLED_COLUMNS}


def flatten(tracks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Modelled columns as 1-D columns (``helix`` -> ``helix_0`` ... ``helix_4``): a table's columns.

    Args:
        tracks: physical track columns.
    """
    flat: dict[str, np.ndarray] = {}
    for c in MODELLED_COLUMNS:
        values = np.asarray(tracks[c])
        if values.ndim == 1:
            flat[c] = values
        else:
            for i in range(values.shape[1]):
                flat[f"{c}_{i}"] = values[:, i]
    return flat


def unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten`, in the schema's dtypes.

    Args:
        flat: 1-D columns as :func:`flatten` names them.

    Raises:
        InvalidInput: a column is missing.
    """
    from vbes.errors import InvalidInput

    out: dict[str, np.ndarray] = {}
    for c in MODELLED_COLUMNS:
        f = _FIELDS[c]
        names = [c] if not f.shape else [f"{c}_{i}" for i in range(f.shape[0])]
        missing = [k for k in names if k not in flat]
        if missing:
            raise InvalidInput(f"track records lack column(s) {', '.join(missing)}")
        parts = [np.asarray(flat[k], dtype=np.float64) for k in names]
        out[c] = (parts[0] if not f.shape else np.stack(parts, axis=1)).astype(f.dtype)
    return out
