"""PDM-Closed reference planner: behaviour on hand-built roads, faithfulness checks, and end to end on generated scenes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from latentvla.eval import reference as ref
from latentvla.eval.pdm_metrics import DrivableMap, ego_points
from latentvla.eval.scene_inputs import REFERENCE_INTERVAL, RedLights, SceneInputs, Sighting, ego_state_array
from latentvla.map_api import Lane, MapAPI
from latentvla.schema import EGO

LANE_W = 3.5


def _road(n_lanes: int = 1) -> MapAPI:
    """Straight same-direction lanes along +x: lane k centred at y = 3.5 k, one roadblock (on route)."""
    xs = np.array([-60.0, 400.0])
    lanes = {}
    for k in range(n_lanes):
        y = k * LANE_W
        lanes[f"L{k}"] = Lane(f"L{k}", np.stack([xs, [y, y]], 1), np.stack([xs, [y + LANE_W / 2] * 2], 1),
                              np.stack([xs, [y - LANE_W / 2] * 2], 1), roadblock_id="RB")
    top = -LANE_W / 2 + n_lanes * LANE_W
    ring = np.array([[-60, -LANE_W / 2], [400, -LANE_W / 2], [400, top], [-60, top]], dtype=float)
    return MapAPI("road", lanes, {"roadblock": {"RB": ring}})


def _scene(v0: float = 10.0, limit: float | None = 10.0, objects=(), n_lanes: int = 1,
           red_box: tuple[float, float] | None = None, red: bool = True) -> SceneInputs:
    """Ego at the origin heading +x. ``objects``: (name, x, y, heading, vx, vy, length, width) at t0, moving at
    constant velocity in the logged future. ``red_box``: an on-route connector spanning x in [x0, x1]."""
    init = ego_state_array(np.zeros(3), np.array([v0, 0.0]), np.zeros(2))
    sightings = []
    for k in range(11):
        t = 0.5 * k
        rows = [[x + vx * t, y + vy * t, h, vx, vy, ln, w] for _, x, y, h, vx, vy, ln, w in objects]
        sightings.append(Sighting(t, [f"obj{i}" for i in range(len(objects))], [o[0] for o in objects],
                                  np.array(rows, dtype=float).reshape(-1, 7)))
    if red_box is None:
        lights = RedLights([], [], np.zeros((0, 11), dtype=bool))
    else:
        x0, x1 = red_box
        poly = shapely.box(x0, -LANE_W / 2, x1, LANE_W / 2)
        lights = RedLights(["conn"], [poly], np.full((1, 11), red))
    m = _road(n_lanes)
    return SceneInputs(
        token="hand", log_name="hand", family="hand", t0_us=1_000_000, initial_state=init, sightings=sightings,
        drivable=DrivableMap.from_map(m, np.array([EGO.rear_axle_to_center, 0.0]), ["RB"]),
        route_roadblocks=["RB"], centerline=np.stack([np.arange(-50.0, 351.0, 1.0), np.zeros(401)], 1),
        speed_limit=float("nan") if limit is None else limit, red_lights=lights, human_poses=np.zeros((8, 3)),
        past_states=np.tile(init, (4, 1)), past_times_s=np.array([-1.5, -1.0, -0.5, 0.0]),
    )


def _front_x(poses: np.ndarray) -> np.ndarray:
    """x of the front bumper of (N, 3) rear-axle poses (straight road)."""
    return poses[:, 0] + (EGO.length / 2 + EGO.rear_axle_to_center) * np.cos(poses[:, 2])


# ---------------------------------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------------------------------


def test_plan_shape_finite_and_deterministic():
    inputs = _scene()
    a, b = ref.pdm_closed_plan(inputs), ref.pdm_closed_plan(inputs)
    assert a.shape == (50, 3) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    agent = ref.agent_poses(a)
    assert agent.shape == (8, 3)
    np.testing.assert_array_equal(agent, a[4::5][:8])  # t = 0.5, 1.0, ... 4.0 s
    inputs.reference_poses = a
    np.testing.assert_array_equal(ref.pdm_closed_agent_poses(inputs), agent)
    assert REFERENCE_INTERVAL == pytest.approx(0.1)


def test_empty_road_drives_at_the_speed_limit_on_the_centerline():
    res = ref.pdm_closed(_scene(v0=10.0, limit=10.0))
    assert res.best == 4  # centerline x 100 % of the limit (the +-1 m paths leave the one-lane road: DAC 0)
    assert res.lateral_offsets[res.best] == 0.0 and res.target_speeds[res.best] == pytest.approx(10.0)
    np.testing.assert_allclose(res.poses[:, 1:], 0.0, atol=1e-9)
    speed = res.speeds[res.best]
    # official quirk: step 1 reads the all-zero t0 leader row (a stopped car 1 m ahead) and brakes at d_max
    assert speed[1] == pytest.approx(10.0 - 0.3)
    assert 9.5 < speed[-1] <= 10.0 + 1e-9  # IDM recovers towards the limit, never above it
    steps = np.diff(np.concatenate([[0.0], res.poses[:, 0]]))
    np.testing.assert_allclose(steps, speed[:-1] * 0.1, atol=1e-9)  # poses follow the IDM progress
    assert res.scores["pdms"][res.best] == pytest.approx(1.0)


def test_slow_start_accelerates_and_missing_limit_falls_back_to_15():
    res = ref.pdm_closed(_scene(v0=3.0, limit=None))
    assert res.target_speeds[4] == pytest.approx(15.0)
    speed = res.speeds[res.best]
    assert speed[-1] > 8.0 and np.all(np.diff(speed[2:]) >= -1e-9)  # at most 1.5 m/s^2 of acceleration
    assert np.all(np.diff(speed[1:]) <= 1.5 * 0.1 + 1e-9)


def test_stopped_vehicle_ahead_stops_behind_it_with_the_min_gap():
    car = ("vehicle", 40.0, 0.0, 0.0, 0.0, 0.0, 4.5, 2.0)  # rear bumper at x = 37.75
    res = ref.pdm_closed(_scene(v0=10.0, objects=[car]))
    front = _front_x(res.poses)
    assert res.lateral_offsets[res.best] == 0.0
    speed = res.speeds[res.best]
    assert speed[-1] < 2.0 and np.all(np.diff(speed[1:]) < 0)  # braking all along, nearly stopped at 5 s
    assert front.max() <= 37.75 - 1.0 + 1e-6  # IDM's min gap kept to the car's rear
    assert front.max() > 37.75 - 5.0  # ... but it drives up to it
    assert res.scores["nc"][res.best] == 1.0


def test_partly_blocking_car_is_passed_by_a_1m_lateral_shift_into_a_free_drivable_lane():
    # a parked car sticking 1.2 m into the ego lane from the right; the left lane (same direction) is free
    car = ("vehicle", 45.0, -1.9, 0.0, 0.0, 0.0, 4.5, 2.0)  # y in [-2.9, -0.9]
    res = ref.pdm_closed(_scene(v0=10.0, objects=[car], n_lanes=2))
    assert res.lateral_offsets[res.best] == 1.0  # +1 m (left) keeps clear of the car and makes more progress
    assert res.poses[-1, 1] == pytest.approx(1.0, abs=1e-6)
    assert _front_x(res.poses)[-1] > 50.0  # drives past
    # on the centerline the same car is a leader: those proposals stop, so they score lower
    assert res.scores["pdms"][:5].max() < res.scores["pdms"][res.best]


def test_red_light_on_the_route_connector_is_a_stop_line_and_green_is_not():
    res = ref.pdm_closed(_scene(v0=10.0, red_box=(35.0, 50.0), red=True))
    front = _front_x(res.poses)
    assert front.max() <= 35.0 - 1.0 + 1e-6  # the connector polygon is the obstacle: min gap kept
    assert front.max() > 35.0 - 5.0
    assert res.speeds[res.best][-1] < 2.0
    green = ref.pdm_closed(_scene(v0=10.0, red_box=(35.0, 50.0), red=False))
    assert _front_x(green.poses)[-1] > 50.0


def test_forecast_is_constant_velocity_of_current_detections_only():
    # a car 30 m ahead at 10 m/s whose logged future brakes hard: the planner must not see the braking
    rows = [("vehicle", 30.0, 0.0, 0.0, 10.0, 0.0, 4.5, 2.0)]
    inputs = _scene(v0=10.0, objects=rows)
    for k, s in enumerate(inputs.sightings):
        s.boxes[0, 0] = 30.0 + min(k * 0.5, 1.0) * 10.0  # stops after 1 s in the log
    fc = ref._forecast(inputs, ref.DEFAULT_CONFIG)
    np.testing.assert_allclose(fc.centers[:, 0, 0], 30.0 + 10.0 * 0.2 * np.arange(26))  # maps every 0.2 s
    tracks = ref._forecast_tracks(fc, ref.DEFAULT_CONFIG, 51)
    np.testing.assert_allclose(tracks.x[0], 30.0 + 10.0 * 0.2 * (np.arange(51) // 2))


def test_backwards_agent_moves_against_its_heading_and_far_objects_are_dropped():
    rows = [("vehicle", 20.0, 3.5, 0.0, -4.0, 0.0, 4.5, 2.0),  # heading +x, reversing at 4 m/s
            ("vehicle", 150.0, 0.0, 0.0, 0.0, 0.0, 4.5, 2.0)]  # beyond the 100 m radius
    fc = ref._forecast(_scene(objects=rows), ref.DEFAULT_CONFIG)
    assert fc.tokens == ["obj0"]
    np.testing.assert_allclose(fc.dxy[0], [-4.0, 0.0], atol=1e-12)


def test_objects_overlapping_the_ego_at_t0_are_ignored():
    rows = [("vehicle", 1.0, 0.0, 0.0, 0.0, 0.0, 4.5, 2.0)]  # overlapping the ego box
    fc = ref._forecast(_scene(objects=rows), ref.DEFAULT_CONFIG)
    assert fc.ignored.tolist() == [True]
    res = ref.pdm_closed(_scene(objects=rows))
    assert _front_x(res.poses)[-1] > 40.0  # not a leader, not scored


# ---------------------------------------------------------------------------------------------------------------
# Faithfulness of the vectorised parts
# ---------------------------------------------------------------------------------------------------------------


class _LiteralGenerator(ref._Generator):
    """The official per-path, per-proposal leader loop, ported literally (one shared leader row per path)."""

    def run(self, rows, first, last):
        for li in np.unique(self.lateral[rows]):
            batch = rows[self.lateral[rows] == li]
            for t in range(first, last + 1):
                self._leads(li, batch, t)
                self._update_idm(batch, t)
                self.se2[batch, t] = self.paths[li].interpolate(self.idm[batch, t, 0])

    def _leads(self, li, batch, t):
        fc = self.fc
        if t % 2:
            self.lead[batch, t] = self.lead[batch, t - 1]
            return
        m = t // 2
        progress = {int(j): self.paths[li].linestring.project(shapely.Point(fc.centroids[m, j]))
                    for j in np.flatnonzero(self.hits[li, m])}
        row = np.zeros(3)
        for p in batch:
            ego_s = self.idm[p, t - 1, 0]
            ahead = [j for j, s in progress.items() if s > ego_s]
            if ahead:
                ego = shapely.Polygon(ego_points(self.se2[p, t - 1])[:4])
                dists = [ego.distance(fc.polygons[m, j]) for j in ahead]
                j = ahead[int(np.argmin(dists))]
                row[0] = ego_s + min(dists)
                if not fc.is_red[j]:
                    if fc.is_agent[j]:
                        rel = fc.boxes[j, 2] - self.se2[p, t - 1, 2]
                        row[1] = np.hypot(*fc.boxes[j, 3:5]) * np.cos(np.arctan2(np.sin(rel), np.cos(rel)))
                    else:
                        row[1] = 0.0
            else:
                row[0] = self.paths[li].length
                row[2] = EGO.length / 2
            self.lead[p, t] = row


@pytest.mark.parametrize("seed", range(4))
def test_vectorised_leader_search_matches_a_literal_port_of_the_official_loop(seed):
    rng = np.random.default_rng(seed)
    names = ["vehicle", "pedestrian", "bicycle", "traffic_cone"]
    objects = []
    for i in range(8):
        name = names[i % 4]
        speed = 0.0 if name == "traffic_cone" else rng.uniform(-3, 9)
        h = rng.uniform(-0.6, 0.6) + (np.pi if rng.random() < 0.2 else 0.0)
        objects.append((name, rng.uniform(8, 70), rng.uniform(-3, 4), h, speed * np.cos(h), speed * np.sin(h),
                        rng.uniform(0.5, 5), rng.uniform(0.5, 2.2)))
    inputs = _scene(v0=rng.uniform(3, 12), objects=objects, n_lanes=2, red_box=(55.0, 70.0))
    cfg = ref.DEFAULT_CONFIG
    paths, fc = ref._paths(inputs.centerline, cfg.lateral_offsets), ref._forecast(inputs, cfg)
    fast, literal = ref._Generator(inputs, cfg, paths, fc), _LiteralGenerator(inputs, cfg, paths, fc)
    for gen in (fast, literal):
        gen.run(np.arange(15), 1, cfg.proposal_steps)
        gen.run(np.array([7]), cfg.proposal_steps + 1, cfg.trajectory_steps)
    np.testing.assert_array_equal(fast.lead, literal.lead)
    np.testing.assert_array_equal(fast.idm, literal.idm)
    np.testing.assert_allclose(fast.se2, literal.se2, rtol=0, atol=1e-12)


def test_proposals_are_scored_by_the_scorer_against_the_forecast_not_the_log():
    from latentvla.eval import pdm_metrics as pm
    from latentvla.eval.comfort import comfort

    # a car 20 m ahead at 8 m/s whose logged future brakes to a stop: the forecast keeps it moving
    inputs = _scene(v0=8.0, objects=[("vehicle", 20.0, 0.0, 0.0, 8.0, 0.0, 4.5, 2.0)])
    for k, s in enumerate(inputs.sightings):
        s.boxes[0, 0], s.boxes[0, 3] = 20.0 + min(k * 0.5, 1.0) * 8.0, 8.0 if k < 2 else 0.0
    res = ref.pdm_closed(inputs)
    states = res.simulated
    pts = ego_points(states)
    area = pm.ego_area(pts, states[..., :2], inputs.drivable)
    expected = {}
    for name, tracks in (("forecast", ref._forecast_tracks(ref._forecast(inputs, ref.DEFAULT_CONFIG),
                                                           ref.DEFAULT_CONFIG, 51)), ("log", inputs.tracks)):
        nc, ttc = pm.no_at_fault_collision(states, pts, area, tracks), pm.time_to_collision(states, pts, area, tracks)
        dac, c = pm.drivable_area_compliance(area), comfort(states)
        ep = pm.ego_progress(pm.raw_progress(pts, inputs.centerline), nc * dac)
        expected[name] = {"nc": nc, "dac": dac, "ttc": ttc, "ep": ep, "c": c, "pdms": pm.pdms(nc, dac, ttc, ep, c)}
    for key in ("nc", "dac", "ttc", "ep", "c", "pdms"):
        np.testing.assert_array_equal(res.scores[key], expected["forecast"][key], err_msg=key)
    assert not np.array_equal(expected["forecast"]["pdms"], expected["log"]["pdms"])  # the log would differ
    assert res.best == int(np.argmax(expected["forecast"]["pdms"]))


def test_path_headings_follow_nuplan_and_offsets_are_parallel():
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])  # a junction duplicate
    h = ref._vertex_headings(pts)
    np.testing.assert_allclose(h, [0.0, 0.0, np.pi / 2, np.pi / 2, np.pi / 2])
    paths = ref._paths(np.stack([np.arange(10.0), np.zeros(10)], 1), (-1.0, 1.0))
    np.testing.assert_allclose(paths[1].points[:, 1], -1.0)
    np.testing.assert_allclose(paths[2].points[:, 1], 1.0)
    np.testing.assert_allclose(paths[0].interpolate(np.array([-3.0, 2.5, 99.0])),
                               [[1e-5, 0, 0], [2.5, 0, 0], [9.0, 0, 0]])


# ---------------------------------------------------------------------------------------------------------------
# End to end on generated scenes
# ---------------------------------------------------------------------------------------------------------------


def test_reference_scores_high_against_ground_truth_on_generated_scenes(tiny_store):
    from latentvla.eval.scene_inputs import scene_inputs
    from latentvla.eval.scene_score import score_proposals

    alone, as_agent = [], []
    for token in tiny_store.tokens()[::10]:
        inputs = scene_inputs(tiny_store.load_scene(token, with_sim_state=False))
        plan = ref.pdm_closed_plan(inputs)
        assert plan.shape == (50, 3) and np.isfinite(plan).all()
        alone.append(score_proposals(inputs, plan[None], REFERENCE_INTERVAL)["pdms"][0])
        both = score_proposals(inputs, np.stack([ref.agent_poses(plan), inputs.human_poses]), 0.5)
        as_agent.append(both["pdms"][0])  # EP normalised against the logged human
    assert len(alone) >= 5
    assert np.mean(alone) >= 0.85, alone
    assert np.mean(as_agent) >= 0.8, as_agent
