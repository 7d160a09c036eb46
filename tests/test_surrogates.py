"""The generative surrogates end to end: the shipped smoke configurations of the event surrogate and the
detector-response surrogate trained with `vbes train`, then used through the real command line -- `vbes sample`
(provenance, determinism across files, Dask workers and formats, physical and discrete output, the writer's index
checks), `vbes respond`, `vbes evaluate --model` (the report logged to the model's MLflow run), the registered
models loaded in a fresh process and behind `mlflow models serve`, and bad input refused in one line."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import cli_json, isolated_environment

from vbes.datasets import read_events
from vbes.datasets.schema import CHANNELS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
EVENT = "models:/vbes-event-surrogate-smoke@candidate"
RESPONSE = "models:/vbes-response-smoke@candidate"
TAG = "BOSS-6.6.4-sim-2"
RUNS = (-10000, -9001)
#: PDG J/psi mass (GeV), an atom of the event surrogate's root-system coordinates
M_JPSI = 3.0969


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()




def _equal_tables(a: dict[str, dict[str, np.ndarray]], b: dict[str, dict[str, np.ndarray]]) -> bool:
    """Same tables, fields and arrays (NaN equal to NaN)."""
    if a.keys() != b.keys() or any(a[t].keys() != b[t].keys() for t in a):
        return False
    return all(np.array_equal(a[t][c], b[t][c], equal_nan=a[t][c].dtype.kind == "f") for t in a for c in a[t])


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One VBES_HOME for the module (calibration store initialised, one MLflow store) with the samples the smoke
    configurations train on, made and named as `vbes demo` makes them (jpsi-rhopi.h5, jpsi-mumu.h5, gun.h5; fewer
    events), and a rho pi reference held out from training."""
    from vbes.calibration import CalibrationStore
    from vbes.datasets import generate_sample
    from vbes.demo import gun_sample
    from vbes.settings import load_settings

    root = tmp_path_factory.mktemp("surrogates")
    values = {"VBES_HOME": str(root / "home"), "VBES_DATA": str(root / "data")}
    with isolated_environment(values):
        settings = load_settings()
        settings.ensure_home()
        data = Path(values["VBES_DATA"])
        data.mkdir(exist_ok=True)
        (root / "heldout").mkdir()
        with CalibrationStore.from_settings(settings) as store:
            store.init_defaults()
            # the demo's seeds: reference_samples numbers the channels (rhopi 0, mumu 3)
            generate_sample("rhopi", 2000, data / "jpsi-rhopi.h5", runs=RUNS, seed=0, store=store)
            generate_sample("mumu", 2000, data / "jpsi-mumu.h5", runs=RUNS, seed=3, store=store)
            gun_sample(settings, n_events=2000, runs=RUNS, store=store)
            generate_sample("rhopi", 3000, root / "heldout" / "jpsi-rhopi-heldout.h5", runs=RUNS, seed=11,
                            store=store)
        yield {**values, "reference": str(root / "heldout" / "jpsi-rhopi-heldout.h5")}


@pytest.fixture(scope="module")
def trained(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """`vbes train` of both smoke configurations, exactly as shipped."""
    return {name: cli_json("train", CONFIGS / f"smoke-{name}.yaml") for name in ("event-surrogate", "response")}


def _tracking_uri(env: dict[str, str]) -> str:
    return f"sqlite:///{env['VBES_HOME']}/mlflow.sqlite"


@pytest.fixture(scope="module")
def drawn(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`vbes sample` of 3000 rho pi events from the event surrogate's candidate, seed 3."""
    out = tmp_path_factory.mktemp("drawn") / "out.h5"
    result = cli_json("sample", EVENT, "-n", "3000", "-o", out, "--channel", "rhopi", "--seed", "3")
    return {"path": out, "result": result, "tables": read_events(out)}


def test_smoke_configurations_train_and_register_candidates(env: dict[str, str],
                                                            trained: dict[str, dict[str, Any]]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=_tracking_uri(env), registry_uri=_tracking_uri(env))
    data = Path(env["VBES_DATA"])
    expected = {"event-surrogate": ("vbes-event-surrogate-smoke", "event_surrogate", ["jpsi-rhopi.h5", "jpsi-mumu.h5"]),
                "response": ("vbes-response-smoke", "detector_response", ["jpsi-rhopi.h5", "gun.h5"])}
    for key, (name, family, files) in expected.items():
        result = trained[key]
        assert result["model_name"] == name and result["model_uri"] == f"models:/{name}@candidate"
        run = client.get_run(result["run_id"])
        assert run.info.status == "FINISHED" and run.data.params["family"] == family
        assert sorted(m.step for m in client.get_metric_history(result["run_id"], "val_loss")) == [0, 1]
        tags = run.data.tags
        assert [tags[f"vbes.data.{i}.sha256"] for i in range(len(files))] == [_sha256(data / f) for f in files]
        assert tags["vbes.calibration_tags"] == TAG
        assert str(client.get_model_version_by_alias(name, "candidate").version) == result["version"]


def test_sample_writes_a_verified_file_with_its_provenance(env: dict[str, str], trained: dict[str, Any],
                                                           drawn: dict[str, Any], run_cli: Any) -> None:
    from vbes.calibration import CalibrationStore
    from vbes.models.conditions import PAYLOAD_TYPES
    from vbes.settings import load_settings

    inspected = run_cli("inspect", drawn["path"], "--json")
    assert inspected.exit_code == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["verification"] == "content digest verified" and info["n_events"] == 3000 and info["mc"] is True
    prov = info["provenance"]
    model = trained["event-surrogate"]
    assert prov["model_uri"] == EVENT and prov["model_name"] == model["model_name"]
    assert prov["model_version"] == model["version"] and prov["mlflow_run"] == model["run_id"]
    assert prov["model_family"] == "event_surrogate" and prov["generator"] == "vbes event surrogate"
    data = Path(env["VBES_DATA"])
    assert prov["training_data_sha256"] == [_sha256(data / "jpsi-rhopi.h5"), _sha256(data / "jpsi-mumu.h5")]
    assert prov["seed"] == 3 and prov["channel"] == "rhopi" and prov["runs"] == list(RUNS)
    # the payloads of the requested runs, as the store resolves them (one MC period holds -10000..-9001)
    with CalibrationStore.from_settings(load_settings()) as store:
        resolved = store.resolve(TAG, -9500)
    assert prov["calibration_tag"] == TAG
    assert prov["calibration_payloads"] == {t: resolved[t].sha256 for t in PAYLOAD_TYPES}
    assert prov["conditions_outside_training_domain"] == []
    events = drawn["tables"]["events"]
    assert (events["channel"] == CHANNELS["rhopi"]).all()
    assert events["run"].min() == RUNS[0] and events["run"].max() == RUNS[1]
    assert drawn["result"]["paths"] == [str(drawn["path"])]


def test_the_same_request_and_seed_give_the_same_events(drawn: dict[str, Any], tmp_path: Path) -> None:
    again = cli_json("sample", EVENT, "-n", "3000", "-o", tmp_path / "again.h5", "--channel", "rhopi", "--seed", "3")
    assert _equal_tables(read_events(again["paths"][0]), drawn["tables"])
    other = read_events(cli_json("sample", EVENT, "-n", "3000", "-o", tmp_path / "other.h5", "--channel", "rhopi",
                                  "--seed", "4")["paths"][0])
    assert not _equal_tables(other, drawn["tables"])
    assert not np.array_equal(other["tracks"]["p"][:100], drawn["tables"]["tracks"]["p"][:100])


def test_sampled_events_are_discrete_physical_and_consistent(drawn: dict[str, Any]) -> None:
    from vbes.datasets.schema import HYPOTHESES, unpack_symmetric

    t = drawn["tables"]
    events, tracks, showers, truth = t["events"], t["tracks"], t["showers"], t["truth"]
    for name in ("n_tracks", "n_showers", "n_truth"):
        assert events[name].dtype.kind == "i" and events[name].min() >= 0
    assert events["n_tracks"].sum() == len(tracks["p"]) > 0 and events["n_showers"].sum() == len(showers["energy"]) > 0
    # discrete fields are integers of their range
    assert set(np.unique(tracks["charge"]).tolist()) == {-1, 1}
    assert set(np.unique(tracks["mass_hypothesis"]).tolist()) <= set(range(len(HYPOTHESES)))
    for name in ("dedx_nhits", "fit_ndof", "mdc_first_layer", "mdc_last_layer", "mdc_layers"):
        assert tracks[name].dtype.kind == "i", name
    assert 0 <= tracks["mdc_first_layer"].min() and tracks["mdc_last_layer"].max() <= 42
    assert (tracks["mdc_first_layer"] <= tracks["mdc_last_layer"]).all()
    assert showers["n_crystals"].dtype.kind == "i" and showers["n_crystals"].min() >= 1
    assert set(np.unique(truth["final"]).tolist()) <= {0, 1}
    # physical bounds
    assert (showers["energy"] >= 0).all() and (tracks["emc_energy"] >= 0).all() and (truth["e"] >= 0).all()
    assert (showers["e3x3"] >= 0).all() and (showers["e5x5"] >= 0).all()
    assert (np.abs(tracks["cos_theta"]) <= 1).all() and (tracks["p"] > 0).all()
    assert ((showers["theta"] >= 0) & (showers["theta"] <= np.pi)).all()
    # the derived fields follow the reconstruction's formulas: the curvature's sign is the charge
    assert np.array_equal(np.sign(tracks["helix"][:, 2]).astype(int), tracks["charge"].astype(int))
    # every helix covariance is positive-definite: a Cholesky factor exists for each
    np.linalg.cholesky(unpack_symmetric(tracks["helix_cov"].astype(np.float64)))
    # index columns point inside their own event (-1: none)
    for table, column, target in (("tracks", "truth_index", "n_truth"), ("showers", "truth_index", "n_truth"),
                                  ("tracks", "emc_index", "n_showers")):
        count = events["n_tracks" if table == "tracks" else "n_showers"]
        limit = np.repeat(events[target], count)
        values = t[table][column]
        assert ((values == -1) | ((values >= 0) & (values < limit))).all(), (table, column)
    # truth: mothers come first in their event; four-momentum is conserved from the root to the final particles
    starts = np.cumsum(events["n_truth"]) - events["n_truth"]
    owner = np.repeat(np.arange(len(events["run"])), events["n_truth"])
    local = np.arange(len(owner)) - starts[owner]
    assert (truth["mother"] < local).all() and (truth["mother"][starts] == -1).all()
    p4 = np.stack([truth[c] for c in ("e", "px", "py", "pz")], axis=1)
    final = truth["final"].astype(bool)
    total = np.zeros((len(starts), 4))
    np.add.at(total, owner[final], p4[final])
    np.testing.assert_allclose(total, p4[starts], atol=1e-9)
    assert (truth["pdg"][starts] == 443).all()
    mass = np.sqrt(np.maximum(p4[starts, 0] ** 2 - (p4[starts, 1:] ** 2).sum(axis=1), 0.0))
    assert abs(np.median(mass) - M_JPSI) < 1e-4


def test_a_channel_request_draws_only_that_channels_final_states(drawn: dict[str, Any]) -> None:
    truth = drawn["tables"]["truth"]
    final = truth["final"].astype(bool)
    # J/psi -> rho pi -> pi+ pi- pi0, pi0 -> gamma gamma (or Dalitz e+ e- gamma); never the mu+ mu- of the other
    # training channel
    species = set(np.unique(truth["pdg"][final]).tolist())
    assert {211, -211, 22} <= species <= {211, -211, 22, 11, -11}


def test_sampling_outside_the_training_period_is_recorded(trained: dict[str, Any], tmp_path: Path) -> None:
    # period D of the simulation tag (-10000..-1) has the training runs' constants; period C (..-10001) others
    inside = cli_json("sample", EVENT, "-n", "50", "-o", tmp_path / "d.h5", "--runs=-5000:-4001")
    assert inside["provenance"]["conditions_outside_training_domain"] == []
    outside = cli_json("sample", EVENT, "-n", "50", "-o", tmp_path / "c.h5", "--runs=-20000:-19001")
    recorded = set(outside["provenance"]["conditions_outside_training_domain"])
    assert {"Emc.energy_scale", "Tof.sigma_barrel_ns"} <= recorded
    runs = read_events(tmp_path / "c.h5")["events"]["run"]
    assert runs.min() == -20000 and runs.max() <= -19001 and np.all(np.diff(runs) >= 0)  # spread evenly


@pytest.mark.slow
def test_files_and_dask_workers_give_the_same_events_as_one_file(drawn: dict[str, Any], run_cli: Any,
                                                                  tmp_path: Path) -> None:
    common = ("-n", "3000", "--channel", "rhopi", "--seed", "3", "--chunk-events", "1000")
    parts = run_cli("sample", EVENT, *common, "-o", tmp_path / "part_{index}.h5", "--files", "3", "-j", "2")
    assert parts.exit_code == 0, parts.stderr
    one = run_cli("sample", EVENT, *common, "-o", tmp_path / "one.h5")
    assert one.exit_code == 0, one.stderr
    whole = read_events(tmp_path / "one.h5")
    pieces = [read_events(tmp_path / f"part_{i}.h5") for i in range(3)]
    assert [len(p["events"]["run"]) for p in pieces] == [1000, 1000, 1000]
    joined = {t: {c: np.concatenate([p[t][c] for p in pieces]) for c in whole[t]} for t in whole}
    assert _equal_tables(joined, whole)


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_parquet_and_root_output_hold_the_same_events(drawn: dict[str, Any], run_cli: Any, tmp_path: Path,
                                                      fmt: str) -> None:
    from vbes.datasets import file_info

    out = tmp_path / f"out.{fmt}"
    result = run_cli("sample", EVENT, "-n", "3000", "-o", out, "--channel", "rhopi", "--seed", "3", "--format", fmt)
    assert result.exit_code == 0, result.stderr
    expected = drawn["tables"]
    digest = file_info(drawn["path"])["digest"]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_metadata(out).metadata[b"vbes.content_digest"].decode() == digest
        table = pq.read_table(out)
        assert np.array_equal(table.column("run").to_numpy(), expected["events"]["run"])
        tracks = table.column("tracks").combine_chunks().flatten()
        assert np.array_equal(tracks.field("p").to_numpy(), expected["tracks"]["p"])
        showers = table.column("showers").combine_chunks().flatten()
        assert np.array_equal(showers.field("n_crystals").to_numpy(), expected["showers"]["n_crystals"])
        provenance = json.loads(pq.read_metadata(out).metadata[b"vbes.provenance"])
        assert provenance["model_uri"] == EVENT and provenance["seed"] == 3
    else:
        import uproot

        with uproot.open(out) as f:
            tree = f["events"]
            assert tree.num_entries == 3000
            p = tree["tracks_p"].array(library="ak")
            assert np.array_equal(np.asarray(__import__("awkward").flatten(p)), expected["tracks"]["p"])
        # the repository's reader: ingest checks the content digest the export recorded
        back = run_cli("ingest", out, "-o", tmp_path / "back.h5")
        assert back.exit_code == 0, back.stderr
        assert file_info(tmp_path / "back.h5")["digest"] == digest
        assert _equal_tables(read_events(tmp_path / "back.h5"), expected)


def test_sample_of_the_response_model_runs_the_generator_and_the_response(env: dict[str, str],
                                                                         trained: dict[str, Any], run_cli: Any,
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "mumu.h5"
    result = run_cli("sample", RESPONSE, "-n", "400", "-o", out, "--channel", "mumu", "--seed", "2", "--json")
    assert result.exit_code == 0, result.stderr
    prov = json.loads(result.stdout)["provenance"]
    assert prov["model_family"] == "detector_response" and prov["generator"].startswith("Pythia 8")
    data = Path(env["VBES_DATA"])
    assert prov["training_data_sha256"] == [_sha256(data / "jpsi-rhopi.h5"), _sha256(data / "gun.h5")]
    t = read_events(out)
    events, truth, tracks = t["events"], t["truth"], t["tracks"]
    assert len(events["run"]) == 400 and (events["channel"] == CHANNELS["mumu"]).all()
    assert len(tracks["p"]) > 0 and len(t["showers"]["energy"]) > 0
    # the generator's truth: one mu+ and one mu- among every event's final particles
    owner = np.repeat(np.arange(400), events["n_truth"])
    final = truth["final"].astype(bool)
    for pdg in (13, -13):
        assert np.array_equal(np.bincount(owner[final & (truth["pdg"] == pdg)], minlength=400), np.ones(400))
    # the response's tracks belong to truth particles of their own event
    starts = np.cumsum(events["n_truth"]) - events["n_truth"]
    track_event = np.repeat(np.arange(400), events["n_tracks"])
    assert ((tracks["truth_index"] >= 0) & (tracks["truth_index"] < events["n_truth"][track_event])).all()
    made_by = truth["pdg"][starts[track_event] + tracks["truth_index"]]
    assert set(np.unique(np.abs(made_by)).tolist()) <= {11, 13, 22}


def test_respond_oversamples_the_truth_of_a_file(env: dict[str, str], trained: dict[str, Any], run_cli: Any,
                                                 tmp_path: Path) -> None:
    truth_file = Path(env["VBES_DATA"]) / "jpsi-rhopi.h5"
    out = tmp_path / "reco.h5"
    result = run_cli("respond", RESPONSE, "--truth", truth_file, "-o", out, "--repeats", "2", "--seed", "1", "--json")
    assert result.exit_code == 0, result.stderr
    prov = json.loads(result.stdout)["provenance"]
    assert prov["truth_sha256"] == _sha256(truth_file) and prov["repeats"] == 2 and prov["model_uri"] == RESPONSE
    assert prov["truth_provenance"]["channel"] == "rhopi" and prov["calibration_tag"] == TAG
    given, got = read_events(truth_file), read_events(out)
    n = len(given["events"]["run"])
    assert len(got["events"]["run"]) == 2 * n
    for column in ("run", "event", "channel", "n_truth"):
        assert np.array_equal(got["events"][column], np.repeat(given["events"][column], 2)), column
    # event 2i and 2i+1 carry the truth of event i
    counts = given["events"]["n_truth"]
    starts = np.cumsum(counts) - counts
    rows = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts) for _ in range(2)])
    for column, values in given["truth"].items():
        assert np.array_equal(got["truth"][column], values[rows]), column
    # the two responses to one truth event are independent draws: the showers' energies of the two copies differ
    n_showers = got["events"]["n_showers"]
    energy = np.split(got["showers"]["energy"], np.cumsum(n_showers)[:-1])
    pairs = [(a, b) for a, b in zip(energy[::2], energy[1::2]) if a.size and b.size]
    assert pairs and sum(np.array_equal(a, b) for a, b in pairs) == 0
    assert 0 < got["events"]["n_tracks"].sum() and (got["tracks"]["truth_index"] < np.repeat(
        got["events"]["n_truth"], got["events"]["n_tracks"])).all()


@pytest.mark.slow
def test_evaluate_model_draws_evaluates_and_logs_to_the_models_run(env: dict[str, str], trained: dict[str, Any],
                                                                   run_cli: Any, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    reference = Path(env["reference"])
    plain = run_cli("evaluate", "--model", EVENT, "--reference", reference, "--report", tmp_path / "plain",
                    "--null-trials", "0")
    # a smoke model is not a physics model: the evaluation fails, and says so in one line after its report
    assert plain.exit_code == 1, plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("vbes: error: the sample differs from the reference")
    assert "memorisation test against the model's training file" in plain.stderr
    assert (tmp_path / "plain" / "report.html").is_file() and (tmp_path / "plain" / "model-sample.h5").is_file()
    summary = json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    assert summary["passed"] is False and summary["memorisation"] is not None

    gated = run_cli("evaluate", "--model", EVENT, "--reference", reference, "--report", tmp_path / "gated",
                    "--null-trials", "0", "--gate", ROOT / "evaluation" / "data" / "gates.yaml",
                    "--family", "surrogate", "--json")
    assert gated.exit_code == 1, gated.stderr
    answer = json.loads(gated.stdout)
    assert answer["gates_passed"] is False and answer["gate_family"] == "surrogate" and answer["failed_gates"]
    assert "gate check(s) of family 'surrogate' failed" in gated.stderr

    client = MlflowClient(tracking_uri=_tracking_uri(env), registry_uri=_tracking_uri(env))
    run_id = trained["event-surrogate"]["run_id"]
    stem = reference.stem
    logged = {a.path for a in client.list_artifacts(run_id, f"evaluations/{stem}")}
    assert logged == {f"evaluations/{stem}/report.html", f"evaluations/{stem}/evaluation.json"}
    tags = client.get_run(run_id).data.tags
    assert tags[f"vbes.evaluation.{stem}.passed"] == "false"
    assert tags[f"vbes.evaluation.{stem}.memorisation.passed"] in ("true", "false")
    assert tags[f"vbes.evaluation.{stem}.gates_passed"] == "false"
    assert tags[f"vbes.evaluation.{stem}.gate_family"] == "surrogate"
    assert 0.5 < float(tags[f"vbes.evaluation.{stem}.classifier.auc"]) <= 1.0
    downloaded = client.download_artifacts(run_id, f"evaluations/{stem}/evaluation.json", str(tmp_path / "dl"))
    assert json.loads(Path(downloaded).read_text())["gates"]["family"] == "surrogate"


def test_registered_event_surrogate_predicts_in_a_fresh_process(env: dict[str, str], trained: dict[str, Any],
                                                                fresh_process_predict: Any) -> None:
    inputs = {"channel": [CHANNELS["rhopi"], CHANNELS["mumu"], CHANNELS["rhopi"]], "run": [-10000, -9500, -9001]}
    answer = fresh_process_predict(_tracking_uri(env), EVENT, inputs=inputs)
    assert answer["n"] == 3 and answer["rows"] > 0
    assert {"event", "object", "truth_index", "charge", "p", "cos_theta", "energy"} <= set(answer["columns"])
    assert set(answer["events"]) <= {0, 1, 2} and answer["events"]
    assert set(answer["charges"]) <= {-1, 1} and answer["max_abs_cos"] <= 1.0


def _serving_inputs(model_uri: str, env: dict[str, str]) -> dict[str, list[Any]]:
    """Four input rows of a model: events of a channel and run, or truth particles of three events."""
    if model_uri == EVENT:
        return {"channel": [CHANNELS["rhopi"], CHANNELS["mumu"]] * 2, "run": [-10000, -9999, -9500, -9001]}
    from vbes.models.response import ResponseSurrogate

    tables = read_events(Path(env["VBES_DATA"]) / "jpsi-rhopi.h5", 0, 3)
    rows = ResponseSurrogate().records_of(tables)
    return {k: np.asarray(v).tolist() for k, v in rows.items()}


@pytest.mark.slow
@pytest.mark.parametrize("model_uri", [EVENT, RESPONSE], ids=["event-surrogate", "response"])
def test_mlflow_models_serve_answers_invocations(env: dict[str, str], trained: dict[str, Any], tmp_path: Path,
                                                 served_model_predict: Any, model_uri: str) -> None:
    inputs = _serving_inputs(model_uri, env)
    predictions = served_model_predict(_tracking_uri(env), model_uri, inputs, tmp_path)
    assert predictions, "no reconstructed objects"
    events = set(range(4)) if model_uri == EVENT else set(inputs["event"])
    assert {p["event"] for p in predictions} <= events
    for p in predictions:
        assert p["object"] in (0, 1)
        assert p["cos_theta"] is None or abs(p["cos_theta"]) <= 1
        assert p["object"] == 1 or p["charge"] in (-1, 1)


@pytest.fixture(scope="module")
def truthless(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Path:
    """A data file (no truth) with the rho pi sample's reconstructed objects."""
    from vbes.datasets import EventWriter

    tables = read_events(Path(env["VBES_DATA"]) / "jpsi-rhopi.h5", 0, 100)
    tables.pop("truth")
    tables["events"]["n_truth"] = np.zeros_like(tables["events"]["n_truth"])
    for name in ("tracks", "showers"):
        tables[name]["truth_index"] = np.full_like(tables[name]["truth_index"], -1)
    path = tmp_path_factory.mktemp("data-file") / "data.h5"
    with EventWriter(path, {"generator": "test: a data file"}, mc=False) as writer:
        writer.append(tables)
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "models:/vbes-nothing@candidate", "-n", "10", "-o", "{tmp}/x.h5"],
         r"models:/vbes-nothing@candidate: no such registered model version"),
        (["sample", "models:/vbes-event-surrogate-smoke@production", "-n", "10", "-o", "{tmp}/x.h5"],
         r"@production: no such registered model version"),
        (["sample", "{tmp}/no-model", "-n", "10", "-o", "{tmp}/x.h5"],
         r"neither a model URI \(models:/NAME@ALIAS\) nor a saved model folder"),
        (["sample", EVENT, "-n", "10", "-o", "{tmp}/x.h5", "--channel", "kskpi"],
         r"--channel kskpi: models:/vbes-event-surrogate-smoke@candidate draws mumu, rhopi"),
        (["sample", EVENT, "-n", "10", "-o", "{tmp}/x.h5", "--runs=1000:1010"],
         rf"tag {TAG} has no .* payload for run 1000"),
        (["sample", EVENT, "-n", "10", "-o", "{tmp}/x.h5", "--runs=-90000:-89001"],
         rf"tag {TAG} has no .* payload for run -90000"),
        (["sample", EVENT, "-n", "0", "-o", "{tmp}/x.h5"], r"'-n' / '--events': 0 is not in the range x>=1"),
        (["sample", EVENT, "-n", "10", "-o", "{tmp}/x.h5", "--seed", "-1"], r"--seed -1: a seed is a non-negative"),
        (["sample", EVENT, "-n", "10", "-o", "{tmp}/missing/x.h5"], r"folder .*missing does not exist"),
        (["respond", RESPONSE, "--truth", "{truthless}", "-o", "{tmp}/x.h5"], r"no truth particles to respond to"),
        (["respond", RESPONSE, "--truth", "{rhopi}", "-o", "{tmp}/missing/x.h5"], r"folder .*missing does not exist"),
        (["respond", EVENT, "--truth", "{rhopi}", "-o", "{tmp}/x.h5"], r"vbes respond needs a detector_response"),
        (["respond", RESPONSE, "--truth", "{rhopi}", "-o", "{tmp}/x.h5", "--repeats", "0"],
         r"'--repeats': 0 is not in the range x>=1"),
    ],
    ids=["unknown-model", "unknown-alias", "not-a-model", "untrained-channel", "data-runs", "runs-beyond-tag",
         "zero-events", "negative-seed", "sample-missing-folder", "truth-without-truth", "respond-missing-folder",
         "respond-not-a-response-model", "zero-repeats"],
)
def test_bad_input_fails_in_one_line_and_leaves_nothing(env: dict[str, str], trained: dict[str, Any],
                                                        truthless: Path, run_cli: Any, tmp_path: Path,
                                                        args: list[str], message: str) -> None:
    rhopi = Path(env["VBES_DATA"]) / "jpsi-rhopi.h5"
    filled = [a.format(tmp=tmp_path, truthless=truthless, rhopi=rhopi) for a in args]
    before = sorted(p for p in tmp_path.rglob("*"))
    result = run_cli(*filled)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vbes: error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p for p in tmp_path.rglob("*")) == before


class _BrokenIndex:
    """A sampler whose chunks carry one index that points outside its event (row 0 of ``table``)."""

    def __init__(self, inner: Any, table: str, column: str) -> None:
        self.inner, self.table, self.column = inner, table, column

    def __call__(self, chunk_index: int, n: int) -> dict[str, Any]:
        tables = self.inner(chunk_index, n)
        events = tables["events"]
        count = "n_tracks" if self.table == "tracks" else "n_showers"
        first = int(np.argmax(events[count] > 0))
        target = "n_showers" if self.column == "emc_index" else "n_truth"
        values = np.array(tables[self.table][self.column])
        values[int(events[count][:first].sum())] = events[target][first]  # one past the event's last row
        tables[self.table][self.column] = values
        return tables


@pytest.mark.parametrize("fmt", ["h5", "parquet", "root"])
@pytest.mark.parametrize(("table", "column"), [("tracks", "truth_index"), ("showers", "truth_index"),
                                               ("tracks", "emc_index")])
def test_the_production_path_of_vbes_sample_checks_index_columns(env: dict[str, str], trained: dict[str, Any],
                                                                 tmp_path: Path, fmt: str, table: str,
                                                                 column: str) -> None:
    from vbes.calibration import CalibrationStore
    from vbes.datasets.production import produce
    from vbes.errors import SchemaError
    from vbes.models.conditions import Conditions
    from vbes.settings import load_settings
    from vbes.training.sampling import SurrogateChunks, resolve_model

    settings = load_settings()
    model = resolve_model(EVENT, settings)
    with CalibrationStore.from_settings(settings) as store:
        conditions = Conditions.from_store(store, TAG, np.arange(RUNS[0], RUNS[1] + 1))
    chunks = SurrogateChunks(str(model.folder), "rhopi", 200, RUNS, 100, 5, conditions.as_dict())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SchemaError, match=rf"{table}\.{column} = \d+ in row \d+ points outside"):
        produce(_BrokenIndex(chunks, table, column), 200, out / f"bad.{fmt}", chunk_events=100,
                provenance={"generator": "test"})
    assert list(out.iterdir()) == []
    # the same chunks unbroken are written
    assert produce(chunks, 200, out / f"good.{fmt}", chunk_events=100, provenance={"generator": "test"})
