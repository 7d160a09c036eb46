"""The EMC shower fields of a BOSS DST that the shower model itself does not make: errors, seed, moments, ids.

Given showers with energy, position, module and shape (:mod:`vbes.datasets.detector`), this adds what
``RecEmcShower`` also stores, each modelled on the real DST ``../shared/data/besiii-boss-jpsi-rhopi-10evt.dst``
(constants in the ``Emc`` payload's ``dst_fields`` block, which names that source):

* ``energy_err``: BOSS's energy error, ``E (a/√E ⊕ b)`` (BOSS's own parametrisation, not the model's
  resolution: the DST quotes 4.6 % at 10 MeV where the true resolution is several times worse);
* ``phi_err`` from the position resolution the shower positions are smeared with (the ``Emc`` payload's
  ``sigma_pos_*``) over the transverse distance, ``theta_err`` a fixed fraction of it, as in the DST;
* ``e_seed``: a Beta-distributed fraction of E3x3 (one-crystal showers: the uncorrected energy);
* ``a20_moment``, ``a42_moment``: the Zernike moments, linear in the lateral moment with the DST's scatter;
* ``cell_id``: the BESIII identifier of the crystal hit by the shower centre, from BOSS's EMC geometry as
  shipped by pybes3 (44 barrel rings of 120 crystals, 6 endcap rings of 64-96);
* ``status``: 2 for showers split from one connected cluster (two energetic showers close together), else 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np
from vbes.datasets.numeric import same_event_pairs

__all__ = ["emc_cell_id", "reconstructed_shower_fields", "shower_dst_fields"]


@cache
def _rings() -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per EMC part: (θ of each ring's crystal faces, crystals per ring, φ of each ring's crystal 0)."""
    import pybes3.emc

    geom = pybes3.emc.get_emc_geom_table()
    out = {}
    for part in (0, 1, 2):
        in_part = geom["part"] == part
        thetas, n_phi, phi_first = [], [], []
        for ring in np.unique(geom["theta"][in_part]):
            sel = in_part & (geom["theta"] == ring)
            x, y, z = (geom[f"front_center_{c}"][sel] for c in "xyz")
            thetas.append(float(np.mean(np.arctan2(np.hypot(x, y), z))))
            n_phi.append(int(sel.sum()))
            first = np.argmin(geom["phi"][sel])
            phi_first.append(float(np.arctan2(y[first], x[first])))
        out[part] = (np.asarray(thetas), np.asarray(n_phi), np.asarray(phi_first))
    return out


def emc_cell_id(module: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """BESIII identifier (``EmcID``) of the crystal whose face is nearest to each ``(θ, φ)`` in ``module``.

    Args:
        module: 0 endcap at z > 0, 1 barrel, 2 endcap at z < 0 (BOSS's part numbering).
        theta, phi: shower direction from the origin, rad.
    """
    from pybes3.identifier import get_emc_id

    ring = np.zeros(module.size, np.int64)
    crystal = np.zeros(module.size, np.int64)
    for part, (ring_theta, n_phi, phi_first) in _rings().items():
        sel = module == part
        if not sel.any():
            continue
        # nearest ring in θ (the rings' θ are monotonic within a part)
        order = np.argsort(ring_theta)
        pos = np.clip(np.searchsorted(ring_theta[order], theta[sel]), 1, ring_theta.size - 1)
        lower, upper = order[pos - 1], order[pos]
        nearer_upper = np.abs(ring_theta[upper] - theta[sel]) < np.abs(ring_theta[lower] - theta[sel])
        r = np.where(nearer_upper, upper, lower)
        step = 2 * np.pi / n_phi[r]
        crystal[sel] = np.floor(((phi[sel] - phi_first[r]) / step + 0.5)).astype(np.int64) % n_phi[r]
        ring[sel] = r
    return np.asarray(get_emc_id(module.astype(np.int64), ring, crystal), np.int64).astype(np.int32)


def _split_cluster(event: np.ndarray, xyz: np.ndarray, energy: np.ndarray, distance: float,
                   min_energy: float) -> np.ndarray:
    """Whether each shower has an energetic neighbour within ``distance`` in its event (vectorised pairs)."""
    hot = np.flatnonzero(energy > min_energy)
    out = np.zeros(energy.size, bool)
    if hot.size < 2:
        return out
    a, b = same_event_pairs(event[hot], event[hot])
    pair = a != b
    a, b = a[pair], b[pair]
    close = np.linalg.norm(xyz[hot[a]] - xyz[hot[b]], axis=1) < distance
    out[hot[a[close]]] = True
    return out


def reconstructed_shower_fields(showers: Mapping[str, np.ndarray], event: np.ndarray,
                                emc: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The fields BOSS's reconstruction computes from a shower's energy, position and neighbours (no randomness):
    ``energy_err``, ``theta_err``, ``phi_err``, ``cell_id`` and ``status``.

    Args:
        showers: shower columns ``energy``, ``x``, ``y``, ``z``, ``theta``, ``phi``, ``module``.
        event: event of each shower (within the batch).
        emc: the ``Emc`` payload's constants (``sigma_pos_*`` and the ``dst_fields`` block).
    """
    c = emc["dst_fields"]
    energy = np.asarray(showers["energy"], float)
    e_pos = np.maximum(energy, 1e-4)
    x, y, z = (np.asarray(showers[k], float) for k in ("x", "y", "z"))
    sigma_pos = np.hypot(emc["sigma_pos_stochastic_cm"] / np.sqrt(e_pos), emc["sigma_pos_constant_cm"])
    phi_err = sigma_pos / np.maximum(np.hypot(x, y), 1.0)
    split = _split_cluster(event, np.stack([x, y, z], 1), energy, float(c["split_cluster_distance_cm"]),
                           float(c["split_cluster_min_energy_gev"]))
    return {
        "energy_err": energy * np.hypot(c["energy_err_stochastic"] / np.sqrt(e_pos), c["energy_err_constant"]),
        "theta_err": phi_err * float(c["theta_over_phi_err"]),
        "phi_err": phi_err,
        "cell_id": emc_cell_id(np.asarray(showers["module"]), np.asarray(showers["theta"], float),
                               np.asarray(showers["phi"], float)),
        "status": np.where(split, 2, 1).astype(np.int32),
    }


def shower_dst_fields(showers: Mapping[str, np.ndarray], event: np.ndarray, emc: Mapping[str, Any],
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The DST fields of :mod:`this module <vbes.datasets.emcfields>` for a batch of showers.

    Args:
        showers: shower columns ``energy``, ``x``, ``y``, ``z``, ``theta``, ``phi``, ``module``,
            ``n_crystals``, ``e3x3``, ``lat_moment``.
        event: event of each shower (within the batch).
        emc: the ``Emc`` payload's constants (``sigma_pos_*`` and the ``dst_fields`` block).
        rng: random stream.
    """
    c = emc["dst_fields"]
    n = np.asarray(showers["energy"]).size
    single = np.asarray(showers["n_crystals"]) <= 1
    seed_fraction = np.where(single, float(c["seed_fraction_single"]),
                             rng.beta(c["seed_fraction_beta"][0], c["seed_fraction_beta"][1], n))
    lat = np.asarray(showers["lat_moment"], float)
    a20 = c["a20_vs_lat"][0] + c["a20_vs_lat"][1] * lat + c["a20_vs_lat"][2] * rng.standard_normal(n)
    a42 = c["a42_vs_lat"][0] + c["a42_vs_lat"][1] * lat + c["a42_vs_lat"][2] * rng.standard_normal(n)
    fields = reconstructed_shower_fields(showers, event, emc)
    return {
        "energy_err": fields["energy_err"],
        "e_seed": np.asarray(showers["e3x3"], float) * seed_fraction,
        "theta_err": fields["theta_err"],
        "phi_err": fields["phi_err"],
        "a20_moment": np.clip(a20, 0.0, 1.0),
        "a42_moment": np.clip(a42, 0.0, 1.0),
        "cell_id": fields["cell_id"],
        "status": fields["status"],
    }
