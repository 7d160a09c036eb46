"""The DST-level event layout (schema version 3): tables, fields, units, and every older version.

Mirrors the objects of a BESIII DST (``TDstEvent``/``TMcEvent`` as read by pybes3) field by field, so a real
DST maps onto it. An event file holds four tables; objects belong to events through the per-event counts
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
* index columns (``truth_index``, ``emc_index``, ``mother``) point within the same event, -1 for none;
* every field's ``unit`` string names a unit of :data:`UNITS`; both writers (the detector model and DST ingest)
  convert what they have with :func:`to_field_unit`, so the schema is the one place a unit is decided. Two
  BESIII units matter: EMC shower times are TDC ticks of 50 ns in the DST and ns here; ``tracks.dedx`` is the
  DST's ``normPH`` (the truncated-mean pulse height over 550 ADC counts, so Bhabha electrons on the Fermi
  plateau sit near 1 and minimum-ionising pions near 0.74), and ``tracks.dedx_ph`` the same in ADC counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "Field",
    "TABLES",
    "TABLES_V1",
    "TABLES_V2",
    "UNITS",
    "field_spec",
    "to_field_unit",
    "mdc_layer_span",
    "OBJECT_TABLES",
    "COUNT_FIELD",
    "CHANNELS",
    "HYPOTHESES",
    "HYPOTHESIS_MASSES",
    "channel_code",
    "pack_symmetric",
    "unpack_symmetric",
    "SCHEMA_VERSIONS",
    "Migration",
    "MIGRATIONS",
    "layout",
    "migrate_tables",
    "helix_momentum",
    "momentum_sigma",
]

SCHEMA_VERSION = 3

#: ``{table: {field: array}}``
Tables = dict[str, dict[str, np.ndarray]]

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
    "gun": 7,  # single particles of a particle gun (vbes.datasets.gun)
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
        index_into: for index columns, the object table the index points into (within the same event);
            the value is -1 (none) or ``0 <= value < count`` of that table in the event.
        fill: value of the column where a writer or an older schema version does not provide it
            (``None``: the column is required).
    """

    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    unit: str = ""
    description: str = ""
    nan_allowed: bool = False
    mc_only: bool = False
    index_into: str | None = None
    fill: float | int | None = None


_F = Field

#: schema version 1 (frozen: released files use it)
TABLES_V1: dict[str, tuple[Field, ...]] = {
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
        _F(
            "helix",
            "<f8",
            (5,),
            "cm, rad, c/GeV, cm, 1",
            "helix (dr, phi0, kappa, dz, tanl) about the origin",
        ),
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
        _F(
            "chi_dedx",
            "<f4",
            (5,),
            description="dE/dx chi per hypothesis (e, mu, pi, K, p)",
            nan_allowed=True,
        ),
        _F("tof", "<f4", unit="ns", description="time of flight; NaN without a TOF hit", nan_allowed=True),
        _F("tof_path", "<f4", unit="cm", description="flight path to the TOF counter", nan_allowed=True),
        _F("chi_tof", "<f4", (5,), description="TOF chi per hypothesis; NaN without a hit", nan_allowed=True),
        _F("emc_energy", "<f4", unit="GeV", description="energy of the matched EMC shower, 0 if none"),
        _F(
            "emc_index",
            "<i4",
            description="index of the matched shower in this event, -1 if none",
            index_into="showers",
        ),
        _F("muc_depth", "<f4", unit="cm", description="penetration depth in the muon counter, 0 if none"),
        _F(
            "truth_index",
            "<i4",
            description="matched truth particle in this event, -1 if none",
            mc_only=True,
            index_into="truth",
            fill=-1,
        ),
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
        _F(
            "truth_index",
            "<i4",
            description="truth particle that made it, -1 if none",
            mc_only=True,
            index_into="truth",
            fill=-1,
        ),
    ),
    "truth": (
        _F("pdg", "<i4", description="PDG particle id"),
        _F(
            "mother",
            "<i4",
            description="index of the mother in this event, -1 for the primary",
            index_into="truth",
        ),
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

#: fields new in version 2: DST quantities analysts cut on (track-fit quality, shower errors and shape,
#: crystal id, truth bookkeeping). Each has a ``fill`` so version-1 files migrate (NaN / -1 = "not recorded").
_ADDED_V2: dict[str, tuple[Field, ...]] = {
    "events": (),
    "tracks": (
        _F(
            "fit_chi2",
            "<f4",
            description="chi^2 of the Kalman fit stored (mass_hypothesis)",
            nan_allowed=True,
            fill=float("nan"),
        ),
        _F("fit_ndof", "<i2", description="degrees of freedom of that fit, -1 if unknown", fill=-1),
        _F(
            "mdc_layers",
            "<i2",
            description="number of MDC layers with hits on the track, -1 if unknown",
            fill=-1,
        ),
        _F(
            "dedx_ph",
            "<f4",
            description="truncated-mean dE/dx pulse height before normalisation (BOSS probPH)",
            unit="ADC counts",
            nan_allowed=True,
            fill=float("nan"),
        ),
    ),
    "showers": (
        _F(
            "energy_err",
            "<f4",
            unit="GeV",
            description="uncertainty of the energy",
            nan_allowed=True,
            fill=float("nan"),
        ),
        _F(
            "e_seed",
            "<f4",
            unit="GeV",
            description="energy of the seed crystal",
            nan_allowed=True,
            fill=float("nan"),
        ),
        _F(
            "theta_err",
            "<f4",
            unit="rad",
            description="uncertainty of theta",
            nan_allowed=True,
            fill=float("nan"),
        ),
        _F(
            "phi_err",
            "<f4",
            unit="rad",
            description="uncertainty of phi",
            nan_allowed=True,
            fill=float("nan"),
        ),
        _F("a20_moment", "<f4", description="Zernike moment A20", nan_allowed=True, fill=float("nan")),
        _F("a42_moment", "<f4", description="Zernike moment A42", nan_allowed=True, fill=float("nan")),
        _F("cell_id", "<i4", description="BESIII identifier of the seed crystal, -1 if unknown", fill=-1),
        _F("status", "<i4", description="BOSS shower status word, -1 if unknown", fill=-1),
    ),
    "truth": (
        _F(
            "status_flags",
            "<i4",
            description="BOSS McParticle status bits (primary, decayed, ...), -1 unknown",
            mc_only=True,
            fill=-1,
        ),
    ),
}

#: schema version 2 (frozen: released files use it)
TABLES_V2: dict[str, tuple[Field, ...]] = {t: TABLES_V1[t] + _ADDED_V2[t] for t in TABLES_V1}

#: fields new in version 3: the MDC hit span (the real DST's MdcTrack first/last layer)
_ADDED_V3: dict[str, tuple[Field, ...]] = {
    "events": (),
    "tracks": (
        _F("mdc_first_layer", "<i2", description="innermost MDC layer (0-42) with a hit on the track, -1 if unknown",
           fill=-1),
        _F("mdc_last_layer", "<i2", description="outermost MDC layer (0-42) with a hit on the track, -1 if unknown",
           fill=-1),
    ),
    "showers": (),
    "truth": (),
}
#: version 3 states what two version-2 columns mean (the values of a version-2 file are read unchanged: files
#: ingested from DSTs already held these meanings, files of vbes detector model 1 did not -- their provenance
#: says ``detector_model_version`` 1)
_RESTATED_V3: dict[tuple[str, str], dict[str, str]] = {
    ("tracks", "dedx"): {"unit": "normPH", "description": "truncated-mean dE/dx as BESIII's normalised pulse "
                         "height normPH (ADC counts / 550: about 1 for Bhabha electrons, 0.74 at minimum "
                         "ionisation)"},
    ("tracks", "mdc_layers"): {"description": "MDC layers spanned by the track's hits (last - first + 1), "
                               "-1 if unknown"},
    ("showers", "time"): {"description": "shower time relative to the event start time, in steps of the EMC "
                          "TDC tick (50 ns)"},
}


def _restate(table: str, f: Field) -> Field:
    from dataclasses import replace

    new = _RESTATED_V3.get((table, f.name), {})
    return replace(f, unit=new.get("unit", f.unit), description=new.get("description", f.description))


#: the current layout (schema version 3)
TABLES: dict[str, tuple[Field, ...]] = {
    t: tuple(_restate(t, f) for f in TABLES_V2[t]) + _ADDED_V3[t] for t in TABLES_V2
}

#: units the layout uses: name -> (dimension, value of one such unit in the dimension's base unit).
#: Sources: the EMC TDC tick is 50 ns (pybes3.emc.emc_tdc_to_time, BOSS's EmcRecTDS); normPH is BOSS's dE/dx
#: pulse height over 550 ADC counts (in the real DST ../shared/data/besiii-boss-jpsi-rhopi-10evt.dst,
#: m_probPH / m_normPH = 550 for every track).
UNITS: dict[str, tuple[str, float]] = {
    "ns": ("time", 1.0),
    "ps": ("time", 1e-3),
    "EMC TDC tick": ("time", 50.0),
    "cm": ("length", 1.0),
    "mm": ("length", 0.1),
    "cm^2": ("area", 1.0),
    "GeV": ("energy", 1.0),
    "MeV": ("energy", 1e-3),
    "GeV/c": ("momentum", 1.0),
    "MeV/c": ("momentum", 1e-3),
    "rad": ("angle", 1.0),
    "ADC counts": ("pulse height", 1.0),
    "normPH": ("pulse height", 550.0),
}


OBJECT_TABLES = ("tracks", "showers", "truth")
#: the ``events`` column that counts each object table's rows per event
COUNT_FIELD = {"tracks": "n_tracks", "showers": "n_showers", "truth": "n_truth"}


#: every released layout, by version; a file of any of them is readable for ever (migrated on read)
SCHEMA_VERSIONS: dict[int, dict[str, tuple[Field, ...]]] = {1: TABLES_V1, 2: TABLES_V2, 3: TABLES}


@dataclass(frozen=True)
class Migration:
    """How the tables of schema version ``source`` become those of ``source + 1``.

    Args:
        source: the version migrated from.
        added: ``(table, field)`` pairs new in ``source + 1``; filled with the new layout's ``Field.fill``.
        renamed: ``{(table, old_name): new_name}``.
        transform: optional ``f(tables, n_rows) -> tables`` for anything else (unit changes, derived fields).
    """

    source: int
    added: tuple[tuple[str, str], ...] = ()
    renamed: Mapping[tuple[str, str], str] = field(default_factory=dict)
    transform: Callable[[Tables, dict[str, int]], Tables] | None = None


#: ``MIGRATIONS[v]`` turns version ``v`` into ``v + 1``
MIGRATIONS: dict[int, Migration] = {
    1: Migration(1, added=tuple((t, f.name) for t, fs in _ADDED_V2.items() for f in fs)),
    2: Migration(2, added=tuple((t, f.name) for t, fs in _ADDED_V3.items() for f in fs)),
}


def layout(version: int = SCHEMA_VERSION) -> dict[str, tuple[Field, ...]]:
    """The tables and fields of a schema version."""
    from vbes.errors import UnsupportedSchemaVersion

    try:
        return SCHEMA_VERSIONS[version]
    except KeyError:
        raise UnsupportedSchemaVersion(f"unknown schema version {version}") from None


def migrate_tables(tables: Tables, version: int, n_rows: Mapping[str, int]) -> Tables:
    """Bring ``{table: {field: array}}`` read from a version-``version`` file up to :data:`SCHEMA_VERSION`.

    Args:
        tables: the columns read (any subset of the old layout's fields).
        version: the file's schema version.
        n_rows: rows per table in ``tables`` (so added fields get the right length).
    """
    out = {t: dict(cols) for t, cols in tables.items()}
    for v in range(version, SCHEMA_VERSION):
        step = MIGRATIONS[v]
        for (table, old), new in step.renamed.items():
            if table in out and old in out[table]:
                out[table][new] = out[table].pop(old)
        new_fields = {t: {f.name: f for f in fs} for t, fs in layout(v + 1).items()}
        for table, name in step.added:
            if table in out:
                spec = new_fields[table][name]
                out[table][name] = np.full((n_rows[table], *spec.shape), spec.fill, dtype=spec.dtype)
        if step.transform is not None:
            out = step.transform(out, dict(n_rows))
    return out


def field_spec(table: str, name: str, version: int = SCHEMA_VERSION) -> Field:
    """The :class:`Field` ``table.name`` of a schema version."""
    from vbes.errors import SchemaError

    for f in layout(version).get(table, ()):
        if f.name == name:
            return f
    raise SchemaError(f"schema version {version} has no field {table}.{name}")


def to_field_unit(values: np.ndarray | float, unit: str, table: str, name: str) -> np.ndarray:
    """``values`` given in ``unit``, converted to the unit the schema names for ``table.name``.

    Example:
        >>> to_field_unit(np.array([7.0]), "EMC TDC tick", "showers", "time").tolist()
        [350.0]
    """
    from vbes.errors import SchemaError

    target = field_spec(table, name).unit
    try:
        (dim_from, scale_from), (dim_to, scale_to) = UNITS[unit], UNITS[target]
    except KeyError as exc:
        raise SchemaError(f"{table}.{name}: unit {exc.args[0]!r} is not in vbes.datasets.schema.UNITS") from None
    if dim_from != dim_to:
        raise SchemaError(f"{table}.{name}: cannot convert {unit} ({dim_from}) to {target} ({dim_to})")
    return np.asarray(values, dtype=np.float64) * (scale_from / scale_to)


def mdc_layer_span(first_layer: np.ndarray, last_layer: np.ndarray) -> np.ndarray:
    """``tracks.mdc_layers`` from the first and last layer with hits: ``last - first + 1``, -1 where unknown."""
    first, last = np.asarray(first_layer), np.asarray(last_layer)
    return np.where((first >= 0) & (last >= first), last - first + 1, -1).astype(np.int16)


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


def helix_momentum(helix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(px, py, pz)`` in GeV/c of ``(..., 5)`` helices ``(dr, phi0, kappa, dz, tanl)`` at their pivot."""
    helix = np.asarray(helix, dtype=np.float64)
    pt = 1.0 / np.abs(helix[..., 2])
    return -np.sin(helix[..., 1]) * pt, np.cos(helix[..., 1]) * pt, helix[..., 4] * pt


def momentum_sigma(helix: np.ndarray, helix_cov: np.ndarray) -> np.ndarray:
    """Uncertainty of ``p = sqrt(1 + tanl^2) / |kappa|`` from the packed helix covariance (linearised)."""
    helix = np.asarray(helix, dtype=np.float64)
    cov = unpack_symmetric(np.asarray(helix_cov, dtype=np.float64))
    kappa, tanl = helix[..., 2], helix[..., 4]
    root = np.sqrt(1.0 + tanl**2)
    d_kappa = -np.sign(kappa) * root / kappa**2
    d_tanl = tanl / (np.abs(kappa) * root)
    var = d_kappa**2 * cov[..., 2, 2] + d_tanl**2 * cov[..., 4, 4] + 2 * d_kappa * d_tanl * cov[..., 2, 4]
    return np.sqrt(var)
