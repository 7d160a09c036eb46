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

__all__ = ["ARCHIVE_SCOPE", "archive_package", "environment_lock", "write_package"]

ARCHIVE_SCOPE = "models"


def environment_lock() -> str:
    """Every installed distribution as ``name==version``, sorted, one per line."""
    names = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join(sorted(names, key=str.lower)) + "\n"


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
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    return path


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
