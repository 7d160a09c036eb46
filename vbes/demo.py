"""``vbes demo``: the main job on embedded defaults, from an empty home folder to every component's output.

Each step is a function taking the settings and printing what it did; later components add their step to
:data:`STEPS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from vbes.cli import settings_from_context
from vbes.settings import Settings

__all__ = ["demo", "STEPS"]


def _step_calibration(settings: Settings) -> None:
    from vbes.calibration import demo_step

    demo_step(settings)


STEPS: list[tuple[str, Callable[[Settings], None]]] = [
    ("calibration store", _step_calibration),
]


@click.command()
def demo() -> None:
    """Run the whole pipeline on embedded defaults under VBES_HOME."""
    settings = settings_from_context()
    settings.ensure_home()
    click.echo(f"VBES_HOME = {settings.home}")
    t_all = time.perf_counter()
    for i, (name, step) in enumerate(STEPS, 1):
        click.secho(f"\n== [{i}/{len(STEPS)}] {name}", bold=True)
        t0 = time.perf_counter()
        step(settings)
        click.echo(f"   ({time.perf_counter() - t0:.1f} s)")
    click.echo(f"\ndemo finished in {time.perf_counter() - t_all:.1f} s")
