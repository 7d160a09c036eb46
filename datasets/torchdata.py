"""PyTorch and Lightning access to event files: chosen features streamed in batches, split by event hash.

* :class:`EventDataset` streams rows of one table (``events`` for per-event features, or an object table:
  one row per track/shower/truth particle) from one or more files, in chunks, as float tensors
  ``[batch, n_features]``; vector fields expand to their components (``tracks.helix`` -> 5 columns).
* The train/validation/test split is by event: a hash of ``(run, event)`` (SplitMix64 with a salt) decides,
  so the same event lands in the same split whatever the file order, chunking or number of workers, and all
  objects of an event share its split.
* :class:`EventDataModule` wraps the three splits for Lightning.

Example::

    >>> from vbes.datasets.torchdata import split_of
    >>> import numpy as np
    >>> split_of(np.array([-9989, -9989]), np.array([0, 1]), (0.8, 0.1, 0.1)).tolist()  # 0 train 1 val 2 test
    [1, 0]
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path


import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vbes.datasets.eventfile import _EventFile, file_info
from vbes.datasets.schema import COUNT_FIELD, TABLES
from vbes.errors import InvalidInput

__all__ = ["SPLITS", "split_of", "EventDataset", "EventDataModule"]

#: split names in the order of the fractions
SPLITS = ("train", "val", "test")

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def split_of(
    run: np.ndarray, event: np.ndarray, fractions: Sequence[float] = (0.8, 0.1, 0.1), salt: int = 0
) -> np.ndarray:
    """Split index (0 train, 1 validation, 2 test) of each event from a hash of ``(run, event, salt)``.

    Args:
        run, event: the events' run and event numbers.
        fractions: train, validation, test fractions (must sum to 1).
        salt: changes the assignment (a different, equally deterministic split).
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise InvalidInput(
            f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1"
        )
    with np.errstate(over="ignore"):
        key = _splitmix64(np.asarray(run).astype(np.int64).view(np.uint64) ^ np.uint64(salt & 0xFFFFFFFF))
        key = _splitmix64(key ^ np.asarray(event).astype(np.int64).view(np.uint64))
    uniform = (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(np.cumsum(fr)[:2], uniform, side="right").astype(np.int8)


def _parse_features(features: Sequence[str]) -> tuple[str, list[str], int]:
    if not features:
        raise InvalidInput("choose at least one feature (TABLE.FIELD)")
    tables, names = set(), []
    for spec in features:
        if "." not in spec:
            raise InvalidInput(f"feature {spec!r} must be written TABLE.FIELD (e.g. tracks.p)")
        table, name = spec.split(".", 1)
        if table not in TABLES or name not in {f.name for f in TABLES[table]}:
            raise InvalidInput(f"unknown feature {spec!r}")
        tables.add(table)
        names.append(name)
    if len(tables) != 1:
        raise InvalidInput(f"features must come from one table, got {sorted(tables)}")
    table = tables.pop()
    widths = {f.name: int(np.prod(f.shape, dtype=np.int64)) for f in TABLES[table]}
    return table, names, sum(widths[n] for n in names)


class EventDataset(IterableDataset):
    """Stream chosen features of one table from event files as ``[batch, n_features]`` float tensors.

    Args:
        paths: event files (read in the given order, chunk by chunk; never loaded whole).
        features: ``["tracks.p", "tracks.cos_theta", ...]`` all from one table.
        split: ``"train"``, ``"val"``, ``"test"`` or ``None`` (every event).
        fractions: train/validation/test fractions of the event-hash split.
        salt: salt of the split hash.
        batch_size: rows per yielded batch (the last batch of the stream may be smaller).
        chunk_events: events read from disk at a time.
        shuffle: shuffle rows within each chunk and the order of chunks (seeded; new order every epoch).
        seed: seed of the shuffling.
        dtype: tensor dtype.

    Use with ``DataLoader(dataset, batch_size=None)``; with workers, chunks are shared out among them.
    """

    def __init__(
        self,
        paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        features: Sequence[str],
        split: str | None = None,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        salt: int = 0,
        batch_size: int = 1024,
        chunk_events: int = 65536,
        shuffle: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
        if not self.paths:
            raise InvalidInput("EventDataset needs at least one file")
        self.table, self.fields, self.n_features = _parse_features(features)
        self.features = list(features)
        if split is not None and split not in SPLITS:
            raise InvalidInput(f"split {split!r} is not one of {', '.join(SPLITS)}")
        split_of(np.zeros(1), np.zeros(1), fractions)  # validates the fractions early
        if batch_size < 1 or chunk_events < 1:
            raise InvalidInput("batch_size and chunk_events must be positive")
        self.split, self.fractions, self.salt = split, tuple(fractions), salt
        self.batch_size, self.chunk_events = batch_size, chunk_events
        self.shuffle, self.seed, self.dtype = shuffle, seed, dtype
        self.epoch = 0
        self.n_events = [file_info(p)["n_events"] for p in self.paths]  # checks every file up front

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffling of an epoch (Lightning's data module calls this)."""
        self.epoch = epoch

    def _chunks(self) -> list[tuple[int, int, int]]:
        return [
            (i, a, min(a + self.chunk_events, n))
            for i, n in enumerate(self.n_events)
            for a in range(0, n, self.chunk_events)
        ]

    def _rows(self, ef: _EventFile, start: int, stop: int) -> np.ndarray:
        wanted: dict[str, list[str]] = {self.table: list(self.fields)}
        events_fields = ["run", "event"]
        if self.table != "events":
            events_fields.append(COUNT_FIELD[self.table])
        wanted["events"] = sorted(
            set(events_fields) | (set(self.fields) if self.table == "events" else set())
        )
        data = ef.read(start, stop, wanted)
        events = data["events"]
        keep_event = np.ones(stop - start, bool)
        if self.split is not None:
            keep_event = split_of(events["run"], events["event"], self.fractions, self.salt) == SPLITS.index(
                self.split
            )
        if self.table != "events":
            keep = np.repeat(keep_event, events[COUNT_FIELD[self.table]])
        else:
            keep = keep_event
        cols = [data[self.table][n].reshape(len(keep), -1)[keep] for n in self.fields]
        return np.concatenate(cols, axis=1).astype(np.float64) if cols else np.zeros((0, 0))

    def __iter__(self) -> Iterator[torch.Tensor]:
        chunks = self._chunks()
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.shuffle:
            chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        worker = get_worker_info()
        if worker is not None:
            chunks = chunks[worker.id :: worker.num_workers]
        pending: list[np.ndarray] = []
        n_pending = 0
        open_files: dict[int, _EventFile] = {}
        try:
            for file_index, start, stop in chunks:
                ef = open_files.get(file_index)
                if ef is None:
                    ef = open_files[file_index] = _EventFile(self.paths[file_index])
                rows = self._rows(ef, start, stop)
                if self.shuffle:
                    rows = rows[rng.permutation(len(rows))]
                pending.append(rows)
                n_pending += len(rows)
                while n_pending >= self.batch_size:
                    block = np.concatenate(pending)
                    yield torch.as_tensor(block[: self.batch_size], dtype=self.dtype)
                    pending, n_pending = [block[self.batch_size :]], len(block) - self.batch_size
            if n_pending:
                yield torch.as_tensor(np.concatenate(pending), dtype=self.dtype)
        finally:
            for ef in open_files.values():
                ef.close()


class EventDataModule(L.LightningDataModule):
    """Train/validation/test loaders over event files, split by a hash of (run, event).

    Args:
        paths: event files.
        features: ``TABLE.FIELD`` names, all from one table.
        batch_size: rows per batch.
        fractions: train/validation/test fractions.
        salt: salt of the split hash.
        num_workers: DataLoader workers (chunks are shared out among them).
        chunk_events: events read at a time.
        seed: shuffling seed of the training stream.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        features: Sequence[str],
        batch_size: int = 1024,
        fractions: Sequence[float] = (0.8, 0.1, 0.1),
        salt: int = 0,
        num_workers: int = 0,
        chunk_events: int = 65536,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.paths, self.features = paths, list(features)
        self.batch_size, self.fractions, self.salt = batch_size, tuple(fractions), salt
        self.num_workers, self.chunk_events, self.seed = num_workers, chunk_events, seed
        self.datasets: dict[str, EventDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            self.datasets[split] = EventDataset(
                self.paths,
                self.features,
                split=split,
                fractions=self.fractions,
                salt=self.salt,
                batch_size=self.batch_size,
                chunk_events=self.chunk_events,
                shuffle=split == "train",
                seed=self.seed,
            )

    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        if split == "train" and self.trainer is not None:
            dataset.set_epoch(self.trainer.current_epoch)
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
