"""Formats users bring: real BESIII DSTs, ROOT ntuples (flat or jagged) with a mapping file, export to ROOT.

* :func:`ingest_besiii_dst` reads a BOSS DST with pybes3 + uproot and maps its objects onto the layout:
  charged tracks are the ``EvtRecTrack`` entries with a Kalman track (the pion-hypothesis fit ``zhelix`` about
  the pivot (0, 0, 0), in cm / rad / (GeV/c)^-1, with its 5x5 error matrix), their dE/dx (``normPH``, the five
  chi's), TOF (the best combined measurement: cluster > counter > single readout; chi = (t - t_exp)/sigma),
  matched EMC shower and MUC depth, the MdcTrack's first and last layer; every EMC shower; every MC particle
  with truth matching (tracks by angle, showers by the end point of the particle). Values are converted from
  the DST's units (:data:`DST_UNITS`: EMC times in TDC ticks, dE/dx in normPH) to the schema's with
  :func:`vbes.datasets.schema.to_field_unit`, the same conversion the detector model writes through.
* :func:`ingest_root` converts any TTree with a mapping file (YAML, see ``datasets/data/cms-zmumu.map.yaml``).
* :func:`export_root` writes an event file as a ROOT TTree (jagged branches per object table) that
  :func:`ingest_root` reads back without a mapping file, value for value.

Example::

    vbes ingest besiii.dst --format besiii-dst -o besiii.h5
    vbes ingest zmumu.root --tree events --map cms-zmumu.map.yaml -o zmumu.h5
    vbes export-root zmumu.h5 -o zmumu-vbes.root
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vbes.datasets.eventfile import EventWriter, _one_line, check_output_path, file_info, iter_events
from vbes.datasets.numeric import same_event_pairs as _same_event_pairs
from vbes.datasets.schema import (
    COUNT_FIELD,
    OBJECT_TABLES,
    SCHEMA_VERSION,
    TABLES,
    Tables,
    channel_code,
    helix_momentum,
    mdc_layer_span,
    pack_symmetric,
    to_field_unit,
)
from vbes.errors import InvalidInput, NotFound, SchemaError

__all__ = [
    "ingest_besiii_dst",
    "ingest_root",
    "export_root",
    "load_mapping",
    "example_mapping_path",
    "TRACK_MATCH_MAX_ANGLE",
    "SHOWER_MATCH_MAX_DISTANCE",
    "DST_UNITS",
]

T = TypeVar("T")
#: a progress wrapper such as :func:`vbes.cli.progress`: ``wrap(iterable, total=..., desc=..., unit=...)``
Progress = Callable[..., Iterable[Any]]

#: a reconstructed track is matched to the truth particle of its charge closest in direction, if within this
TRACK_MATCH_MAX_ANGLE = 0.1  # rad
#: a shower without a track is matched to the final-state particle whose end point is nearest, if within this
SHOWER_MATCH_MAX_DISTANCE = 15.0  # cm
#: units of the DST values that are not already in the schema's unit, by ``table.field`` they fill
#: (BESIII analyses cut the EMC time at 0 <= t <= 14 ticks = 700 ns)
DST_UNITS = {
    "showers.time": "EMC TDC tick",  # RecEmcShower::time()
    "tracks.dedx": "normPH",  # RecMdcDedx::normPH()
    "tracks.dedx_ph": "ADC counts",  # RecMdcDedx::probPH()
}
#: charges of the long-lived charged particles a drift chamber sees, by PDG id
_CHARGE_BY_PDG = {11: -1, 13: -1, 211: 1, 321: 1, 2212: 1}
#: BOSS McParticle status bits
_MC_PRIMARY, _MC_LEAF = 4, 8
#: BOSS TofHitStatus bits: a single readout, a counter (both ends), a cluster (both layers)
_TOF_READOUT, _TOF_COUNTER, _TOF_CLUSTER = 0x2, 0x4, 0x8

_DST_BRANCHES = {
    "event": "TEvtHeader/m_eventId",
    "run": "TEvtHeader/m_runId",
    "rec": "TEvtRecObject/m_evtRecTrackCol",
    "kal": "TDstEvent/m_mdcKalTrackCol",
    "mdc": "TDstEvent/m_mdcTrackCol",
    "dedx": "TDstEvent/m_mdcDedxCol",
    "tof": "TDstEvent/m_tofTrackCol",
    "emc": "TDstEvent/m_emcTrackCol",
    "muc": "TDstEvent/m_mucTrackCol",
    "mc": "TMcEvent/m_mcParticleCol",
}


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - every dependency is installed
        return "unknown"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _no_progress(iterable: Iterable[T], **_: Any) -> Iterable[T]:
    return iterable


def _open_root(path: Path, tree: str) -> tuple[Any, Any]:
    """``(directory, tree)`` of a ROOT file; one clear error for a missing file, non-ROOT input or tree."""
    import uproot

    if not path.exists():
        raise NotFound(f"{path}: no such file")
    try:
        root_file = uproot.open(path)
    except Exception as exc:  # uproot raises many types for non-ROOT input
        raise InvalidInput(
            f"{path}: not a readable ROOT file ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    if tree not in root_file:
        keys = ", ".join(sorted({k.split(";")[0] for k in root_file.keys(recursive=False)})) or "none"
        raise InvalidInput(f"{path}: no tree {tree!r} (objects in the file: {keys})")
    return root_file, _read_root(path, f"tree {tree!r}", lambda: root_file[tree])


def _read_root(source: Path, what: str, read: Callable[[], T]) -> T:
    """``read()`` of ``what`` from a ROOT file; a damaged file (uproot raises many types) as one clear line."""
    try:
        return read()
    except Exception as exc:
        raise InvalidInput(
            f"{source}: cannot read {what} ({type(exc).__name__}: {_one_line(exc)}); "
            "the file is truncated or corrupt"
        ) from None


# --- BESIII DST ----------------------------------------------------------------------------------------


class _Flat:
    """A jagged per-event collection flattened to NumPy.

    ``owner``: event of each row; ``start``: first row of each event; ``counts``: rows per event.
    """

    def __init__(self, jagged: Any) -> None:
        import awkward as ak

        self.counts = ak.to_numpy(ak.num(jagged, axis=1)).astype(np.int64)
        self.flat = ak.flatten(jagged, axis=1)
        self.owner = np.repeat(np.arange(len(self.counts)), self.counts)
        self.start = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def __getitem__(self, field: str) -> np.ndarray:
        import awkward as ak

        return np.asarray(ak.to_numpy(self.flat[field]))

    def __len__(self) -> int:
        return len(self.owner)


def _lookup(
    owner_src: np.ndarray, key_src: np.ndarray, owner_tgt: np.ndarray, key_tgt: np.ndarray
) -> np.ndarray:
    """Row of the target whose (event, id) equals each source (event, id); -1 where none (or id < 0)."""

    def combine(owner: np.ndarray, key: np.ndarray) -> np.ndarray:
        return owner.astype(np.int64) * (1 << 33) + (key.astype(np.int64) + (1 << 32))

    tgt = combine(owner_tgt, key_tgt)
    order = np.argsort(tgt, kind="stable")
    src = combine(owner_src, key_src)
    pos = np.searchsorted(tgt[order], src)
    pos_clipped = np.minimum(pos, max(len(tgt) - 1, 0))
    found = (pos < len(tgt)) & (key_src >= 0)
    if len(tgt):
        found &= tgt[order][pos_clipped] == src
    return np.where(found, order[pos_clipped] if len(tgt) else -1, -1)


def _tof_best(tof: _Flat) -> tuple[np.ndarray, np.ndarray]:
    """Per TOF row its priority; the best row per (event, track id) is returned as (owner, track id, row)."""
    status = tof["m_status"].astype(np.int64)
    priority = np.select(
        [(status & _TOF_CLUSTER) > 0, (status & _TOF_COUNTER) > 0, (status & _TOF_READOUT) > 0], [3, 2, 1], 0
    )
    good = (priority > 0) & (tof["m_tof"] > 0)
    return priority, good


def _nearest(
    a_idx: np.ndarray, b_idx: np.ndarray, distance: np.ndarray, n_a: int, limit: float
) -> np.ndarray:
    """For each a, the b of smallest ``distance`` among its pairs if below ``limit``, else -1."""
    best = np.full(n_a, np.inf)
    np.minimum.at(best, a_idx, distance)
    winner = (distance == best[a_idx]) & (distance < limit)
    out = np.full(n_a, -1, dtype=np.int64)
    out[a_idx[winner]] = b_idx[winner]
    return out


def _match_by_angle(
    owner_a: np.ndarray,
    dir_a: np.ndarray,
    charge_a: np.ndarray,
    owner_b: np.ndarray,
    dir_b: np.ndarray,
    charge_b: np.ndarray,
    max_angle: float,
) -> np.ndarray:
    """Position in the b arrays of the same-event, same-charge b closest in direction to each a, or -1."""
    a_idx, b_idx = _same_event_pairs(owner_a, owner_b)
    unit_a = dir_a / np.linalg.norm(dir_a, axis=1, keepdims=True)
    unit_b = dir_b / np.maximum(np.linalg.norm(dir_b, axis=1, keepdims=True), 1e-12)
    cos = np.clip(np.einsum("ij,ij->i", unit_a[a_idx], unit_b[b_idx]), -1.0, 1.0)
    angle = np.where(charge_a[a_idx] == charge_b[b_idx], np.arccos(cos), np.inf)
    return _nearest(a_idx, b_idx, angle, len(owner_a), max_angle)


def _in_schema_unit(values: np.ndarray, field: str) -> np.ndarray:
    """DST values of ``table.field`` (in :data:`DST_UNITS`) in the unit the schema names for that field."""
    table, name = field.split(".")
    return to_field_unit(values, DST_UNITS[field], table, name)


def _dst_chunk(arrays: Mapping[str, Any], channel: int) -> Tables:
    """One chunk of DST events (uproot arrays keyed as :data:`_DST_BRANCHES`) in the layout."""
    import awkward as ak

    run = ak.to_numpy(arrays["run"]).astype(np.int64)
    n_ev = len(run)
    rec, kal, mdc, dedx, tof, emc, muc, mc = (
        _Flat(arrays[k]) for k in ("rec", "kal", "mdc", "dedx", "tof", "emc", "muc", "mc")
    )

    # --- charged tracks: EvtRecTracks with a Kalman fit, in EvtRecTrack order
    kal_row_all = _lookup(rec.owner, rec["m_mdcKalTrackId"], kal.owner, kal["m_trackId"])
    charged = kal_row_all >= 0
    owner_t = rec.owner[charged]
    n_tracks = np.bincount(owner_t, minlength=n_ev)
    kal_row = kal_row_all[charged]
    hyp = 2  # the pion-hypothesis fit, as BOSS analyses use by default
    helix = kal["m_zhelix"][kal_row]
    error = kal["m_zerror"][kal_row]
    helix_cov = pack_symmetric(0.5 * (error + np.swapaxes(error, -1, -2)))
    px, py, pz = helix_momentum(helix)
    p = np.sqrt(px**2 + py**2 + pz**2)
    charge = np.sign(helix[:, 2]).astype(np.int8)

    mdc_row = _lookup(owner_t, rec["m_mdcTrackId"][charged], mdc.owner, mdc["m_trackId"])
    # MdcTrack's own layer count is not filled in BOSS DSTs; its first and last layer are
    def mdc_col(name: str) -> np.ndarray:
        return np.where(mdc_row >= 0, mdc[name][np.maximum(mdc_row, 0)] if len(mdc) else -1, -1)

    first_layer, last_layer = mdc_col("m_firstLayer"), mdc_col("m_lastLayer")

    dedx_row = _lookup(owner_t, rec["m_mdcDedxId"][charged], dedx.owner, dedx["m_trackId"])
    has_dedx = dedx_row >= 0
    d = np.maximum(dedx_row, 0)

    def dedx_col(name: str, missing: float) -> np.ndarray:
        return np.where(has_dedx, dedx[name][d], missing) if len(dedx) else np.full(len(d), missing)

    chi_dedx = np.stack(
        [dedx_col(n, np.nan) for n in ("m_chiE", "m_chiMu", "m_chiPi", "m_chiK", "m_chiP")], 1
    )

    # TOF: the best measurement per track (cluster of both layers > counter > single readout)
    priority, good = _tof_best(tof)
    tof_rows = np.flatnonzero(good)
    order = tof_rows[np.lexsort((-priority[tof_rows], tof["m_trackID"][tof_rows], tof.owner[tof_rows]))]
    keys = np.stack([tof.owner[order], tof["m_trackID"][order]], 1)
    _, first = np.unique(keys, axis=0, return_index=True) if len(order) else (None, np.zeros(0, np.int64))
    best = order[first]
    tof_row = _lookup(owner_t, rec["m_mdcTrackId"][charged], tof.owner[best], tof["m_trackID"][best])
    tof_row = np.where(tof_row >= 0, best[np.maximum(tof_row, 0)] if len(best) else -1, -1)
    has_tof = tof_row >= 0
    r = np.maximum(tof_row, 0)
    if len(tof):
        t_meas = np.where(has_tof, tof["m_tof"][r], np.nan)
        path = np.where(has_tof, tof["m_path"][r], np.nan)
        sigma = tof["m_sigma"][r][:, 0]
        t_exp = tof["m_texp"][r]
        chi_tof = np.where(
            (has_tof & (sigma > 0))[:, None],
            (t_meas[:, None] - t_exp) / np.where(sigma > 0, sigma, 1.0)[:, None],
            np.nan,
        )
    else:
        t_meas = path = np.full(len(r), np.nan)
        chi_tof = np.full((len(r), 5), np.nan)

    # EMC match: EvtRecTrack's shower id is the shower's position in the event's collection
    shower_id = rec["m_emcShowerId"][charged].astype(np.int64)
    emc_index = np.where((shower_id >= 0) & (shower_id < emc.counts[owner_t]), shower_id, -1)
    emc_energy = np.where(
        emc_index >= 0,
        emc["m_energy"][np.maximum(emc.start[owner_t] + emc_index, 0)] if len(emc) else 0.0,
        0.0,
    )

    muc_row = _lookup(owner_t, rec["m_mucTrackId"][charged], muc.owner, muc["m_trackId"])
    if len(muc):
        m = np.maximum(muc_row, 0)
        muc_depth = np.where(
            (muc_row >= 0) & (muc["m_numLayers"][m] > 0), np.maximum(muc["m_depth"][m], 0), 0.0
        )
    else:
        muc_depth = np.zeros(len(muc_row))

    # --- showers: all EMC showers in DST order
    x, y, z = emc["m_x"], emc["m_y"], emc["m_z"]
    showers = {
        "energy": emc["m_energy"],
        "x": x,
        "y": y,
        "z": z,
        "theta": np.arctan2(np.hypot(x, y), z),
        "phi": np.arctan2(y, x),
        "time": _in_schema_unit(emc["m_time"], "showers.time"),
        "module": emc["m_module"],
        "n_crystals": emc["m_numHits"],
        "e3x3": emc["m_e3x3"],
        "e5x5": emc["m_e5x5"],
        "second_moment": emc["m_secondMoment"],
        "lat_moment": emc["m_latMoment"],
        "energy_err": emc["m_dE"],
        "e_seed": emc["m_eSeed"],
        "theta_err": emc["m_dTheta"],
        "phi_err": emc["m_dPhi"],
        "a20_moment": emc["m_a20Moment"],
        "a42_moment": emc["m_a42Moment"],
        "cell_id": emc["m_cellId"],
        "status": emc["m_status"],
    }

    # --- truth: every McParticle; mother as a row within the event
    pdg = mc["m_particleID"]
    flags = mc["m_statusFlags"].astype(np.int64)
    mother_row = _lookup(mc.owner, mc["m_mother"], mc.owner, mc["m_trackIndex"])
    mother = np.where(mother_row >= 0, mother_row - mc.start[mc.owner], -1)
    parton = (np.abs(pdg) < 10) | np.isin(np.abs(pdg), (21, 23, 91, 92))
    final = ((flags & _MC_LEAF) > 0) & ((flags & _MC_PRIMARY) == 0) & ~parton
    truth = {
        "pdg": pdg,
        "mother": mother,
        "px": mc["m_xInitialMomentum"],
        "py": mc["m_yInitialMomentum"],
        "pz": mc["m_zInitialMomentum"],
        "e": mc["m_eInitialMomentum"],
        "vx": mc["m_xInitialPosition"],
        "vy": mc["m_yInitialPosition"],
        "vz": mc["m_zInitialPosition"],
        "final": final,
        "status_flags": flags,
    }

    # --- truth matching
    truth_charge = (
        np.array([_CHARGE_BY_PDG.get(abs(int(c)), 0) * (1 if c > 0 else -1) for c in pdg], np.int64)
        if len(pdg)
        else np.zeros(0, np.int64)
    )
    candidates = np.flatnonzero(final & (truth_charge != 0))
    truth_p = np.stack([truth["px"], truth["py"], truth["pz"]], 1) if len(pdg) else np.zeros((0, 3))
    nearest = _match_by_angle(
        owner_t,
        np.stack([px, py, pz], 1),
        charge.astype(np.int64),
        mc.owner[candidates],
        truth_p[candidates],
        truth_charge[candidates],
        TRACK_MATCH_MAX_ANGLE,
    )
    track_truth = (
        np.where(nearest >= 0, candidates[np.maximum(nearest, 0)] - mc.start[owner_t], -1)
        if len(candidates)
        else np.full(len(owner_t), -1)
    )
    ends = (
        np.stack([mc["m_xFinalPosition"], mc["m_yFinalPosition"], mc["m_zFinalPosition"]], 1)
        if len(pdg)
        else np.zeros((0, 3))
    )
    reach = np.flatnonzero(final & (np.linalg.norm(ends, axis=1) > 50.0))  # particles that reach the EMC
    s_idx, r_idx = _same_event_pairs(emc.owner, mc.owner[reach])
    shower_pos = np.stack([x, y, z], 1)
    gap = np.linalg.norm(shower_pos[s_idx] - ends[reach][r_idx], axis=1)
    nearest_end = _nearest(s_idx, r_idx, gap, len(emc), SHOWER_MATCH_MAX_DISTANCE)
    shower_truth = (
        np.where(nearest_end >= 0, reach[np.maximum(nearest_end, 0)] - mc.start[emc.owner], -1)
        if len(reach)
        else np.full(len(emc), -1, dtype=np.int64)
    )
    # a shower matched to a track belongs to that track's particle
    matched = emc_index >= 0
    shower_truth[emc.start[owner_t[matched]] + emc_index[matched]] = track_truth[matched]
    showers["truth_index"] = shower_truth

    tracks = {
        "charge": charge,
        "helix": helix,
        "helix_cov": helix_cov,
        "p": p,
        "px": px,
        "py": py,
        "pz": pz,
        "cos_theta": pz / p,
        "phi": np.arctan2(py, px),
        "mass_hypothesis": np.full(len(p), hyp),
        "dedx": _in_schema_unit(dedx_col("m_normPH", 0.0), "tracks.dedx"),
        "dedx_nhits": dedx_col("m_numGoodHits", 0).astype(np.int64),
        "chi_dedx": chi_dedx,
        "tof": t_meas,
        "tof_path": path,
        "chi_tof": chi_tof,
        "emc_energy": emc_energy,
        "emc_index": emc_index,
        "muc_depth": muc_depth,
        "truth_index": track_truth,
        "fit_chi2": kal["m_chisq"][kal_row][:, hyp] if len(kal_row) else np.zeros(0),
        "fit_ndof": kal["m_ndf"][kal_row][:, hyp] if len(kal_row) else np.zeros(0, np.int64),
        "mdc_layers": mdc_layer_span(first_layer, last_layer),
        "mdc_first_layer": first_layer,
        "mdc_last_layer": last_layer,
        "dedx_ph": _in_schema_unit(dedx_col("m_probPH", np.nan), "tracks.dedx_ph"),
    }
    events = {
        "run": run,
        "event": ak.to_numpy(arrays["event"]).astype(np.int64),
        "channel": np.full(n_ev, channel),
        "n_tracks": n_tracks,
        "n_showers": emc.counts,
        "n_truth": mc.counts,
        "weight": np.ones(n_ev),
    }
    return {"events": events, "tracks": tracks, "showers": showers, "truth": truth}


def ingest_besiii_dst(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    channel: str = "unknown",
    step_events: int = 5000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert a BESIII DST (BOSS ROOT file) into an event file.

    Args:
        source: the ``.dst`` file.
        output: the event file to write (atomically).
        channel: channel name stored in ``events.channel`` (see ``schema.CHANNELS``).
        step_events: events read per chunk (memory stays bounded for any file size).
        progress: optional progress wrapper (``vbes.cli.progress``).

    Returns:
        :func:`vbes.datasets.file_info` of the written file.
    """
    import pybes3  # noqa: F401  (registers the BESIII classes with uproot)

    source, output = Path(source), check_output_path(output)
    code = channel_code(channel)
    _, tree = _open_root(source, "Event")
    missing = [b for b in _DST_BRANCHES.values() if b not in tree]
    if missing:
        raise InvalidInput(f"{source}: not a BESIII DST, branch {missing[0]} is missing")
    n = tree.num_entries
    mc = any(r < 0 for r in tree[_DST_BRANCHES["run"]].array(library="np", entry_stop=1)) if n else False
    provenance = {
        "generator": "besiii-dst-ingest",
        "generator_version": _package_version("vbes"),
        "channel": channel,
        "source": source.name,
        "source_sha256": _sha256_file(source),
        "source_format": "besiii-dst",
        "software": f"vbes {_package_version('vbes')}, pybes3 {_package_version('pybes3')}, "
        f"uproot {_package_version('uproot')}",
        "track_fit": "Kalman zhelix, pion hypothesis, pivot (0,0,0)",
    }
    wrap = progress or _no_progress
    with EventWriter(output, provenance, mc=mc) as writer:
        for start in wrap(range(0, n, step_events), total=-(-n // step_events), desc="ingest", unit="chunk"):
            stop = min(start + step_events, n)
            arrays = _read_root(
                source,
                f"events {start}:{stop}",
                lambda: {k: tree[b].array(entry_start=start, entry_stop=stop) for k, b in _DST_BRANCHES.items()},
            )
            writer.append(_dst_chunk(arrays, code))
    return file_info(output)


# --- ROOT ntuples with a mapping file ----------------------------------------------------------------


def example_mapping_path() -> Path:
    """The shipped mapping for the CMS Open Data dimuon ntuple (``datasets/data/cms-zmumu.map.yaml``)."""
    return Path(__file__).resolve().parent / "data" / "cms-zmumu.map.yaml"


def load_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a mapping file (YAML): branch names -> ``table.field`` with scale factors.

    Format::

        format: vbes-root-map/1
        tree: events                 # default tree name
        channel: unknown             # events.channel for every event
        mc: false
        events: {run: Run, event: Event, weight: {branch: w, scale: 1.0}}
        tables:
          tracks:
            objects:                 # flat ntuple: one block per object slot; jagged: one block
              - {charge: Q1, px: px1, py: py1, pz: pz1}
              - {charge: Q2, px: px2, py: py2, pz: pz2}
            derive: [helix_from_momentum]   # helix, p, cos_theta, phi from px, py, pz and charge
            fill: {dedx: 0.0, ...}          # constants for fields the ntuple lacks
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise NotFound(f"{path}: no such mapping file")
    try:
        mapping = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise InvalidInput(f"{path}: not a mapping file (not YAML text: {_one_line(exc)})") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML ({_one_line(exc)})") from None
    if not isinstance(mapping, dict) or mapping.get("format") != "vbes-root-map/1":
        raise InvalidInput(f"{path}: not a mapping file (needs 'format: vbes-root-map/1')")
    known = {t: {f.name for f in fs} for t, fs in TABLES.items()}
    for field in mapping.get("events", {}) or {}:
        if field not in known["events"]:
            raise InvalidInput(f"{path}: unknown field events.{field}")
    for table, spec in (mapping.get("tables") or {}).items():
        if table not in OBJECT_TABLES:
            raise InvalidInput(f"{path}: unknown table {table!r}")
        for block in spec.get("objects", []):
            for field in block:
                if field not in known[table]:
                    raise InvalidInput(f"{path}: unknown field {table}.{field}")
        for field in spec.get("fill", {}) or {}:
            if field not in known[table]:
                raise InvalidInput(f"{path}: unknown field {table}.{field} in fill")
        for step in spec.get("derive", []) or []:
            if step not in _DERIVATIONS:
                raise InvalidInput(f"{path}: unknown derivation {step!r} (known: {', '.join(_DERIVATIONS)})")
    channel_code(mapping.get("channel", "unknown"))
    mapping["_path"] = str(path)
    return mapping


def _branch_spec(spec: Any) -> tuple[list[str], float]:
    """Branch names (several for a vector field: its components in order) and the scale factor."""
    if isinstance(spec, str):
        return [spec], 1.0
    if isinstance(spec, list):
        return [str(s) for s in spec], 1.0
    branch = spec["branch"]
    return ([branch] if isinstance(branch, str) else [str(b) for b in branch]), float(spec.get("scale", 1.0))


def _helix_from_momentum(cols: dict[str, np.ndarray]) -> None:
    px, py, pz = (np.asarray(cols[k], np.float64) for k in ("px", "py", "pz"))
    pt = np.hypot(px, py)
    phi = np.arctan2(py, px)
    charge = np.asarray(cols["charge"])
    if "helix" not in cols:
        phi0 = np.mod(phi - np.pi / 2, 2 * np.pi)
        zeros = np.zeros_like(pt)
        cols["helix"] = np.stack([zeros, phi0, charge / pt, zeros, pz / pt], axis=1)
    p = np.sqrt(pt**2 + pz**2)
    cols.setdefault("p", p)
    cols.setdefault("cos_theta", pz / p)
    cols.setdefault("phi", phi)


_DERIVATIONS: dict[str, Callable[[dict[str, np.ndarray]], None]] = {
    "helix_from_momentum": _helix_from_momentum
}


def _mapped_branches(mapping: Mapping[str, Any]) -> list[str]:
    names = [n for s in (mapping.get("events") or {}).values() for n in _branch_spec(s)[0]]
    for spec in (mapping.get("tables") or {}).values():
        names += [n for block in spec.get("objects", []) for s in block.values() for n in _branch_spec(s)[0]]
    return sorted(set(names))


def _is_jagged(array: Any) -> bool:
    import awkward as ak

    return isinstance(ak.type(array).content, ak.types.ListType)


def _map_chunk(arrays: Mapping[str, Any], mapping: Mapping[str, Any], n_ev: int, where: str) -> Tables:
    import awkward as ak

    def values(spec: Any) -> Any:
        names, scale = _branch_spec(spec)
        if len(names) == 1:
            array = arrays[names[0]]
        else:  # a vector field from its component branches
            array = ak.concatenate([arrays[n][..., np.newaxis] for n in names], axis=-1)
        return array * scale if scale != 1.0 else array

    events: dict[str, np.ndarray] = {}
    for field, spec in (mapping.get("events") or {}).items():
        array = values(spec)
        if _is_jagged(array):
            raise SchemaError(
                f"{where}: branch {_branch_spec(spec)[0][0]} for events.{field} is not one value per event"
            )
        events[field] = ak.to_numpy(array)
    events.setdefault("channel", np.full(n_ev, channel_code(mapping.get("channel", "unknown"))))
    events.setdefault("weight", np.ones(n_ev))
    for field in ("run", "event"):
        if field not in events:
            raise SchemaError(f"{where}: events.{field} is not mapped")
    out: Tables = {"events": events}
    fields_by_table = {t: {f.name: f for f in fs} for t, fs in TABLES.items()}
    for table in OBJECT_TABLES:
        spec = (mapping.get("tables") or {}).get(table)
        if not spec:
            events[COUNT_FIELD[table]] = np.zeros(n_ev, np.int64)
            continue
        blocks = spec.get("objects", [])
        cols: dict[str, np.ndarray] = {}
        counts = None
        if len(blocks) == 1 and all(_is_jagged(values(s)) for s in blocks[0].values()):
            # jagged ntuple: every branch of the block has one entry per object
            for field, s in blocks[0].items():
                array = values(s)
                n = ak.to_numpy(ak.num(array, axis=1))
                if counts is None:
                    counts = n
                elif not np.array_equal(n, counts):
                    raise SchemaError(
                        f"{where}: branch {_branch_spec(s)[0][0]} ({table}.{field}) has other "
                        f"per-event lengths than the rest of {table}"
                    )
                cols[field] = ak.to_numpy(ak.flatten(array, axis=1))
        else:
            # flat ntuple: one object per block (slot) and event, interleaved in event order
            names = set(blocks[0])
            for i, block in enumerate(blocks):
                if set(block) != names:
                    raise SchemaError(
                        f"{where}: object slot {i + 1} of {table} maps other fields than slot 1"
                    )
            for field in names:
                stacked = np.stack([ak.to_numpy(values(b[field])) for b in blocks], axis=1)
                cols[field] = stacked.reshape(-1, *stacked.shape[2:])
            counts = np.full(n_ev, len(blocks))
        if counts is None:  # a jagged block without a single branch: nothing says how many objects
            raise SchemaError(f"{where}: tables.{table}.objects[0] maps no fields")
        for step in spec.get("derive", []) or []:
            _DERIVATIONS[step](cols)
        n_rows = int(counts.sum())
        for field, value in (spec.get("fill") or {}).items():
            f = fields_by_table[table][field]
            cols.setdefault(field, np.full((n_rows, *f.shape), value, dtype=f.dtype))
        for f in fields_by_table[table].values():
            if f.name not in cols and f.nan_allowed and f.fill is None:
                cols[f.name] = np.full((n_rows, *f.shape), np.nan, dtype=f.dtype)
        events[COUNT_FIELD[table]] = counts
        out[table] = cols
    return out


def _vbes_root_info(directory: Any) -> dict[str, Any] | None:
    if "vbes_info" not in directory:
        return None
    try:
        info = json.loads(_read_root(Path(directory.file_path), "vbes_info", lambda: str(directory["vbes_info"])))
    except ValueError as exc:
        raise InvalidInput(f"{directory.file_path}: vbes_info is not valid JSON ({_one_line(exc)})") from None
    if not isinstance(info, dict):
        raise InvalidInput(f"{directory.file_path}: vbes_info is not a JSON object")
    return info


def _identity_mapping(info: Mapping[str, Any]) -> dict[str, Any]:
    """The mapping of a tree written by :func:`export_root` (branch ``<table>_<field>``)."""
    tables: dict[str, Any] = {}
    for table in OBJECT_TABLES:
        tables[table] = {
            "objects": [
                {
                    f.name: [f"{table}_{c}" for c in _column_names(table, f)]
                    if f.shape
                    else f"{table}_{f.name}"
                    for f in TABLES[table]
                }
            ]
        }
    return {
        "format": "vbes-root-map/1",
        "mc": info["mc"],
        "events": {f.name: f.name for f in TABLES["events"] if f.name not in COUNT_FIELD.values()},
        "tables": tables,
        "_path": "(vbes export)",
    }


def ingest_root(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tree: str | None = None,
    mapping: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    step_events: int = 100_000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert a flat or jagged ROOT ntuple into an event file.

    Args:
        source: the ROOT file.
        output: the event file to write (atomically).
        tree: TTree name (default: the mapping's ``tree``, else ``events``).
        mapping: mapping file path or loaded mapping; ``None`` only for files written by :func:`export_root`.
        step_events: events read per chunk.
        progress: optional progress wrapper.
    """
    source, output = Path(source), check_output_path(output)
    loaded = load_mapping(mapping) if isinstance(mapping, (str, os.PathLike)) else mapping
    tree_name = tree or (loaded or {}).get("tree") or "events"
    directory, ttree = _open_root(source, tree_name)
    info = _vbes_root_info(directory)
    provenance: dict[str, Any]
    if loaded is None:
        if info is None:
            raise InvalidInput(f"{source}: not written by 'vbes export-root'; give a mapping file with --map")
        if info.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(
                f"{source}: exported with schema version {info.get('schema_version')}, "
                f"this vbes writes {SCHEMA_VERSION}"
            )
        loaded = _identity_mapping(info)
        provenance = dict(info["provenance"])
    else:
        provenance = {
            "generator": "root-ingest",
            "generator_version": _package_version("vbes"),
            "channel": loaded.get("channel", "unknown"),
            "source": source.name,
            "source_tree": tree_name,
            "source_sha256": _sha256_file(source),
            "source_format": "root-ntuple",
            "mapping": {k: v for k, v in loaded.items() if not k.startswith("_")},
            "software": f"vbes {_package_version('vbes')}, uproot {_package_version('uproot')}",
        }
    branches = _mapped_branches(loaded)
    missing = [b for b in branches if b not in ttree]
    if missing:
        raise InvalidInput(
            f"{source}: tree {tree_name!r} has no branch {missing[0]!r} "
            f"(named in {loaded.get('_path', 'the mapping')})"
        )
    n = ttree.num_entries
    wrap = progress or _no_progress
    # a file of 'vbes export-root' must give back the very arrays it was exported from
    expected = str(info.get("content_digest")) if info is not None and mapping is None else None
    with EventWriter(output, provenance, mc=bool(loaded.get("mc", False)), expected_digest=expected) as writer:
        for start in wrap(range(0, n, step_events), total=-(-n // step_events), desc="ingest", unit="chunk"):
            stop = min(start + step_events, n)
            arrays = _read_root(
                source,
                f"events {start}:{stop}",
                lambda: ttree.arrays(branches, entry_start=start, entry_stop=stop, how=dict),
            )
            writer.append(_map_chunk(arrays, loaded, stop - start, f"{source} events {start}:{stop}"))
    return file_info(output)


# --- export -----------------------------------------------------------------------------------------


def _column_names(table: str, field: Any) -> list[str]:
    """ROOT branch fields of one schema field: the field itself, or ``<field>_<i>`` per component."""
    size = int(np.prod(field.shape, dtype=np.int64))
    return [field.name] if not field.shape else [f"{field.name}_{i}" for i in range(size)]


def _export_branches(chunk: Tables) -> dict[str, Any]:
    import awkward as ak

    branches: dict[str, Any] = {
        f.name: chunk["events"][f.name] for f in TABLES["events"] if f.name not in COUNT_FIELD.values()
    }
    for table in OBJECT_TABLES:
        counts = chunk["events"][COUNT_FIELD[table]]
        columns = {}
        for f in TABLES[table]:
            values = chunk[table][f.name]
            values = values.reshape(len(values), int(np.prod(f.shape, dtype=np.int64)))
            for i, name in enumerate(_column_names(table, f)):
                columns[name] = ak.unflatten(np.ascontiguousarray(values[:, i]), counts)
        branches[table] = ak.zip(columns)
    return branches


def export_root(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    tree: str = "events",
    chunk_events: int = 100_000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write an event file as a ROOT TTree: per-event branches and jagged ``<table>_<field>`` branches.

    The file also holds ``vbes_info`` (a TObjString with the schema version, provenance and content digest),
    so :func:`ingest_root` reads it back without a mapping file and gets the same arrays (same digest).
    Written to a temporary name and renamed, like event files.
    """
    import uproot

    source, output = Path(source), check_output_path(output)
    info = file_info(source)
    if info["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(
            f"{source}: schema version {info['schema_version']}; export reads it migrated to "
            f"{SCHEMA_VERSION}, rewrite it first with a current vbes"
        )
    tmp = output.parent / f".{output.name}.partial"
    wrap = progress or _no_progress
    empty = {"events": {f.name: np.zeros(0, f.dtype) for f in TABLES["events"]}}
    empty.update({t: {f.name: np.zeros((0, *f.shape), f.dtype) for f in TABLES[t]} for t in OBJECT_TABLES})
    try:
        with uproot.recreate(tmp) as root_file:
            payload = {
                "schema_version": SCHEMA_VERSION,
                "mc": info["mc"],
                "provenance": info["provenance"],
                "content_digest": info["digest"],
                "source": source.name,
                "units": {f"{t}.{f.name}": f.unit for t, fs in TABLES.items() for f in fs},
            }
            root_file["vbes_info"] = json.dumps(payload, sort_keys=True)
            types = {
                name: (b.type if hasattr(b, "type") else b.dtype)
                for name, b in _export_branches(empty).items()
            }
            ttree = root_file.mktree(tree, types, title="vbes event file (jagged <table>_<field> branches)")
            total = -(-info["n_events"] // chunk_events)
            for chunk in wrap(
                iter_events(source, chunk_events=chunk_events), total=total, desc="export", unit="chunk"
            ):
                ttree.extend(_export_branches(chunk))
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(output), "n_events": info["n_events"], "tree": tree, "digest": info["digest"]}
