"""Type-check the ``vbes`` package with mypy, as it is installed (settings: ``[tool.mypy]`` in pyproject.toml).

The repository's folders install under other names (``calibration/`` is ``vbes.calibration``, ...; see
``[tool.setuptools] package-dir``), and mypy cannot follow the import hook of setuptools' editable install. So
this script mirrors the installed layout as a tree of symbolic links under ``build/mypy-src/`` (one link per
module, so the data folders are not taken for packages), runs ``mypy`` there (``mypy_path`` points at it) and
prints mypy's report with the repository's own paths. Arguments are passed on to mypy.

Usage, from anywhere::

    .venv/bin/python .ci/typecheck.py
"""

from __future__ import annotations

__all__ = ["build_link_tree", "main"]

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK_TREE = REPO / "build" / "mypy-src"
MODULE_SUFFIXES = (".py", ".pyi")


def build_link_tree(repo: Path = REPO, tree: Path = LINK_TREE) -> dict[str, str]:
    """Recreate ``tree`` as the installed package layout, linking each module file to its source.

    Args:
        repo: the repository root (holds pyproject.toml).
        tree: the folder to (re)create; it is removed first.

    Returns:
        ``{path prefix inside the tree: source folder}``, both relative to ``repo`` and ending in ``/``, to turn
        mypy's paths back into the repository's.
    """
    package_dir: dict[str, str] = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"]
    shutil.rmtree(tree, ignore_errors=True)
    prefixes = {}
    for package, folder in package_dir.items():
        target = tree.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((repo / folder).iterdir()):
            if source.is_file() and (source.suffix in MODULE_SUFFIXES or source.name == "py.typed"):
                (target / source.name).symlink_to(source)
        prefixes[f"{target.relative_to(repo).as_posix()}/"] = f"{Path(folder).as_posix()}/"
    return prefixes


def main(argv: list[str]) -> int:
    """Build the link tree, run mypy from the repository root, print its report; returns mypy's exit status."""
    prefixes = build_link_tree()
    result = subprocess.run([sys.executable, "-m", "mypy", *argv], cwd=REPO, capture_output=True, text=True,
                            check=False)
    # longest prefix first: build/mypy-src/vbes/calibration/ must not be rewritten as a file of vbes/
    ordered = sorted(prefixes.items(), key=lambda item: len(item[0]), reverse=True)
    for line in result.stdout.splitlines():
        for linked, source in ordered:
            if line.startswith(linked):
                line = source + line[len(linked):]
                break
        print(line)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
