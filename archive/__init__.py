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

import hashlib
from collections.abc import Sequence
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from vbes.archive.bagit_io import export_bag, import_bag
from vbes.archive.catalog import DatasetRecord, FileRecord, ReplicaRecord
from vbes.archive.checksums import Checksums, checksum_file
from vbes.archive.names import LogicalName, parse_name
from vbes.archive.store import Archive, AuditReport, PutResult
from vbes.archive.tiers import Tier

from vbes.errors import NameConflict

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
    "demo_step",
    "export_bag",
    "import_bag",
    "parse_name",
]


def _default_demo_files() -> list[Path]:
    """The calibration bookkeeping table shipped with vbes.calibration (until the demo hands real samples)."""
    data = files("vbes.calibration") / "data"
    with as_file(data) as folder:
        return sorted(p for p in Path(folder).iterdir() if p.is_file())


def demo_step(
    settings: Any,
    files: Sequence[str | Path] | None = None,
    scope: str = "demo",
    dataset: str | None = None,
) -> AuditReport:
    """Archive ``files`` (default: the calibration bookkeeping table) under ``scope``, audit, report.

    Each file is named ``scope:<file name>`` (``scope:<sha256 prefix>/<file name>`` if that name already holds
    other content, e.g. from an earlier demo run), collected in a dataset (default ``scope:files-<digest>``,
    a digest of the members, so re-running with the same files is a no-op) that is then closed.

    Args:
        settings: :class:`vbes.settings.Settings` (catalog URL and tiers).
        files: local files to archive.
        scope: scope of the logical names.
        dataset: name of the dataset to record them in.
    """
    settings.ensure_home()
    paths = [Path(f) for f in files] if files is not None else _default_demo_files()
    with Archive.from_settings(settings) as archive:
        results: list[PutResult] = []
        for path in paths:
            try:
                result = archive.put(path, f"{scope}:{path.name}")
            except NameConflict:
                result = archive.put(path, f"{scope}:{checksum_file(path).sha256[:12]}/{path.name}")
            results.append(result)
            state = "archived" if result.created else "already archived"
            print(
                f"   {state:16s} {result.name}  {result.size} B  sha256={result.sha256[:16]}…  "
                f"replicas: {', '.join(r.tier + '=' + r.state for r in result.record.replicas)}"
            )
        digest = hashlib.sha256(
            "\n".join(sorted(f"{r.name} {r.sha256}" for r in results)).encode()
        ).hexdigest()
        did = dataset or f"{scope}:files-{digest[:12]}"
        archive.create_dataset(did, {"created_by": "vbes demo"}, exist_ok=True)
        archive.add_to_dataset(did, [r.name for r in results])
        closed = archive.close_dataset(did)
        print(f"   dataset {closed.did}: {len(closed.members)} files, {closed.state}")
        report = archive.audit()
        print(f"   audit: {report.summary()} -> {'OK' if report.exit_code == 0 else 'PROBLEMS'}")
        for item in report.lost:
            print(f"   LOST: {', '.join(item['names'])} sha256={item['sha256']}: no available replica")
        return report
