"""Payloads: immutable constants + metadata, identified by the SHA-256 of one canonical byte encoding.

The encoding (format ``vbes-payload/1``) is what the store keeps, byte for byte, in a binary column, so no
database can reorder keys or reformat numbers behind our back::

    b"vbes-payload/1\\n" + HEADER + b"\\n" + ARRAY BYTES

``HEADER`` is canonical JSON (UTF-8, sorted keys, no whitespace, no NaN/Infinity) of
``{"constants": ..., "metadata": ..., "payload_type": ...}`` where every numeric array inside the constants is
replaced by ``{"__ndarray__": {"dtype": "<f8", "shape": [...], "offset": ..., "nbytes": ...}}`` and its
little-endian C-order bytes are appended, in the order the canonical JSON lists them.

The metadata that identifies a payload is everything except the creation time (``created``): the BESIII
``serno`` and ``stver``, the author and any free fields. Equal constants with a different SerNo are therefore
different payloads; the same constants uploaded twice with the same metadata are one payload.

Example:
    >>> import numpy as np
    >>> p = Payload.build("Emc", {"sigma_e": np.array([0.025, 0.05])}, {"serno": 1, "stver": "6.6.4"})
    >>> p.sha256 == Payload.from_bytes(p.blob).sha256
    True
    >>> p.constants["sigma_e"].tolist(), p.metadata["serno"]
    ([0.025, 0.05], 1)
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from vbes.errors import InvalidInput

__all__ = [
    "FORMAT_MAGIC",
    "VOLATILE_METADATA",
    "Payload",
    "decode_payload",
    "encode_payload",
    "now_iso",
    "to_jsonable",
]

FORMAT_MAGIC = b"vbes-payload/1\n"
#: metadata fields that do not take part in a payload's identity
VOLATILE_METADATA = frozenset({"created"})
_ARRAY_KEY = "__ndarray__"
_ARRAY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: fixed-size numbers with a byte order


def now_iso() -> str:
    """The current UTC time as ISO 8601 text with microseconds (stored as text: bit-identical round trips)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _check_number(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise InvalidInput(f"payload {where}: {value} is not a finite number (use an array to store NaN/inf)")
    return value


def _to_header(value: Any, arrays: list[np.ndarray], where: str) -> Any:
    """Replace arrays by placeholders (collecting them) and normalise scalars to plain JSON values."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _ARRAY_KINDS:
            raise InvalidInput(f"payload {where}: arrays of dtype {value.dtype} are not supported "
                               "(numbers and booleans only)")
        arrays.append(value)
        return {_ARRAY_KEY: len(arrays) - 1}
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise InvalidInput(f"payload {where}: key {key!r} is not a string")
            if key == _ARRAY_KEY:
                raise InvalidInput(f"payload {where}: the key {_ARRAY_KEY!r} is reserved")
        return {key: _to_header(value[key], arrays, f"{where}.{key}") for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_to_header(item, arrays, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _check_number(float(value), where)
    raise InvalidInput(f"payload {where}: values of type {type(value).__name__} are not supported "
                       "(JSON-like values and numeric arrays only)")


def _little_endian(array: np.ndarray) -> np.ndarray:
    # newbyteorder("<") leaves single-byte dtypes ("|") alone and fixes everything else to little-endian
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def encode_payload(payload_type: str, constants: Mapping[str, Any], metadata: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a payload (see the module docstring); ``metadata`` minus ``created`` is kept.

    Args:
        payload_type: the payload type (EsTime, Emc, ...): part of the identity.
        constants: JSON-like values and numeric NumPy arrays, keyed by name.
        metadata: author, serno, stver and free fields (JSON-like scalars/containers, no arrays).
    """
    if not isinstance(payload_type, str) or not payload_type.strip():
        raise InvalidInput("payload type must be a non-empty string")
    if not isinstance(constants, Mapping):
        raise InvalidInput(f"payload {payload_type}: constants must be a mapping, not {type(constants).__name__}")
    arrays: list[np.ndarray] = []
    header_constants = _to_header(constants, arrays, "constants")
    no_arrays: list[np.ndarray] = []
    identifying = {k: v for k, v in metadata.items() if k not in VOLATILE_METADATA}
    header_metadata = _to_header(identifying, no_arrays, "metadata")
    if no_arrays:
        raise InvalidInput(f"payload {payload_type}: metadata may not hold arrays")
    # _to_header walks dict keys sorted, as canonical JSON lists them, so the arrays' byte order is canonical.
    chunks: list[bytes] = []
    offset = 0
    descriptors: list[dict[str, Any]] = []
    for array in arrays:
        le = _little_endian(array)
        raw = le.tobytes(order="C")
        descriptors.append({"dtype": le.dtype.str, "shape": list(le.shape), "offset": offset,
                            "nbytes": len(raw)})
        chunks.append(raw)
        offset += len(raw)

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_ARRAY_KEY} and isinstance(node[_ARRAY_KEY], int):
                return {_ARRAY_KEY: descriptors[node[_ARRAY_KEY]]}
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    header = {"payload_type": payload_type, "metadata": header_metadata, "constants": fill(header_constants)}
    return FORMAT_MAGIC + _canonical_json(header) + b"\n" + b"".join(chunks)


def decode_payload(blob: bytes) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(payload_type, constants, identifying metadata)`` from canonical bytes; arrays come back as copies."""
    if not blob.startswith(FORMAT_MAGIC):
        raise InvalidInput("payload bytes do not start with the vbes-payload/1 magic")
    end = blob.find(b"\n", len(FORMAT_MAGIC))
    if end < 0:
        raise InvalidInput("payload bytes have no header terminator")
    try:
        header = json.loads(blob[len(FORMAT_MAGIC):end])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"payload header is not valid JSON: {exc}") from exc
    body = memoryview(blob)[end + 1:]

    def restore(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {_ARRAY_KEY}:
                d = node[_ARRAY_KEY]
                raw = body[d["offset"]:d["offset"] + d["nbytes"]]
                if len(raw) != d["nbytes"]:
                    raise InvalidInput("payload bytes are truncated (array data missing)")
                return np.frombuffer(raw, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()
            return {k: restore(v) for k, v in node.items()}
        if isinstance(node, list):
            return [restore(v) for v in node]
        return node

    return header["payload_type"], restore(header["constants"]), header["metadata"]


def to_jsonable(value: Any) -> Any:
    """Constants as plain JSON (arrays become nested lists), e.g. for ``--json`` output."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Payload:
    """One immutable payload: its canonical bytes, their SHA-256, its type and its creation time.

    ``constants`` and ``metadata`` decode a fresh copy on every access, so a caller can never change a
    payload that the store (or its cache) hands out.
    """

    sha256: str
    payload_type: str
    blob: bytes = field(repr=False)
    created: str

    @classmethod
    def build(cls, payload_type: str, constants: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
              created: str | None = None) -> Payload:
        """Encode a new payload (``created`` defaults to ``metadata['created']`` or now)."""
        metadata = dict(metadata or {})
        blob = encode_payload(payload_type, constants, metadata)
        created = created or metadata.get("created") or now_iso()
        return cls(hashlib.sha256(blob).hexdigest(), payload_type, blob, str(created))

    @classmethod
    def from_bytes(cls, blob: bytes, created: str = "", expected_sha256: str | None = None) -> Payload:
        """A payload from stored bytes; ``expected_sha256`` is verified when given."""
        sha = hashlib.sha256(blob).hexdigest()
        if expected_sha256 is not None and sha != expected_sha256:
            raise InvalidInput(f"payload bytes hash to {sha}, not {expected_sha256}")
        payload_type, _, _ = decode_payload(blob)
        return cls(sha, payload_type, bytes(blob), created)

    @property
    def constants(self) -> dict[str, Any]:
        return decode_payload(self.blob)[1]

    @property
    def metadata(self) -> dict[str, Any]:
        meta = decode_payload(self.blob)[2]
        meta["created"] = self.created
        return meta

    @property
    def serno(self) -> int | None:
        return self.metadata.get("serno")

    def as_dict(self, with_constants: bool = True) -> dict[str, Any]:
        """JSON-ready description (arrays as lists)."""
        out: dict[str, Any] = {"sha256": self.sha256, "payload_type": self.payload_type,
                               "size": len(self.blob), "metadata": self.metadata}
        if with_constants:
            out["constants"] = to_jsonable(self.constants)
        return out
