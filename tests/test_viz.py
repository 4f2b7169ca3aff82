"""Scene figure (BEV + cameras), dataset statistics and the path-curvature helper."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from latentvla.data.store import SceneStore
from latentvla.world.stats import compute_stats, path_curvature, plot_stats


@pytest.fixture(scope="session")
def viz_world(tiny_store) -> SceneStore:
    """The session's tiny world (read-only)."""
    return tiny_store


def _read_png(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    return img


def test_show_scene_writes_png(viz_world, tmp_path):
    from latentvla.viz.show import show_scene

    token = viz_world.tokens()[len(viz_world) // 2]
    out = show_scene(viz_world, token, tmp_path / "scene.png")
    assert out == tmp_path / "scene.png" and out.is_file()
    img = _read_png(out)
    h, w = img.shape[:2]
    assert 400 <= h <= 2000 and 700 <= w <= 3000 and w > h
    assert img.std() > 10  # not a blank canvas
    assert out.stat().st_size < 400_000
    assert [p.name for p in tmp_path.iterdir()] == ["scene.png"]  # no temp file left behind


def test_show_scene_with_extra_trajectory(viz_world, tmp_path):
    from latentvla.viz.show import show_scene

    token = viz_world.tokens()[0]
    scene = viz_world.load_scene(token, with_sim_state=False)
    future = scene.get_future_trajectory().poses.astype(np.float64)
    swerve = future.copy()
    swerve[:, 1] += np.linspace(0.0, 3.0, len(swerve))
    out = show_scene(viz_world, token, tmp_path / "sub" / "extra.png",
                     extra_trajectories={"swerve": swerve, "copy": future}, radius=30.0)
    img = _read_png(out)
    assert img.shape[0] >= 400
    # overwriting an existing figure works (atomic replace)
    out2 = show_scene(viz_world, token, out, extra_trajectories={"swerve": swerve})
    assert out2 == out and _read_png(out2).shape[2] == 3


def test_project_ground_polyline_in_front_camera(viz_world):
    from latentvla.viz.show import project_ground_polyline

    token = viz_world.tokens()[0]
    cam = viz_world.load_scene(token, sensors="current", with_sim_state=False).current_frame.cameras["cam_f0"]
    straight = np.stack([np.arange(1, 9) * 5.0, np.zeros(8), np.zeros(8)], axis=1)
    uv = project_ground_polyline(cam, straight)
    ok = uv[~np.isnan(uv[:, 0])]
    assert len(ok) > 10
    # a straight path ahead on the ground: centred horizontally, below the horizon, rising with distance
    assert np.allclose(ok[:, 0], cam.intrinsics[0, 2], atol=2.0)
    assert np.all(np.diff(ok[:, 1]) < 0) and np.all(ok[:, 1] > cam.intrinsics[1, 2])
    behind = project_ground_polyline(cam, -straight, from_origin=False)
    assert np.isnan(behind).all()


def test_compute_stats_consistent_with_manifest(viz_world):
    stats = compute_stats(viz_world)
    assert set(stats) == {"scenes", "families", "commands", "splits", "by_split", "speed_hist", "curvature_hist"}
    n = len(viz_world)
    assert stats["scenes"] == n > 0
    scenes = viz_world.manifest["scenes"]
    assert stats["families"] == dict(Counter(s["family"] for s in scenes))
    assert stats["commands"] == dict(Counter(s["command"] for s in scenes))
    assert stats["splits"] == dict(Counter(s["split"] for s in scenes))
    for key in ("families", "commands", "splits"):
        assert sum(stats[key].values()) == n
    assert set(stats["by_split"]) == set(stats["splits"])
    for split, sub in stats["by_split"].items():
        assert sum(sub["families"].values()) == stats["splits"][split] == len(viz_world.tokens(split))
        assert sum(sub["commands"].values()) == stats["splits"][split]
    for fam, count in stats["families"].items():
        assert sum(sub["families"].get(fam, 0) for sub in stats["by_split"].values()) == count
    speed = stats["speed_hist"]
    assert speed["edges"] == [float(e) for e in range(21)]
    assert len(speed["counts"]) == 20 and sum(speed["counts"]) == n
    curv = stats["curvature_hist"]
    assert len(curv["edges"]) == len(curv["counts"]) + 1 and sum(curv["counts"]) == n


def test_stats_speed_matches_loaded_scenes(viz_world):
    stats = compute_stats(viz_world)
    edges = np.asarray(stats["speed_hist"]["edges"])
    speeds = [float(np.hypot(*viz_world.load_scene(t, with_sim_state=False).current_frame.ego_status.ego_velocity))
              for t in viz_world.tokens()]
    expected, _ = np.histogram(np.clip(speeds, edges[0], edges[-1]), bins=edges)
    assert stats["speed_hist"]["counts"] == expected.tolist()


def test_plot_stats_writes_png(viz_world, tmp_path):
    out = plot_stats(compute_stats(viz_world), tmp_path / "stats.png")
    img = _read_png(out)
    assert img.shape[0] > 300 and img.shape[1] > 400


def test_path_curvature_on_circle_and_line():
    r = 20.0
    t = np.linspace(0.0, 40.0, 9) / r  # 40 m of arc, 9 poses
    arc = np.stack([r * np.sin(t), r * (1 - np.cos(t)), t], axis=1)
    assert path_curvature(arc) == pytest.approx(1.0 / r, rel=0.05)
    mirrored = arc * [1.0, -1.0, -1.0]  # right turn
    assert path_curvature(mirrored) == pytest.approx(0.05, rel=0.05)
    # heading wrapping through +-pi: start facing -x (heading pi) and turn left
    rotated = np.stack([-arc[:, 0], -arc[:, 1], arc[:, 2] + np.pi], axis=1)
    rotated[:, 2] = (rotated[:, 2] + np.pi) % (2 * np.pi) - np.pi
    assert path_curvature(rotated) == pytest.approx(0.05, rel=0.05)
    line = np.stack([np.linspace(0, 40, 9), np.linspace(0, 10, 9), np.full(9, np.arctan2(10, 40))], axis=1)
    assert path_curvature(line) == pytest.approx(0.0, abs=1e-9)
    standing = np.zeros((9, 3))
    assert path_curvature(standing) == 0.0
