"""Import of a BESIII offline-database bookkeeping table (TSV: SerNo, BossRelease, DataType, RunFrom, RunTo, StVer).

Every row becomes an IoV ``DataType [RunFrom, RunTo]`` whose payload carries the row's SerNo, StVer and BOSS
release as identifying metadata (the table holds no constants, so the payload's constants are empty). Invalid
rows -- unparsable numbers, a first run after the last, a range across run 0, an overlap with the tag or with
an earlier row, a BOSS release other than the tag's -- are reported one per line with the row and reason;
every valid row is imported, all in one transaction. Rows already in the tag exactly are counted as present,
so importing the same table twice changes nothing.

Example:
    >>> from vbes.calibration import CalibrationStore
    >>> from vbes.calibration.defaults import TALK_TABLE, DEFAULT_TAG
    >>> report = import_bookkeeping(CalibrationStore("sqlite://"), TALK_TABLE, DEFAULT_TAG)
    >>> len(report.added), [r.line for r in report.refused]
    (44, [46])
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vbes.errors import InvalidInput, TagNotFound

from .payload import Payload
from .store import CalibrationStore, IoVEntry

__all__ = [
    "COLUMNS",
    "DEFAULT_AUTHOR",
    "BookkeepingRow",
    "ImportReport",
    "RefusedRow",
    "import_bookkeeping",
    "read_bookkeeping",
]

COLUMNS = ("SerNo", "BossRelease", "DataType", "RunFrom", "RunTo", "StVer")
DEFAULT_AUTHOR = "BESIII offline database (bookkeeping import)"


@dataclass(frozen=True)
class BookkeepingRow:
    """One parsed row; ``line`` is its line number in the file (the header is line 1)."""

    line: int
    serno: int
    boss_release: str
    payload_type: str
    first: int
    last: int
    stver: str
    text: str


@dataclass(frozen=True)
class RefusedRow:
    """A row that was not imported, with the reason."""

    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} [{self.text}]: {self.reason}"


@dataclass
class ImportReport:
    """What an import did: rows added, rows already present, rows refused (with reasons)."""

    file: str
    tag: str
    rows: int
    added: list[BookkeepingRow] = field(default_factory=list)
    present: list[BookkeepingRow] = field(default_factory=list)
    refused: list[RefusedRow] = field(default_factory=list)
    created_tag: bool = False

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary(self) -> str:
        return (f"{self.tag}: {len(self.added)} rows imported, {len(self.present)} already present, "
                f"{len(self.refused)} refused (of {self.rows} in {Path(self.file).name})")

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "tag": self.tag, "rows": self.rows, "imported": len(self.added),
                "present": len(self.present), "created_tag": self.created_tag,
                "refused": [{"line": r.line, "row": r.text, "reason": r.reason} for r in self.refused]}


def read_bookkeeping(path: str | Path) -> tuple[list[BookkeepingRow], list[RefusedRow]]:
    """Parse the table; rows that cannot be parsed come back refused, a malformed file raises InvalidInput."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise InvalidInput(f"{path}: empty file; expected a header line with {', '.join(COLUMNS)}")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InvalidInput(f"{path}: header lacks column(s) {', '.join(missing)} "
                           f"(found {', '.join(header)}; columns must be tab-separated)")
    rows: list[BookkeepingRow] = []
    refused: list[RefusedRow] = []
    for line_no, values in enumerate(csv.reader(lines[1:], delimiter="\t"), start=2):
        if not any(v.strip() for v in values):
            continue  # blank line
        shown = " ".join(v.strip() for v in values)
        if len(values) != len(header):
            refused.append(RefusedRow(line_no, shown, f"{len(values)} fields, the header has {len(header)}"))
            continue
        record = {h: v.strip() for h, v in zip(header, values, strict=True)}
        try:
            numbers = {c: int(record[c]) for c in ("SerNo", "RunFrom", "RunTo")}
        except ValueError:
            bad = next(c for c in ("SerNo", "RunFrom", "RunTo") if not _is_int(record[c]))
            refused.append(RefusedRow(line_no, shown, f"{bad} {record[bad]!r} is not an integer"))
            continue
        empty = [c for c in ("BossRelease", "DataType", "StVer") if not record[c]]
        if empty:
            refused.append(RefusedRow(line_no, shown, f"{empty[0]} is empty"))
            continue
        rows.append(BookkeepingRow(line_no, numbers["SerNo"], record["BossRelease"], record["DataType"],
                                   numbers["RunFrom"], numbers["RunTo"], record["StVer"], shown))
    return rows, refused


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def row_payload(row: BookkeepingRow, author: str = DEFAULT_AUTHOR) -> Payload:
    """The payload a row stands for: no constants, identified by type, SerNo, StVer, release and author."""
    return Payload.build(row.payload_type, {}, {"serno": row.serno, "stver": row.stver,
                                                "boss_release": row.boss_release, "author": author})


def import_bookkeeping(store: CalibrationStore, path: str | Path, tag: str, *, author: str = DEFAULT_AUTHOR,
                       purpose: str | None = None) -> ImportReport:
    """Import the table at ``path`` into ``tag`` (created, open, if it does not exist).

    Args:
        store: the calibration store.
        path: the TSV file.
        tag: the global tag to fill; its BOSS release is the table's (most common) release when created.
        author: recorded in every payload's metadata (part of its identity).
        purpose: the new tag's purpose (default: names the file).
    """
    path = Path(path)
    rows, refused = read_bookkeeping(path)
    report = ImportReport(file=str(path), tag=tag, rows=len(rows) + len(refused))
    try:
        release = store.tag_info(tag)["boss_release"]
    except TagNotFound:
        release = Counter(r.boss_release for r in rows).most_common(1)[0][0] if rows else ""
    entries: list[IoVEntry] = []
    by_line: dict[str, BookkeepingRow] = {}
    for row in rows:
        if release and row.boss_release != release:
            refused.append(RefusedRow(row.line, row.text, f"BossRelease {row.boss_release} is not the tag's "
                                                          f"release {release}"))
            continue
        entries.append(IoVEntry(row.payload_type, row.first, row.last, row_payload(row, author), str(row.line)))
        by_line[str(row.line)] = row
    result = store.put_many(tag, entries, create={"boss_release": release,
                                                  "purpose": purpose or f"imported from {path.name}"})
    report.created_tag = result.created_tag
    report.added = [by_line[e.label] for e in result.added]
    report.present = [by_line[e.label] for e in result.present]
    refused += [RefusedRow(int(e.label), by_line[e.label].text, reason) for e, reason in result.refused]
    report.refused = sorted(refused, key=lambda r: r.line)
    return report
