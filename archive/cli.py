"""``vbes archive``: put, get, ls, info, audit, datasets and BagIt export/import on the command line.

The catalog's URL comes from ``VBES_ARCHIVE_URL`` (or the config file), the tiers from ``VBES_ARCHIVE_HOT``
and ``VBES_ARCHIVE_COLD``; see :mod:`vbes.settings`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from vbes.archive.bagit_io import export_bag, import_bag
from vbes.archive.catalog import FileRecord
from vbes.archive.store import AUDIT_PROBLEMS_EXIT, Archive

from vbes.cli import emit, parse_key_values, progress, settings_from_context

__all__ = ["archive"]


def _open_archive() -> Archive:
    settings = settings_from_context()
    settings.ensure_home()
    return Archive.from_settings(settings)


def _file_line(name: str, record: FileRecord) -> str:
    replicas = ",".join(f"{r.tier}:{r.state}" for r in record.replicas)
    return f"{name}  {record.size:>12d}  sha256={record.sha256[:16]}…  {record.status:8s}  {replicas}"


@click.group()
def archive() -> None:
    """The conventional archive: checksummed, content-addressed, tiered, audited; BagIt export."""


@archive.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", "name", required=True, help="Logical name SCOPE:NAME.")
@click.option("--dataset", help="Add the file to this open dataset (SCOPE:NAME).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Free metadata (repeatable).")
@click.option("--parent", multiple=True, metavar="SHA256", help="SHA-256 of a file this one derives from.")
@click.option("--calib-tag", help="Calibration global tag the file was made with.")
@click.option(
    "--tier",
    "tiers",
    multiple=True,
    help="Write only these tiers (default: every tier); the file is below the replica policy until "
    "`audit --repair` or a put without --tier completes it.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def put(
    file: Path,
    name: str,
    dataset: str | None,
    meta: tuple[str, ...],
    parent: tuple[str, ...],
    calib_tag: str | None,
    tiers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Archive FILE under SCOPE:NAME (MD5, Adler-32 and SHA-256 in one pass; a replica on every tier)."""
    metadata = parse_key_values(meta)
    if calib_tag:
        metadata["calibration_tag"] = calib_tag
    with _open_archive() as store:
        result = store.put(
            file, name, dataset=dataset, metadata=metadata, tiers=tiers or None, parents=parent or None
        )
    what = "archived" if result.created else "already archived (same content)"
    emit(
        result.as_dict(),
        as_json,
        f"{what}: {result.name} sha256={result.sha256} size={result.size} "
        f"replicas={','.join(r.tier for r in result.record.replicas)}",
    )


@archive.command()
@click.argument("name")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the file."
)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def get(name: str, output: Path, force: bool) -> None:
    """Copy SCOPE:NAME out of the archive to OUTPUT, verified against its checksums."""
    with _open_archive() as store:
        record = store.get(name, output, overwrite=force)
    click.echo(f"{name} -> {output} ({record.size} bytes, sha256 verified)")


@archive.command("ls")
@click.argument("scope", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_command(scope: str | None, as_json: bool) -> None:
    """List logical names (of SCOPE) with size, SHA-256, status and replicas."""
    with _open_archive() as store:
        rows = store.ls(scope)
    if as_json:
        emit([{"name": n, **r.as_dict()} for n, r in rows], True)
    else:
        for name, record in rows:
            click.echo(_file_line(name, record))


@archive.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(name: str, as_json: bool) -> None:
    """Size, MD5, Adler-32, SHA-256, metadata and replicas (tier, state) of SCOPE:NAME."""
    with _open_archive() as store:
        record = store.info(name)
    data = record.as_dict()
    if as_json:
        emit(data, True)
        return
    for key in ("names", "size", "md5", "adler32", "sha256", "created_at", "status"):
        click.echo(f"{key:10s}  {data[key]}")
    click.echo(f"{'metadata':10s}  {json.dumps(record.metadata, sort_keys=True)}")
    for replica in record.replicas:
        reason = f"  ({replica.reason})" if replica.reason else ""
        click.echo(f"{'replica':10s}  {replica.tier}: {replica.state}{reason}")
    for tier in record.below_policy:
        click.echo(f"{'replica':10s}  {tier}: none (below replica policy)")


@archive.command()
@click.option("--repair", is_flag=True, help="Rewrite bad and missing replicas from a verified one.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON report to this file.",
)
@click.pass_context
def audit(ctx: click.Context, repair: bool, as_json: bool, report_path: Path | None) -> None:
    """Re-read every replica (size, MD5, Adler-32, SHA-256), find missing and dark files, optionally repair.

    Exit status 3 while any replica is suspicious or bad, any file is lost or below the replica policy (a
    tier without its replica), a tier could not be checked, or a tier holds dark or abandoned files.
    """
    with _open_archive() as store:
        report = store.audit(
            repair=repair, progress=lambda files, total: progress(files, total, "audit", "file")
        )
    data = report.as_dict()
    if report_path is not None:
        report_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if as_json:
        emit(data, True)
    else:
        labels = {"missing_replicas": "below policy"}
        for key in ("bad", "suspicious", "missing_replicas", "repaired", "repair_failed", "transient",
                    "unchecked", "dark", "partial"):
            for item in getattr(report, key):
                where = item.get("location") or item.get("path") or item.get("tier")
                reason = item.get("reason", "")
                if key == "dark":
                    reason = "not in the catalog (archive it again to adopt it, or remove it)"
                elif key == "partial":
                    reason = "removed" if item["removed"] else "abandoned" if item["abandoned"] else "in use"
                click.echo(
                    f"{labels.get(key, key):14s} {','.join(item.get('names', [])) or '-'}  {where}  "
                    f"{reason}".rstrip()
                )
        click.echo(f"audit: {report.summary()}")
    for item in report.lost:
        # loud on purpose: a lost file is the one outcome nobody may overlook
        states = "; ".join(f"{r['tier']}={r['state']} ({r['reason']})" for r in item["replicas"])
        click.secho(
            f"vbes: LOST: {', '.join(item['names'])} sha256={item['sha256']}: no available replica "
            f"[{states}]",
            err=True,
            fg="red",
            bold=True,
        )
    if report.exit_code:
        click.echo(f"vbes: audit found {report.problems} problem(s)", err=True)
        ctx.exit(AUDIT_PROBLEMS_EXIT)


@archive.group()
def dataset() -> None:
    """Named datasets of archived files (immutable once closed)."""


@dataset.command("create")
@click.argument("name")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Free metadata (repeatable).")
def dataset_create(name: str, meta: tuple[str, ...]) -> None:
    """Create the open dataset SCOPE:NAME."""
    with _open_archive() as store:
        record = store.create_dataset(name, parse_key_values(meta))
    click.echo(f"dataset {record.did} created (open)")


@dataset.command("add")
@click.argument("name")
@click.argument("files", nargs=-1, required=True)
def dataset_add(name: str, files: tuple[str, ...]) -> None:
    """Add archived files (SCOPE:NAME ...) to the open dataset NAME."""
    with _open_archive() as store:
        record = store.add_to_dataset(name, files)
    click.echo(f"dataset {record.did}: {len(record.members)} files")


@dataset.command("close")
@click.argument("name")
def dataset_close(name: str) -> None:
    """Close dataset NAME: no file can be added afterwards."""
    with _open_archive() as store:
        record = store.close_dataset(name)
    click.echo(f"dataset {record.did} closed ({len(record.members)} files)")


@dataset.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def dataset_show(name: str, as_json: bool) -> None:
    """State, metadata and files of dataset NAME."""
    with _open_archive() as store:
        record = store.dataset(name)
        files = [(member, store.info(member)) for member in record.members]
    if as_json:
        emit({**record.as_dict(), "files": [{"name": n, **r.as_dict()} for n, r in files]}, True)
        return
    click.echo(
        f"dataset {record.did}: {record.state}, {len(files)} files, metadata "
        f"{json.dumps(record.metadata, sort_keys=True)}"
    )
    for member, file_record in files:
        click.echo("  " + _file_line(member, file_record))


@dataset.command("ls")
def dataset_ls() -> None:
    """List datasets."""
    with _open_archive() as store:
        for record in store.datasets():
            click.echo(f"{record.did}  {record.state}  {len(record.members)} files")


@archive.command("export-bag")
@click.argument("dataset_name", metavar="DATASET")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def export_bag_command(dataset_name: str, directory: Path) -> None:
    """Export DATASET as a validated BagIt bag (SHA-256 + SHA-512 manifests) in DIRECTORY."""
    with _open_archive() as store:
        path = export_bag(store, dataset_name, directory)
    click.echo(f"bag of {dataset_name} written to {path} (validated)")


@archive.command("import-bag")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--scope", help="Scope for the files of a bag not written by vbes (default 'bag').")
@click.option("--dataset", "dataset_name", help="Dataset name to record the files in.")
def import_bag_command(directory: Path, scope: str | None, dataset_name: str | None) -> None:
    """Validate the BagIt bag in DIRECTORY, then archive its files as a dataset (refused if tampered)."""
    with _open_archive() as store:
        record = import_bag(store, directory, scope=scope, dataset=dataset_name)
    click.echo(
        f"bag {directory} validated and imported as dataset {record.did} ({len(record.members)} files)"
    )
