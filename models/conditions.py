"""The calibration conditions a model is conditioned on: payload constants per run period, read from the store.

Detector-response and event-level surrogates depend on the run period's calibration constants (energy scale, dE/dx
and TOF resolutions, field, geometry). :class:`Conditions` holds, for the runs of a batch of events, the distinct
*periods* -- sets of payloads of the detector model's payload types with their SHA-256 -- read from the
calibration store by tag and run (never hard-coded). A model conditions its networks on the numeric constants that
differ between the periods it was trained on (:func:`varying_keys`), and uses the others (field, radii, the dE/dx
curve) in the reconstruction formulas it shares with the reference detector model.

Example:
    >>> from vbes.calibration import CalibrationStore, init_defaults
    >>> store = CalibrationStore("sqlite://")
    >>> _ = init_defaults(store)
    >>> cond = Conditions.from_store(store, "BOSS-6.6.4-sim-2", np.array([-25000, -15000, -15000]))
    >>> len(cond.periods), cond.period_of(np.array([-15000, -12000])).tolist()
    (2, [1, 1])
    >>> varying_keys(cond.periods)
    ['Dedx.sigma_rel', 'Emc.energy_scale', 'Tof.sigma_barrel_ns']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vbes.errors import InvalidInput, ModelError

__all__ = ["PAYLOAD_TYPES", "Conditions", "Period", "flatten_constants", "varying_keys"]

#: the payload types of the detector model (vbes.datasets.detector.REQUIRED_PAYLOAD_TYPES)
PAYLOAD_TYPES = ("Beam", "Mdc", "Dedx", "Tof", "Emc", "Muc", "Material")


def flatten_constants(constants: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested payload constants as ``{"Type.key.sub": value}`` (list elements by index).

    Example:
        >>> flatten_constants({"Tof": {"endcap_cos": [0.85, 0.93], "name": "x", "on": True}})
        {'Tof.endcap_cos.0': 0.85, 'Tof.endcap_cos.1': 0.93}
    """
    out: dict[str, float] = {}
    for key, value in constants.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_constants(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out.update(flatten_constants({str(i): v for i, v in enumerate(value)}, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


@dataclass(frozen=True)
class Period:
    """One set of payloads: the constants per payload type, and each payload's SHA-256 (its identity)."""

    constants: Mapping[str, Mapping[str, Any]]
    hashes: Mapping[str, str]
    tag: str = ""

    @property
    def key(self) -> tuple[str, ...]:
        return tuple(self.hashes.get(t, "") for t in PAYLOAD_TYPES)

    def flat(self) -> dict[str, float]:
        """Every numeric constant, flattened (:func:`flatten_constants`)."""
        return flatten_constants({t: self.constants[t] for t in PAYLOAD_TYPES if t in self.constants})

    def as_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "hashes": dict(self.hashes), "constants": {k: dict(v) for k, v in
                                                                              self.constants.items()}}


def varying_keys(periods: Sequence[Period]) -> list[str]:
    """The numeric constants that differ between ``periods`` (sorted): what a model must be conditioned on."""
    flats = [p.flat() for p in periods]
    if not flats:
        return []
    common = set(flats[0]).intersection(*flats[1:])
    return sorted(k for k in common if len({f[k] for f in flats}) > 1)


@dataclass
class Conditions:
    """Calibration periods and the run ranges they hold for.

    Attributes:
        periods: distinct payload sets.
        ranges: ``(first, last, period index)`` run ranges (inclusive, not overlapping): the intersection of the
            IoVs of every payload type of the period.
    """

    periods: list[Period] = field(default_factory=list)
    ranges: list[tuple[int, int, int]] = field(default_factory=list)

    @classmethod
    def from_store(cls, store: Any, tag: str, runs: np.ndarray) -> Conditions:
        """Resolve the payloads of every distinct run of ``runs`` in ``tag``.

        Args:
            store: a :class:`vbes.calibration.CalibrationStore`.
            tag: the global tag.
            runs: run numbers.

        Raises:
            PayloadNotFound: a run without one of the detector model's payload types.
        """
        out = cls()
        out.add(store, tag, runs)
        return out

    def add(self, store: Any, tag: str, runs: np.ndarray) -> None:
        """Add the periods of ``runs`` in ``tag`` (several tags may contribute: training files of different tags)."""
        from vbes.errors import PayloadNotFound

        index = {p.key: i for i, p in enumerate(self.periods)}
        for run in np.unique(np.asarray(runs, dtype=np.int64)).tolist():
            if self._find(np.asarray([run]))[0] >= 0:
                continue
            resolved = store.resolve(tag, int(run))
            missing = [t for t in PAYLOAD_TYPES if t not in resolved]
            if missing:
                raise PayloadNotFound(f"tag {tag} has no {', '.join(missing)} payload for run {run}")
            period = Period({t: resolved[t].constants for t in PAYLOAD_TYPES},
                            {t: resolved[t].sha256 for t in PAYLOAD_TYPES}, tag)
            if period.key not in index:
                index[period.key] = len(self.periods)
                self.periods.append(period)
            iovs = [store.iov_for(tag, t, int(run)) for t in PAYLOAD_TYPES]
            first, last = max(i.first for i in iovs), min(i.last for i in iovs)
            self.ranges.append((int(first), int(last), index[period.key]))
            self.ranges.sort()

    @classmethod
    def from_periods(cls, periods: Sequence[Mapping[str, Any]], ranges: Sequence[Sequence[int]]) -> Conditions:
        """Inverse of :meth:`as_dict`."""
        return cls([Period(p["constants"], p["hashes"], p.get("tag", "")) for p in periods],
                   sorted((int(a), int(b), int(i)) for a, b, i in ranges))

    def as_dict(self) -> dict[str, Any]:
        return {"periods": [p.as_dict() for p in self.periods], "ranges": [list(r) for r in self.ranges]}

    def _find(self, runs: np.ndarray) -> np.ndarray:
        if not self.ranges:
            return np.full(runs.shape, -1, dtype=np.int64)
        first = np.asarray([r[0] for r in self.ranges])
        last = np.asarray([r[1] for r in self.ranges])
        period = np.asarray([r[2] for r in self.ranges])
        pos = np.searchsorted(first, runs, side="right") - 1
        ok = (pos >= 0) & (runs <= last[np.maximum(pos, 0)])
        return np.where(ok, period[np.maximum(pos, 0)], -1)

    def covers(self, runs: np.ndarray) -> bool:
        """Whether every run of ``runs`` lies in a known period."""
        return bool((self._find(np.asarray(runs, dtype=np.int64)) >= 0).all())

    def period_of(self, runs: np.ndarray) -> np.ndarray:
        """Period index of every run in ``runs``.

        Raises:
            InvalidInput: a run these conditions do not cover.
        """
        runs = np.asarray(runs, dtype=np.int64)
        found = self._find(runs)
        if (found < 0).any():
            missing = np.unique(runs[found < 0])
            raise InvalidInput(f"no calibration conditions for run(s) {missing[:5].tolist()}")
        return found

    def subset(self, periods: Sequence[int]) -> Conditions:
        """Only ``periods`` (renumbered in the given order) and their run ranges."""
        renumber = {int(old): new for new, old in enumerate(periods)}
        return Conditions([self.periods[i] for i in periods],
                          [(a, b, renumber[i]) for a, b, i in self.ranges if i in renumber])

    def values(self, keys: Sequence[str]) -> np.ndarray:
        """``(periods, len(keys))`` numeric constants of every period.

        Raises:
            ModelError: a period without one of ``keys`` (a tag whose payloads have other constants).
        """
        out = np.zeros((len(self.periods), len(keys)))
        for i, p in enumerate(self.periods):
            flat = p.flat()
            missing = [k for k in keys if k not in flat]
            if missing:
                raise ModelError(f"calibration payloads of tag {p.tag} lack the constants {missing}")
            out[i] = [flat[k] for k in keys]
        return out

    def hashes(self) -> dict[str, list[str]]:
        """The payload SHA-256 per type over every period (for provenance)."""
        return {t: sorted({p.hashes[t] for p in self.periods}) for t in PAYLOAD_TYPES}

    def tags(self) -> list[str]:
        return sorted({p.tag for p in self.periods})
