"""Particle guns: one particle per event, flat in momentum and angle, for training a detector-response surrogate.

A surrogate of the detector response learns the response per particle; it needs single particles of each
species spread evenly over the phase space it will be asked about, not the momentum and angular spectra of one
physics channel. :class:`ParticleGun` makes them with the contract of
:class:`vbes.datasets.generator.JpsiGenerator` (``generate(n, chunk=, beam=)``, the same flat truth arrays), so
the material, the detector response and the event file take them unchanged:

* the species of each event is drawn uniformly from the given list;
* ``p`` is flat in ``[p_min, p_max]`` (GeV/c), ``cos θ`` flat in ``[cos_min, cos_max]``, ``φ`` flat in
  ``[-π, π)``; the default ``|cos θ| ≤ 0.95`` reaches a little beyond the MDC acceptance (0.93) so a model sees
  the edge;
* the particle starts at a primary vertex drawn from the beam spot of the ``Beam`` payload, exactly as the J/ψ
  generator draws it (:func:`vbes.datasets.generator.beam_spot_vertices`); no crossing-angle boost: the laws
  above hold in the laboratory, where the detector is;
* the particle is a generator particle (``mother = -1``, ``final = 1``): the material may still convert or
  decay it, and its truth status flags then say so (BOSS bits 1 | 2; 1 | 8 when it stays final).

The random stream of a chunk depends only on ``(seed, chunk)``, as the J/ψ generator's does.

Example:
    >>> gun = ParticleGun(GunSpec(("pi+", "gamma"), p_range=(0.5, 1.0)), seed=1)
    >>> truth = gun.generate(1000)
    >>> int(truth["n_truth"].sum()), sorted(set(truth["pdg"].tolist()))
    (1000, [22, 211])
    >>> p = np.sqrt(truth["px"] ** 2 + truth["py"] ** 2 + truth["pz"] ** 2)
    >>> bool(p.min() >= 0.5 and p.max() <= 1.0)
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from vbes.datasets.generator import DEFAULT_BEAM, beam_spot_vertices
from vbes.datasets.schema import HYPOTHESIS_MASSES

from vbes.errors import InvalidInput

__all__ = [
    "DEFAULT_COS_RANGE",
    "DEFAULT_P_RANGE",
    "GUN_GENERATOR",
    "GUN_SPECIES",
    "GUN_VERSION",
    "GunSpec",
    "ParticleGun",
    "parse_range",
    "parse_species",
    "species_mass",
]

#: generator name recorded in the provenance of gun samples
GUN_GENERATOR = "vbes particle gun"
#: version of the gun's sampling laws (changes when the same seed would give other particles)
GUN_VERSION = "1"
#: default momentum range, GeV/c
DEFAULT_P_RANGE = (0.05, 2.0)
#: default cos θ range: a little beyond the MDC acceptance |cos θ| < 0.93, so the edge is learnt
DEFAULT_COS_RANGE = (-0.95, 0.95)

#: species the gun shoots: name -> PDG id (names as the CLI's ``--species`` takes them)
GUN_SPECIES: dict[str, int] = {
    "gamma": 22,
    "e-": 11,
    "e+": -11,
    "mu-": 13,
    "mu+": -13,
    "pi-": -211,
    "pi+": 211,
    "K-": -321,
    "K+": 321,
    "p": 2212,
    "pbar": -2212,
    "n": 2112,
    "nbar": -2112,
    "K_L0": 130,
}

_E, _MU, _PI, _K, _P = HYPOTHESIS_MASSES
# |PDG id| -> mass in GeV/c²: the tracking hypotheses' masses from the schema (PDG 2024), the rest PDG 2024
_MASS: dict[int, float] = {
    22: 0.0,
    11: _E,
    13: _MU,
    211: _PI,
    321: _K,
    2212: _P,
    2112: 0.93956542194,
    130: 0.497611,
}


def species_mass(name: str) -> float:
    """Mass in GeV/c² of a gun species (PDG 2024).

    Example:
        >>> species_mass("pi+")
        0.13957039
    """
    if name not in GUN_SPECIES:
        raise InvalidInput(f"--species: unknown species {name!r}; known: {', '.join(GUN_SPECIES)}")
    return _MASS[abs(GUN_SPECIES[name])]


def _check_range(option: str, lo: float, hi: float) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidInput(f"{option} {lo}:{hi}: both ends must be finite numbers")
    if lo >= hi:
        raise InvalidInput(f"{option} {lo}:{hi}: the minimum must be below the maximum")


@dataclass(frozen=True)
class GunSpec:
    """What a particle gun shoots; checked when made.

    Args:
        species: names of :data:`GUN_SPECIES`, each drawn with equal probability per event; no repeats.
        p_range: ``(p_min, p_max)`` in GeV/c, ``0 < p_min < p_max``; ``p`` is flat in between.
        cos_range: ``(cos_min, cos_max)`` within ``[-1, 1]``; ``cos θ`` is flat in between.

    Raises:
        InvalidInput: an unknown or repeated species, no species, or a range out of bounds (one line, naming
            the command-line option that sets it).

    Example:
        >>> GunSpec(("K+", "K-")).p_range
        (0.05, 2.0)
    """

    species: tuple[str, ...]
    p_range: tuple[float, float] = DEFAULT_P_RANGE
    cos_range: tuple[float, float] = DEFAULT_COS_RANGE

    def __post_init__(self) -> None:
        names: object = self.species  # a bare name is one species, not its letters
        species = (names,) if isinstance(names, str) else tuple(self.species)
        if not species:
            raise InvalidInput(f"--species: give at least one species; known: {', '.join(GUN_SPECIES)}")
        for name in species:
            species_mass(name)
        repeated = sorted({s for s in species if species.count(s) > 1})
        if repeated:
            raise InvalidInput(f"--species: {', '.join(repeated)} given more than once (species are drawn "
                               "with equal probability; a repeat would not double it)")
        p_min, p_max = (float(x) for x in self.p_range)
        _check_range("--p-range", p_min, p_max)
        if p_min <= 0:
            raise InvalidInput(f"--p-range {p_min}:{p_max}: the minimum momentum must be positive (GeV/c)")
        cos_min, cos_max = (float(x) for x in self.cos_range)
        _check_range("--cos-range", cos_min, cos_max)
        if cos_min < -1 or cos_max > 1:
            raise InvalidInput(f"--cos-range {cos_min}:{cos_max}: cos(theta) lies within -1:1")
        # normalised, so equal specifications compare (and key worker caches) equal
        object.__setattr__(self, "species", species)
        object.__setattr__(self, "p_range", (p_min, p_max))
        object.__setattr__(self, "cos_range", (cos_min, cos_max))

    @property
    def pdg(self) -> tuple[int, ...]:
        """The species' PDG ids, in the order of :attr:`species`."""
        return tuple(GUN_SPECIES[s] for s in self.species)

    def provenance(self) -> dict[str, object]:
        """What an event file records about the gun (JSON-serialisable)."""
        return {
            "species": list(self.species),
            "pdg": list(self.pdg),
            "p_range_gev": list(self.p_range),
            "cos_theta_range": list(self.cos_range),
            "phi_range_rad": [-math.pi, math.pi],
            "laws": "species uniform per event; p, cos(theta), phi flat; vertex from the Beam payload's beam spot",
        }


def parse_species(text: str) -> tuple[str, ...]:
    """``"pi+,pi-,K+"`` -> ``("pi+", "pi-", "K+")`` (spaces around names ignored; checked by :class:`GunSpec`).

    Example:
        >>> parse_species("pi+, pi-,K+")
        ('pi+', 'pi-', 'K+')
    """
    return tuple(name.strip() for name in text.split(",") if name.strip())


def parse_range(option: str, text: str) -> tuple[float, float]:
    """``"MIN:MAX"`` -> ``(min, max)`` as floats; ``option`` names the command-line option in errors.

    Example:
        >>> parse_range("--cos-range", "-0.95:0.95")
        (-0.95, 0.95)
    """
    head, sep, tail = text.strip().partition(":")
    try:
        if not sep:
            raise ValueError
        return float(head), float(tail)
    except ValueError:
        raise InvalidInput(f"{option} {text!r}: expected MIN:MAX, e.g. 0.05:2.0") from None


class ParticleGun:
    """Single particles, flat in momentum and angle, with the truth layout of the J/ψ generator.

    Args:
        spec: the species and ranges.
        seed: seed of the random streams; same seed and chunk, same particles.

    Example:
        >>> truth = ParticleGun(GunSpec(("mu-",)), seed=2).generate(3)
        >>> truth["pdg"].tolist(), truth["mother"].tolist(), truth["final"].tolist()
        ([13, 13, 13], [-1, -1, -1], [1, 1, 1])
    """

    def __init__(self, spec: GunSpec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = seed
        self._pdg = np.asarray(spec.pdg, np.int32)
        self._mass = np.asarray([_MASS[abs(int(code))] for code in spec.pdg])

    def generate(self, n_events: int, chunk: int = 0,
                 beam: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """``n_events`` single-particle events as flat arrays (lab frame, cm, GeV).

        Args:
            n_events: number of events (one particle each).
            chunk: index of this chunk; ``(seed, chunk)`` fixes the random stream.
            beam: the beam spot (keys of :data:`vbes.datasets.generator.DEFAULT_BEAM`), e.g. the ``Beam``
                payload; the crossing angle is not applied (the laws hold in the laboratory).

        Returns:
            the arrays of :meth:`vbes.datasets.generator.JpsiGenerator.generate`: ``n_truth`` (all 1),
            ``event``, ``pdg``, ``mother`` (-1), ``px``, ``py``, ``pz``, ``e``, ``vx``, ``vy``, ``vz``,
            ``final`` (1).
        """
        if n_events < 0:
            raise InvalidInput(f"number of events must not be negative, not {n_events}")
        beam = {**DEFAULT_BEAM, **(beam or {})}
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, chunk]))
        which = rng.integers(0, self._pdg.size, n_events)
        p = rng.uniform(*self.spec.p_range, n_events)
        cos = rng.uniform(*self.spec.cos_range, n_events)
        phi = rng.uniform(-np.pi, np.pi, n_events)
        vx, vy, vz = beam_spot_vertices(beam, n_events, rng).T.copy()
        sin = np.sqrt(np.maximum(1.0 - cos * cos, 0.0))
        mass = self._mass[which]
        return {
            "n_truth": np.ones(n_events, np.int32),
            "event": np.arange(n_events, dtype=np.int64),
            "pdg": self._pdg[which],
            "mother": np.full(n_events, -1, np.int32),
            "px": p * sin * np.cos(phi),
            "py": p * sin * np.sin(phi),
            "pz": p * cos,
            "e": np.sqrt(p * p + mass * mass),
            "vx": vx,
            "vy": vy,
            "vz": vz,
            "final": np.ones(n_events, np.int8),
        }
