"""``vbes demo``: the main job on embedded defaults, from an empty home folder to every component's output.

Each step is a function taking the settings and the state earlier steps left (files they made), and printing
what it did; later components add their step to :data:`STEPS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from vbes.cli import settings_from_context
from vbes.settings import Settings

__all__ = ["demo", "STEPS"]


def _step_calibration(settings: Settings, state: dict[str, Any]) -> None:
    from vbes.calibration import demo_step

    demo_step(settings)


def _step_generate(settings: Settings, state: dict[str, Any]) -> None:
    from vbes.datasets import demo_samples

    state["samples"] = demo_samples(settings, echo=click.echo)
    # two independent samples of one channel (other seeds) for the evaluation step
    from vbes.calibration import CalibrationStore
    from vbes.datasets import generate_sample

    # the suite's null splits want a reference of about twice the sample's size
    pair = []
    with CalibrationStore.from_settings(settings) as store:
        for seed, n_events in ((101, 20_000), (102, 40_000)):
            path = settings.data_dir / f"jpsi-mumu-seed{seed}.h5"
            pair.append(generate_sample("mumu", n_events, path, runs=(-10000, -9001), seed=seed, store=store))
            click.echo(f"   mumu      {n_events} events, seed {seed} -> {path}")
    state["evaluation_pair"] = pair


def _step_archive(settings: Settings, state: dict[str, Any]) -> None:
    from vbes.archive import demo_step

    files = list(state.get("samples", [])) + list(state.get("evaluation_pair", []))
    demo_step(settings, files=files, scope="demo")


def _step_evaluate(settings: Settings, state: dict[str, Any]) -> None:
    from vbes.evaluation import demo_step

    sample, reference = state["evaluation_pair"]
    demo_step(settings, sample=sample, reference=reference, report_dir=settings.home / "reports" / "mumu")


STEPS: list[tuple[str, Callable[[Settings, dict[str, Any]], None]]] = [
    ("calibration store: import the talk's table, build the simulation tag", _step_calibration),
    ("reference samples: Pythia 8 + BESIII-like detector response, one per channel", _step_generate),
    ("archive: checksummed, replicated on hot and cold tiers, audited", _step_archive),
    ("evaluation: two independent mumu samples, reference vs reference", _step_evaluate),
]


@click.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults under VBES_HOME."""
    settings = settings_from_context()
    settings.ensure_home()
    click.echo(f"VBES_HOME = {settings.home}")
    t_all = time.perf_counter()
    state: dict[str, Any] = {}
    for i, (name, step) in enumerate(STEPS, 1):
        click.secho(f"\n== [{i}/{len(STEPS)}] {name}", bold=True)
        t0 = time.perf_counter()
        step(settings, state)
        click.echo(f"   ({time.perf_counter() - t0:.1f} s)")
    click.echo(f"\ndemo finished in {time.perf_counter() - t_all:.1f} s")
