"""Truth kinematics as exact coordinates: round trips on the reference chain's events, exact four-momentum
conservation, resonance masses as atoms at their PDG values, and helicity angles that carry the known angular
laws of e+e- -> J/psi -> two bodies (1 + alpha cos^2 theta: alpha = 1 for leptons, about 0.6 for p pbar)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vbes.datasets import simulate
from vbes.errors import ModelError
from vbes.models.kinematics import NARROW, Topology, decompose

#: PDG 2024 masses (GeV/c^2)
PI0_MASS, KS_MASS, JPSI_MASS = 0.1349768, 0.497611, 3.096900


@pytest.fixture(scope="module")
def samples() -> dict[str, Any]:
    return {ch: simulate(ch, 3000, seed=11 + i) for i, ch in enumerate(("rhopi", "kskpi", "ee", "mumu", "ppbar"))}


@pytest.mark.parametrize("channel", ["rhopi", "kskpi", "ee", "mumu", "ppbar"])
def test_coordinates_give_back_the_particles(samples: dict[str, Any], channel: str) -> None:
    d = decompose(samples[channel])
    assert sum(len(e) for e in d.events) == 3000  # every event has a topology
    for top, coords, p4 in zip(d.topologies, d.coordinates, d.leaf_p4):
        back = top.particles(coords)
        # keV: the model uses PDG masses, the generator its own (differences below 1e-6 GeV/c^2)
        np.testing.assert_allclose(back.leaf_p4, p4, atol=2e-5)
        # four-momentum is conserved exactly at the root: the leaves add up to the system
        np.testing.assert_allclose(back.leaf_p4.sum(axis=1), back.node_p4[:, 0], atol=1e-9)


def test_resonance_masses_are_atoms_at_their_pdg_values(samples: dict[str, Any]) -> None:
    for channel, pdg, mass in (("rhopi", 111, PI0_MASS), ("kskpi", 310, KS_MASS)):
        d = decompose(samples[channel])
        for top, coords in zip(d.topologies, d.coordinates):
            for i, node in enumerate(top.nodes):
                if node.pdg == pdg:
                    values = coords[:, top.names.index(f"node{i}.mass")]
                    # one value (an atom), within Pythia's rounding of the PDG mass (0.13498 for the pi0)
                    assert values.std() < 1e-9
                    np.testing.assert_allclose(values, mass, atol=5e-6)
    # the whole event of a channel without lost radiation is the J/psi
    d = decompose(samples["ppbar"])
    np.testing.assert_allclose(d.coordinates[0][:, 0], JPSI_MASS, atol=1e-5)


def _alpha(cos_theta: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood alpha of 1 + alpha cos^2 theta (full range), with its error."""
    grid = np.linspace(-0.5, 2.0, 2501)
    ll = np.array([np.sum(np.log1p(a * cos_theta**2)) - cos_theta.size * np.log(2 + 2 * a / 3) for a in grid])
    best = int(np.argmax(ll))
    curvature = (ll[best + 1] - 2 * ll[best] + ll[best - 1]) / (grid[1] - grid[0]) ** 2
    return float(grid[best]), float(1 / np.sqrt(-curvature))


@pytest.mark.parametrize("channel,alpha", [("mumu", 1.0), ("ppbar", 0.6)])
def test_the_root_helicity_angle_carries_the_published_angular_law(samples: dict[str, Any], channel: str,
                                                                   alpha: float) -> None:
    d = decompose(samples[channel])
    top = d.topologies[0]
    assert len(top.leaves) == 2  # the radiation-free final state
    fitted, error = _alpha(d.coordinates[0][:, top.names.index("node0.child0.cos_theta")])
    assert abs(fitted - alpha) < 4 * error + 0.05


def test_topology_keys_parse_and_bad_keys_are_refused() -> None:
    top = Topology.parse("[321,-211,310[111[22,22],111[22,22]]]")
    assert top.leaves == (321, -211, 22, 22, 22, 22) and len(top.nodes) == 4
    assert all(n.pdg in NARROW for n in top.nodes[1:])
    # system and vertex 7; the root's chain of three children 5; K_S and each pi0: mass, length and two angles
    assert top.n_coordinates == len(top.names) == 7 + 5 + 3 * 4
    for bad in ("211,-211", "[211,111[22]]", "[211,-211"):
        with pytest.raises(ModelError):
            Topology.parse(bad)
