"""Every exception that vbes raises on purpose, in one module (as pyhf does).

A :class:`VbesError` is a user-facing problem: the command line prints its message as one line and exits
non-zero; ``--debug`` shows the traceback. Anything else escaping is a bug.
"""

from __future__ import annotations

__all__ = [
    "VbesError",
    "ConfigError",
    "InvalidInput",
    "NotFound",
    "StoreUnavailable",
    "ClusterUnavailable",
    # calibration
    "CalibrationError",
    "TagNotFound",
    "TagExists",
    "TagStateError",
    "PayloadNotFound",
    "IoVOverlap",
    "InvalidIoV",
    "SnapshotError",
    "CorruptStore",
    "TagSealBroken",
    # datasets
    "DatasetError",
    "SchemaError",
    "CorruptFileError",
    "UnsupportedSchemaVersion",
    # archive
    "ArchiveError",
    "InvalidName",
    "NameConflict",
    "ChecksumMismatch",
    "FileLost",
    "DatasetClosed",
    "BagError",
    "TierError",
    # evaluation
    "EvaluationError",
    "InsufficientSample",
    "GateFailed",
    "EvaluationFailed",
    "EvaluationInputError",
    "NothingTested",
    "TooFewNullTrials",
    # models and training
    "ModelError",
    "CorruptModelError",
    "UnknownFamily",
    "TrainingError",
    "TrainingConfigError",
]


class VbesError(Exception):
    """Base of every deliberate vbes error; its message is one clear line for the user."""

    exit_code: int = 1


class ConfigError(VbesError):
    """A setting or configuration file is invalid."""


class InvalidInput(VbesError):
    """An argument or input file is malformed."""


class NotFound(VbesError):
    """A named thing (file, tag, model, ...) does not exist."""


class StoreUnavailable(VbesError):
    """A database store (calibration store, archive catalog) cannot be opened: not a database, no such folder,
    a server that does not answer."""

    @classmethod
    def opening(cls, url: str, detail: str) -> StoreUnavailable:
        """The one-line error for the store at ``url`` (password hidden) whose driver said ``detail``.

        Args:
            url: the store's URL, safe to print.
            detail: the database driver's message.
        """
        detail = " ".join(detail.split())
        lowered = detail.lower()
        if "not a database" in lowered or "file is encrypted" in lowered:
            detail = "not a database (the file exists but is not an SQLite database)"
        elif "unable to open database file" in lowered:
            detail = "cannot open or create the database file (does its folder exist?)"
        return cls(f"cannot open store {url}: {detail}")


class ClusterUnavailable(VbesError):
    """A Dask cluster for parallel work cannot be started or reached, or it has no workers."""


# --- calibration -----------------------------------------------------------------------------------------


class CalibrationError(VbesError):
    """Base of conditions-store errors."""


class TagNotFound(CalibrationError, NotFound):
    """No global tag of that name."""


class TagExists(CalibrationError):
    """A global tag of that name already exists."""


class TagStateError(CalibrationError):
    """The tag's state forbids the operation (published tags are immutable, invalid tags are unusable)."""


class PayloadNotFound(CalibrationError, NotFound):
    """No payload for that (tag, type, run), or no payload with that hash."""


class IoVOverlap(CalibrationError):
    """An IoV would overlap an existing IoV of the same tag and payload type."""


class InvalidIoV(CalibrationError):
    """An IoV's run range is malformed (first run after last run, ...)."""


class SnapshotError(CalibrationError):
    """A tag snapshot is corrupt or does not match its manifest."""


class CorruptStore(CalibrationError):
    """The store's content no longer matches what it recorded (a payload's SHA-256, a published tag's seal)."""


class TagSealBroken(CorruptStore):
    """A published (or invalid) tag's IoVs or record differ from the seal recorded when it left ``open``."""


# --- datasets --------------------------------------------------------------------------------------------


class DatasetError(VbesError):
    """Base of event-file errors."""


class SchemaError(DatasetError):
    """An event file misses a field, has inconsistent lengths, forbidden NaN, wrong dtype, ..."""


class CorruptFileError(DatasetError):
    """An event file cannot be read at all (truncated, not HDF5, ...)."""


class UnsupportedSchemaVersion(DatasetError):
    """An event file declares a schema version this software does not know (e.g. a newer one)."""


# --- archive ---------------------------------------------------------------------------------------------


class ArchiveError(VbesError):
    """Base of archive errors."""


class InvalidName(ArchiveError, InvalidInput):
    """A logical name is malformed or tries to escape the store."""


class NameConflict(ArchiveError):
    """The logical name already points to different content."""


class ChecksumMismatch(ArchiveError):
    """Content read back does not match its recorded checksum."""


class FileLost(ArchiveError):
    """No replica of a file is available."""


class DatasetClosed(ArchiveError):
    """A closed archive dataset is immutable."""


class BagError(ArchiveError):
    """A BagIt bag is invalid or was tampered with."""


class TierError(ArchiveError):
    """A storage tier cannot be reached, read or written (bad URL, server down, permission denied)."""


# --- evaluation ------------------------------------------------------------------------------------------


class EvaluationError(VbesError):
    """Base of evaluation errors."""


class InsufficientSample(EvaluationError):
    """A metric was asked for on fewer events than its stated minimum."""


class GateFailed(EvaluationError):
    """An evaluation did not pass its gate file."""


class EvaluationFailed(EvaluationError):
    """A sample failed the statistical comparison with its reference (``vbes evaluate`` exits 1)."""


class EvaluationInputError(EvaluationError, InvalidInput):
    """Bad input or usage of an evaluation (``vbes evaluate`` exits 2, pytest's convention)."""

    exit_code = 2


class NothingTested(EvaluationInputError):
    """An evaluation that could run no test at all (no shared feature, every metric below its minimum)."""


class TooFewNullTrials(EvaluationInputError):
    """Fewer null splits than the requested false-alarm probability needs."""


# --- models and training ---------------------------------------------------------------------------------


class ModelError(VbesError):
    """Base of model errors: a family asked for an operation it does not define, bad hyper-parameters, ..."""


class CorruptModelError(ModelError):
    """A saved model's files do not match what its ``model.json`` records (format, tensors, SHA-256)."""


class UnknownFamily(ModelError, NotFound):
    """No model family of that name is registered."""


class TrainingError(VbesError):
    """A training run cannot start or continue (no data, an unfinished run of another configuration, ...)."""


class TrainingConfigError(TrainingError, ConfigError):
    """A training configuration file is not valid against its schema."""
