"""PyTorch / Lightning access: streamed features, a deterministic split by event hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vbes.datasets import EventWriter, read_events
from vbes.datasets.eventfile import example_tables, slice_events
from vbes.datasets.torchdata import EventDataModule, EventDataset, split_of
from vbes.errors import InvalidInput


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("torch")
    tables = example_tables(6000, seed=11)
    paths = []
    for i, (a, b) in enumerate([(0, 3500), (3500, 6000)]):
        path = folder / f"part{i}.h5"
        with EventWriter(path, {"generator": "test"}) as writer:
            writer.append(slice_events(tables, a, b))
        paths.append(path)
    return paths


def _keys(batch_rows: list[torch.Tensor]) -> set[tuple[int, int]]:
    rows = torch.cat(batch_rows).numpy()
    return {(int(r), int(e)) for r, e in rows}


def test_split_fractions_and_determinism() -> None:
    run = np.full(200_000, -9989)
    event = np.arange(200_000)
    split = split_of(run, event, (0.7, 0.2, 0.1))
    assert np.allclose(np.bincount(split, minlength=3) / len(split), [0.7, 0.2, 0.1], atol=0.005)
    assert np.array_equal(split, split_of(run, event, (0.7, 0.2, 0.1)))
    shuffled = np.random.default_rng(0).permutation(len(event))
    assert np.array_equal(split[shuffled], split_of(run[shuffled], event[shuffled], (0.7, 0.2, 0.1)))
    other_run = split_of(np.full(200_000, -9990), event, (0.7, 0.2, 0.1))
    assert (other_run != split).mean() > 0.3  # run enters the hash
    assert (split_of(run, event, (0.7, 0.2, 0.1), salt=1) != split).mean() > 0.3
    with pytest.raises(InvalidInput, match="summing to 1"):
        split_of(run, event, (0.5, 0.2, 0.1))


def test_split_is_independent_of_file_order_and_chunking(files: list[Path]) -> None:
    features = ["events.run", "events.event"]
    a = EventDataset(files, features, split="val", batch_size=100, chunk_events=700)
    b = EventDataset(files[::-1], features, split="val", batch_size=333, chunk_events=2000, shuffle=True)
    keys_a, keys_b = _keys(list(a)), _keys(list(b))
    assert keys_a == keys_b and 400 < len(keys_a) < 800
    all_keys = set()
    for split in ("train", "val", "test"):
        keys = _keys(list(EventDataset(files, features, split=split, batch_size=512)))
        assert not keys & all_keys
        all_keys |= keys
    assert len(all_keys) == 6000


def test_object_rows_follow_their_event(files: list[Path]) -> None:
    ds = EventDataset(
        files, ["tracks.p", "tracks.helix", "tracks.charge"], split="test", batch_size=64, chunk_events=1000
    )
    batches = list(ds)
    assert all(b.shape[1] == 7 and b.dtype == torch.float32 for b in batches)
    assert all(len(b) == 64 for b in batches[:-1])
    rows = torch.cat(batches).numpy()
    p_parts = []
    for path in files:
        data = read_events(path, fields=["events.run", "events.event", "tracks.p"])
        in_test = split_of(data["events"]["run"], data["events"]["event"]) == 2
        p_parts.append(data["tracks"]["p"][np.repeat(in_test, data["events"]["n_tracks"])])
    assert np.array_equal(rows[:, 0], np.concatenate(p_parts))


def test_datamodule_loaders(files: list[Path]) -> None:
    dm = EventDataModule(files, ["showers.energy", "showers.x"], batch_size=256, fractions=(0.6, 0.2, 0.2))
    dm.setup("fit")
    counts = {
        name: sum(len(b) for b in loader())
        for name, loader in (
            ("train", dm.train_dataloader),
            ("val", dm.val_dataloader),
            ("test", dm.test_dataloader),
        )
    }
    total = sum(len(read_events(p, fields=["showers.energy"])["showers"]["energy"]) for p in files)
    assert sum(counts.values()) == total
    assert 0.55 < counts["train"] / total < 0.65
    first = next(iter(dm.train_dataloader()))
    assert first.shape == (256, 2)


def test_bad_features_are_refused(files: list[Path]) -> None:
    with pytest.raises(InvalidInput, match="one table"):
        EventDataset(files, ["tracks.p", "showers.energy"])
    with pytest.raises(InvalidInput, match="unknown feature"):
        EventDataset(files, ["tracks.nope"])
    with pytest.raises(InvalidInput, match="split"):
        EventDataset(files, ["tracks.p"], split="holdout")
