"""Throughput of reference-sample generation: J/ψ → ρπ through Pythia 8 and the detector response.

Prints, measured in the same run:

* baseline: Pythia 8 alone, one J/ψ per ``next()`` call with the particles read out (the conventional loop;
  MACHINE-NOTES quotes ≈ 75,000 ρπ/s on one core here);
* our batched Pythia generation (angular laws, boost, beam spot) on one core;
* the detector response alone on one core;
* generation + detector response on 2 worker processes (target ≥ 20,000 events/s), and its ratio to the
  baseline; the same with the material effects off (``material=False``), for their cost.

Run: ``python benchmarks/bench_generate.py [N_EVENTS]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from vbes.datasets.detector import default_constants, simulate_detector
from vbes.datasets.generator import JPSI_MASS, JpsiGenerator
from vbes.datasets.simulation import simulate

TARGET = 20_000.0


def pythia_alone(n_events: int) -> float:
    """Events/s of plain Pythia: one J/ψ → ρπ decayed per next() call, final particles extracted."""
    import pythia8mc

    pythia = pythia8mc.Pythia("", False)
    for line in ("ProcessLevel:all = off", "Print:quiet = on", "443:onMode = off", "443:onIfMatch = 113 111",
                 "443:onIfMatch = 213 -211", "443:onIfMatch = -213 211"):
        pythia.readString(line)
    pythia.init()
    event = pythia.event
    t0 = time.perf_counter()
    for _ in range(n_events):
        event.reset()
        event.append(443, 1, 0, 0, 0.0, 0.0, 0.0, JPSI_MASS, JPSI_MASS)
        pythia.next()
        _ = [(p.id(), p.px(), p.py(), p.pz(), p.e()) for p in event.particles() if p.isFinal()]
    return n_events / (time.perf_counter() - t0)


def main() -> None:
    n_events = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    baseline = pythia_alone(min(n_events, 100_000))

    generator = JpsiGenerator("rhopi", seed=1)
    generator.generate(1000)  # initialise Pythia outside the timing
    t0 = time.perf_counter()
    truth = generator.generate(n_events // 2)
    gen_rate = (n_events // 2) / (time.perf_counter() - t0)

    constants = default_constants()
    t0 = time.perf_counter()
    simulate_detector(truth, constants, np.random.default_rng(1))
    det_rate = (n_events // 2) / (time.perf_counter() - t0)

    simulate("rhopi", 2000, seed=2, workers=1)  # warm imports
    t0 = time.perf_counter()
    simulate("rhopi", n_events, runs=(-10000, -9001), seed=3, workers=2)
    full_rate = n_events / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    simulate("rhopi", n_events, runs=(-10000, -9001), seed=3, workers=2, material=False)
    plain_rate = n_events / (time.perf_counter() - t0)

    print(f"J/psi -> rho pi, {n_events} events")
    print(f"  baseline: Pythia alone, 1 J/psi per next(), 1 core : {baseline:10,.0f} events/s")
    print(f"  batched generation (angular laws, boost), 1 core  : {gen_rate:10,.0f} events/s "
          f"({gen_rate / baseline:.2f} x baseline)")
    print(f"  detector response alone, 1 core                   : {det_rate:10,.0f} events/s")
    print(f"  generation + detector response, 2 workers         : {full_rate:10,.0f} events/s "
          f"({full_rate / baseline:.2f} x baseline, {full_rate / TARGET:.2f} x the 20,000/s target)")
    print(f"  the same without the material effects, 2 workers  : {plain_rate:10,.0f} events/s "
          f"(material effects cost {plain_rate / full_rate - 1:.0%})")


if __name__ == "__main__":
    main()
