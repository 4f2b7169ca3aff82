"""What the generated scenes contain: a safe expert, a restartable simulator, consistent sensors, no leakage."""

from __future__ import annotations

import numpy as np
import pytest

from latentvla.schema import CAMERA_NAMES, EGO, Trajectory, global_to_local
from latentvla.world.geometry import box_corners, boxes_overlap
from latentvla.world.sim import Simulator


def _ego_corners_global(pose: np.ndarray) -> np.ndarray:
    cx = pose[0] + EGO.rear_axle_to_center * np.cos(pose[2])
    cy = pose[1] + EGO.rear_axle_to_center * np.sin(pose[2])
    return box_corners(cx, cy, pose[2], EGO.length, EGO.width)


def test_expert_never_collides_nor_leaves_the_road(tiny_store):
    """Checked geometrically on every logged frame of every log (boxes in the ego frame, map polygons)."""
    checked = 0
    for log in sorted({s["log"] for s in tiny_store.manifest["scenes"]}):
        meta = tiny_store._log(log)
        m = tiny_store.load_map(log)
        for fr in meta["frames"]:
            pose = np.asarray(fr["ego"]["pose"])
            assert np.all(m.is_drivable(_ego_corners_global(pose))), (log, fr["token"])
            boxes = np.asarray(fr["boxes"]).reshape(-1, 7)
            if len(boxes):
                ego = box_corners(EGO.rear_axle_to_center, 0.0, 0.0, EGO.length, EGO.width)
                others = box_corners(boxes[:, 0], boxes[:, 1], boxes[:, 6], boxes[:, 3], boxes[:, 4])
                hit = boxes_overlap(np.broadcast_to(ego, others.shape), others)
                assert not hit.any(), (log, fr["token"], np.asarray(fr["track_tokens"])[hit])
            checked += 1
    assert checked > 100


def test_restart_from_scene_reproduces_the_log(tiny_store):
    """A scene's stored state restarts the simulator; run forward, it reproduces the logged future exactly."""
    tokens = tiny_store.tokens()
    for token in tokens[:: max(1, len(tokens) // 6)]:
        scene = tiny_store.load_scene(token)
        sim = Simulator(scene.map_api, scene.sim_state)
        for k in range(1, 9):
            for _ in range(5):
                sim.step()
            logged = scene.frames[scene.current_index + k].ego_status.ego_pose
            np.testing.assert_allclose(sim.ego_rear_axle(), logged, atol=1e-9, err_msg=f"{token} +{k * 0.5}s")
        assert sim.violations() == []


def test_restart_state_is_complete_json(tiny_store):
    import json

    token = tiny_store.tokens()[0]
    state = tiny_store.load_sim_state(token)
    assert json.loads(json.dumps(state)) == state
    assert {"t", "agents", "route", "lights", "spawns", "props", "info"} <= set(state)
    ego = state["agents"][0]
    assert ego["kind"] == "ego" and ego["behavior"]["type"] == "expert"
    assert all({"v0", "T", "s_min", "behavior"} <= set(a) for a in state["agents"])


def test_agent_input_has_no_privileged_data(tiny_store):
    token = tiny_store.tokens("test")[0]
    ai = tiny_store.load_agent_input(token)
    assert len(ai.ego_statuses) == 4 and ai.token == token
    np.testing.assert_allclose(ai.ego_statuses[-1].ego_pose, 0.0, atol=1e-6)
    assert all(s.driving_command.sum() == 1 for s in ai.ego_statuses)
    cur = ai.cameras[-1]
    assert set(cur) == set(tiny_store._log(tiny_store.info(token)["log"])["cameras"])
    assert all(c.image is not None and c.image.dtype == np.uint8 for c in cur.values())
    assert all(c.image is None for cams in ai.cameras[:-1] for c in cams.values())  # default: current frame only
    assert ai.lidars[-1] is not None and ai.lidars[-1].points.shape[1] >= 4
    assert not hasattr(ai, "map_api") and not hasattr(ai, "frames")
    scene = tiny_store.load_scene(token)
    fut = scene.get_future_trajectory()
    assert isinstance(fut, Trajectory) and fut.poses.shape == (8, 3)
    # The imitation target is the logged future in the current ego frame.
    expected = global_to_local(np.stack([f.ego_status.ego_pose for f in scene.frames[4:12]]),
                               scene.current_frame.ego_status.ego_pose)
    np.testing.assert_allclose(fut.poses, expected, atol=1e-4)


def _nearest_box_in_front(scene):
    ann = scene.current_frame.annotations
    best = None
    for i, b in enumerate(ann.boxes):
        if ann.names[i] not in ("vehicle", "pedestrian", "bicycle", "barrier") or not 6.0 < b[0] < 30.0 or abs(b[1]) > 4:
            continue
        if best is None or b[0] < ann.boxes[best][0]:
            best = i
    return best


def _box_corners_3d(b: np.ndarray) -> np.ndarray:
    c2 = box_corners(b[0], b[1], b[6], b[3], b[4])
    return np.concatenate([np.c_[c2, np.zeros(4)], np.c_[c2, np.full(4, b[5])]])


def test_camera_and_lidar_agree_with_boxes(tiny_store):
    """Project annotated 3-D box corners with the stored intrinsics/extrinsics: the object's pixels are there;
    LiDAR returns lie on the box surfaces."""
    import cv2

    found = 0
    for token in tiny_store.tokens():
        scene = tiny_store.load_scene(token, sensors="current", with_sim_state=False)
        i = _nearest_box_in_front(scene)
        if i is None:
            continue
        b = scene.current_frame.annotations.boxes[i]
        cam = scene.current_frame.cameras["cam_f0"]
        uv, depth = cam.project(_box_corners_3d(b))
        if np.any(depth <= 0.5) or uv.min() < 0 or uv[:, 0].max() >= cam.width or uv[:, 1].max() >= cam.height:
            continue
        mask = np.zeros((cam.height, cam.width), np.uint8)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(uv).astype(np.int32)), 1)
        img = cam.image.astype(int)
        inside = img[mask.astype(bool)]
        # Road, sky and grass colours are what the image shows where no object stands.
        background = np.array([[72, 72, 76], [150, 190, 235], [78, 112, 58], [232, 232, 232], [228, 186, 40],
                               [150, 150, 144]])
        is_bg = (np.abs(inside[:, None, :] - background[None]).sum(-1) <= 3).any(-1)
        assert (~is_bg).mean() > 0.6, token
        # LiDAR: returns inside the (slightly inflated) box exist and hug its faces.
        pts = scene.current_frame.lidar.points[:, :3].astype(float)
        d = pts[:, :2] - b[:2]
        c, s = np.cos(b[6]), np.sin(b[6])
        lx, ly = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
        inside_box = (np.abs(lx) <= b[3] / 2 + 0.05) & (np.abs(ly) <= b[4] / 2 + 0.05) & (pts[:, 2] > 0.05) & (
            pts[:, 2] <= b[5] + 0.05)
        if inside_box.any():
            gap = np.minimum.reduce([b[3] / 2 - np.abs(lx), b[4] / 2 - np.abs(ly), b[5] - pts[:, 2]])[inside_box]
            assert np.all(np.abs(gap) < 0.06), token
        found += 1
        if found >= 5:
            break
    assert found >= 2, "the tiny world should have objects ahead in several scenes"


def test_scene_frames_and_conventions(tiny_store):
    token = tiny_store.tokens()[5]
    scene = tiny_store.load_scene(token, sensors="all")
    assert len(scene.frames) == 14 and scene.metadata.scene_token == scene.current_frame.token == token
    ts = [f.timestamp for f in scene.frames]
    assert np.all(np.diff(ts) == 500_000)
    for f in scene.frames:
        assert f.ego_status.in_global_frame
        assert set(f.cameras) <= set(CAMERA_NAMES) and f.lidar is not None
        assert all(tl.state in ("green", "yellow", "red") for tl in f.traffic_lights)
        assert f.roadblock_ids and set(f.roadblock_ids) <= set(scene.map_api.roadblock_ids())
        assert len(f.annotations.names) == len(f.annotations.track_tokens) == len(f.annotations.boxes)
    # Ego velocity is expressed in the ego frame: consistent with the displacement between frames.
    p0, p1 = scene.frames[3].ego_status.ego_pose, scene.frames[4].ego_status.ego_pose
    speed = np.hypot(*(p1[:2] - p0[:2])) / 0.5
    v_mean = 0.5 * (scene.frames[3].ego_status.ego_velocity[0] + scene.frames[4].ego_status.ego_velocity[0])
    assert speed == pytest.approx(v_mean, abs=0.6)
