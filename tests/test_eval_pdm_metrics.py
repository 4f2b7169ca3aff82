"""Hand-computed golden cases for the PDMS v1.1 sub-scores (NC, DAC, TTC, DDC, EP, aggregation)."""

from __future__ import annotations

import numpy as np
import pytest

from latentvla.eval.observation import interpolate_tracks
from latentvla.eval.pdm_metrics import (
    DrivableMap,
    drivable_area_compliance,
    driving_direction_compliance,
    ego_area,
    ego_points,
    ego_progress,
    no_at_fault_collision,
    pdms,
    raw_progress,
    time_to_collision,
)
from latentvla.map_api import Lane, MapAPI


def _map() -> MapAPI:
    """Two lanes along +x: 'fwd' (y in [-1.75, 1.75], on route) and 'back' (y in [1.75, 5.25], oncoming)."""
    xs = np.array([-60.0, 200.0])

    def lane(lid, y, rb, reverse=False):
        c = np.stack([xs, [y, y]], 1)
        lb, rb_ = np.stack([xs, [y + 1.75] * 2], 1), np.stack([xs, [y - 1.75] * 2], 1)
        if reverse:
            c, lb, rb_ = c[::-1], rb_[::-1], lb[::-1]
        return Lane(lid, c, lb, rb_, roadblock_id=rb)

    return MapAPI("golden", {"fwd": lane("fwd", 0.0, "RB_f"), "back": lane("back", 3.5, "RB_b", reverse=True)},
                  {"roadblock": {"RB_f": np.array([[-60, -1.75], [200, -1.75], [200, 1.75], [-60, 1.75]]),
                                 "RB_b": np.array([[-60, 1.75], [200, 1.75], [200, 5.25], [-60, 5.25]])}})


def _states(x, y=None, v=None, heading=None) -> np.ndarray:
    x = np.asarray(x, float)
    s = np.zeros((1, len(x), 11))
    s[0, :, 0] = x
    s[0, :, 1] = 0.0 if y is None else y
    s[0, :, 2] = 0.0 if heading is None else heading
    s[0, :, 3] = np.gradient(x, 0.1) if v is None else v
    return s


def _eval(states, tracks):
    dmap = DrivableMap.from_map(_map(), states[0, 0, :2], ["RB_f"])
    pts = ego_points(states)
    area = ego_area(pts, states[..., :2], dmap)
    return pts, area


def _static(name, x, y=0.0, length=4.0, width=2.0, speed=0.0, t_end=5.0):
    return [(0.0, np.array([x, y, 0.0, speed, 0.0, length, width]), name),
            (t_end, np.array([x + speed * t_end, y, 0.0, speed, 0.0, length, width]), name)]


def test_ego_points_order_and_geometry():
    p = ego_points(_states([0.0, 1.0]))[0, 0]
    # FL, RL, RR, FR, centre for the Pacifica (rear axle at origin): front 4.049 m, rear 1.127 m, half width 1.1485.
    np.testing.assert_allclose(p, [[4.049, 1.1485], [-1.127, 1.1485], [-1.127, -1.1485], [4.049, -1.1485],
                                   [1.461, 0.0]], atol=1e-9)


def test_nc_stopped_vehicle_ahead_is_at_fault_and_cone_halves():
    states = _states(np.arange(41) * 1.0)  # 10 m/s along the lane
    for name, expected in (("vehicle", 0.0), ("traffic_cone", 0.5)):
        tracks = interpolate_tracks({"obj": _static(name, 30.0)})
        pts, area = _eval(states, tracks)
        log: list = []
        assert no_at_fault_collision(states, pts, area, tracks, log)[0] == expected
        assert log[0]["type"] == "stopped_track" and log[0]["at_fault"]
        # The ego's front (rear axle + 4.049) first touches the box's rear (28 m) at t = 2.4 s (x_rear = 24 m).
        assert log[0]["t"] == pytest.approx(2.4)


def test_nc_rear_end_by_other_is_not_at_fault_but_costs_ttc():
    states = _states(np.arange(41) * 0.5)  # ego 5 m/s
    tracks = interpolate_tracks({"car": _static("vehicle", -12.0, speed=10.0)})  # catches up from behind
    pts, area = _eval(states, tracks)
    log: list = []
    assert no_at_fault_collision(states, pts, area, tracks, log)[0] == 1.0
    assert log and log[0]["type"] == "active_rear" and not log[0]["at_fault"]
    # Official behaviour (navsim-metrics §10): TTC compares the agent's *future* centroid (t + 0.9 s) with the ego's
    # current rear axle; the non-reactive car that drives into the ego ends up "ahead" and costs TTC.
    log = []
    assert time_to_collision(states, pts, area, tracks, log)[0] == 0.0
    assert log[0]["track"] == "car"


def test_nc_ignores_collisions_while_ego_is_stopped():
    states = _states(np.zeros(41), v=np.zeros(41))
    tracks = interpolate_tracks({"car": _static("vehicle", -5.0, speed=3.0)})
    pts, area = _eval(states, tracks)
    log: list = []
    assert no_at_fault_collision(states, pts, area, tracks, log)[0] == 1.0
    assert log[0]["type"] == "stopped_ego"


def test_object_overlapping_at_t0_counts():
    states = _states(np.arange(41) * 1.0)
    tracks = interpolate_tracks({"cone": [(2.5, np.array([2.0, 0.5, 0.0, 0, 0, 0.5, 0.5]), "traffic_cone")]})
    pts, area = _eval(states, tracks)
    log: list = []
    assert no_at_fault_collision(states, pts, area, tracks, log)[0] == 0.5
    assert log[0]["t"] == 0.0  # single sighting held at every step, overlapping at t = 0


def test_ttc_fails_when_closing_in_without_colliding():
    # Decelerate at 2.5 m/s^2 from 10 m/s to a stop 0.5 m behind a stopped car: no collision, but at 2.25 m/s the
    # box projected 0.9 s ahead (2.0 m) reaches past the remaining gap (0.5 + 2.25^2 / 5 = 1.5 m).
    t = np.arange(41) * 0.1
    v = np.maximum(0.0, 10.0 - 2.5 * t)
    x = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * 0.1)])
    car_rear = x[-1] + 4.049 + 0.5
    tracks = interpolate_tracks({"car": _static("vehicle", car_rear + 2.0)})
    states = _states(x, v=v)
    pts, area = _eval(states, tracks)
    assert no_at_fault_collision(states, pts, area, tracks)[0] == 1.0
    assert time_to_collision(states, pts, area, tracks)[0] == 0.0
    # The same stop 2 m behind never brings the projection within reach (0.9 v < 2 + v^2 / 5 for all v).
    far = interpolate_tracks({"car": _static("vehicle", x[-1] + 4.049 + 2.0 + 2.0)})
    pts, area = _eval(states, far)
    assert time_to_collision(states, pts, area, far)[0] == 1.0


def test_dac_and_boundary_counts_as_outside():
    inside = _states(np.arange(41) * 1.0)
    pts, area = _eval(inside, interpolate_tracks({}))
    assert drivable_area_compliance(area)[0] == 1.0
    # Left corners exactly on the road's outer edge (y = 5.25): on the boundary = outside.
    edge = _states(np.arange(41) * 1.0, y=5.25 - 1.1485)
    pts, area = _eval(edge, interpolate_tracks({}))
    assert drivable_area_compliance(area)[0] == 0.0
    assert area["non_drivable"][0, 0]


def test_ddc_oncoming_distance():
    # Driving 3 m/s inside the oncoming lane for the whole horizon: 3 m within 1 s -> 0.5; 7 m/s -> 0.
    for speed, expected in ((1.0, 1.0), (3.0, 0.5), (7.0, 0.0)):
        states = _states(np.arange(41) * 0.1 * speed, y=3.5)
        pts, area = _eval(states, interpolate_tracks({}))
        assert area["oncoming"][0].all() and area["multiple_lanes"][0].sum() == 0
        assert driving_direction_compliance(pts, area)[0] == expected, speed


def test_multiple_lanes_flag_when_straddling():
    states = _states(np.arange(41) * 1.0, y=1.75)
    pts, area = _eval(states, interpolate_tracks({}))
    assert area["multiple_lanes"][0].all()


def test_progress_normalisation_golden():
    np.testing.assert_allclose(ego_progress(np.array([20.0, 10.0]), np.array([1.0, 1.0])), [1.0, 0.5])
    # An NC of 0.5 halves the agent's raw progress before normalisation.
    np.testing.assert_allclose(ego_progress(np.array([20.0, 20.0]), np.array([1.0, 0.5])), [1.0, 0.5])
    # The agent beats the reference: clipped at 1 and the reference is scaled down.
    np.testing.assert_allclose(ego_progress(np.array([10.0, 20.0]), np.array([1.0, 1.0])), [0.5, 1.0])
    # Both below the 5 m threshold: 1 unless a multiplicative metric is 0.
    np.testing.assert_allclose(ego_progress(np.array([4.0, 1.0]), np.array([1.0, 0.0])), [1.0, 0.0])
    np.testing.assert_allclose(ego_progress(np.array([5.0, 5.0]), np.array([1.0, 1.0])), [1.0, 1.0])
    states = _states(np.arange(41) * 1.0)
    pts = ego_points(states)
    assert raw_progress(pts, np.array([[-60.0, 0.0], [200.0, 0.0]]))[0] == pytest.approx(40.0)


def test_pdms_aggregation_golden():
    assert pdms(np.array([1.0]), np.array([1.0]), np.array([1.0]), np.array([0.5]), np.array([1.0]))[0] == \
        pytest.approx((5 + 2.5 + 2) / 12)
    assert pdms(np.array([0.5]), np.array([1.0]), np.array([0.0]), np.array([1.0]), np.array([0.0]))[0] == \
        pytest.approx(0.5 * 5 / 12)
    assert pdms(np.array([1.0]), np.array([0.0]), np.array([1.0]), np.array([1.0]), np.array([1.0]))[0] == 0.0
