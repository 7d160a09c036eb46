"""J/ψ decays with Pythia 8 (``pythia8mc``), as BEPCII makes them: truth-level events as flat NumPy arrays.

What happens, and why:

* Pythia decays J/ψ at rest at the PDG mass (the ≈1 MeV beam-energy spread exceeds Γ(J/ψ) = 93 keV, so the
  line shape plays no role). Many J/ψ go into one event record and one ``nextBatch(1)`` call decays them all
  and returns the record as an awkward array: the particles come out in C++, not one Python call per particle.
* Pythia decays isotropically; nature does not. In e+e− → J/ψ the J/ψ is transversely polarised along the
  beam axis, so two-body decays are reweighted by accept-reject in the J/ψ frame:
  ``1 + cos²θ`` for lepton pairs, ``1 + α cos²θ`` (α ≈ 0.6) for p p̄, and for J/ψ → V P (ρπ, K*K̄) the
  vector carries helicity ±1 only (parity), giving ``(1 + cos²θ) sin²θ'`` in the production angle θ and the
  vector's decay angle θ' (with the azimuthal correlation between them, see :func:`vector_pseudoscalar_weight`).
* Final-state QED radiation in decays is Pythia's (``HadronLevel:QED``, lepton pairs); ``fsr=False`` turns it
  off (the "removed radiative tail" sample of the evaluation suite).
* Pythia's default J/ψ table has no p p̄ channel: it is added with the PDG fraction 2.12e-3 (taken from the
  ``g g g`` continuum channel so the table still sums to one).
* The crossing angle: each beam is tilted by α = 11 mrad in the horizontal plane, so the J/ψ moves along +x
  with β = sin α (p = M tan α ≈ 34 MeV/c). All momenta and production vertices (4-positions) are boosted.
* Vertices: Pythia's decay vertices (K_S and Λ flight, in mm) boosted, converted to cm, plus a primary vertex
  drawn from the beam spot.
* The inclusive sample is a mixture: the channel class of each event is drawn from the decay table, the
  two-body classes with a known angular law come from their exclusive generators, the rest from Pythia with
  those channels off. Branching fractions stay the table's.

Example:
    >>> gen = JpsiGenerator("mumu", seed=1)
    >>> truth = gen.generate(100)
    >>> int(truth["n_truth"].size)
    100
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vbes.errors import InvalidInput

__all__ = [
    "ANGULAR_ALPHA_PPBAR",
    "DEFAULT_BEAM",
    "GENERATOR_CHANNELS",
    "JPSI_MASS",
    "PDG_BRANCHING",
    "JpsiGenerator",
    "beam_spot_vertices",
    "boost_x",
    "jpsi_table",
    "pythia_version",
    "vector_pseudoscalar_weight",
]

#: J/ψ mass (PDG 2024), GeV/c²
JPSI_MASS = 3.0969
#: PDG J/ψ branching fractions quoted in MISSION.md (the reference the decay table is checked against)
PDG_BRANCHING: dict[str, float] = {"ee": 5.97e-2, "mumu": 5.96e-2, "rhopi": 1.69e-2, "ppbar": 2.12e-3}
#: α of ``1 + α cos²θ`` in e+e− → J/ψ → p p̄ (MISSION.md: α ≈ 0.6)
ANGULAR_ALPHA_PPBAR = 0.6
#: beam constants used when no calibration store is given (MISSION.md "typical values"); lengths in cm
DEFAULT_BEAM: dict[str, float] = {
    "crossing_half_angle_rad": 0.011,
    "sigma_x_cm": 0.038,
    "sigma_y_cm": 0.00057,
    "sigma_z_cm": 1.5,
    "offset_x_cm": 0.0,
    "offset_y_cm": 0.0,
    "offset_z_cm": 0.0,
}

_VECTORS = (113, 213, -213, 313, -313, 323, -323)
# J/ψ decay channels (Pythia particle-data products, sorted) of each angular class
_CLASS_CHANNELS: dict[str, tuple[tuple[int, ...], ...]] = {
    "ee": ((-11, 11),),
    "mumu": ((-13, 13),),
    "ppbar": ((-2212, 2212),),
    "rhopi": ((111, 113), (-211, 213), (-213, 211)),
    "kstark": ((-323, 321), (-321, 323), (-313, 311), (-311, 313)),
}
_CLASS_ALPHA = {"ee": 1.0, "mumu": 1.0, "ppbar": ANGULAR_ALPHA_PPBAR}
#: channels the generator makes (names as in ``vbes.datasets.schema.CHANNELS``)
GENERATOR_CHANNELS = ("rhopi", "kskpi", "ee", "mumu", "ppbar", "inclusive")
_EXCLUSIVE_CLASS = {"rhopi": "rhopi", "kskpi": "kstark", "ee": "ee", "mumu": "mumu", "ppbar": "ppbar"}
_PPBAR_LINE = "443:addChannel = 1 0.00212 0 2212 -2212"
_BATCH = 10000  # J/ψ per Pythia event record: large enough to amortise the call, small enough for the cache
_MM_TO_CM = 0.1


def pythia_version() -> str:
    """The installed ``pythia8mc`` version."""
    from importlib.metadata import version

    return version("pythia8mc")


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence Pythia's banner and init listing (C++ writes to file descriptor 1)."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _new_pythia(lines: list[str], seed: int) -> Any:
    import pythia8mc

    with _quiet_stdout():
        pythia = pythia8mc.Pythia("", False)
        for line in [
            "ProcessLevel:all = off",
            "Print:quiet = on",
            "Next:numberShowEvent = 0",
            "Random:setSeed = on",
            f"Random:seed = {seed % 900_000_000}",
            _PPBAR_LINE,
            *lines,
        ]:
            if not pythia.readString(line):
                raise RuntimeError(f"Pythia refused the setting {line!r}")
        # the added p p̄ fraction comes out of the g g g continuum, so the table still sums to one
        entry = pythia.particleData.particleDataEntryPtr(443)
        gluons = entry.channel(0)
        gluons.bRatio(gluons.bRatio() - 0.00212)
        if not pythia.init():
            raise RuntimeError("Pythia failed to initialise")
    return pythia


def jpsi_table(pythia: Any | None = None) -> list[tuple[tuple[int, ...], float]]:
    """The J/ψ decay table the generator uses: ``[(sorted products, branching fraction), ...]``.

    Example:
        >>> table = dict(jpsi_table())
        >>> round(table[(-2212, 2212)], 5)
        0.00212
    """
    pythia = pythia or _new_pythia([], 1)
    entry = pythia.particleData.particleDataEntryPtr(443)
    out = []
    for i in range(entry.sizeChannels()):
        channel = entry.channel(i)
        products = tuple(sorted(channel.product(j) for j in range(channel.multiplicity())))
        out.append((products, channel.bRatio()))
    return out


def _on_lines(channels: tuple[tuple[int, ...], ...]) -> list[str]:
    return ["443:onMode = off"] + [f"443:onIfMatch = {' '.join(map(str, c))}" for c in channels]


def _off_lines(channels: tuple[tuple[int, ...], ...]) -> list[str]:
    return [f"443:offIfMatch = {' '.join(map(str, c))}" for c in channels]


def boost_x(e: np.ndarray, px: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Lorentz boost of ``(e, px)`` (or ``(t, x)``) by velocity ``beta`` along +x; returns ``(e', px')``."""
    gamma = 1.0 / np.sqrt(1.0 - beta * beta)
    return gamma * (e + beta * px), gamma * (px + beta * e)


def beam_spot_vertices(beam: Mapping[str, float], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` primary vertices (n, 3) in cm drawn from the beam spot: independent Gaussians in x, y, z.

    Args:
        beam: ``offset_{x,y,z}_cm`` and ``sigma_{x,y,z}_cm`` (keys of :data:`DEFAULT_BEAM`, the ``Beam`` payload).
        n: number of vertices.
        rng: the generator drawn from (x for all vertices, then y, then z).

    Example:
        >>> v = beam_spot_vertices(DEFAULT_BEAM, 4, np.random.default_rng(1))
        >>> v.shape
        (4, 3)
    """
    return np.stack([
        rng.normal(beam["offset_x_cm"], beam["sigma_x_cm"], n),
        rng.normal(beam["offset_y_cm"], beam["sigma_y_cm"], n),
        rng.normal(beam["offset_z_cm"], beam["sigma_z_cm"], n),
    ], 1)


def _boost_to_rest(p: np.ndarray, e: np.ndarray, frame_p: np.ndarray, frame_e: np.ndarray) -> np.ndarray:
    """Momenta ``p`` (n, 3) with energies ``e`` seen in the rest frame of ``(frame_p, frame_e)``."""
    beta = frame_p / frame_e[:, None]
    b2 = np.einsum("ij,ij->i", beta, beta)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    bp = np.einsum("ij,ij->i", beta, p)
    coef = np.where(b2 > 0, (gamma - 1.0) * bp / np.where(b2 > 0, b2, 1.0), 0.0) - gamma * e
    return p + coef[:, None] * beta


def vector_pseudoscalar_weight(vector_dir: np.ndarray, daughter_dir_in_vector: np.ndarray) -> np.ndarray:
    """Angular weight of e+e− → J/ψ → V P, V → P P, with maximum 1.

    The J/ψ is in an incoherent mix of helicity ±1 along the beam (z); the V P coupling
    ε(J/ψ)·(p̂ × ε(V)) forbids vector helicity 0, so V is polarised along p̂ × ε(J/ψ) and the daughter
    amplitude is ∝ ε(V)·q̂. Summing ε(J/ψ) over x̂, ŷ gives ``|q̂ × p̂|² − ((q̂ × p̂)·ẑ)²``, i.e.
    ``sin²θ'(1 + cos²θ + sin²θ cos 2φ')/2``: integrated, ``(1 + cos²θ)`` in the production angle and
    ``sin²θ'`` in the decay angle.

    Args:
        vector_dir: unit direction of V in the J/ψ frame, shape (n, 3).
        daughter_dir_in_vector: unit direction of one V daughter in the V rest frame, shape (n, 3).
    """
    cross = np.cross(daughter_dir_in_vector, vector_dir)
    return np.einsum("ij,ij->i", cross, cross) - cross[:, 2] ** 2


@dataclass
class _Record:
    """Flat truth particles of a batch, grouped by event (Pythia's record order inside each event)."""

    event: np.ndarray  # event index of each particle
    pdg: np.ndarray
    mother: np.ndarray  # within-event index, -1 for the J/ψ
    p: np.ndarray  # (n, 4): px, py, pz, e in the J/ψ rest frame
    v: np.ndarray  # (n, 4): x, y, z, t in mm from the J/ψ decay point
    final: np.ndarray
    d1: np.ndarray  # within-event index of the first daughter, -1 for none
    n_events: int


class _Decayer:
    """One Pythia instance decaying J/ψ into a fixed set of channels, with an angular law."""

    def __init__(self, angular: str, lines: list[str], seed: int) -> None:
        import pythia8mc

        self.angular = angular  # "iso", "twobody:<alpha>", "vp"
        self.pythia = _new_pythia(lines, seed)
        # a record of _BATCH J/ψ at rest, copied in C++ before each batch instead of appended one by one
        event = self.pythia.event
        event.reset()
        for _ in range(_BATCH):
            event.append(443, 1, 0, 0, 0.0, 0.0, 0.0, JPSI_MASS, JPSI_MASS)
        self._template = pythia8mc.Event()
        self._template.assign(event)

    def reseed(self, seed: int) -> None:
        self.pythia.rndm.init(seed % 900_000_000)

    def _decay_batch(self) -> _Record:
        import awkward as ak

        n = _BATCH
        self.pythia.event.assign(self._template)
        batch = self.pythia.nextBatch(1)
        if len(batch) != 1:
            raise RuntimeError("Pythia failed to decay a batch of J/psi")
        prt = batch.prt[0]
        pdg = ak.to_numpy(prt.id)[1:].astype(np.int32)  # entry 0 is Pythia's "system" line
        status = ak.to_numpy(prt.status)[1:]
        mother1 = ak.to_numpy(prt.mother1)[1:].astype(np.int64) - 1
        daughter1 = ak.to_numpy(prt.daughter1)[1:].astype(np.int64) - 1
        mom = prt.p
        p = np.stack([ak.to_numpy(mom.px), ak.to_numpy(mom.py), ak.to_numpy(mom.pz), ak.to_numpy(mom.e)], 1)[1:]
        vprod = ak.fill_none(prt.vProd, {"px": 0.0, "py": 0.0, "pz": 0.0, "e": 0.0})
        v = np.stack([ak.to_numpy(vprod.px), ak.to_numpy(vprod.py), ak.to_numpy(vprod.pz),
                      ak.to_numpy(vprod.e)], 1)[1:]
        # which J/ψ (0..n-1) each particle descends from: mothers always precede daughters in the record
        root = np.where(mother1 < 0, np.arange(pdg.size), mother1)
        while True:
            nxt = np.where(root >= n, root[root], root)
            if np.array_equal(nxt, root):
                break
            root = nxt
        order = np.lexsort((np.arange(pdg.size), root))
        position = np.empty(pdg.size, np.int64)
        starts = np.searchsorted(root[order], np.arange(n))
        position[order] = np.arange(pdg.size) - starts[root[order]]
        mother = np.where(mother1 < 0, -1, position[np.maximum(mother1, 0)])
        d1 = np.where(daughter1 < 0, -1, position[np.maximum(daughter1, 0)])
        return _Record(root[order], pdg[order], mother[order], p[order], v[order], (status > 0)[order],
                       d1[order], n)

    def _accept(self, rec: _Record, rng: np.random.Generator, keep: np.ndarray | None) -> np.ndarray:
        starts = np.searchsorted(rec.event, np.arange(rec.n_events))
        accept = np.ones(rec.n_events, bool) if keep is None else keep.copy()
        if self.angular == "iso":
            return accept
        first = starts + rec.d1[starts]  # the J/ψ's first daughter, before any radiation
        if self.angular.startswith("twobody:"):
            alpha = float(self.angular.split(":")[1])
            p = rec.p[first, :3]
            cos2 = p[:, 2] ** 2 / np.einsum("ij,ij->i", p, p)
            weight = (1.0 + alpha * cos2) / (1.0 + max(alpha, 0.0))
        else:  # "vp": find V among the two first daughters (adjacent in the record)
            second = first + 1
            first_is_vector = np.isin(rec.pdg[first], _VECTORS)
            vec = np.where(first_is_vector, first, second)
            vdau = starts + rec.d1[vec]
            pv, ev = rec.p[vec, :3], rec.p[vec, 3]
            q = _boost_to_rest(rec.p[vdau, :3], rec.p[vdau, 3], pv, ev)
            weight = vector_pseudoscalar_weight(pv / np.linalg.norm(pv, axis=1)[:, None],
                                                q / np.linalg.norm(q, axis=1)[:, None])
        return accept & (rng.random(rec.n_events) < weight)

    def generate(self, n: int, rng: np.random.Generator, kskpi_filter: bool = False) -> _Record:
        """``n`` accepted J/ψ decays."""
        parts: list[_Record] = []
        have = 0
        while have < n:
            rec = self._decay_batch()
            keep = _kskpi_mask(rec) if kskpi_filter else None
            accept = self._accept(rec, rng, keep)
            take = np.flatnonzero(accept)[: n - have]
            parts.append(_select_events(rec, take))
            have += take.size
        return parts[0] if len(parts) == 1 else _concat(parts)


def _kskpi_mask(rec: _Record) -> np.ndarray:
    """Events with a K_S and a charged kaon: J/ψ → K* K̄ → K_S K± π∓."""
    has_ks = np.zeros(rec.n_events, bool)
    has_ks[rec.event[rec.pdg == 310]] = True
    has_k = np.zeros(rec.n_events, bool)
    has_k[rec.event[(np.abs(rec.pdg) == 321) & rec.final]] = True
    return has_ks & has_k


def _select_events(rec: _Record, events: np.ndarray) -> _Record:
    keep = np.zeros(rec.n_events, bool)
    keep[events] = True
    mask = keep[rec.event]
    renumber = np.cumsum(keep) - 1
    return _Record(renumber[rec.event[mask]], rec.pdg[mask], rec.mother[mask], rec.p[mask], rec.v[mask],
                   rec.final[mask], rec.d1[mask], int(events.size))


def _concat(parts: list[_Record]) -> _Record:
    offsets = np.cumsum([0] + [r.n_events for r in parts])
    return _Record(
        np.concatenate([r.event + off for r, off in zip(parts, offsets, strict=False)]),
        np.concatenate([r.pdg for r in parts]),
        np.concatenate([r.mother for r in parts]),
        np.concatenate([r.p for r in parts]),
        np.concatenate([r.v for r in parts]),
        np.concatenate([r.final for r in parts]),
        np.concatenate([r.d1 for r in parts]),
        int(offsets[-1]),
    )


def _class_decayer(cls: str, fsr: bool, seed: int, angular_law: bool = True) -> _Decayer:
    qed = [f"HadronLevel:QED = {'on' if fsr else 'off'}"]
    if cls == "other":
        lines = _off_lines(tuple(c for chans in _CLASS_CHANNELS.values() for c in chans))
        return _Decayer("iso", qed + lines, seed)
    angular = "vp" if cls in ("rhopi", "kstark") else f"twobody:{_CLASS_ALPHA[cls]}"
    if not angular_law:
        angular = "iso"
    return _Decayer(angular, qed + _on_lines(_CLASS_CHANNELS[cls]), seed)


class JpsiGenerator:
    """Truth-level J/ψ decays of one channel, in the laboratory frame of BEPCII.

    Args:
        channel: one of :data:`GENERATOR_CHANNELS`.
        seed: seed of Pythia and of NumPy's generator; same seed, same events.
        fsr: final-state QED radiation in decays (default on).
        angular: apply the production/decay angular laws (default); ``False`` keeps Pythia's isotropic
            decays, e.g. as the flat reference for acceptance corrections.

    Example:
        >>> t = JpsiGenerator("rhopi", seed=3).generate(10)
        >>> sorted(t)[:4]
        ['e', 'event', 'final', 'mother']
    """

    def __init__(self, channel: str, seed: int = 0, fsr: bool = True, angular: bool = True) -> None:
        if channel not in GENERATOR_CHANNELS:
            raise InvalidInput(f"unknown channel {channel!r}; known: {', '.join(GENERATOR_CHANNELS)}")
        self.channel = channel
        self.fsr = fsr
        self.seed = seed
        self.angular = angular
        self._decayers: dict[str, _Decayer] = {}
        if channel == "inclusive":
            table = jpsi_table(_new_pythia([], 1))
            fractions = {cls: sum(br for prod, br in table if prod in chans)
                         for cls, chans in _CLASS_CHANNELS.items()}
            fractions["other"] = 1.0 - sum(fractions.values())
            self._classes = list(fractions)
            self._fractions = np.array([fractions[c] for c in self._classes])
        else:
            self._classes = [_EXCLUSIVE_CLASS[channel]]
            self._fractions = np.ones(1)

    def _decayer(self, cls: str) -> _Decayer:
        if cls not in self._decayers:
            self._decayers[cls] = _class_decayer(cls, self.fsr, self.seed, self.angular)
        return self._decayers[cls]

    def generate(self, n_events: int, chunk: int = 0,
                 beam: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
        """``n_events`` truth events as flat arrays (lab frame, cm, GeV).

        Args:
            n_events: number of events.
            chunk: index of this chunk; ``(seed, chunk)`` fixes the random streams, so chunks can run in
                parallel and still give the same events.
            beam: crossing angle and beam spot (keys of :data:`DEFAULT_BEAM`), e.g. the ``Beam`` payload.

        Returns:
            ``{"n_truth": (n_events,), "event", "pdg", "mother", "px", "py", "pz", "e", "vx", "vy", "vz",
            "final": (n_particles,)}``; particles of one event are contiguous, the J/ψ first.
        """
        beam = {**DEFAULT_BEAM, **(beam or {})}
        seq = np.random.SeedSequence([self.seed, chunk])
        rng = np.random.default_rng(seq)
        pythia_seeds = seq.generate_state(len(self._classes))
        counts = rng.multinomial(n_events, self._fractions)
        parts = []
        for cls, count, pseed in zip(self._classes, counts, pythia_seeds, strict=True):
            if count == 0:
                continue
            dec = self._decayer(cls)
            dec.reseed(int(pseed))
            parts.append(dec.generate(int(count), rng, kskpi_filter=self.channel == "kskpi"))
        rec = parts[0] if len(parts) == 1 else _concat(parts)
        if len(parts) > 1:  # mix the classes of the inclusive sample into a random event order
            new_order = rng.permutation(rec.n_events)
            rank = np.empty_like(new_order)
            rank[new_order] = np.arange(new_order.size)
            particle_order = np.lexsort((np.arange(rec.event.size), rank[rec.event]))
            rec = _Record(rank[rec.event][particle_order], rec.pdg[particle_order], rec.mother[particle_order],
                          rec.p[particle_order], rec.v[particle_order], rec.final[particle_order],
                          rec.d1[particle_order], rec.n_events)
        return self._to_lab(rec, beam, rng)

    @staticmethod
    def _to_lab(rec: _Record, beam: Mapping[str, float], rng: np.random.Generator) -> dict[str, np.ndarray]:
        beta = float(np.sin(beam["crossing_half_angle_rad"]))
        e, px = boost_x(rec.p[:, 3], rec.p[:, 0], beta)
        _t, x = boost_x(rec.v[:, 3], rec.v[:, 0], beta)
        n = rec.n_events
        primary = beam_spot_vertices(beam, n, rng)
        ev = rec.event
        return {
            "n_truth": np.bincount(ev, minlength=n).astype(np.int32),
            "event": ev.astype(np.int64),
            "pdg": rec.pdg.astype(np.int32),
            "mother": rec.mother.astype(np.int32),
            "px": px,
            "py": rec.p[:, 1].copy(),
            "pz": rec.p[:, 2].copy(),
            "e": e,
            "vx": x * _MM_TO_CM + primary[ev, 0],
            "vy": rec.v[:, 1] * _MM_TO_CM + primary[ev, 1],
            "vz": rec.v[:, 2] * _MM_TO_CM + primary[ev, 2],
            "final": rec.final.astype(np.int8),
        }
