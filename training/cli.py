"""``vbes train CONFIG.yaml`` and ``vbes models list|show``."""

from __future__ import annotations

from pathlib import Path

import click

from vbes.cli import emit, settings_from_context

__all__ = ["models", "respond_cmd", "sample_cmd", "train_cmd"]


@click.command("train")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--fresh", is_flag=True, help="Discard an unfinished (killed) run of this name instead of resuming it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def train_cmd(config: Path, fresh: bool, as_json: bool) -> None:
    """Train the run that CONFIG (a YAML training configuration) describes; a killed run resumes."""
    from vbes.training.run import train

    result = train(config, settings_from_context(), fresh=fresh, echo=lambda line: click.echo(line, err=as_json))
    if as_json and result.rank == 0:
        emit(result.as_dict(), True)


@click.group("models")
def models() -> None:
    """Registered models in the MLflow registry."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json: bool) -> None:
    """Every registered model with versions, aliases (models:/NAME@ALIAS), lineage and gate status."""
    from vbes.training.registry import list_models

    listing = list_models(settings_from_context().mlflow_tracking_uri)
    lines = [f"tracking URI {listing['tracking_uri']}"]
    for m in listing["models"]:
        lines.append(m["name"])
        for v in m["versions"]:
            files = ", ".join(f"{f['source']} sha256={f['sha256'][:12]}…" for f in v["lineage"]["files"])
            aliases = " ".join(v["aliases"]) or "-"
            lines.append(f"  {v['uri']}  {aliases}  gates: {v['gate_status']}  run {v['run_id']}")
            lines.append(f"    data: {files or '-'}; calibration: {','.join(v['lineage']['calibration_tags']) or '-'}"
                         f"; code: {v['lineage']['code_version']}")
    if not listing["models"]:
        lines.append("no registered models")
    emit(listing, as_json, "\n".join(lines))


@models.command("show")
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_cmd(uri: str, as_json: bool) -> None:
    """One registered version (URI: models:/NAME@ALIAS or models:/NAME/VERSION) in full."""
    import json

    from vbes.training.registry import describe_version

    info = describe_version(settings_from_context().mlflow_tracking_uri, uri)
    emit(info, as_json, json.dumps(info, indent=2, sort_keys=True, default=str))


def _runs_option(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    from vbes.datasets.simulation import parse_runs

    return parse_runs(text)


@click.command("sample")
@click.argument("model")
@click.option("-n", "--events", "n_events", type=click.IntRange(min=1), required=True, help="Number of events.")
@click.option("-o", "--output", required=True,
              help="Output file; with --files > 1 a pattern with {index} (out_{index:03d}.h5) or a folder.")
@click.option("--channel", help="Physics channel (default: the model's first).")
@click.option("--runs", "runs_text", metavar="FIRST:LAST",
              help="Run range, negative for MC (default: the model's training runs); write --runs=-10000:-9001.")
@click.option("--tag", help="Calibration global tag of the runs (default: the simulation tag).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (same request and seed, same events).")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "parquet", "root"]),
              help="Output format (default: from the file suffix).")
@click.option("--files", type=click.IntRange(min=1), default=1, show_default=True,
              help="Output files, written in parallel on Dask.")
@click.option("--chunk-events", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Events per chunk (the unit of work and of determinism).")
@click.option("-j", "--workers", type=click.IntRange(min=1), help="Worker processes of the local Dask cluster.")
@click.option("--scheduler", help="Address of a running Dask scheduler (tcp://HOST:8786) instead of a local cluster.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def sample_cmd(model: str, n_events: int, output: str, channel: str | None, runs_text: str | None, tag: str | None,
               seed: int, fmt: str | None, files: int, chunk_events: int, workers: int | None, scheduler: str | None,
               as_json: bool) -> None:
    """Draw N events from MODEL (models:/NAME@ALIAS, models:/NAME/VERSION or a saved model folder) into files in
    the event layout, with provenance: an event surrogate draws whole events; a detector-response model responds
    to the reference generator's truth."""
    from vbes.cli import progress_bar
    from vbes.training.sampling import sample_events

    with progress_bar(n_events, "sample", "event") as bar:
        result = sample_events(model, n_events, output, settings_from_context(), channel=channel,
                               runs=_runs_option(runs_text), tag=tag, seed=seed, fmt=fmt, files=files,
                               chunk_events=chunk_events, workers=workers, scheduler=scheduler,
                               progress=lambda step: bar.update(step.n_events) if step.kind == "chunk" else None)
    prov = result["provenance"]
    text = (f"wrote {n_events} {prov['channel']} events from {prov['model_uri']}"
            f"{' version ' + prov['model_version'] if prov['model_version'] else ''} "
            f"(runs {prov['runs'][0]}..{prov['runs'][1]}, tag {prov['calibration_tag']}, seed {seed}) to "
            + ", ".join(result["paths"]))
    emit(result, as_json, text)


@click.command("respond")
@click.argument("model")
@click.option("--truth", "truth", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Event file whose truth particles are responded to.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output file (HDF5, Parquet or ROOT by suffix).")
@click.option("--tag", help="Calibration global tag (default: the truth file's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed.")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True,
              help="Responses per truth event (oversampling: events are not independent, see the README).")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "parquet", "root"]), help="Output format.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def respond_cmd(model: str, truth: Path, output: Path, tag: str | None, seed: int, repeats: int, fmt: str | None,
                as_json: bool) -> None:
    """Reconstructed tracks and showers from MODEL (a detector-response model) for the truth particles of TRUTH."""
    from vbes.cli import progress_bar
    from vbes.datasets import file_info
    from vbes.training.sampling import respond_file

    with progress_bar(int(file_info(truth)["n_events"]), "respond", "event") as bar:
        result = respond_file(model, truth, output, settings_from_context(), tag=tag, seed=seed, repeats=repeats,
                              fmt=fmt, progress=lambda done: bar.update(done - bar.n))
    outside = result["provenance"]["inputs_outside_training_domain"]
    emit(result, as_json, f"wrote {result['events']} events with reconstructed objects from "
                          f"{result['provenance']['model_uri']} for the truth of {truth} to {result['path']}; "
                          f"{100 * outside:.2f} % of the truth particles lie outside the model's training domain")
