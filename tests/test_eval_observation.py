"""The scorer's 10 Hz ground-truth observation, with NAVSIM v1.1's interpolation quirks (golden values)."""

from __future__ import annotations

import numpy as np

from latentvla.eval.observation import interpolate_tracks, scene_tracks


def _v(x, y, h, vx=0.0, vy=0.0, length=4.0, width=2.0):
    return np.array([x, y, h, vx, vy, length, width])


def test_linear_interpolation_between_sightings():
    tr = interpolate_tracks({"a": [(0.0, _v(0, 0, 0, 10), "vehicle"), (0.5, _v(5, 1, 0.2, 12), "vehicle")],
                             "b": [(1.0, _v(2, 2, 0), "pedestrian"), (2.0, _v(4, 2, 0), "pedestrian")]})
    j = tr.tokens.index("a")
    assert tr.valid[j, :6].all() and not tr.valid[j, 6:].any()  # exists only within [first, last] sighting
    np.testing.assert_allclose(tr.x[j, :6], [0, 1, 2, 3, 4, 5])
    np.testing.assert_allclose(tr.y[j, 2], 0.4)
    np.testing.assert_allclose(tr.vx[j, 3], 11.2)
    k = tr.tokens.index("b")
    assert not tr.valid[k, :10].any() and tr.valid[k, 10:21].all() and not tr.valid[k, 21:].any()
    np.testing.assert_allclose(tr.x[k, 15], 3.0)
    assert tr.is_agent.tolist() == [True, True]


def test_single_sighting_is_held_at_every_step_and_sizes_fixed_from_first():
    tr = interpolate_tracks({
        "cone": [(2.5, _v(7, -1, 0.3, length=0.5, width=0.5), "traffic_cone")],
        "car": [(0.0, _v(0, 0, 0, length=4.0), "vehicle"), (0.5, _v(1, 0, 0, length=9.0), "vehicle")],
    })
    c = tr.tokens.index("cone")
    assert tr.valid[c].all() and np.all(tr.x[c] == 7) and np.all(tr.heading[c] == 0.3)
    assert not tr.is_agent[c]
    assert tr.length[tr.tokens.index("car")] == 4.0


def test_heading_is_unwrapped_before_interpolation():
    tr = interpolate_tracks({"a": [(0.0, _v(0, 0, np.pi - 0.1), "vehicle"), (0.5, _v(1, 0, -np.pi + 0.1), "vehicle")]})
    # Short way through +pi: the midpoint is pi (not 0).
    np.testing.assert_allclose(np.cos(tr.heading[0, 2:4].mean()), -1.0, atol=0.03)
    np.testing.assert_allclose(tr.heading[0, 5], np.pi + 0.1)


def test_scene_tracks_match_annotations(tiny_store):
    scene = tiny_store.load_scene(tiny_store.tokens()[3], with_sim_state=False)
    tr = scene_tracks(scene)
    assert tr.valid.shape[1] == 51
    ann = scene.current_frame.annotations
    ego = scene.current_frame.ego_status.ego_pose
    for i, tok in enumerate(ann.track_tokens):
        j = tr.tokens.index(tok)
        assert tr.valid[j, 0]
        gx = ego[0] + np.cos(ego[2]) * ann.boxes[i, 0] - np.sin(ego[2]) * ann.boxes[i, 1]
        np.testing.assert_allclose(tr.x[j, 0], gx, atol=1e-6)
    # Round trip through plain data (the metric cache stores it).
    from latentvla.eval.observation import Tracks

    again = Tracks.from_dict(tr.to_dict())
    np.testing.assert_array_equal(again.x, tr.x)
    assert again.tokens == tr.tokens
