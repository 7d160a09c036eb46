"""Conditional generative models of mixed tables: the building block of every generative family.

A row has *discrete* columns (flags, counts, classes: exact values from a vocabulary) and *continuous* columns
(measurements). :class:`ConditionalTable` models ``p(row | context)`` as

* ``p(d_1 | c) p(d_2 | c, d_1) ...`` -- one small categorical network per discrete column, each seeing the context
  and the discrete values drawn before it (autoregressive), so flags and counts are discrete in the output and their
  correlations are kept;
* ``p(z | c, d)`` -- a conditional RealNVP flow (zuko, affine couplings: sampling costs one network pass per
  transform) over the continuous columns, each mapped onto a standard normal coordinate ``z`` by its own
  :class:`QuantileMap` (the empirical quantile function of the training data).

The quantile maps make every marginal distribution exact by construction -- radiative tails, kinematic edges and
*atoms* (values taken by a finite fraction of rows: an exact zero, a TDC tick, an integer): an atom is a flat piece
of the quantile function, so whatever the flow draws inside its probability interval maps back onto the atom's exact
value. What the flow must learn is only the dependence between columns and on the context; FlashSim's lesson that
integer variables make flows "bridge" between modes does not arise, and physical bounds hold because the quantile
function never leaves the training data's range.

A continuous value may be *absent* (NaN: no TOF hit, no second track). Which values are present must follow from the
discrete columns (the caller models presence as a discrete column); absent coordinates are filled with independent
standard normal noise for training, which the flow learns as such, and are returned as NaN.

Log-likelihoods are in model space: the categorical terms plus the flow's density of ``z`` (the quantile maps'
Jacobians are not included; atoms have no density).

Example:
    >>> import numpy as np, torch
    >>> rng = np.random.default_rng(0)
    >>> flag = rng.integers(0, 2, 2000)
    >>> x = np.stack([rng.normal(flag, 1.0), np.where(flag == 1, 0.0, rng.exponential(1.0, 2000))], 1)
    >>> table = ConditionalTable(n_continuous=2, discrete=[2], context=1, hidden=[16], transforms=2)
    >>> table.fit(x, flag[:, None])
    >>> rows = table.encode(x, flag[:, None], np.zeros((2000, 1)), rng)
    >>> bool(torch.isfinite(table.log_prob(rows)).all())
    True
    >>> xs, codes = table.sample(torch.zeros(5, 1), seed=1)
    >>> xs.shape, codes.shape
    (torch.Size([5, 2]), torch.Size([5, 1]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import zuko  # type: ignore[import-untyped]
from scipy import special
from torch import nn

from vbes.errors import ModelError

__all__ = ["ConditionalTable", "QuantileMap", "fit_quantile_knots", "mlp"]

#: probability kept away from 0 and 1 before the normal quantile (|z| <= 4.9)
_U_EPS = 5e-7
_LOG_SLOPE = float(np.log(1e-3))


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """A plain multilayer perceptron: ``Linear`` layers of ``sizes`` with ``activation`` between them.

    Args:
        sizes: input width, hidden widths, output width.
        activation: the non-linearity.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _coupling_sample(flow: Any, context: torch.Tensor) -> torch.Tensor:
    """Draw from a zuko RealNVP flow (affine couplings) given ``context``: the base's standard normal through the
    inverse of every coupling, last first -- zuko's own ``flow(context).sample()``, computed with one network pass
    and a handful of tensor operations per transform instead of its transform objects (twice as fast; the result
    is the same to float rounding, see the tests)."""
    if not all(hasattr(layer, "mask") for layer in flow.transform.transforms):
        return flow(context).sample()  # one feature: element-wise transforms, zuko's own path
    n, features = context.shape[0], flow.base(None).event_shape[0]
    base = flow.base(None)
    x = base.mean + base.stddev * torch.randn(n, features)
    for layer in reversed(flow.transform.transforms):
        index_a = layer.mask.nonzero().squeeze(-1)
        index_b = (~layer.mask).nonzero().squeeze(-1)
        phi = layer.hyper(torch.cat([x[:, index_a], context], dim=1)).unflatten(-1, (-1, 2))
        shift, scale = phi[..., 0], phi[..., 1]
        # zuko's MonotonicAffineTransform (slope 1e-3): log-scale softly bounded by |log(1e-3)|
        log_scale = scale / (1 + torch.abs(scale / _LOG_SLOPE))
        x = x.index_copy(1, index_b, (x[:, index_b] - shift) * torch.exp(-log_scale))
    return x


def fit_quantile_knots(values: np.ndarray, n_knots: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(u, v)`` of the piecewise-linear quantile function of ``values`` (NaN ignored), ``n_knots`` each.

    ``u`` rises from 0 to 1 and ``v`` never falls. A value carrying at least a quarter of a knot spacing of the
    probability (and 3 rows) is an atom: two knots ``(F(a-), a)`` and ``(F(a), a)`` with its exact probability.
    Between atoms, knots sit at evenly spaced probabilities of the continuous part; unused knots repeat ``(1, max)``.

    Args:
        values: one column.
        n_knots: knots to return (at least 8).

    Example:
        >>> u, v = fit_quantile_knots(np.array([0.0] * 50 + list(np.linspace(1, 2, 50))), 16)
        >>> float(u[1]), float(v[1])       # the atom at 0 holds half of the rows
        (0.5, 0.0)
    """
    if n_knots < 8:
        raise ModelError(f"a quantile map needs at least 8 knots, not {n_knots}")
    x = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(values)])
    n = x.size
    if n == 0:
        return np.linspace(0.0, 1.0, n_knots), np.zeros(n_knots)
    uniq, counts = np.unique(x, return_counts=True)
    below = np.cumsum(counts) - counts
    is_atom = (counts >= 3) & (counts >= 0.25 * n / n_knots)
    budget = n_knots - 4
    if 2 * is_atom.sum() > budget // 2:  # keep the heaviest atoms; the rest count as continuous
        keep = np.argsort(-counts * is_atom)[: budget // 4]
        is_atom = np.zeros_like(is_atom)
        is_atom[keep] = counts[keep] >= 3
    points_u = [below[is_atom] / n, (below[is_atom] + counts[is_atom]) / n]
    points_v = [uniq[is_atom], uniq[is_atom]]
    cont = ~is_atom
    if cont.any():
        # each continuous value at the middle of its probability mass; evenly spaced picks among them
        mid_u = (below[cont] + 0.5 * counts[cont]) / n
        n_pick = max(budget - 2 * int(is_atom.sum()), 2)
        pick = np.unique(np.searchsorted(mid_u, np.linspace(mid_u[0], mid_u[-1], n_pick)).clip(0, mid_u.size - 1))
        points_u.append(mid_u[pick])
        points_v.append(uniq[cont][pick])
    u = np.concatenate([[0.0], *points_u, [1.0]])
    v = np.concatenate([[x[0]], *points_v, [x[-1]]])
    order = np.lexsort((v, u))
    u, v = u[order], v[order]
    distinct = np.concatenate([[True], (np.diff(u) > 0) | (np.diff(v) > 0)])
    u, v = u[distinct], v[distinct]
    v = np.maximum.accumulate(v)  # exact monotony against float ties between atoms and continuous picks
    pad = n_knots - u.size
    if pad < 0:  # cannot happen with the budget above; kept as a guard
        raise ModelError(f"quantile map of {u.size} knots exceeds {n_knots}")
    return np.concatenate([u, np.ones(pad)]), np.concatenate([v, np.full(pad, v[-1])])


class QuantileMap(nn.Module):
    """Per-column monotone maps between physical values and standard normal coordinates, one set per group.

    The knots (buffers ``u``, ``v``: ``(groups, columns, knots)``) come from :meth:`fit`; :meth:`to_normal` (NumPy,
    for preparing training data: an atom's value becomes a uniform draw within its probability interval) and
    :meth:`from_normal` (torch, for sampling) are inverse to each other on the training data's range. Groups give
    rows of different kinds (decay topologies, noise against particle showers) marginals of their own.

    Args:
        columns: number of columns.
        knots: knots per column.
        groups: number of groups.
    """

    u: torch.Tensor
    v: torch.Tensor

    def __init__(self, columns: int, knots: int = 1024, groups: int = 1) -> None:
        super().__init__()
        self.register_buffer("u", torch.linspace(0, 1, knots, dtype=torch.float64).repeat(groups, columns, 1))
        self.register_buffer("v", torch.zeros(groups, columns, knots, dtype=torch.float64))

    @property
    def groups(self) -> int:
        return int(self.u.shape[0])

    def _group_rows(self, n: int, group: np.ndarray | torch.Tensor | None) -> list[tuple[int, np.ndarray]]:
        g = np.zeros(n, dtype=np.int64) if group is None else np.asarray(group, dtype=np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.groups):
            raise ModelError(f"quantile group outside 0..{self.groups - 1}")
        return [(k, np.flatnonzero(g == k)) for k in range(self.groups)]

    def fit(self, x: np.ndarray, group: np.ndarray | None = None) -> None:
        """Knots of every column of ``x`` (rows, columns) per group; NaN values are ignored.

        Args:
            x: training values.
            group: group of each row (default all 0).
        """
        knots = self.u.shape[2]
        for k, rows in self._group_rows(x.shape[0], group):
            for j in range(self.u.shape[1]):
                u, v = fit_quantile_knots(x[rows, j], knots)
                self.u[k, j] = torch.as_tensor(u)
                self.v[k, j] = torch.as_tensor(v)

    def to_normal(self, x: np.ndarray, rng: np.random.Generator, group: np.ndarray | None = None) -> np.ndarray:
        """Standard normal coordinates of values ``x`` (rows, columns); NaN stays NaN.

        Args:
            x: physical values.
            rng: draws the position of atom values within the atom's probability interval.
            group: group of each row (default all 0).
        """
        u_all, v_all = self.u.cpu().numpy(), self.v.cpu().numpy()
        out = np.full(x.shape, np.nan)
        for k, rows in self._group_rows(x.shape[0], group):
            for j in range(x.shape[1]):
                col = x[rows, j]
                ok = np.isfinite(col)
                u, v = u_all[k, j], v_all[k, j]
                val = np.clip(col[ok], v[0], v[-1])
                lo = np.searchsorted(v, val, side="left")
                hi = np.searchsorted(v, val, side="right") - 1
                # a value met by several knots lies on a flat piece (an atom): uniform in its probability interval
                atom = hi > lo
                res = np.interp(val, v, u)
                res[atom] = u[lo[atom]] + rng.random(int(atom.sum())) * (u[hi[atom]] - u[lo[atom]])
                out[rows[ok], j] = special.ndtri(np.clip(res, _U_EPS, 1 - _U_EPS))
        return out

    def from_normal(self, z: torch.Tensor, group: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Physical values (float64) of standard normal coordinates ``z`` (rows, columns).

        Args:
            z: normal coordinates.
            group: group of each row (default all 0).
        """
        n, columns = z.shape
        knots = self.u.shape[2]
        g = torch.zeros(n, dtype=torch.int64) if group is None else torch.as_tensor(np.asarray(group), dtype=torch.int64)
        if n and (int(g.min()) < 0 or int(g.max()) >= self.groups):
            raise ModelError(f"quantile group outside 0..{self.groups - 1}")
        u = torch.special.ndtr(z.double()).clamp(_U_EPS, 1 - _U_EPS)
        # one search over every (group, column) map at once: map k's probabilities live in [2k, 2k + 1]
        block = g[:, None] * columns + torch.arange(columns)[None, :]
        flat_u = (self.u.reshape(-1, knots) + 2.0 * torch.arange(self.groups * columns, dtype=torch.float64)[:, None])
        flat_u, flat_v = flat_u.reshape(-1), self.v.reshape(-1)
        shifted = u + 2.0 * block
        idx = torch.searchsorted(flat_u, shifted, right=True)
        idx = torch.minimum(torch.maximum(idx, block * knots + 1), block * knots + knots - 1)
        u_lo, u_hi = flat_u[idx - 1], flat_u[idx]
        v_lo, v_hi = flat_v[idx - 1], flat_v[idx]
        width = u_hi - u_lo
        frac = torch.where(width > 0, (shifted - u_lo) / width.clamp_min(1e-300), torch.zeros_like(u))
        return v_lo + frac * (v_hi - v_lo)


class ConditionalTable(nn.Module):
    """``p(discrete, continuous | context)`` of a mixed table (see the module docstring).

    Args:
        n_continuous: continuous columns (0 allowed).
        discrete: vocabulary size of each discrete column, in sampling order (codes ``0..size-1``).
        context: width of the context vector (0: unconditional).
        hidden: hidden widths of every network (coupling and categorical).
        transforms: affine coupling transforms of the flow.
        knots: knots of each continuous column's quantile map.
        embedding: width of the learned embedding of each discrete value fed to later networks.
        groups: sets of quantile maps; the group of a row is the code of its first discrete column when
            ``group_by_first`` (e.g. the decay topology), else given by the caller.
        group_by_first: take the group from the first discrete column.
        context_features: when positive and smaller than the flow's context (context + embeddings), a small network
            encodes that context into this many features once per row for every coupling transform.
    """

    def __init__(self, n_continuous: int, discrete: Sequence[int], context: int, hidden: Sequence[int] = (64, 64),
                 transforms: int = 6, knots: int = 1024, embedding: int = 4, groups: int = 1,
                 group_by_first: bool = False, context_features: int = 0) -> None:
        super().__init__()
        if n_continuous < 0 or any(int(c) < 1 for c in discrete) or context < 0 or transforms < 1:
            raise ModelError("a table needs non-negative sizes, vocabularies of at least one value and a transform")
        self.n_continuous = int(n_continuous)
        self.cardinalities = [int(c) for c in discrete]
        self.context_width = int(context)
        hidden = [int(h) for h in hidden]
        n_disc = len(self.cardinalities)
        # an embedding is made only where a later network reads it (every parameter takes part in the loss)
        readers = [j for j in range(n_disc) if j < n_disc - 1 or self.n_continuous > 0]
        self.embeddings = nn.ModuleList(
            [nn.Embedding(c, embedding) for j, c in enumerate(self.cardinalities) if j in readers]
        )
        self._embedded = len(readers)
        # a column with a single value is certain: it has no network (nothing to learn, no gradient)
        self.heads = nn.ModuleList(
            [mlp([max(self.context_width + embedding * j, 1), *hidden, c]) if c > 1 else nn.Identity()
             for j, c in enumerate(self.cardinalities)]
        )
        self.group_by_first = bool(group_by_first)
        if self.group_by_first and (not self.cardinalities or self.cardinalities[0] != groups):
            raise ModelError("grouping by the first discrete column needs as many groups as its values")
        self.quantiles = QuantileMap(max(self.n_continuous, 1), knots, groups)
        self.flow = None
        self.context_encoder: nn.Module = nn.Identity()
        flow_context = self.context_width + embedding * n_disc
        if self.n_continuous and context_features and flow_context > context_features:
            # a wide context is read by every coupling's network; a small network turns it once per row into a few
            # features they all read (fewer operations per transform, shared non-linear features)
            self.context_encoder = mlp([flow_context, hidden[0], context_features])
            flow_context = context_features
        if self.n_continuous:
            self.flow = zuko.flows.RealNVP(self.n_continuous, flow_context, transforms=transforms,
                                           randmask=self.n_continuous > 2, hidden_features=hidden,
                                           activation=nn.SiLU)

    # --- preparation -----------------------------------------------------------------------------------
    def _groups(self, codes: np.ndarray | torch.Tensor, group: np.ndarray | torch.Tensor | None) -> np.ndarray | None:
        if self.group_by_first:
            return np.asarray(codes[:, 0])
        return None if group is None else np.asarray(group)

    def fit(self, continuous: np.ndarray, codes: np.ndarray, group: np.ndarray | None = None) -> None:
        """Fit the quantile maps on training rows.

        Args:
            continuous: ``(rows, n_continuous)`` physical values, NaN where absent.
            codes: ``(rows, n_discrete)`` discrete codes (checked against the vocabularies).
            group: quantile group of each row (unless grouped by the first discrete column).
        """
        self._check(continuous, codes)
        if self.n_continuous:
            self.quantiles.fit(continuous, self._groups(codes, group))

    def _check(self, continuous: np.ndarray, codes: np.ndarray) -> None:
        if continuous.ndim != 2 or continuous.shape[1] != self.n_continuous:
            raise ModelError(f"expected {self.n_continuous} continuous columns, got shape {continuous.shape}")
        if codes.ndim != 2 or codes.shape[1] != len(self.cardinalities) or codes.shape[0] != continuous.shape[0]:
            raise ModelError(f"expected {len(self.cardinalities)} discrete columns for {continuous.shape[0]} rows, "
                             f"got shape {codes.shape}")
        for j, c in enumerate(self.cardinalities):
            if codes.shape[0] and (codes[:, j].min() < 0 or codes[:, j].max() >= c):
                raise ModelError(f"discrete column {j}: codes outside 0..{c - 1}")

    def encode(self, continuous: np.ndarray, codes: np.ndarray, context: np.ndarray,
               rng: np.random.Generator, group: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Training tensors of physical rows: ``z`` (absent values as noise), ``codes`` and ``context``.

        Args:
            continuous: ``(rows, n_continuous)`` physical values, NaN where absent.
            codes: ``(rows, n_discrete)`` codes.
            context: ``(rows, context)`` conditions.
            rng: draws atom positions and the noise of absent values.
            group: quantile group of each row (unless grouped by the first discrete column).
        """
        self._check(continuous, codes)
        z = (self.quantiles.to_normal(continuous, rng, self._groups(codes, group)) if self.n_continuous
             else np.zeros((codes.shape[0], 0)))
        absent = ~np.isfinite(z)
        z[absent] = rng.standard_normal(int(absent.sum()))
        return {
            "z": torch.as_tensor(z, dtype=torch.float32),
            "codes": torch.as_tensor(codes, dtype=torch.int64),
            "context": torch.as_tensor(np.asarray(context, dtype=np.float32).reshape(codes.shape[0], -1)),
        }

    # --- the model -------------------------------------------------------------------------------------------
    def _embed(self, codes: torch.Tensor, upto: int) -> list[torch.Tensor]:
        return [self.embeddings[j](codes[:, j]) for j in range(min(upto, self._embedded))]

    def _head_input(self, context: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor:
        parts = [context, *embedded]
        x = torch.cat(parts, dim=1) if parts else context
        # without any input, a constant one: the first layer then acts as a learned bias
        return x if x.shape[1] else torch.ones(context.shape[0], 1)

    def log_prob(self, rows: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Model-space log-likelihood of each row (categorical terms + flow density of ``z``).

        Args:
            rows: ``z``, ``codes``, ``context`` as :meth:`encode` makes them, and optionally ``allowed``: the values
                of the first discrete column each row may take (``(rows, cardinality)`` booleans; the others have
                probability zero, the rest is normalised among them).
        """
        context, codes = rows["context"], rows["codes"]
        embedded = self._embed(codes, len(self.cardinalities))
        total = torch.zeros(context.shape[0], device=context.device)
        for j, head in enumerate(self.heads):
            if self.cardinalities[j] == 1:
                continue
            logits = head(self._head_input(context, embedded[:j]))
            if j == 0 and "allowed" in rows:
                logits = logits.masked_fill(~rows["allowed"], float("-inf"))
            total = total + torch.log_softmax(logits, dim=1).gather(1, codes[:, j : j + 1]).squeeze(1)
        if self.flow is not None:
            flow_context = self.context_encoder(torch.cat([context, *embedded], dim=1))
            total = total + self.flow(flow_context).log_prob(rows["z"])
        return total

    @torch.no_grad()
    def sample(self, context: torch.Tensor, seed: int = 0, codes: torch.Tensor | None = None,
               group: torch.Tensor | np.ndarray | None = None,
               allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows drawn for each context row: ``(continuous (float64, physical), codes)``.

        Args:
            context: ``(rows, context)`` conditions.
            seed: the draw's seed (same seed, same rows).
            codes: optional discrete codes to condition on instead of drawing them.
            group: quantile group of each row (unless grouped by the first discrete column).
            allowed: values the first discrete column may take per row (see :meth:`log_prob`).
        """
        n = context.shape[0]
        context = context.float()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if codes is None:
                drawn = torch.zeros(n, len(self.cardinalities), dtype=torch.int64)
                embedded: list[torch.Tensor] = []
                for j, head in enumerate(self.heads):
                    if self.cardinalities[j] > 1 and n:
                        logits = head(self._head_input(context, embedded))
                        if j == 0 and allowed is not None:
                            logits = logits.masked_fill(~allowed, float("-inf"))
                        # inverse-CDF draw: several times faster than torch.multinomial on wide vocabularies
                        cdf = torch.cumsum(torch.softmax(logits, dim=1), dim=1)
                        pick = torch.rand(n, 1) * cdf[:, -1:]
                        drawn[:, j] = torch.searchsorted(cdf, pick, right=True).squeeze(1).clamp_max(
                            self.cardinalities[j] - 1)
                    if j < self._embedded:
                        embedded.append(self.embeddings[j](drawn[:, j]))
                codes = drawn
            else:
                embedded = self._embed(codes, len(self.cardinalities))
            if self.flow is None:
                return torch.zeros(n, 0, dtype=torch.float64), codes
            flow_context = self.context_encoder(torch.cat([context, *embedded], dim=1))
            z = _coupling_sample(self.flow, flow_context) if n else torch.zeros(0, self.n_continuous)
        return self.quantiles.from_normal(z, self._groups(codes, group)), codes
