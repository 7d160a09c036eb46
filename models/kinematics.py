"""The generator's final state of an event as exact coordinates: topologies, decay trees and two-body chains.

The event-level surrogate learns truth kinematics in coordinates where the physics is simple and exact:

* the **final state** is what the generator made (truth rows with BOSS's "from generator" status bit that are
  leaves or decayed in flight in the material: :func:`generator_final`); material secondaries belong to the
  detector response. Photons softer than ``soft_photon`` (far below the EMC threshold) are not modelled one by one:
  their four-momentum stays in the recoil of the system;
* **narrow resonances** (:data:`NARROW`: π0, η, η', K_S, Λ; widths far below the detector resolution) are kept as
  nodes of a decay tree, everything broader (ρ, K*, the QED shower's recoil copies) is flattened into its narrow
  ancestor or the event's root; the **topology** of an event is this tree with the species of every leaf, in a
  canonical order (species rank, then energy);
* each node's children are written as a **chain of two-body splittings** (Genbod/RAMBO's recursive phase space):
  child ``j`` leaves the system of children ``j..k``, whose invariant mass is a coordinate (as a fraction of its
  kinematic range, so every value is physical) and in whose rest frame child ``j``'s direction is given by its
  *helicity angles*: ``cos θ*`` to the direction opposite the system it came from (the beam axis for the event's
  root, so ``1 + cos²θ`` is a coordinate's marginal), ``φ*`` around it from the beam. Four-momentum is conserved
  exactly at every node, so the J/ψ mass of the whole event and the π0/K_S mass of every resonance are
  coordinates -- atoms a quantile map reproduces exactly -- and a resonance band of a Dalitz plot (ρ+, ρ−, ρ0 in
  J/ψ → π+π−π0) is a straight line in (mass fraction, ``cos θ*``) instead of a curved correlation between momenta.

Coordinates of a topology, in order: the system's mass and lab momentum (4), the primary vertex (3); then per node
(depth first): for a narrow resonance its mass and decay length along its momentum (2), and the chain (per child
but the last: ``cos θ*``, ``φ*``, and except for the last two the mass fraction).

Example:
    >>> from vbes.datasets import simulate
    >>> tables = simulate("rhopi", 200, seed=1)
    >>> d = decompose(tables)
    >>> top = d.topologies[0]
    >>> top.key
    '[211,-211,111[22,22]]'
    >>> rows = d.events[0]
    >>> back = top.particles(d.coordinates[0])
    >>> bool(np.allclose(back.leaf_p4, d.leaf_p4[0], atol=1e-5))   # keV: PDG masses against the generator's
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from vbes.errors import ModelError

__all__ = [
    "NARROW",
    "PDG_MASS",
    "Decomposition",
    "Particles",
    "Topology",
    "boost",
    "decompose",
    "event_offsets",
    "generator_final",
    "species_rank",
]

#: BOSS McParticle status bits
_FROM_GENERATOR, _DECAYED_IN_FLIGHT, _LEAF = 1, 2, 8
#: narrow resonances kept as decay-tree nodes (PDG ids)
NARROW = frozenset({111, 221, 331, 310, 3122, -3122})
#: PDG 2024 masses (GeV/c^2) of the particles a final state holds
PDG_MASS: dict[int, float] = {
    22: 0.0, 11: 0.51099895e-3, 13: 0.1056583755, 211: 0.13957039, 321: 0.493677, 2212: 0.93827208816,
    2112: 0.93956542052, 130: 0.497611, 310: 0.497611, 111: 0.1349768, 221: 0.547862, 331: 0.95778,
    3122: 1.115683, 12: 0.0, 14: 0.0, 16: 0.0,
}
# canonical order of species within a node: charged hadrons, leptons, narrow resonances, photons, neutral hadrons
_RANKED = (211, -211, 321, -321, 2212, -2212, 11, -11, 13, -13, 310, 3122, -3122, 221, 331, 111, 22, 2112, -2112,
           130, 12, -12, 14, -14, 16, -16)
_MAX_DEPTH = 4


def species_rank(pdg: np.ndarray) -> np.ndarray:
    """Canonical rank of each PDG id (unknown species after the known ones, by id)."""
    pdg = np.asarray(pdg, dtype=np.int64)
    rank = np.full(pdg.shape, len(_RANKED), dtype=np.int64) + np.abs(pdg) * 2 + (pdg < 0)
    for i, code in enumerate(_RANKED):
        rank[pdg == code] = i
    return rank


def _mass_of(pdg: np.ndarray) -> np.ndarray:
    apdg = np.abs(np.asarray(pdg, dtype=np.int64))
    out = np.full(apdg.shape, np.nan)
    for code, mass in PDG_MASS.items():
        out[apdg == code] = mass
    if np.isnan(out).any():
        raise ModelError(f"no mass for particle ids {sorted(set(np.asarray(pdg)[np.isnan(out)].tolist()))}")
    return out


def event_offsets(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(event of each row, index of the event's first row)`` of rows grouped by per-event ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.repeat(np.arange(counts.size), counts), starts


def generator_final(truth: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows that the generator left final: its leaves, and those the material later converted or decayed."""
    flags = np.asarray(truth["status_flags"], dtype=np.int64)
    return ((flags & _FROM_GENERATOR) > 0) & ((flags & (_DECAYED_IN_FLIGHT | _LEAF)) > 0)


def _mass(p4: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1), 0.0))


def boost(p4: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Four-momenta ``(..., 4)`` seen from a frame moving with velocity ``beta`` ``(..., 3)`` (a pure boost)."""
    b2 = np.sum(beta**2, axis=-1)
    gamma = 1.0 / np.sqrt(np.maximum(1.0 - b2, 1e-300))
    bp = np.sum(p4[..., 1:] * beta, axis=-1)
    energy = gamma * (p4[..., 0] - bp)
    coef = np.where(b2 > 0, (gamma - 1.0) * bp / np.where(b2 > 0, b2, 1.0), 0.0) - gamma * p4[..., 0]
    return np.concatenate([energy[..., None], p4[..., 1:] + coef[..., None] * beta], axis=-1)


def _velocity(p4: np.ndarray) -> np.ndarray:
    return p4[..., 1:] / p4[..., :1]


def _two_body_momentum(big: np.ndarray, m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
    arg = (big**2 - (m1 + m2) ** 2) * (big**2 - (m1 - m2) ** 2)
    return np.sqrt(np.maximum(arg, 0.0)) / (2.0 * np.maximum(big, 1e-300))


@dataclass(frozen=True)
class _Node:
    pdg: int  # 0 for the event's root system
    parent: int  # node index, -1 for the root
    children: tuple[tuple[str, int], ...]  # ("leaf", leaf index) or ("node", node index), canonical order


@dataclass
class Particles:
    """Truth particles of events of one topology, as :meth:`Topology.particles` rebuilds them.

    Attributes:
        leaf_p4: ``(events, leaves, 4)`` lab four-momenta (E, px, py, pz) of the final particles.
        leaf_vertex: ``(events, leaves, 3)`` production vertices (cm).
        node_p4: ``(events, nodes, 4)`` four-momenta of the nodes (node 0: the whole system).
        node_vertex: ``(events, nodes, 3)`` production vertices of the nodes (node 0: the primary vertex).
    """

    leaf_p4: np.ndarray
    leaf_vertex: np.ndarray
    node_p4: np.ndarray
    node_vertex: np.ndarray


@dataclass(frozen=True)
class Topology:
    """One decay-tree topology: its leaves' species and nodes, and its exact coordinates.

    Attributes:
        key: canonical text, e.g. ``[211,-211,111[22,22]]`` (a node's children in brackets).
        leaves: PDG id of each final particle, in canonical order.
        nodes: the tree (node 0 is the root system).
        names: the name of every coordinate.
    """

    key: str
    leaves: tuple[int, ...]
    nodes: tuple[_Node, ...]
    names: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, key: str) -> Topology:
        """The topology of a canonical key (inverse of :attr:`key`).

        Args:
            key: e.g. ``[11,-11,22]`` or ``[321,-211,310[211,-211]]``.
        """
        leaves: list[int] = []
        nodes: list[_Node] = []
        pos = 0

        def node(pdg: int, parent: int) -> int:
            nonlocal pos
            if key[pos] != "[":
                raise ModelError(f"topology {key!r}: '[' expected at {pos}")
            pos += 1
            index = len(nodes)
            nodes.append(_Node(pdg, parent, ()))
            children: list[tuple[str, int]] = []
            while key[pos] != "]":
                end = pos
                while end < len(key) and (key[end].isdigit() or key[end] == "-"):
                    end += 1
                code = int(key[pos:end])
                pos = end
                if pos < len(key) and key[pos] == "[":
                    children.append(("node", node(code, index)))
                else:
                    children.append(("leaf", len(leaves)))
                    leaves.append(code)
                if key[pos] == ",":
                    pos += 1
            pos += 1
            if len(children) < 1 or (index > 0 and len(children) < 2):
                raise ModelError(f"topology {key!r}: a resonance needs two or more children")
            nodes[index] = _Node(pdg, parent, tuple(children))
            return index

        try:
            node(0, -1)
        except (IndexError, ValueError):
            raise ModelError(f"topology {key!r} is not a valid key") from None
        if pos != len(key):
            raise ModelError(f"topology {key!r}: text after the root")
        return cls(key, tuple(leaves), tuple(nodes), _coordinate_names(tuple(nodes)))

    @property
    def n_coordinates(self) -> int:
        return len(self.names)

    def _leaf_masses(self) -> np.ndarray:
        return _mass_of(np.asarray(self.leaves))

    # --- forward: particles -> coordinates --------------------------------------------------------------------
    def coordinates(self, leaf_p4: np.ndarray, leaf_vertex: np.ndarray, node_vertex: np.ndarray) -> np.ndarray:
        """Coordinates ``(events, n_coordinates)`` of events of this topology.

        Args:
            leaf_p4: ``(events, leaves, 4)`` lab four-momenta in canonical order.
            leaf_vertex: ``(events, leaves, 3)`` production vertices.
            node_vertex: ``(events, nodes, 3)`` production vertices of the nodes (node 0: the primary vertex).
        """
        n = leaf_p4.shape[0]
        node_p4 = np.zeros((n, len(self.nodes), 4))
        for i in reversed(range(len(self.nodes))):  # children after their parents: sum bottom-up
            for kind, j in self.nodes[i].children:
                node_p4[:, i] += leaf_p4[:, j] if kind == "leaf" else node_p4[:, j]
        cols: list[np.ndarray] = [_mass(node_p4[:, 0]), *(node_p4[:, 0, k] for k in (1, 2, 3)),
                                  *(node_vertex[:, 0, k] for k in range(3))]
        origin: dict[int, np.ndarray | None] = {0: None}  # the system each node was split from
        for i, nd in enumerate(self.nodes):
            children = [leaf_p4[:, j] if kind == "leaf" else node_p4[:, j] for kind, j in nd.children]
            masses = [_mass(c) for c in children]
            if i > 0:
                decay = self._decay_vertex(i, leaf_vertex, node_vertex)
                direction = node_p4[:, i, 1:] / np.linalg.norm(node_p4[:, i, 1:], axis=1, keepdims=True)
                cols += [_mass(node_p4[:, i]), np.sum((decay - node_vertex[:, i]) * direction, axis=1)]
            system, parent = node_p4[:, i], origin[i]
            for j in range(len(children)):
                kind, idx = nd.children[j]
                if kind == "node":
                    origin[idx] = system if j < len(children) - 1 else parent
                if j == len(children) - 1:
                    break
                e1, e2, e3 = _helicity_frame(system, parent)
                rest_frame = boost(children[j], _velocity(system))[:, 1:]
                p_star = np.maximum(np.linalg.norm(rest_frame, axis=1), 1e-300)
                cols += [np.sum(rest_frame * e3, axis=1) / p_star,
                         np.arctan2(np.sum(rest_frame * e2, axis=1), np.sum(rest_frame * e1, axis=1))]
                rest = system - children[j]
                if j < len(children) - 2:
                    lo = np.sum(masses[j + 1:], axis=0)
                    hi = _mass(system) - masses[j]
                    cols.append(np.clip((_mass(rest) - lo) / np.maximum(hi - lo, 1e-300), 0.0, 1.0))
                system, parent = rest, system
        return np.stack(cols, axis=1)

    def _decay_vertex(self, i: int, leaf_vertex: np.ndarray, node_vertex: np.ndarray) -> np.ndarray:
        kind, j = self.nodes[i].children[0]
        return leaf_vertex[:, j] if kind == "leaf" else node_vertex[:, j]

    # --- inverse: coordinates -> particles ---------------------------------------------------------------------
    def particles(self, coords: np.ndarray) -> Particles:
        """Particles of events from their coordinates (inverse of :meth:`coordinates`).

        Args:
            coords: ``(events, n_coordinates)``.
        """
        n = coords.shape[0]
        if coords.shape[1] != self.n_coordinates:
            raise ModelError(f"topology {self.key} has {self.n_coordinates} coordinates, not {coords.shape[1]}")
        leaf_mass = self._leaf_masses()
        leaf_p4 = np.zeros((n, len(self.leaves), 4))
        leaf_vertex = np.zeros((n, len(self.leaves), 3))
        node_p4 = np.zeros((n, len(self.nodes), 4))
        node_vertex = np.zeros((n, len(self.nodes), 3))
        col = iter(coords.T)
        m_sys = np.maximum(next(col), 0.0)
        p_sys = np.stack([next(col), next(col), next(col)], axis=1)
        node_p4[:, 0] = np.concatenate([np.sqrt(m_sys**2 + np.sum(p_sys**2, axis=1))[:, None], p_sys], axis=1)
        node_vertex[:, 0] = np.stack([next(col), next(col), next(col)], axis=1)
        node_mass = np.zeros((n, len(self.nodes)))
        node_mass[:, 0] = m_sys
        node_length = np.zeros((n, len(self.nodes)))
        # per node in depth-first order: its mass and decay length, then its chain; a node's own mass is read
        # before its parent's chain needs it, so read everything first
        chain_cols: list[list[np.ndarray]] = []
        for i, nd in enumerate(self.nodes):
            if i > 0:
                node_mass[:, i] = np.maximum(next(col), 0.0)
                node_length[:, i] = next(col)
            k = len(nd.children)
            chain_cols.append([next(col) for _ in range(max(3 * (k - 1) - 1, 0))])
        origin: dict[int, np.ndarray | None] = {0: None}
        for i, nd in enumerate(self.nodes):
            masses = [np.full(n, leaf_mass[j]) if kind == "leaf" else node_mass[:, j] for kind, j in nd.children]
            if i == 0:
                decay = node_vertex[:, 0]
            else:
                p = node_p4[:, i, 1:]
                direction = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-300)
                decay = node_vertex[:, i] + node_length[:, i, None] * direction
            system, parent = node_p4[:, i], origin[i]
            values = iter(chain_cols[i])
            k = len(masses)
            for j in range(k):
                kind, idx = nd.children[j]
                if j < k - 1:
                    cos_t, phi = np.clip(next(values), -1.0, 1.0), next(values)
                    m_sys_now = _mass(system)
                    if j < k - 2:
                        lo = np.sum(masses[j + 1:], axis=0)
                        hi = m_sys_now - masses[j]
                        m_rest = lo + np.clip(next(values), 0.0, 1.0) * np.maximum(hi - lo, 0.0)
                    else:
                        m_rest = masses[j + 1]
                    p_star = _two_body_momentum(m_sys_now, masses[j], m_rest)
                    sin_t = np.sqrt(np.maximum(1.0 - cos_t**2, 0.0))
                    e1, e2, e3 = _helicity_frame(system, parent)
                    vec = p_star[:, None] * (sin_t[:, None] * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
                                             + cos_t[:, None] * e3)
                    rest_frame = np.concatenate([np.sqrt(p_star**2 + masses[j] ** 2)[:, None], vec], axis=1)
                    child = boost(rest_frame, -_velocity(system))
                    if kind == "node":
                        origin[idx] = system
                    system, parent = system - child, system
                else:
                    child = system
                    if kind == "node":
                        origin[idx] = parent
                if kind == "leaf":
                    leaf_p4[:, idx] = child
                    leaf_vertex[:, idx] = decay
                else:
                    node_p4[:, idx] = child
                    node_vertex[:, idx] = decay
        return Particles(leaf_p4, leaf_vertex, node_p4, node_vertex)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)


def _helicity_frame(system: np.ndarray, parent: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Orthonormal axes in the rest frame of ``system``: ``e3`` opposite to the system it came from (``parent``; the
    beam axis for the root), ``e1`` towards the beam (towards +x for the root), ``e2 = e3 x e1``.

    The angle to ``e3`` is the helicity angle, fixed by invariant masses: a resonance band of a Dalitz plot is a
    line in (mass, cos θ*) -- what a flow learns easily -- and both axes are computed in the same frame as the
    child's momentum, so the map is exactly invertible.
    """
    n = system.shape[0]
    beta = _velocity(system)
    beam = boost(np.broadcast_to(np.array([1.0, 0.0, 0.0, 1.0]), (n, 4)), beta)[:, 1:]
    if parent is None:
        e3 = _unit(beam)
        ref = boost(np.broadcast_to(np.array([1.0, 1.0, 0.0, 0.0]), (n, 4)), beta)[:, 1:]
    else:
        e3 = -_unit(boost(parent, beta)[:, 1:])
        ref = beam
    e1 = ref - np.sum(ref * e3, axis=1, keepdims=True) * e3
    norm = np.linalg.norm(e1, axis=1, keepdims=True)
    # a system flying along the beam: any perpendicular reference will do
    fallback = np.cross(e3, np.array([0.0, 1.0, 0.0]))
    e1 = np.where(norm > 1e-9, e1 / np.maximum(norm, 1e-300), _unit(fallback))
    return e1, np.cross(e3, e1), e3


def _coordinate_names(nodes: tuple[_Node, ...]) -> tuple[str, ...]:
    names = ["system.mass", "system.px", "system.py", "system.pz", "vertex.x", "vertex.y", "vertex.z"]
    for i, nd in enumerate(nodes):
        if i > 0:
            names += [f"node{i}.mass", f"node{i}.decay_length"]
        k = len(nd.children)
        for j in range(k - 1):
            names += [f"node{i}.child{j}.cos_theta", f"node{i}.child{j}.phi"]
            if j < k - 2:
                names.append(f"node{i}.rest{j + 1}.mass_fraction")
    return tuple(names)


@dataclass
class Decomposition:
    """The events of a batch, decomposed by topology.

    Attributes:
        topologies: every topology met, most frequent first.
        events: per topology, the indices of its events in the batch.
        coordinates: per topology, ``(events, n_coordinates)``.
        leaf_p4: per topology, ``(events, leaves, 4)`` (what the coordinates encode, for checks).
        leaf_rows: per topology, ``(events, leaves)`` row of each leaf in the batch's truth table.
        soft_photons: number of generator photons below the threshold, per event.
    """

    topologies: list[Topology]
    events: list[np.ndarray]
    coordinates: list[np.ndarray]
    leaf_p4: list[np.ndarray]
    leaf_rows: list[np.ndarray]
    soft_photons: np.ndarray


def _narrow_ancestor(node_row: np.ndarray, mother: np.ndarray, start: np.ndarray) -> np.ndarray:
    """For each row in ``start``, its nearest ancestor that is a narrow node (``node_row``), or -1."""
    current = mother[start]
    found = np.full(start.size, -1, dtype=np.int64)
    for _ in range(64):
        live = (current >= 0) & (found < 0)
        if not live.any():
            break
        hit = live & node_row[np.maximum(current, 0)]
        found[hit] = current[hit]
        current = np.where(live & ~hit, mother[np.maximum(current, 0)], -1)
    return found


def decompose(tables: Mapping[str, Mapping[str, np.ndarray]], soft_photon: float = 0.005) -> Decomposition:
    """Topologies and coordinates of the generator final state of every event of ``tables``.

    Args:
        tables: event tables with ``events`` (``n_truth``) and ``truth`` (with BOSS ``status_flags``).
        soft_photon: photons below this energy (GeV) are left in the system's recoil.

    Raises:
        ModelError: an event without final particles, or a tree deeper than four narrow resonances.
    """
    events, truth = tables["events"], tables["truth"]
    n_events = int(len(events["n_truth"]))
    event_of, starts = event_offsets(events["n_truth"])
    pdg = np.asarray(truth["pdg"], dtype=np.int64)
    mother = np.asarray(truth["mother"], dtype=np.int64)
    mother_row = np.where(mother >= 0, mother + starts[event_of], -1)
    energy = np.asarray(truth["e"], dtype=np.float64)
    flags = np.asarray(truth["status_flags"], dtype=np.int64)
    final = generator_final(truth)
    node_row = ((flags & _FROM_GENERATOR) > 0) & np.isin(pdg, list(NARROW)) & ~final
    # soft radiation of the root system (FSR): a narrow resonance's photons are kept, its mass is exact
    soft = final & (pdg == 22) & (energy < soft_photon)
    soft[soft] = _narrow_ancestor(node_row, mother_row, np.flatnonzero(soft)) < 0
    leaf = final & ~soft
    # path of narrow ancestors of every leaf, innermost first
    leaves = np.flatnonzero(leaf)
    chain = [leaves]
    level = leaves
    for _ in range(_MAX_DEPTH + 1):
        level = _narrow_ancestor(node_row, mother_row, level)
        if (level < 0).all():
            break
        chain.append(level)
        level = np.where(level >= 0, level, 0)
    else:
        raise ModelError(f"decay trees deeper than {_MAX_DEPTH} narrow resonances are not supported")
    # ancestors outermost first: a leaf's path from the root down to itself
    depth = len(chain)
    path = np.full((leaves.size, depth), -1, dtype=np.int64)
    for lv in range(depth):
        path[:, lv] = chain[lv]
    path = np.where(np.cumprod(path >= 0, axis=1).astype(bool), path, -1)
    ordered = np.full_like(path, -1)
    for r in range(leaves.size):  # right-align the valid entries (outermost first)
        valid = path[r][path[r] >= 0]
        ordered[r, : valid.size] = valid[::-1]
    # sort keys per level: species rank and negative energy of the ancestor (or leaf) at that level
    keys: list[np.ndarray] = []
    for lv in reversed(range(depth)):
        rows = ordered[:, lv]
        ok = rows >= 0
        keys.append(np.where(ok, -energy[np.maximum(rows, 0)], 0.0))
        keys.append(np.where(ok, species_rank(pdg[np.maximum(rows, 0)]), -1))
    keys.append(event_of[leaves])
    order = np.lexsort(keys)
    leaves, ordered = leaves[order], ordered[order]
    leaf_event = event_of[leaves]
    n_leaves = np.bincount(leaf_event, minlength=n_events)
    if (n_leaves == 0).any():
        raise ModelError(f"{int((n_leaves == 0).sum())} events have no generator final particles (truth status "
                         "flags without BOSS's 'from generator' bit? regenerate with this version of vbes)")
    # topology key per event: its leaves' paths of species, with the instance of each node among its siblings
    keys_text = _topology_keys(ordered, pdg, leaf_event, n_events)
    uniq, inverse, counts = np.unique(keys_text, return_inverse=True, return_counts=True)
    rank = np.argsort(-counts, kind="stable")
    topologies, ev_lists, coords, p4s, rows_list = [], [], [], [], []
    leaf_start = np.cumsum(n_leaves) - n_leaves
    for t in rank:
        top = Topology.parse(str(uniq[t]))
        ev = np.flatnonzero(inverse == t)
        n_l = len(top.leaves)
        rows = leaves[leaf_start[ev][:, None] + np.arange(n_l)[None, :]]
        p4 = np.stack([energy[rows], *(np.asarray(truth[c], dtype=np.float64)[rows] for c in ("px", "py", "pz"))],
                      axis=2)
        vtx = np.stack([np.asarray(truth[c], dtype=np.float64)[rows] for c in ("vx", "vy", "vz")], axis=2)
        node_vtx = _node_vertices(top, ordered[leaf_start[ev][:, None] + np.arange(n_l)[None, :]], truth, vtx)
        topologies.append(top)
        ev_lists.append(ev)
        coords.append(top.coordinates(p4, vtx, node_vtx))
        p4s.append(p4)
        rows_list.append(rows)
    return Decomposition(topologies, ev_lists, coords, p4s, rows_list, np.bincount(event_of[soft], minlength=n_events))


def _node_vertices(top: Topology, paths: np.ndarray, truth: Mapping[str, np.ndarray], leaf_vtx: np.ndarray) -> np.ndarray:
    """``(events, nodes, 3)`` production vertices of a topology's nodes (node 0: where the root's children start)."""
    n = paths.shape[0]
    out = np.zeros((n, len(top.nodes), 3))
    vertex = np.stack([np.asarray(truth[c], dtype=np.float64) for c in ("vx", "vy", "vz")], axis=1)
    # the primary vertex: production point of the root's first child
    kind, j = top.nodes[0].children[0]
    if kind == "leaf":
        out[:, 0] = leaf_vtx[:, j]
    # every narrow node's own truth row: the leaf paths name it at the node's depth
    for i in range(1, len(top.nodes)):
        leaf_index, depth = _first_leaf_under(top, i)
        rows = paths[:, leaf_index, depth]
        out[:, i] = vertex[rows]
    if kind == "node":
        out[:, 0] = out[:, j]
    return out


def _first_leaf_under(top: Topology, node: int) -> tuple[int, int]:
    """(a leaf below ``node``, the depth of ``node`` in that leaf's path from the root)."""
    depth = 0
    i = node
    while top.nodes[i].parent > 0:
        i = top.nodes[i].parent
        depth += 1
    current = node
    while True:
        kind, j = top.nodes[current].children[0]
        if kind == "leaf":
            return j, depth
        current = j


def _topology_keys(paths: np.ndarray, pdg: np.ndarray, leaf_event: np.ndarray, n_events: int) -> np.ndarray:
    """Canonical key of every event from its leaves' ancestor paths (outermost first), leaves in canonical order."""
    out = np.empty(n_events, dtype=object)
    bounds = np.searchsorted(leaf_event, np.arange(n_events + 1))
    species = np.where(paths >= 0, pdg[np.maximum(paths, 0)], 0)
    for e in range(n_events):
        rows = paths[bounds[e]:bounds[e + 1]]
        codes = species[bounds[e]:bounds[e + 1]]
        out[e] = _key_of(rows, codes)
    return out.astype(str)


def _key_of(rows: np.ndarray, codes: np.ndarray) -> str:
    """Key of one event from its leaves' paths (ancestors outermost first, the leaf last; -1 after)."""
    # column 0 stands for the root, so that every leaf or node sits one level below its parent
    padded = np.concatenate([np.full((rows.shape[0], 1), -2), rows], axis=1)
    padded_codes = np.concatenate([np.zeros((codes.shape[0], 1), dtype=codes.dtype), codes], axis=1)
    return _build_key(padded, padded_codes)


def _build_key(rows: np.ndarray, codes: np.ndarray) -> str:
    """Recursive grouping: column 0 is the root; a leaf's own row is its last non-negative entry."""
    n_levels = rows.shape[1]
    last = np.array([int(np.flatnonzero(r >= 0)[-1]) for r in rows])

    def build(members: list[int], level: int) -> str:
        parts: list[str] = []
        i = 0
        while i < len(members):
            r = members[i]
            if last[r] == level + 1 or level + 1 >= n_levels:
                parts.append(str(int(codes[r, last[r]])))
                i += 1
                continue
            node = rows[r, level + 1]
            group = [r]
            i += 1
            while i < len(members) and last[members[i]] > level + 1 and rows[members[i], level + 1] == node:
                group.append(members[i])
                i += 1
            parts.append(f"{int(codes[r, level + 1])}{build(group, level + 1)}")
        return "[" + ",".join(parts) + "]"

    return build(list(range(rows.shape[0])), 0)
