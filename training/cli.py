"""``vbes train CONFIG.yaml`` and ``vbes models list|show``."""

from __future__ import annotations

from pathlib import Path

import click

from vbes.cli import emit, settings_from_context

__all__ = ["models", "train_cmd"]


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
