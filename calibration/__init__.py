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

from typing import Any

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
    "demo_step",
    "export_snapshot",
    "import_bookkeeping",
    "init_defaults",
    "restore_snapshot",
]


def demo_step(settings: Any) -> None:
    """``vbes demo``'s calibration step: run ``calib init`` on the configured store and show what it holds."""
    import click

    from vbes.errors import PayloadNotFound

    with CalibrationStore.from_settings(settings) as store:
        click.echo(f"   store {store.engine.url.render_as_string(hide_password=True)}")
        report = store.init_defaults()
        click.echo(f"   {report.table.summary()}")
        for refused in report.table.refused:
            click.echo(f"     refused {refused}")
        for line in report.lines()[1:]:
            click.echo(f"   {line}")
        for tag in store.list_tags():
            info = store.tag_info(tag["name"])
            types = ", ".join(f"{t} {v['iovs']}" for t, v in info["payload_types"].items())
            click.echo(f"   tag {tag['name']} [{tag['state']}, BOSS {tag['boss_release']}] {tag['iovs']} IoVs: "
                       f"{types}")
        for payload_type, run in (("EsTime", 10000), ("EsTime", 11000), ("EsToF", -10000)):
            try:
                p = store.get(DEFAULT_TAG, payload_type, run)
                answer = f"SerNo {p.metadata['serno']} (StVer {p.metadata['stver']}, sha256 {p.sha256[:12]})"
            except PayloadNotFound as exc:  # a gap is a gap: part of what the demo shows
                answer = f"gap: {exc}"
            click.echo(f"   get {DEFAULT_TAG} {payload_type} run {run}: {answer}")
