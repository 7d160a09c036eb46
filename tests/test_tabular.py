"""The building block of the generative families: quantile maps with exact atoms, and the conditional table
(categorical heads + coupling flow) learning a known conditional law."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vbes.errors import ModelError
from vbes.models.tabular import ConditionalTable, QuantileMap, fit_quantile_knots


def _mixed(n: int, rng: np.random.Generator) -> np.ndarray:
    """Columns like the detector's: TDC ticks (atoms only), an exact-zero spike + exponential, a Gaussian."""
    ticks = 50.0 * rng.choice([6, 7, 8], n, p=[0.2, 0.6, 0.2])
    spike = np.where(rng.random(n) < 0.3, 0.0, rng.exponential(1.0, n))
    return np.stack([ticks, spike, rng.normal(0.0, 1.0, n)], axis=1)


def test_quantile_map_reproduces_atoms_exactly_and_stays_in_range() -> None:
    rng = np.random.default_rng(1)
    x = _mixed(20_000, rng)
    qmap = QuantileMap(3, 256)
    qmap.fit(x)
    drawn = qmap.from_normal(torch.randn(200_000, 3, generator=torch.Generator().manual_seed(2))).numpy()
    # every tick drawn is a tick, with the training frequencies (binomial errors of 2e4 training rows)
    assert np.isin(drawn[:, 0], [300.0, 350.0, 400.0]).all()
    for value, p in ((300.0, 0.2), (350.0, 0.6), (400.0, 0.2)):
        assert abs(np.mean(drawn[:, 0] == value) - np.mean(x[:, 0] == value)) < 4 * np.sqrt(p * (1 - p) / 20_000)
    zero = np.mean(x[:, 1] == 0.0)
    assert abs(np.mean(drawn[:, 1] == 0.0) - zero) < 4 * np.sqrt(zero * (1 - zero) / 20_000)
    # the continuous parts follow their law, and no value leaves the training range
    assert stats.ks_2samp(drawn[drawn[:, 1] > 0, 1], x[x[:, 1] > 0, 1]).statistic < 0.02
    assert stats.kstest(drawn[:, 2], "norm").statistic < 0.02
    assert (drawn.min(axis=0) >= x.min(axis=0)).all() and (drawn.max(axis=0) <= x.max(axis=0)).all()


def test_quantile_map_round_trip_and_groups() -> None:
    rng = np.random.default_rng(3)
    x = _mixed(5000, rng)
    group = (rng.random(5000) < 0.5).astype(np.int64)
    x[group == 1, 2] += 100.0  # the second group lives elsewhere: it must get maps of its own
    qmap = QuantileMap(3, 128, groups=2)
    qmap.fit(x, group)
    back = qmap.from_normal(torch.as_tensor(qmap.to_normal(x, rng, group)), group).numpy()
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-9)
    drawn = qmap.from_normal(torch.zeros(2, 3), np.array([0, 1])).numpy()
    assert drawn[0, 2] < 10 < drawn[1, 2]


def test_knots_of_an_atom_hold_its_exact_probability() -> None:
    u, v = fit_quantile_knots(np.array([0.0] * 25 + list(np.linspace(1.0, 2.0, 75))), 16)
    flat = np.flatnonzero((v[:-1] == 0.0) & (v[1:] == 0.0))
    assert u[flat[-1] + 1] == pytest.approx(0.25)
    with pytest.raises(ModelError, match="at least 8 knots"):
        fit_quantile_knots(np.zeros(3), 4)


def test_conditional_table_learns_a_known_conditional_law() -> None:
    """x | c ~ N(2c, 0.5^2) and a flag ~ Bernoulli(sigmoid(3c)): a few hundred steps recover both."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 20_000
    c = rng.uniform(-1, 1, n)
    flag = (rng.random(n) < 1 / (1 + np.exp(-3 * c))).astype(np.int64)
    x = np.stack([rng.normal(2 * c, 0.5), rng.normal(0, 1, n)], axis=1)
    table = ConditionalTable(2, [2], context=1, hidden=[32, 32], transforms=4, knots=256)
    table.fit(x, flag[:, None])
    rows = table.encode(x, flag[:, None], c[:, None], rng)
    opt = torch.optim.Adam(table.parameters(), lr=3e-3)
    for step in range(400):
        idx = torch.randint(0, n, (1024,))
        loss = -table.log_prob({k: v[idx] for k, v in rows.items()}).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    table.eval()
    for c_value in (-0.5, 0.5):
        xs, codes = table.sample(torch.full((20_000, 1), c_value), seed=1)
        assert abs(float(xs[:, 0].mean()) - 2 * c_value) < 0.08
        assert abs(float(xs[:, 0].std()) - 0.5) < 0.08
        assert abs(float(codes.float().mean()) - 1 / (1 + np.exp(-3 * c_value))) < 0.03


def test_masked_values_are_never_drawn_and_the_rest_is_normalised() -> None:
    table = ConditionalTable(1, [4], context=2, hidden=[8], transforms=1, knots=16)
    table.fit(np.zeros((4, 1)), np.arange(4)[:, None])
    allowed = torch.tensor([[True, False, True, False]]).repeat(500, 1)
    _, codes = table.sample(torch.zeros(500, 2), seed=3, allowed=allowed)
    assert set(codes[:, 0].tolist()) <= {0, 2}
    rows = {"z": torch.zeros(2, 1), "context": torch.zeros(2, 2), "codes": torch.tensor([[0], [2]]),
            "allowed": allowed[:2]}
    with torch.no_grad():
        logits = table.heads[0](torch.zeros(1, 2))[0, [0, 2]]
        expected = torch.log_softmax(logits, 0)
        flow = table.flow(torch.cat([rows["context"], table.embeddings[0](rows["codes"][:, 0])], 1)).log_prob(rows["z"])
        got = table.log_prob(rows) - flow
    torch.testing.assert_close(got, expected)


def test_same_seed_same_rows() -> None:
    table = ConditionalTable(2, [3], context=1, hidden=[8], transforms=2, knots=16)
    table.fit(np.random.default_rng(0).normal(size=(50, 2)), np.zeros((50, 1), np.int64))
    a = table.sample(torch.zeros(20, 1), seed=5)
    b = table.sample(torch.zeros(20, 1), seed=5)
    c = table.sample(torch.zeros(20, 1), seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
