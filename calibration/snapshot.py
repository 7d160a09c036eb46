"""Tag snapshots: one self-contained file per tag, restorable elsewhere bit for bit.

A snapshot is a plain, deterministic POSIX tar file (what goes to tape)::

    manifest.json          the tag's record, its IoVs and a manifest of payloads (SHA-256, type, size, created)
    manifest.json.sha256   the SHA-256 of manifest.json
    payloads/<sha256>.bin  each payload's canonical bytes, named by their hash

Nothing volatile (export time, database ids, change counters) is written, so exporting the same tag twice, or
exporting it again after a restore, gives identical bytes. Restoring verifies the manifest's hash, every
payload's hash and size, that every IoV points to a shipped payload, and that nothing else is in the file;
a snapshot that fails any check is refused with one clear error and nothing is written.

Example:
    >>> import tempfile, pathlib
    >>> from vbes.calibration import CalibrationStore
    >>> a, b = CalibrationStore("sqlite://"), CalibrationStore("sqlite://")
    >>> _ = a.create_tag("T", "6.6.4"); _ = a.put("T", "Mdc", 1, 9, {"x": 1.0})
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "T.tar"
    >>> export_snapshot(a, "T", path)["iovs"], restore_snapshot(b, path)["restored"]
    (1, True)
    >>> b.get("T", "Mdc", 5).sha256 == a.get("T", "Mdc", 5).sha256
    True
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vbes.errors import InvalidInput, InvalidIoV, SnapshotError

from .payload import Payload
from .store import RECORD_FIELDS, CalibrationStore, IoV, check_run_range

__all__ = ["SNAPSHOT_FORMAT", "Snapshot", "export_snapshot", "read_snapshot", "restore_snapshot"]

SNAPSHOT_FORMAT = "vbes-calib-snapshot/1"
_MANIFEST = "manifest.json"
_MANIFEST_SUM = "manifest.json.sha256"


@dataclass(frozen=True)
class Snapshot:
    """A verified snapshot's content."""

    record: dict[str, Any]
    iovs: list[IoV]
    payloads: list[Payload]
    manifest_sha256: str


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
        len(data), 0, 0o644, 0, 0, "", "")
    return info, io.BytesIO(data)


def export_snapshot(store: CalibrationStore, tag: str, path: str | Path) -> dict[str, Any]:
    """Write ``tag`` (any state) to the snapshot file ``path``; returns a summary with the manifest's hash."""
    path = Path(path)
    record = store.tag_record(tag)
    iovs = store.iovs(tag)
    payloads = {p.sha256: p for p in (store.payload(s) for s in sorted({i.sha256 for i in iovs}))}
    manifest = {
        "format": SNAPSHOT_FORMAT,
        "tag": record,
        "iovs": [[i.payload_type, i.first, i.last, i.sha256] for i in iovs],
        "payloads": [{"sha256": p.sha256, "payload_type": p.payload_type, "size": len(p.blob),
                      "created": p.created} for p in payloads.values()],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8") + b"\n"
    manifest_sum = hashlib.sha256(manifest_bytes).hexdigest()
    tmp = path.with_name(path.name + ".part")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.addfile(*_member(_MANIFEST, manifest_bytes))
            tar.addfile(*_member(_MANIFEST_SUM, f"{manifest_sum}  {_MANIFEST}\n".encode()))
            for sha, payload in payloads.items():
                tar.addfile(*_member(f"payloads/{sha}.bin", payload.blob))
        os.replace(tmp, path)  # never leave a half-written snapshot under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return {"tag": tag, "state": record["state"], "file": str(path), "iovs": len(iovs),
            "payloads": len(payloads), "manifest_sha256": manifest_sum, "bytes": path.stat().st_size}


def read_snapshot(path: str | Path) -> Snapshot:
    """Read and verify a snapshot file; any inconsistency raises :class:`SnapshotError` naming the file."""
    path = Path(path)

    def fail(message: str) -> SnapshotError:
        return SnapshotError(f"snapshot {path}: {message}")

    try:
        with tarfile.open(path, "r:") as tar:
            members = {}
            for info in tar:
                if not info.isfile():
                    raise fail(f"unexpected non-file member {info.name!r}")
                if info.name in members:
                    raise fail(f"member {info.name!r} appears twice")
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    except (tarfile.TarError, EOFError) as exc:
        raise fail(f"not a readable snapshot (corrupt or truncated tar file: {exc})") from exc
    except FileNotFoundError as exc:
        raise fail("no such file") from exc
    for required in (_MANIFEST, _MANIFEST_SUM):
        if required not in members:
            raise fail(f"missing {required} (truncated or not a vbes snapshot)")
    manifest_bytes = members.pop(_MANIFEST)
    manifest_sum = hashlib.sha256(manifest_bytes).hexdigest()
    recorded = members.pop(_MANIFEST_SUM).decode("ascii", "replace").split()[:1]
    if recorded != [manifest_sum]:
        raise fail(f"{_MANIFEST} does not match its recorded SHA-256 (corrupt)")
    try:
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != SNAPSHOT_FORMAT:
            raise fail(f"format {manifest.get('format')!r} is not {SNAPSHOT_FORMAT!r} (written by a newer vbes?)")
        record = manifest["tag"]
        absent = [k for k in RECORD_FIELDS if k not in record]
        if absent:
            raise fail(f"{_MANIFEST}: the tag record lacks {', '.join(absent)}")
        listed = {p["sha256"]: p for p in manifest["payloads"]}
        iovs = [IoV(str(t), int(a), int(b), str(s)) for t, a, b, s in manifest["iovs"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise fail(f"malformed {_MANIFEST}: {exc}") from exc
    payloads = []
    for sha, entry in listed.items():
        blob = members.pop(f"payloads/{sha}.bin", None)
        if blob is None:
            raise fail(f"payload {sha} is listed in the manifest but missing")
        if len(blob) != entry["size"]:
            raise fail(f"payload {sha} has {len(blob)} bytes, the manifest says {entry['size']} (corrupt)")
        try:
            payload = Payload.from_bytes(blob, created=entry["created"], expected_sha256=sha)
        except InvalidInput as exc:
            raise fail(f"payload {sha} does not match its SHA-256 or cannot be decoded (corrupt): {exc}") from exc
        if payload.payload_type != entry["payload_type"]:
            raise fail(f"payload {sha} is of type {payload.payload_type}, the manifest says {entry['payload_type']}")
        payloads.append(payload)
    if members:
        raise fail(f"unexpected member(s) not in the manifest: {', '.join(sorted(members))}")
    types = {p.sha256: p.payload_type for p in payloads}
    for iov in iovs:
        if iov.sha256 not in types:
            raise fail(f"IoV {iov.payload_type} {iov.first}..{iov.last} points to payload {iov.sha256}, "
                       "which the snapshot does not hold")
        if types[iov.sha256] != iov.payload_type:
            raise fail(f"IoV {iov.payload_type} {iov.first}..{iov.last} points to a {types[iov.sha256]} payload")
        try:
            check_run_range(iov.payload_type, iov.first, iov.last)
        except InvalidIoV as exc:
            raise fail(str(exc)) from exc
    return Snapshot(record, iovs, payloads, manifest_sum)


def restore_snapshot(store: CalibrationStore, path: str | Path) -> dict[str, Any]:
    """Verify the snapshot, then recreate its tag in ``store`` exactly (state and timestamps included).

    Restoring into a store that already holds the identical tag is a no-op (``restored`` is False).
    """
    snapshot = read_snapshot(path)
    restored = store.restore_tag(snapshot.record, snapshot.payloads, snapshot.iovs)
    return {"tag": snapshot.record["name"], "state": snapshot.record["state"], "restored": restored,
            "iovs": len(snapshot.iovs), "payloads": len(snapshot.payloads),
            "manifest_sha256": snapshot.manifest_sha256}
