"""Schema conventions, config system, geometry and the torch dataset."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentvla.config import (
    HASH_OMIT_DEFAULT,
    ConfigError,
    config_hash,
    dump_yaml,
    load_yaml,
    parse_overrides,
    resolve,
)
from latentvla.map_api import MapAPI
from latentvla.schema import Trajectory, command_name, command_one_hot, global_to_local, local_to_global
from latentvla.world.configuration import WorldConfig
from latentvla.world.geometry import Polyline, box_corners, boxes_overlap

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
angle = st.floats(-np.pi, np.pi, allow_nan=False)


@given(st.lists(st.tuples(finite, finite, angle), min_size=1, max_size=8), st.tuples(finite, finite, angle))
def test_global_local_round_trip(poses, origin):
    poses, origin = np.array(poses), np.array(origin)
    back = local_to_global(global_to_local(poses, origin), origin)
    np.testing.assert_allclose(back[:, :2], poses[:, :2], atol=1e-6)
    np.testing.assert_allclose(np.cos(back[:, 2] - poses[:, 2]), 1.0, atol=1e-9)


def test_local_frame_golden():
    # Ego at (10, 5) heading +90 deg: a point 2 m north of it is 2 m ahead (x), 1 m west is 1 m left (y).
    local = global_to_local(np.array([[10.0, 7.0, np.pi / 2], [9.0, 5.0, np.pi]]), np.array([10.0, 5.0, np.pi / 2]))
    np.testing.assert_allclose(local, [[2.0, 0.0, 0.0], [0.0, 1.0, np.pi / 2]], atol=1e-12)


def test_trajectory_and_commands():
    with pytest.raises(ValueError, match="shape"):
        Trajectory(np.zeros((8, 2)))
    t = Trajectory(np.zeros((7, 3)))
    with pytest.raises(ValueError, match="8 poses"):
        t.validate()
    bad = Trajectory(np.full((8, 3), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        bad.validate()
    assert Trajectory(np.zeros((8, 3))).time_horizon == 4.0
    for c in ("left", "straight", "right", "unknown"):
        assert command_name(command_one_hot(c)) == c
    with pytest.raises(ValueError, match="valid"):
        command_one_hot("backwards")


def test_config_overrides_hash_and_yaml(tmp_path):
    assert parse_overrides(["a.b=1", "c=x"]) == {"a": {"b": 1}, "c": "x"}
    cfg = resolve(WorldConfig, "world", "quick", overrides=["sensors.image_width=100", "seed=5"])
    assert cfg.sensors.image_width == 100 and cfg.seed == 5 and cfg.scenes == 120  # preset value kept
    path = tmp_path / "w.yaml"
    dump_yaml(cfg, path)
    again = resolve(WorldConfig, "world", "demo", config_file=path)
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(resolve(WorldConfig, "world", "quick", overrides=["seed=6"])) != config_hash(cfg)
    assert load_yaml(path)["sensors"]["image_width"] == 100
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="finite"):
        resolve(WorldConfig, "world", "quick", overrides=["log_seconds=.nan"])


def test_config_hash_leaves_out_new_fields_at_their_default():
    """A field marked HASH_OMIT_DEFAULT does not move the digest at its default (finished runs stay valid) and
    does move it when set."""

    @dataclasses.dataclass
    class Old:
        a: int = 1

    @dataclasses.dataclass
    class New:
        a: int = 1
        b: bool = dataclasses.field(default=False, metadata=HASH_OMIT_DEFAULT)

    @dataclasses.dataclass
    class Outer:
        inner: New = dataclasses.field(default_factory=New)

    @dataclasses.dataclass
    class OuterOld:
        inner: Old = dataclasses.field(default_factory=Old)

    assert config_hash(New()) == config_hash(Old())
    assert config_hash(Outer()) == config_hash(OuterOld())
    assert config_hash(New(b=True)) != config_hash(Old())
    assert config_hash(Outer(New(a=2))) == config_hash(OuterOld(Old(a=2)))


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 60), st.floats(-3, 3))
def test_polyline_project_inverts_pose(s, lat):
    pts = np.array([[0.0, 0.0], [20.0, 0.0], [40.0, 10.0], [50.0, 30.0]])
    line = Polyline(pts)
    s = min(s, line.length)
    x, y, h = line.pose(s)
    p = np.array([[x - lat * np.sin(h), y + lat * np.cos(h)]])
    s2, lat2 = line.project(p)
    x2, y2, _ = line.pose(s2[0])
    # Projection lands on the nearest point: never farther than the point it came from.
    assert np.hypot(x2 - p[0, 0], y2 - p[0, 1]) <= abs(lat) + 1e-6
    assert abs(lat2[0]) <= abs(lat) + 1e-6


@settings(max_examples=150, deadline=None)
@given(finite.map(lambda v: v / 1e3), finite.map(lambda v: v / 1e3), angle, angle)
def test_box_overlap_matches_shapely(dx, dy, h1, h2):
    import shapely

    a = box_corners(0.0, 0.0, h1, 4.5, 1.9)
    b = box_corners(dx, dy, h2, 4.5, 1.9)
    expect = shapely.Polygon(a).intersection(shapely.Polygon(b)).area > 1e-6
    got = bool(boxes_overlap(a[None], b[None])[0])
    if abs(shapely.Polygon(a).distance(shapely.Polygon(b))) > 1e-6 or expect:
        assert got == expect


def test_map_round_trip_and_layers(tiny_store):
    log = tiny_store.manifest["scenes"][0]["log"]
    m = tiny_store.load_map(log)
    again = MapAPI.from_dict(m.to_dict())
    assert again.to_dict() == m.to_dict()
    assert m.drivable_area.area > 1000
    lane = next(iter(m.lanes.values()))
    assert m.is_drivable(lane.centerline[len(lane.centerline) // 2][None])[0]
    with pytest.raises(ValueError, match="valid layers"):
        m.layer("sea")


def test_torch_dataset(tiny_world):
    import torch

    from latentvla.data.torch_dataset import SceneDataset, front_camera_features

    ds = SceneDataset(tiny_world, split="train", features=front_camera_features)
    feats, targets = ds[0]
    assert feats["ego_status"].shape == (8,) and feats["image"].ndim == 3
    assert targets["trajectory"].shape == (8, 3)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)
    f, t = next(iter(loader))
    assert f["image"].shape[0] == 4 and t["trajectory"].shape == (4, 8, 3)
    with pytest.raises(ValueError, match="valid splits"):
        SceneDataset(tiny_world, split="holdout")
