"""NAVSIM v1.1 motion simulation and comfort: interpolation, LQR tracker + bicycle model, the six comfort checks.

Numbers come from the NAVSIM metrics specification (navsim-metrics.md) §1.2, §1.3, §1.9 and §10.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import interp1d
from scipy.signal import savgol_filter

from latentvla.eval import comfort as cm
from latentvla.eval import tracker as tr
from latentvla.eval.interpolate import trajectory_states, trajectory_states_batch
from latentvla.eval.state import DT, NUM_STATES, WHEEL_BASE, StateIndex, normalize_angle, principal_value

S = StateIndex
T = np.arange(NUM_STATES) * DT


def _initial(v: float = 10.0, x: float = 0.0, y: float = 0.0, heading: float = 0.0) -> np.ndarray:
    state = np.zeros(len(StateIndex))
    state[[S.X, S.Y, S.HEADING, S.VELOCITY_X]] = x, y, heading, v
    return state


def _circle_poses(radius: float, speed: float, n: int = 8, interval: float = 0.5) -> np.ndarray:
    arc = speed * np.arange(1, n + 1) * interval / radius
    return np.stack([radius * np.sin(arc), radius * (1 - np.cos(arc)), arc], axis=-1)


def _lateral_error(sim: np.ndarray, ref: np.ndarray) -> np.ndarray:
    h = ref[:, S.HEADING]
    return -(sim[:, S.X] - ref[:, S.X]) * np.sin(h) + (sim[:, S.Y] - ref[:, S.Y]) * np.cos(h)


# ---------------------------------------------------------------------------------------------------------------
# Parameters (§1.3, §1.9)
# ---------------------------------------------------------------------------------------------------------------


def test_state_layout_and_constants_match_spec():
    assert [s.name for s in StateIndex] == [
        "X", "Y", "HEADING", "VELOCITY_X", "VELOCITY_Y", "ACCELERATION_X", "ACCELERATION_Y",
        "STEERING_ANGLE", "STEERING_RATE", "ANGULAR_VELOCITY", "ANGULAR_ACCELERATION",
    ]
    assert list(StateIndex) == list(range(11))
    assert (DT, NUM_STATES, WHEEL_BASE) == (0.1, 41, 3.089)
    assert tr.Q_LONGITUDINAL == 10.0 and tr.R_LONGITUDINAL == 1.0
    assert tr.Q_LATERAL == (1.0, 10.0, 0.0) and tr.R_LATERAL == 1.0
    assert tr.DISCRETIZATION_TIME == 0.1 and tr.TRACKING_HORIZON == 10
    assert tr.JERK_PENALTY == 1e-4 and tr.CURVATURE_RATE_PENALTY == 1e-2
    assert tr.STOPPING_PROPORTIONAL_GAIN == 0.5 and tr.STOPPING_VELOCITY == 0.2
    assert tr.INITIAL_CURVATURE_PENALTY == 1e-10
    assert tr.MAX_STEERING_ANGLE == np.pi / 3
    assert tr.ACCEL_TIME_CONSTANT == 0.2 and tr.STEERING_ANGLE_TIME_CONSTANT == 0.05
    assert tr.MOTION_DT == 100_000 * 1e-6  # nuPlan TimePoint difference, 0.09999999999999999
    assert (cm.MIN_LON_ACCEL, cm.MAX_LON_ACCEL, cm.MAX_ABS_LAT_ACCEL) == (-4.05, 2.40, 4.89)
    assert (cm.MAX_ABS_MAG_JERK, cm.MAX_ABS_LON_JERK) == (8.37, 4.13)
    assert (cm.MAX_ABS_YAW_ACCEL, cm.MAX_ABS_YAW_RATE) == (1.93, 0.95)
    assert (cm.ACCEL_SMOOTHING_WINDOW, cm.DERIVATIVE_WINDOW, cm.DECIMALS) == (8, 5, 8)


# ---------------------------------------------------------------------------------------------------------------
# Interpolation (§1.2 steps 2-3)
# ---------------------------------------------------------------------------------------------------------------


def test_interpolation_golden_values_by_hand():
    init = _initial(v=5.0)
    poses = np.array([[2.5 * k, 0.0, 0.0] for k in range(1, 9)])
    ref = trajectory_states(init, poses)
    assert ref.shape == (41, 11)
    np.testing.assert_allclose(ref[0], init)  # the logged state is state 0
    # x at 0.3 s: 0.6 of the way to the first pose (2.5 m at 0.5 s); 0.7 s: 2.5 + 0.4 * 2.5
    assert ref[3, S.X] == pytest.approx(1.5, abs=1e-12)
    assert ref[7, S.X] == pytest.approx(3.5, abs=1e-12)
    # speed is interpolated from the logged 5 m/s to the plan poses' 0 m/s
    assert ref[1, S.VELOCITY_X] == pytest.approx(4.0, abs=1e-12)
    assert np.all(ref[5:, S.VELOCITY_X] == 0.0)
    assert np.all(ref[:, [S.STEERING_RATE, S.ANGULAR_VELOCITY, S.ANGULAR_ACCELERATION]] == 0.0)
    # a finer grid hits t = 0.25 s: half-way to the first pose
    fine = trajectory_states(init, poses, num_states=81, dt=0.05)
    assert fine[5, S.X] == pytest.approx(1.25, abs=1e-12)


def test_interpolation_relative_to_initial_rear_axle_pose():
    init = _initial(v=3.0, x=10.0, y=5.0, heading=np.pi / 2)
    poses = np.zeros((8, 3))
    poses[0] = (2.0, 1.0, 0.1)
    ref = trajectory_states(init, poses)
    np.testing.assert_allclose(ref[5, [S.X, S.Y, S.HEADING]], [9.0, 7.0, np.pi / 2 + 0.1], atol=1e-12)


def test_short_plan_holds_its_last_pose():
    init = _initial(v=5.0)
    poses = np.array([[2.5 * k, 0.1 * k, 0.05 * k] for k in range(1, 5)])  # 4 poses = 2 s
    ref = trajectory_states(init, poses)
    assert ref.shape == (41, 11)
    np.testing.assert_allclose(ref[20:, [S.X, S.Y]], np.tile(ref[20, [S.X, S.Y]], (21, 1)))
    np.testing.assert_allclose(ref[20, [S.X, S.Y]], [10.0, 0.4], atol=1e-12)
    assert np.all(ref[20:, S.HEADING] == ref[20, S.HEADING])


def test_heading_interpolation_takes_the_short_way_across_pi():
    init = _initial(heading=np.pi - 0.1)
    poses = np.array([[1.0 * k, 0.0, 0.2 * k] for k in range(1, 9)])  # global headings wrap past +π
    ref = trajectory_states(init, poses)
    assert ref[1, S.HEADING] == pytest.approx(np.pi - 0.06, abs=1e-12)
    assert ref[3, S.HEADING] == pytest.approx(-np.pi + 0.02, abs=1e-12)
    assert np.all(np.abs(normalize_angle(np.diff(ref[:, S.HEADING]))) < 0.05)


def test_interpolation_equals_scipy_interp1d_like_nuplan():
    """InterpolatedTrajectory: interp1d over time_us for linear states, unwrap->interp1d->principal value."""
    rng = np.random.default_rng(3)
    init = _initial(v=7.0, x=3.0, y=-2.0, heading=3.0)
    init[[S.ACCELERATION_X, S.ACCELERATION_Y, S.VELOCITY_Y]] = 0.7, -0.3, 0.1
    poses = np.cumsum(rng.normal([3.0, 0.2, 0.15], 0.3, size=(8, 3)), axis=0)
    t0_us = 1_630_000_000_123_456
    ref = trajectory_states(init, poses, t0_us=t0_us)

    c, s = np.cos(init[S.HEADING]), np.sin(init[S.HEADING])
    glob = np.stack([init[S.X] + c * poses[:, 0] - s * poses[:, 1], init[S.Y] + s * poses[:, 0] + c * poses[:, 1],
                     normalize_angle(init[S.HEADING] + poses[:, 2])], axis=-1)
    knots = [t0_us] + [int(t * 1e6) for t in (np.arange(0.0, 4.0, 0.5) + 0.5 + t0_us * 1e-6)]
    linear = np.zeros((9, 7))
    linear[0] = init[[S.X, S.Y, S.VELOCITY_X, S.VELOCITY_Y, S.ACCELERATION_X, S.ACCELERATION_Y, S.STEERING_ANGLE]]
    linear[1:, :2] = glob[:, :2]
    query = np.clip([int(t * 1e6) for t in (np.arange(0.0, 4.1, 0.1) + t0_us * 1e-6)], knots[0], knots[-1])
    expected_lin = interp1d(knots, linear, axis=0)(query)
    heads = np.unwrap(np.concatenate([[init[S.HEADING]], glob[:, 2]]))[:, None]
    expected_heading = principal_value(interp1d(knots, heads, axis=0)(query))[:, 0]
    np.testing.assert_allclose(ref[:, [S.X, S.Y]], expected_lin[:, :2], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ref[:, S.VELOCITY_X:S.ACCELERATION_Y + 1], expected_lin[:, 2:6], rtol=0, atol=1e-12)
    np.testing.assert_allclose(normalize_angle(ref[:, S.HEADING] - expected_heading), 0.0, atol=1e-12)


def test_batched_interpolation_matches_single():
    rng = np.random.default_rng(0)
    init = _initial(v=6.0, heading=-2.0)
    plans = np.cumsum(rng.normal([2.5, 0.0, 0.0], [0.5, 0.3, 0.05], size=(3, 8, 3)), axis=1)
    batch = trajectory_states_batch(init, plans)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], trajectory_states(init, plans[i]))


# ---------------------------------------------------------------------------------------------------------------
# Reference profiles (batch_lqr_utils) against a literal dense/pinv formulation
# ---------------------------------------------------------------------------------------------------------------


def _literal_profiles(poses: np.ndarray, dt: float = 0.1, jerk: float = 1e-4, curv: float = 1e-2):
    """The official least squares written out densely, one proposal at a time, solved with pinv."""
    out_v, out_k = [], []
    for p in poses:
        d = np.diff(p, axis=0)
        xy, dh, m = d[:, :2], normalize_angle(d[:, 2]), len(d)
        a = np.zeros((2 * m, m))
        for i in range(m):
            for row, trig in ((2 * i, np.cos(p[i, 2])), (2 * i + 1, np.sin(p[i, 2]))):
                a[row, 0] = trig * dt
                a[row, 1 : i + 1] = trig * dt**2
        banded = np.zeros((m - 2, m - 1))  # built like _make_banded_difference_matrix, overwrite included
        banded[:, 1:] = np.eye(m - 2)
        banded[:, :-1] = -np.eye(m - 2)
        reg = np.hstack([np.zeros((m - 2, 1)), banded])
        sol = np.linalg.pinv(a.T @ a + jerk * reg.T @ reg) @ a.T @ xy.reshape(-1)
        v = sol[0] + np.concatenate([[0.0], np.cumsum(sol[1:] * dt)])
        b = np.tri(m)
        b[:, 0] = v * dt
        b[1:, 1:] *= (v * dt**2)[1:, None]
        q = curv * np.eye(m)
        q[0, 0] = 1e-10
        sol = np.linalg.pinv(b.T @ b + q) @ b.T @ dh
        out_v.append(v)
        out_k.append(sol[0] + np.concatenate([[0.0], np.cumsum(sol[1:] * dt)]))
    return np.array(out_v), np.array(out_k)


def test_banded_difference_keeps_the_official_overwrite():
    expected = np.array([[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.0]])
    np.testing.assert_array_equal(tr._banded_difference(3), expected)


def test_profile_fit_equals_literal_least_squares():
    init = _initial(v=8.0, heading=0.4)
    rng = np.random.default_rng(1)
    plans = np.cumsum(rng.normal([3.0, 0.3, 0.08], [1.0, 0.3, 0.06], size=(4, 8, 3)), axis=1)
    plans[3] = 0.0  # standing still: only the tiny initial-curvature penalty keeps it well posed
    refs = trajectory_states_batch(init, plans)[..., :3]
    v, a, k, kr = tr.velocity_curvature_profiles(refs)
    assert v.shape == k.shape == (4, 40) and a.shape == kr.shape == (4, 39)
    v_lit, k_lit = _literal_profiles(refs)
    np.testing.assert_allclose(v, v_lit, rtol=0, atol=1e-8)
    np.testing.assert_allclose(k, k_lit, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------------------------
# Tracker + bicycle model (§1.3, §10)
# ---------------------------------------------------------------------------------------------------------------


def test_lateral_lqr_equals_literal_matrix_form():
    """Closed-form unit-triangular updates == the 3x3 product form of BatchLQRTracker._lateral_lqr_controller."""
    rng = np.random.default_rng(2)
    state = rng.normal(0.0, [0.5, 0.2, 0.05], size=(6, 3))
    state[0, 1] = 3.0  # heading error near ±π: the wrap of the propagated error matters
    velocity = rng.uniform(0.0, 20.0, size=(6, 10))
    curvature = rng.normal(0.0, 0.02, size=(6, 10))
    expected = []
    for e, vs, ks in zip(state, velocity, curvature):
        a, b, g = np.eye(3), np.zeros((3, 1)), np.zeros(3)
        for v, k in zip(vs, ks):
            m = np.eye(3)
            m[0, 1], m[1, 2] = v * 0.1, v * 0.1 / WHEEL_BASE
            a, b, g = m @ a, m @ b + np.array([[0.0], [0.0], [0.1]]), m @ g + np.array([0.0, -v * k * 0.1, 0.0])
        err = a @ e + g
        err[1:] = np.arctan2(np.sin(err[1:]), np.cos(err[1:]))
        q = np.diag([1.0, 10.0, 0.0])
        expected.append((-np.linalg.inv(b.T @ q @ b + 1.0) @ b.T @ q @ err)[0])
    ours = tr._lateral_lqr(tuple(state.T), velocity, curvature, 0.1)
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-14)


def test_bicycle_step_by_hand():
    state = _initial(v=10.0, heading=0.3)
    state[S.ANGULAR_VELOCITY] = 0.1
    out = tr.propagate(state[None], np.array([1.0]), np.array([0.5]))[0]
    dt = 0.1
    accel = dt / (dt + 0.2) * 1.0  # first-order lag towards the commanded 1 m/s^2
    steering = dt / (dt + 0.05) * (dt * 0.5)  # lag towards the angle the commanded rate would reach
    np.testing.assert_allclose(out[S.ACCELERATION_X], accel)
    np.testing.assert_allclose(out[S.VELOCITY_X], 10.0 + accel * dt)
    np.testing.assert_allclose(out[S.STEERING_ANGLE], steering)
    np.testing.assert_allclose(out[S.STEERING_RATE], steering / dt)
    np.testing.assert_allclose(out[[S.X, S.Y]], [10.0 * dt * np.cos(0.3), 10.0 * dt * np.sin(0.3)])
    assert out[S.HEADING] == pytest.approx(0.3, abs=1e-15)  # previous steering angle (0); principal_value
    yaw_rate = (10.0 + accel * dt) * np.tan(steering) / WHEEL_BASE
    np.testing.assert_allclose(out[S.ANGULAR_VELOCITY], yaw_rate)
    np.testing.assert_allclose(out[S.ANGULAR_ACCELERATION], (yaw_rate - 0.1) / dt)
    assert out[S.VELOCITY_Y] == 0.0 and out[S.ACCELERATION_Y] == 0.0
    clipped = tr.propagate(state[None], np.array([0.0]), np.array([1e3]))[0]
    assert clipped[S.STEERING_ANGLE] == pytest.approx(np.pi / 3)


def test_straight_constant_speed_is_tracked_exactly():
    init = _initial(v=10.0)
    ref = trajectory_states(init, np.array([[5.0 * k, 0.0, 0.0] for k in range(1, 9)]))
    sim = tr.simulate(init[None], ref[None])[0]
    assert sim.shape == (41, 11)
    np.testing.assert_array_equal(sim[0], init)
    assert np.max(np.hypot(sim[:, S.X] - ref[:, S.X], sim[:, S.Y] - ref[:, S.Y])) < 0.01
    assert np.all(sim[:, S.HEADING] == 0.0)
    np.testing.assert_allclose(sim[:, S.VELOCITY_X], 10.0, atol=1e-6)


def test_stationary_plan_uses_stopping_controller():
    init = _initial(v=0.0)
    ref = trajectory_states(init, np.zeros((8, 3)))
    sim = tr.simulate(init[None], ref[None])[0]
    assert np.all(sim[:, [S.X, S.Y, S.HEADING, S.VELOCITY_X, S.STEERING_ANGLE]] == 0.0)


def test_curve_starts_with_zero_steering_and_lags_then_converges():
    init = _initial(v=10.0)
    radius = 50.0
    ref = trajectory_states(init, _circle_poses(radius, 10.0))
    sim = tr.simulate(init[None], ref[None])[0]
    assert sim[0, S.STEERING_ANGLE] == 0.0 and sim[0, S.ANGULAR_VELOCITY] == 0.0
    assert sim[1, S.HEADING] == sim[0, S.HEADING]  # heading integrates the previous (zero) steering angle
    assert 0.0 < sim[1, S.STEERING_ANGLE] < 0.02  # steering only starts to build up (low-pass, 0.05 s)
    np.testing.assert_allclose(
        sim[1:, S.ANGULAR_VELOCITY], sim[1:, S.VELOCITY_X] * np.tan(sim[1:, S.STEERING_ANGLE]) / WHEEL_BASE
    )
    assert np.all(sim[1:, [S.VELOCITY_Y, S.ACCELERATION_Y]] == 0.0)
    lateral = np.abs(_lateral_error(sim, ref))
    heading_error = np.abs(normalize_angle(sim[:, S.HEADING] - ref[:, S.HEADING]))
    assert lateral[:21].max() > 0.3  # visible lag on the inside of the curve
    assert lateral[40] < 0.5 * lateral[:21].max()
    assert heading_error[40] < 0.3 * heading_error.max()
    assert sim[20:, S.STEERING_ANGLE].mean() == pytest.approx(np.arctan(WHEEL_BASE / radius), rel=0.3)


def test_batch_rows_equal_single_simulations():
    init = _initial(v=8.0, heading=0.3)
    plans = np.stack([
        np.array([[4.0 * k, 0.0, 0.0] for k in range(1, 9)]),
        _circle_poses(30.0, 8.0),
        np.array([[min(4.0 * k - 0.5 * k * k * 0.25, 8.0), 0.0, 0.0] for k in range(1, 9)]),  # braking
    ])
    refs = trajectory_states_batch(init, plans)
    batch = tr.simulate(np.tile(init, (3, 1)), refs)
    assert not np.allclose(batch[0], batch[1]) and not np.allclose(batch[0], batch[2])
    for i in range(3):
        np.testing.assert_allclose(batch[i], tr.simulate(init[None], refs[i : i + 1])[0], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Comfort (§1.9)
# ---------------------------------------------------------------------------------------------------------------


def _states(ax=None, ay=None, heading=None) -> np.ndarray:
    states = np.zeros((1, NUM_STATES, len(StateIndex)))
    states[0, :, S.VELOCITY_X] = 10.0
    for idx, values in ((S.ACCELERATION_X, ax), (S.ACCELERATION_Y, ay), (S.HEADING, heading)):
        if values is not None:
            states[0, :, idx] = values
    return states


def _failed(states: np.ndarray) -> set[str]:
    return {key for key, ok in cm.comfort_flags(states).items() if not ok[0]}


def _alternating_burst(magnitude: float, at_end: bool) -> np.ndarray:
    ay = np.zeros(NUM_STATES)
    ay[31:] = magnitude * (-1.0) ** np.arange(10)  # |a| jumps, a_y itself averages out
    return ay if at_end else ay[::-1].copy()


def test_gentle_trajectory_is_comfortable():
    states = _states(ax=0.5 * np.sin(T), heading=0.05 * T)
    assert _failed(states) == set()
    assert cm.comfort(states).tolist() == [1.0]


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (_states(ax=3.0 * T / 4), {"lon_accel"}),  # ramps to 3.0 > 2.40
        (_states(ax=-4.5 * T / 4), {"lon_accel"}),  # ramps to -4.5 < -4.05
        (_states(ay=np.full(NUM_STATES, 5.0)), {"lat_accel"}),
        (_states(ay=np.full(NUM_STATES, -5.0)), {"lat_accel"}),
        (_states(ay=_alternating_burst(10.0, at_end=True)), {"jerk"}),  # |a| rises fast: j > 8.37
        (_states(ay=_alternating_burst(10.0, at_end=False)), {"jerk"}),  # |a| falls fast: j < -8.37
        (_states(ax=-4.0 + 1.5 * (T - 2.0) ** 2), {"lon_jerk"}),  # j_x ≈ -6 at the start, +6 at the end
        (_states(heading=0.15 * np.sin(5.0 * T)), {"yaw_accel"}),
        (_states(heading=principal_value(np.pi + 0.15 * np.sin(5.0 * T))), {"yaw_accel"}),  # across ±π
        (_states(heading=principal_value(1.2 * T)), {"yaw_rate"}),  # wraps past π; unwrapped first
        (_states(heading=principal_value(-1.2 * T)), {"yaw_rate"}),
    ],
)
def test_each_comfort_bound_fails_on_its_own(states, expected):
    assert _failed(states) == expected
    assert cm.comfort(states).tolist() == [0.0]


def test_comfort_signals_reach_both_sides():
    assert cm.jerk_signal(_states(ay=_alternating_burst(10.0, True)), "magnitude").max() > cm.MAX_ABS_MAG_JERK
    assert cm.jerk_signal(_states(ay=_alternating_burst(10.0, False)), "magnitude").min() < -cm.MAX_ABS_MAG_JERK
    lon_jerk = cm.jerk_signal(_states(ax=-4.0 + 1.5 * (T - 2.0) ** 2), "x")
    assert lon_jerk.max() > cm.MAX_ABS_LON_JERK and lon_jerk.min() < -cm.MAX_ABS_LON_JERK
    yaw_accel = cm.yaw_signal(_states(heading=0.15 * np.sin(5.0 * T)), 2)
    assert yaw_accel.max() > cm.MAX_ABS_YAW_ACCEL and yaw_accel.min() < -cm.MAX_ABS_YAW_ACCEL


def test_comfort_bounds_are_strict_after_rounding():
    assert _failed(_states(ay=np.full(NUM_STATES, 4.89))) == {"lat_accel"}
    assert _failed(_states(ay=np.full(NUM_STATES, 4.8899))) == set()
    assert _failed(_states(ax=np.full(NUM_STATES, 2.40))) == {"lon_accel"}


def test_jerk_uses_the_even_window_8():
    rng = np.random.default_rng(5)
    ax = np.cumsum(rng.normal(0.0, 0.3, NUM_STATES))
    ay = rng.normal(0.0, 0.5, NUM_STATES)
    states = _states(ax=ax, ay=ay)
    delta = np.diff(T).mean()

    def direct(signal: np.ndarray, window: int) -> np.ndarray:
        smoothed = np.round(savgol_filter(signal, window, 2), 8)
        return np.round(savgol_filter(smoothed, 41, 2, deriv=1, delta=delta), 8)

    for coordinate, signal in (("x", ax), ("magnitude", np.hypot(ax, ay))):
        ours = cm.jerk_signal(states, coordinate)[0]
        np.testing.assert_array_equal(ours, direct(signal, 8))
        assert not np.allclose(ours, direct(signal, 7)) and not np.allclose(ours, direct(signal, 9))
    np.testing.assert_array_equal(cm.acceleration_signal(states, "x")[0], np.round(savgol_filter(ax, 8, 2), 8))


def test_simulated_gentle_plan_is_comfortable_and_batched():
    init = _initial(v=10.0)
    plans = np.stack([
        np.array([[5.0 * k, 0.0, 0.0] for k in range(1, 9)]),
        np.array([[3.0 * k, 0.0, 0.0] for k in range(1, 9)]),  # 10 -> 6 m/s: the tracker brakes hard
    ])
    sim = tr.simulate(init, trajectory_states_batch(init, plans))
    flags = cm.comfort_flags(sim)
    assert all(flags[key].shape == (2,) for key in cm.COMFORT_KEYS)
    assert cm.comfort(sim)[0] == 1.0
    assert cm.comfort(sim).shape == (2,)
