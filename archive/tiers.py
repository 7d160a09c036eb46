"""Storage tiers: content-addressed folders reached through fsspec (a local folder, or XRootD ``root://``).

Layout under a tier's root: ``ab/cd/abcd…`` (the SHA-256, fanned out by its first two bytes so no folder
grows huge) and ``.tmp/`` for writes in progress. A write goes to ``.tmp/`` first and is renamed into place
only when complete (after ``fsync`` on a local disk), so a reader, an audit or a crash never sees half a file
under a content name. Local replicas are read-only (mode 0444); a repair replaces them by another rename.

Writers name their temporary file ``<host>-<pid>-<random>.part`` and, on a local disk, hold an exclusive
``flock`` on it; a temporary file whose writer is gone (lock free and process dead, e.g. after ``kill -9``) is
swept by the next write or audit. On a remote tier there is no lock to test, so only temporary files older
than :attr:`Tier.stale_partial_s` are swept.

Example:
    >>> import tempfile
    >>> tier = Tier("hot", tempfile.mkdtemp())
    >>> sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256 of b"abc"
    >>> with tier.writer() as w:
    ...     w.write(b"abc")
    ...     _ = w.commit(sha)
    >>> b"".join(tier.read_chunks(sha))
    b'abc'
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from vbes.archive.checksums import CHUNK_SIZE, read_chunks

from vbes.errors import TierError

__all__ = ["Tier", "TierWriter", "TierEntry", "is_sha256", "partial_token", "writer_is_gone"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TMP = ".tmp"
_XROOTD_CLIENT_DEFAULTS = {
    "XRD_CONNECTIONRETRY": "2",
    "XRD_CONNECTIONWINDOW": "15",
    "XRD_REQUESTTIMEOUT": "300",
}


def is_sha256(text: str) -> bool:
    """Whether ``text`` is 64 lower-case hex digits."""
    return bool(_SHA256.fullmatch(text))


@dataclass(frozen=True)
class TierEntry:
    """One file found on a tier: ``kind`` is ``content`` (named by a SHA-256), ``partial`` or ``stray``."""

    kind: Literal["content", "partial", "stray"]
    path: str
    size: int
    mtime: float | None
    sha256: str | None = None


def partial_token() -> str:
    """A temporary file's name tail, ``<host>-<pid>-<random>.part``: whose it is, for :func:`writer_is_gone`."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}.part"


def writer_is_gone(path: str, token: str, mtime: float | None, stale_s: float) -> bool:
    """Whether the writer of the local temporary file ``path`` is gone (so the file can be removed).

    Args:
        path: the file; its writer holds an exclusive ``flock`` on it while writing.
        token: the name tail from :func:`partial_token`, naming the writer's host and pid.
        mtime: the file's modification time; a live writer between creating and locking is waited for.
        stale_s: how old such a file must be before it is taken for abandoned.
    """
    match = re.match(r"(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{32}\.part$", token)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer still holds the lock
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if match and match["host"] == socket.gethostname() and _pid_alive(int(match["pid"])):
        # a live writer between creating its file and locking it; wait until it is old
        return mtime is not None and time.time() - mtime > stale_s
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TierWriter:
    """An atomic write to a tier: :meth:`write` chunks, then :meth:`commit` under a SHA-256, or :meth:`abort`.

    Leaving the ``with`` block without :meth:`commit` aborts (the temporary file is removed).
    """

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.tmp_path = tier._join(_TMP, partial_token())
        self._done = False
        self._fd: int | None = None
        self._remote: IO[bytes] | None = None
        if tier.is_local:
            os.makedirs(tier._join(_TMP), exist_ok=True)
            self._fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            # held until commit/abort; the kernel drops it if this process dies, which marks the file stale
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        else:
            tier._call("create", tier._join(_TMP), lambda: tier.fs.makedirs(tier._join(_TMP), exist_ok=True))
            self._remote = tier._call("open", self.tmp_path, lambda: tier.fs.open(self.tmp_path, "wb"))

    def write(self, chunk: bytes) -> None:
        if self._fd is not None:
            view = memoryview(chunk)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        else:
            assert self._remote is not None
            self.tier._call("write", self.tmp_path, lambda: self._remote.write(chunk))

    def commit(self, sha256: str) -> str:
        """Make the written bytes visible as the content ``sha256`` (replacing any file already there)."""
        if not is_sha256(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        tier = self.tier
        final = tier.content_path(sha256)
        if self._fd is not None:
            os.fchmod(self._fd, 0o444)  # replicas are never modified in place: guard against accidents
            os.fsync(self._fd)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(self.tmp_path, final)
            # the rename is durable only once the folder holding the new entry is on disk too
            dir_fd = os.open(os.path.dirname(final), os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            os.close(self._fd)
            self._fd = None
        else:
            assert self._remote is not None
            remote = self._remote
            tier._call("close", self.tmp_path, remote.close)
            self._remote = None
            parent = tier.fs._parent(final)
            tier._call("create", parent, lambda: tier.fs.makedirs(parent, exist_ok=True))
            # a server-side rename replaces an existing (bad) replica in one step
            tier._call("rename", final, lambda: tier.fs.mv(self.tmp_path, final))
        self._done = True
        return final

    def abort(self) -> None:
        """Throw the temporary file away (idempotent)."""
        if self._done:
            return
        self._done = True
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp_path)
            os.close(self._fd)
            self._fd = None
        else:
            if self._remote is not None:
                with contextlib.suppress(Exception):
                    self._remote.close()
                self._remote = None
            with contextlib.suppress(Exception):
                self.tier.fs.rm(self.tmp_path)

    def __enter__(self) -> TierWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


class Tier:
    """A named storage location holding files under their SHA-256.

    Args:
        name: the tier's name in the catalog (``hot``, ``cold``, ...).
        url: any fsspec URL or a local path (``/data/hot``, ``file:///data/hot``, ``root://host:1094//cold``).
        stale_partial_s: age after which a remote temporary file is taken for abandoned.
    """

    def __init__(self, name: str, url: str, stale_partial_s: float = 3600.0) -> None:
        self.name = name
        self.url = url
        self.stale_partial_s = stale_partial_s
        if url.startswith(("root://", "xroot://")):
            # the XRootD client otherwise retries an unreachable server for 10 minutes (5 x 120 s) before it
            # reports anything; a user's setting in the environment wins
            for variable, value in _XROOTD_CLIENT_DEFAULTS.items():
                os.environ.setdefault(variable, value)
        try:
            # listings are never cached: an audit must see what is on the tier now, not a minute ago
            self.fs, root = fsspec.core.url_to_fs(url, use_listings_cache=False)
        except (ImportError, ValueError) as exc:
            raise TierError(f"tier {name!r}: cannot use {url!r}: {exc}") from exc
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.abspath(root) if self.is_local else root.rstrip("/")

    def __repr__(self) -> str:
        return f"Tier({self.name!r}, {self.url!r})"

    # -- paths --------------------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return "/".join([self.root, *parts]) if not self.is_local else os.path.join(self.root, *parts)

    def content_path(self, sha256: str) -> str:
        """Where the content ``sha256`` lives on this tier (a local path or a path on the remote endpoint)."""
        return self._join(sha256[:2], sha256[2:4], sha256)

    def location(self, sha256: str) -> str:
        """A URL a person can use to find the replica (for reports)."""
        path = self.content_path(sha256)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _call(self, action: str, path: str, func: Any) -> Any:
        """Run a remote operation, turning the transport's many exception types into one clear TierError."""
        try:
            return func()
        except FileNotFoundError:
            raise
        except (OSError, RuntimeError, ValueError) as exc:
            raise TierError(f"tier {self.name!r}: cannot {action} {path}: {exc}") from exc

    def probe(self) -> str | None:
        """``None`` when the tier's root can be reached (or does not exist yet), else why not."""
        try:
            if self.is_local:
                if os.path.exists(self.root) and not os.path.isdir(self.root):
                    return f"{self.root} is not a folder"
                return None
            self._call("stat", self.root, lambda: self.fs.exists(self.root))
        except TierError as exc:
            return str(exc)
        return None

    # -- reading ------------------------------------------------------------------------------------------

    def writer(self) -> TierWriter:
        """Start an atomic write (see :class:`TierWriter`)."""
        if self.is_local:
            self.sweep_partials()
        return TierWriter(self)

    def size(self, sha256: str) -> int | None:
        """Size in bytes of the replica, or ``None`` when there is none."""
        path = self.content_path(sha256)
        if self.is_local:
            try:
                return os.stat(path).st_size
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise TierError(f"tier {self.name!r}: cannot stat {path}: {exc.strerror}") from exc
        try:
            return int(self._call("stat", path, lambda: self.fs.info(path))["size"])
        except (FileNotFoundError, TierError):
            if not self.exists(sha256):
                return None
            raise

    def exists(self, sha256: str) -> bool:
        path = self.content_path(sha256)
        if self.is_local:
            return os.path.isfile(path)
        return bool(self._call("stat", path, lambda: self.fs.exists(path)))

    def read_chunks(self, sha256: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """The replica's bytes; raises ``FileNotFoundError`` when it is missing.

        Every call opens the file afresh (no handle or block cache is reused), so a second read really goes
        back to the storage.
        """
        path = self.content_path(sha256)
        if self.is_local:
            try:
                with open(path, "rb") as f:
                    yield from read_chunks(f, chunk_size)
            except FileNotFoundError:
                raise
            except OSError as exc:
                raise TierError(f"tier {self.name!r}: cannot read {path}: {exc.strerror}") from exc
            return
        if not self.exists(sha256):
            raise FileNotFoundError(errno.ENOENT, "no replica", self.location(sha256))
        self.fs.invalidate_cache(path)
        f = self._call(
            "open", path, lambda: self.fs.open(path, "rb", block_size=chunk_size, cache_type="none")
        )
        with f:
            while True:
                chunk = self._call("read", path, lambda: f.read(chunk_size))
                if not chunk:
                    return
                yield chunk

    def remove(self, sha256: str) -> None:
        """Delete the replica (used only when a repair replaces a bad one)."""
        path = self.content_path(sha256)
        if self.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        elif self.exists(sha256):
            self._call("remove", path, lambda: self.fs.rm(path))

    # -- listing ------------------------------------------------------------------------------------------

    def scan(self) -> Iterator[TierEntry]:
        """Every file under the tier's root, classified (content / partial / stray)."""
        if self.is_local:
            if not os.path.isdir(self.root):
                return
            for folder, subfolders, files in os.walk(self.root):
                subfolders.sort()
                for filename in sorted(files):
                    path = os.path.join(folder, filename)
                    try:
                        st = os.stat(path)
                    except FileNotFoundError:
                        continue  # a write in progress renamed it away meanwhile
                    yield self._classify(os.path.relpath(path, self.root), path, st.st_size, st.st_mtime)
            return
        if not self.fs.exists(self.root):
            return
        found = self._call("list", self.root, lambda: self.fs.find(self.root, detail=True))
        for path, info in sorted(found.items()):
            rel = path[len(self.root) :].lstrip("/")
            yield self._classify(rel, path, int(info.get("size", 0)), info.get("mtime"))

    def _classify(self, rel: str, path: str, size: int, mtime: float | None) -> TierEntry:
        parts = rel.replace(os.sep, "/").split("/")
        if len(parts) == 2 and parts[0] == _TMP:
            return TierEntry("partial", path, size, mtime)
        if len(parts) == 3 and is_sha256(parts[2]) and parts[0] == parts[2][:2] and parts[1] == parts[2][2:4]:
            return TierEntry("content", path, size, mtime, parts[2])
        return TierEntry("stray", path, size, mtime)

    def partial_is_abandoned(self, entry: TierEntry) -> bool:
        """Whether the writer of a temporary file is gone (so the file can be removed)."""
        if not self.is_local:
            return entry.mtime is not None and time.time() - float(entry.mtime) > self.stale_partial_s
        return writer_is_gone(entry.path, os.path.basename(entry.path), entry.mtime, self.stale_partial_s)

    def sweep_partials(self) -> list[str]:
        """Remove temporary files whose writer is gone; returns their paths."""
        removed = []
        for entry in self.scan_partials():
            if self.partial_is_abandoned(entry):
                if self.is_local:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                else:
                    self._call("remove", entry.path, lambda p=entry.path: self.fs.rm(p))
                removed.append(entry.path)
        return removed

    def scan_partials(self) -> Iterator[TierEntry]:
        """The temporary files of writes in progress (or abandoned)."""
        tmp = self._join(_TMP)
        if self.is_local:
            if not os.path.isdir(tmp):
                return
            for filename in sorted(os.listdir(tmp)):
                path = os.path.join(tmp, filename)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                yield TierEntry("partial", path, st.st_size, st.st_mtime)
            return
        if not self.fs.exists(tmp):
            return
        for info in self._call("list", tmp, lambda: self.fs.ls(tmp, detail=True)):
            if info.get("type") == "file":
                yield TierEntry("partial", info["name"], int(info.get("size", 0)), info.get("mtime"))
