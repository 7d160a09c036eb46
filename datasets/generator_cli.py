"""``vbes generate``: a reference sample of J/ψ decays (or of single particles of a particle gun) through the
BESIII-like detector, as an event file.

Example::

    vbes calib init
    vbes generate rhopi -n 100000 -o rhopi.h5 --runs=-10000:-9000 --seed 7
    vbes generate gun -n 100000 -o gun.h5 --runs=-10000:-9000 --species pi+,pi-,K+ --p-range 0.05:2.0 --seed 7
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click
from vbes.datasets.gun import DEFAULT_COS_RANGE, DEFAULT_P_RANGE, GUN_SPECIES, GunSpec, parse_range, parse_species
from vbes.datasets.simulation import SIM_TAG, SIMULATION_CHANNELS, generate_sample, parse_runs

from vbes.cli import emit, progress, settings_from_context

__all__ = ["generate"]

#: well below what a generated event takes (measured: ~660 B for mumu and ~710 B for ee, 3000 events at gzip
#: level 1): a request that needs more disk than this even at this size is refused before any work starts
_MIN_BYTES_PER_EVENT = 100


def _check_request(n_events: int, output: Path, runs_text: str, runs: tuple[int, int], seed: int) -> None:
    """Refuse, before anything is generated, what could only fail later or be stored wrongly."""
    from vbes.datasets.eventfile import check_column_range
    from vbes.datasets.schema import TABLES

    from vbes.errors import InvalidInput

    if seed < 0:
        raise InvalidInput(f"--seed {seed}: a seed is a non-negative integer")
    run_field = next(f for f in TABLES["events"] if f.name == "run")
    check_column_range(f"--runs={runs_text}", "events", run_field, list(runs))
    folder = output.parent if str(output.parent) else Path(".")
    if folder.is_dir():
        free = shutil.disk_usage(folder).free
        if n_events * _MIN_BYTES_PER_EVENT > free:
            raise InvalidInput(
                f"-n {n_events}: the file would take at least {n_events * _MIN_BYTES_PER_EVENT / 1e9:,.0f} GB "
                f"and {folder} has {free / 1e9:,.0f} GB free"
            )


def _gun_spec(channel: str, species: str | None, p_range: str | None, cos_range: str | None,
              no_fsr: bool) -> GunSpec | None:
    """The gun of channel ``gun`` from its options; the gun's options refused for the J/ψ channels."""
    given = [name for name, value in (("--species", species), ("--p-range", p_range), ("--cos-range", cos_range))
             if value is not None]
    if channel != "gun":
        if given:
            raise click.UsageError(f"{given[0]} is an option of the particle gun (channel gun), not of {channel}")
        return None
    if species is None:
        raise click.UsageError(f"channel gun needs --species, e.g. --species pi+,pi-,K+ (known: "
                               f"{', '.join(GUN_SPECIES)})")
    if no_fsr:
        raise click.UsageError("--no-fsr is for the J/psi channels: the particle gun has no decays to radiate in")
    return GunSpec(
        parse_species(species),
        DEFAULT_P_RANGE if p_range is None else parse_range("--p-range", p_range),
        DEFAULT_COS_RANGE if cos_range is None else parse_range("--cos-range", cos_range),
    )


@click.command()
@click.argument("channel", type=click.Choice(SIMULATION_CHANNELS))
@click.option("-n", "--events", "n_events", type=click.IntRange(min=1), required=True, help="Number of events.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Event file to write (HDF5).")
@click.option("--runs", "runs_text", required=True, metavar="FIRST:LAST",
              help="Run range, negative for MC; write negative ranges as --runs=-10000:-9000.")
@click.option("--tag", default=SIM_TAG, show_default=True, help="Calibration global tag.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same events).")
@click.option("--no-fsr", is_flag=True, help="Turn final-state radiation in decays off.")
@click.option("--no-material", is_flag=True,
              help="Turn the material effects off (bremsstrahlung, conversions, decays in flight, hadronic "
                   "interactions), e.g. to compare with FSR alone.")
@click.option("--species", metavar="NAME[,NAME...]",
              help=f"Channel gun: species shot, one drawn uniformly per event ({', '.join(GUN_SPECIES)}).")
@click.option("--p-range", metavar="MIN:MAX",
              help=f"Channel gun: momentum range in GeV/c, flat [default: {DEFAULT_P_RANGE[0]}:{DEFAULT_P_RANGE[1]}].")
@click.option("--cos-range", metavar="MIN:MAX",
              help="Channel gun: cos(theta) range, flat; write negative ranges as --cos-range=-0.95:0.95 "
                   f"[default: {DEFAULT_COS_RANGE[0]}:{DEFAULT_COS_RANGE[1]}].")
@click.option("-j", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def generate(channel: str, n_events: int, output: Path, runs_text: str, tag: str, seed: int, no_fsr: bool,
             no_material: bool, species: str | None, p_range: str | None, cos_range: str | None, workers: int,
             as_json: bool) -> None:
    """Generate CHANNEL (rhopi, kskpi, ee, mumu, ppbar, inclusive; gun: single particles, see --species) with
    constants of TAG for the runs."""
    from vbes.calibration import CalibrationStore

    from vbes.errors import TagNotFound

    gun = _gun_spec(channel, species, p_range, cos_range, no_fsr)
    runs = parse_runs(runs_text)
    _check_request(n_events, output, runs_text, runs, seed)
    settings = settings_from_context()
    with CalibrationStore.from_settings(settings) as store:
        try:
            store.tag_info(tag)
        except TagNotFound as exc:
            hint = " (run `vbes calib init` to create it)" if tag == SIM_TAG else ""
            raise TagNotFound(f"{exc}{hint}") from None
        path = generate_sample(channel, n_events, output, runs=runs, tag=tag, seed=seed, store=store,
                               fsr=not no_fsr, workers=workers, material=not no_material, gun=gun,
                               progress=lambda chunks, total: progress(chunks, total=total, desc="generate",
                                                                        unit="chunk"))
    result: dict[str, object] = {"path": str(path), "channel": channel, "events": n_events, "runs": list(runs),
                                 "tag": tag, "seed": seed}
    what = channel
    if gun is None:
        result.update(fsr=not no_fsr, material=not no_material)
    else:
        result.update(material=not no_material, species=list(gun.species), p_range=list(gun.p_range),
                      cos_range=list(gun.cos_range))
        what = f"gun ({','.join(gun.species)}; p {gun.p_range[0]:g}..{gun.p_range[1]:g} GeV/c, cos(theta) " \
               f"{gun.cos_range[0]:g}..{gun.cos_range[1]:g})"
    emit(result, as_json, text=f"wrote {n_events} {what} events (runs {runs[0]}..{runs[1]}, tag {tag}, "
                               f"seed {seed}) to {path}")
