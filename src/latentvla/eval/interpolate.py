"""Turn an agent's relative poses into the 41-state reference array that NAVSIM v1.1 feeds to its LQR tracker.

Reproduces ``navsim/evaluate/pdm_score.py`` (v1.1): ``transform_trajectory`` then ``get_trajectory_as_array``.

- Relative rear-axle poses become global via the SE(2) matrix product ``origin @ relative`` and
  ``heading = arctan2(m10, m00)`` (nuPlan ``relative_to_absolute_poses``).
- Pose k (k = 1..N) gets the timestamp ``int((k·interval + t0_s) · 1e6)`` µs (nuPlan ``_get_fixed_timesteps`` +
  ``_se2_vel_acc_to_ego_state``) and zero velocity, acceleration and steering; the logged initial state is prepended.
- ``InterpolatedTrajectory`` is sampled at ``int((j·0.1 + t0_s) · 1e6)`` µs, clipped to the trajectory's time span:
  linear interpolation (scipy ``interp1d`` arithmetic) of x, y, vx, vy, ax, ay, steering; the heading is
  ``np.unwrap``-ed, interpolated linearly and wrapped with ``principal_value`` (nuPlan ``AngularInterpolator``).
- Steering rate, angular velocity and angular acceleration of the resampled states are 0 (``from_split_state``).

Only x, y and heading of the result matter to the tracker; the rest is kept for one-to-one comparisons.
The float truncations (``int(t · 1e6)``) are reproduced: pass the real ``t0_us`` to get the official µs jitter.
"""

from __future__ import annotations

import numpy as np

from latentvla.eval.state import DT, NUM_STATES, STATE_SIZE, StateIndex, principal_value

# Columns interpolated linearly, in nuPlan's EgoState.to_split_state order (time column handled separately).
_LINEAR = (
    StateIndex.X,
    StateIndex.Y,
    StateIndex.VELOCITY_X,
    StateIndex.VELOCITY_Y,
    StateIndex.ACCELERATION_X,
    StateIndex.ACCELERATION_Y,
    StateIndex.STEERING_ANGLE,
)


def relative_to_absolute(origin: np.ndarray, poses_local: np.ndarray) -> np.ndarray:
    """(..., N, 3) relative (x, y, heading) -> global, composing 3x3 SE(2) matrices like nuPlan does.

    ``origin`` is one pose (3,) or one per leading row of ``poses_local`` (B, 3) for (B, N, 3) poses.
    """
    poses = np.asarray(poses_local, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)[..., :3]
    x0, y0, h0 = origin[..., 0], origin[..., 1], origin[..., 2]
    origin_m = np.zeros(origin.shape[:-1] + (3, 3))
    origin_m[..., 0, 0], origin_m[..., 0, 1], origin_m[..., 0, 2] = np.cos(h0), -np.sin(h0), x0
    origin_m[..., 1, 0], origin_m[..., 1, 1], origin_m[..., 1, 2] = np.sin(h0), np.cos(h0), y0
    origin_m[..., 2, 2] = 1.0
    if origin.ndim == 2:
        origin_m = origin_m[:, None]
    c, s = np.cos(poses[..., 2]), np.sin(poses[..., 2])
    rel = np.zeros((*poses.shape[:-1], 3, 3), dtype=np.float64)
    rel[..., 0, 0], rel[..., 0, 1], rel[..., 0, 2] = c, -s, poses[..., 0]
    rel[..., 1, 0], rel[..., 1, 1], rel[..., 1, 2] = s, c, poses[..., 1]
    rel[..., 2, 2] = 1.0
    absolute = origin_m @ rel
    return np.stack(
        [absolute[..., 0, 2], absolute[..., 1, 2], np.arctan2(absolute[..., 1, 0], absolute[..., 0, 0])], axis=-1
    )


def plan_timestamps_us(num_poses: int, interval: float, t0_us: int = 0) -> np.ndarray:
    """µs timestamps of the N plan poses, with nuPlan's float round trip and ``int`` truncation."""
    steps = np.arange(0.0, num_poses * interval, interval)[:num_poses] + interval
    steps += t0_us * 1e-6
    return np.array([int(t * 1e6) for t in steps.tolist()], dtype=np.int64)


def sample_timestamps_us(num_states: int = NUM_STATES, dt: float = DT, t0_us: int = 0) -> np.ndarray:
    """µs query times of ``get_trajectory_as_array`` (before clipping): ``arange(0, H + dt, dt) + t0_s``."""
    horizon = (num_states - 1) * dt
    times_s = np.arange(0.0, horizon + dt, dt)[:num_states]
    if len(times_s) != num_states:
        raise ValueError(f"cannot build {num_states} samples with dt={dt}")
    times_s = times_s + t0_us * 1e-6
    return np.array([int(t * 1e6) for t in times_s.tolist()], dtype=np.int64)


def interp_linear(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """scipy ``interp1d(kind='linear')._call_linear`` arithmetic, row by row.

    x: (B, K) increasing knots, y: (B, K, C), x_new: (B, S) within [x[:, 0], x[:, -1]] -> (B, S, C).
    """
    k = x.shape[1]
    idx = np.clip((x[:, None, :] < x_new[:, :, None]).sum(-1), 1, k - 1)  # searchsorted(side="left") per row
    rows = np.arange(len(x))[:, None]
    lo, hi = idx - 1, idx
    x_lo, x_hi = x[rows, lo], x[rows, hi]
    y_lo, y_hi = y[rows, lo], y[rows, hi]
    slope = (y_hi - y_lo) / (x_hi - x_lo)[..., None]
    return slope * (x_new - x_lo)[..., None] + y_lo


def trajectory_states_multi(
    initial_states: np.ndarray,
    poses_local: np.ndarray,
    interval: float = 0.5,
    t0_us: np.ndarray | int = 0,
    num_states: int = NUM_STATES,
    dt: float = DT,
) -> np.ndarray:
    """(B, N, 3) relative plans, each with its own initial state (B, 11) and start time (B,) µs -> (B, num_states,
    11) reference states. Lets the scorer interpolate the plans of many scenes in one call."""
    init = np.asarray(initial_states, dtype=np.float64)
    poses = np.asarray(poses_local, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[-1] != 3 or poses.shape[1] < 1:
        raise ValueError(f"poses_local must have shape (B, N>=1, 3), got {poses.shape}")
    batch, n_poses, _ = poses.shape
    init = np.broadcast_to(init, (batch, STATE_SIZE)) if init.shape == (STATE_SIZE,) else init
    if init.shape != (batch, STATE_SIZE):
        raise ValueError(f"initial_states must have shape ({batch}, {STATE_SIZE}) or ({STATE_SIZE},), got {init.shape}")
    t0 = np.broadcast_to(np.asarray(t0_us, dtype=np.int64), (batch,))

    absolute = relative_to_absolute(init[:, StateIndex.X : StateIndex.HEADING + 1], poses)  # (B, N, 3)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    knots_us = np.empty((batch, n_poses + 1))
    query = np.empty((batch, num_states))
    for b, t in enumerate(t0.tolist()):  # µs time grids (float round trips depend on t0): once per start time
        if t not in cache:
            knots = np.concatenate([[t], plan_timestamps_us(n_poses, interval, t)]).astype(np.float64)
            cache[t] = (knots, np.clip(sample_timestamps_us(num_states, dt, t), knots[0], knots[-1]).astype(float))
        knots_us[b], query[b] = cache[t]

    linear = np.zeros((batch, n_poses + 1, len(_LINEAR)), dtype=np.float64)
    linear[:, 0] = init[:, list(_LINEAR)]
    linear[:, 1:, 0] = absolute[..., 0]
    linear[:, 1:, 1] = absolute[..., 1]  # velocity, acceleration, steering of the plan poses stay 0

    headings = np.concatenate([init[:, None, StateIndex.HEADING], absolute[..., 2]], axis=1)
    headings = np.unwrap(headings, axis=1)[..., None]

    lin = interp_linear(knots_us, linear, query)
    ang = principal_value(interp_linear(knots_us, headings, query))[..., 0]

    out = np.zeros((batch, num_states, STATE_SIZE), dtype=np.float64)
    out[..., list(_LINEAR)] = lin
    out[..., StateIndex.HEADING] = ang
    return out


def trajectory_states_batch(
    initial_state: np.ndarray,
    poses_local: np.ndarray,
    interval: float = 0.5,
    num_states: int = NUM_STATES,
    dt: float = DT,
    t0_us: int = 0,
) -> np.ndarray:
    """(B, N, 3) relative plans sharing one initial state (11,) -> (B, num_states, 11) reference states."""
    init = np.asarray(initial_state, dtype=np.float64)
    if init.shape != (STATE_SIZE,):
        raise ValueError(f"initial_state must have shape ({STATE_SIZE},), got {init.shape}")
    return trajectory_states_multi(init, poses_local, interval, t0_us, num_states, dt)


def trajectory_states(
    initial_state: np.ndarray,
    poses_local: np.ndarray,
    interval: float = 0.5,
    num_states: int = NUM_STATES,
    dt: float = DT,
    t0_us: int = 0,
) -> np.ndarray:
    """One relative plan (N, 3) at ``interval`` s spacing -> (num_states, 11) reference states (§1.2 steps 2-3)."""
    poses = np.asarray(poses_local, dtype=np.float64)
    if poses.ndim != 2:
        raise ValueError(f"poses_local must have shape (N, 3), got {poses.shape}")
    return trajectory_states_batch(initial_state, poses[None], interval, num_states, dt, t0_us)[0]
