"""Reference samples: Pythia 8 J/ψ decays (or a particle gun) + the BESIII-like detector response, per run range.

``simulate`` builds the four tables in memory; ``generate_sample`` streams them into an event file with full
provenance. Events get run numbers spread evenly over ``[first, last]`` (negative for MC); runs whose
calibration payloads are the same form one group, simulated with that group's constants, and the file records
the SHA-256 of every payload used. Work is cut into chunks of at most ``chunk_events`` events whose random
streams depend only on ``(seed, chunk index)``, so the arrays are the same for any number of workers. Channel
``gun`` shoots single particles (:class:`vbes.datasets.gun.ParticleGun`, described by a
:class:`~vbes.datasets.gun.GunSpec`) through the same material and detector.

Example:
    >>> tables = simulate("mumu", 20, runs=(-10000, -9991), seed=1)
    >>> tables["events"]["run"][:3].tolist()
    [-10000, -10000, -9999]
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from vbes.datasets.detector import REQUIRED_PAYLOAD_TYPES, SIM_CONSTANTS_FILE, simulate_detector
from vbes.datasets.generator import GENERATOR_CHANNELS, JpsiGenerator, pythia_version
from vbes.datasets.gun import GUN_GENERATOR, GUN_VERSION, GunSpec, ParticleGun
from vbes.datasets.schema import channel_code

from vbes.errors import InvalidInput, PayloadNotFound

__all__ = [
    "DETECTOR_MODEL",
    "DETECTOR_MODEL_VERSION",
    "SIMULATION_CHANNELS",
    "SIM_TAG",
    "assign_runs",
    "generate_sample",
    "iter_simulated",
    "parse_runs",
    "simulate",
    "truth_status_flags",
]

SIM_TAG = "BOSS-6.6.4-sim-2"
DETECTOR_MODEL = "vbes BESIII-like parametric response"
DETECTOR_MODEL_VERSION = "2"
_CHUNK_EVENTS = 50_000
#: channels :func:`simulate` takes: the J/ψ generator's and ``gun`` (single particles, needs a ``GunSpec``)
SIMULATION_CHANNELS = (*GENERATOR_CHANNELS, "gun")
# BOSS McParticle status bits: 1 decayed by (or made by) the generator, 2 decayed in flight (Geant4), 8 a leaf
_MC_FROM_GENERATOR, _MC_DECAYED_IN_FLIGHT, _MC_LEAF = 1, 2, 8

Tables = dict[str, dict[str, np.ndarray]]
#: wraps the iterator of chunks, e.g. ``lambda chunks, total: vbes.cli.progress(chunks, total=total)``
ProgressFn = Callable[[Iterator[Tables], int], Iterable[Tables]]


def parse_runs(text: str) -> tuple[int, int]:
    """``"FIRST:LAST"`` -> ``(first, last)``; e.g. ``"-10000:-9000"``.

    Example:
        >>> parse_runs("-10000:-9000")
        (-10000, -9000)
    """
    head, sep, tail = text.strip().rpartition(":") if text.count(":") == 1 else ("", "", "")
    try:
        first, last = int(head), int(tail)
    except ValueError:
        raise InvalidInput(f"--runs {text!r}: expected FIRST:LAST, e.g. -10000:-9000") from None
    if not sep or first > last:
        raise InvalidInput(f"--runs {text!r}: the first run must not be after the last")
    if first == 0 or last == 0 or (first < 0 < last):
        raise InvalidInput(f"--runs {text!r}: run 0 does not exist; MC runs are negative, data runs positive")
    return first, last


def assign_runs(n_events: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Spread ``n_events`` evenly over runs ``first..last`` in run order; returns ``(run, event number)``.

    Example:
        >>> [a.tolist() for a in assign_runs(5, -3, -2)]
        [[-3, -3, -3, -2, -2], [0, 1, 2, 0, 1]]
    """
    n_runs = last - first + 1
    run = first + (np.arange(n_events, dtype=np.int64) * n_runs) // max(n_events, 1)
    starts = np.searchsorted(run, run, side="left")
    return run, np.arange(n_events, dtype=np.int64) - starts


class _YamlConstants:
    """The simulation tag's payloads read from its YAML file: for in-memory work without a store."""

    def __init__(self) -> None:
        import yaml

        self.payloads = [p for p in yaml.safe_load(SIM_CONSTANTS_FILE.read_text())["payloads"]
                         if p["type"] in REQUIRED_PAYLOAD_TYPES]

    def resolve(self, run: int) -> dict[str, tuple[str, Mapping[str, Any]]]:
        out = {}
        for i, p in enumerate(self.payloads):
            if p["first"] <= run <= p["last"]:
                out[p["type"]] = (f"yaml:{SIM_CONSTANTS_FILE.name}#{i}", p["constants"])
        return out


class _StoreConstants:
    def __init__(self, store: Any, tag: str) -> None:
        self.store, self.tag = store, tag

    def resolve(self, run: int) -> dict[str, tuple[str, Mapping[str, Any]]]:
        return {t: (p.sha256, p.constants) for t, p in self.store.resolve(self.tag, run).items()}


@dataclass(frozen=True)
class _Chunk:
    index: int
    start: int  # first event of the chunk in the sample
    run: np.ndarray
    event: np.ndarray
    constants: Mapping[str, Mapping[str, Any]]


def _plan(n_events: int, runs: tuple[int, int], resolver: Any, tag: str,
          chunk_events: int) -> tuple[list[_Chunk], dict[str, list[str]]]:
    """Chunks of events sharing one set of payloads, and the payload hashes used per type."""
    run, event = assign_runs(n_events, *runs)
    unique_runs, first_index = np.unique(run, return_index=True)
    keys: list[tuple[str, ...]] = []
    constants_of: dict[tuple[str, ...], dict[str, Mapping[str, Any]]] = {}
    used: dict[str, set[str]] = {}
    for r in unique_runs.tolist():
        resolved = resolver.resolve(int(r))
        missing = [t for t in REQUIRED_PAYLOAD_TYPES if t not in resolved]
        if missing:
            raise PayloadNotFound(f"tag {tag} has no {', '.join(missing)} payload for run {r} "
                                  f"(the detector model needs {', '.join(REQUIRED_PAYLOAD_TYPES)})")
        key = tuple(resolved[t][0] for t in REQUIRED_PAYLOAD_TYPES)
        keys.append(key)
        constants_of.setdefault(key, {t: resolved[t][1] for t in REQUIRED_PAYLOAD_TYPES})
        for t in REQUIRED_PAYLOAD_TYPES:
            used.setdefault(t, set()).add(resolved[t][0])
    # consecutive runs with the same payloads form a group; groups are cut into chunks
    bounds = [0]
    for i in range(1, len(keys)):
        if keys[i] != keys[i - 1]:
            bounds.append(int(first_index[i]))
    bounds.append(n_events)
    group_keys = [keys[0]] + [keys[i] for i in range(1, len(keys)) if keys[i] != keys[i - 1]] if keys else []
    chunks: list[_Chunk] = []
    for g, key in enumerate(group_keys):
        for start in range(bounds[g], bounds[g + 1], chunk_events):
            stop = min(start + chunk_events, bounds[g + 1])
            chunks.append(_Chunk(len(chunks), start, run[start:stop], event[start:stop], constants_of[key]))
    return chunks, {t: sorted(s) for t, s in used.items()}


_WORKER_GENERATORS: dict[tuple[str, int, bool, GunSpec | None], JpsiGenerator | ParticleGun] = {}
# one job: channel, seed, fsr, material, the chunk, the gun (channel "gun" only)
_Job = tuple[str, int, bool, bool, _Chunk, GunSpec | None]


def _simulate_chunk(channel: str, seed: int, fsr: bool, material: bool, chunk: _Chunk,
                    gun: GunSpec | None = None) -> Tables:
    key = (channel, seed, fsr, gun)
    if key not in _WORKER_GENERATORS:  # one Pythia set (or gun) per process, reseeded per chunk
        _WORKER_GENERATORS[key] = (ParticleGun(gun, seed=seed) if gun is not None
                                   else JpsiGenerator(channel, seed=seed, fsr=fsr))
    n = int(chunk.run.size)
    truth = _WORKER_GENERATORS[key].generate(n, chunk=chunk.index, beam=chunk.constants["Beam"])
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk.index, 1]))
    constants = chunk.constants
    if not material:  # the tag's Material payload, switched off (what FSR alone gives)
        constants = {**constants, "Material": {**constants["Material"], "enabled": False}}
    generated = truth
    reco = simulate_detector(truth, constants, rng)
    truth = reco["truth"]  # with the secondaries made in the beam pipe and the MDC
    events = {
        "run": chunk.run,
        "event": chunk.event,
        "channel": np.full(n, channel_code(channel), np.int16),
        "n_tracks": reco["n_tracks"],
        "n_showers": reco["n_showers"],
        "n_truth": truth["n_truth"],
        "weight": np.ones(n, np.float32),
    }
    truth_table = {k: truth[k] for k in ("pdg", "mother", "px", "py", "pz", "e", "vx", "vy", "vz", "final")}
    truth_table["status_flags"] = truth_status_flags(generated, truth)
    return {"events": events, "tracks": reco["tracks"], "showers": reco["showers"], "truth": truth_table}


def truth_status_flags(generated: Mapping[str, np.ndarray], propagated: Mapping[str, np.ndarray]) -> np.ndarray:
    """BOSS McParticle status bits of the truth record after the material, as the real DST sets them.

    Generator particles carry 1 (and 8 when they are leaves); a final particle of the generator that the material
    converted or decayed carries 1 | 2 (decayed in flight); secondaries made in the material carry 8 alone, as
    Geant4's do in BOSS -- so the generator's final state is ``flags & 1 and flags & (2 | 8)``.

    Args:
        generated: the generator's truth (``n_truth``, ``final``), before the material.
        propagated: the truth after :func:`vbes.datasets.material.propagate` (the generator's rows of each event
            first, in their order, then the secondaries).
    """
    n_gen = np.asarray(generated["n_truth"], dtype=np.int64)
    n_all = np.asarray(propagated["n_truth"], dtype=np.int64)
    event = np.repeat(np.arange(n_all.size), n_all)
    position = np.arange(event.size) - np.repeat(np.cumsum(n_all) - n_all, n_all)
    from_generator = position < n_gen[event]
    final = np.asarray(propagated["final"]).astype(bool)
    was_final = np.zeros(event.size, bool)
    was_final[from_generator] = np.asarray(generated["final"]).astype(bool)
    flags = np.where(from_generator, _MC_FROM_GENERATOR, 0) | np.where(final, _MC_LEAF, 0)
    flags |= np.where(was_final & ~final, _MC_DECAYED_IN_FLIGHT, 0)
    return flags.astype(np.int32)


def _star(args: _Job) -> Tables:
    return _simulate_chunk(*args)


def _check(channel: str, n_events: int, runs: Sequence[int], gun: GunSpec | None = None) -> tuple[int, int]:
    if channel not in SIMULATION_CHANNELS:
        raise InvalidInput(f"unknown channel {channel!r}; known: {', '.join(SIMULATION_CHANNELS)}")
    if channel == "gun" and gun is None:
        raise InvalidInput("channel 'gun' needs a gun specification (species, momentum and cos(theta) ranges)")
    if channel != "gun" and gun is not None:
        raise InvalidInput(f"a gun specification is for channel 'gun', not {channel!r}")
    if n_events < 1:
        raise InvalidInput(f"number of events must be positive, not {n_events}")
    first, last = int(runs[0]), int(runs[1])
    parse_runs(f"{first}:{last}")
    return first, last


def iter_simulated(channel: str, n_events: int, runs: Sequence[int] = (-10000, -9001), seed: int = 0,
                   fsr: bool = True, store: Any = None, tag: str = SIM_TAG, workers: int = 1,
                   chunk_events: int = _CHUNK_EVENTS, material: bool = True, gun: GunSpec | None = None,
                   ) -> tuple[Iterator[Tables], dict[str, list[str]]]:
    """Chunks of simulated events in event order, and the payloads used (``{type: [sha256, ...]}``).

    Args:
        channel: one of ``rhopi``, ``kskpi``, ``ee``, ``mumu``, ``ppbar``, ``inclusive``, ``gun``.
        n_events: number of events.
        runs: ``(first, last)`` run range; negative for MC.
        seed: master seed; the same seed gives the same arrays (for any ``workers``).
        fsr: final-state radiation in decays (the gun has none: ignored there).
        material: the material effects of the tag's ``Material`` payload (bremsstrahlung, conversions, decays
            in flight, hadronic interactions); ``False`` switches them off, e.g. to compare with FSR alone.
        store: a :class:`vbes.calibration.CalibrationStore`; ``None`` reads the simulation tag's YAML file
            (same constants, but the hashes are then not store hashes).
        tag: the global tag to resolve constants from.
        workers: processes to use.
        chunk_events: events per chunk (the unit of work and of determinism).
        gun: what the particle gun shoots; required for channel ``gun``, refused for the others.

    Raises:
        InvalidInput: an unknown channel, no events, a bad run range, a gun specification missing (``gun``)
            or given for a J/ψ channel.
    """
    jobs, used = _jobs(channel, n_events, runs, seed, fsr, store, tag, chunk_events, material, gun)
    return _run(jobs, workers), used


def _jobs(channel: str, n_events: int, runs: Sequence[int], seed: int, fsr: bool, store: Any, tag: str,
          chunk_events: int = _CHUNK_EVENTS, material: bool = True, gun: GunSpec | None = None,
          ) -> tuple[list[_Job], dict[str, list[str]]]:
    first_last = _check(channel, n_events, runs, gun)
    resolver = _YamlConstants() if store is None else _StoreConstants(store, tag)
    chunks, used = _plan(n_events, first_last, resolver, tag, chunk_events)
    return [(channel, seed, fsr, material, c, gun) for c in chunks], used


def _run(jobs: list[_Job], workers: int) -> Iterator[Tables]:

    def run_serial() -> Iterator[Tables]:
        for job in jobs:
            yield _star(job)

    def run_parallel() -> Iterator[Tables]:
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(workers) as pool:
            yield from pool.imap(_star, jobs)

    return run_parallel() if workers > 1 and len(jobs) > 1 else run_serial()


def _concat_tables(parts: list[Tables]) -> Tables:
    return {table: {col: np.concatenate([p[table][col] for p in parts]) for col in parts[0][table]}
            for table in parts[0]}


def simulate(channel: str, n_events: int, runs: Sequence[int] = (-10000, -9001), seed: int = 0,
             fsr: bool = True, store: Any = None, tag: str = SIM_TAG, workers: int = 1,
             material: bool = True, gun: GunSpec | None = None) -> Tables:
    """Simulate ``n_events`` of ``channel`` in memory; the four schema tables (see :func:`iter_simulated`).

    Example:
        >>> from vbes.datasets.gun import GunSpec
        >>> t = simulate("gun", 50, runs=(-10000, -9991), seed=1, gun=GunSpec(("gamma",), p_range=(0.5, 1.0)))
        >>> sorted(set(t["events"]["channel"].tolist())), int(t["events"]["n_truth"].min())
        ([7], 1)
    """
    chunks, _ = iter_simulated(channel, n_events, runs, seed, fsr, store, tag, workers, material=material,
                               gun=gun)
    return _concat_tables(list(chunks))


def generate_sample(channel: str, n_events: int, output: str | os.PathLike[str],
                    runs: Sequence[int] = (-10000, -9001), tag: str = SIM_TAG, seed: int = 0, store: Any = None,
                    fsr: bool = True, workers: int = 1, progress: ProgressFn | None = None,
                    material: bool = True, gun: GunSpec | None = None) -> Path:
    """Simulate a sample and write it to ``output`` (an event file) with its provenance.

    Args:
        channel, n_events, runs, tag, seed, fsr, workers, material, gun: as :func:`iter_simulated`; a gun's
            specification goes into the provenance (``gun``: species, PDG ids, momentum and cos θ ranges).
        output: the event file to write (atomically: complete or absent).
        store: the calibration store; ``None`` opens the one configured in the settings.
        progress: wraps the iterator of chunks (progress bar); called as ``progress(chunks, n_chunks)``.

    Returns:
        the path written.
    """
    from vbes.calibration import CalibrationStore
    from vbes.datasets import EventWriter

    own_store = store is None
    if own_store:
        from vbes.settings import load_settings

        store = CalibrationStore.from_settings(load_settings())
    try:
        jobs, used = _jobs(channel, n_events, runs, seed, fsr, store, tag, material=material, gun=gun)
        import vbes

        generator: dict[str, Any]
        if gun is not None:  # no decays in the generator, so no FSR to record
            generator = {"generator": GUN_GENERATOR, "generator_version": GUN_VERSION, "channel": channel,
                         "seed": int(seed), "gun": gun.provenance()}
        else:
            generator = {
                "generator": "Pythia 8 (pythia8mc), J/psi decays at rest, boosted by the BEPCII crossing angle",
                "generator_version": pythia_version(),
                "channel": channel,
                "seed": int(seed),
                "fsr": bool(fsr),
            }
        provenance = {
            **generator,
            "material": bool(material),
            "runs": [int(runs[0]), int(runs[1])],
            "detector_model": DETECTOR_MODEL,
            "detector_model_version": DETECTOR_MODEL_VERSION,
            "calibration_tag": tag,
            "calibration_payloads": {t: (s[0] if len(s) == 1 else s) for t, s in used.items()},
            "software": f"vbes {getattr(vbes, '__version__', '')}".strip(),
        }
        path = Path(output)
        with EventWriter(path, provenance=provenance, mc=True) as writer:
            chunks = _run(jobs, workers)
            for tables in (chunks if progress is None else progress(chunks, len(jobs))):
                writer.append(tables)
        return path
    finally:
        if own_store:
            store.close()
