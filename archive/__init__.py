"""vbes.archive: the conventional archive - checksummed, content-addressed, tiered, audited, BagIt export.

Bit preservation beside the models (anchors: BESIII's MD5 on every disk-to-tape copy, Rucio's replicas and
auditor, CTA/EOS end-to-end checksums, BagIt RFC 8493):

* :meth:`Archive.put` streams a file once, computing MD5, Adler-32 and SHA-256 while writing the hot replica
  atomically, then copies it to the cold tier; content is stored under its SHA-256, logical names are
  ``scope:name``;
* :meth:`Archive.get` verifies what it returns and falls back to another replica;
* :meth:`Archive.audit` re-reads replicas, confirms failures with a second read before calling a replica bad,
  repairs from a good replica, reports lost and dark files;
* :func:`export_bag` / :func:`import_bag` move datasets in and out as validated BagIt bags.

Example:
    >>> import tempfile, pathlib
    >>> home = pathlib.Path(tempfile.mkdtemp())
    >>> tiers = {"hot": str(home / "hot"), "cold": str(home / "cold")}
    >>> archive = Archive(f"sqlite:///{home}/cat.sqlite", tiers)
    >>> _ = (home / "a.txt").write_text("J/psi")
    >>> archive.put(home / "a.txt", "demo:a.txt").size
    5
    >>> [r.tier for r in archive.info("demo:a.txt").replicas]
    ['cold', 'hot']
"""

from __future__ import annotations

from vbes.archive.bagit_io import export_bag, import_bag
from vbes.archive.catalog import DatasetRecord, FileRecord, ReplicaRecord
from vbes.archive.checksums import Checksums, checksum_file
from vbes.archive.names import LogicalName, parse_name
from vbes.archive.store import Archive, AuditReport, PutResult
from vbes.archive.tiers import Tier

__all__ = [
    "Archive",
    "AuditReport",
    "Checksums",
    "DatasetRecord",
    "FileRecord",
    "LogicalName",
    "PutResult",
    "ReplicaRecord",
    "Tier",
    "checksum_file",
    "export_bag",
    "import_bag",
    "parse_name",
]
