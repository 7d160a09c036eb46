"""Training data of a run: event files named in the configuration (local files or archived logical names),
their fixity (SHA-256 of the bytes read) and the provenance they declare, read into one set of tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vbes.errors import InvalidInput, NotFound, TrainingError

__all__ = ["DataSource", "TrainingData", "load_training_data", "select_events"]

Tables = dict[str, dict[str, np.ndarray]]


@dataclass(frozen=True)
class DataSource:
    """One training file.

    Attributes:
        source: what the configuration named (a path, or ``archive:scope:name``).
        path: the local file read.
        sha256: SHA-256 of the file's bytes (for an archived file: the catalog's, verified by ``get``).
        digest: the event file's content digest (over its arrays).
        provenance: the provenance the file declares (generator, calibration tag and payload hashes, ...).
    """

    source: str
    path: Path
    sha256: str
    digest: str
    provenance: dict[str, Any]


@dataclass
class TrainingData:
    """The tables of every source, concatenated, with the sources' lineage and each event's source."""

    tables: Tables
    sources: list[DataSource] = field(default_factory=list)
    event_source: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def conditions(self, store: Any) -> Any:
        """The calibration conditions of every event (:class:`vbes.models.conditions.Conditions`): each file's runs
        resolved in the calibration tag its provenance names.

        Args:
            store: the calibration store.

        Raises:
            TrainingError: a file that names no calibration tag.
        """
        from vbes.models.conditions import Conditions

        conditions = Conditions()
        runs = np.asarray(self.tables["events"]["run"])
        for i, source in enumerate(self.sources):
            mine = self.event_source == i
            if not mine.any():
                continue
            tag = source.provenance.get("calibration_tag")
            if not tag:
                raise TrainingError(f"training file {source.path} names no calibration tag in its provenance")
            conditions.add(store, str(tag), runs[mine])
        return conditions

    def lineage(self) -> dict[str, Any]:
        """Files with SHA-256, calibration tags and payload hashes, as logged with the run."""
        tags = sorted({str(s.provenance.get("calibration_tag", "")) for s in self.sources} - {""})
        payloads: dict[str, dict[str, str]] = {}
        for s in self.sources:
            tag = str(s.provenance.get("calibration_tag", ""))
            for kind, sha in (s.provenance.get("calibration_payloads") or {}).items():
                payloads.setdefault(tag, {})[kind] = sha
        return {
            "files": [
                {"source": s.source, "path": str(s.path), "sha256": s.sha256, "content_digest": s.digest}
                for s in self.sources
            ],
            "calibration_tags": tags,
            "calibration_payloads": payloads,
            "channels": sorted({str(s.provenance.get("channel", "")) for s in self.sources} - {""}),
        }


def _file_sha256(path: Path) -> str:
    from vbes.archive import checksum_file

    return checksum_file(path).sha256


def _local(name: str, data_dir: Path) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else data_dir / path
    if not path.is_file():
        raise NotFound(f"training file {path} does not exist")
    return path


def _concat(parts: list[Tables]) -> Tables:
    return {t: {c: np.concatenate([p[t][c] for p in parts]) for c in parts[0][t]} for t in parts[0]}


def select_events(tables: Tables, keep: np.ndarray) -> Tables:
    """The events where ``keep`` is true, with their rows of every object table.

    Args:
        tables: event tables (``events`` holds the count columns).
        keep: boolean per event.
    """
    from vbes.datasets.schema import COUNT_FIELD

    out: Tables = {"events": {c: v[keep] for c, v in tables["events"].items()}}
    for table, columns in tables.items():
        if table == "events":
            continue
        rows = np.repeat(keep, tables["events"][COUNT_FIELD[table]])
        out[table] = {c: v[rows] for c, v in columns.items()}
    return out


def load_training_data(data: dict[str, Any], settings: Any, cache_dir: Path) -> TrainingData:
    """Fetch, fingerprint and read the files of a configuration's ``data`` section.

    Args:
        data: the resolved ``data`` section (``files``, ``archive``, ``max_events``).
        settings: :class:`vbes.settings.Settings` (data folder, archive).
        cache_dir: where archived files are fetched to (verified copies, re-fetched when absent).

    Raises:
        NotFound: a file or logical name does not exist.
        TrainingError: the files hold no events.
    """
    from vbes.datasets import file_info, read_events

    located: list[tuple[str, Path, str]] = []
    for name in data.get("files", []):
        path = _local(name, Path(settings.data_dir))
        located.append((str(name), path, _file_sha256(path)))
    if data.get("archive"):
        from vbes.archive import Archive

        with Archive.from_settings(settings) as archive:
            for name in data["archive"]:
                record = archive.info(name)
                target = cache_dir / record.sha256 / Path(name.split(":", 1)[1]).name
                if not target.is_file() or _file_sha256(target) != record.sha256:
                    archive.get(name, target, overwrite=True)
                located.append((f"archive:{name}", target, record.sha256))
    sources: list[DataSource] = []
    parts: list[Tables] = []
    for source, path, sha in located:
        try:
            info = file_info(path)
        except InvalidInput as exc:
            raise TrainingError(f"training file {path}: {exc}") from None
        # read_events verifies the content digest of the whole file as it reads
        parts.append(read_events(path))
        sources.append(DataSource(source, path, sha, str(info["digest"]), dict(info["provenance"])))
    tables = _concat(parts)
    event_source = np.repeat(np.arange(len(parts)), [len(p["events"]["run"]) for p in parts])
    n_events = len(tables["events"]["run"])
    limit = data.get("max_events")
    if limit is not None and n_events > limit:
        keep = np.arange(n_events) < limit
        tables, event_source = select_events(tables, keep), event_source[keep]
    if len(tables["events"]["run"]) == 0:
        raise TrainingError("the training files hold no events")
    return TrainingData(tables=tables, sources=sources, event_source=event_source)
