"""Datasets in and out of the archive as BagIt bags (RFC 8493), via the Library of Congress ``bagit`` library.

An exported bag holds the dataset's files under ``data/<scope>/<name>``, SHA-256 and SHA-512 payload
manifests, tag manifests in both algorithms, a ``bag-info.txt`` naming the dataset and its provenance, and
``vbes-catalog.json`` (a tag file, so covered by the tag manifests) with every file's logical name, MD5,
Adler-32, SHA-256 and metadata. The bag is assembled in a hidden staging folder beside the target and moved
into place only after the ``bagit`` validator accepted it; the exporter holds a lock on that folder, and the
next export into the same parent folder removes staging folders whose exporter is gone (``kill -9``).

A bag is imported only after full validation (every payload and tag checksum, the Payload-Oxum, no
unlisted files); a tampered bag is refused before anything reaches the archive.

Example (``archive`` being an :class:`~vbes.archive.store.Archive` with a dataset ``mc:sample``):
    >>> export_bag(archive, "mc:sample", "/tmp/bag-mc-sample")  # doctest: +SKIP
    >>> import_bag(other_archive, "/tmp/bag-mc-sample")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import bagit
from vbes.archive.catalog import DatasetRecord, as_logical_name
from vbes.archive.names import LogicalName, parse_name
from vbes.archive.store import Archive
from vbes.archive.tiers import partial_token, writer_is_gone

from vbes.errors import BagError, InvalidInput, NameConflict, NotFound

__all__ = ["export_bag", "import_bag", "CATALOG_TAG_FILE", "BAG_ALGORITHMS"]

CATALOG_TAG_FILE = "vbes-catalog.json"
_STAGING_MARK = ".vbes-bag-"
BAG_ALGORITHMS = ("sha256", "sha512")


def _vbes_version() -> str:
    try:
        return version("vbes")
    except PackageNotFoundError:
        return "unknown"


def export_bag(archive: Archive, dataset: str | LogicalName, dest: str | Path) -> Path:
    """Write dataset ``dataset`` as a BagIt bag at ``dest`` (which must not exist, or be an empty folder).

    Every file is copied out with :meth:`Archive.get` (so each is verified against the catalog on the way)
    and the bag's SHA-256 manifest is checked against the catalog before the bag is moved into place.
    Returns the bag's path.
    """
    record = archive.dataset(dataset)
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} already exists and is not an empty folder")
    if not record.members:
        raise InvalidInput(f"dataset {record.did} has no files; nothing to export")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _sweep_staging(dest.parent)
    staging = dest.parent / f".{dest.name}{_STAGING_MARK}{partial_token()}"
    staging.mkdir()
    lock = os.open(staging, os.O_RDONLY | os.O_CLOEXEC)
    fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies: the folder is then stale
    try:
        files = []
        for member in record.members:
            lname = parse_name(member)
            relative = Path(lname.scope, *lname.name.split("/"))
            target = staging / relative
            try:
                archive.get(lname, target)
            except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
                raise BagError(
                    f"dataset {record.did}: {member} clashes with another member's path ({exc})"
                ) from exc
            file_record = archive.info(lname)
            files.append({"name": member, "path": f"data/{relative.as_posix()}", **_file_entry(file_record)})
        bag = bagit.make_bag(str(staging), _bag_info(archive, record), checksums=list(BAG_ALGORITHMS))
        (staging / CATALOG_TAG_FILE).write_text(
            json.dumps(
                {"format": "vbes-archive-bag", "version": 1, "dataset": record.as_dict(), "files": files},
                indent=2,
                sort_keys=True,
            )
            + "\n",
            encoding="utf-8",
        )
        bag.save()  # rewrites the tag manifests so they cover the catalog tag file
        manifest = bag.payload_entries()
        for entry in files:
            got = manifest.get(entry["path"].replace("/", os.sep), {}).get("sha256")
            if got != entry["sha256"]:
                raise BagError(
                    f"bag of {record.did}: {entry['path']} has sha256 {got}, catalog {entry['sha256']}"
                )
        _validate(bagit.Bag(str(staging)), staging)
        if dest.exists():
            dest.rmdir()
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return dest


def _sweep_staging(folder: Path, stale_s: float = 3600.0) -> None:
    """Remove the staging folders of exports into ``folder`` whose exporter is gone."""
    for path in folder.glob(f".*{_STAGING_MARK}*.part"):
        token = path.name.rsplit(_STAGING_MARK, 1)[1]
        with contextlib.suppress(FileNotFoundError):
            if path.is_dir() and writer_is_gone(str(path), token, path.stat().st_mtime, stale_s):
                shutil.rmtree(path, ignore_errors=True)


def _file_entry(record: Any) -> dict[str, Any]:
    return {
        "size": record.size,
        "md5": record.md5,
        "adler32": record.adler32,
        "sha256": record.sha256,
        "created_at": record.created_at.isoformat(),
        "metadata": record.metadata,
    }


def _bag_info(archive: Archive, record: DatasetRecord) -> dict[str, str]:
    return {
        "Source-Organization": "Virtual BESIII (vbes) conventional archive",
        "External-Identifier": record.did,
        "External-Description": (
            f"Archive dataset {record.did} ({len(record.members)} files, {record.state}); "
            "per-file logical names, "
            f"MD5, Adler-32, SHA-256 and provenance in {CATALOG_TAG_FILE}"
        ),
        "Bag-Software-Agent": f"vbes {_vbes_version()} (bagit.py {bagit.VERSION})",
        "VBES-Dataset": record.did,
        "VBES-Dataset-State": record.state,
        "VBES-Dataset-Created": record.created_at.isoformat(),
        "VBES-Dataset-Closed": record.closed_at.isoformat() if record.closed_at else "",
        "VBES-Provenance": json.dumps(record.metadata, sort_keys=True),
        "VBES-Catalog": archive.catalog.safe_url,
        "VBES-Exported-At": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _validate(bag: bagit.Bag, path: Path) -> None:
    try:
        bag.validate(processes=1)
    except bagit.BagValidationError as exc:
        details = "; ".join(str(d) for d in getattr(exc, "details", [])[:5]) or str(exc)
        raise BagError(f"{path}: invalid bag: {details}") from exc


def import_bag(
    archive: Archive,
    bag_dir: str | Path,
    *,
    scope: str | None = None,
    dataset: str | LogicalName | None = None,
) -> DatasetRecord:
    """Validate the bag at ``bag_dir`` fully, then archive its files and record them as a dataset.

    Args:
        archive: where to put the files.
        bag_dir: the bag.
        scope: for bags not written by vbes (no ``vbes-catalog.json``): the scope of the logical names,
            ``scope:<path under data/>``; default ``bag``.
        dataset: dataset name to use; default the one recorded in the bag, else ``<scope>:<bag folder name>``.

    Raises :class:`BagError` for an invalid or tampered bag, before anything is written.
    """
    path = Path(bag_dir)
    try:
        bag = bagit.Bag(str(path))
    except bagit.BagError as exc:
        raise BagError(f"{path}: not a readable BagIt bag: {exc}") from exc
    _validate(bag, path)
    if "sha256" not in bag.algorithms:
        raise BagError(f"{path}: the bag has no SHA-256 manifest (has {', '.join(bag.algorithms)})")
    payload = {p.replace(os.sep, "/"): hashes for p, hashes in bag.payload_entries().items()}

    catalog_file = path / CATALOG_TAG_FILE
    entries: dict[str, dict[str, Any]] = {}
    ds_info: dict[str, Any] = {}
    if catalog_file.exists():
        if CATALOG_TAG_FILE not in bag.tagfile_entries():
            raise BagError(f"{path}: {CATALOG_TAG_FILE} is not covered by the tag manifest")
        try:
            recorded = json.loads(catalog_file.read_text(encoding="utf-8"))
            entries = {f["path"]: f for f in recorded["files"]}
            ds_info = recorded["dataset"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BagError(f"{path}: {CATALOG_TAG_FILE} is malformed: {exc}") from exc
        if set(entries) != set(payload):
            raise BagError(f"{path}: {CATALOG_TAG_FILE} and the payload manifest list different files")
        for rel, entry in entries.items():
            if entry.get("sha256") != payload[rel]["sha256"]:
                raise BagError(f"{path}: {rel}: {CATALOG_TAG_FILE} and the manifest disagree on SHA-256")

    default_scope = scope or "bag"
    plan = []
    for rel in sorted(payload):
        listed = entries.get(rel)
        name = listed["name"] if listed else f"{default_scope}:{rel.removeprefix('data/')}"
        plan.append((rel, as_logical_name(name), dict(listed.get("metadata", {})) if listed else {}))

    did = (
        as_logical_name(dataset)
        if dataset
        else (
            parse_name(ds_info["dataset"])
            if ds_info.get("dataset")
            else LogicalName(default_scope, path.name)
        )
    )
    # refuse before writing anything if a name already holds other content
    for rel, lname, _meta in plan:
        try:
            current = archive.info(lname)
        except NotFound:
            continue
        if current.sha256 != payload[rel]["sha256"]:
            raise NameConflict(f"{path}: {rel} would be {lname}, which already names other content")

    metadata = dict(ds_info.get("metadata", {}))
    metadata["imported_from_bag"] = {"path": str(path.absolute()), "bag_info": dict(bag.info)}
    record = archive.create_dataset(did, metadata, exist_ok=True)
    for rel, lname, meta in plan:
        result = archive.put(path / rel, lname, metadata=meta)
        if result.sha256 != payload[rel]["sha256"]:
            raise BagError(f"{path}: {rel} changed while being imported")
    archive.add_to_dataset(did, [lname for _rel, lname, _meta in plan])
    if ds_info.get("state") == "closed" and record.state == "open":
        archive.close_dataset(did)
    return archive.dataset(did)
