"""The store's default content, created by ``vbes calib init`` (idempotent).

* ``BOSS-6.6.4``: the talk's BESIII offline-database bookkeeping table (package data), imported as it is; its
  one invalid row (DedxSim 50000..28648) is reported, not fatal.
* ``BOSS-6.6.4-sim-2``: built from the tag spec ``data/boss-6.6.4-sim-2.yaml`` (a clone of ``BOSS-6.6.4`` plus the
  simulation constants of detector model 2) when that file is shipped.
* ``BOSS-6.6.4-sim``: the previous simulation tag (detector model 1), still built so that files made with it
  resolve their constants; new samples use ``BOSS-6.6.4-sim-2``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from .bookkeeping import ImportReport, import_bookkeeping
from .spec import SpecResult, apply_tag_spec
from .store import CalibrationStore

__all__ = ["DATA_DIR", "DEFAULT_TAG", "PREVIOUS_SIM_SPECS", "SIM_SPEC", "SIM_TAG", "TALK_TABLE", "InitReport",
           "init_defaults"]

DATA_DIR = Path(str(files("vbes.calibration") / "data"))
TALK_TABLE = DATA_DIR / "besiii-offlinedb-calibration-6.6.4.tsv"
SIM_SPEC = DATA_DIR / "boss-6.6.4-sim-2.yaml"
#: earlier simulation tags, kept buildable: their files name them in provenance
PREVIOUS_SIM_SPECS = (DATA_DIR / "boss-6.6.4-sim.yaml",)
DEFAULT_TAG = "BOSS-6.6.4"
SIM_TAG = "BOSS-6.6.4-sim-2"


@dataclass(frozen=True)
class InitReport:
    """What ``init`` did: the table import and the simulation tag (None when no spec file is shipped)."""

    table: ImportReport
    sim: SpecResult | None
    previous: tuple[SpecResult, ...] = ()

    def lines(self) -> list[str]:
        out = [self.table.summary()]
        out.append(self.sim.summary() if self.sim else f"{SIM_TAG}: no spec file {SIM_SPEC.name}; skipped")
        out.extend(result.summary() for result in self.previous)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.table.as_dict(),
                "sim": None if self.sim is None else {"tag": self.sim.tag, "status": self.sim.status,
                                                      "iovs": self.sim.iovs, "file": self.sim.file}}


def init_defaults(store: CalibrationStore, table: Path = TALK_TABLE, sim_spec: Path = SIM_SPEC) -> InitReport:
    """Import the talk's table into ``BOSS-6.6.4`` and build the simulation tags from their specs, if shipped."""
    report = import_bookkeeping(store, table, DEFAULT_TAG,
                                purpose="BESIII offline database calibration bookkeeping, BOSS 6.6.4 (talk)")
    sim = apply_tag_spec(store, sim_spec) if sim_spec.is_file() else None
    previous = tuple(apply_tag_spec(store, spec) for spec in PREVIOUS_SIM_SPECS if spec.is_file())
    return InitReport(report, sim, previous)
