"""Command-line entry points of the event format: ``vbes inspect``, ``vbes ingest``, ``vbes export-root``."""

from __future__ import annotations

from pathlib import Path

import click

from vbes.cli import emit, progress

__all__ = ["inspect_file", "ingest", "export_root"]


def _format_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@click.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--chunk-events", default=100_000, show_default=True, help="Events read at a time.")
def inspect_file(path: Path, as_json: bool, chunk_events: int) -> None:
    """Show an event file: counts, provenance and the range of every field (streamed in chunks).

    Every array is hashed on the way: an altered file is refused (exit 1) and an intact one shows
    "content digest verified".
    """
    from vbes.datasets.eventfile import summarize

    info = summarize(path, chunk_events=chunk_events)
    if as_json:
        emit(info, True)
        return
    lines = [
        f"file            {info['path']}",
        f"schema version  {info['schema_version']}",
        f"mc              {info['mc']}",
        f"events          {info['n_events']}",
        "rows            " + ", ".join(f"{t} {n}" for t, n in info["rows"].items()),
        f"size            {info['size_bytes']} bytes",
        f"created         {info['created']}",
        f"content digest  {info['digest']}",
        f"integrity       {info['verification']}",
        "provenance:",
        *(f"  {k}: {v}" for k, v in sorted(info["provenance"].items())),
        "fields:",
        f"  {'field':28s} {'count':>10s} {'NaN':>8s} {'min':>12s} {'max':>12s} {'mean':>12s}",
    ]
    for key, st in info["fields"].items():
        lines.append(
            f"  {key:28s} {st['count']:>10d} {st['nan']:>8d} {_format_value(st['min']):>12s} "
            f"{_format_value(st['max']):>12s} {_format_value(st['mean']):>12s}"
        )
    emit(info, False, "\n".join(lines))


@click.command("ingest")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "besiii-dst", "root"]),
    default="auto",
    show_default=True,
    help="Input format (auto: .dst is a BESIII DST, else a ROOT ntuple).",
)
@click.option("--tree", default=None, help="TTree of a ROOT ntuple (default: the mapping's, else 'events').")
@click.option(
    "--map",
    "mapping",
    type=click.Path(path_type=Path),
    default=None,
    help="Mapping file (YAML) from branches to fields; not needed for files from 'vbes export-root'.",
)
@click.option("--channel", default="unknown", show_default=True, help="Channel name stored for a DST.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Event file to write.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ingest(
    source: Path, fmt: str, tree: str | None, mapping: Path | None, channel: str, output: Path, as_json: bool
) -> None:
    """Convert a BESIII DST or a ROOT ntuple into an event file."""
    from vbes.datasets.ingest import ingest_besiii_dst, ingest_root
    from vbes.errors import InvalidInput

    if fmt == "auto":
        fmt = "besiii-dst" if source.suffix == ".dst" else "root"
    if fmt == "besiii-dst":
        if mapping is not None or tree is not None:
            raise InvalidInput("--map and --tree apply to ROOT ntuples, not to --format besiii-dst")
        info = ingest_besiii_dst(source, output, channel=channel, progress=progress)
    else:
        info = ingest_root(source, output, tree=tree, mapping=mapping, progress=progress)
    emit(
        info,
        as_json,
        f"wrote {info['path']}: {info['n_events']} events, "
        + ", ".join(f"{n} {t}" for t, n in info["rows"].items() if t != "events")
        + f"; digest {info['digest'][:16]}",
    )


@click.command("export-root")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="ROOT file to write.")
@click.option("--tree", default="events", show_default=True, help="Name of the TTree.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export_root(source: Path, output: Path, tree: str, as_json: bool) -> None:
    """Write an event file as a ROOT TTree (jagged <table>_<field> branches)."""
    from vbes.datasets.ingest import export_root as export

    info = export(source, output, tree=tree, progress=progress)
    emit(info, as_json, f"wrote {info['path']}: tree {info['tree']!r}, {info['n_events']} events")
