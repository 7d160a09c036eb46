"""Tag specifications: a YAML file that says how to build a global tag (e.g. ``BOSS-6.6.4-sim``).

Format (``spec_version: 1``)::

    spec_version: 1
    tag: BOSS-6.6.4-sim
    clone_of: BOSS-6.6.4          # optional: its IoVs (and payloads) are copied first
    boss_release: "6.6.4"         # optional with clone_of (taken from the source)
    purpose: "simulation constants for the BESIII-like detector model"
    description: "..."            # optional, free text, ignored
    payloads:
      - type: Emc                 # payload type
        first: -80000             # inclusive run range
        last: -1
        metadata: {author: vbes, synthetic: true, source: "..."}   # optional
        constants: {...}          # JSON-like: numbers, strings, lists, nested mappings

Applying a spec is idempotent: if the tag already holds exactly the spec's IoVs nothing changes; an open tag
that differs is rebuilt from the spec in one transaction; a published or invalid tag that differs is an
error. Numbers such as ``1e-3`` are read as floats (YAML 1.2), not as the strings PyYAML would make of them.

Example:
    >>> import tempfile, pathlib
    >>> from vbes.calibration import CalibrationStore
    >>> spec = pathlib.Path(tempfile.mkdtemp()) / "t.yaml"
    >>> _ = spec.write_text("spec_version: 1\\ntag: T\\nboss_release: '6.6.4'\\npayloads:\\n"
    ...                     "  - {type: Emc, first: -10, last: -1, constants: {sigma: 2.5e-2}}\\n")
    >>> store = CalibrationStore("sqlite://")
    >>> apply_tag_spec(store, spec).status, apply_tag_spec(store, spec).status
    ('created', 'unchanged')
    >>> store.get("T", "Emc", -5).constants
    {'sigma': 0.025}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from vbes.errors import CalibrationError, InvalidInput, TagNotFound, TagStateError

from .payload import Payload
from .store import CalibrationStore, IoVEntry

__all__ = ["SPEC_SCHEMA", "SpecResult", "apply_tag_spec", "load_tag_spec"]

SPEC_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["spec_version", "tag", "payloads"],
    "additionalProperties": False,
    "properties": {
        "spec_version": {"const": 1},
        "tag": {"type": "string", "minLength": 1},
        "clone_of": {"type": "string", "minLength": 1},
        "boss_release": {"type": "string"},
        "purpose": {"type": "string"},
        "description": {"type": "string"},
        "payloads": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "first", "last", "constants"],
                "additionalProperties": False,
                "properties": {
                    "type": {"type": "string", "minLength": 1},
                    "first": {"type": "integer"},
                    "last": {"type": "integer"},
                    "metadata": {"type": "object"},
                    "constants": {"type": "object"},
                },
            },
        },
    },
}


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` and ``-2E5`` as floats, as YAML 1.2 does."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.VERBOSE),
    list("-+0123456789."),
)


@dataclass(frozen=True)
class SpecResult:
    """Outcome of :func:`apply_tag_spec`: ``status`` is created, unchanged or updated."""

    tag: str
    status: str
    iovs: int
    spec_payloads: int
    file: str

    def summary(self) -> str:
        return f"{self.tag}: {self.status} from {Path(self.file).name} ({self.iovs} IoVs, " \
               f"{self.spec_payloads} from the spec)"


def load_tag_spec(path: str | Path) -> dict[str, Any]:
    """Read and validate a spec file; errors name the file and the offending field."""
    path = Path(path)
    try:
        spec = yaml.load(path.read_text(encoding="utf-8"), Loader=_Yaml12Loader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(SPEC_SCHEMA).iter_errors(spec))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path).lstrip(".")
        raise InvalidInput(f"{path}: {where or 'top level'}: {error.message}")
    if "clone_of" not in spec and "boss_release" not in spec:
        raise InvalidInput(f"{path}: boss_release is required when there is no clone_of")
    return spec


def apply_tag_spec(store: CalibrationStore, path: str | Path) -> SpecResult:
    """Create (or bring up to date) the tag a spec file describes; idempotent (see the module docstring)."""
    path = Path(path)
    spec = load_tag_spec(path)
    tag = spec["tag"]
    entries: list[IoVEntry] = []
    for i, item in enumerate(spec["payloads"]):
        try:
            payload = Payload.build(item["type"], item["constants"], item.get("metadata") or {})
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: payloads[{i}] ({item['type']}): {exc}") from exc
        entries.append(IoVEntry(item["type"], item["first"], item["last"], payload,
                                f"{path.name}: payloads[{i}]"))
    clone_of = spec.get("clone_of")
    try:
        try:
            current = store.iovs(tag)
        except TagNotFound:
            create = {"purpose": spec.get("purpose", "")}
            if clone_of:
                create["clone_of"] = clone_of
            if "boss_release" in spec:
                create["boss_release"] = spec["boss_release"]
            store.put_many(tag, entries, atomic=True, create=create)
            return SpecResult(tag, "created", len(store.iovs(tag)), len(entries), str(path))
        source = [IoVEntry(i.payload_type, i.first, i.last, store.payload(i.sha256), f"{clone_of} IoV")
                  for i in store.iovs(clone_of)] if clone_of else []
        wanted = source + entries
        key = lambda e: (e.payload_type, e.first, e.last, e.payload.sha256)
        if {(i.payload_type, i.first, i.last, i.sha256) for i in current} == {key(e) for e in wanted}:
            return SpecResult(tag, "unchanged", len(current), len(entries), str(path))
        state = store.tag_info(tag)["state"]
        if state != "open":
            raise TagStateError(f"tag {tag} is {state} and differs from the spec; make a new tag for it")
        store.put_many(tag, wanted, atomic=True, replace=True)
        return SpecResult(tag, "updated", len(wanted), len(entries), str(path))
    except (CalibrationError, InvalidInput) as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
