"""EPDMS (NAVSIM v2.2 + 2025-09-29 fix): hand-computed golden values per sub-score, then end to end on scenes."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pytest
import shapely
from scipy.signal import savgol_filter

from latentvla.eval.comfort import acceleration_signal, comfort_flags
from latentvla.eval.epdms import (
    EPDMS_KEYS,
    center_in_intersection,
    comfort_v2_flags,
    driving_direction_compliance_v2,
    drop_ego_overlaps,
    ego_progress_v2,
    epdms_aggregate,
    extended_comfort_rms,
    history_comfort,
    history_states,
    human_penalty_filter,
    lane_keeping,
    score_proposals_v2,
    traffic_light_compliance,
    two_frame_extended_comfort,
)
from latentvla.eval.observation import Tracks
from latentvla.eval.pdm_metrics import DrivableMap, driving_direction_compliance, ego_points
from latentvla.eval.scene_inputs import RedLights, scene_inputs
from latentvla.eval.state import REAR_AXLE_TO_CENTER
from latentvla.eval.state import StateIndex as S

T = np.arange(41) * 0.1  # simulation time axis [s]


def straight(speed: float, n: int = 41) -> np.ndarray:
    """(n, 11) rear-axle states driving along +x from the origin at constant speed."""
    s = np.zeros((n, 11))
    s[:, S.X] = speed * np.arange(n) * 0.1
    s[:, S.VELOCITY_X] = speed
    return s


def centres(y: np.ndarray) -> np.ndarray:
    """(1, 41, 5, 2) ego points whose centre moves 1 m per step along +x at lateral offset y (corners unused)."""
    pts = np.zeros((1, 41, 5, 2))
    pts[0, :, 4, 0] = np.arange(41, dtype=float)
    pts[0, :, 4, 1] = y
    return pts


# --- TLC --------------------------------------------------------------------------------------------------------
# Ego at 10 m/s: rear axle x = t (steps), front bumper x = t + 4.049, rear bumper x = t - 1.127. A connector box
# x in [10, 14] is touched at steps 6..15; the 2 Hz light of frame f holds for steps 5f .. 5f+4.

def _lights(red_frames: list[int], lane: str = "c1") -> RedLights:
    red = np.zeros((1, 11), dtype=bool)
    red[0, red_frames] = True
    return RedLights([lane], [shapely.box(10.0, -2.0, 14.0, 2.0)], red)


@pytest.mark.parametrize("red_frames, expected", [
    (list(range(11)), 0.0),  # red throughout
    ([], 1.0),  # green throughout
    ([0], 1.0),  # red only at steps 0-4, before the ego reaches the connector
    ([1], 0.0),  # red at steps 5-9 while the ego is on it (6-9)
    ([4, 5, 6], 1.0),  # red from step 20, after the ego has cleared it (last touch at step 15)
])
def test_tlc_red_vs_green_and_hold(red_frames, expected):
    pts = ego_points(np.stack([straight(10.0), straight(0.0)]))
    out = traffic_light_compliance(pts, _lights(red_frames))
    assert out.tolist() == [expected, 1.0]  # the stopped proposal never reaches the light


def test_tlc_red_on_non_route_connector_is_ignored():
    pts = ego_points(straight(10.0)[None])
    assert traffic_light_compliance(pts, _lights(list(range(11)), "off_route"), route_lane_ids={"c1"})[0] == 1.0
    assert traffic_light_compliance(pts, _lights(list(range(11)), "c1"), route_lane_ids={"c1"})[0] == 0.0


# --- LK ---------------------------------------------------------------------------------------------------------
LINE = np.array([[-100.0, 0.0], [300.0, 0.0]])


def _offsets(off_steps, value=0.6) -> np.ndarray:
    y = np.zeros(41)
    y[list(off_steps)] = value
    return y


@pytest.mark.parametrize("y, inter_steps, expected", [
    (_offsets(range(5, 24)), [], 1.0),  # 19 consecutive steps off-centre
    (_offsets(range(5, 25)), [], 0.0),  # 20 -> fails
    (_offsets(range(5, 25), -0.6), [], 0.0),  # either side
    (_offsets(range(5, 25), 0.5), [], 1.0),  # exactly 0.5 m is not beyond the limit (strict >)
    (_offsets(range(5, 24)) + _offsets([24], -0.6), [24], 1.0),  # 20th off step inside an intersection: skipped
    (_offsets(range(5, 28)), [24, 25, 26], 0.0),  # 19 off, 3 skipped, 1 more off -> counter reaches 20, no reset
    (_offsets(list(range(5, 24)) + list(range(25, 41))), [], 1.0),  # one on-centre step resets the run
    (_offsets(range(5, 25)), list(range(5, 25)), 1.0),  # all off steps in an intersection
])
def test_lane_keeping_counts_consecutive_steps(y, inter_steps, expected):
    inter = np.zeros((1, 41), dtype=bool)
    inter[0, inter_steps] = True
    assert lane_keeping(centres(y), LINE, inter)[0] == expected


def test_center_in_intersection_is_strict_interior():
    dmap = DrivableMap([shapely.box(0.0, -5.0, 20.0, 5.0), shapely.box(20.0, -5.0, 100.0, 5.0)],
                       ["intersection", "roadblock"], ["i1", "r1"], np.zeros(2, dtype=bool))
    inside = center_in_intersection(centres(np.zeros(41)), dmap)[0]
    assert np.flatnonzero(inside).tolist() == list(range(1, 20))  # x = 0 and x = 20 lie on the boundary


# --- DDC v2 -----------------------------------------------------------------------------------------------------
def test_ddc_v2_ignores_oncoming_progress_in_intersections():
    pts = centres(np.zeros(41))  # 1 m per step, every step "oncoming"
    area = {"oncoming": np.ones((1, 41), dtype=bool)}
    none = np.zeros((1, 41), dtype=bool)
    assert driving_direction_compliance(pts, area)[0] == 0.0  # 11 m within 1 s
    assert driving_direction_compliance_v2(pts, area, none)[0] == 0.0
    assert driving_direction_compliance_v2(pts, area, ~none)[0] == 1.0  # all in an intersection
    partly = np.ones((1, 41), dtype=bool)
    partly[0, 1:5] = False  # only steps 1-4 count: 4 m -> between 2 and 6 m
    assert driving_direction_compliance_v2(pts, area, partly)[0] == 0.5


# --- HC: the six v1 bounds with v2 signals, a value just inside and just outside each side -----------------------
def _with(column: int, values) -> np.ndarray:
    s = straight(10.0)[None].copy()
    s[0, :, column] = values
    return s


def _official_v2_jerk(accel: np.ndarray) -> np.ndarray:
    """The v2 jerk recipe written out with SciPy: smooth (window 8, poly 2), round, derivative (window 15)."""
    smooth = np.round(savgol_filter(accel, 8, 2), 8)
    return np.round(savgol_filter(smooth, 15, 2, deriv=1, delta=0.1), 8)


# A ramp's jerk peaks above its slope at both ends: the even window 8 shifts the interior half a sample while the
# 'interp' edges stay exact. Scale unit ramps so that the peak lands just inside / outside each bound.
RAMP_PEAK = np.abs(_official_v2_jerk(T)).max()
D = REAR_AXLE_TO_CENTER
HC_CASES = [  # (check, column, inside values, outside values)
    ("lon_accel", S.ACCELERATION_X, 2.39, 2.41),
    ("lon_accel", S.ACCELERATION_X, -4.04, -4.06),
    ("lon_accel", S.ANGULAR_VELOCITY, np.sqrt(2.39 / D), np.sqrt(2.41 / D)),  # centre: + d * w^2
    ("lon_accel", S.ANGULAR_ACCELERATION, -4.04 / D, -4.06 / D),  # centre: + d * alpha
    ("lat_accel", S.ACCELERATION_Y, 4.88, 4.90),
    ("lat_accel", S.ACCELERATION_Y, -4.88, -4.90),
    ("jerk", S.ACCELERATION_Y, 8.36 / RAMP_PEAK * T, 8.38 / RAMP_PEAK * T),  # |a| of the rear axle
    ("jerk", S.ACCELERATION_Y, 40 - 8.36 / RAMP_PEAK * T, 40 - 8.38 / RAMP_PEAK * T),
    ("lon_jerk", S.ACCELERATION_X, 4.12 / RAMP_PEAK * T, 4.14 / RAMP_PEAK * T),
    ("lon_jerk", S.ACCELERATION_X, -4.12 / RAMP_PEAK * T, -4.14 / RAMP_PEAK * T),
    ("lon_jerk", S.ANGULAR_ACCELERATION, 4.12 / RAMP_PEAK / D * T, 4.14 / RAMP_PEAK / D * T),  # at the centre
    ("yaw_rate", S.HEADING, 0.94 * T, 0.96 * T),
    ("yaw_rate", S.HEADING, -0.94 * T, -0.96 * T),
    ("yaw_accel", S.HEADING, 0.5 * 1.92 * T**2, 0.5 * 1.94 * T**2),
    ("yaw_accel", S.HEADING, -0.5 * 1.92 * T**2, -0.5 * 1.94 * T**2),
]


@pytest.mark.parametrize("check, column, inside, outside", HC_CASES)
def test_history_comfort_bounds_both_sides(check, column, inside, outside):
    assert comfort_v2_flags(_with(column, inside))[check][0]
    assert not comfort_v2_flags(_with(column, outside))[check][0]


def test_even_window_quirk_and_ramp_peak():
    s = _with(S.ACCELERATION_X, 2.0 * T)
    offset = acceleration_signal(s, "x", window_length=8)[0] - 2.0 * T
    np.testing.assert_allclose(offset[4:-4], 2.0 * 0.05, atol=1e-7)  # interior: half a sample ahead
    np.testing.assert_allclose(offset[:4], 0.0, atol=1e-7)  # 'interp' edges: exact
    assert RAMP_PEAK == pytest.approx(1.12639, abs=1e-5)  # so a 1 m/s^3 ramp reads 1.126 m/s^3 at its ends


def test_v2_acceleration_window_is_8_not_41():
    a = np.zeros(41)
    a[18:22] = 3.5  # a 0.4 s spike: the v1 window (41) smooths it below 2.4, the v2 window (8) does not
    s = _with(S.ACCELERATION_X, a)
    assert comfort_flags(s)["lon_accel"][0]
    assert not comfort_v2_flags(s)["lon_accel"][0]


PAST_TIMES = np.array([-1.5, -1.0, -0.5, 0.0])


def _past(ax=(0.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    past = np.zeros((4, 11))
    past[:, S.X] = 10.0 * PAST_TIMES
    past[:, S.VELOCITY_X] = 10.0
    past[:, S.ACCELERATION_X] = ax
    return past


def test_history_is_resampled_to_minus_0_2_s():
    hist = history_states(_past(), PAST_TIMES)
    assert hist.shape == (14, 11)  # -1.5, -1.4, ..., -0.2 s
    np.testing.assert_allclose(hist[:, S.X], 10.0 * (-1.5 + 0.1 * np.arange(14)), atol=1e-9)
    np.testing.assert_allclose(hist[:, S.VELOCITY_X], 10.0)
    jittered = PAST_TIMES.copy()
    jittered[0] = -1.50005  # 50 us earlier: the 0.1 s grid gains a point (official arange quirk)
    assert history_states(_past(), jittered).shape == (15, 11)


def test_history_comfort_sees_the_past():
    sim = straight(10.0)[None]
    harsh = _past(ax=(3.0, 3.0, 0.0, 0.0))  # 3 m/s^2 over -1.5 ... -1.0 s
    assert history_comfort(sim, None, None)[0] == 1.0
    assert history_comfort(sim, _past(), PAST_TIMES)[0] == 1.0
    assert history_comfort(sim, harsh, PAST_TIMES)[0] == 0.0


# --- EC: RMS of the difference over the 36 overlapping states, inclusive bounds ----------------------------------
TO = np.arange(36) * 0.1  # overlap time axis


def _ec_pair(column: int, now_values, prev_values=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Full 41-state frames whose overlap (now[:36], prev[5:]) carries the given column values."""
    now_o, prev_o = np.zeros((36, 11)), np.zeros((36, 11))
    now_o[:, column], prev_o[:, column] = now_values, prev_values
    now = np.concatenate([now_o, np.repeat(now_o[-1:], 5, 0)])
    prev = np.concatenate([np.repeat(prev_o[:1], 5, 0), prev_o])
    return now, prev


EC_RAMP_RMS = np.sqrt(np.mean(_official_v2_jerk(TO) ** 2))  # jerk RMS of a unit ramp over the overlap (> 1)
EC_CASES = [  # (signal, column, now inside, now outside, prev, expected RMS inside, outside)
    ("acceleration", S.ACCELERATION_X, 2.69, 2.71, 2.0, 0.69, 0.71),
    ("acceleration", S.ACCELERATION_X, 2.0, 2.0, (2.69, 2.71), 0.69, 0.71),  # the other side: now below prev
    ("jerk", S.ACCELERATION_X, 2 + 0.49 / EC_RAMP_RMS * (TO - 1.75), 2 + 0.51 / EC_RAMP_RMS * (TO - 1.75), 2.0,
     0.49, 0.51),
    ("yaw_rate", S.HEADING, 0.09 * TO, 0.11 * TO, 0.0, 0.09, 0.11),
    ("yaw_rate", S.HEADING, -0.09 * TO, -0.11 * TO, 0.0, 0.09, 0.11),
    ("yaw_accel", S.HEADING, 0.045 * (TO - 1.75) ** 2, 0.055 * (TO - 1.75) ** 2, 0.0, 0.09, 0.11),
]


@pytest.mark.parametrize("signal, column, inside, outside, prev, rms_in, rms_out", EC_CASES)
def test_extended_comfort_bounds(signal, column, inside, outside, prev, rms_in, rms_out):
    prev_in, prev_out = (prev, prev) if np.ndim(prev) == 0 else prev
    now, before = _ec_pair(column, inside, prev_in)
    assert extended_comfort_rms(now, before)[signal][0] == pytest.approx(rms_in, abs=1e-6)
    assert two_frame_extended_comfort(now, before)[0] == 1.0
    now, before = _ec_pair(column, outside, prev_out)
    assert extended_comfort_rms(now, before)[signal][0] == pytest.approx(rms_out, abs=1e-6)
    assert two_frame_extended_comfort(now, before)[0] == 0.0


def test_extended_comfort_yaw_accel_alone_fails():
    # A 2 rad/s wobble: acceleration RMS = 2 x rate RMS (A w^2 vs A w over sqrt 2): ~0.070 rad/s, ~0.127 rad/s^2.
    now, prev = _ec_pair(S.HEADING, 0.048 * np.sin(2.0 * TO))
    rms = extended_comfort_rms(now, prev)
    assert rms["yaw_rate"][0] <= 0.1 < rms["yaw_accel"][0]
    assert two_frame_extended_comfort(now, prev)[0] == 0.0


def test_extended_comfort_without_predecessor_is_nan():
    assert np.isnan(two_frame_extended_comfort(straight(5.0), None)).tolist() == [True]
    assert two_frame_extended_comfort(np.stack([straight(5.0)] * 2), None).shape == (2,)
    with pytest.raises(ValueError):
        two_frame_extended_comfort(straight(5.0), straight(5.0), dt_s=0.6)


# --- EP, aggregation, human filter ------------------------------------------------------------------------------
def test_ego_progress_v2():
    np.testing.assert_allclose(ego_progress_v2(np.array([10.0, 8.0]), np.array([1.0, 1.0])), [1.0, 0.8])
    # the agent's own failure no longer masks its progress (v1: 0)
    np.testing.assert_allclose(ego_progress_v2(np.array([10.0, 4.0]), np.array([1.0, 0.0])), [1.0, 0.4])
    np.testing.assert_allclose(ego_progress_v2(np.array([10.0, 12.0]), np.array([1.0, 0.0])), [1.0, 1.0])  # clip
    # the best passing progress is <= 5 m: everybody gets 1 (v1 gave 0 to failing proposals)
    np.testing.assert_allclose(ego_progress_v2(np.array([4.0, 3.0]), np.array([1.0, 0.0])), [1.0, 1.0])
    np.testing.assert_allclose(ego_progress_v2(np.array([5.0, 30.0]), np.array([1.0, 0.0])), [1.0, 1.0])  # not > 5
    np.testing.assert_allclose(ego_progress_v2(np.array([10.0, 8.0]), np.array([0.5, 1.0])), [1.0, 1.0])  # M = 8


def test_epdms_aggregate_and_nan_extended_comfort():
    assert epdms_aggregate(1, 1, 1, 1, 0.5, 1, 1, 1, 1.0) == pytest.approx(13.5 / 16)
    assert epdms_aggregate(1, 1, 1, 1, 0.5, 1, 1, 1, 0.0) == pytest.approx(11.5 / 16)
    assert epdms_aggregate(1, 1, 1, 1, 0.5, 1, 1, 1, np.nan) == pytest.approx(11.5 / 14)  # weight removed
    assert epdms_aggregate(0.5, 1, 0.5, 1, 1, 1, 1, 1, np.nan) == pytest.approx(0.25)
    assert epdms_aggregate(1, 1, 1, 0, 1, 1, 1, 1, 1) == 0.0
    np.testing.assert_allclose(epdms_aggregate(np.ones(2), 1, 1, 1, 1, 0, 1, 1, np.array([np.nan, 1.0])),
                               [9 / 14, 11 / 16])


def test_human_filter_resets_and_score_is_recomputed():
    agent = {"nc": 1.0, "dac": 0.0, "ddc": 0.5, "tlc": 1.0, "ttc": 0.0, "lk": 0.0}
    human = {"nc": 1.0, "dac": 0.0, "ddc": 1.0, "tlc": 1.0, "ttc": 0.0, "lk": 1.0}
    out, reset = human_penalty_filter(agent, human)
    assert reset == ["dac", "ttc"]
    assert out == {"nc": 1.0, "dac": 1.0, "ddc": 0.5, "tlc": 1.0, "ttc": 1.0, "lk": 0.0}
    score = epdms_aggregate(out["nc"], out["dac"], out["ddc"], out["tlc"], 0.8, out["ttc"], out["lk"], 1.0, 1.0)
    assert score == pytest.approx(0.5 * (4 + 5 + 0 + 2 + 2) / 16)  # pre-fix code kept the stale product: 0


def test_drop_ego_overlaps_only_at_t0():
    init = straight(0.0)[0]
    x = np.stack([np.full(41, 2.0), np.full(41, 50.0), np.linspace(50.0, 0.0, 41)])  # on ego / far / arrives later
    z = np.zeros((3, 41))
    tracks = Tracks(["on", "far", "later"], ["vehicle"] * 3, np.full(3, 4.0), np.full(3, 2.0),
                    np.ones((3, 41), dtype=bool), x, z.copy(), z.copy(), z.copy(), z.copy())
    kept = drop_ego_overlaps(tracks, init)
    assert kept.tokens == ["far", "later"]
    np.testing.assert_array_equal(kept.x, x[1:])


# --- end to end on generated scenes -----------------------------------------------------------------------------
def _constant_velocity(inputs, n: int, dt: float) -> np.ndarray:
    v = float(inputs.initial_state[S.VELOCITY_X])
    t = np.arange(1, n + 1) * dt
    return np.stack([v * t, np.zeros(n), np.zeros(n)], 1)


@pytest.fixture(scope="module")
def scenes(tiny_store):
    toks = tiny_store.tokens()[::14]
    return [scene_inputs(tiny_store.load_scene(t, with_sim_state=False)) for t in toks]


def _check_rows(out):
    for p in range(len(out["roles"])):
        row = [out[k][p] for k in EPDMS_KEYS]
        assert all(0.0 <= v <= 1.0 for v in row if not np.isnan(v))
        assert out["epdms"][p] == pytest.approx(epdms_aggregate(*row[:-1]))


def test_human_log_replay_scores_high(scenes):
    human_rows = []
    for inputs in scenes:
        inputs = dataclasses.replace(inputs, reference_poses=_constant_velocity(inputs, 40, 0.1))
        out = score_proposals_v2(inputs, inputs.human_poses)
        assert out["roles"] == ["reference", "agent", "human"] and out["agent_index"] == 1
        assert out["states"].shape == (3, 41, 11)
        _check_rows(out)
        assert np.isnan(out["ec"]).all()  # no predecessor given
        human_rows.append([out[k][1] for k in EPDMS_KEYS])
    rows = np.array(human_rows)
    assert rows[:, EPDMS_KEYS.index("nc")].min() == 1.0
    assert rows[:, EPDMS_KEYS.index("epdms")].mean() >= 0.9


def test_human_filter_end_to_end(scenes):
    inputs = scenes[0]
    no_map = DrivableMap([], [], [], np.zeros(0, dtype=bool))  # every proposal (the human too) leaves the road
    out = score_proposals_v2(dataclasses.replace(inputs, drivable=no_map), _constant_velocity(inputs, 8, 0.5))
    a, h = out["agent_index"], out["roles"].index("human")
    assert "dac" in out["filtered"]
    for key in out["filtered"]:
        assert out[key][h] == 0.0 and out[key][a] == 1.0
    _check_rows(out)
    assert out["epdms"][a] > 0.0 == out["epdms"][h]
    unfiltered = score_proposals_v2(dataclasses.replace(inputs, drivable=no_map), _constant_velocity(inputs, 8, 0.5),
                                    human_filter=False)
    assert unfiltered["dac"][0] == 0.0 and unfiltered["epdms"][0] == 0.0


def test_extended_comfort_with_previous_frame(tiny_store):
    by_log = defaultdict(list)
    for tok in tiny_store.tokens()[:40]:
        by_log[tiny_store.info(tok)["log"]].append(tok)
    pair = None
    for toks in by_log.values():
        scs = sorted((tiny_store.load_scene(t, with_sim_state=False) for t in toks[:4]),
                     key=lambda sc: sc.current_frame.timestamp)
        for prev, cur in zip(scs, scs[1:]):
            if 0 < cur.current_frame.timestamp - prev.current_frame.timestamp < 550_000:
                pair = (prev, cur)
                break
        if pair:
            break
    assert pair is not None, "no adjacent scenes in the tiny world"
    first, second = (scene_inputs(sc) for sc in pair)
    before = score_proposals_v2(first, first.human_poses)
    dt = (second.t0_us - first.t0_us) * 1e-6
    out = score_proposals_v2(second, second.human_poses, previous_states=before["states"][before["agent_index"]],
                             previous_dt_s=dt)
    a = out["agent_index"]
    assert out["ec"][a] in (0.0, 1.0)
    _check_rows(out)
    row = {k: out[k][a] for k in EPDMS_KEYS}
    mult = row["nc"] * row["dac"] * row["ddc"] * row["tlc"]
    expected = mult * (5 * row["ep"] + 5 * row["ttc"] + 2 * row["lk"] + 2 * row["hc"] + 2 * row["ec"]) / 16
    assert row["epdms"] == pytest.approx(expected)
