"""Model families: every registered family through the same contract, then the record autoencoder's own
promises (physical bounds, discrete outputs, exact record representation) on a simulated rho pi sample."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vbes.calibration import CalibrationStore
from vbes.datasets import read_events
from vbes.datasets.simulation import SIM_TAG
from vbes.datasets.schema import HYPOTHESES, unpack_symmetric
from vbes.errors import CorruptModelError, ModelError, UnknownFamily
from vbes.models import build, families, get_family, load
from vbes.models import records as rec
from vbes.models.conditions import Conditions

FAMILY_NAMES = sorted(families())


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny matrices, and a machine shared with other jobs (two threads only contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tables(rhopi_sample: Path) -> dict[str, dict[str, np.ndarray]]:
    return read_events(rhopi_sample)


@pytest.fixture(scope="module")
def conditions(tables: dict) -> Conditions:
    """The sample's calibration conditions, read from a store as `vbes train` reads them (tag of its provenance)."""
    with CalibrationStore("sqlite://") as store:
        store.init_defaults()
        return Conditions.from_store(store, SIM_TAG, tables["events"]["run"])


def _tiny(name: str) -> dict[str, object]:
    config = get_family(name).default_config()
    small = {"hidden": [32, 32], "shower_hidden": [16, 16], "truth_hidden": [16, 16], "transforms": 2,
             "shower_transforms": 2, "truth_transforms": 2, "knots": 64, "truth_knots": 64}
    config.update({k: v for k, v in small.items() if k in config})
    return config


def _equal(a: Any, b: Any) -> bool:
    """Equal tensors, arrays or (nested) tables of them, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return bool(np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind == "f"))


def _streams(batch: dict) -> list[dict]:
    """The row sets of a batch: the batch itself, or each stream of a multi-table family."""
    return list(batch.values()) if isinstance(next(iter(batch.values())), dict) else [batch]


def _prepared(name: str, seed: int, tables: dict, conditions: Conditions) -> Any:
    model = build(name, _tiny(name), seed=seed)
    if model.needs_conditions:
        model.conditions = conditions
    model.fit_preprocessing(tables)
    return model


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_every_family_keeps_the_common_contract(name: str, tables: dict, conditions: Conditions,
                                                tmp_path: Path) -> None:
    model = _prepared(name, 3, tables, conditions)
    batch = model.make_tensors(tables)
    streams = _streams(batch)
    for stream in streams:  # every stream: one row count for all its tensors
        rows = {len(v) for v in stream.values()}
        assert len(rows) == 1 and rows.pop() > 0

    # gradients reach every parameter
    terms = model.loss(batch)
    assert terms["loss"].shape == () and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    starved = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not bool((p.grad != 0).any()))]
    assert starved == []

    model.eval()
    inputs = model.records_of(tables)
    n = len(next(iter(inputs.values())))
    if "log_prob" in model.capabilities:
        lp = model.log_prob(batch)
        assert lp.shape == (sum(len(next(iter(s.values()))) for s in streams),) and bool(torch.isfinite(lp).all())
    else:
        with pytest.raises(ModelError, match="does not define log_prob"):
            model.log_prob(batch)
    if "sample" in model.capabilities:
        request = model.sample_request(tables, 7)
        drawn = model.sample(7, request, seed=5)
        assert _equal(drawn, model.sample(7, request, seed=5))
        assert not _equal(drawn, model.sample(7, request, seed=6))
    out = model.predict_records(inputs)
    lengths = {len(v) for v in out.values()}
    assert len(lengths) == 1 and lengths.pop() > 0
    if not model.needs_conditions:  # a row per input row (the surrogates answer with a row per object)
        assert {len(v) for v in out.values()} == {n}

    # determinism under a seed: same seed, same weights and outputs; another seed, other weights
    twin = _prepared(name, 3, tables, conditions)
    twin.eval()
    assert all(np.array_equal(a, b) for a, b in zip(model.tensors().values(), twin.tensors().values()))
    assert _equal(out, twin.predict_records(inputs))
    other = _prepared(name, 4, tables, conditions)
    assert not all(np.array_equal(a, b) for a, b in zip(twin.tensors().values(), other.tensors().values()))

    # save/load round trip: the same tensors, card and outputs, without pickle
    folder = model.save(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "tensors.npz"]
    again = load(folder)
    assert type(again) is type(model) and again.card == model.card
    assert _equal(model.tensors(), again.tensors())
    assert _equal(out, again.predict_records(inputs))


def test_a_saved_model_with_an_altered_tensor_is_refused(tables: dict, tmp_path: Path) -> None:
    model = build("record_autoencoder", _tiny("record_autoencoder"), seed=1)
    model.fit_preprocessing(tables)
    folder = model.save(tmp_path / "m")
    arrays = dict(np.load(folder / "tensors.npz"))
    arrays["x_mean"] = arrays["x_mean"] + np.float32(1e-3)
    np.savez(folder / "tensors.npz", **arrays)
    with pytest.raises(CorruptModelError, match="tensor x_mean does not match its SHA-256"):
        load(folder)
    spec = json.loads((folder / "model.json").read_text())
    spec["format_version"] = 99
    (folder / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CorruptModelError, match="version 99"):
        load(folder)


def test_unknown_family_and_hyper_parameter_are_refused() -> None:
    with pytest.raises(UnknownFamily, match="unknown model family 'gan'.*record_autoencoder"):
        build("gan")
    with pytest.raises(ModelError, match="unknown hyper-parameter.*latent"):
        build("record_autoencoder", {"latent": 3})


def test_record_representation_is_exact_on_the_simulated_tracks(tables: dict) -> None:
    tracks = tables["tracks"]
    space = rec.to_model(tracks)
    back = rec.from_model(space.x.astype(np.float32), space.flags, space.classes)
    for column in rec.MODELLED_COLUMNS:
        original, decoded = np.asarray(tracks[column], float), np.asarray(back[column], float)
        assert back[column].dtype == tracks[column].dtype, column
        assert np.array_equal(np.isnan(original), np.isnan(decoded)), column
        np.testing.assert_allclose(decoded, original, rtol=2e-6, atol=1e-7, equal_nan=True, err_msg=column)
    assert rec.unflatten(rec.flatten(tracks)).keys() == set(rec.MODELLED_COLUMNS)


@pytest.fixture
def real_dst_tables(shared_data: Path, tmp_path: Path) -> dict:
    from vbes.datasets import ingest_besiii_dst

    out = tmp_path / "real.h5"
    ingest_besiii_dst(shared_data / "besiii-boss-jpsi-rhopi-10evt.dst", out)
    return read_events(out)


def test_record_representation_is_exact_on_the_real_besiii_dst(real_dst_tables: dict) -> None:
    tracks = real_dst_tables["tracks"]
    # BOSS stores the helix phi0 in [0, 2 pi), the simulation in [-pi, pi): the representation keeps either
    assert tracks["helix"][:, 1].min() >= 0 and tracks["helix"][:, 1].max() > np.pi
    space = rec.to_model(tracks)
    back = rec.from_model(space.x.astype(np.float32), space.flags, space.classes, angle_low={"helix_1": 0.0})
    for column in rec.MODELLED_COLUMNS:
        np.testing.assert_allclose(np.asarray(back[column], float), np.asarray(tracks[column], float), rtol=2e-6,
                                   atol=1e-7, equal_nan=True, err_msg=column)
    model = build("record_autoencoder", _tiny("record_autoencoder"), seed=0)
    model.fit_preprocessing(real_dst_tables)
    model.eval()
    phi0 = model.decode_records(torch.randn(500, model.config["latent_dim"]) * 10)["helix"][:, 1]
    assert phi0.min() >= 0 and phi0.max() < 2 * np.pi


def test_record_autoencoder_output_is_physical_whatever_the_code(tables: dict) -> None:
    model = build("record_autoencoder", _tiny("record_autoencoder"), seed=2)
    model.fit_preprocessing(tables)
    model.eval()
    # codes far outside what training produces: the bounds must hold by construction, not by training
    z = torch.randn(2000, model.config["latent_dim"], generator=torch.Generator().manual_seed(0)) * 20
    out = model.decode_records(z)
    assert np.all(np.abs(out["cos_theta"]) <= 1.0)
    for energy_like in ("p", "emc_energy", "muc_depth", "dedx", "tof_path"):
        assert not (out[energy_like] < 0).any(), energy_like
        assert np.isfinite(out[energy_like][~np.isnan(out[energy_like])]).all(), energy_like
    assert np.all(np.abs(out["phi"]) <= np.pi) and np.all(np.abs(out["helix"][:, 1]) <= np.pi)
    assert set(np.unique(out["charge"])) <= {-1, 1}
    assert set(np.unique(out["mass_hypothesis"])) <= set(range(len(HYPOTHESES)))
    # kappa = charge / pT: its sign is the charge
    assert np.array_equal(np.sign(out["helix"][:, 2]).astype(int), out["charge"].astype(int))
    assert np.all(np.linalg.eigvalsh(unpack_symmetric(out["helix_cov"])) > 0)
    nhits = tables["tracks"]["dedx_nhits"]
    assert out["dedx_nhits"].dtype == np.int16
    assert nhits.min() <= out["dedx_nhits"].min() and out["dedx_nhits"].max() <= nhits.max()
    # NaN only where the schema allows "not measured"
    assert not np.isnan(out["p"]).any() and not np.isnan(out["dedx"]).any()


def test_record_autoencoder_learns_to_reconstruct(tables: dict) -> None:
    torch.manual_seed(0)
    model = build("record_autoencoder", {"latent_dim": 24, "hidden": [64]}, seed=0)
    model.fit_preprocessing(tables)
    batch = model.make_tensors(tables)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(model.loss(batch)["loss"].detach())
    for _ in range(60):
        optimiser.zero_grad()
        loss = model.loss(batch)["loss"]
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < 0.4 * first
    model.eval()
    out = model.reconstruct(tables["tracks"])
    # a simulated rho pi sample: every track is fitted as a pion; the charges are reconstructed
    assert (out["mass_hypothesis"] == HYPOTHESES.index("pi")).mean() == 1.0
    assert (out["charge"] == tables["tracks"]["charge"]).mean() > 0.9


def test_track_flow_samples_are_physical_and_follow_the_channel(tables: dict, mumu_sample: Path) -> None:
    from vbes.datasets.schema import CHANNELS

    both = read_events(mumu_sample)
    merged = {t: {c: np.concatenate([tables[t][c], both[t][c]]) for c in tables[t]} for t in tables}
    model = build("track_flow", {"transforms": 3, "hidden": [32, 32]}, seed=0)
    model.fit_preprocessing(merged)
    batch = model.make_tensors(merged)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimiser.zero_grad()
        model.loss(batch)["loss"].backward()
        optimiser.step()
    model.eval()
    n = 4000
    mumu = model.sample(n, {"channel": torch.full((n,), CHANNELS["mumu"])}, seed=1).numpy()
    rhopi = model.sample(n, {"channel": torch.full((n,), CHANNELS["rhopi"])}, seed=1).numpy()
    for draw in (mumu, rhopi, model.sample(n, seed=2).numpy()):
        assert (draw[:, 0] > 0).all() and (np.abs(draw[:, 1]) <= 1).all() and (np.abs(draw[:, 2]) <= np.pi).all()
    # J/psi -> mu mu at rest: p = M(J/psi)/2 = 1.548 GeV/c (PDG 3.0969 GeV), smeared by resolution, boost, FSR
    assert abs(np.median(mumu[:, 0]) - 3.0969 / 2) < 0.02
    # rho pi: three-body, the charged pions share the energy: well below the two-body momentum
    assert np.median(rhopi[:, 0]) < 1.3


def test_an_event_surrogate_takes_a_trained_response_as_it_is(tables: dict, conditions: Conditions,
                                                              tmp_path: Path) -> None:
    donor = _prepared("detector_response", 5, tables, conditions)
    folder = donor.save(tmp_path / "response")
    config = {**_tiny("event_surrogate"), "response_model": str(folder)}
    model = build("event_surrogate", config, seed=6)
    model.conditions = conditions
    model.fit_preprocessing(tables)
    # the donor's weights, frozen; only the truth is trained
    assert _equal(donor.response.state_dict(), model.response.state_dict())
    assert not any(p.requires_grad for p in model.response.parameters())
    batch = model.make_tensors(tables)
    assert set(batch) == {"truth"}
    model.loss(batch)["loss"].backward()
    assert all(p.grad is not None for p in model.truth.parameters())
    assert model.card.training_domain["response_model"]["source"] == str(folder)
    # self-contained: the saved event model needs no donor folder
    saved = model.save(tmp_path / "event")
    (folder / "model.json").unlink()
    again = load(saved)
    drawn = again.sample(50, again.sample_request(tables, 50), seed=1)
    assert len(drawn["events"]["run"]) == 50
