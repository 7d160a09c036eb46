"""The preservation package of a registered model version, archived beside the data it was trained on.

One uncompressed, reproducible tar (sorted members, zero times and owners, so the same content gives the same
SHA-256) holding the saved model (``model/model.json`` + ``model/tensors.npz``), the resolved configuration,
the lineage, the model card and ``requirements.lock`` (every installed distribution, ``name==version``). It is
put into the archive as ``models:NAME/vVERSION.tar`` with the archived training files as its parents; the
evaluation report joins the MLflow run when the evaluation suite promotes the version.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ARCHIVE_SCOPE", "archive_evaluated_package", "archive_package", "environment_lock", "write_package"]

ARCHIVE_SCOPE = "models"


def environment_lock() -> str:
    """Every installed distribution as ``name==version``, sorted, one per line."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"


def _write_tar(path: Path, members: Mapping[str, bytes]) -> Path:
    """A reproducible tar of ``members``: sorted, zero times and owners (the same content, the same SHA-256)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def write_package(path: Path, model_dir: Path, config: Mapping[str, Any], lineage: Mapping[str, Any],
                  card: Mapping[str, Any]) -> Path:
    """Write the package tar to ``path``; returns ``path``.

    Args:
        path: the tar file to write.
        model_dir: the saved model folder.
        config: the resolved training configuration.
        lineage: training files with SHA-256, calibration tags and payloads, code version.
        card: the model card.
    """
    members: dict[str, bytes] = {f"model/{p.name}": p.read_bytes() for p in sorted(model_dir.iterdir())}
    members["config.yaml"] = yaml.safe_dump(dict(config), sort_keys=True).encode()
    members["lineage.json"] = json.dumps(dict(lineage), indent=2, sort_keys=True).encode()
    members["model_card.json"] = json.dumps(dict(card), indent=2, sort_keys=True).encode()
    members["requirements.lock"] = environment_lock().encode()
    return _write_tar(path, members)


def archive_package(settings: Any, model_name: str, version: str, package: Path,
                    lineage: Mapping[str, Any]) -> tuple[str, str]:
    """Put the package into the archive; returns ``(logical name, sha256)``.

    Args:
        settings: :class:`vbes.settings.Settings` (archive catalog and tiers).
        model_name: the registered model's name.
        version: its version.
        package: the tar written by :func:`write_package`.
        lineage: the run's lineage (archived training files become the package's parents).
    """
    from vbes.archive import Archive

    name = f"{ARCHIVE_SCOPE}:{model_name}/v{version}.tar"
    parents = [f["sha256"] for f in lineage["files"] if str(f["source"]).startswith("archive:")]
    metadata = {"model": model_name, "version": version, "kind": "vbes model preservation package"}
    with Archive.from_settings(settings) as archive:
        result = archive.put(package, name, metadata=metadata, parents=parents)
    return result.name, result.sha256


def archive_evaluated_package(settings: Any, model_name: str, version: str, report_dir: Path,
                              reference: str) -> tuple[str, str] | None:
    """Archive the version's preservation package again with an evaluation report in it
    (``evaluations/<reference>/report.html`` and ``evaluation.json``), as
    ``models:NAME/vVERSION+<reference>-<sha256 prefix>.tar`` whose parent is the package archived at registration; returns ``(logical name, sha256)``, or ``None`` when no
    package of the version is archived.

    Args:
        settings: :class:`vbes.settings.Settings` (archive).
        model_name: the registered model's name.
        version: its version.
        report_dir: the evaluation's report folder.
        reference: the reference file's name (the report's name in the package).
    """
    import tempfile

    from vbes.archive import Archive
    from vbes.errors import NotFound

    original = f"{ARCHIVE_SCOPE}:{model_name}/v{version}.tar"
    with Archive.from_settings(settings) as archive, tempfile.TemporaryDirectory() as tmp:
        try:
            record = archive.info(original)
        except NotFound:
            return None
        local = Path(tmp) / "package.tar"
        archive.get(original, local)
        with tarfile.open(local) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
        for name in ("report.html", "evaluation.json"):
            if (report_dir / name).is_file():
                members[f"evaluations/{reference}/{name}"] = (report_dir / name).read_bytes()
        package = _write_tar(Path(tmp) / "evaluated.tar", members)
        from vbes.archive import checksum_file

        # each evaluation's package is its own content: the name carries the start of its SHA-256
        digest = checksum_file(package).sha256
        name = f"{ARCHIVE_SCOPE}:{model_name}/v{version}+{reference}-{digest[:12]}.tar"
        metadata = {"model": model_name, "version": version, "kind": "vbes model preservation package",
                    "evaluation": reference}
        result = archive.put(package, name, metadata=metadata, parents=[record.sha256])
    return result.name, result.sha256
