"""vbes.calibration: the conditions store (global tags, content-addressed payloads, run-range IoVs).

Example:
    >>> from vbes.calibration import CalibrationStore
    >>> store = CalibrationStore("sqlite://")          # or CalibrationStore.from_settings(load_settings())
    >>> _ = store.init_defaults()                      # the talk's table as tag BOSS-6.6.4
    >>> store.get("BOSS-6.6.4", "EsTime", 10000).metadata["serno"]
    257
    >>> sorted(store.resolve("BOSS-6.6.4", -10000))
    ['EsToF']
"""

from __future__ import annotations

from .bookkeeping import ImportReport, import_bookkeeping
from .defaults import DEFAULT_TAG, SIM_SPEC, SIM_TAG, TALK_TABLE, InitReport, init_defaults
from .payload import Payload
from .snapshot import export_snapshot, restore_snapshot
from .spec import SpecResult, apply_tag_spec
from .store import CalibrationStore, IoV, IoVEntry

__all__ = [
    "DEFAULT_TAG",
    "SIM_SPEC",
    "SIM_TAG",
    "TALK_TABLE",
    "CalibrationStore",
    "ImportReport",
    "InitReport",
    "IoV",
    "IoVEntry",
    "Payload",
    "SpecResult",
    "apply_tag_spec",
    "export_snapshot",
    "import_bookkeeping",
    "init_defaults",
    "restore_snapshot",
]
