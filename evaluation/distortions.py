"""Known distortions of an event batch, to show what the evaluation suite catches (tests, benchmark, demo).

Each returns a new ``{table: {field: array}}`` batch and leaves its input untouched:

* :func:`scale_momenta` -- a momentum-scale error (every track's momentum times a factor; helix curvature
  divided by it);
* :func:`widen_resolution` -- a resolution that is ``factor`` times worse, applied with the truth:
  ``reco' = truth + factor * (reco - truth)`` for each truth-matched track's momentum vector and each matched
  photon or electron shower's energy;
* :func:`shuffle_tracks` -- a broken correlation: the momentum vectors of the tracks of one charge are permuted
  across events, so every single-track distribution is unchanged but the two tracks no longer belong together;
* :func:`scale_emc_energy` -- an EMC energy-scale error (every shower's energies and each track's matched EMC
  energy times a factor);
* :func:`drop_tracks` -- a tracking efficiency lower by ``fraction`` (that fraction of tracks removed at random);
* :func:`drop_tof` -- TOF hits lost from ``fraction`` of the tracks that had one.

(A removed radiative tail is not a distortion of a batch: generate with ``fsr=False``.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["drop_tof", "drop_tracks", "scale_emc_energy", "scale_momenta", "shuffle_tracks", "widen_resolution"]

Tables = dict[str, dict[str, np.ndarray]]


def _copy(tables: Mapping[str, Mapping[str, np.ndarray]]) -> Tables:
    return {t: {k: np.array(v, copy=True) for k, v in cols.items()} for t, cols in tables.items()}


def _set_momentum(
    tracks: dict[str, np.ndarray],
    px: np.ndarray,
    py: np.ndarray,
    pz: np.ndarray,
    rows: np.ndarray | slice = slice(None),
) -> None:
    # keep p, angles and the helix consistent with the new momentum vector
    pt = np.hypot(px, py)
    p = np.sqrt(pt**2 + pz**2)
    dtype = tracks["px"].dtype
    tracks["px"][rows], tracks["py"][rows], tracks["pz"][rows] = px.astype(dtype), py.astype(dtype), pz.astype(dtype)
    tracks["p"][rows] = p.astype(tracks["p"].dtype)
    tracks["cos_theta"][rows] = (pz / np.where(p > 0, p, 1)).astype(tracks["cos_theta"].dtype)
    tracks["phi"][rows] = np.arctan2(py, px).astype(tracks["phi"].dtype)
    if "helix" in tracks:
        helix = tracks["helix"]
        charge = np.asarray(tracks["charge"], dtype=np.float64)[rows]
        helix[rows, 1] = np.arctan2(-px, py)  # px = -sin(phi0) pT, py = cos(phi0) pT
        helix[rows, 2] = charge / np.where(pt > 0, pt, np.inf)
        helix[rows, 4] = pz / np.where(pt > 0, pt, 1)


def scale_momenta(tables: Mapping[str, Mapping[str, np.ndarray]], factor: float) -> Tables:
    """Every track's momentum multiplied by ``factor`` (e.g. 1.01 for a 1 % scale error)."""
    out = _copy(tables)
    tracks = out["tracks"]
    px, py, pz = (np.asarray(tracks[c], dtype=np.float64) * factor for c in ("px", "py", "pz"))
    _set_momentum(tracks, px, py, pz)
    return out


def _truth_rows(tables: Mapping[str, Mapping[str, np.ndarray]], table: str, count: str) -> np.ndarray:
    # global truth row of each object's truth_index (-1 where unmatched)
    events = tables["events"]
    owner = np.repeat(np.arange(len(events[count])), np.asarray(events[count], dtype=np.int64))
    truth_offsets = np.concatenate([[0], np.cumsum(np.asarray(events["n_truth"], dtype=np.int64))])
    local = np.asarray(tables[table]["truth_index"], dtype=np.int64)
    return np.where(local >= 0, truth_offsets[owner] + local, -1)


def widen_resolution(tables: Mapping[str, Mapping[str, np.ndarray]], factor: float = 1.2) -> Tables:
    """Resolution ``factor`` times worse, using the truth: ``reco' = truth + factor * (reco - truth)``.

    Applied to truth-matched tracks (momentum vector) and showers of truth-matched photons and electrons
    (energy); other objects are unchanged.
    """
    out = _copy(tables)
    truth = out["truth"]
    tracks = out["tracks"]
    rows = _truth_rows(out, "tracks", "n_tracks")
    matched = rows >= 0
    new = []
    for c in ("px", "py", "pz"):
        reco = np.asarray(tracks[c], dtype=np.float64)[matched]
        true = np.asarray(truth[c], dtype=np.float64)[rows[matched]]
        new.append(true + factor * (reco - true))
    new_px, new_py, new_pz = new
    _set_momentum(tracks, new_px, new_py, new_pz, rows=np.flatnonzero(matched))
    showers = out["showers"]
    rows = _truth_rows(out, "showers", "n_showers")
    # electromagnetic showers only: a muon's or hadron's deposit is not a measurement of its truth energy
    pdg = np.abs(np.asarray(truth["pdg"]))
    matched = rows >= 0
    matched[matched] = np.isin(pdg[rows[matched]], (11, 22))
    reco = np.asarray(showers["energy"], dtype=np.float64)[matched]
    true = np.asarray(truth["e"], dtype=np.float64)[rows[matched]]
    showers["energy"][matched] = np.clip(true + factor * (reco - true), 1e-4, None).astype(showers["energy"].dtype)
    return out


def shuffle_tracks(tables: Mapping[str, Mapping[str, np.ndarray]], charge: int = -1, seed: int = 0) -> Tables:
    """Permute the momentum vectors of all tracks of ``charge`` across events (a broken two-track correlation)."""
    out = _copy(tables)
    tracks = out["tracks"]
    rows = np.flatnonzero(np.asarray(tracks["charge"]) == charge)
    perm = np.random.default_rng(seed).permutation(rows)
    px, py, pz = (np.asarray(tracks[c], dtype=np.float64)[perm] for c in ("px", "py", "pz"))
    _set_momentum(tracks, px, py, pz, rows=rows)
    return out


def scale_emc_energy(tables: Mapping[str, Mapping[str, np.ndarray]], factor: float) -> Tables:
    """Every shower's energies (``energy``, ``e3x3``, ``e5x5``) and each track's matched EMC energy times ``factor``."""
    out = _copy(tables)
    for column in ("energy", "e3x3", "e5x5"):
        if column in out["showers"]:
            values = out["showers"][column]
            out["showers"][column] = (np.asarray(values, dtype=np.float64) * factor).astype(values.dtype)
    energy = out["tracks"]["emc_energy"]
    out["tracks"]["emc_energy"] = (np.asarray(energy, dtype=np.float64) * factor).astype(energy.dtype)
    return out


def drop_tracks(tables: Mapping[str, Mapping[str, np.ndarray]], fraction: float, seed: int = 0) -> Tables:
    """Remove ``fraction`` of all tracks at random (a lower tracking efficiency); ``n_tracks`` follows."""
    out = _copy(tables)
    n_tracks = np.asarray(out["events"]["n_tracks"], dtype=np.int64)
    keep = np.random.default_rng(seed).random(int(n_tracks.sum())) >= fraction
    owner = np.repeat(np.arange(n_tracks.size), n_tracks)
    out["tracks"] = {name: values[keep] for name, values in out["tracks"].items()}
    counts = np.bincount(owner[keep], minlength=n_tracks.size)
    out["events"]["n_tracks"] = counts.astype(out["events"]["n_tracks"].dtype)
    return out


def drop_tof(tables: Mapping[str, Mapping[str, np.ndarray]], fraction: float, seed: int = 0) -> Tables:
    """Lose the TOF hit of ``fraction`` of the tracks that have one (their ``tof`` becomes NaN)."""
    out = _copy(tables)
    tracks = out["tracks"]
    has = np.flatnonzero(np.isfinite(np.asarray(tracks["tof"], dtype=np.float64)))
    lost = has[np.random.default_rng(seed).random(has.size) < fraction]
    tracks["tof"][lost] = np.nan
    for column in ("tof_path", "chi_tof"):
        if column in tracks and tracks[column].dtype.kind == "f":
            tracks[column][lost] = np.nan
    return out

