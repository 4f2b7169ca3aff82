"""World -> OpenScene export -> NAVSIM reader: same tokens, same scenes, same PDMS; training and scoring with
``--data navsim:...``; errors that name the broken file; the doctor."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.data.store import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
ALL = "navsim:train,val,test"


@pytest.fixture(scope="module")
def exported(tiny_world, tmp_path_factory):
    from latentvla.data.openscene_export import export_openscene

    root = tmp_path_factory.mktemp("openscene")
    counts = export_openscene(tiny_world, root, quiet=True)
    return root, counts


@pytest.fixture
def navsim_env(exported, monkeypatch, tmp_path_factory):
    root, _ = exported
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(root))
    monkeypatch.setenv("NUPLAN_MAPS_ROOT", str(root / "maps"))
    monkeypatch.setenv("LATENTVLA_CACHE_ROOT", str(tmp_path_factory.getbasetemp() / "navsim_cache"))
    monkeypatch.delenv("NAVSIM_DEVKIT_ROOT", raising=False)
    return root


def test_export_writes_the_real_layout(exported, tiny_store):
    root, counts = exported
    assert counts == {s: len(tiny_store.tokens(s)) for s in ("train", "val", "test")}
    pkls = sorted((root / "navsim_logs" / "test").glob("*.pkl"))
    assert pkls and (root / "maps" / "nuplan-maps-v1.0.json").is_file()
    frames = pickle.loads(pkls[0].read_bytes())
    fr = frames[3]
    for key in ("token", "timestamp", "log_name", "map_location", "ego2global_translation", "ego2global_rotation",
                "ego_dynamic_state", "driving_command", "roadblock_ids", "traffic_lights", "anns", "cams",
                "lidar_path"):
        assert key in fr, key
    assert set(fr["anns"]) >= {"gt_boxes", "gt_names", "gt_velocity_3d", "instance_tokens", "track_tokens"}
    cam = fr["cams"]["CAM_F0"]
    assert set(cam) >= {"data_path", "sensor2lidar_rotation", "sensor2lidar_translation", "cam_intrinsic",
                        "distortion"}
    blobs = root / "sensor_blobs" / "test"
    assert (blobs / cam["data_path"]).read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    assert (blobs / fr["lidar_path"]).read_bytes().startswith(b"# .PCD")
    text = (root / "scene_filters" / "test.yaml").read_text()
    assert "navsim.common.dataclasses.SceneFilter" in text and "tokens:" in text


def _close(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol)


def test_round_trip_same_tokens_and_scenes(navsim_env, tiny_store):
    from latentvla.data.store import open_store

    src = open_store(ALL)
    for split in ("train", "val", "test"):
        assert src.tokens(split) == tiny_store.tokens(split)
    ids = None
    for token in tiny_store.tokens("test")[::4] + tiny_store.tokens("train")[:1]:
        a = tiny_store.load_scene(token, sensors="all", with_sim_state=False)
        b = src.load_scene(token, sensors="all")
        assert b.metadata.scene_token == token and b.metadata.initial_token == a.metadata.initial_token
        assert (b.metadata.family, b.metadata.command) == (a.metadata.family, a.metadata.command)
        for fa, fb in zip(a.frames, b.frames, strict=True):
            assert fa.token == fb.token and fa.timestamp == fb.timestamp
            _close(fa.ego_status.ego_pose, fb.ego_status.ego_pose, 1e-9)
            _close(fa.ego_status.ego_velocity, fb.ego_status.ego_velocity)
            _close(fa.ego_status.ego_acceleration, fb.ego_status.ego_acceleration)
            assert fa.ego_status.command == fb.ego_status.command
            _close(fa.annotations.boxes, fb.annotations.boxes)
            _close(fa.annotations.velocity_3d, fb.annotations.velocity_3d)
            assert fa.annotations.names == fb.annotations.names
            assert fa.annotations.track_tokens == fb.annotations.track_tokens
            np.testing.assert_array_equal(fa.annotations.brake_lights, fb.annotations.brake_lights)
            ids = ids or _id_map(a.map_api, b.map_api)
            assert [ids[r] for r in fa.roadblock_ids] == fb.roadblock_ids
            assert [(ids[t.lane_id], t.state) for t in fa.traffic_lights] == \
                [(t.lane_id, t.state) for t in fb.traffic_lights]
            assert sorted(fa.cameras) == sorted(fb.cameras)
            for name, ca in fa.cameras.items():
                cb = fb.cameras[name]
                _close(ca.intrinsics, cb.intrinsics)
                _close(ca.sensor2ego_rotation, cb.sensor2ego_rotation)
                _close(ca.sensor2ego_translation, cb.sensor2ego_translation)
                assert (cb.width, cb.height) == (ca.width, ca.height) and cb.image.shape == ca.image.shape
                err = np.abs(cb.image.astype(int) - ca.image.astype(int)).mean()
                assert err < 4.0, f"{name}: JPEG round trip mean abs error {err:.2f}"
            _close(fa.lidar.points[:, :5], fb.lidar.points[:, :5], 1e-4)
        assert abs(a.map_api.drivable_area.symmetric_difference(b.map_api.drivable_area).area) < 1e-6
        assert len(a.map_api.lanes) == len(b.map_api.lanes)
        ids = None


def _id_map(a, b) -> dict[str, str]:
    """Our map ids -> the export's FIDs, matched by geometry (centerline start/end, polygon centroid)."""
    out = {}
    for lid, lane in a.lanes.items():
        match = [k for k, ln in b.lanes.items() if ln.centerline.shape == lane.centerline.shape
                 and np.allclose(ln.centerline, lane.centerline, atol=1e-6)]
        assert len(match) == 1, lid
        out[lid] = match[0]
        out.setdefault(lane.roadblock_id, b.lanes[match[0]].roadblock_id)
    return out


def test_agent_input_round_trip(navsim_env, tiny_store):
    from latentvla.data.store import open_store

    src = open_store(ALL)
    token = tiny_store.tokens("test")[0]
    a, b = tiny_store.load_agent_input(token), src.load_agent_input(token)
    for sa, sb in zip(a.ego_statuses, b.ego_statuses, strict=True):
        _close(sa.ego_pose, sb.ego_pose, 1e-5)
        assert sa.command == sb.command
    assert b.lidars[-1] is not None and b.cameras[-1]["cam_f0"].image is not None


def test_score_identical_on_both(navsim_env, tiny_world, cache_dir):
    from latentvla.agents import load_agent
    from latentvla.eval.runner import score_split

    for agent in ("constant-velocity", "log-replay"):
        rows_w, sum_w = score_split(tiny_world, load_agent(agent), split="test", quiet=True,
                                    cache_root=cache_dir)
        rows_n, sum_n = score_split(ALL, load_agent(agent), split="test", quiet=True)
        assert [r["token"] for r in rows_w] == [r["token"] for r in rows_n]
        for rw, rn in zip(rows_w, rows_n):
            assert rw["valid"] and rn["valid"]
            for key in ("nc", "dac", "ttc", "ep", "c", "ddc", "pdms"):
                assert rw[key] == pytest.approx(rn[key], abs=1e-9), (agent, rw["token"], key)
        assert sum_w["mean"]["pdms"] == pytest.approx(sum_n["mean"]["pdms"], abs=1e-12)


def test_cli_trains_and_scores_on_navsim(navsim_env, runner, tmp_path, tiny_store):
    run = tmp_path / "egomlp"
    res = runner.invoke(app, ["planner", "train", "--data", ALL, "--host", "ego-mlp", "--out", str(run),
                              "--profile", "quick", "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "scores.csv"
    res = runner.invoke(app, ["score", "--data", ALL, "--agent", str(run), "--split", "test", "--out", str(out),
                              "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert summary["scenes"] == len(tiny_store.tokens("test")) and summary["invalid"] == 0
    assert 0.0 <= summary["mean"]["pdms"] <= 1.0


def test_single_split_holds_out_validation_logs(navsim_env, tiny_store):
    from latentvla.data.store import open_store

    src = open_store("navsim:train")
    train, val = src.tokens("train"), src.tokens("val")
    assert val and train and not src.tokens("test")
    assert sorted(train + val) == sorted(tiny_store.tokens("train"))
    assert not set(src.tokens_by_log("train")) & set(src.tokens_by_log("val"))
    assert open_store("navsim:train").tokens("val") == val  # deterministic


# --- errors ------------------------------------------------------------------------------------------------
@pytest.fixture
def one_log_copy(exported, tmp_path, monkeypatch):
    """A private OpenScene root with one exported test log (safe to corrupt)."""
    root, _ = exported
    pkl = sorted((root / "navsim_logs" / "test").glob("*.pkl"))[0]
    dst = tmp_path / "os"
    (dst / "navsim_logs" / "test").mkdir(parents=True)
    shutil.copy(pkl, dst / "navsim_logs" / "test" / pkl.name)
    shutil.copytree(root / "sensor_blobs" / "test" / pkl.stem, dst / "sensor_blobs" / "test" / pkl.stem)
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(dst))
    monkeypatch.setenv("NUPLAN_MAPS_ROOT", str(root / "maps"))
    monkeypatch.setenv("LATENTVLA_CACHE_ROOT", str(tmp_path / "cache"))
    return dst, pkl.stem


def test_errors_name_the_file(one_log_copy):
    from latentvla.data.store import open_store

    root, log = one_log_copy
    src = open_store("navsim:test")
    token = src.tokens("test")[0]
    frames = pickle.loads((root / "navsim_logs" / "test" / f"{log}.pkl").read_bytes())
    cur = frames[[f["token"] for f in frames].index(token)]
    cam = root / "sensor_blobs" / "test" / cur["cams"]["CAM_F0"]["data_path"]
    cam.unlink()
    with pytest.raises(DataError, match=rf"{cam.name} is missing"):
        src.load_agent_input(token)
    other = src.tokens("test")[1]  # another current frame, whose camera files are intact
    pcd = root / "sensor_blobs" / "test" / frames[[f["token"] for f in frames].index(other)]["lidar_path"]
    pcd.write_bytes(pcd.read_bytes().replace(b"FIELDS", b"FIELD", 1))
    with pytest.raises(DataError, match=rf"{pcd.name}: unexpected \.pcd header line"):
        open_store("navsim:test").load_scene(other, sensors="current")
    pkl = root / "navsim_logs" / "test" / f"{log}.pkl"
    pkl.write_bytes(pkl.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{log}\.pkl is not a readable pickle"):
        open_store("navsim:test")


def test_pickle_with_foreign_class_is_refused(one_log_copy):
    from collections import OrderedDict

    from latentvla.data.safe_pickle import UnsafePickleError
    from latentvla.data.store import open_store

    root, log = one_log_copy
    pkl = root / "navsim_logs" / "test" / f"{log}.pkl"
    frames = pickle.loads(pkl.read_bytes())
    frames[0]["anns"] = OrderedDict(frames[0]["anns"])
    pkl.write_bytes(pickle.dumps(frames))
    with pytest.raises(UnsafePickleError, match=rf"{log}\.pkl: refusing to unpickle 'collections\.OrderedDict'"):
        open_store("navsim:test")


def test_env_validation(monkeypatch, tmp_path):
    from latentvla.data.store import open_store

    monkeypatch.delenv("OPENSCENE_DATA_ROOT", raising=False)
    with pytest.raises(DataError, match="OPENSCENE_DATA_ROOT is not set"):
        open_store("navsim:navtest")
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError, match="does not contain navsim_logs"):
        open_store("navsim:navtest")
    (tmp_path / "navsim_logs" / "trainval").mkdir(parents=True)
    with pytest.raises(DataError, match=r"navsim split 'navtest'.*navsim_logs/test does not exist.*trainval"):
        open_store("navsim:navtest")


def test_doctor(one_log_copy, runner):
    root, log = one_log_copy
    res = runner.invoke(app, ["data", "doctor", "--data", "navsim:test", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["problems"] == [] and report["splits"][0]["scenes_found"] > 0
    victim = sorted((root / "sensor_blobs" / "test" / log / "CAM_F0").glob("*.jpg"))[5]
    victim.unlink()
    res = runner.invoke(app, ["data", "doctor", "--data", "navsim:test", "--json"])
    assert res.exit_code == 1
    report = json.loads(res.output)
    assert any(victim.name in m for m in report["missing_sensor_files"])
    assert any("sensor files are missing" in p for p in report["problems"])


def test_lam_labels_navsim_scenes(navsim_env, lam_run, runner, tiny_store, tmp_path):
    """Labelling (LAM features from the JPEG cameras of every log frame) works on --data navsim:..."""
    run = tmp_path / "lam"
    shutil.copytree(lam_run[0], run, ignore=shutil.ignore_patterns("labels"))
    res = runner.invoke(app, ["lam", "label", "--run", str(run), "--data", ALL, "--workers", "1"])
    assert res.exit_code == 0, res.output
    (path,) = (run / "labels").glob("*.json")
    labels = json.loads(path.read_text())["scenes"]
    assert set(labels) == set(tiny_store.tokens())
    assert {v["split"] for v in labels.values()} == {"train", "val", "test"}


def test_devkit_scene_filter_resolution(exported, monkeypatch, tmp_path, tiny_store):
    """navsim:NAME reads NAVSIM's own train_test_split config: data_split picks the log directory, the
    scene filter's tokens pick the scenes (as navtest.yaml / scene_filter/navtest.yaml do)."""
    import yaml

    root, _ = exported
    devkit = tmp_path / "devkit"
    cfg = devkit / "navsim/planning/script/config/common/train_test_split"
    (cfg / "scene_filter").mkdir(parents=True)
    (cfg / "mytest.yaml").write_text("defaults:\n  - scene_filter: mytest\n\ndata_split: test\n")
    keep = tiny_store.tokens("test")[::3]
    (cfg / "scene_filter" / "mytest.yaml").write_text(yaml.safe_dump(
        {"_target_": "navsim.common.dataclasses.SceneFilter", "num_history_frames": 4, "num_future_frames": 10,
         "frame_interval": 1, "has_route": True, "max_scenes": None, "log_names": None, "tokens": keep}))
    monkeypatch.setenv("OPENSCENE_DATA_ROOT", str(root))
    monkeypatch.setenv("NAVSIM_DEVKIT_ROOT", str(devkit))
    monkeypatch.setenv("LATENTVLA_CACHE_ROOT", str(tmp_path / "cache"))
    from latentvla.data.store import open_store

    src = open_store("navsim:mytest")
    assert src.tokens("test") == keep and src.splits[0].log_dir == "test"
    (cfg / "scene_filter" / "twostage.yaml").write_text("num_history_frames: 4\nnum_future_frames: 8\n")
    (cfg / "twostage.yaml").write_text("data_split: test\n")
    with pytest.raises(DataError, match="two-stage splits are not supported"):
        open_store("navsim:twostage")
