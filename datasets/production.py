"""Fill one or many output files from a deterministic chunk producer, in order or in parallel on Dask.

The output side of ``vbes sample``: the caller gives ``make_chunk(chunk_index, n) -> tables`` whose result depends
only on its arguments (it is seeded by the caller), and :func:`produce` cuts the request into chunks of
``chunk_events`` events (chunk ``i`` holds events ``i * chunk_events ...``, the last one the rest) and the chunks
into ``files`` contiguous ranges, one per file. The chunks are the same whatever ``files``, ``workers`` or the
scheduler, so the same request and seed give the same arrays: the files of a split request, read in index order,
hold exactly the events of the one-file request (same content digest per event, see
:mod:`vbes.datasets.writers`).

How the work runs:

* ``files=1`` and no ``workers``/``scheduler`` (or ``workers=1``): in this process, chunk after chunk.
* ``files=1`` with ``workers > 1`` or a ``scheduler``: the chunks are made on Dask workers (a bounded window of
  them in flight) and written here in chunk order.
* ``files > 1``: one Dask task per file, each writing its file on a worker, in parallel: on a
  ``distributed.LocalCluster`` started for the call (``workers`` processes of one thread, default
  ``min(files, CPUs)``; loopback only, no dashboard) or on the running scheduler at ``scheduler``
  (``tcp://host:8786``; its workers must see the output folder at the same path). ``workers=1`` writes the files
  one after the other in this process instead.

All or nothing: every file is written under a hidden staging name in its folder and the files are renamed to
their names only when all of them are complete. On an error (raised by ``make_chunk``, a bad chunk, a worker
lost) or an interrupt, the other file tasks stop at their next chunk, every staged and partial file is removed
and the error is raised here (a :class:`~vbes.errors.VbesError` from a worker keeps its type and message).

Example:
    >>> import os, tempfile
    >>> from vbes.datasets.eventfile import example_tables
    >>> folder = tempfile.mkdtemp()
    >>> def make_chunk(index, n):
    ...     return example_tables(n, seed=index, first_event=100 * index)
    >>> paths = produce(make_chunk, 250, os.path.join(folder, "part{index}.h5"), chunk_events=100, files=2,
    ...                 workers=1, provenance={"generator": "doctest"})
    >>> [p.name for p in paths]
    ['part0.h5', 'part1.h5']
"""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import os
import queue
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from vbes.datasets.eventfile import _one_line, check_output_path
from vbes.datasets.writers import FORMATS, _check_provenance, infer_format, open_writer
from vbes.errors import ClusterUnavailable, InvalidInput, SchemaError

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = [
    "MakeChunk",
    "ProductionProgress",
    "ProgressCallback",
    "FilePlan",
    "plan_production",
    "produce",
    "DEFAULT_SUFFIX",
]

#: ``make_chunk(chunk_index, n) -> {table: {field: array}}`` holding ``n`` whole events; picklable for Dask
MakeChunk = Callable[[int, int], Mapping[str, Mapping[str, Any]]]
#: file suffix per format, for files named in an output folder
DEFAULT_SUFFIX = {"hdf5": ".h5", "parquet": ".parquet", "root": ".root"}
#: name of the files written into an output folder (``{index}`` is the file index)
_FOLDER_PATTERN = "events_{index:04d}"
#: seconds to connect to a running scheduler, and to wait for it to have a worker
_CONNECT_TIMEOUT_S = 30
_WORKERS_TIMEOUT_S = 60
#: after a failure, seconds to wait for the file tasks still running to stop at their next chunk
_CANCEL_WAIT_S = 120
#: seconds between looks at the running file tasks
_POLL_S = 0.05


@dataclass(frozen=True)
class ProductionProgress:
    """One step of a production, passed to the ``progress`` callback (in the calling thread).

    Args:
        kind: "chunk" (a chunk was written or, on Dask, made and written by a worker) or "file" (a file is
            complete under its staging name; it is renamed when all files are).
        file_index: the file the step belongs to.
        chunk_index: the chunk (``None`` for "file").
        n_events: events of the chunk or the file.
        events_done: events reported so far over all files.
        events_total: events requested.
        files_done: files complete so far.
        files_total: files requested.
        path: the file's final name (for "file").
        digest: the file's content digest (for "file").
    """

    kind: Literal["chunk", "file"]
    file_index: int
    chunk_index: int | None
    n_events: int
    events_done: int
    events_total: int
    files_done: int
    files_total: int
    path: Path | None = None
    digest: str | None = None


ProgressCallback = Callable[[ProductionProgress], None]


@dataclass(frozen=True)
class FilePlan:
    """One output file of a production.

    Args:
        index: file index (0-based, in event order).
        path: the file written.
        fmt: its format (one of :data:`vbes.datasets.writers.FORMATS`).
        chunks: ``(chunk_index, n_events)`` of its chunks, contiguous and in order.
        first_event: index of its first event in the whole request.
    """

    index: int
    path: Path
    fmt: str
    chunks: tuple[tuple[int, int], ...]
    first_event: int

    @property
    def n_events(self) -> int:
        """Events in the file."""
        return sum(n for _, n in self.chunks)

    def provenance(self, base: Mapping[str, Any], n_files: int, chunk_events: int, total: int) -> dict[str, Any]:
        """``base`` plus where this file sits in the production (file index, chunk and event ranges)."""
        return {
            **base,
            "file_index": self.index,
            "file_count": n_files,
            "chunk_range": [self.chunks[0][0], self.chunks[-1][0] + 1],
            "event_range": [self.first_event, self.first_event + self.n_events],
            "chunk_events": chunk_events,
            "events_requested": total,
        }


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInput(f"{name} must be a positive integer, not {value!r}")
    return int(value)


def _output_paths(output: str | os.PathLike[str], files: int, fmt: str | None) -> list[tuple[Path, str]]:
    """``(path, format)`` of every file: ``output`` formatted with ``index``, or files in a folder, or itself."""
    text = os.fspath(output)
    if "{" in text:
        try:
            names = [text.format(index=i) for i in range(files)]
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidInput(
                f"{text}: not a valid file name pattern ({_one_line(exc)}); write the file index as {{index}}, "
                "e.g. out_{index:04d}.h5"
            ) from None
    elif Path(text).is_dir():
        suffix = DEFAULT_SUFFIX[infer_format(text, fmt or "hdf5")]
        names = [os.path.join(text, _FOLDER_PATTERN.format(index=i) + suffix) for i in range(files)]
    elif files == 1:
        names = [text]
    else:
        raise InvalidInput(
            f"{text}: {files} files need a name pattern with {{index}} (e.g. out_{{index:04d}}.h5) or a folder"
        )
    if len(set(names)) != len(names):
        raise InvalidInput(f"{text}: the pattern gives several files the same name ({names[0]})")
    out = []
    for name in names:
        path = check_output_path(name)
        out.append((path, infer_format(path, fmt)))
    return out


def plan_production(
    n_events: int,
    output: str | os.PathLike[str],
    fmt: str | None = None,
    chunk_events: int = 100_000,
    files: int = 1,
) -> list[FilePlan]:
    """The files and chunks :func:`produce` would write (checked; nothing is written).

    Args:
        n_events: events requested.
        output: the file (``files=1``), a pattern with ``{index}`` (``out_{index:04d}.h5``) or an existing
            folder (files ``events_0000.h5``, ... in it; format ``fmt``, default hdf5).
        fmt: output format; default from each file's suffix.
        chunk_events: events per chunk (the last chunk holds the rest).
        files: number of files; each gets a contiguous range of chunks, the first ones one chunk more when the
            chunks do not divide evenly.

    Raises:
        InvalidInput: a count that is not positive, more files than chunks, an unknown format or suffix, a bad
            pattern.
        NotFound: an output folder does not exist.
    """
    n_events = _positive("n_events", n_events)
    chunk_events = _positive("chunk_events", chunk_events)
    files = _positive("files", files)
    if fmt is not None and fmt not in FORMATS:
        raise InvalidInput(f"unknown output format {fmt!r}; formats are {', '.join(FORMATS)}")
    n_chunks = -(-n_events // chunk_events)
    if files > n_chunks:
        raise InvalidInput(
            f"{files} files need at least {files} chunks, but {n_events} events in chunks of {chunk_events} make "
            f"{n_chunks}; lower chunk_events or files"
        )
    paths = _output_paths(output, files, fmt)
    sizes = [min(chunk_events, n_events - i * chunk_events) for i in range(n_chunks)]
    base, extra = divmod(n_chunks, files)
    plans, first_chunk = [], 0
    for index, (path, file_fmt) in enumerate(paths):
        stop = first_chunk + base + (1 if index < extra else 0)
        chunks = tuple((i, sizes[i]) for i in range(first_chunk, stop))
        plans.append(FilePlan(index, path, file_fmt, chunks, first_chunk * chunk_events))
        first_chunk = stop
    return plans


# --- one file (in this process or on a worker) ---------------------------------------------------------------


@dataclass(frozen=True)
class _FileJob:
    """What a worker needs to write one file: the plan, where to write it (staging name) and its provenance."""

    plan: FilePlan
    target: str
    provenance: dict[str, Any]
    mc: bool


class _Cancelled(Exception):
    """Raised in a file task that stops because another one failed (never reaches the caller)."""


def _checked_chunk(make_chunk: MakeChunk, chunk_index: int, n: int) -> Mapping[str, Mapping[str, Any]]:
    """``make_chunk(chunk_index, n)``, refused unless it holds ``n`` events."""
    tables = make_chunk(chunk_index, n)
    events = tables.get("events") if isinstance(tables, Mapping) else None
    run = events.get("run") if isinstance(events, Mapping) else None
    if run is None:
        raise SchemaError(
            f"make_chunk({chunk_index}, {n}) returned no events.run column; it must return "
            "{table: {field: array}}"
        )
    got = len(np.asarray(run))
    if got != n:
        raise SchemaError(f"make_chunk({chunk_index}, {n}) returned {got} events, expected {n}")
    return tables


def _write_file(
    make_chunk: MakeChunk,
    job: _FileJob,
    on_chunk: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Write the chunks of ``job`` to ``job.target`` (atomically); ``{"n_events", "digest"}``."""
    plan = job.plan
    with open_writer(job.target, plan.fmt, job.provenance, mc=job.mc) as writer:
        for chunk_index, n in plan.chunks:
            if cancelled is not None and cancelled():
                raise _Cancelled(plan.index)
            writer.append(_checked_chunk(make_chunk, chunk_index, n))
            if on_chunk is not None:
                on_chunk(chunk_index, n)
        if cancelled is not None and cancelled():  # no complete file may appear after the caller cleaned up
            raise _Cancelled(plan.index)
    return {"n_events": writer.n_events, "digest": writer.digest}


def _dask_write_file(make_chunk: MakeChunk, job: _FileJob, token: str) -> dict[str, Any]:
    """:func:`_write_file` as a Dask task: progress as worker events, stop when the run's Event is set."""
    from distributed import Event, get_worker

    worker = get_worker()
    stop = Event(f"vbes-produce-{token}")

    def on_chunk(chunk_index: int, n: int) -> None:
        worker.log_event(f"vbes-produce-{token}", {"file": job.plan.index, "chunk": chunk_index, "n": n})

    return _write_file(make_chunk, job, on_chunk, lambda: bool(stop.is_set()))


# --- the caller's side --------------------------------------------------------------------------------------


class _Reporter:
    """Turns finished chunks and files into :class:`ProductionProgress` calls, each chunk exactly once."""

    def __init__(self, callback: ProgressCallback | None, plans: Sequence[FilePlan]) -> None:
        self.callback = callback
        self.events_total = sum(p.n_events for p in plans)
        self.files_total = len(plans)
        self.events_done = 0
        self.files_done = 0
        self.seen: set[int] = set()

    def chunk(self, file_index: int, chunk_index: int, n: int) -> None:
        if chunk_index in self.seen:
            return
        self.seen.add(chunk_index)
        self.events_done += n
        if self.callback is not None:
            self.callback(
                ProductionProgress(
                    "chunk", file_index, chunk_index, n, self.events_done, self.events_total, self.files_done,
                    self.files_total,
                )
            )

    def file(self, plan: FilePlan, digest: str | None) -> None:
        for chunk_index, n in plan.chunks:  # any chunk whose worker event has not arrived yet
            self.chunk(plan.index, chunk_index, n)
        self.files_done += 1
        if self.callback is not None:
            self.callback(
                ProductionProgress(
                    "file", plan.index, None, plan.n_events, self.events_done, self.events_total, self.files_done,
                    self.files_total, plan.path, digest,
                )
            )


@contextlib.contextmanager
def _dask_client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler``, or of a local cluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=_CONNECT_TIMEOUT_S, set_as_default=False)
        except Exception as exc:  # OSError, TimeoutError, ValueError for a malformed address
            raise ClusterUnavailable(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}") from None
        try:
            try:
                client.wait_for_workers(1, timeout=_WORKERS_TIMEOUT_S)
            except TimeoutError:
                raise ClusterUnavailable(
                    f"the Dask scheduler at {scheduler} has no workers (waited {_WORKERS_TIMEOUT_S} s)"
                ) from None
            yield client
        finally:
            client.close()
        return
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # no dashboard, but the scheduler's HTTP endpoint (health, metrics) is always served: on loopback, on
            # a free port (its default, 8787, may be taken, which distributed reports as a warning)
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
    except Exception as exc:
        raise ClusterUnavailable(f"cannot start a local Dask cluster of {workers} workers: {_one_line(exc)}") from None
    try:
        with Client(cluster, set_as_default=False) as client:
            yield client
    finally:
        cluster.close()


def _check_picklable(make_chunk: MakeChunk) -> None:
    import cloudpickle

    try:
        cloudpickle.dumps(make_chunk)
    except Exception as exc:
        raise InvalidInput(
            f"make_chunk cannot be sent to Dask workers: it does not pickle ({type(exc).__name__}: {_one_line(exc)})"
        ) from None


def _run_pooled(client: Client, make_chunk: MakeChunk, job: _FileJob, reporter: _Reporter) -> None:
    """One file: chunks made on the workers (a bounded window in flight), written here in order."""
    window = 2 * max(1, sum(client.nthreads().values()))
    todo = iter(job.plan.chunks)
    in_flight: deque[tuple[int, int, Future]] = deque()
    # sent to every worker once, not with each chunk (a generative model can be large)
    maker = client.scatter(make_chunk, broadcast=True, hash=False)

    def submit_next() -> None:
        for chunk_index, n in todo:
            future = client.submit(_checked_chunk, maker, chunk_index, n, pure=False, priority=-chunk_index)
            in_flight.append((chunk_index, n, future))
            return

    for _ in range(window):
        submit_next()
    try:
        with open_writer(job.target, job.plan.fmt, job.provenance, mc=job.mc) as writer:
            while in_flight:
                chunk_index, n, future = in_flight.popleft()
                tables = future.result()
                future.release()
                submit_next()
                writer.append(tables)
                reporter.chunk(job.plan.index, chunk_index, n)
    finally:
        if in_flight:
            client.cancel([f for _, _, f in in_flight])
    reporter.file(job.plan, writer.digest)


def _run_files(client: Client, make_chunk: MakeChunk, jobs: Sequence[_FileJob], reporter: _Reporter) -> None:
    """Several files: one task per file; chunk progress from the workers' events; stop all on the first error."""
    from distributed import Event

    token = uuid.uuid4().hex
    topic = f"vbes-produce-{token}"
    events: queue.SimpleQueue[Any] = queue.SimpleQueue()
    client.subscribe_topic(topic, lambda event: events.put(event[1]))
    stop = Event(topic, client=client)
    # files in index order as workers free up (Dask would otherwise pick any)
    futures = {
        client.submit(
            _dask_write_file, make_chunk, job, token, key=f"{topic}-file-{job.plan.index}", pure=False,
            priority=len(jobs) - job.plan.index,
        ): job
        for job in jobs
    }
    pending = set(futures)

    def drain() -> None:
        while True:
            try:
                msg = events.get_nowait()
            except queue.Empty:
                return
            reporter.chunk(int(msg["file"]), int(msg["chunk"]), int(msg["n"]))

    try:
        while pending:
            done = sorted((f for f in pending if f.done()), key=lambda f: futures[f].plan.index)
            drain()
            if not done:
                time.sleep(_POLL_S)
                continue
            for future in done:
                pending.discard(future)
                info = future.result()  # a worker's exception is raised here, with its type and message
                reporter.file(futures[future].plan, info["digest"])
    except BaseException:
        stop.set()
        # the running tasks stop at their next chunk and remove their partial files; wait so that none is
        # still writing when the caller removes what is left
        deadline = time.monotonic() + _CANCEL_WAIT_S
        while any(not f.done() for f in pending) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
        with contextlib.suppress(Exception):
            client.cancel(list(futures))


def _remove_staged(jobs: Sequence[_FileJob]) -> None:
    """Remove every staged file of ``jobs`` and any partial file a stopped writer left under its name."""
    for job in jobs:
        target = Path(job.target)
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        pattern = os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.*.partial")
        for partial in glob.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)


def produce(
    make_chunk: MakeChunk,
    n_events: int,
    output: str | os.PathLike[str],
    fmt: str | None = None,
    chunk_events: int = 100_000,
    files: int = 1,
    scheduler: str | None = None,
    workers: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    mc: bool = True,
) -> list[Path]:
    """Write ``n_events`` events made by ``make_chunk`` into one or ``files`` files (see the module docstring).

    Args:
        make_chunk: ``make_chunk(chunk_index, n)`` returns ``n`` whole events ``{table: {field: array}}``
            depending only on its arguments; picklable (module-level function or object) when Dask is used.
        n_events: events to write.
        output: the file, a pattern with ``{index}`` (``out_{index:04d}.h5``) or an existing folder.
        fmt: "hdf5", "parquet" or "root"; default from the suffix.
        chunk_events: events per chunk (one ``make_chunk`` call, one row group / basket).
        files: number of files, each a contiguous range of chunks.
        scheduler: address of a running Dask scheduler (``tcp://127.0.0.1:8786``); default a local cluster
            when Dask is used.
        workers: worker processes of the local cluster (not with ``scheduler``).
        provenance: stored in every file, plus ``file_index``, ``file_count``, ``chunk_range`` (chunks
            ``[first, stop)``), ``event_range``, ``chunk_events`` and ``events_requested``.
        progress: called in this thread with a :class:`ProductionProgress` per finished chunk and file.
        mc: whether the events are simulation (with truth).

    Returns:
        the paths written, in file (event) order.

    Raises:
        InvalidInput: a count that is not positive, more files than chunks, an unknown format, a bad pattern,
            ``workers`` with ``scheduler``, a ``make_chunk`` that does not pickle.
        NotFound: an output folder does not exist.
        ClusterUnavailable: the scheduler cannot be reached or has no workers; a local cluster cannot start.
        SchemaError: a chunk has the wrong number of events or breaks the layout (field named).
        Exception: whatever ``make_chunk`` raised. In every error case no output file is left.
    """
    plans = plan_production(n_events, output, fmt, chunk_events, files)
    if workers is not None:
        workers = _positive("workers", workers)
        if scheduler is not None:
            raise InvalidInput("workers sets the size of the local cluster; a running scheduler has its own workers")
    if scheduler is not None and (not isinstance(scheduler, str) or not scheduler.strip()):
        raise InvalidInput(f"scheduler must be an address such as tcp://127.0.0.1:8786, not {scheduler!r}")
    base = _check_provenance(plans[0].path, {} if provenance is None else provenance)
    token = uuid.uuid4().hex[:12]
    jobs = [
        _FileJob(
            plan,
            # absolute: Dask workers may run in another working directory
            str(plan.path.absolute().parent / f".{plan.path.name}.{token}.staged"),
            plan.provenance(base, len(plans), int(chunk_events), int(n_events)),
            bool(mc),
        )
        for plan in plans
    ]
    use_dask = scheduler is not None or (workers is not None and workers > 1) or (workers is None and len(plans) > 1)
    if use_dask:
        _check_picklable(make_chunk)
    reporter = _Reporter(progress, plans)
    try:
        if not use_dask:
            for job in jobs:
                info = _write_file(make_chunk, job, functools.partial(reporter.chunk, job.plan.index))
                reporter.file(job.plan, info["digest"])
        else:
            n_workers = workers if workers is not None else min(len(plans), os.cpu_count() or 1)
            with _dask_client(scheduler, n_workers) as client:
                if len(jobs) == 1:
                    _run_pooled(client, make_chunk, jobs[0], reporter)
                else:
                    _run_files(client, make_chunk, jobs, reporter)
        for job in jobs:
            os.replace(job.target, job.plan.path)
    except BaseException:
        _remove_staged(jobs)
        raise
    for folder in {job.plan.path.absolute().parent for job in jobs}:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return [plan.path for plan in plans]
