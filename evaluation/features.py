"""The fixed, documented feature set per channel: one row per event, the same columns for every sample.

Objects have variable multiplicity, so each channel has a fixed number of *slots*:

* tracks are ordered by charge (positive first), then by momentum (highest first); showers by energy;
* slot ``k`` of an event without a k-th object is NaN (the classifier routes NaN natively; per-feature
  metrics compare the fraction of present values separately).

Columns, in this order:

==========================  =========================================================================================
``n_tracks``, ``n_showers``  object counts; ``n_photons``: good photons (below)
``track{k}_<var>``          for each track slot: ``p`` [GeV/c], ``cos_theta``, ``phi`` [rad], ``dedx``, ``chi_dedx_<h>``
                            for h in e, mu, pi, K, p, ``tof`` [ns], ``e_over_p`` (matched EMC energy / p),
                            ``muc_depth`` [cm]
``shower{k}_<var>``         for each shower slot: ``energy`` [GeV], ``cos_theta``, ``phi`` [rad], ``time`` [ns],
                            ``n_crystals``, ``e3x3_over_e5x5``, ``lat_moment``
derived (per channel)       invariant masses [GeV/c^2] and momenta in the J/psi frame, see :data:`CHANNEL_FEATURES`
==========================  =========================================================================================

Slots per channel: ``ee``/``mumu``/``ppbar`` 2 tracks and 2 showers; ``rhopi`` 2 tracks, 3 showers; ``kskpi``
4 tracks, 2 showers; ``inclusive`` (and unknown channels) 4 tracks, 4 showers.

A *good photon* (BESIII's common selection): a shower not matched to a track, with E > 25 MeV in the barrel
(|cos theta| < 0.80) or E > 50 MeV in the endcaps (0.86 < |cos theta| < 0.92).

Resolutions (for W1 in units of resolution) follow the detector figures of MISSION.md, evaluated at the
reference's median value of the feature: momentum 0.5 % of p (sigma(pT)/pT at 1 GeV/c; the multiple-scattering
term neglected), shower energy 2.5 % x sqrt(E/GeV) (2.5 % at 1 GeV; the 1/sqrt(E) scaling is the usual
stochastic term, an assumption), dE/dx 6 %, TOF 90 ps (barrel 80-100 ps), chi's 1 (they are in units of their
resolution), E/p 2.5 %, pi0 mass 6 MeV (5-7 MeV), K_S mass 2.5 MeV (2-3 MeV), two-body masses and J/psi-frame
momenta 0.5 % of the value. Features without a published resolution (angles, counts, shapes) have none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from vbes.datasets.schema import CHANNELS, HYPOTHESES, HYPOTHESIS_MASSES

from vbes.errors import InvalidInput

__all__ = [
    "CHANNEL_FEATURES",
    "CROSSING_ANGLE",
    "JPSI_MASS",
    "KS_MASS",
    "PI0_MASS",
    "SHOWER_VARIABLES",
    "TRACK_VARIABLES",
    "FeatureTable",
    "Objects",
    "boost_to_rest_frame",
    "channel_of",
    "derived_quantities",
    "feature_table",
    "good_photon_mask",
    "invariant_mass",
    "jpsi_four_momentum",
    "mass_squared",
    "object_slots",
    "slot_values",
    "table_from_array",
]

#: PDG masses in GeV/c^2
JPSI_MASS = 3.096900
PI0_MASS = 0.1349768
KS_MASS = 0.497611
#: BEPCII half crossing angle (11 mrad per beam): the J/psi moves along +x in the detector frame
CROSSING_ANGLE = 0.011

TRACK_VARIABLES = (
    "p",
    "cos_theta",
    "phi",
    "dedx",
    *(f"chi_dedx_{h}" for h in HYPOTHESES),
    "tof",
    "e_over_p",
    "muc_depth",
)
SHOWER_VARIABLES = ("energy", "cos_theta", "phi", "time", "n_crystals", "e3x3_over_e5x5", "lat_moment")

#: channel -> (track slots, shower slots, derived feature names)
CHANNEL_FEATURES: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "ee": (2, 2, ("m_ll", "p_cm_plus", "p_cm_minus")),
    "mumu": (2, 2, ("m_ll", "p_cm_plus", "p_cm_minus")),
    "ppbar": (2, 2, ("m_ll", "p_cm_plus", "p_cm_minus")),
    "rhopi": (2, 3, ("m_gg", "m_pipi", "m_pip_pi0", "m_pim_pi0", "m2_recoil_pipi", "m_all")),
    "kskpi": (4, 2, ("m_ks", "m2_recoil_kpi", "m_all")),
    "inclusive": (4, 4, ("e_visible", "m_visible")),
}

# mass hypothesis of the tracks of a two-track channel
_PAIR_MASS = {"ee": HYPOTHESIS_MASSES[0], "mumu": HYPOTHESIS_MASSES[1], "ppbar": HYPOTHESIS_MASSES[4]}
_PION_MASS = HYPOTHESIS_MASSES[2]
_KAON_MASS = HYPOTHESIS_MASSES[3]

# resolution rule per variable: ("relative", r) -> r * |median|; ("stochastic", r) -> r * sqrt(median);
# ("absolute", s) -> s
_RESOLUTION_RULES: dict[str, tuple[str, float]] = {
    "p": ("relative", 0.005),
    "energy": ("stochastic", 0.025),
    "dedx": ("relative", 0.06),
    "tof": ("absolute", 0.09),
    "e_over_p": ("absolute", 0.025),
    **{f"chi_dedx_{h}": ("absolute", 1.0) for h in HYPOTHESES},
    "m_gg": ("absolute", 0.006),
    "m_ks": ("absolute", 0.0025),
    "m_ll": ("relative", 0.005),
    "p_cm_plus": ("relative", 0.005),
    "p_cm_minus": ("relative", 0.005),
    "m_all": ("relative", 0.005),
}


@dataclass
class FeatureTable:
    """Events as rows, named features as columns (float64; NaN = absent).

    Args:
        names: column names.
        values: array ``(n_events, n_features)``.
        units: unit per column ("" when dimensionless).
        resolution_rules: per column, how its resolution follows from the reference (see module docstring).
        channel: the channel the feature set belongs to ("" for a plain numeric table).
    """

    names: tuple[str, ...]
    values: np.ndarray
    units: dict[str, str] = field(default_factory=dict)
    resolution_rules: dict[str, tuple[str, float]] = field(default_factory=dict)
    channel: str = ""

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise InvalidInput(f"feature values of shape {self.values.shape} do not match {len(self.names)} names")

    def __len__(self) -> int:
        return self.values.shape[0]

    def column(self, name: str) -> np.ndarray:
        """One feature's values."""
        try:
            return self.values[:, self.names.index(name)]
        except ValueError:
            raise InvalidInput(f"no feature {name!r}; known: {', '.join(self.names)}") from None

    def subset(self, rows: np.ndarray) -> FeatureTable:
        """The same table restricted to ``rows``."""
        return FeatureTable(self.names, self.values[rows], self.units, self.resolution_rules, self.channel)

    def resolution(self, name: str, reference_values: np.ndarray) -> float | None:
        """The feature's resolution at the reference's median value, or None where none is defined."""
        rule = self.resolution_rules.get(name)
        if rule is None:
            return None
        kind, scale = rule
        values = reference_values[np.isfinite(reference_values)]
        median = float(np.median(np.abs(values))) if values.size else 0.0
        if kind == "absolute":
            return scale
        if kind == "relative":
            return scale * median if median > 0 else None
        return scale * np.sqrt(median) if median > 0 else None


def table_from_array(values: np.ndarray | Mapping[str, np.ndarray], names: list[str] | None = None) -> FeatureTable:
    """A :class:`FeatureTable` from a plain numeric table: a 2-D array, a structured array or a dict of columns.

    Example:
        >>> import numpy as np
        >>> table_from_array(np.zeros((3, 2)), ["a", "b"]).names
        ('a', 'b')
    """
    if isinstance(values, Mapping):
        names = list(values)
        columns = [np.asarray(values[n], dtype=np.float64).ravel() for n in names]
        lengths = {len(c) for c in columns}
        if len(lengths) > 1:
            raise InvalidInput(f"columns have different lengths: {sorted(lengths)}")
        return FeatureTable(tuple(names), np.column_stack(columns) if columns else np.zeros((0, 0)))
    array = np.asarray(values)
    if array.dtype.names:
        return table_from_array({n: array[n] for n in array.dtype.names})
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise InvalidInput(f"a numeric table must be 2-D (events, features); got shape {array.shape}")
    names = names or [f"x{i}" for i in range(array.shape[1])]
    if len(names) != array.shape[1]:
        raise InvalidInput(f"{len(names)} names for {array.shape[1]} columns")
    if not np.issubdtype(array.dtype, np.number):
        raise InvalidInput(f"a numeric table must hold numbers; got dtype {array.dtype}")
    return FeatureTable(tuple(names), array)


def channel_of(tables: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """The channel name of an event batch (the most common ``events.channel`` code)."""
    codes = np.asarray(tables["events"]["channel"])
    if codes.size == 0:
        return "unknown"
    code = int(np.bincount(codes.astype(np.int64) - codes.min()).argmax() + codes.min())
    names = {v: k for k, v in CHANNELS.items()}
    return names.get(code, "unknown")


@dataclass
class Objects:
    """Per-event views of an event batch: which event each object row belongs to and its rank in the event."""

    n_events: int
    track_event: np.ndarray
    track_rank: np.ndarray
    shower_event: np.ndarray
    shower_rank: np.ndarray
    photon: np.ndarray
    photon_rank: np.ndarray


def _event_index(counts: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), np.asarray(counts, dtype=np.int64))


def _rank(event: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    # rank of each row within its event after sorting by keys (last key primary after the event)
    order = np.lexsort((*keys, event))
    ranks = np.empty(len(event), dtype=np.int64)
    sorted_event = event[order]
    starts = np.searchsorted(sorted_event, sorted_event, side="left")
    ranks[order] = np.arange(len(event)) - starts
    return ranks


def good_photon_mask(tables: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Good photons: unmatched showers above 25 MeV (barrel) or 50 MeV (endcaps), see the module docstring."""
    events, tracks, showers = tables["events"], tables["tracks"], tables["showers"]
    energy = np.asarray(showers["energy"], dtype=np.float64)
    cos = np.abs(np.cos(np.asarray(showers["theta"], dtype=np.float64)))
    good = ((cos < 0.80) & (energy > 0.025)) | ((cos > 0.86) & (cos < 0.92) & (energy > 0.050))
    n_showers = np.asarray(events["n_showers"], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_showers)])
    matched = np.asarray(tracks["emc_index"], dtype=np.int64)
    track_event = _event_index(events["n_tracks"])
    has = matched >= 0
    good[offsets[track_event[has]] + matched[has]] = False
    return good


def object_slots(tables: Mapping[str, Mapping[str, np.ndarray]]) -> Objects:
    """Event membership and in-event ranks of tracks (charge, then p), showers and good photons (energy)."""
    events, tracks, showers = tables["events"], tables["tracks"], tables["showers"]
    track_event = _event_index(events["n_tracks"])
    shower_event = _event_index(events["n_showers"])
    track_rank = _rank(track_event, -np.asarray(tracks["p"], dtype=np.float64), -np.asarray(tracks["charge"]))
    energy = np.asarray(showers["energy"], dtype=np.float64)
    shower_rank = _rank(shower_event, -energy)
    photon = good_photon_mask(tables)
    photon_rank = np.full(len(energy), -1, dtype=np.int64)
    photon_rank[photon] = _rank(shower_event[photon], -energy[photon])
    return Objects(len(events["n_tracks"]), track_event, track_rank, shower_event, shower_rank, photon, photon_rank)


def slot_values(values: np.ndarray, event: np.ndarray, rank: np.ndarray, k: int, n_events: int) -> np.ndarray:
    """Per-event array of the rank-``k`` object's ``values`` (NaN for events without one)."""
    out = np.full(n_events, np.nan)
    sel = rank == k
    out[event[sel]] = values[sel]
    return out


def jpsi_four_momentum() -> np.ndarray:
    """(E, px, py, pz) of a J/psi at rest in the e+e- frame, in the detector frame (crossing angle along +x)."""
    px = JPSI_MASS * np.tan(CROSSING_ANGLE)
    return np.array([np.hypot(JPSI_MASS, px), px, 0.0, 0.0])


def mass_squared(*four_momenta: np.ndarray) -> np.ndarray:
    """Squared invariant mass of the sum of four-momenta ``(..., 4)`` = (E, px, py, pz); may be negative."""
    total = np.sum(four_momenta, axis=0)
    return total[..., 0] ** 2 - np.sum(total[..., 1:] ** 2, axis=-1)


def invariant_mass(*four_momenta: np.ndarray) -> np.ndarray:
    """Invariant mass of the sum of four-momenta ``(..., 4)`` = (E, px, py, pz); NaN propagates."""
    m2 = mass_squared(*four_momenta)
    return np.sqrt(np.clip(m2, 0, None))


def boost_to_rest_frame(p4: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Lorentz-boost four-momenta ``(..., 4)`` into the rest frame of ``frame`` (E, px, py, pz)."""
    beta = frame[1:] / frame[0]
    b2 = float(beta @ beta)
    if b2 == 0:
        return p4
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = p4[..., 1:] @ beta
    energy = gamma * (p4[..., 0] - bp)
    coef = (gamma - 1.0) * bp / b2 - gamma * p4[..., 0]
    return np.concatenate([energy[..., None], p4[..., 1:] + coef[..., None] * beta], axis=-1)


def _track_p4(tables: Mapping[str, Mapping[str, np.ndarray]], mass: float | np.ndarray) -> np.ndarray:
    tracks = tables["tracks"]
    p3 = np.column_stack([np.asarray(tracks[c], dtype=np.float64) for c in ("px", "py", "pz")])
    energy = np.sqrt(np.sum(p3**2, axis=1) + np.asarray(mass) ** 2)
    return np.column_stack([energy, p3])


def _shower_p4(tables: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    showers = tables["showers"]
    energy = np.asarray(showers["energy"], dtype=np.float64)
    theta = np.asarray(showers["theta"], dtype=np.float64)
    phi = np.asarray(showers["phi"], dtype=np.float64)
    return np.column_stack(
        [energy, energy * np.sin(theta) * np.cos(phi), energy * np.sin(theta) * np.sin(phi), energy * np.cos(theta)]
    )


def _slot_p4(p4: np.ndarray, event: np.ndarray, rank: np.ndarray, k: int, n_events: int) -> np.ndarray:
    return np.column_stack([slot_values(p4[:, i], event, rank, k, n_events) for i in range(4)])


def derived_quantities(
    tables: Mapping[str, Mapping[str, np.ndarray]], channel: str, objects: Objects | None = None
) -> dict[str, np.ndarray]:
    """The channel's derived per-event quantities (NaN where the event lacks the objects).

    ``m_ll``: mass of the two leading tracks (e, mu or p hypothesis), ``p_cm_plus/minus``: their momenta in the
    J/psi frame; ``m_gg``: the two leading good photons; ``m_pipi``, ``m_pip_pi0``, ``m_pim_pi0``: pi+pi-,
    pi+(gg), pi-(gg); ``m2_recoil_pipi``: squared mass recoiling against pi+pi- (squared: its resolution near
    the pi0 mass is wider than the mass itself, so it goes negative); ``m_all``: every
    selected final-state particle (the J/psi mass); ``m_ks``: the opposite-charge pion pair nearest the K_S mass,
    ``m2_recoil_kpi``: the squared mass recoiling against the other two tracks (K by dE/dx, pi); ``e_visible``,
    ``m_visible``: sums over all tracks (pi hypothesis) and unmatched good photons.
    """
    objects = objects or object_slots(tables)
    n = objects.n_events
    tracks = tables["tracks"]
    jpsi = jpsi_four_momentum()
    out: dict[str, np.ndarray] = {}
    charge = np.asarray(tracks["charge"])
    if channel in _PAIR_MASS:
        p4 = _track_p4(tables, _PAIR_MASS[channel])
        plus = _slot_p4(p4, objects.track_event, objects.track_rank, 0, n)
        minus = _slot_p4(p4, objects.track_event, objects.track_rank, 1, n)
        q0 = slot_values(charge.astype(float), objects.track_event, objects.track_rank, 0, n)
        q1 = slot_values(charge.astype(float), objects.track_event, objects.track_rank, 1, n)
        pair = (q0 * q1 == -1) & (np.asarray(tables["events"]["n_tracks"]) == 2)
        out["m_ll"] = np.where(pair, invariant_mass(plus, minus), np.nan)
        for name, p in (("p_cm_plus", plus), ("p_cm_minus", minus)):
            cm = boost_to_rest_frame(p, jpsi)
            out[name] = np.where(pair, np.linalg.norm(cm[:, 1:], axis=1), np.nan)
    elif channel == "rhopi":
        p4 = _track_p4(tables, _PION_MASS)
        pip = _slot_p4(p4, objects.track_event, objects.track_rank, 0, n)
        pim = _slot_p4(p4, objects.track_event, objects.track_rank, 1, n)
        q0 = slot_values(charge.astype(float), objects.track_event, objects.track_rank, 0, n)
        q1 = slot_values(charge.astype(float), objects.track_event, objects.track_rank, 1, n)
        ok = (q0 == 1) & (q1 == -1)
        g4 = _shower_p4(tables)
        sel = objects.photon
        g1 = _slot_p4(g4[sel], objects.shower_event[sel], objects.photon_rank[sel], 0, n)
        g2 = _slot_p4(g4[sel], objects.shower_event[sel], objects.photon_rank[sel], 1, n)
        pi0 = g1 + g2
        out["m_gg"] = invariant_mass(g1, g2)
        out["m_pipi"] = np.where(ok, invariant_mass(pip, pim), np.nan)
        out["m_pip_pi0"] = np.where(ok, invariant_mass(pip, pi0), np.nan)
        out["m_pim_pi0"] = np.where(ok, invariant_mass(pim, pi0), np.nan)
        out["m2_recoil_pipi"] = np.where(ok, mass_squared(jpsi - pip - pim), np.nan)
        out["m_all"] = np.where(ok, invariant_mass(pip, pim, pi0), np.nan)
    elif channel == "kskpi":
        pi4 = _track_p4(tables, _PION_MASS)
        k4 = _track_p4(tables, _KAON_MASS)
        slots = [_slot_p4(pi4, objects.track_event, objects.track_rank, k, n) for k in range(4)]
        kslots = [_slot_p4(k4, objects.track_event, objects.track_rank, k, n) for k in range(4)]
        qs = [slot_values(charge.astype(float), objects.track_event, objects.track_rank, k, n) for k in range(4)]
        chi_k = np.abs(np.asarray(tracks["chi_dedx"], dtype=np.float64)[:, 3])
        chi_pi = np.abs(np.asarray(tracks["chi_dedx"], dtype=np.float64)[:, 2])
        kaonness = [slot_values(chi_k - chi_pi, objects.track_event, objects.track_rank, k, n) for k in range(4)]
        best = np.full(n, np.inf)
        m_ks = np.full(n, np.nan)
        recoil = np.full(n, np.nan)
        m_all = np.full(n, np.nan)
        four = np.asarray(tables["events"]["n_tracks"]) == 4
        for i in range(4):
            for j in range(i + 1, 4):
                rest = [r for r in range(4) if r not in (i, j)]
                m = invariant_mass(slots[i], slots[j])
                better = four & (qs[i] * qs[j] == -1) & (np.abs(m - KS_MASS) < best)
                # of the other two tracks, the more kaon-like by dE/dx is the kaon
                k_first = np.nan_to_num(kaonness[rest[0]], nan=9) <= np.nan_to_num(kaonness[rest[1]], nan=9)
                kaon = np.where(k_first[:, None], kslots[rest[0]], kslots[rest[1]])
                pion = np.where(k_first[:, None], slots[rest[1]], slots[rest[0]])
                best = np.where(better, np.abs(m - KS_MASS), best)
                m_ks = np.where(better, m, m_ks)
                recoil = np.where(better, mass_squared(jpsi - kaon - pion), recoil)
                m_all = np.where(better, invariant_mass(slots[i], slots[j], kaon, pion), m_all)
        out["m_ks"], out["m2_recoil_kpi"], out["m_all"] = m_ks, recoil, m_all
    else:
        p4 = _track_p4(tables, _PION_MASS)
        g4 = _shower_p4(tables)[objects.photon]
        total = np.zeros((n, 4))
        np.add.at(total, objects.track_event, p4)
        np.add.at(total, objects.shower_event[objects.photon], g4)
        out["e_visible"] = total[:, 0]
        out["m_visible"] = invariant_mass(total)
    return out


def _track_variable(tables: Mapping[str, Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    tracks = tables["tracks"]
    if name.startswith("chi_dedx_"):
        return np.asarray(tracks["chi_dedx"], dtype=np.float64)[:, HYPOTHESES.index(name[len("chi_dedx_") :])]
    if name == "e_over_p":
        p = np.asarray(tracks["p"], dtype=np.float64)
        return np.asarray(tracks["emc_energy"], dtype=np.float64) / np.where(p > 0, p, np.nan)
    return np.asarray(tracks[name], dtype=np.float64)


def _shower_variable(tables: Mapping[str, Mapping[str, np.ndarray]], name: str) -> np.ndarray:
    showers = tables["showers"]
    if name == "cos_theta":
        return np.cos(np.asarray(showers["theta"], dtype=np.float64))
    if name == "e3x3_over_e5x5":
        e5 = np.asarray(showers["e5x5"], dtype=np.float64)
        return np.asarray(showers["e3x3"], dtype=np.float64) / np.where(e5 > 0, e5, np.nan)
    return np.asarray(showers[name], dtype=np.float64)


_UNITS = {"p": "GeV/c", "phi": "rad", "tof": "ns", "muc_depth": "cm", "energy": "GeV", "time": "ns", "e_visible": "GeV"}


def feature_table(tables: Mapping[str, Mapping[str, np.ndarray]], channel: str | None = None) -> FeatureTable:
    """The channel's fixed feature set of an event batch (``{table: {field: array}}`` as read from a file).

    Args:
        tables: events, tracks and showers tables.
        channel: channel name; default: the batch's own ``events.channel``.
    """
    channel = channel or channel_of(tables)
    n_track_slots, n_shower_slots, _derived = CHANNEL_FEATURES.get(channel, CHANNEL_FEATURES["inclusive"])
    objects = object_slots(tables)
    n = objects.n_events
    events = tables["events"]
    columns: dict[str, np.ndarray] = {
        "n_tracks": np.asarray(events["n_tracks"], dtype=np.float64),
        "n_showers": np.asarray(events["n_showers"], dtype=np.float64),
        "n_photons": np.bincount(objects.shower_event[objects.photon], minlength=n).astype(np.float64),
    }
    units: dict[str, str] = {}
    rules: dict[str, tuple[str, float]] = {}
    for k in range(n_track_slots):
        for var in TRACK_VARIABLES:
            name = f"track{k}_{var}"
            columns[name] = slot_values(_track_variable(tables, var), objects.track_event, objects.track_rank, k, n)
            units[name] = _UNITS.get(var, "")
            if var in _RESOLUTION_RULES:
                rules[name] = _RESOLUTION_RULES[var]
    for k in range(n_shower_slots):
        for var in SHOWER_VARIABLES:
            name = f"shower{k}_{var}"
            columns[name] = slot_values(_shower_variable(tables, var), objects.shower_event, objects.shower_rank, k, n)
            units[name] = _UNITS.get(var, "")
            if var in _RESOLUTION_RULES:
                rules[name] = _RESOLUTION_RULES[var]
    for name, values in derived_quantities(tables, channel, objects).items():
        columns[name] = values
        units[name] = _UNITS.get(
            name, "GeV/c" if name.startswith("p_") else "GeV^2/c^4" if name.startswith("m2_") else "GeV/c^2"
        )
        if name in _RESOLUTION_RULES:
            rules[name] = _RESOLUTION_RULES[name]
    names = tuple(columns)
    return FeatureTable(names, np.column_stack([columns[c] for c in names]), units, rules, channel)
