"""Planner features (AgentInput only), targets (privileged Scene) and their on-disk cache."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import shutil

import numpy as np
import pytest

from latentvla.data.store import DataError
from latentvla.map_api import Lane, MapAPI
from latentvla.planner.cache import PlannerCache, planner_cache_key
from latentvla.planner.configuration import (
    BEV_CLASSES,
    CameraFeatureConfig,
    FeatureConfig,
    LidarFeatureConfig,
    TargetConfig,
)
from latentvla.planner.features import (
    FEATURE_DTYPES,
    FeatureBuilder,
    feature_keys,
    feature_shapes,
    lidar_bev,
    lite0_backbone,
)
from latentvla.planner.targets import (
    TARGET_DTYPES,
    TARGET_KEYS,
    TargetBuilder,
    agent_targets,
    bev_semantic_map,
    target_shapes,
)
from latentvla.schema import AgentInput, Annotations, Lidar, Scene, TrafficLightStatus

pytestmark = pytest.mark.usefixtures("one_thread")

CLS = {name: i for i, name in enumerate(BEV_CLASSES)}


def tiny_cfg(backbone: str = "efficientnet-lite0", cameras=("cam_l0", "cam_f0", "cam_r0")) -> FeatureConfig:
    """Small images and grids: fast on CPU, same code paths as the default config."""
    return FeatureConfig(camera=CameraFeatureConfig(cameras=list(cameras), image_height=32, image_width=64,
                                                    backbone=backbone),
                         lidar=LidarFeatureConfig(range_m=32.0, pixels=32),
                         targets=TargetConfig(max_agents=8, bev_pixels=32), batch_size=16)


@pytest.fixture(scope="module")
def some_tokens(tiny_store):
    toks = tiny_store.tokens()
    return [toks[0], toks[len(toks) // 2], toks[-1]]


# --- features ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["efficientnet-lite0", "none"])
def test_feature_shapes_dtypes_ranges(tiny_store, some_tokens, backbone):
    cfg = tiny_cfg(backbone)
    inputs = [tiny_store.load_agent_input(t) for t in some_tokens]
    feats = FeatureBuilder(cfg)(inputs)
    shapes = feature_shapes(cfg)
    assert tuple(feats) == feature_keys(cfg) == tuple(shapes)
    for k, v in feats.items():
        assert v.shape == (3, *shapes[k]) and v.dtype == FEATURE_DTYPES[k], k
        assert np.all(np.isfinite(v.astype(np.float32))), k
    lid = feats["lidar_bev"]
    assert lid.min() >= 0 and lid.max() <= 1 and lid.sum() > 0
    np.testing.assert_allclose(lid * cfg.lidar.max_points, np.rint(lid * cfg.lidar.max_points), atol=1e-6)
    assert lid[:, 0].sum() > 0 and lid[:, 1].sum() > 0  # road below split_height, boxes above it
    ego = feats["ego_status"]
    for i, ai in enumerate(inputs):
        np.testing.assert_array_equal(ego[i, :2], ai.current.ego_velocity)
        np.testing.assert_array_equal(ego[i, 2:4], ai.current.ego_acceleration)
        assert ego[i, 4:].sum() == 1 and ego[i, 4 + ["left", "straight", "right", "unknown"].index(
            tiny_store.info(some_tokens[i])["command"])] == 1
    if backbone == "none":
        import cv2

        img = inputs[0].cameras[-1]["cam_f0"].image
        small = cv2.resize(img, (64, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(feats["camera"][0][:, :, 64:128], small.transpose(2, 0, 1))  # middle camera
    else:
        assert feats["camera_s16"].shape[1:] == (112, 2, 12) and feats["camera_s32"].shape[1:] == (320, 1, 6)


def test_default_feature_shapes():
    shapes = feature_shapes(FeatureConfig())
    assert shapes == {"ego_status": (8,), "lidar_bev": (2, 64, 64), "camera_s16": (112, 6, 36),
                      "camera_s32": (320, 3, 18)}
    assert feature_shapes(FeatureConfig(camera=CameraFeatureConfig(backbone="none")))["camera"] == (3, 96, 576)


def test_lite0_blocks_are_the_packages_stride16_and_stride32_outputs():
    import torch

    bb = lite0_backbone(32, 64)
    outs = [int(b._block_args.output_filters) for b in bb.model._blocks]
    assert (bb.s16_index, bb.s32_index, outs[bb.s16_index], outs[bb.s32_index]) == (10, 15, 112, 320)
    assert outs[bb.s16_index + 1] != 112  # last block of the 112-channel stage
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 64, 3), dtype=np.uint8)
    s16, s32 = bb(images)
    assert s16.shape == (2, 112, 2, 4) and s32.shape == (2, 320, 1, 2)
    from latentvla.lam.encoder import lite0_input

    m = bb.model
    with torch.inference_mode():  # the 1280-channel head on our s32 map gives the package's extract_features
        head = m._swish(m._bn1(m._conv_head(torch.from_numpy(s32)))).numpy()
        ref = m.extract_features(lite0_input(images)).numpy()
    np.testing.assert_allclose(head, ref, atol=1e-4)


def test_cameras_are_stitched_left_to_right(tiny_store, some_tokens):
    inputs = [tiny_store.load_agent_input(some_tokens[0])]
    three = FeatureBuilder(tiny_cfg())(inputs)
    for k, name in enumerate(["cam_l0", "cam_f0", "cam_r0"]):
        one = FeatureBuilder(tiny_cfg(cameras=[name]))(inputs)
        for key in ("camera_s16", "camera_s32"):
            w = one[key].shape[-1]
            np.testing.assert_allclose(three[key][..., k * w:(k + 1) * w].astype(np.float32),
                                       one[key].astype(np.float32), atol=2e-2, rtol=1e-2)


def test_lidar_bev_golden():
    cfg = LidarFeatureConfig(range_m=32.0, pixels=64, split_height=0.2, max_points=5, min_height=-2.0,
                             max_height=100.0)
    pts = [(10.0, 0.0, 0.0), (10.5, 5.2, 1.0), (-10.0, -5.0, 0.1), (31.9, 31.9, 0.0), (32.0, 0.0, 0.0)]
    pts += [(1.5, 1.5, 1.0)] * 7 + [(1.5, -1.5, 0.2)] * 2  # clipped at max_points; z == split_height -> channel 0
    pts += [(40.0, 0.0, 0.0), (0.0, -32.0, 0.0), (5.0, 5.0, -3.0), (5.0, 5.0, 150.0)]  # all dropped
    cloud = np.array([(x, y, z, 0.5, 0) for x, y, z in pts], dtype=np.float32)
    bev = lidar_bev(Lidar(cloud).points, cfg)
    expected = np.zeros((2, 64, 64), np.float32)
    expected[0, 22, 32] = 0.2  # 10 m ahead, centre: upper half, middle column
    expected[1, 21, 26] = 0.2  # ahead and 5.2 m to the left: smaller column
    expected[0, 42, 37] = 0.2  # behind and to the right: lower half, larger column
    expected[0, 0, 0] = 0.2  # front-left corner
    expected[0, 0, 32] = 0.2  # x == range_m is inside (cells are (lo, hi] in x and y)
    expected[1, 30, 30] = 1.0  # 7 points clipped at 5
    expected[0, 30, 33] = 0.4
    np.testing.assert_array_equal(bev, expected)
    assert bev.dtype == np.float32


def test_lidar_bev_forward_shift_golden():
    """center_x_m = 16: the grid covers x in (-16, 48] at the same 1 m cells."""
    cfg = LidarFeatureConfig(range_m=32.0, pixels=64, center_x_m=16.0)
    pts = [(40.0, 0.0, 0.0), (48.0, 0.0, 0.0), (0.0, 0.0, 0.0), (-15.5, 3.0, 0.0)]
    pts += [(-16.0, 0.0, 0.0), (-20.0, 0.0, 0.0), (48.5, 0.0, 0.0)]  # dropped: behind the shifted grid / beyond it
    cloud = np.array([(x, y, z, 0.5, 0) for x, y, z in pts], dtype=np.float32)
    bev = lidar_bev(Lidar(cloud).points, cfg)
    expected = np.zeros((2, 64, 64), np.float32)
    expected[0, 8, 32] = 0.2  # 40 m ahead: out of the centred grid, row 48 - 40 = 8 here
    expected[0, 0, 32] = 0.2  # x == 48 is the top edge (inside)
    expected[0, 48, 32] = 0.2  # the ego itself sits 16 rows above the bottom
    expected[0, 63, 29] = 0.2
    np.testing.assert_array_equal(bev, expected)
    centred = lidar_bev(Lidar(cloud).points, LidarFeatureConfig(range_m=32.0, pixels=64))
    assert centred[0, 8, 32] == 0.0 and centred[0, 0, 32] == 0.0  # 40 m and 48 m ahead are out of range
    assert centred[0, 32, 32] == pytest.approx(0.2) and centred[0, 52, 32] == pytest.approx(0.2)  # ego; 20 m behind


# --- targets -----------------------------------------------------------------------------------------------------
def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _hand_map() -> MapAPI:
    """Global frame; the ego (below) stands at (100, 50) facing global +y, so ego x = gy - 50 and ego y = 100 - gx."""
    lane = Lane("lane_a", centerline=np.array([[100.0, 40.0], [100.0, 80.0]]),
                left_boundary=np.array([[98.0, 40.0], [98.0, 80.0]]),
                right_boundary=np.array([[102.0, 40.0], [102.0, 80.0]]), roadblock_id="rb")
    conn = Lane("conn_a", centerline=np.array([[100.0, 60.0], [100.0, 70.0]]),
                left_boundary=np.array([[98.5, 60.0], [98.5, 70.0]]),
                right_boundary=np.array([[101.5, 60.0], [101.5, 70.0]]), roadblock_id="rb2", is_connector=True)
    return MapAPI("hand", lanes={"lane_a": lane, "conn_a": conn},
                  polygons={"roadblock": {"rb": _rect(96.0, 30.0, 104.0, 90.0)},
                            "walkway": {"w": _rect(85.0, 30.0, 90.0, 90.0)}})


EGO_POSE = np.array([100.0, 50.0, np.pi / 2])


def _ann(boxes: list[tuple], names: list[str]) -> Annotations:
    b = np.array(boxes, dtype=np.float64).reshape(-1, 7)
    return Annotations(b, names, np.zeros((len(b), 3)), [f"t{i}" for i in range(len(b))])


def test_bev_semantic_map_golden():
    ann = _ann([(-6.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0), (5.0, -8.0, 0.0, 0.5, 0.6, 1.7, 0.0)], ["vehicle", "pedestrian"])
    bev = bev_semantic_map(_hand_map(), EGO_POSE, ann, [], range_m=32.0, pixels=64)
    assert bev.dtype == np.uint8 and bev.shape == (64, 64)
    # road: ego y in [-4, 4] -> columns 28..35 over the rows of gy in [30, 82] (ego x in [-20, 32])
    assert bev[5, 29] == CLS["road"] and bev[5, 34] == CLS["road"] and bev[5, 40] == CLS["background"]
    # walkway on the left (ego y in [10, 15]): small column indices
    assert np.all(bev[5, 18:21] == CLS["walkway"]) and bev[5, 45] == CLS["background"]
    # the lane centerline is the ego x axis: column 31 or 32, every row it spans
    assert set(np.flatnonzero(bev[10] == CLS["centerline"])) <= {31, 32} and (bev[10] == CLS["centerline"]).any()
    # a vehicle 6 m behind (lower half) and a pedestrian 5 m ahead, 8 m to the right (larger column)
    rows, cols = np.nonzero(bev == CLS["vehicle"])
    assert set(rows) == set(range(35, 41)) and set(cols) == {31, 32}  # x in [-8.25, -3.75]: the cells it touches
    rows, cols = np.nonzero(bev == CLS["pedestrian"])
    assert len(rows) and set(rows) <= {26, 27} and set(cols) <= {39, 40}
    assert not (bev == CLS["red_lane"]).any()
    # a red light on the connector paints its polygon (ego x in [10, 20], y in [-1.5, 1.5]) over everything
    red = bev_semantic_map(_hand_map(), EGO_POSE, ann, [TrafficLightStatus("conn_a", "red")], 32.0, 64)
    rows, cols = np.nonzero(red == CLS["red_lane"])
    assert set(range(13, 21)) <= set(rows) and rows.min() >= 11 and rows.max() <= 22
    assert set(cols) <= set(range(29, 35)) and {31, 32} <= set(cols)
    green = bev_semantic_map(_hand_map(), EGO_POSE, ann, [TrafficLightStatus("conn_a", "green"),
                                                         TrafficLightStatus("unknown_lane", "red")], 32.0, 64)
    np.testing.assert_array_equal(green, bev)


def test_bev_box_ahead_is_upper_middle():
    ann = _ann([(10.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0)], ["vehicle"])
    bev = bev_semantic_map(MapAPI("empty"), np.zeros(3), ann, [], 32.0, 64)
    rows, cols = np.nonzero(bev == CLS["vehicle"])
    assert set(range(20, 24)) <= set(rows) and set(rows) <= set(range(19, 25)) and set(cols) == {31, 32}


def test_bev_targets_follow_the_forward_shift():
    ann = _ann([(40.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0), (-20.0, 2.0, 0.0, 4.5, 1.9, 1.5, 0.0)], ["vehicle", "vehicle"])
    shifted = bev_semantic_map(MapAPI("empty"), np.zeros(3), ann, [], 32.0, 64, center_x=16.0)
    rows, cols = np.nonzero(shifted == CLS["vehicle"])
    assert set(rows) == set(range(5, 11)) and set(cols) == {31, 32}  # x in [37.75, 42.25]; the car behind is cut
    centred = bev_semantic_map(MapAPI("empty"), np.zeros(3), ann, [], 32.0, 64)
    rows, _ = np.nonzero(centred == CLS["vehicle"])
    assert rows.min() >= 48  # only the car 20 m behind: the one 40 m ahead is out of the centred square
    states, labels = agent_targets(ann, 32.0, 4, center_x=16.0)
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0] and states[0, 0] == pytest.approx(40.0)
    states, labels = agent_targets(ann, 32.0, 4)
    assert labels.tolist() == [1.0, 0.0, 0.0, 0.0] and states[0, 0] == pytest.approx(-20.0)


def test_red_light_in_a_world_scene(tiny_store, some_tokens):
    cfg = tiny_cfg()
    scene = tiny_store.load_scene(some_tokens[1], sensors="none", with_sim_state=False)
    frame = scene.current_frame
    assert not any(tl.is_red for tl in frame.traffic_lights)  # the tiny world has no signals: add one
    pose = frame.ego_status.ego_pose
    lanes = scene.map_api.lanes
    lane_id = min(lanes, key=lambda i: np.min(np.hypot(*(lanes[i].centerline - pose[:2]).T)))  # the ego's lane
    before = TargetBuilder(cfg).build_one(scene)["bev_semantic_map"]
    assert not (before == CLS["red_lane"]).any() and (before == CLS["road"]).any()
    frame.traffic_lights = [TrafficLightStatus(lane_id, "red")]
    after = TargetBuilder(cfg).build_one(scene)["bev_semantic_map"]
    red = after == CLS["red_lane"]
    assert red.sum() > 5
    p = 32 // 2  # the ego stands on that lane: the cells at the grid centre are red
    assert red[p - 1:p + 1, p - 1:p + 1].any()
    np.testing.assert_array_equal(after[~red], before[~red])


def test_agent_states_nearest_first_in_ego_frame(tiny_store):
    cfg = tiny_cfg()
    found = 0
    for tok in tiny_store.tokens():
        scene = tiny_store.load_scene(tok, sensors="none", with_sim_state=False)
        t = TargetBuilder(cfg).build_one(scene)
        ann = scene.current_frame.annotations
        veh = [i for i, n in enumerate(ann.names) if n == "vehicle"
               and abs(ann.boxes[i, 0]) <= 32 and abs(ann.boxes[i, 1]) <= 32]
        k = int(t["agent_labels"].sum())
        assert k == min(len(veh), 8) and np.all(t["agent_labels"][:k] == 1) and np.all(t["agent_labels"][k:] == 0)
        assert np.all(t["agent_states"][k:] == 0)
        d = np.hypot(t["agent_states"][:k, 0], t["agent_states"][:k, 1])
        assert np.all(np.diff(d) >= 0)
        expected = ann.boxes[veh][:, [0, 1, 6, 3, 4]]
        for row in t["agent_states"][:k]:  # each row is one vehicle's annotation (already in the ego frame)
            assert np.abs(expected - row).max(axis=1).min() < 1e-4
        np.testing.assert_array_equal(t["trajectory"], scene.get_future_trajectory().poses)
        found += k >= 2
    assert found >= 3
    ann = _ann([(20, 0, 0, 4, 2, 1, 0.1), (3, 4, 0, 5, 2, 1, 0.2), (50, 0, 0, 4, 2, 1, 0), (1, 1, 0, 1, 1, 1, 0),
                (-2, 0, 0, 4.2, 1.8, 1, -3.0)], ["vehicle", "vehicle", "vehicle", "pedestrian", "vehicle"])
    states, labels = agent_targets(ann, 32.0, 2)
    np.testing.assert_allclose(states, [[-2, 0, -3.0, 4.2, 1.8], [3, 4, 0.2, 5, 2]], atol=1e-6)
    np.testing.assert_array_equal(labels, [1, 1])
    states, labels = agent_targets(ann, 32.0, 5)
    np.testing.assert_array_equal(labels, [1, 1, 1, 0, 0])
    assert states[2, 0] == 20 and np.all(states[3:] == 0)


def test_target_shapes_and_dtypes(tiny_store, some_tokens):
    cfg = tiny_cfg()
    t = TargetBuilder(cfg)([tiny_store.load_scene(k, sensors="none", with_sim_state=False) for k in some_tokens])
    shapes = target_shapes(cfg)
    assert tuple(t) == TARGET_KEYS
    for k, v in t.items():
        assert v.shape == (3, *shapes[k]) and v.dtype == TARGET_DTYPES[k], k
    assert t["bev_semantic_map"].max() < len(BEV_CLASSES)
    assert TargetBuilder(cfg)([])["trajectory"].shape == (0, 8, 3)


# --- no leakage --------------------------------------------------------------------------------------------------
class GuardedInput(AgentInput):
    """An AgentInput that raises on any attribute outside what a planner may see."""

    def __getattribute__(self, name):
        if name.startswith("__") or name in ("ego_statuses", "cameras", "lidars", "token", "current"):
            return object.__getattribute__(self, name)
        raise AssertionError(f"feature builder read AgentInput.{name}")


def test_features_cannot_see_the_map_tracks_or_future(tiny_store, some_tokens):
    assert {f.name for f in dataclasses.fields(AgentInput)} == {"ego_statuses", "cameras", "lidars", "token"}
    params = list(inspect.signature(FeatureBuilder.__call__).parameters.values())
    assert [p.name for p in params] == ["self", "agent_inputs"] and params[1].annotation == "list[AgentInput]"
    cfg = tiny_cfg("none")
    builder = FeatureBuilder(cfg)
    scene = tiny_store.load_scene(some_tokens[1], sensors="current", with_sim_state=False)
    with pytest.raises(TypeError, match="AgentInput only"):
        builder([scene])
    ai = scene.get_agent_input()
    ref = builder([ai])
    guarded = GuardedInput(ai.ego_statuses, ai.cameras, ai.lidars, ai.token)
    for k, v in builder([guarded]).items():
        np.testing.assert_array_equal(v, ref[k])
    for k, v in builder([tiny_store.load_agent_input(some_tokens[1])]).items():  # store path == scene path
        np.testing.assert_array_equal(v, ref[k])
    # change everything privileged: the future, every annotation, the lights and the map
    targets_before = TargetBuilder(cfg).build_one(scene)
    changed = Scene(scene.metadata, [copy.deepcopy(f) for f in scene.frames], MapAPI("empty"), None)
    for f in changed.frames:
        f.annotations = _ann([(5, 0, 0, 4, 2, 1, 0)], ["vehicle"])
        f.traffic_lights = [TrafficLightStatus("x", "red")]
    for f in changed.frames[changed.current_index + 1:]:
        f.ego_status.ego_pose = f.ego_status.ego_pose + np.array([3.0, -2.0, 0.3])
    for k, v in builder([changed.get_agent_input()]).items():
        np.testing.assert_array_equal(v, ref[k])
    targets_after = TargetBuilder(cfg).build_one(changed)
    assert not np.array_equal(targets_after["trajectory"], targets_before["trajectory"])
    assert not np.array_equal(targets_after["bev_semantic_map"], targets_before["bev_semantic_map"])


# --- cache -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planner_cache(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("planner_cache")
    return PlannerCache.open(tiny_world, tiny_cfg(), cache_root=root, quiet=True)


def test_cache_matches_the_builders(planner_cache, tiny_store):
    cfg = tiny_cfg()
    assert planner_cache.tokens("val") == tiny_store.tokens("val")
    toks = [tiny_store.tokens("test")[3], tiny_store.tokens("train")[0], tiny_store.tokens("val")[-1]]
    feats, targs = planner_cache.load(toks)
    direct_f = FeatureBuilder(cfg)([tiny_store.load_agent_input(t) for t in toks])
    direct_t = TargetBuilder(cfg)([tiny_store.load_scene(t, sensors="none", with_sim_state=False) for t in toks])
    for k, v in direct_f.items():
        assert feats[k].dtype == v.dtype and feats[k].shape == v.shape
        np.testing.assert_allclose(feats[k].astype(np.float32), v.astype(np.float32), atol=1e-2, rtol=1e-2)
    np.testing.assert_array_equal(feats["lidar_bev"], direct_f["lidar_bev"])  # stored as exact counts
    for k, v in direct_t.items():
        np.testing.assert_array_equal(targs[k], v)
    f_val, t_val = planner_cache.load_split("val")
    assert len(f_val["ego_status"]) == len(tiny_store.tokens("val")) == len(t_val["trajectory"])
    with pytest.raises(KeyError, match="not_a_scene"):
        planner_cache.load([toks[0], "not_a_scene"])
    assert planner_cache.nbytes() > 0


def test_cache_resumes_only_missing_shards(planner_cache, tiny_world):
    logs = planner_cache.logs
    victim = logs[1]
    before = planner_cache.load(planner_cache.tokens("train"))
    mtimes = {log: planner_cache.file(log).stat().st_mtime_ns for log in logs}
    planner_cache.file(victim).unlink()
    again = PlannerCache.open(tiny_world, tiny_cfg(), cache_root=planner_cache.path.parent, quiet=True)
    assert again.path == planner_cache.path and again.built == [victim]
    for log in logs:
        if log != victim:
            assert again.file(log).stat().st_mtime_ns == mtimes[log]
    after = again.load(again.tokens("train"))
    for b, a in zip(before, after, strict=True):
        for k in b:
            np.testing.assert_array_equal(a[k], b[k])
    assert PlannerCache.open(tiny_world, tiny_cfg(), cache_root=planner_cache.path.parent, quiet=True).built == []


def test_cache_key_follows_the_config(tiny_world):
    base = planner_cache_key(tiny_world, tiny_cfg())
    other = tiny_cfg()
    other.lidar.pixels = 16
    assert planner_cache_key(tiny_world, other) != base
    assert planner_cache_key(tiny_world, tiny_cfg("none")) != base
    batch = tiny_cfg()
    batch.batch_size = 3  # only moves float rounding: same cache
    assert planner_cache_key(tiny_world, batch) == base


def test_corrupt_shard_and_unbuilt_split(tiny_world, tiny_store, tmp_path):
    cfg = tiny_cfg("none")
    cache = PlannerCache.open(tiny_world, cfg, cache_root=tmp_path, quiet=True, splits=["val"])
    assert cache.tokens("val") == tiny_store.tokens("val")
    with pytest.raises(ValueError, match="split 'train'"):
        cache.tokens("train")
    with pytest.raises(KeyError, match="not in planner cache"):
        cache.load(tiny_store.tokens("train")[:1])
    shard = cache.file(cache.logs[0])
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    fresh = PlannerCache.open(tiny_world, cfg, cache_root=tmp_path, quiet=True, splits=["val"])
    assert fresh.built == []
    with pytest.raises(DataError, match=rf"{shard.name}.*corrupt.*delete it"):
        fresh.load(fresh.tokens("val"))
    shard.unlink()
    rebuilt = PlannerCache.open(tiny_world, cfg, cache_root=tmp_path, quiet=True, splits=["val"])
    assert rebuilt.built == [cache.logs[0]] and len(rebuilt.load_split("val")[0]["camera"]) == len(cache.tokens("val"))
    shutil.rmtree(tmp_path / rebuilt.key)
