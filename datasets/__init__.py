"""vbes.datasets: the DST-level event format, its readers and writers, ingest of real formats, PyTorch access.

Public API::

    from vbes.datasets import EventWriter, read_events, iter_events, file_info, content_digest
    from vbes.datasets import EventDataset, EventDataModule          # PyTorch / Lightning (imports torch)
    from vbes.datasets import ingest_besiii_dst, ingest_root, export_root   # uproot, pybes3
    from vbes.datasets import simulate, generate_sample     # Pythia 8 + detector response
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vbes.datasets import schema
from vbes.datasets.eventfile import (
    EventWriter,
    content_digest,
    file_info,
    iter_events,
    read_events,
    summarize,
    validate_file,
)

if TYPE_CHECKING:  # the lazy names of _LAZY, seen by type checkers without importing torch or uproot at run time
    from vbes.datasets.ingest import export_root, ingest_besiii_dst, ingest_root
    from vbes.datasets.simulation import generate_sample, simulate
    from vbes.datasets.torchdata import EventDataModule, EventDataset

__all__ = [
    "schema",
    "EventWriter",
    "read_events",
    "iter_events",
    "file_info",
    "content_digest",
    "validate_file",
    "summarize",
    "EventDataset",
    "EventDataModule",
    "ingest_besiii_dst",
    "ingest_root",
    "export_root",
    "simulate",
    "generate_sample",
]

_LAZY = {
    # torch and uproot take seconds to import: loaded on first use
    "EventDataset": "vbes.datasets.torchdata",
    "EventDataModule": "vbes.datasets.torchdata",
    "ingest_besiii_dst": "vbes.datasets.ingest",
    "ingest_root": "vbes.datasets.ingest",
    "export_root": "vbes.datasets.ingest",
    "simulate": "vbes.datasets.simulation",
    "generate_sample": "vbes.datasets.simulation",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vbes.datasets' has no attribute {name!r}")
