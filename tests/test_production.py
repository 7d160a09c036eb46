"""Production runner: the same chunks in the same order whatever the files, workers or scheduler; all or nothing.

A Dask scheduler and two workers run as ``dask scheduler`` / ``dask worker`` subprocesses on loopback, shared by
the module; one test starts the default local cluster (``distributed.LocalCluster``) through :func:`produce`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_events import ChunkFailure, FakeChunks, assert_same_tables, concatenate, read_parquet, read_root

from vbes.datasets import file_info, read_events
from vbes.datasets import production
from vbes.datasets.production import ProductionProgress, plan_production, produce
from vbes.errors import ClusterUnavailable, InvalidInput, NotFound, SchemaError, VbesError

TESTS = Path(__file__).resolve().parent
N_EVENTS, CHUNK = 250, 60  # chunks of 60, 60, 60, 60, 10 events
FAKE = FakeChunks(seed=11, chunk_events=CHUNK)
PROVENANCE = {"generator": "vbes-sample-test", "seed": 11}
EXPECTED = concatenate([FAKE(i, min(CHUNK, N_EVENTS - i * CHUNK)) for i in range(5)])


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a ``dask scheduler`` with two one-thread ``dask worker`` processes, all on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    # the workers unpickle FakeChunks by reference: they import it from tests/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)}
    dask = str(Path(sys.executable).parent / "dask")
    log = (folder / "dask.log").open("w")
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", str(scheduler_file)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.1)
        assert scheduler_file.exists(), (folder / "dask.log").read_text()
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):  # without a nanny a worker stops at once when terminated
            procs.append(
                subprocess.Popen(
                    [dask, "worker", address, "--no-nanny", "--nthreads", "1", "--no-dashboard",
                     "--host", "127.0.0.1", "--local-directory", str(folder)],
                    env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                )
            )
        from distributed import Client

        with Client(address, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def read_all(paths: list[Path]) -> dict[str, dict[str, np.ndarray]]:
    """The events of event files or Parquet files, concatenated in the given order."""
    parts = []
    for path in paths:
        if path.suffix == ".parquet":
            parts.append(read_parquet(path)[0])
        else:
            parts.append(read_events(path))
    return concatenate(parts)


def check_progress(steps: list[ProductionProgress], n_files: int) -> dict[int, str]:
    """Every chunk reported once, before its file; every file once; counts add up. Returns the file digests."""
    chunks = [s for s in steps if s.kind == "chunk"]
    files = [s for s in steps if s.kind == "file"]
    assert sorted(s.chunk_index for s in chunks) == [0, 1, 2, 3, 4]
    assert sum(s.n_events for s in chunks) == N_EVENTS
    assert sorted(s.file_index for s in files) == list(range(n_files))
    for f in files:
        position = steps.index(f)
        assert all(steps.index(c) < position for c in chunks if c.file_index == f.file_index)
    assert steps[-1].events_done == N_EVENTS and steps[-1].files_done == n_files
    assert [s.events_done for s in steps] == sorted(s.events_done for s in steps)
    return {f.file_index: str(f.digest) for f in files}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- in this process ----------------------------------------------------------------------------------------


def test_one_file_holds_every_chunk_in_order(tmp_path: Path) -> None:
    steps: list[ProductionProgress] = []
    paths = produce(FAKE, N_EVENTS, tmp_path / "one.h5", chunk_events=CHUNK, provenance=PROVENANCE,
                    progress=steps.append)
    assert paths == [tmp_path / "one.h5"]
    assert_same_tables(read_events(paths[0]), EXPECTED)
    digests = check_progress(steps, 1)
    info = file_info(paths[0])
    assert digests[0] == info["digest"]
    provenance = info["provenance"]
    assert provenance["generator"] == "vbes-sample-test" and provenance["seed"] == 11
    assert (provenance["file_index"], provenance["file_count"]) == (0, 1)
    assert provenance["chunk_range"] == [0, 5] and provenance["event_range"] == [0, N_EVENTS]
    assert listing(tmp_path) == ["one.h5"]


def test_split_files_in_process_match_the_single_file(tmp_path: Path) -> None:
    steps: list[ProductionProgress] = []
    paths = produce(FAKE, N_EVENTS, tmp_path / "part_{index:02d}.h5", chunk_events=CHUNK, files=3, workers=1,
                    provenance=PROVENANCE, progress=steps.append)
    assert [p.name for p in paths] == ["part_00.h5", "part_01.h5", "part_02.h5"]
    assert_same_tables(read_all(paths), EXPECTED)
    check_progress(steps, 3)
    ranges = [(file_info(p)["provenance"]["chunk_range"], file_info(p)["provenance"]["event_range"]) for p in paths]
    assert ranges == [([0, 2], [0, 120]), ([2, 4], [120, 240]), ([4, 5], [240, 250])]
    assert listing(tmp_path) == ["part_00.h5", "part_01.h5", "part_02.h5"]


def test_plan_splits_chunks_contiguously(tmp_path: Path) -> None:
    plans = plan_production(1001, tmp_path / "f{index}.root", chunk_events=100, files=4)
    assert [p.chunks[0][0] for p in plans] == [0, 3, 6, 9]  # 11 chunks: 3, 3, 3, 2
    assert [p.n_events for p in plans] == [300, 300, 300, 101]
    assert [p.first_event for p in plans] == [0, 300, 600, 900]
    assert {p.fmt for p in plans} == {"root"}
    folder = plan_production(10, tmp_path, fmt="parquet", chunk_events=5, files=2)
    assert [p.path.name for p in folder] == ["events_0000.parquet", "events_0001.parquet"]


# --- on Dask ------------------------------------------------------------------------------------------------


def test_local_cluster_and_running_scheduler_give_the_same_arrays(tmp_path: Path, scheduler: str) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    steps_local: list[ProductionProgress] = []
    steps_remote: list[ProductionProgress] = []
    # default: a LocalCluster started for the call
    paths_local = produce(FAKE, N_EVENTS, local / "s{index}.h5", chunk_events=CHUNK, files=3, workers=2,
                          provenance=PROVENANCE, progress=steps_local.append)
    paths_remote = produce(FAKE, N_EVENTS, remote / "s{index}.h5", chunk_events=CHUNK, files=3,
                           scheduler=scheduler, provenance=PROVENANCE, progress=steps_remote.append)
    assert_same_tables(read_all(paths_local), EXPECTED)
    assert_same_tables(read_all(paths_remote), EXPECTED)
    assert check_progress(steps_local, 3) == check_progress(steps_remote, 3)
    assert [file_info(p)["provenance"]["chunk_range"] for p in paths_remote] == [[0, 2], [2, 4], [4, 5]]
    assert listing(local) == ["s0.h5", "s1.h5", "s2.h5"] and listing(remote) == listing(local)


def test_running_scheduler_parquet_into_a_folder(tmp_path: Path, scheduler: str) -> None:
    paths = produce(FAKE, N_EVENTS, tmp_path, fmt="parquet", chunk_events=CHUNK, files=2, scheduler=scheduler,
                    provenance=PROVENANCE)
    assert [p.name for p in paths] == ["events_0000.parquet", "events_0001.parquet"]
    assert_same_tables(read_all(paths), EXPECTED)
    provenance = json.loads(pq.read_metadata(paths[1]).metadata[b"vbes.provenance"])
    assert provenance["file_index"] == 1 and provenance["chunk_range"] == [3, 5]


def test_one_file_with_chunks_made_on_the_workers(tmp_path: Path, scheduler: str) -> None:
    steps: list[ProductionProgress] = []
    paths = produce(FAKE, N_EVENTS, tmp_path / "pooled.root", chunk_events=CHUNK, scheduler=scheduler,
                    provenance=PROVENANCE, progress=steps.append)
    got, provenance = read_root(paths[0])
    assert_same_tables(got, EXPECTED)
    assert provenance["chunk_range"] == [0, 5]
    assert [s.chunk_index for s in steps if s.kind == "chunk"] == [0, 1, 2, 3, 4]  # written in chunk order
    check_progress(steps, 1)
    assert listing(tmp_path) == ["pooled.root"]


# --- all or nothing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files, where",
    [(1, "here"), (3, "here"), (3, "scheduler"), (1, "scheduler")],
    ids=["one-file", "three-files-in-process", "three-files-on-dask", "one-file-chunks-on-dask"],
)
def test_failing_chunk_leaves_no_file(tmp_path: Path, scheduler: str, files: int, where: str) -> None:
    old = tmp_path / "s0.h5"
    old.write_bytes(b"an earlier file")
    failing = FakeChunks(seed=11, chunk_events=CHUNK, fail_at=4)  # in the last file: the others are finished
    options: dict[str, Any] = {"scheduler": scheduler} if where == "scheduler" else {"workers": 1}
    with pytest.raises(ChunkFailure, match="chunk 4 failed on purpose"):
        produce(failing, N_EVENTS, tmp_path / "s{index}.h5", chunk_events=CHUNK, files=files,
                provenance=PROVENANCE, **options)
    assert listing(tmp_path) == ["s0.h5"]
    assert old.read_bytes() == b"an earlier file"


def test_failure_stops_the_files_still_being_written(tmp_path: Path, scheduler: str) -> None:
    # 3 files of 4 chunks of 0.5 s on 2 workers: chunk 1 (file 0) fails at 1 s while file 1 (chunks 4-7) is
    # being written and file 2 (chunks 8-11) waits for a worker; both stop at their next chunk
    out, log = tmp_path / "out", tmp_path / "made.txt"
    out.mkdir()
    failing = FakeChunks(seed=11, chunk_events=10, fail_at=1, delay=0.5, log=str(log))
    with pytest.raises(ChunkFailure, match="chunk 1 failed on purpose"):
        produce(failing, 120, out / "s{index}.h5", chunk_events=10, files=3, scheduler=scheduler,
                provenance=PROVENANCE)
    assert listing(out) == []
    time.sleep(1.5)  # chunk 7 would start 1 s after the failure, chunk 9 later: wait for them to (not) happen
    made = {int(line) for line in log.read_text().split()}
    # chunk 6 may have started before the failure was known, and file 2 may have taken its first chunk before
    # the stop was set
    assert {0, 1, 4, 5} <= made <= {0, 1, 4, 5, 6, 8}, made
    assert listing(out) == []


def test_bad_chunk_is_a_schema_error(tmp_path: Path) -> None:
    def short(chunk_index: int, n: int) -> dict[str, dict[str, np.ndarray]]:
        return FAKE(chunk_index, n - 1)

    with pytest.raises(SchemaError, match=r"make_chunk\(0, 60\) returned 59 events, expected 60"):
        produce(short, N_EVENTS, tmp_path / "x.parquet", chunk_events=CHUNK, provenance=PROVENANCE)
    assert listing(tmp_path) == []


# --- bad input ----------------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    lock = threading.Lock()

    def unpicklable(chunk_index: int, n: int) -> Any:
        with lock:
            return FAKE(chunk_index, n)

    out = tmp_path / "x_{index}.h5"
    cases: list[tuple[type[VbesError], dict[str, Any], str]] = [
        (InvalidInput, {"n_events": 0}, "n_events must be a positive integer"),
        (InvalidInput, {"n_events": -5}, "n_events must be a positive integer"),
        (InvalidInput, {"chunk_events": 0}, "chunk_events must be a positive integer"),
        (InvalidInput, {"fmt": "csv"}, "unknown output format 'csv'"),
        (InvalidInput, {"output": tmp_path / "x.txt", "files": 1}, "cannot tell the format"),
        (NotFound, {"output": tmp_path / "missing" / "x.h5", "files": 1}, "does not exist"),
        (InvalidInput, {"files": 6}, "6 files need at least 6 chunks"),
        (InvalidInput, {"output": tmp_path / "x.h5"}, "need a name pattern with {index}"),
        (InvalidInput, {"output": tmp_path / "x_{n}.h5"}, "not a valid file name pattern"),
        # "{index!s:.1}" keeps one digit: files 1 and 10 would both be x_1.h5
        (InvalidInput, {"output": tmp_path / "x_{index!s:.1}.h5", "files": 11, "chunk_events": 10}, "the same name"),
        (InvalidInput, {"workers": 2, "scheduler": "tcp://127.0.0.1:1"}, "running scheduler has its own workers"),
        (InvalidInput, {"workers": 0}, "workers must be a positive integer"),
        (InvalidInput, {"make_chunk": unpicklable, "workers": 2}, "does not pickle"),
        (InvalidInput, {"provenance": {"bad": object()}}, "not JSON-serialisable"),
    ]
    for error, changes, text in cases:
        arguments: dict[str, Any] = {
            "make_chunk": FAKE, "n_events": N_EVENTS, "output": out, "chunk_events": CHUNK, "files": 2,
            "provenance": PROVENANCE, **changes,
        }
        with pytest.raises(error) as info:
            produce(**arguments)
        message = str(info.value)
        assert text in message and "\n" not in message, (changes, message)
    assert listing(tmp_path) == []


def test_unreachable_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(production, "_CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ClusterUnavailable, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        produce(FAKE, N_EVENTS, tmp_path / "x{index}.h5", chunk_events=CHUNK, files=2,
                scheduler=f"tcp://127.0.0.1:{port}", provenance=PROVENANCE)
    assert listing(tmp_path) == []
