"""Formats users bring: the real BESIII DST, the CMS Open Data ntuple, export to ROOT and back, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vbes.datasets import content_digest, file_info, read_events
from vbes.datasets.ingest import example_mapping_path, export_root, ingest_besiii_dst, ingest_root
from vbes.datasets.schema import SCHEMA_VERSION, momentum_sigma
from vbes.errors import InvalidInput, NotFound, SchemaError

DST = "besiii-boss-jpsi-rhopi-10evt.dst"
CMS = "cms-opendata-zmumu.root"
MUON_MASS = 0.1056583755  # GeV, PDG
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # as conftest's shared_data


@pytest.fixture(scope="module")
def dst_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHARED_DATA / DST).exists():
        pytest.skip(f"{SHARED_DATA / DST} is absent")
    out = tmp_path_factory.mktemp("dst") / "rhopi.h5"
    ingest_besiii_dst(SHARED_DATA / DST, out, channel="rhopi", step_events=4)  # three chunks
    return out


@pytest.fixture(scope="module")
def cms_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHARED_DATA / CMS).exists():
        pytest.skip(f"{SHARED_DATA / CMS} is absent")
    out = tmp_path_factory.mktemp("cms") / "zmumu.h5"
    ingest_root(SHARED_DATA / CMS, out, tree="events", mapping=example_mapping_path(), step_events=1000)
    return out


# --- the real BESIII DST ------------------------------------------------------------------------------


def test_dst_counts_match_the_file(dst_h5: Path) -> None:
    info = file_info(dst_h5)
    assert info["n_events"] == 10 and info["mc"] is True and info["schema_version"] == SCHEMA_VERSION
    ev = read_events(dst_h5)["events"]
    assert (ev["run"] == -9989).all() and ev["event"].tolist() == list(range(10))
    # the description of the file: 4-12 EMC showers per event, mean 7.5, about 45 % below 50 MeV
    assert ev["n_showers"].min() == 4 and ev["n_showers"].max() == 12 and ev["n_showers"].mean() == 7.5
    energy = read_events(dst_h5, fields=["showers.energy"])["showers"]["energy"]
    assert 0.35 < (energy < 0.05).mean() < 0.55
    assert ev["n_tracks"].sum() == 19  # rho0 -> pi+ pi-: two charged tracks per event, one event with one


def test_dst_track_momenta_agree_with_pybes3(shared_data: Path, dst_h5: Path) -> None:
    import awkward as ak
    import pybes3
    import uproot

    tree = uproot.open(shared_data / DST)["Event"]
    kal = tree["TDstEvent/m_mdcKalTrackCol"].array()
    helix = pybes3.helix.helix_awk(kal["m_zhelix"])  # pybes3's own conversion, pivot (0, 0, 0)
    mom = helix.momentum
    tracks = read_events(dst_h5)["tracks"]
    assert np.allclose(tracks["px"], ak.to_numpy(ak.flatten(mom.px)), rtol=1e-6, atol=1e-6)
    assert np.allclose(tracks["py"], ak.to_numpy(ak.flatten(mom.py)), rtol=1e-6, atol=1e-6)
    assert np.allclose(tracks["pz"], ak.to_numpy(ak.flatten(mom.pz)), rtol=1e-6, atol=1e-6)
    assert np.allclose(tracks["p"], ak.to_numpy(ak.flatten(mom.mag)), rtol=1e-6)
    assert np.array_equal(tracks["charge"], ak.to_numpy(ak.flatten(helix.charge)))
    assert (tracks["mass_hypothesis"] == 2).all()


def test_dst_truth_matched_pulls(dst_h5: Path) -> None:
    data = read_events(dst_h5)
    ev, tracks, truth = data["events"], data["tracks"], data["truth"]
    first_truth = np.repeat(np.cumsum(ev["n_truth"]) - ev["n_truth"], ev["n_tracks"])
    matched = tracks["truth_index"] >= 0
    assert matched.sum() >= 15  # of 19 tracks: a fake or decayed track may stay unmatched
    rows = first_truth[matched] + tracks["truth_index"][matched]
    # J/psi -> rho0 pi0, rho0 -> pi+ pi-: every matched track is a charged pion of the track's charge
    assert np.array_equal(truth["pdg"][rows], 211 * tracks["charge"][matched].astype(int))
    p_true = np.sqrt(truth["px"][rows] ** 2 + truth["py"][rows] ** 2 + truth["pz"][rows] ** 2)
    sigma = momentum_sigma(tracks["helix"][matched], tracks["helix_cov"][matched])
    # BESIII: sigma(p)/p ~ 0.5 % at 1 GeV/c
    assert 0.002 < np.median(sigma / p_true) < 0.01
    pull = (tracks["p"][matched] - p_true) / sigma
    # N(0, 1) expected; 17 tracks and a few decays in flight: robust centre and width, loose bounds
    median = np.median(pull)
    width = 1.4826 * np.median(np.abs(pull - median))
    assert abs(median) < 0.75, pull
    assert 0.5 < width < 2.0, pull
    assert (np.abs(pull) < 3.5).mean() >= 0.8, pull


def test_dst_showers_and_pid(dst_h5: Path) -> None:
    data = read_events(dst_h5)
    ev, tracks, showers, truth = data["events"], data["tracks"], data["showers"], data["truth"]
    # the EMC match of a track points at a shower of its event whose energy it carries
    first_shower = np.repeat(np.cumsum(ev["n_showers"]) - ev["n_showers"], ev["n_tracks"])
    has = tracks["emc_index"] >= 0
    assert has.sum() >= 15
    assert np.allclose(
        tracks["emc_energy"][has], showers["energy"][first_shower[has] + tracks["emc_index"][has]]
    )
    # pions: dE/dx chi for the pion hypothesis near 0 for most truth-matched tracks
    matched = tracks["truth_index"] >= 0
    assert np.median(np.abs(tracks["chi_dedx"][matched, 2])) < 1.5
    # EMC geometry: showers sit on the calorimeter (barrel radius ~94 cm or endcaps |z| ~ 134 cm)
    radius = np.hypot(showers["x"], showers["y"])
    assert ((radius > 85) | (np.abs(showers["z"]) > 120)).all()
    # photons from pi0 -> gamma gamma are matched to showers
    first_truth = np.repeat(np.cumsum(ev["n_truth"]) - ev["n_truth"], ev["n_showers"])
    m = showers["truth_index"] >= 0
    assert (truth["pdg"][first_truth[m] + showers["truth_index"][m]] == 22).sum() >= 10


def test_dst_round_trips_through_root(tmp_path: Path, dst_h5: Path) -> None:
    root = tmp_path / "rhopi.root"
    export_root(dst_h5, root)
    back = tmp_path / "back.h5"
    ingest_root(root, back)
    assert content_digest(back) == content_digest(dst_h5)
    assert file_info(back)["provenance"] == file_info(dst_h5)["provenance"]


def test_dst_cli(run_cli, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    result = run_cli("ingest", shared_data / DST, "--format", "besiii-dst", "--channel", "rhopi", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "10 events" in result.stdout
    inspected = run_cli("inspect", out, "--json")
    assert inspected.exit_code == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["fields"]["tracks.tof"]["nan"] == int(np.isnan(read_events(out)["tracks"]["tof"]).sum())
    assert info["fields"]["events.n_showers"]["min"] == 4 and info["fields"]["events.n_showers"]["max"] == 12
    text = run_cli("inspect", out)
    assert "showers.energy" in text.stdout and "source_sha256" in text.stdout


# --- the CMS Open Data ntuple -------------------------------------------------------------------------


def test_cms_ingest_values(shared_data: Path, cms_h5: Path) -> None:
    import uproot

    src = uproot.open(shared_data / CMS)["events"].arrays(library="np")
    data = read_events(cms_h5)
    tracks = data["tracks"]
    assert file_info(cms_h5)["n_events"] == 2304 and len(tracks["px"]) == 4608
    assert np.array_equal(data["events"]["run"], src["Run"]) and np.array_equal(
        data["events"]["event"], src["Event"]
    )
    for slot in (1, 2):
        for field in ("px", "py", "pz", "phi"):
            assert np.array_equal(tracks[field][slot - 1 :: 2], src[f"{field}{slot}"].astype(np.float32)), (
                field
            )
        assert np.array_equal(tracks["charge"][slot - 1 :: 2], src[f"Q{slot}"])
    # the pair mass from the stored muons reproduces the file's own M (Z peak)
    p4 = [
        np.stack(
            [
                np.sqrt(tracks["p"][s::2].astype(float) ** 2 + MUON_MASS**2),
                tracks["px"][s::2],
                tracks["py"][s::2],
                tracks["pz"][s::2],
            ]
        ).astype(float)
        for s in (0, 1)
    ]
    total = p4[0] + p4[1]
    mass = np.sqrt(np.maximum(total[0] ** 2 - (total[1:] ** 2).sum(axis=0), 0))
    assert np.allclose(mass, src["M"], rtol=2e-4, atol=2e-3)
    # helix derived from momentum: kappa = charge / pT
    pt = np.hypot(src["px1"], src["py1"])
    assert np.allclose(tracks["helix"][0::2, 2], src["Q1"] / pt, rtol=1e-9)
    assert np.isnan(tracks["chi_dedx"]).all() and (tracks["mass_hypothesis"] == 1).all()


def test_cms_round_trip_root_identical(tmp_path: Path, cms_h5: Path, run_cli) -> None:
    import uproot

    root = tmp_path / "zmumu-vbes.root"
    result = run_cli("export-root", cms_h5, "-o", root)
    assert result.exit_code == 0, result.stderr
    exported = uproot.open(root)["events"]
    assert type(exported).__name__.startswith("Model_TTree")
    original = read_events(cms_h5)
    assert np.array_equal(np.concatenate(exported["tracks_px"].array(library="np")), original["tracks"]["px"])
    assert np.array_equal(exported["ntracks"].array(library="np"), original["events"]["n_tracks"])
    back = tmp_path / "back.h5"
    result = run_cli("ingest", root, "-o", back)  # a vbes export needs no mapping
    assert result.exit_code == 0, result.stderr
    again = read_events(back)
    for table, cols in original.items():
        for name, values in cols.items():
            assert values.dtype == again[table][name].dtype
            assert np.array_equal(values, again[table][name], equal_nan=True), f"{table}.{name}"
    assert content_digest(back) == file_info(cms_h5)["digest"]


def test_jagged_ntuple_with_units(tmp_path: Path) -> None:
    import awkward as ak
    import uproot
    import yaml

    counts = np.array([2, 0, 3])
    px = ak.unflatten(np.array([100.0, -200.0, 300.0, 50.0, -75.0]), counts)  # MeV/c
    muons = ak.zip({"px": px, "py": px, "pz": px, "q": ak.values_astype(ak.where(px > 0, 1, -1), np.int32)})
    with uproot.recreate(tmp_path / "jagged.root") as f:
        f.mktree("t", {"runNumber": np.int32, "evt": np.int64, "mu": muons.type})
        f["t"].extend({"runNumber": np.array([5, 5, 5], np.int32), "evt": np.array([1, 2, 3]), "mu": muons})
    mapping = {
        "format": "vbes-root-map/1",
        "tree": "t",
        "events": {"run": "runNumber", "event": "evt"},
        "tables": {
            "tracks": {
                "objects": [
                    {
                        "px": {"branch": "mu_px", "scale": 0.001},
                        "py": {"branch": "mu_py", "scale": 0.001},
                        "pz": {"branch": "mu_pz", "scale": 0.001},
                        "charge": "mu_q",
                    }
                ],
                "derive": ["helix_from_momentum"],
                "fill": {
                    "helix_cov": 0.0,
                    "mass_hypothesis": 1,
                    "dedx": 0.0,
                    "dedx_nhits": 0,
                    "emc_energy": 0.0,
                    "emc_index": -1,
                    "muc_depth": 0.0,
                },
            }
        },
    }
    map_path = tmp_path / "map.yaml"
    map_path.write_text(yaml.safe_dump(mapping))
    ingest_root(tmp_path / "jagged.root", tmp_path / "j.h5", mapping=map_path)
    data = read_events(tmp_path / "j.h5")
    assert data["events"]["n_tracks"].tolist() == [2, 0, 3]
    assert np.allclose(data["tracks"]["px"], [0.1, -0.2, 0.3, 0.05, -0.075])
    assert np.allclose(data["tracks"]["p"], np.sqrt(3) * np.abs([0.1, -0.2, 0.3, 0.05, -0.075]), rtol=1e-6)


# --- bad input ----------------------------------------------------------------------------------------


def test_bad_sources_are_refused(tmp_path: Path, shared_data: Path, run_cli) -> None:
    out = tmp_path / "out.h5"
    with pytest.raises(NotFound, match="nope.dst"):
        ingest_besiii_dst(tmp_path / "nope.dst", out)
    text = tmp_path / "fake.dst"
    text.write_text("not a ROOT file\n" * 100)
    result = run_cli("ingest", text, "--format", "besiii-dst", "-o", out)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "fake.dst: not a readable ROOT file" in result.stderr
    with pytest.raises(InvalidInput, match="no tree 'Event'"):
        ingest_besiii_dst(shared_data / CMS, out)
    with pytest.raises(InvalidInput, match="give a mapping file"):
        ingest_root(shared_data / CMS, out)
    assert not out.exists() and list(tmp_path.iterdir()) == [text]


def test_bad_mappings_are_refused(tmp_path: Path, shared_data: Path) -> None:
    import yaml

    base = yaml.safe_load(example_mapping_path().read_text())
    out = tmp_path / "out.h5"

    def attempt(mapping: dict, error: type, match: str) -> None:
        path = tmp_path / "map.yaml"
        path.write_text(yaml.safe_dump(mapping))
        with pytest.raises(error, match=match):
            ingest_root(shared_data / CMS, out, mapping=path)
        assert not out.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["map.yaml"]

    wrong_branch = json.loads(json.dumps(base))
    wrong_branch["tables"]["tracks"]["objects"][0]["py"] = "py_missing"
    attempt(wrong_branch, InvalidInput, "no branch 'py_missing'")
    unknown = json.loads(json.dumps(base))
    unknown["tables"]["tracks"]["objects"][0]["bogus"] = "px1"
    attempt(unknown, InvalidInput, "unknown field tracks.bogus")
    nan_fill = json.loads(json.dumps(base))
    nan_fill["tables"]["tracks"]["fill"]["dedx"] = float("nan")
    attempt(nan_fill, SchemaError, r"NaN in tracks\.dedx")
    no_fill = json.loads(json.dumps(base))
    del no_fill["tables"]["tracks"]["fill"]["muc_depth"]
    attempt(no_fill, SchemaError, r"tracks\.muc_depth is missing")
    attempt({"tree": "events"}, InvalidInput, "not a mapping file")
