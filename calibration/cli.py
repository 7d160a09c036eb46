"""``vbes calib``: the conditions store's command line.

The store is ``--url`` if given, else ``VBES_CALIB_URL``, else the SQLite file in the home folder. Negative
(MC) runs are passed as ``--run -10000`` or ``--run=-10000``.

Examples::

    vbes calib init
    vbes calib get --tag BOSS-6.6.4 --type EsTime --run 10000 --json
    vbes calib tag clone BOSS-6.6.4 my-tag && vbes calib tag publish my-tag
    vbes calib export BOSS-6.6.4 -o boss-6.6.4.tar && vbes calib restore boss-6.6.4.tar
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import numpy as np
import yaml

from vbes.cli import emit, parse_key_values, settings_from_context
from vbes.errors import InvalidInput

from .bookkeeping import DEFAULT_AUTHOR, import_bookkeeping
from .payload import Payload
from .snapshot import export_snapshot, restore_snapshot
from .store import CalibrationStore, IoVEntry

__all__ = ["calib"]


@contextmanager
def _store() -> Iterator[CalibrationStore]:
    url = (click.get_current_context().find_object(dict) or {}).get("calib_url")
    store = CalibrationStore(url) if url else CalibrationStore.from_settings(settings_from_context())
    try:
        yield store
    finally:
        store.close()


def _refusals_to_stderr(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"refused: {line}", err=True)


@click.group()
@click.option("--url", default=None, help="SQLAlchemy URL of the store (default: VBES_CALIB_URL or the home "
                                          "folder's SQLite file).")
@click.pass_context
def calib(ctx: click.Context, url: str | None) -> None:
    """The calibration (conditions) store: global tags, payloads, run-range IoVs."""
    ctx.ensure_object(dict)
    ctx.obj["calib_url"] = url


@calib.command("init")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def init_cmd(as_json: bool) -> None:
    """Create the default tags (idempotent): BOSS-6.6.4 from the talk's table, the simulation tags from their specs."""
    with _store() as store:
        report = store.init_defaults()
    if as_json:
        emit(report.as_dict(), True)
        return
    for line in report.lines():
        click.echo(line)
    # the table's known invalid row is reported, not fatal: init still succeeds
    _refusals_to_stderr([str(r) for r in report.table.refused])


@calib.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tag", required=True, help="Global tag to import into (created open if absent).")
@click.option("--author", default=DEFAULT_AUTHOR, show_default=True, help="Author recorded in every payload.")
@click.option("--purpose", default=None, help="Purpose of the tag if it is created.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def import_cmd(file: Path, tag: str, author: str, purpose: str | None, as_json: bool) -> None:
    """Import a bookkeeping table (TSV: SerNo BossRelease DataType RunFrom RunTo StVer) into TAG.

    Every valid row is imported; each refused row is reported on its own line; the exit status is 1 if any
    row was refused.
    """
    with _store() as store:
        report = import_bookkeeping(store, file, tag, author=author, purpose=purpose)
    emit(report.as_dict(), as_json, text=report.summary())
    if not report.ok:
        _refusals_to_stderr([str(r) for r in report.refused])
        raise InvalidInput(f"{file}: {len(report.refused)} of {report.rows} rows refused (listed above); "
                           "the other rows were imported")


# --- tags ------------------------------------------------------------------------------------------------


@calib.group("tag")
def tag_group() -> None:
    """Create, clone, publish, invalidate, list and show global tags."""


def _show_info(info: dict[str, Any], as_json: bool, iovs: list[dict[str, Any]] | None = None) -> None:
    if as_json:
        emit({**info, "iov_list": iovs} if iovs is not None else info, True)
        return
    for key in ("name", "state", "boss_release", "purpose", "parent", "created", "published_at",
                "invalidated_at", "iovs"):
        if info.get(key) is not None:
            click.echo(f"{key:15} {info[key]}")
    for payload_type, stats in info["payload_types"].items():
        click.echo(f"  {payload_type:12} {stats['iovs']:4} IoVs ({stats['data_iovs']} data, {stats['mc_iovs']} MC), "
                   f"runs {stats['min_run']}..{stats['max_run']}")
    for iov in iovs or []:
        click.echo(f"    {iov['payload_type']:12} {iov['first']:>10} .. {iov['last']:<10} {iov['sha256'][:16]}")


@tag_group.command("create")
@click.argument("name")
@click.option("--release", "boss_release", default="", help="BOSS release, e.g. 6.6.4.")
@click.option("--purpose", default="", help="What the tag is for.")
@click.option("--json", "as_json", is_flag=True)
def tag_create(name: str, boss_release: str, purpose: str, as_json: bool) -> None:
    """Create an open, empty tag NAME."""
    with _store() as store:
        _show_info(store.create_tag(name, boss_release, purpose), as_json)


@tag_group.command("clone")
@click.argument("source")
@click.argument("name")
@click.option("--purpose", default=None)
@click.option("--json", "as_json", is_flag=True)
def tag_clone(source: str, name: str, purpose: str | None, as_json: bool) -> None:
    """Create NAME as an open copy of SOURCE."""
    with _store() as store:
        _show_info(store.clone_tag(source, name, purpose), as_json)


@tag_group.command("publish")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def tag_publish(name: str, as_json: bool) -> None:
    """Publish NAME: irreversible, the tag is immutable from now on."""
    with _store() as store:
        _show_info(store.publish_tag(name), as_json)


@tag_group.command("invalidate")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def tag_invalidate(name: str, as_json: bool) -> None:
    """Mark NAME invalid: kept, refused for use."""
    with _store() as store:
        _show_info(store.invalidate_tag(name), as_json)


@tag_group.command("list")
@click.option("--json", "as_json", is_flag=True)
def tag_list(as_json: bool) -> None:
    """List every tag."""
    with _store() as store:
        tags = store.list_tags()
    if as_json:
        emit(tags, True)
        return
    for t in tags:
        click.echo(f"{t['name']:24} {t['state']:10} BOSS {t['boss_release'] or '-':8} {t['iovs']:5} IoVs  "
                   f"{t['purpose']}")


@tag_group.command("show")
@click.argument("name")
@click.option("--iovs/--no-iovs", default=False, help="List every IoV too.")
@click.option("--json", "as_json", is_flag=True)
def tag_show(name: str, iovs: bool, as_json: bool) -> None:
    """Show a tag: state, release, purpose and coverage per payload type."""
    with _store() as store:
        info = store.tag_info(name)
        listing = [i.as_dict() for i in store.iovs(name)] if iovs else None
    _show_info(info, as_json, listing)


# --- payloads --------------------------------------------------------------------------------------------


@calib.group("payload")
def payload_group() -> None:
    """Store and show payloads."""


def _read_constants(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        text = path.read_text(encoding="utf-8")
        value = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read constants: {str(exc).splitlines()[0]}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f"{path}: constants must be a mapping (JSON object / YAML mapping / .npz)")
    return value


@payload_group.command("put")
@click.argument("payload_type")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--serno", type=int, default=None, help="BESIII SerNo (identifies the payload).")
@click.option("--stver", default=None, help="BESIII StVer (software version of the constants).")
@click.option("--author", default=None)
@click.option("--meta", multiple=True, help="Free metadata KEY=VALUE (VALUE parsed as JSON if it can be).")
@click.option("--tag", default=None, help="Also attach it to this open tag ...")
@click.option("--first", type=int, default=None, help="... for runs FIRST..LAST (inclusive).")
@click.option("--last", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
def payload_put(payload_type: str, file: Path, serno: int | None, stver: str | None, author: str | None,
                meta: tuple[str, ...], tag: str | None, first: int | None, last: int | None, as_json: bool) -> None:
    """Store a payload of PAYLOAD_TYPE with the constants in FILE (.json, .yaml or .npz)."""
    if tag is not None and (first is None or last is None):
        raise InvalidInput("--tag needs --first and --last")
    if tag is None and (first is not None or last is not None):
        raise InvalidInput("--first/--last need --tag")
    metadata = parse_key_values(meta)
    for key, value in (("serno", serno), ("stver", stver), ("author", author)):
        if value is not None:
            metadata[key] = value
    payload = Payload.build(payload_type, _read_constants(file), metadata)
    with _store() as store:
        if tag is not None:
            assert first is not None and last is not None
            store.put_many(tag, [IoVEntry(payload_type, first, last, payload)], atomic=True)
        else:
            store.put_payload(payload)
        stored = store.payload(payload.sha256)
    out = {"sha256": stored.sha256, "payload_type": payload_type, "metadata": stored.metadata}
    if tag is not None:
        out["iov"] = {"tag": tag, "first": first, "last": last}
    emit(out, as_json, text=stored.sha256)


@payload_group.command("show")
@click.argument("sha256")
@click.option("--json", "as_json", is_flag=True)
def payload_show(sha256: str, as_json: bool) -> None:
    """Show the payload SHA256 (or a unique prefix of 8+ hex digits)."""
    with _store() as store:
        payload = store.payload(sha256)
    out = payload.as_dict()
    if as_json:
        emit(out, True)
        return
    click.echo(f"sha256        {payload.sha256}\ntype          {payload.payload_type}\nsize          "
               f"{len(payload.blob)} bytes")
    for key, value in out["metadata"].items():
        click.echo(f"  {key:12} {value}")
    click.echo(f"constants     {json.dumps(out['constants'], sort_keys=True)[:2000]}")


# --- lookups ---------------------------------------------------------------------------------------------


@calib.command("get")
@click.option("--tag", required=True)
@click.option("--type", "payload_type", required=True, help="Payload type, e.g. EsTime.")
@click.option("--run", type=int, required=True, help="Run number (negative for MC).")
@click.option("--json", "as_json", is_flag=True, help="JSON with the payload's SHA-256 and metadata.")
def get_cmd(tag: str, payload_type: str, run: int, as_json: bool) -> None:
    """The payload of TYPE valid for RUN in TAG (a run in a gap is an error, never the previous payload)."""
    with _store() as store:
        iov = store.iov_for(tag, payload_type, run)
        payload = store.get(tag, payload_type, run)
    out = {"tag": tag, "payload_type": payload_type, "run": run, "iov": {"first": iov.first, "last": iov.last},
           **payload.as_dict()}
    meta = payload.metadata
    text = (f"{payload_type} run {run} in {tag}: payload {payload.sha256} (IoV {iov.first}..{iov.last}"
            + (f", SerNo {meta['serno']}" if "serno" in meta else "")
            + (f", StVer {meta['stver']}" if "stver" in meta else "") + ")")
    emit(out, as_json, text=text)


@calib.command("resolve")
@click.option("--tag", required=True)
@click.option("--run", type=int, required=True, help="Run number (negative for MC).")
@click.option("--json", "as_json", is_flag=True)
def resolve_cmd(tag: str, run: int, as_json: bool) -> None:
    """Every payload type of TAG valid for RUN (types with a gap there are left out)."""
    with _store() as store:
        resolved = store.resolve(tag, run)
    out = {t: {"sha256": p.sha256, "metadata": p.metadata} for t, p in sorted(resolved.items())}
    emit(out, as_json, text="\n".join(f"{t:12} {p.sha256}  SerNo {p.metadata.get('serno', '-')}"
                                      for t, p in sorted(resolved.items())) or f"no payloads for run {run} in {tag}")


# --- snapshots -------------------------------------------------------------------------------------------


@calib.command("export")
@click.argument("tag")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Snapshot file to write (a tar file).")
@click.option("--json", "as_json", is_flag=True)
def export_cmd(tag: str, output: Path, as_json: bool) -> None:
    """Export TAG with all its payloads to one self-contained snapshot file."""
    with _store() as store:
        summary = export_snapshot(store, tag, output)
    emit(summary, as_json, text=f"{tag}: {summary['iovs']} IoVs, {summary['payloads']} payloads -> {output} "
                                f"(manifest sha256 {summary['manifest_sha256']})")


@calib.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def restore_cmd(file: Path, as_json: bool) -> None:
    """Verify a snapshot file and recreate its tag exactly in this store."""
    with _store() as store:
        summary = restore_snapshot(store, file)
    verb = "restored" if summary["restored"] else "already present, identical"
    emit(summary, as_json, text=f"{summary['tag']} [{summary['state']}]: {verb} ({summary['iovs']} IoVs, "
                                f"{summary['payloads']} payloads, hashes verified)")
