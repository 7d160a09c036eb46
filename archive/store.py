"""The archive itself: ``put`` (one pass, three checksums, atomic), ``get`` (verified, with fallback),
``audit`` (re-read, confirm, repair) over a :class:`~vbes.archive.catalog.Catalog` and its tiers.

Order of a ``put``, chosen so that a crash at any point leaves a consistent archive:

1. stream the source once into a temporary file on the first tier (``hot``) while computing MD5, Adler-32
   and SHA-256; ``fsync``; rename it to its SHA-256 name;
2. record file, name and hot replica in the catalog in one transaction;
3. copy the hot replica to every other tier (``cold``), checksumming the copy, and record each replica.

A crash in 1 leaves only a temporary file (swept by the next write or ``audit --repair``), in 2 at worst a
complete, correctly named file the catalog does not know yet (a dark file: an audit finding until the retry
adopts it), in 3 a catalogued file below the replica policy (one available replica on every configured tier:
``info`` says ``degraded``, an audit finding until the retry or ``audit --repair`` completes it). Never a
half-written file under a content name, never a catalog entry without its bytes. A refused ``put`` (unknown
or closed dataset, name conflict, bad parent) is refused before anything is written.

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

import contextlib
import ctypes
import datetime as dt
import fcntl
import json
import logging
import os
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
from vbes.archive.tiers import Tier, is_sha256, partial_token, writer_is_gone

from vbes.errors import (
    ChecksumMismatch,
    DatasetClosed,
    FileLost,
    InvalidInput,
    NameConflict,
    NotFound,
    TierError,
)

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
        """Replicas still suspicious or bad, files lost or below the replica policy (a tier without a
        replica), replicas that could not be checked, dark files, abandoned temporary files still there."""
        leftovers = [p for p in self.partial if p["abandoned"] and not p["removed"]]
        return (len(self.suspicious) + len(self.bad) + len(self.lost) + len(self.unchecked)
                + len(self.missing_replicas) + len(self.dark) + len(leftovers))

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
                label = "below replica policy" if key == "missing_replicas" else key.replace("_", " ")
                parts.append(f"{len(getattr(self, key))} {label}")
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
        # the replica policy: one available replica on every configured tier
        self.catalog = Catalog(catalog_url, policy=tuple(self.tiers))

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
        parents: Iterable[str] | None = None,
    ) -> PutResult:
        """Archive a local file under ``scope:name`` with a replica on each tier (default: all tiers).

        Args:
            source: the file to archive.
            name: its logical name ``scope:name``.
            dataset: an open dataset ``scope:name`` to add it to.
            metadata: free JSON metadata of the content (provenance, ``calibration_tag``, ``parents`` as
                SHA-256 list, ...); kept from the first ``put`` of that content.
            tiers: tier names to write (the first is written in the checksum pass); default all.
            parents: SHA-256 of archived files this one derives from (recorded as ``metadata["parents"]``);
                each must be 64 hex digits and known to the archive.

        Putting known content again (under its name or a new one) rewrites every replica on the chosen tiers
        that is not ``available`` (missing, suspicious or bad), so a lost file is restored by archiving it
        again; the same name with other content raises :class:`NameConflict`. Every refusal (unknown or
        closed dataset, name conflict, bad parent) happens before anything is written.
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
        if parents is not None:
            meta["parents"] = self._check_parents(parents)
        if ds is not None:
            self._check_dataset_accepts(ds, lname)

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

    def _check_parents(self, parents: Iterable[str]) -> list[str]:
        checked = []
        for parent in parents:
            sha = parent.lower() if isinstance(parent, str) else parent
            if not isinstance(sha, str) or not is_sha256(sha):
                raise InvalidInput(f"parent {parent!r} is not a SHA-256 (64 hex digits)")
            if self._known(sha) is None:
                raise NotFound(f"parent sha256={sha} is not in the archive (archive the parent first)")
            checked.append(sha)
        return checked

    def _check_dataset_accepts(self, ds: LogicalName, lname: LogicalName) -> None:
        """Refuse now what :meth:`Catalog.add_file` would refuse after the bytes were written."""
        record = self.catalog.dataset(ds)  # NotFound for an unknown dataset
        if record.state == "closed" and str(lname) not in record.members:
            raise DatasetClosed(f"dataset {ds} is closed; cannot add {lname}")

    def _known(self, sha256: str) -> FileRecord | None:
        try:
            return self.catalog.file(sha256)
        except NotFound:
            return None

    def _complete_replicas(
        self, record: FileRecord, targets: list[Tier], source: Path | None, label: str
    ) -> list[str]:
        """Write a replica on each target tier that has no available one; returns the tiers written."""
        written = []
        for tier in targets:
            if _has_available(record, tier.name):
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

        A ``get`` killed at any point leaves nothing beside ``dest``: the bytes go to an unnamed file
        (``O_TMPFILE``) that gets its name only once complete and verified. Where the filesystem cannot
        create unnamed files, a hidden, locked ``.NAME.vbes-get-<host>-<pid>-<random>.part`` is used instead,
        and the next ``get`` into that folder removes any whose writer is gone.
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
        _sweep_outputs(dest.parent)
        failures = []
        for tier in order:
            try:
                with _Output(dest) as out, ChecksumStream() as stream:
                    for chunk in tier.read_chunks(record.sha256):
                        stream.update(chunk)
                        out.write(chunk)
                    got = stream.finish()
                    differ = record.checksums.mismatches(got)
                    if not differ:
                        out.commit()
                        return record
            except FileNotFoundError:
                reason = "missing"
            except TierError as exc:
                failures.append(f"{tier.name}: {exc}")
                continue  # the tier is unreachable: says nothing about the replica itself
            else:
                reason = f"{', '.join(differ)} differ on read"
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
                report.missing_replicas.append(
                    {**base, "tier": tier.name, "reason": "below replica policy: no replica on this tier"}
                )
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
                done = (record.sha256, target.name)
                report.bad = [b for b in report.bad if (b["sha256"], b["tier"]) != done]
                report.missing_replicas = [
                    m for m in report.missing_replicas if (m["sha256"], m["tier"]) != done
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


_OUTPUT_MARK = ".vbes-get-"


class _Output:
    """The file a ``get`` writes: unnamed until :meth:`commit` where the OS allows, else a locked hidden temp.

    Args:
        dest: the final path; the temporary file lives in its folder, so the final rename is atomic.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.named: Path | None = None
        if _unnamed_files_work(dest.parent):
            self.fd = os.open(dest.parent, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        else:
            self.named = self._temp_name()
            self.fd = os.open(self.named, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        # held until closed; the kernel drops it when this process dies, which marks a named temp abandoned
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def _temp_name(self) -> Path:
        return self.dest.parent / f".{self.dest.name}{_OUTPUT_MARK}{partial_token()}"

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self) -> None:
        """Give the complete file its final name (replacing ``dest``)."""
        os.fsync(self.fd)
        if self.named is None:
            # an unnamed file can only be linked to a new name; the rename then replaces dest atomically
            self.named = self._temp_name()
            _link_unnamed(self.fd, self.named)
        os.replace(self.named, self.dest)
        self.named = None

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.named is not None:
            with contextlib.suppress(FileNotFoundError):
                self.named.unlink()
        os.close(self.fd)


_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_UNNAMED_BY_DEVICE: dict[int, bool] = {}


def _link_unnamed(fd: int, path: Path) -> None:
    """Give the unnamed (``O_TMPFILE``) file ``fd`` the name ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return
    os.link(f"/proc/self/fd/{fd}", path)  # the unprivileged way on kernels before 6.10


def _unnamed_files_work(folder: Path) -> bool:
    """Whether unnamed files can be created in ``folder`` and linked into it (probed once per device)."""
    device = os.stat(folder).st_dev
    if device not in _UNNAMED_BY_DEVICE:
        probe = folder / f".vbes-probe{_OUTPUT_MARK}{partial_token()}"
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o644)
        except (AttributeError, OSError):  # not Linux, or a filesystem without unnamed files
            _UNNAMED_BY_DEVICE[device] = False
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                _link_unnamed(fd, probe)
                probe.unlink()
                _UNNAMED_BY_DEVICE[device] = True
            except OSError:
                _UNNAMED_BY_DEVICE[device] = False
            finally:
                os.close(fd)
    return _UNNAMED_BY_DEVICE[device]


def _sweep_outputs(folder: Path, stale_s: float = 3600.0) -> list[Path]:
    """Remove the named temporary files of ``get`` runs into ``folder`` whose process is gone."""
    removed = []
    for path in folder.glob(f".*{_OUTPUT_MARK}*.part"):
        token = path.name.rsplit(_OUTPUT_MARK, 1)[1]
        with contextlib.suppress(FileNotFoundError):
            if writer_is_gone(str(path), token, path.stat().st_mtime, stale_s):
                path.unlink()
                removed.append(path)
    return removed


def _has_available(record: FileRecord | None, tier: str) -> bool:
    replica = record.replica(tier) if record is not None else None
    return replica is not None and replica.state == AVAILABLE
