"""The event-level surrogate: whole reconstructed BESIII events for a channel and a run period, drawn in seconds.

An event is drawn in two learned steps, the way nature and the detector make it:

1. **the generator's final state** (:mod:`vbes.models.kinematics`): a decay topology from its learned frequency in
   the channel (so multiplicities are learned, not fixed by hand), then the topology's exact coordinates -- the
   system's mass and momentum, the primary vertex, every narrow resonance's mass and flight length, and each node's
   chain of two-body splittings -- from a conditional table (quantile maps per topology + a RealNVP flow). Four-
   momentum is conserved exactly at every node, the π0, K_S and J/ψ masses are atoms of their own coordinates;
2. **the detector's response** to every final particle (:class:`vbes.models.response.DetectorResponse`): tracks,
   showers, noise, with the run period's calibration conditions read from the store.

Both are trained together on reference samples (any mix of channels: one model across channels), the response
also on particle guns when the configuration names them. The truth of every drawn event is written beside its
reconstruction (``truth`` table: the root system, its narrow resonances, the final particles; ``truth_index`` links
objects to them), like the reference chain's files.

Topologies rarer than ``min_topology_fraction`` of their channel are not modelled; the card says which share of
each channel that leaves out. Soft photons below ``soft_photon`` GeV are not drawn one by one (their four-momentum
stays in the system's recoil). The inclusive channel's hundreds of topologies are out of its scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vbes.datasets.schema import CHANNELS
from vbes.errors import InvalidInput, ModelError
from vbes.models.base import ModelFamily, Tables, register_family
from vbes.models.conditions import Conditions, varying_keys
from vbes.models.kinematics import Topology, decompose
from vbes.models.response import (
    DetectorResponse,
    build_response,
    objects_table,
    particle_batch,
    response_config,
    response_records,
    training_conditions,
    used_periods,
)
from vbes.models.tabular import ConditionalTable

__all__ = ["EventSurrogate", "TruthModel"]

_N_CHANNELS = max(CHANNELS.values()) + 1
_CHANNEL_NAMES = {v: k for k, v in CHANNELS.items()}
_JPSI = 443


class TruthModel(torch.nn.Module):
    """``p(topology, coordinates | channel)``: one conditional table, topology first, quantile maps per topology.

    Args:
        topologies: canonical keys (:class:`vbes.models.kinematics.Topology`).
        hidden, transforms, knots: the table's networks and quantile maps.
    """

    def __init__(self, topologies: list[str], channels: list[list[int]], hidden: list[int], transforms: int,
                 knots: int) -> None:
        super().__init__()
        self.topologies = [Topology.parse(k) for k in topologies]
        # which channel may draw which topology: the others have probability zero, exactly
        self.allowed_by_channel = np.zeros((_N_CHANNELS, max(len(topologies), 1)), dtype=bool)
        for t, chans in enumerate(channels):
            self.allowed_by_channel[chans, t] = True
        self.width = max((t.n_coordinates for t in self.topologies), default=1)
        n = max(len(self.topologies), 1)
        self.table = ConditionalTable(self.width, [n], _N_CHANNELS, hidden, transforms, knots, groups=n,
                                      group_by_first=True)

    @staticmethod
    def context(channels: np.ndarray) -> np.ndarray:
        out = np.zeros((len(channels), _N_CHANNELS))
        out[np.arange(len(channels)), np.asarray(channels, dtype=np.int64)] = 1.0
        return out

    def rows(self, coords: list[np.ndarray], codes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Padded coordinates and topology codes of per-topology coordinate arrays."""
        values = np.full((sum(c.shape[0] for c in coords), self.width), np.nan)
        top = np.zeros(values.shape[0], dtype=np.int64)
        start = 0
        for c, code in zip(coords, codes):
            values[start:start + c.shape[0], : c.shape[1]] = c
            top[start:start + c.shape[0]] = code
            start += c.shape[0]
        return values, top[:, None]

    def allowed(self, channels: np.ndarray) -> torch.Tensor:
        """``(rows, topologies)``: the topologies each row's channel may take."""
        return torch.as_tensor(self.allowed_by_channel[np.asarray(channels, dtype=np.int64)])

    def sample(self, channels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """``(topology code, padded coordinates)`` of one event per channel code."""
        values, codes = self.table.sample(torch.as_tensor(self.context(channels)), seed=seed,
                                          allowed=self.allowed(channels))
        return codes.numpy()[:, 0], values.numpy()


@register_family
class EventSurrogate(ModelFamily):
    """Whole reconstructed events given a channel and run-period conditions (see the module docstring).

    ``sample(n, {"channel": "rhopi", "runs": (first, last), "conditions": Conditions})`` returns event tables
    (events, tracks, showers, truth) in the layout of :mod:`vbes.datasets.schema`.

    Args:
        config: ``truth_hidden``, ``truth_transforms``, ``truth_knots`` (the truth table), ``soft_photon`` (GeV),
            ``min_topology_fraction``, and the response's keys (:func:`vbes.models.response.response_config`);
            ``topologies`` and the response's derived keys are set from the training data. ``response_model``
            (a saved model folder, or ``models:/NAME@ALIAS`` in a training configuration) takes the detector
            response from a trained ``detector_response`` model: only the truth is trained, the response's weights
            are copied in (the saved model is self-contained).
    """

    family = "event_surrogate"
    capabilities = frozenset({"sample", "log_prob"})
    needs_conditions = True

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.truth: TruthModel | None = None
        self.response: DetectorResponse | None = None
        if self.config["topologies"] is not None:
            self._build()
        self.card.inputs = [{"name": "channel", "dtype": "<i2", "unit": "", "kind": "class"},
                            {"name": "run", "dtype": "<i4", "unit": "", "kind": "integer"}]
        self.card.outputs = [{"name": t, "kind": "table"} for t in ("events", "tracks", "showers", "truth")]

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {**response_config(), "truth_hidden": [128, 128], "truth_transforms": 8, "truth_knots": 1024,
                "soft_photon": 0.005, "min_topology_fraction": 0.002, "topologies": None,
                "topology_channels": None, "seed": 0, "response_model": None}

    def _build(self) -> None:
        self.truth = TruthModel(list(self.config["topologies"]), list(self.config["topology_channels"]),
                                [int(h) for h in self.config["truth_hidden"]], int(self.config["truth_transforms"]),
                                int(self.config["truth_knots"]))
        self.response = build_response(self.config)

    def _parts(self) -> tuple[TruthModel, DetectorResponse]:
        if self.truth is None or self.response is None:
            raise ModelError(f"family {self.family}: fit_preprocessing has not run (no networks yet)")
        return self.truth, self.response

    # --- training ----------------------------------------------------------------------------------------------
    def _decomposed(self, tables: Tables) -> tuple[list[np.ndarray], list[int], np.ndarray, dict[str, Any]]:
        """Truth rows of the modelled topologies: coordinates per topology, topology codes, their events' channels,
        and per channel the share of events left out."""
        events = tables["events"]
        channel = np.asarray(events["channel"], dtype=np.int64)
        d = decompose(tables, float(self.config["soft_photon"]))
        known = {k: i for i, k in enumerate(self.config["topologies"] or [])}
        coords, codes, chans = [], [], []
        modelled = np.zeros(channel.size, bool)
        for top, ev, co in zip(d.topologies, d.events, d.coordinates):
            if top.key not in known:
                continue
            allowed = np.isin(channel[ev], self.config["topology_channels"][known[top.key]])
            coords.append(co[allowed])
            codes.append(known[top.key])
            chans.append(channel[ev][allowed])
            modelled[ev[allowed]] = True
        left_out = {}
        for c in np.unique(channel):
            sel = channel == c
            left_out[_CHANNEL_NAMES.get(int(c), str(c))] = float(1.0 - modelled[sel].mean())
        return coords, codes, np.concatenate(chans) if chans else np.zeros(0, np.int64), left_out

    def fit_preprocessing(self, tables: Tables) -> None:
        events = tables["events"]
        conditions = used_periods(training_conditions(self, events), events["run"])
        self.conditions = conditions
        channel = np.asarray(events["channel"], dtype=np.int64)
        d = decompose(tables, float(self.config["soft_photon"]))
        # a topology is modelled in the channels where it reaches the minimum share of events
        keys: list[str] = []
        key_channels: list[list[int]] = []
        floor = float(self.config["min_topology_fraction"])
        for top, ev in zip(d.topologies, d.events):
            chans = [int(c) for c in np.unique(channel[ev])
                     if (channel[ev] == c).sum() >= max(floor * (channel == c).sum(), 20)
                     and _CHANNEL_NAMES.get(int(c)) not in ("inclusive", "gun")]
            if chans:
                keys.append(top.key)
                key_channels.append(chans)
        if not keys:
            raise ModelError(f"family {self.family}: no decay topology of the training events is frequent enough")
        self.config["topologies"], self.config["topology_channels"] = keys, key_channels
        records = response_records(tables, conditions)
        trained_response = self._trained_response()
        if trained_response is None:
            self.config["condition_keys"] = varying_keys(conditions.periods)
            self.config["hypotheses"] = [int(h) for h in records.hypotheses]
        with self.seeded():
            self._build()
        truth, response = self._parts()
        coords, codes, _chans, left_out = self._decomposed(tables)
        values, top_codes = truth.rows(coords, codes)
        truth.table.fit(values, top_codes)
        if trained_response is None:
            response.fit(records, conditions)
        else:
            # a registered response model is the detector: its weights are taken as they are and not trained
            response.load_state_dict(trained_response.state_dict())
            response.requires_grad_(False)
        self.card.conditions = [{"name": "channel", "values": dict(CHANNELS)}] + [
            {"name": k, "source": "calibration store, by tag and run"} for k in self.config["condition_keys"]]
        channels_seen = sorted({_CHANNEL_NAMES[c] for cs in key_channels for c in cs})
        self.card.training_domain = {
            "channels": channels_seen,
            "topologies": {k: [_CHANNEL_NAMES[c] for c in cs] for k, cs in zip(keys, key_channels)},
            "events_not_modelled": left_out,
            "particles": len(records.particles),
            "conditions": conditions.as_dict(),
        }
        self.card.notes = [
            f"topologies below {floor:.3%} of a channel's events are not modelled (share left out per channel: "
            f"events_not_modelled); photons below {float(self.config['soft_photon']) * 1e3:.0f} MeV from the root "
            "system (FSR) are not drawn one by one",
            "derived reconstructed fields are computed with the reconstruction's formulas and the run's payloads",
        ]
        if trained_response is not None:
            self.card.notes.append(f"detector response taken from {self.config['response_model']} (its weights as "
                                   "they were, not trained with this model)")
            self.card.training_domain["response_model"] = {"source": str(self.config["response_model"]),
                                                           "card": self._response_card}

    def _trained_response(self) -> DetectorResponse | None:
        """The response of the saved model named by ``response_model`` (its configuration copied into this one's),
        or ``None`` when the response is trained here."""
        source = self.config.get("response_model")
        if not source:
            return None
        from vbes.models.base import load

        donor = load(source)
        response = getattr(donor, "response", None)
        if not isinstance(response, DetectorResponse):
            raise ModelError(f"response_model {source}: a {donor.family} model holds no detector response")
        for key in response_config():
            self.config[key] = donor.config[key]
        self._response_card = donor.card.to_dict()
        return response

    @property
    def frozen_response(self) -> bool:
        """Whether the response comes from another model (and is not trained here)."""
        return bool(self.config.get("response_model"))

    def on_load(self) -> None:
        stored = self.card.training_domain.get("conditions")
        if stored:
            self.conditions = Conditions.from_periods(stored["periods"], stored["ranges"])

    def make_tensors(self, tables: Tables) -> dict[str, dict[str, torch.Tensor]]:
        truth, response = self._parts()
        conditions = training_conditions(self, tables["events"])
        rng = np.random.default_rng(int(self.config["seed"]))
        coords, codes, chans, _left = self._decomposed(tables)
        values, top_codes = truth.rows(coords, codes)
        out = {"truth": {**truth.table.encode(values, top_codes, truth.context(chans), rng),
                         "allowed": truth.allowed(chans)}}
        if not self.frozen_response:
            records = response_records(tables, conditions, np.asarray(response.hypotheses))
            out.update(response.tensors(records, conditions, rng))
        return out

    def loss(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        truth, response = self._parts()
        terms = response.loss_terms(batch)
        terms["truth"] = -truth.table.log_prob(batch["truth"]).mean()
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}

    def log_prob(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Per-row model-space log-likelihoods: the truth rows' (one per event), then the response tables'.

        Args:
            batch: ``{table: rows}`` as :meth:`make_tensors` returns them.
        """
        truth, response = self._parts()
        tables = response.tables()
        parts = [truth.table.log_prob(batch["truth"])]
        parts += [tables[name].log_prob(batch[name]) for name in tables if name in batch]
        return torch.cat(parts)

    # --- sampling ------------------------------------------------------------------------------------------------
    def channels(self) -> list[str]:
        """The channels the model draws."""
        return sorted({_CHANNEL_NAMES[c] for cs in (self.config["topology_channels"] or []) for c in cs})

    def sample_request(self, tables: Tables, n: int) -> dict[str, Any]:
        """Events of the most common modelled channel of ``tables``, over their runs."""
        channel = np.asarray(tables["events"]["channel"], dtype=np.int64)
        modelled = [c for c in channel if _CHANNEL_NAMES.get(int(c)) in self.channels()]
        run = np.asarray(tables["events"]["run"])
        return {"channel": int(np.bincount(modelled).argmax()), "runs": (int(run.min()), int(run.max()))}

    def sample(self, n: int, conditions: Mapping[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
        """``n`` events of a channel.

        Args:
            n: number of events.
            conditions: ``channel`` (name or code), ``runs`` (``(first, last)``: events spread evenly, as the
                reference chain does; default the training runs) or explicit ``run_numbers`` and ``event_numbers``,
                and ``conditions`` (a :class:`Conditions` covering the runs; default the training periods).
            seed: the draw's seed (same request and seed, same arrays).
        """
        from vbes.datasets.simulation import assign_runs

        truth_model, response = self._parts()
        conditions = dict(conditions or {})
        name = conditions.get("channel", "rhopi")
        code = CHANNELS.get(str(name)) if not isinstance(name, (int, np.integer)) else int(name)
        if code is None or _CHANNEL_NAMES.get(code) not in self.channels():
            raise InvalidInput(f"channel {name!r} is not one this model draws ({', '.join(self.channels())})")
        cond: Conditions | None = conditions.get("conditions") or self.conditions
        if cond is None:
            raise ModelError("no calibration conditions: pass the conditions of the runs")
        if conditions.get("run_numbers") is not None:
            run = np.asarray(conditions["run_numbers"], dtype=np.int64)
            event_number = np.asarray(conditions.get("event_numbers", np.arange(n)), dtype=np.int64)
            if run.shape != (n,) or event_number.shape != (n,):
                raise InvalidInput(f"run_numbers and event_numbers must have {n} values")
        else:
            runs = conditions.get("runs") or (cond.ranges[0][0], cond.ranges[-1][1])
            run, event_number = assign_runs(n, int(runs[0]), int(runs[1]))
        seeds = np.random.SeedSequence([int(seed), 0xE7E]).generate_state(2)
        top_code, values = truth_model.sample(np.full(n, code), int(seeds[0]))
        truth, particles_at = self._truth_tables(top_code, values)
        event_period = cond.period_of(run)
        particles = particle_batch(particles_at["pdg"], particles_at["p4"], particles_at["vertex"],
                                   particles_at["event"], particles_at["truth_row"],
                                   event_period[particles_at["event"]], cond)
        reco = response.respond(particles, cond, n, event_period, int(seeds[1]))
        events = {
            "run": run.astype(np.int32), "event": event_number.astype(np.int64),
            "channel": np.full(n, code, np.int16), "n_tracks": reco["n_tracks"], "n_showers": reco["n_showers"],
            "n_truth": truth.pop("n_truth"), "weight": np.ones(n, np.float32),
        }
        return {"events": events, "tracks": reco["tracks"], "showers": reco["showers"], "truth": truth}

    def _truth_tables(self, top_code: np.ndarray, values: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The truth table of drawn events (root, narrow resonances, final particles per event) and the final
        particles to respond to."""
        truth_model, _ = self._parts()
        n = top_code.size
        per_event_rows = np.zeros(n, dtype=np.int64)
        for code, top in enumerate(truth_model.topologies):
            per_event_rows[top_code == code] = len(top.nodes) + len(top.leaves)
        starts = np.cumsum(per_event_rows) - per_event_rows
        total = int(per_event_rows.sum())
        cols = {k: np.zeros(total) for k in ("px", "py", "pz", "e", "vx", "vy", "vz")}
        pdg = np.zeros(total, np.int32)
        mother = np.full(total, -1, np.int32)
        final = np.zeros(total, np.int8)
        leaf_rows: list[np.ndarray] = []
        leaf_events: list[np.ndarray] = []
        leaf_local: list[np.ndarray] = []
        leaf_pdg: list[np.ndarray] = []
        for code, top in enumerate(truth_model.topologies):
            ev = np.flatnonzero(top_code == code)
            if ev.size == 0:
                continue
            parts = top.particles(values[ev, : top.n_coordinates])
            n_nodes = len(top.nodes)
            base = starts[ev]
            for i, nd in enumerate(top.nodes):
                rows = base + i
                pdg[rows] = _JPSI if i == 0 else nd.pdg
                mother[rows] = -1 if i == 0 else nd.parent
                for k, c in enumerate(("e", "px", "py", "pz")):
                    cols[c][rows] = parts.node_p4[:, i, k]
                for k, c in enumerate(("vx", "vy", "vz")):
                    cols[c][rows] = parts.node_vertex[:, i, k]
            parent_of_leaf = np.zeros(len(top.leaves), np.int64)
            for i, nd in enumerate(top.nodes):
                for kind, j in nd.children:
                    if kind == "leaf":
                        parent_of_leaf[j] = i
            for j, leaf_pdg_code in enumerate(top.leaves):
                rows = base + n_nodes + j
                pdg[rows] = leaf_pdg_code
                mother[rows] = parent_of_leaf[j]
                final[rows] = 1
                for k, c in enumerate(("e", "px", "py", "pz")):
                    cols[c][rows] = parts.leaf_p4[:, j, k]
                for k, c in enumerate(("vx", "vy", "vz")):
                    cols[c][rows] = parts.leaf_vertex[:, j, k]
                leaf_rows.append(rows)
                leaf_events.append(ev)
                leaf_local.append(np.full(ev.size, n_nodes + j))
                leaf_pdg.append(np.full(ev.size, leaf_pdg_code))
        truth: dict[str, np.ndarray] = {"pdg": pdg, "mother": mother, **cols, "final": final,
                 "status_flags": np.where(final == 1, 9, 1).astype(np.int32),
                 "n_truth": per_event_rows.astype(np.int32)}
        rows_all = np.concatenate(leaf_rows) if leaf_rows else np.zeros(0, np.int64)
        order = np.argsort(rows_all, kind="stable")
        rows_all = rows_all[order]
        particles = {
            "pdg": np.concatenate(leaf_pdg)[order] if leaf_pdg else np.zeros(0, np.int64),
            "event": np.concatenate(leaf_events)[order] if leaf_events else np.zeros(0, np.int64),
            "truth_row": np.concatenate(leaf_local)[order] if leaf_local else np.zeros(0, np.int64),
            "p4": np.stack([cols[c][rows_all] for c in ("e", "px", "py", "pz")], 1),
            "vertex": np.stack([cols[c][rows_all] for c in ("vx", "vy", "vz")], 1),
        }
        return truth, particles

    def records_of(self, tables: Tables) -> dict[str, np.ndarray]:
        events = tables["events"]
        return {"channel": np.asarray(events["channel"], dtype=np.int64), "run": np.asarray(events["run"], np.int64)}

    def predict_records(self, rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One event per input row (its channel and run; seed 0): its reconstructed objects
        (:func:`vbes.models.response.objects_table`, ``event`` = the input row).

        Args:
            rows: ``channel`` (codes) and ``run``.
        """
        channel = np.asarray(rows["channel"], dtype=np.int64)
        run = np.asarray(rows["run"], dtype=np.int64)
        outputs = []
        for i, (c, r) in enumerate(zip(channel.tolist(), run.tolist())):
            events = self.sample(1, {"channel": int(c), "runs": (r, r)}, seed=i)
            table = objects_table({"tracks": events["tracks"], "showers": events["showers"],
                                   "n_tracks": events["events"]["n_tracks"], "n_showers": events["events"]["n_showers"]})
            table["event"] = np.full(table["event"].size, i, np.int64)
            outputs.append(table)
        if not outputs:
            return objects_table({"tracks": _empty_tracks(), "showers": _empty_showers(), "n_tracks": np.zeros(0, int),
                                  "n_showers": np.zeros(0, int)})
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}


def _empty_tracks() -> dict[str, np.ndarray]:
    from vbes.datasets.schema import TABLES

    return {f.name: np.zeros((0, *f.shape), f.dtype) for f in TABLES["tracks"]}


def _empty_showers() -> dict[str, np.ndarray]:
    from vbes.datasets.schema import TABLES

    return {f.name: np.zeros((0, *f.shape), f.dtype) for f in TABLES["showers"]}

