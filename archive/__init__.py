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
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import click
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


def _calibration_snapshot(settings: Any, folder: Path, scope: str) -> list[tuple[Path, str, dict[str, Any]]]:
    """The default tag's snapshot from the configured calibration store, or (before ``calib init`` ran) the
    calibration bookkeeping table shipped with vbes.calibration."""
    from vbes.calibration import DEFAULT_TAG, CalibrationStore, export_snapshot

    from vbes.errors import TagNotFound

    with CalibrationStore.from_settings(settings) as store:
        try:
            summary = export_snapshot(store, DEFAULT_TAG, folder / f"{DEFAULT_TAG}.tar")
        except TagNotFound:
            summary = None
    if summary is not None:
        meta = {
            "kind": "calibration snapshot",
            "calibration_tag": DEFAULT_TAG,
            "tag_state": summary["state"],
            "manifest_sha256": summary["manifest_sha256"],
            "provenance": "vbes demo: vbes.calibration.export_snapshot",
        }
        return [(Path(summary["file"]), f"{scope}:calibration/{DEFAULT_TAG}.tar", meta)]
    click.echo(
        f"   (no tag {DEFAULT_TAG} in the calibration store yet: archiving the bookkeeping table instead)"
    )
    with resources.as_file(resources.files("vbes.calibration") / "data") as data:
        tables = sorted(p for p in Path(data).iterdir() if p.is_file())
    meta = {"kind": "calibration bookkeeping table", "provenance": "vbes.calibration package data"}
    return [(t, f"{scope}:calibration/{t.name}", meta) for t in tables]


def demo_step(
    settings: Any,
    files: Sequence[str | Path] | None = None,
    scope: str = "demo",
    dataset: str | None = None,
) -> AuditReport:
    """``vbes demo``'s archive step: archive ``files`` (default: the calibration snapshot), audit, report.

    Each given file is named ``scope:<file name>`` (``scope:<sha256 prefix>/<file name>`` if that name already
    holds other content, e.g. from an earlier demo run) and collected in a dataset (default
    ``scope:files-<digest of the members>``, so re-running with the same files is a no-op) that is closed.

    Args:
        settings: :class:`vbes.settings.Settings` (catalog URL and tiers).
        files: local files to archive; default the default tag's calibration snapshot.
        scope: scope of the logical names.
        dataset: name of the dataset to record them in.
    """
    settings.ensure_home()
    with Archive.from_settings(settings) as archive, tempfile.TemporaryDirectory() as scratch:
        tiers = ", ".join(f"{t.name}={t.url}" for t in archive.tiers.values())
        click.echo(f"   catalog {archive.catalog.safe_url}; tiers {tiers}")
        if files is None:
            items = _calibration_snapshot(settings, Path(scratch), scope)
        else:
            items = [(Path(f), f"{scope}:{Path(f).name}", {"provenance": "vbes demo"}) for f in files]
        results: list[PutResult] = []
        for path, name, meta in items:
            try:
                result = archive.put(path, name, metadata=meta)
            except NameConflict:
                lname = parse_name(name)
                prefix = checksum_file(path).sha256[:12]
                result = archive.put(path, f"{lname.scope}:{prefix}/{lname.name}", metadata=meta)
            results.append(result)
            state = "archived" if result.created else "already archived"
            replicas = ", ".join(f"{r.tier}={r.state}" for r in result.record.replicas)
            click.echo(
                f"   {state:16s} {result.name}  {result.size} B  md5={result.record.md5}  "
                f"adler32={result.record.adler32}  sha256={result.sha256[:16]}…  replicas: {replicas}"
            )
        digest = hashlib.sha256(
            "\n".join(sorted(f"{r.name} {r.sha256}" for r in results)).encode()
        ).hexdigest()
        did = dataset or f"{scope}:files-{digest[:12]}"
        archive.create_dataset(did, {"created_by": "vbes demo"}, exist_ok=True)
        archive.add_to_dataset(did, [r.name for r in results])
        closed = archive.close_dataset(did)
        click.echo(f"   dataset {closed.did}: {len(closed.members)} files, {closed.state}")
        report = archive.audit()
        click.echo(f"   audit: {report.summary()} -> {'OK' if report.exit_code == 0 else 'PROBLEMS'}")
        for item in report.lost:
            click.echo(f"   LOST: {', '.join(item['names'])} sha256={item['sha256']}: no available replica")
        return report
