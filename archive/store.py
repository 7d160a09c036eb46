"""The archive itself: ``put`` (one pass, three checksums, atomic), ``get`` (verified, with fallback),
``audit`` (re-read, confirm, repair) over a :class:`~vbes.archive.catalog.Catalog` and its tiers.

Order of a ``put``, chosen so that a crash at any point leaves a consistent archive:

1. stream the source once into a temporary file on the first tier (``hot``) while computing MD5, Adler-32
   and SHA-256; ``fsync``; rename it to its SHA-256 name;
2. record file, name and hot replica in the catalog in one transaction;
3. copy the hot replica to every other tier (``cold``), checksumming the copy, and record each replica.

A crash in 1 leaves only a temporary file (swept later), in 2 at worst a complete, correctly named file the
catalog does not know yet (reported as dark by an audit, adopted by the retry), in 3 a catalogued file with
fewer replicas (completed by the retry or by ``audit --repair``). Never a half-written file under a content
name, never a catalog entry without its bytes.

Example:
    >>> import tempfile, pathlib
    >>> home = pathlib.Path(tempfile.mkdtemp())
    >>> tiers = {"hot": str(home / "hot"), "cold": str(home / "cold")}
    >>> archive = Archive(f"sqlite:///{home}/cat.sqlite", tiers)
    >>> _ = (home / "run.txt").write_bytes(b"run 8093")
    >>> archive.put(home / "run.txt", "data:run.txt").sha256[:12]
    'd40fac395ab0'
    >>> archive.audit().exit_code
    0
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from vbes.archive.catalog import (
    AVAILABLE,
    BAD,
    SUSPICIOUS,
    Catalog,
    DatasetRecord,
    FileRecord,
    as_logical_name,
)
from vbes.archive.checksums import Checksums, ChecksumStream, checksum_chunks, checksum_file, read_chunks
from vbes.archive.names import LogicalName
from vbes.archive.tiers import Tier

from vbes.errors import ChecksumMismatch, FileLost, InvalidInput, NameConflict, NotFound, TierError

__all__ = ["Archive", "PutResult", "AuditReport", "AUDIT_PROBLEMS_EXIT"]

log = logging.getLogger("vbes.archive")

#: exit status of ``vbes archive audit`` while anything is suspicious, bad, lost or could not be checked
AUDIT_PROBLEMS_EXIT = 3

ProgressWrapper = Callable[[Iterable[FileRecord], int], Iterable[FileRecord]]


@dataclass(frozen=True)
class PutResult:
    """What a ``put`` did: ``created`` is False when the name already held this content (a no-op)."""

    name: str
    sha256: str
    size: int
    created: bool
    written_tiers: tuple[str, ...]
    record: FileRecord

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created": self.created,
            "written_tiers": list(self.written_tiers),
            **self.record.as_dict(),
        }


@dataclass
class AuditReport:
    """The outcome of an audit; every list holds one dict per replica or file (JSON-ready)."""

    started_at: str
    tiers: dict[str, str]
    repair: bool
    files_checked: int = 0
    replicas_checked: int = 0
    replicas_ok: int = 0
    transient: list[dict[str, Any]] = field(default_factory=list)
    recovered: list[dict[str, Any]] = field(default_factory=list)
    suspicious: list[dict[str, Any]] = field(default_factory=list)
    bad: list[dict[str, Any]] = field(default_factory=list)
    repaired: list[dict[str, Any]] = field(default_factory=list)
    repair_failed: list[dict[str, Any]] = field(default_factory=list)
    missing_replicas: list[dict[str, Any]] = field(default_factory=list)
    unchecked: list[dict[str, Any]] = field(default_factory=list)
    unreachable_tiers: dict[str, str] = field(default_factory=dict)
    lost: list[dict[str, Any]] = field(default_factory=list)
    dark: list[dict[str, Any]] = field(default_factory=list)
    partial: list[dict[str, Any]] = field(default_factory=list)
    finished_at: str | None = None

    @property
    def problems(self) -> int:
        """Replicas still suspicious or bad, files lost, replicas that could not be checked."""
        return len(self.suspicious) + len(self.bad) + len(self.lost) + len(self.unchecked)

    @property
    def exit_code(self) -> int:
        return AUDIT_PROBLEMS_EXIT if self.problems else 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out["problems"] = self.problems
        out["exit_code"] = self.exit_code
        return out

    def summary(self) -> str:
        parts = [
            f"{self.files_checked} files, {self.replicas_checked} replicas checked, {self.replicas_ok} ok"
        ]
        for key in (
            "transient",
            "recovered",
            "suspicious",
            "bad",
            "repaired",
            "repair_failed",
            "missing_replicas",
            "unchecked",
            "lost",
            "dark",
            "partial",
        ):
            if getattr(self, key):
                parts.append(f"{len(getattr(self, key))} {key.replace('_', ' ')}")
        return "; ".join(parts)


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Archive:
    """A catalog plus storage tiers.

    Args:
        catalog_url: SQLAlchemy URL of the catalog (SQLite file or PostgreSQL).
        tiers: tier name -> fsspec URL, local path or a ready :class:`Tier`; order matters: the first is
            written in the ``put`` pass and read first by ``get`` (``{"hot": ..., "cold": ...}``).
    """

    def __init__(self, catalog_url: str, tiers: dict[str, str | Tier]) -> None:
        if not tiers:
            raise InvalidInput("an archive needs at least one storage tier")
        self.tiers: dict[str, Tier] = {
            name: value if isinstance(value, Tier) else Tier(name, str(value))
            for name, value in tiers.items()
        }
        self.catalog = Catalog(catalog_url)

    @classmethod
    def from_settings(cls, settings: Any) -> Archive:
        """The archive the settings configure (``archive_url``, ``archive_hot``, ``archive_cold``)."""
        return cls(settings.archive_url, {"hot": settings.archive_hot, "cold": settings.archive_cold})

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tier_list(self, names: Iterable[str] | None) -> list[Tier]:
        if names is None:
            return list(self.tiers.values())
        chosen = []
        for name in names:
            if name not in self.tiers:
                raise InvalidInput(f"unknown tier {name!r}; configured tiers: {', '.join(self.tiers)}")
            chosen.append(self.tiers[name])
        if not chosen:
            raise InvalidInput("no tier chosen")
        return chosen

    # -- put ----------------------------------------------------------------------------------------------

    def put(
        self,
        source: str | Path,
        name: str | LogicalName,
        *,
        dataset: str | LogicalName | None = None,
        metadata: dict[str, Any] | None = None,
        tiers: Iterable[str] | None = None,
    ) -> PutResult:
        """Archive a local file under ``scope:name`` with a replica on each tier (default: all tiers).

        Args:
            source: the file to archive.
            name: its logical name ``scope:name``.
            dataset: an open dataset ``scope:name`` to add it to.
            metadata: free JSON metadata of the content (provenance, ``calibration_tag``, ``parents`` as
                SHA-256 list, ...); kept from the first ``put`` of that content.
            tiers: tier names to write (the first is written in the checksum pass); default all.

        Putting the same content under the same name again is a no-op (that also completes missing
        replicas); the same name with other content raises :class:`NameConflict`.
        """
        lname = as_logical_name(name)
        ds = as_logical_name(dataset) if dataset is not None else None
        path = Path(source)
        if not path.is_file():
            raise NotFound(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
        meta = dict(metadata or {})
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"metadata for {lname} is not JSON-serialisable: {exc}") from exc
        targets = self._tier_list(tiers)

        try:
            existing: FileRecord | None = self.catalog.lookup(lname)
        except NotFound:
            existing = None
        if existing is not None:
            sums = checksum_file(path)
            if sums.sha256 != existing.sha256:
                raise NameConflict(
                    f"{lname} already names content sha256={existing.sha256}; {path} has sha256={sums.sha256}"
                )
            written = self._complete_replicas(existing, targets, path, str(lname))
            if ds is not None:
                self.catalog.add_to_dataset(ds, [lname])
            return PutResult(
                str(lname),
                existing.sha256,
                existing.size,
                False,
                tuple(written),
                self.catalog.file(existing.sha256),
            )

        first, rest = targets[0], targets[1:]
        written = []
        with first.writer() as writer, ChecksumStream() as stream:
            with path.open("rb") as f:
                for chunk in read_chunks(f):
                    stream.update(chunk)
                    writer.write(chunk)
            sums = stream.finish()
            known = self._known(sums.sha256)
            if not _has_available(known, first.name):
                writer.commit(sums.sha256)
                written.append(first.name)
            # else: identical content already safe on this tier under another name; the temporary file is
            # dropped when the with-block ends, the existing replica is not touched
        try:
            created = self.catalog.add_file(lname, sums, meta, tiers=written, dataset=ds)
        except sa.exc.IntegrityError:
            # another process catalogued the same content or name between our lookup and insert
            created = self.catalog.add_file(lname, sums, meta, tiers=written, dataset=ds)
        record = self.catalog.file(sums.sha256)
        written += self._complete_replicas(record, rest, None, str(lname))
        return PutResult(
            str(lname), sums.sha256, sums.size, created, tuple(written), self.catalog.file(sums.sha256)
        )

    def _known(self, sha256: str) -> FileRecord | None:
        try:
            return self.catalog.file(sha256)
        except NotFound:
            return None

    def _complete_replicas(
        self, record: FileRecord, targets: list[Tier], source: Path | None, label: str
    ) -> list[str]:
        """Write a replica on each target tier that has none in the catalog; returns the tiers written."""
        written = []
        for tier in targets:
            if record.replica(tier.name) is not None:
                continue
            try:
                if source is not None:
                    with source.open("rb") as f:
                        self._write_verified(tier, read_chunks(f), record.checksums)
                else:
                    self._copy_from_available(record, tier)
            except (TierError, ChecksumMismatch, FileLost, OSError) as exc:
                raise TierError(
                    f"{label}: stored on "
                    f"{', '.join(r.tier for r in record.replicas) or 'no tier'} but not on {tier.name!r} "
                    f"({exc}); `vbes archive audit --repair` adds that replica once the tier works"
                ) from exc
            self.catalog.set_replica(record.sha256, tier.name, AVAILABLE)
            written.append(tier.name)
        return written

    def _copy_from_available(self, record: FileRecord, target: Tier) -> None:
        sources = [
            self.tiers[r.tier]
            for r in record.replicas
            if r.state == AVAILABLE and r.tier in self.tiers and self.tiers[r.tier] is not target
        ]
        if not sources:
            raise FileLost(f"sha256={record.sha256}: no available replica to copy from")
        errors = []
        for source in sources:
            try:
                self._write_verified(target, source.read_chunks(record.sha256), record.checksums)
                return
            except (ChecksumMismatch, FileNotFoundError, TierError) as exc:
                errors.append(f"copy from {source.name}: {exc}")
        raise TierError("; ".join(errors))

    @staticmethod
    def _write_verified(tier: Tier, chunks: Iterable[bytes], expected: Checksums) -> None:
        """Write ``chunks`` atomically to ``tier``, committing only if they match ``expected``."""
        with tier.writer() as writer, ChecksumStream() as stream:
            for chunk in chunks:
                stream.update(chunk)
                writer.write(chunk)
            got = stream.finish()
            differ = expected.mismatches(got)
            if differ:
                raise ChecksumMismatch(
                    f"copy to tier {tier.name!r} of sha256={expected.sha256}: {', '.join(differ)} differ"
                )
            writer.commit(expected.sha256)

    def replicate(self, name: str | LogicalName, tier: str) -> None:
        """Copy a file to ``tier`` from an available replica (verified while copying), and record it."""
        record = self.catalog.lookup(as_logical_name(name))
        target = self._tier_list([tier])[0]
        self._copy_from_available(record, target)
        self.catalog.set_replica(record.sha256, target.name, AVAILABLE)

    # -- get and info -------------------------------------------------------------------------------------

    def get(self, name: str | LogicalName, dest: str | Path, *, overwrite: bool = False) -> FileRecord:
        """Copy a file out of the archive to ``dest``, verified against its catalogued checksums.

        Replicas are tried in tier order, ``available`` before ``suspicious``; a replica that turns out
        missing or corrupt is marked ``suspicious`` (the next audit confirms or clears it) and the next one is
        tried. ``dest`` appears only once a replica verified.
        """
        lname = as_logical_name(name)
        record = self.catalog.lookup(lname)
        dest = Path(dest)
        if dest.exists() and not overwrite:
            raise InvalidInput(f"{dest} already exists (use --force to overwrite)")
        if dest.is_dir():
            raise InvalidInput(f"{dest} is a folder")
        order = [self.tiers[n] for n in self.tiers if (r := record.replica(n)) and r.state == AVAILABLE]
        order += [self.tiers[n] for n in self.tiers if (r := record.replica(n)) and r.state == SUSPICIOUS]
        if not order:
            raise FileLost(f"{lname} (sha256={record.sha256}) is lost: no available replica")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        failures = []
        for tier in order:
            try:
                with tmp.open("wb") as out, ChecksumStream() as stream:
                    for chunk in tier.read_chunks(record.sha256):
                        stream.update(chunk)
                        out.write(chunk)
                    got = stream.finish()
                    out.flush()
                    os.fsync(out.fileno())
            except FileNotFoundError:
                reason = "missing"
            except TierError as exc:
                failures.append(f"{tier.name}: {exc}")
                continue  # the tier is unreachable: says nothing about the replica itself
            else:
                differ = record.checksums.mismatches(got)
                if not differ:
                    os.replace(tmp, dest)
                    return record
                reason = f"{', '.join(differ)} differ on read"
            finally:
                if tmp.exists():
                    tmp.unlink()
            failures.append(f"{tier.name}: {reason}")
            replica = record.replica(tier.name)
            if replica is not None and replica.state == AVAILABLE:
                self.catalog.set_replica(record.sha256, tier.name, SUSPICIOUS, f"get: {reason}")
            log.warning(
                "%s: replica on %s failed verification (%s); trying the next", lname, tier.name, reason
            )
        raise ChecksumMismatch(f"{lname}: no replica could be read intact ({'; '.join(failures)})")

    def info(self, name: str | LogicalName) -> FileRecord:
        """The catalog entry of ``scope:name`` (size, checksums, metadata, replicas)."""
        return self.catalog.lookup(as_logical_name(name))

    def ls(self, scope: str | None = None) -> list[tuple[str, FileRecord]]:
        """Every logical name (of one scope) with its file."""
        return self.catalog.list_names(scope)

    # -- datasets -----------------------------------------------------------------------------------------

    def create_dataset(
        self, name: str | LogicalName, metadata: dict[str, Any] | None = None, exist_ok: bool = False
    ) -> DatasetRecord:
        return self.catalog.create_dataset(as_logical_name(name), metadata, exist_ok=exist_ok)

    def add_to_dataset(self, name: str | LogicalName, files: Iterable[str | LogicalName]) -> DatasetRecord:
        did = as_logical_name(name)
        self.catalog.add_to_dataset(did, [as_logical_name(f) for f in files])
        return self.catalog.dataset(did)

    def close_dataset(self, name: str | LogicalName) -> DatasetRecord:
        return self.catalog.close_dataset(as_logical_name(name))

    def dataset(self, name: str | LogicalName) -> DatasetRecord:
        return self.catalog.dataset(as_logical_name(name))

    def datasets(self) -> list[DatasetRecord]:
        return self.catalog.list_datasets()

    # -- audit --------------------------------------------------------------------------------------------

    def _verify(self, tier: Tier, record: FileRecord) -> str | None:
        """``None`` when the replica reads back intact, else why not. A tier error propagates."""
        size = tier.size(record.sha256)
        if size is None:
            return "missing"
        if size != record.size:
            return f"size {size} bytes, catalogued {record.size}"
        try:
            got = checksum_chunks(tier.read_chunks(record.sha256))
        except FileNotFoundError:
            return "missing"
        differ = record.checksums.mismatches(got)
        return f"{', '.join(differ)} differ" if differ else None

    def audit(self, repair: bool = False, progress: ProgressWrapper | None = None) -> AuditReport:
        """Re-read every replica on the configured tiers and check size and checksums; find dark files.

        A failing replica is marked ``suspicious`` at once and read a second time: only if that read fails
        too does it become ``bad``; if it succeeds the first failure is reported as ``transient``. With
        ``repair``, bad (and missing) replicas are rewritten from a replica verified in this audit and read
        back once more. A file with no available replica is reported ``lost`` and kept. A tier that cannot be
        reached leaves its replicas as they were (``unchecked``), so an outage never condemns data.
        """
        report = AuditReport(
            started_at=_now_iso(), tiers={t.name: t.url for t in self.tiers.values()}, repair=repair
        )
        files: Iterable[FileRecord] = self.catalog.iter_files()
        if progress is not None:
            files = progress(files, self.catalog.counts()["files"])
        for record in files:
            self._audit_file(record, report, repair)
        for tier in self.tiers.values():
            self._scan_tier(tier, report, repair)
        report.finished_at = _now_iso()
        return report

    def _audit_file(self, record: FileRecord, report: AuditReport, repair: bool) -> None:
        report.files_checked += 1
        base = {"names": list(record.names), "sha256": record.sha256}
        good: list[Tier] = []
        to_repair: list[Tier] = []
        for tier in self.tiers.values():
            replica = record.replica(tier.name)
            if replica is None:
                report.missing_replicas.append({**base, "tier": tier.name})
                if tier.name not in report.unreachable_tiers:
                    to_repair.append(tier)
                continue
            item = {**base, "tier": tier.name, "location": tier.location(record.sha256)}
            if tier.name in report.unreachable_tiers:
                report.unchecked.append(
                    {**item, "reason": f"tier unreachable: {report.unreachable_tiers[tier.name]}"}
                )
                continue
            report.replicas_checked += 1
            try:
                first = self._verify(tier, record)
                if first is None:
                    report.replicas_ok += 1
                    good.append(tier)
                    if replica.state != AVAILABLE:
                        report.recovered.append({**item, "was": replica.state, "was_reason": replica.reason})
                    self.catalog.set_replica(record.sha256, tier.name, AVAILABLE)
                    continue
                # recorded before the confirming read, so a crash in between leaves a trace
                self.catalog.set_replica(record.sha256, tier.name, SUSPICIOUS, f"audit: {first}")
                second = self._verify(tier, record)
            except TierError as exc:
                report.unchecked.append({**item, "reason": str(exc)})
                # one slow failure per tier, not one per file, when the whole endpoint is down
                problem = tier.probe()
                if problem is not None:
                    report.unreachable_tiers[tier.name] = problem
                continue
            if second is None:
                report.replicas_ok += 1
                good.append(tier)
                report.transient.append({**item, "first_read": first})
                self.catalog.set_replica(record.sha256, tier.name, AVAILABLE)
            else:
                self.catalog.set_replica(record.sha256, tier.name, BAD, f"audit: {second} (confirmed twice)")
                report.bad.append({**item, "reason": second, "first_read": first})
                to_repair.append(tier)
        if repair and to_repair:
            self._repair(record, good, to_repair, report)
        final = self.catalog.file(record.sha256)
        if not any(r.state == AVAILABLE for r in final.replicas):
            report.lost.append({**base, "replicas": [r.as_dict() for r in final.replicas]})

    def _repair(self, record: FileRecord, good: list[Tier], targets: list[Tier], report: AuditReport) -> None:
        for target in targets:
            item = {"names": list(record.names), "sha256": record.sha256, "tier": target.name}
            if not good:
                report.repair_failed.append({**item, "reason": "no verified replica to copy from"})
                continue
            errors = []
            for source in good:
                try:
                    self._write_verified(target, source.read_chunks(record.sha256), record.checksums)
                    after = self._verify(target, record)
                except (ChecksumMismatch, FileNotFoundError, TierError) as exc:
                    errors.append(f"from {source.name}: {exc}")
                    continue
                if after is not None:
                    errors.append(f"from {source.name}: read back after repair: {after}")
                    continue
                self.catalog.set_replica(
                    record.sha256, target.name, AVAILABLE, f"repaired from {source.name}"
                )
                report.repaired.append({**item, "source": source.name})
                report.bad = [
                    b for b in report.bad if (b["sha256"], b["tier"]) != (record.sha256, target.name)
                ]
                break
            else:
                report.repair_failed.append({**item, "reason": "; ".join(errors)})

    def _scan_tier(self, tier: Tier, report: AuditReport, repair: bool) -> None:
        if tier.name in report.unreachable_tiers:
            return
        try:
            expected = self.catalog.replica_shas(tier.name)
            for entry in tier.scan():
                if entry.kind == "partial":
                    abandoned = tier.partial_is_abandoned(entry)
                    removed = False
                    if repair and abandoned:
                        removed = entry.path in tier.sweep_partials()
                    report.partial.append(
                        {
                            "tier": tier.name,
                            "path": entry.path,
                            "size": entry.size,
                            "abandoned": abandoned,
                            "removed": removed,
                        }
                    )
                elif entry.kind == "stray" or entry.sha256 not in expected:
                    # dark data: never deleted by the audit, only reported
                    report.dark.append(
                        {
                            "tier": tier.name,
                            "path": entry.path,
                            "size": entry.size,
                            "kind": entry.kind,
                            "sha256": entry.sha256,
                        }
                    )
        except TierError as exc:
            report.unchecked.append({"tier": tier.name, "reason": f"cannot list the tier: {exc}"})


def _has_available(record: FileRecord | None, tier: str) -> bool:
    replica = record.replica(tier) if record is not None else None
    return replica is not None and replica.state == AVAILABLE
