"""The DST-level event layout (schema version 1): tables, fields, units.

Mirrors the objects of a BESIII DST (``TDstEvent``/``TMcEvent`` as read by pybes3) field by field, so a real DST
maps onto it. An event file holds four tables; objects belong to events through the per-event counts
(``n_tracks``, ``n_showers``, ``n_truth``) in event order:

* ``events``  -- one row per event;
* ``tracks``  -- charged tracks (MDC/Kalman helix and covariance, dE/dx, TOF, EMC match, MUC);
* ``showers`` -- EMC showers;
* ``truth``   -- MC truth particles (MC files only; empty for data).

Conventions (BESIII's):

* helix ``(dr, phi0, kappa, dz, tanl)`` about the pivot (0, 0, 0): ``dr``, ``dz`` in cm, ``phi0`` in rad,
  ``kappa = charge / pT`` in (GeV/c)^-1, ``tanl`` = tan of the dip angle; momentum
  ``px = -sin(phi0)/|kappa|``, ``py = cos(phi0)/|kappa|``, ``pz = tanl/|kappa|`` (as :mod:`pybes3.helix`);
* ``helix_cov`` is the symmetric 5x5 covariance packed as its lower triangle row by row (15 values:
  (0,0), (1,0), (1,1), (2,0), ...), see :func:`pack_symmetric` / :func:`unpack_symmetric`;
* the five particle hypotheses, in this order everywhere: e, mu, pi, K, p;
* run numbers positive for data, negative for MC;
* index columns (``truth_index``, ``emc_index``, ``mother``) point within the same event, -1 for none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "Field",
    "TABLES",
    "OBJECT_TABLES",
    "COUNT_FIELD",
    "CHANNELS",
    "HYPOTHESES",
    "HYPOTHESIS_MASSES",
    "channel_code",
    "pack_symmetric",
    "unpack_symmetric",
]

SCHEMA_VERSION = 1

#: particle hypotheses of dE/dx, TOF and Kalman fits, in BESIII's order
HYPOTHESES = ("e", "mu", "pi", "K", "p")
#: PDG 2024 masses in GeV/c^2, same order as :data:`HYPOTHESES`
HYPOTHESIS_MASSES = (0.51099895e-3, 0.1056583755, 0.13957039, 0.493677, 0.93827208816)

#: channel codes stored in ``events.channel``
CHANNELS: dict[str, int] = {
    "unknown": 0,
    "rhopi": 1,
    "kskpi": 2,
    "ee": 3,
    "mumu": 4,
    "ppbar": 5,
    "inclusive": 6,
}


@dataclass(frozen=True)
class Field:
    """One column of a table.

    Args:
        name: column name.
        dtype: NumPy dtype string (little-endian).
        shape: trailing per-row shape, e.g. ``(5,)`` for one value per hypothesis.
        unit: physical unit ("" for dimensionless).
        description: what the value is.
        nan_allowed: whether NaN is a legal value (it marks "not measured", e.g. no TOF hit).
        mc_only: only present/meaningful in MC files.
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    unit: str = ""
    description: str = ""
    nan_allowed: bool = False
    mc_only: bool = False


_F = Field

TABLES: dict[str, tuple[Field, ...]] = {
    "events": (
        _F("run", "<i4", description="run number: positive data, negative MC"),
        _F("event", "<i8", description="event number within the run"),
        _F("channel", "<i2", description="channel code, see vbes.datasets.schema.CHANNELS"),
        _F("n_tracks", "<i4", description="number of rows of this event in 'tracks'"),
        _F("n_showers", "<i4", description="number of rows of this event in 'showers'"),
        _F("n_truth", "<i4", description="number of rows of this event in 'truth' (0 for data)"),
        _F("weight", "<f4", description="event weight (1 for unweighted samples)"),
    ),
    "tracks": (
        _F("charge", "<i1", description="track charge, +1 or -1"),
        _F("helix", "<f8", (5,), "cm, rad, c/GeV, cm, 1", "helix (dr, phi0, kappa, dz, tanl) about the origin"),
        _F("helix_cov", "<f8", (15,), "mixed", "helix covariance, packed lower triangle"),
        _F("p", "<f4", unit="GeV/c", description="momentum magnitude from the helix"),
        _F("px", "<f4", unit="GeV/c"),
        _F("py", "<f4", unit="GeV/c"),
        _F("pz", "<f4", unit="GeV/c"),
        _F("cos_theta", "<f4", description="cosine of the polar angle"),
        _F("phi", "<f4", unit="rad", description="azimuth of the momentum at the point of closest approach"),
        _F("mass_hypothesis", "<i1", description="index into HYPOTHESES of the Kalman fit stored (2 = pi)"),
        _F("dedx", "<f4", description="normalised truncated-mean dE/dx (1 = minimum ionising)"),
        _F("dedx_nhits", "<i2", description="number of dE/dx hits used"),
        _F("chi_dedx", "<f4", (5,), description="dE/dx chi per hypothesis (e, mu, pi, K, p)", nan_allowed=True),
        _F("tof", "<f4", unit="ns", description="time of flight; NaN without a TOF hit", nan_allowed=True),
        _F("tof_path", "<f4", unit="cm", description="flight path to the TOF counter", nan_allowed=True),
        _F("chi_tof", "<f4", (5,), description="TOF chi per hypothesis; NaN without a hit", nan_allowed=True),
        _F("emc_energy", "<f4", unit="GeV", description="energy of the matched EMC shower, 0 if none"),
        _F("emc_index", "<i4", description="index of the matched shower in this event, -1 if none"),
        _F("muc_depth", "<f4", unit="cm", description="penetration depth in the muon counter, 0 if none"),
        _F("truth_index", "<i4", description="matched truth particle in this event, -1 if none", mc_only=True),
    ),
    "showers": (
        _F("energy", "<f4", unit="GeV", description="deposited energy (corrected)"),
        _F("x", "<f4", unit="cm"),
        _F("y", "<f4", unit="cm"),
        _F("z", "<f4", unit="cm"),
        _F("theta", "<f4", unit="rad"),
        _F("phi", "<f4", unit="rad"),
        _F("time", "<f4", unit="ns", description="shower time relative to the event start time"),
        _F("module", "<i1", description="0 east endcap, 1 barrel, 2 west endcap"),
        _F("n_crystals", "<i2", description="number of crystals in the shower"),
        _F("e3x3", "<f4", unit="GeV", description="energy in the 3x3 crystals around the seed"),
        _F("e5x5", "<f4", unit="GeV", description="energy in the 5x5 crystals around the seed"),
        _F("second_moment", "<f4", unit="cm^2", description="second moment of the shower"),
        _F("lat_moment", "<f4", description="lateral moment"),
        _F("truth_index", "<i4", description="truth particle that made it, -1 if none", mc_only=True),
    ),
    "truth": (
        _F("pdg", "<i4", description="PDG particle id"),
        _F("mother", "<i4", description="index of the mother in this event, -1 for the primary"),
        _F("px", "<f8", unit="GeV/c"),
        _F("py", "<f8", unit="GeV/c"),
        _F("pz", "<f8", unit="GeV/c"),
        _F("e", "<f8", unit="GeV"),
        _F("vx", "<f4", unit="cm", description="production vertex"),
        _F("vy", "<f4", unit="cm"),
        _F("vz", "<f4", unit="cm"),
        _F("final", "<i1", description="1 if the particle leaves the decay chain (reaches the detector)"),
    ),
}

OBJECT_TABLES = ("tracks", "showers", "truth")
#: the ``events`` column that counts each object table's rows per event
COUNT_FIELD = {"tracks": "n_tracks", "showers": "n_showers", "truth": "n_truth"}


def channel_code(name: str) -> int:
    """The ``events.channel`` code of a channel name."""
    from vbes.errors import InvalidInput

    try:
        return CHANNELS[name]
    except KeyError:
        raise InvalidInput(f"unknown channel {name!r}; known: {', '.join(CHANNELS)}") from None


def pack_symmetric(matrices: np.ndarray) -> np.ndarray:
    """Pack ``(..., n, n)`` symmetric matrices into ``(..., n(n+1)/2)`` lower triangles, row by row."""
    n = matrices.shape[-1]
    rows, cols = np.tril_indices(n)
    return matrices[..., rows, cols]


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_symmetric`."""
    m = packed.shape[-1]
    n = int((np.sqrt(8 * m + 1) - 1) / 2)
    rows, cols = np.tril_indices(n)
    out = np.zeros(packed.shape[:-1] + (n, n), dtype=packed.dtype)
    out[..., rows, cols] = packed
    out[..., cols, rows] = packed
    return out
