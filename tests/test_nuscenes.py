"""nuScenes open-loop planning: the devkit on our numpy, golden L2 / collision values of a hand-designed scene in
both conventions, the agents (predictions, constant velocity, log replay, a trained planner zero-shot) and errors.

The designed scene (``scene-0103``, in mini_val and val): the ego drives straight at 10 m/s for 9 key frames (global
heading +90 deg, so every frame transform is exercised); samples 0, 1, 2 have 6 later key frames. Along / left
below are metres in the frame of key frame 0; the ego box of key frame f spans along [5f - 1.542, 5f + 2.542] and
left [-0.925, 0.925]. Predictions: sample A (0) is offset 0.5 (k+1) m to the left, B (1) 1 m ahead, C (2) exact.
Obstacles, each present in one future key frame only (absent "now"):

- f2 crossing car (yaw +90 deg, size w 1.0 / l 6.0: along [12.3, 13.3], left [1, 7]): hits A at step 1 only if the
  footprint is length = size[1] rotated by the yaw;
- f3 car (along [13.5, 17.5], left [1.6, 3.4]): A step 2;
- f4 traffic cone ahead: B step 2, never counted;
- f5 pedestrian (left [2.7, 3.3]): A step 4, stp3 only;
- f6 ambulance ahead (vehicle.emergency.*): B step 4, stp3 only;
- f7 truck overlapping the logged ego box: B step 5 and C step 4 collide, but so does the logged ego: excluded;
- f8 barrier overlapping the logged ego box: never counted, not even for the logged trajectory.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from nuscenes_db import CAMERA_COLORS, IMAGE_H, IMAGE_W, Annotation, SceneSpec, write_nuscenes_db

from latentvla.eval import nuscenes_metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")
KEYS = ["collision_1s", "collision_2s", "collision_3s", "collision_avg", "l2_1s", "l2_2s", "l2_3s", "l2_avg"]
SPEED_STEP = 5.0  # metres per 0.5 s


def g(along: float, left: float) -> tuple[float, float]:
    """Key-frame-0 frame of the designed scene -> global (the ego heads +y from (100, 200))."""
    return 100.0 - left, 200.0 + along


def ann(frame: int, name: str, category: str, along: float, left: float, rel_yaw: float, w: float, length: float):
    x, y = g(along, left)
    return Annotation(frame, name, category, x, y, math.pi / 2 + rel_yaw, (w, length, 1.5))


LIDAR_POINTS = np.array([[0.0, 10.0, -1.84, 50.0, 3.0], [5.0, 0.0, 0.0, 7.0, 31.0]], dtype=np.float32)
SCENES = [
    SceneSpec("scene-0103", [(*g(SPEED_STEP * f, 0.0), math.pi / 2) for f in range(9)], [
        ann(2, "xcar", "vehicle.car", 12.8, 4.0, math.pi / 2, 1.0, 6.0),
        ann(3, "car", "vehicle.car", 15.5, 2.5, 0.0, 1.8, 4.0),
        ann(4, "cone", "movable_object.trafficcone", 23.2, 0.0, 0.0, 0.4, 0.4),
        ann(5, "ped", "human.pedestrian.adult", 25.5, 3.0, 0.0, 0.6, 0.6),
        ann(6, "ambulance", "vehicle.emergency.ambulance", 35.5, 0.0, 0.0, 2.0, 5.0),
        ann(7, "truck", "vehicle.truck", 35.5, -1.5, 0.0, 2.0, 6.0),
        ann(8, "barrier", "movable_object.barrier", 40.0, -0.8, 0.0, 0.5, 2.0),
    ], LIDAR_POINTS),
    # a left curve (train split): the 3 s endpoint of its only sample lies 18 m to the left
    SceneSpec("scene-0061", [(4.0 * f, 0.5 * f * f, math.atan2(f, 4.0)) for f in range(7)]),
]
THIRD, NINTH = 100 / 3, 100 / 9
GOLDEN = {  # derivations in the module docstring and test_golden_predictions
    "stp3": {"l2_1s": 7 / 12, "l2_2s": 0.75, "l2_3s": 11 / 12, "l2_avg": 0.75,
             "collision_1s": THIRD / 2, "collision_2s": THIRD / 2, "collision_3s": 2 * NINTH,
             "collision_avg": 500 / 27},
    "uniad": {"l2_1s": 2 / 3, "l2_2s": 1.0, "l2_3s": 4 / 3, "l2_avg": 1.0,
              "collision_1s": THIRD, "collision_2s": 0.0, "collision_3s": 0.0, "collision_avg": NINTH},
}
GT_FLOOR = {"stp3": {"collision_1s": 0.0, "collision_2s": 0.0, "collision_3s": NINTH, "collision_avg": 100 / 27},
            "uniad": {"collision_1s": 0.0, "collision_2s": 0.0, "collision_3s": THIRD, "collision_avg": NINTH}}


@pytest.fixture(scope="module")
def devkit():
    return pytest.importorskip("nuscenes.nuscenes", reason="nuscenes-devkit not installed (the nuscenes extra)")


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory, devkit):
    root = tmp_path_factory.mktemp("nuscenes")
    write_nuscenes_db(root, SCENES, "v1.0-mini")
    write_nuscenes_db(root, SCENES, "v1.0-trainval")
    return root


@pytest.fixture(scope="module")
def source(dataroot):
    from latentvla.data.nuscenes_source import NuScenesSource

    return NuScenesSource(dataroot, "v1.0-mini", "val")


def designed_predictions(tokens: list[str]) -> dict[str, list]:
    k = np.arange(1, 7, dtype=np.float64)
    a = np.stack([SPEED_STEP * k, 0.5 * k, 0 * k], 1)
    b = np.stack([SPEED_STEP * k + 1.0, 0 * k, 0 * k], 1)
    c = np.stack([SPEED_STEP * k, 0 * k, 0 * k], 1)
    return {t: p.tolist() for t, p in zip(tokens, (a, b, c))}


def run(dataroot, agent: str, out=None, **kw) -> dict:
    from latentvla.eval.nuscenes_eval import evaluate_nuscenes

    kw.setdefault("quiet", True)
    return evaluate_nuscenes(dataroot, kw.pop("version", "v1.0-mini"), kw.pop("split", "val"), agent, out, **kw)


def assert_metrics(got: dict, want: dict) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


# --- pure metrics (no devkit) ------------------------------------------------------------------------------------
def test_aggregation_and_obstacle_lists():
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert M.aggregate(v, "uniad") == pytest.approx((2.0, 4.0, 6.0, 4.0))
    assert M.aggregate(v, "stp3") == pytest.approx((1.5, 2.5, 3.5, 2.5))
    for cat in M.UNIAD_VEHICLES:
        assert M.counts_as_obstacle(cat, "uniad") and M.counts_as_obstacle(cat, "stp3")
    for cat in ("vehicle.emergency.police", "human.pedestrian.child", "human.pedestrian.wheelchair"):
        assert M.counts_as_obstacle(cat, "stp3") and not M.counts_as_obstacle(cat, "uniad")
    for cat in ("movable_object.trafficcone", "movable_object.barrier", "animal", "vehicle.ego",
                "static_object.bicycle_rack"):
        assert not M.counts_as_obstacle(cat, "stp3") and not M.counts_as_obstacle(cat, "uniad")
    with pytest.raises(ValueError, match="convention 'vad'"):
        M.aggregate(v, "vad")


def test_ego_box_geometry():
    # the ego box spans x in [0.5 - 2.042, 0.5 + 2.042], y in [-0.925, 0.925] at the origin pose
    ego = M.ego_boxes(np.zeros((1, 3)))[0]
    assert ego == pytest.approx([0.5, 0.0, 0.0, 4.084, 1.85])
    unit = lambda x, y, yaw=0.0: np.array([[x, y, yaw, 1.0, 1.0]])  # noqa: E731 - 1 m squares
    assert M.overlaps(ego, unit(2.542 + 0.49, 0.0))[0]  # 1 cm overlap ahead
    assert not M.overlaps(ego, unit(2.542 + 0.5, 0.0))[0]  # touching: zero area
    assert not M.overlaps(ego, unit(-1.542 - 0.51, 0.0))[0]  # behind, 1 cm apart
    assert M.overlaps(ego, unit(0.0, 0.925 + 0.49))[0] and not M.overlaps(ego, unit(0.0, 0.925 + 0.51))[0]
    # rotated by the pose heading: at heading 90 deg the box is 4.084 m long in y, centred 0.5 m ahead (y)
    up = M.ego_boxes(np.array([[0.0, 0.0, math.pi / 2]]))[0]
    assert M.overlaps(up, unit(0.0, 2.542 + 0.49))[0] and not M.overlaps(up, unit(0.0, 2.542 + 0.51))[0]
    assert not M.overlaps(up, unit(0.925 + 0.51, 0.0))[0]
    coll = M.step_collisions(np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]), [unit(10.0, 0.0), unit(10.0, 0.0)])
    assert coll.tolist() == [False, True]


def test_summary_excludes_logged_collisions_but_keeps_the_denominator():
    obstacles = [M.StepObstacles(np.zeros((0, 5)), [])] * 6
    hit = [M.StepObstacles(np.array([[5.0, 0.0, 0.0, 4.0, 2.0]]), ["vehicle.car"])] + obstacles[1:]
    gt = np.stack([np.arange(1, 7) * 5.0, np.zeros(6), np.zeros(6)], 1)
    still = np.zeros((6, 3))
    r1 = M.evaluate_sample("a", gt, gt, hit)  # logged collides at step 0: excluded
    r2 = M.evaluate_sample("b", still, gt, obstacles)  # stands still: L2 5 (k+1), no collision
    out = M.summarize([r1, r2])
    assert out["samples"] == 2
    assert out["uniad"]["collision_1s"] == 0.0 and out["gt_collision"]["uniad"]["collision_1s"] == 0.0
    assert out["gt_collision"]["stp3"]["collision_1s"] == pytest.approx(25.0)  # mean(50 %, 0 %)
    assert out["uniad"]["l2_1s"] == pytest.approx(5.0) and out["stp3"]["l2_3s"] == pytest.approx(8.75)
    with pytest.raises(ValueError, match="at least 6"):
        M.evaluate_sample("c", still[:5], gt, obstacles)


def test_missing_devkit_says_how_to_install(monkeypatch, tmp_path):
    import sys

    from latentvla.data.nuscenes_source import import_devkit

    monkeypatch.setitem(sys.modules, "nuscenes", None)
    with pytest.raises(ValueError, match=r"pip install --no-deps nuscenes-devkit==1.2.0"):
        import_devkit()


# --- the devkit and the tiny DB ----------------------------------------------------------------------------------
def test_devkit_loads_the_tiny_db_with_our_numpy(dataroot, devkit):
    from nuscenes.utils.splits import create_splits_scenes

    assert int(np.__version__.split(".")[0]) >= 2
    nusc = devkit.NuScenes(version="v1.0-mini", dataroot=str(dataroot), verbose=False)
    assert len(nusc.scene) == 2 and len(nusc.sample) == 16 and len(nusc.sample_data) == 16 * 7
    sample = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    assert set(sample["data"]) == {"CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT", "CAM_BACK", "CAM_BACK_LEFT",
                                   "CAM_BACK_RIGHT", "LIDAR_TOP"}
    cats = {a["category_name"] for a in nusc.sample_annotation}
    assert "movable_object.trafficcone" in cats and "vehicle.emergency.ambulance" in cats
    assert nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]).endswith(".pcd.bin")
    splits = create_splits_scenes()
    assert "scene-0103" in splits["mini_val"] and "scene-0061" in splits["mini_train"]


def test_samples_ground_truth_and_obstacles(source):
    tokens = source.eval_tokens()
    assert len(tokens) == 3  # 9 key frames minus the last 6
    gt = source.ground_truth(tokens[1])
    k = np.arange(1, 7)
    np.testing.assert_allclose(gt, np.stack([SPEED_STEP * k, 0 * k, 0 * k], 1), atol=1e-9)
    steps = source.obstacles(tokens[0])
    assert [len(s.categories) for s in steps] == [0, 1, 1, 1, 1, 1]  # f1..f6: xcar, car, cone, ped, ambulance
    xcar = steps[1].boxes[0]  # footprint: length size[1] = 6 along the yaw (+90 deg relative)
    np.testing.assert_allclose(xcar, [12.8, 4.0, math.pi / 2, 6.0, 1.0], atol=1e-9)
    later = source.obstacles(tokens[2])  # the same car seen from key frame 2 (10 m further)
    assert later[0].categories == ["vehicle.car"] and later[0].boxes[0][0] == pytest.approx(5.5)


def test_zero_shot_agent_input(source):
    from latentvla.data.nuscenes_source import NuScenesSource

    tokens = source.eval_tokens()
    ai = source.agent_input(tokens[2], "current", None, ego_status=True)
    assert len(ai.ego_statuses) == 4 and ai.token == tokens[2]
    np.testing.assert_allclose([s.ego_pose[0] for s in ai.ego_statuses], [-10.0, -10.0, -5.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(ai.current.ego_velocity, [10.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(ai.current.ego_acceleration, [0.0, 0.0], atol=1e-3)
    assert ai.current.command == "straight"
    cams = ai.cameras[-1]
    assert set(cams) == {"cam_f0", "cam_l0", "cam_r0", "cam_l2", "cam_r2", "cam_b0"}
    assert ai.cameras[0] == {} and ai.lidars[0] is None
    for name, channel in (("cam_f0", "CAM_FRONT"), ("cam_l2", "CAM_BACK_LEFT"), ("cam_b0", "CAM_BACK")):
        img = cams[name].image
        assert img.shape == (IMAGE_H, IMAGE_W, 3) and img.dtype == np.uint8
        np.testing.assert_allclose(img[IMAGE_H // 2, IMAGE_W // 2], CAMERA_COLORS[channel], atol=3)  # RGB order
    # cam_l0 looks 55 deg to the left: a point there projects onto the image centre
    uv, depth = cams["cam_l0"].project(cams["cam_l0"].sensor2ego_translation + 10 * np.array(
        [[math.cos(math.radians(55)), math.sin(math.radians(55)), 0.0]]))
    np.testing.assert_allclose(uv[0], [IMAGE_W / 2, IMAGE_H / 2], atol=1e-6)
    assert depth[0] == pytest.approx(10.0)
    pts = ai.lidars[-1].points  # LiDAR frame (x right, y forward) -> ego frame (x forward, y left)
    np.testing.assert_allclose(pts, [[10.943713, 0.0, 0.00023, 50.0, 3.0], [0.943713, -5.0, 1.84023, 7.0, 31.0]],
                               atol=1e-4)
    blind = source.agent_input(tokens[0], "none", None, ego_status=False)
    assert all(not s.ego_velocity.any() and not s.ego_acceleration.any() for s in blind.ego_statuses)
    np.testing.assert_allclose([s.ego_pose[0] for s in blind.ego_statuses], [0.0] * 4, atol=1e-6)  # padded
    assert blind.lidars == [None] * 4 and blind.current.command == "straight"
    train = NuScenesSource(source.dataroot, "v1.0-mini", "train")
    curve = train.agent_input(train.eval_tokens()[0], "none")
    assert curve.current.command == "left"
    # the first key frame copies key frame 1's backward difference (4, 0.5) m / 0.5 s in frame 1 (yaw atan(1/4))
    c, s = math.cos(math.atan2(1.0, 4.0)), math.sin(math.atan2(1.0, 4.0))
    np.testing.assert_allclose(curve.current.ego_velocity, [8 * c + s, -8 * s + c], atol=1e-4)


def test_golden_predictions(dataroot, source, tmp_path):
    """Per-step mean L2 (0.5 (k+1) + 1 + 0) / 3 = [1/2, 2/3, 5/6, 1, 7/6, 4/3]; counted collisions per step:
    stp3 [0, 1, 1, 0, 2, 0] / 3 (A xcar, A car, A ped + B ambulance), uniad [0, 1, 1, 0, 0, 0] / 3; the logged
    trajectory collides at steps 4 (C, truck) and 5 (B, truck) in both conventions."""
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(designed_predictions(source.eval_tokens())))
    out = tmp_path / "nuscenes.json"
    summary = run(dataroot, f"predictions:{preds}", out)
    on_disk = json.loads(out.read_text())
    assert on_disk == summary
    assert sorted(on_disk) == ["gt_collision", "samples", "stp3", "uniad"]
    assert on_disk["samples"] == 3
    for conv in ("stp3", "uniad"):
        assert sorted(on_disk[conv]) == KEYS and sorted(on_disk["gt_collision"][conv]) == KEYS
        assert_metrics(on_disk[conv], GOLDEN[conv])
        assert_metrics(on_disk["gt_collision"][conv], {**GT_FLOOR[conv], "l2_avg": 0.0})
    # (N, 2) predictions get headings from the path (A: atan(0.1) = 5.7 deg; B, C: 0): the same overlaps
    xy = {t: np.asarray(p)[:, :2].tolist() for t, p in designed_predictions(source.eval_tokens()).items()}
    preds.write_text(json.dumps(xy))
    two = run(dataroot, f"predictions:{preds}")
    for conv in ("stp3", "uniad"):
        assert_metrics(two[conv], GOLDEN[conv])


def test_constant_velocity_and_log_replay(dataroot, tmp_path):
    with_ego = run(dataroot, "constant-velocity")
    for conv in ("stp3", "uniad"):  # 10 m/s held: exactly the logged future, whose collisions are excluded
        assert_metrics(with_ego[conv], dict.fromkeys(KEYS, 0.0))
    blind = run(dataroot, "constant-velocity", ego_status=False)  # stands still: L2 = 5 (k+1)
    assert_metrics(blind["uniad"], {"l2_1s": 10.0, "l2_2s": 20.0, "l2_3s": 30.0, "l2_avg": 20.0,
                                    "collision_avg": 0.0})
    assert_metrics(blind["stp3"], {"l2_1s": 7.5, "l2_2s": 12.5, "l2_3s": 17.5, "l2_avg": 12.5, "collision_avg": 0.0})
    replay = run(dataroot, "log-replay", limit=2)
    assert replay["samples"] == 2 and replay["uniad"]["l2_avg"] == 0.0 and replay["stp3"]["collision_avg"] == 0.0
    assert replay["gt_collision"]["uniad"]["collision_3s"] == pytest.approx(50.0)  # B's truck, of 2 samples
    train = run(dataroot, "constant-velocity", version="v1.0-trainval", split="train")
    assert train["samples"] == 1
    assert run(dataroot, "constant-velocity", version="v1.0-trainval", split="val")["samples"] == 3


def test_errors_name_the_item(dataroot, source, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        run(tmp_path / "nowhere", "constant-velocity")
    with pytest.raises(ValueError, match="no 'v1.0-trainval'"):
        run(write_nuscenes_db(tmp_path / "mini_only", SCENES[1:]), "constant-velocity", version="v1.0-trainval")
    with pytest.raises(ValueError, match="unknown nuScenes version 'v2.0'"):
        run(dataroot, "constant-velocity", version="v2.0")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        run(dataroot, "constant-velocity", split="test")
    with pytest.raises(ValueError, match="unknown agent 'teleport'"):
        run(dataroot, "teleport")
    with pytest.raises(ValueError, match="'pdm-closed' cannot run on nuScenes"):
        run(dataroot, "pdm-closed")
    tokens = source.eval_tokens()
    good = designed_predictions(tokens)
    cases = [({t: good[t] for t in tokens[:2]}, f"no trajectory for sample token '{tokens[2]}'"),
             ({**good, tokens[1]: good[tokens[1]][:5]}, f"sample {tokens[1]}: 5 poses"),
             ({**good, tokens[0]: [[1, 2, 3, 4]] * 6}, f"sample {tokens[0]}: poses must be"),
             ({**good, tokens[2]: [[float("nan"), 0, 0]] * 6}, f"sample {tokens[2]}: poses contain NaN")]
    for i, (data, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            run(dataroot, f"predictions:{path}")


@pytest.fixture(scope="module")
def planner_run(tmp_path_factory):
    """A TransFuser trained for one epoch on a 30-scene quick world (about 15 s): the cheapest real planner run."""
    from latentvla.config import resolve
    from latentvla.planner.configuration import PlannerConfig
    from latentvla.planner.train import train
    from latentvla.world.configuration import WorldConfig
    from latentvla.world.generate import generate

    root = tmp_path_factory.mktemp("nuscenes_planner")
    generate(root / "world", resolve(WorldConfig, "world", "quick", overrides=["scenes=30", "seed=7"]), workers=1,
             quiet=True)
    cfg = resolve(PlannerConfig, "planner", "quick", overrides=["host=transfuser", "train.epochs=1"])
    train(root / "world", root / "run", cfg, quiet=True, cache_root=root / "cache")
    return root / "run"


def test_trained_planner_runs_zero_shot(dataroot, planner_run, runner, tmp_path):
    from latentvla.eval.eval_cli import eval_app

    outs = {}
    for flag in ([], ["--no-ego-status"]):
        out = tmp_path / f"planner{len(flag)}.json"
        res = runner.invoke(eval_app, ["nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini",
                                       "--split", "val", "--agent", str(planner_run), "--out", str(out), "--quiet",
                                       *flag])
        assert res.exit_code == 0, res.output
        outs[bool(flag)] = json.loads(out.read_text())
    for summary in outs.values():
        assert summary["samples"] == 3
        for conv in ("stp3", "uniad"):
            assert sorted(summary[conv]) == KEYS and all(math.isfinite(v) for v in summary[conv].values())
    assert outs[True]["uniad"]["l2_avg"] != outs[False]["uniad"]["l2_avg"]  # the ego status reaches the planner
    res = runner.invoke(eval_app, ["nuscenes", "--dataroot", str(dataroot), "--version", "v1.0-mini", "--agent",
                                   "log-replay", "--split", "test", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "unknown split 'test'" in res.output
