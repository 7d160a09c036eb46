"""The ``vbes`` command: one subcommand group per component, loaded lazily so ``vbes --help`` is instant.

Conventions every component follows:

* a user error raises a :class:`vbes.errors.VbesError`; :func:`main` prints it as one line
  (``vbes: error: ...``) and exits non-zero; ``--debug`` (or ``VBES_DEBUG=1``) shows the traceback;
* ``--json`` prints machine-readable output through :func:`emit`;
* long work shows a progress bar on stderr (:func:`progress`).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import click

from vbes.errors import VbesError

__all__ = ["main", "cli", "emit", "progress", "progress_bar", "parse_key_values", "settings_from_context"]

T = TypeVar("T")

# subcommand name -> "module:attribute"; the modules are imported only when the subcommand runs.
_COMMANDS: dict[str, str] = {
    "demo": "vbes.demo:demo",
    "calib": "vbes.calibration.cli:calib",
    "generate": "vbes.datasets.generator_cli:generate",
    "inspect": "vbes.datasets.cli:inspect_file",
    "ingest": "vbes.datasets.cli:ingest",
    "export-root": "vbes.datasets.cli:export_root",
    "archive": "vbes.archive.cli:archive",
    "evaluate": "vbes.evaluation.cli:evaluate",
    "train": "vbes.training.cli:train_cmd",
    "models": "vbes.training.cli:models",
    "sample": "vbes.training.cli:sample_cmd",
    "respond": "vbes.training.cli:respond_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.startswith(module_name.rsplit(".", 1)[0]):
                    return None  # component not built yet
                raise
            command = getattr(module, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="vbes")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Virtual BESIII: surrogate MC, learned compression, archive and conditions store."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def settings_from_context() -> Any:
    """The resolved :class:`vbes.settings.Settings`, loaded once per command."""
    from vbes.settings import load_settings

    ctx = click.get_current_context()
    root = ctx.find_root()
    root.ensure_object(dict)
    if "settings" not in root.obj:
        root.obj["settings"] = load_settings()
    return root.obj["settings"]


def emit(obj: Any, as_json: bool, text: str | None = None) -> None:
    """Print ``obj`` as JSON when ``as_json``, else ``text`` (or a readable rendering of ``obj``)."""
    if as_json:
        click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))
    elif text is not None:
        click.echo(text)
    elif isinstance(obj, dict):
        width = max((len(str(k)) for k in obj), default=0)
        for key, value in obj.items():
            click.echo(f"{str(key).ljust(width)}  {value}")
    else:
        click.echo(str(obj))


def parse_key_values(pairs: Iterable[str], option: str = "--meta") -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict; a VALUE that is valid JSON (number, list, ...) is kept as such.

    Example:
        >>> parse_key_values(["serno=257", "stver=6.6.2b"])
        {'serno': 257, 'stver': '6.6.2b'}
    """
    from vbes.errors import InvalidInput

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{option} {pair!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(value)
        except ValueError:
            values[key] = value
    return values


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """Progress bar on stderr for long work; silent when stderr is not a terminal unless VBES_PROGRESS=1."""
    with progress_bar(total, desc, unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it") -> Any:
    """A progress bar to ``update(n)`` by hand (same rules as :func:`progress`), as a context manager."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("VBES_PROGRESS") == "1")
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, unit_scale=True)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("VBES_DEBUG", "") not in ("", "0")


def _click_message(exc: click.ClickException) -> str:
    """A click error as one line: which command, what is wrong, where the help is (no usage block)."""
    message = " ".join(exc.format_message().split())
    ctx = exc.ctx if isinstance(exc, click.UsageError) else None
    if ctx is None:
        return message
    where = f"{ctx.command_path}: " if ctx.parent is not None else ""
    return f"{where}{message} (see '{ctx.command_path} --help')"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vbes`` command; returns the exit status."""
    args = sys.argv[1:] if argv is None else argv
    debug = _debug_requested(args)
    try:
        result = cli.main(args=args, prog_name="vbes", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("vbes: aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"vbes: error: {_click_message(exc)}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except VbesError as exc:
        if debug:
            raise
        click.echo(f"vbes: error: {exc}", err=True)
        return exc.exit_code
    except (OSError, KeyboardInterrupt) as exc:
        if debug:
            raise
        if isinstance(exc, KeyboardInterrupt):
            click.echo("vbes: interrupted", err=True)
            return 130
        click.echo(f"vbes: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
