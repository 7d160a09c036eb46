"""Logical names ``scope:name`` (as Rucio's DIDs) and the rules that keep them inside the store.

Content lives under its SHA-256, so a logical name never becomes a storage path; but names do become paths
when a dataset is exported as a BagIt bag (``data/<scope>/<name>``) or fetched by a user, so anything that
could climb out of a folder (``..``, an absolute path, a backslash) or hide in a terminal (control and other
non-printing characters) is refused up front.

Example:
    >>> parse_name("mc:jpsi/rhopi-run-8093.h5")
    LogicalName(scope='mc', name='jpsi/rhopi-run-8093.h5')
    >>> parse_name("mc:../etc/passwd")
    Traceback (most recent call last):
    ...
    vbes.errors.InvalidName: logical name 'mc:../etc/passwd': path component '..' is not allowed
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from vbes.errors import InvalidName

__all__ = ["LogicalName", "parse_name", "MAX_NAME_LENGTH"]

MAX_NAME_LENGTH = 255
_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class LogicalName(NamedTuple):
    """A parsed, validated ``scope:name``."""

    scope: str
    name: str

    def __str__(self) -> str:
        return f"{self.scope}:{self.name}"


def _problem(scope: str, name: str) -> str | None:
    if not _SCOPE.fullmatch(scope):
        return (
            f"scope {scope!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not name:
        return "the name after ':' is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"the name is longer than {MAX_NAME_LENGTH} characters"
    for char in name:
        # category C = control, format, surrogate, private-use and unassigned code points
        if unicodedata.category(char).startswith("C"):
            return f"character U+{ord(char):04X} (non-printing) is not allowed"
    if "\\" in name:
        return "backslashes are not allowed"
    if name != name.strip():
        return "leading or trailing white space is not allowed"
    if name.startswith("/"):
        return "absolute paths are not allowed"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return (
                f"path component {part!r} is not allowed"
                if part
                else "empty path component ('//' or '/' at the end)"
            )
    return None


def parse_name(text: str) -> LogicalName:
    """Split and validate ``scope:name``; raise :class:`~vbes.errors.InvalidName` saying what is wrong."""
    if not isinstance(text, str) or ":" not in text:
        raise InvalidName(f"logical name {text!r}: expected SCOPE:NAME")
    scope, name = text.split(":", 1)
    problem = _problem(scope, name)
    if problem:
        raise InvalidName(f"logical name {text!r}: {problem}")
    return LogicalName(scope, name)
