"""EPDMS of NAVSIM v2 (one-stage, navtest) as ``main`` computes it: v2.2 plus the human-filter fix of 2025-09-29.

Builds on the PDMS v1.1 pieces (``pdm_metrics``, ``tracker``, ``comfort``) and adds what v2 changes
(spec navsim-metrics §2.1, §2.2, §10). These quirks are reproduced on purpose, because they change scores:

- log replay drops every object whose box overlaps the ego box at t = 0, from all frames (NC and TTC);
- the observation covers only 0-4 s, so TTC checks ego steps 0..31 only;
- DDC is a multiplier, and steps whose box centre is inside an intersection polygon count no oncoming progress;
- TLC: the ego box must not touch a red on-route lane connector; the 2 Hz light state is held over 0.1 s steps;
- LK: 20 consecutive steps more than 0.5 m from the centerline fail; intersection steps are skipped without
  resetting the counter;
- EP divides the agent's *raw* progress by the best progress among proposals that pass all multipliers;
  if that best is <= 5 m, every proposal gets 1;
- comfort uses accelerations at the vehicle centre (nuPlan's ``a + d*w^2 + d*alpha`` along x only), windows
  8 / 15 / 5; HC prepends the logged past (-1.5 s ... -0.2 s at 0.1 s) before t = 0;
- EC compares the 36 overlapping states of this frame and the frame 0.5 s earlier (RMS, ``<=`` bounds); without
  a predecessor it is NaN and its weight leaves the denominator (14 instead of 16);
- the human filter: a metric in {NC, DAC, DDC, TLC, TTC, LK} that the simulated human log scores exactly 0 is
  reset to 1 for the agent, and the score is recomputed from the reset values (the 2025-09-29 fix).
"""

from __future__ import annotations

import numpy as np
import shapely

from latentvla.eval.comfort import (
    MAX_ABS_LAT_ACCEL,
    MAX_ABS_LON_JERK,
    MAX_ABS_MAG_JERK,
    MAX_ABS_YAW_ACCEL,
    MAX_ABS_YAW_RATE,
    MAX_LON_ACCEL,
    MIN_LON_ACCEL,
    acceleration_signal,
    default_time_points,
    jerk_signal,
    yaw_signal,
)
from latentvla.eval.interpolate import interp_linear, trajectory_states_batch
from latentvla.eval.observation import Tracks
from latentvla.eval.pdm_metrics import (
    DrivableMap,
    drivable_area_compliance,
    driving_direction_compliance,
    ego_area,
    ego_points,
    no_at_fault_collision,
    raw_progress,
    time_to_collision,
)
from latentvla.eval.scene_inputs import REFERENCE_INTERVAL, RedLights, SceneInputs
from latentvla.eval.state import DT, REAR_AXLE_TO_CENTER, STATE_SIZE, StateIndex, principal_value
from latentvla.eval.tracker import simulate
from latentvla.world.geometry import box_corners

__all__ = [
    "EPDMS_KEYS",
    "comfort_v2_flags",
    "driving_direction_compliance_v2",
    "drop_ego_overlaps",
    "ego_progress_v2",
    "epdms_aggregate",
    "extended_comfort_rms",
    "history_comfort",
    "history_states",
    "human_penalty_filter",
    "lane_keeping",
    "score_proposals_v2",
    "traffic_light_compliance",
    "two_frame_extended_comfort",
]

NUM_STEPS = 41  # 0 ... 4 s at 0.1 s
TTC_V2_STEPS = 32  # num_poses - max(TTC offsets) + 1 = 40 - 9 + 1: ego steps 0..31
PROGRESS_THRESHOLD = 5.0  # [m]
LK_DEVIATION_LIMIT = 0.5  # [m] lane_keeping_deviation_limit
LK_STEPS = int(np.ceil(2.0 / DT))  # lane_keeping_horizon_window 2 s -> 20 consecutive steps
HUMAN_INTERVAL = 0.5  # [s] spacing of the logged human future poses
HISTORY_STEP_US = 100_000  # 0.1 s grid of the human past
ACCEL_WINDOW = 8  # savgol window of every v2 acceleration (even, as in v1's jerk)
JERK_DERIVATIVE_WINDOW = 15  # v2 jerk derivative window, capped at the sequence length
EC_OVERLAP_GAP_S = 0.55  # a predecessor must have started less than this before
EC_MAX_RMS = {"acceleration": 0.7, "jerk": 0.5, "yaw_rate": 0.1, "yaw_accel": 0.1}  # m/s^2, m/s^3, rad/s, rad/s^2

WEIGHTS = {"ep": 5.0, "ttc": 5.0, "lk": 2.0, "hc": 2.0, "ec": 2.0}  # pdm_scorer.yaml
MULTIPLIERS = ("nc", "dac", "ddc", "tlc")
FILTER_KEYS = ("nc", "dac", "ddc", "tlc", "ttc", "lk")  # metrics the human filter can reset (never EP, HC, EC)
EPDMS_KEYS = ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc", "ec", "epdms")


# ================================================================================================================
# Geometry-based sub-scores
# ================================================================================================================


def center_in_intersection(points: np.ndarray, dmap: DrivableMap) -> np.ndarray:
    """(B, T) True where the box centre lies strictly inside an intersection polygon (``is_in_layer``: within)."""
    center = points[..., 4, :]
    out = np.zeros(center.shape[:-1], dtype=bool)
    for poly, kind in zip(dmap.polygons, dmap.kinds):
        if kind == "intersection":
            out |= shapely.contains_xy(poly, center[..., 0], center[..., 1])
    return out


def traffic_light_compliance(points: np.ndarray, red_lights: RedLights, num_steps: int = NUM_STEPS,
                             route_lane_ids: set[str] | None = None) -> np.ndarray:
    """TLC in {0, 1} (B,): 0 if the ego box touches a connector while it is red, at any step 0..num_steps-1.

    ``SceneInputs.red_lights`` already holds on-route connectors only (the official cache adds red-light polygons
    for route lane connectors only); ``route_lane_ids`` filters further when the lights come from elsewhere.
    """
    steps = min(points.shape[1], num_steps)
    red = red_lights.at_steps(num_steps)[:, :steps]
    out = np.ones(points.shape[0])
    active = [k for k, lid in enumerate(red_lights.lane_ids)
              if red[k].any() and (route_lane_ids is None or lid in route_lane_ids)]
    if not active:
        return out
    ego = shapely.polygons(np.ascontiguousarray(points[:, :steps, :4, :]))  # (B, T) exterior FL, RL, RR, FR
    for k in active:
        hit = shapely.intersects(red_lights.polygons[k], ego) & red[k][None, :]
        out[hit.any(axis=1)] = 0.0
    return out


def lane_keeping(points: np.ndarray, centerline: np.ndarray, center_in_intersection: np.ndarray) -> np.ndarray:
    """LK in {0, 1} (B,): 0 once the centre is > 0.5 m off the centerline for 20 consecutive (non-intersection) steps.

    Official loop: intersection steps are skipped (``continue``) and neither count nor reset the run.
    """
    line = shapely.LineString(np.asarray(centerline, dtype=np.float64))
    dist = shapely.distance(shapely.points(np.ascontiguousarray(points[..., 4, :])), line)  # (B, T)
    out = np.ones(points.shape[0])
    for b in range(points.shape[0]):
        run = 0
        for t in range(points.shape[1]):
            if center_in_intersection[b, t]:
                continue
            run = run + 1 if dist[b, t] > LK_DEVIATION_LIMIT else 0
            if run >= LK_STEPS:
                out[b] = 0.0
                break
    return out


def driving_direction_compliance_v2(points: np.ndarray, area: dict, center_in_intersection: np.ndarray) -> np.ndarray:
    """DDC in {0, 0.5, 1} (B,) as v1, but steps whose centre is in an intersection add no oncoming progress."""
    return driving_direction_compliance(points, {"oncoming": area["oncoming"] & ~center_in_intersection})


def drop_ego_overlaps(tracks: Tracks, initial_state: np.ndarray) -> Tracks:
    """Log replay (v2): objects present at t = 0 whose box intersects the initial ego box vanish from all frames."""
    if not len(tracks):
        return tracks
    ego = shapely.Polygon(ego_points(np.asarray(initial_state, dtype=np.float64))[:4])
    boxes = box_corners(tracks.x[:, 0], tracks.y[:, 0], tracks.heading[:, 0], tracks.length, tracks.width)
    keep = ~(tracks.valid[:, 0] & shapely.intersects(ego, shapely.polygons(boxes)))
    if keep.all():
        return tracks
    idx = np.flatnonzero(keep)
    return Tracks(
        tokens=[tracks.tokens[j] for j in idx], names=[tracks.names[j] for j in idx],
        length=tracks.length[keep], width=tracks.width[keep], valid=tracks.valid[keep],
        x=tracks.x[keep], y=tracks.y[keep], heading=tracks.heading[keep], vx=tracks.vx[keep], vy=tracks.vy[keep],
    )


# ================================================================================================================
# Comfort (v2 signal definitions)
# ================================================================================================================


def center_states(states: np.ndarray) -> np.ndarray:
    """Copy of ``states`` with accelerations moved to the vehicle centre (``state_array_to_center_state_array``).

    nuPlan's ``get_acceleration_shifted`` adds ``displacement * w^2 + displacement * alpha`` element-wise with the
    displacement (1.461 m, 0): only a_x changes (a_y + 0 + 0). Only the accelerations are read downstream.
    """
    out = np.array(states, dtype=np.float64, copy=True)
    w = states[..., StateIndex.ANGULAR_VELOCITY]
    alpha = states[..., StateIndex.ANGULAR_ACCELERATION]
    out[..., StateIndex.ACCELERATION_X] = (states[..., StateIndex.ACCELERATION_X] + REAR_AXLE_TO_CENTER * w**2
                                           + REAR_AXLE_TO_CENTER * alpha)
    return out


def _strictly_within(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.all((values > low) & (values < high), axis=-1)


def comfort_v2_flags(states: np.ndarray, time_points_s: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The six v1 checks with v2 signals (``pdm_comfort_metrics`` on main): each (B,) bool, True = pass.

    lon/lat acceleration: centre a_x / a_y, savgol window 8; jerk: |a| of the *rear axle* (window 8), lon jerk:
    centre a_x (window 8), then a derivative over min(15, T) steps; yaw rate / acceleration: window 5.
    """
    states = np.asarray(states, dtype=np.float64)
    n = states.shape[1]
    t = default_time_points(n) if time_points_s is None else np.asarray(time_points_s, dtype=np.float64)
    center = center_states(states)
    lon = acceleration_signal(center, "x", window_length=ACCEL_WINDOW)
    lat = acceleration_signal(center, "y", window_length=ACCEL_WINDOW)
    jerk = jerk_signal(states, "magnitude", t, derivative_window=JERK_DERIVATIVE_WINDOW)
    lon_jerk = jerk_signal(center, "x", t, derivative_window=JERK_DERIVATIVE_WINDOW)
    return {
        "lon_accel": _strictly_within(lon, MIN_LON_ACCEL, MAX_LON_ACCEL),
        "lat_accel": _strictly_within(lat, -MAX_ABS_LAT_ACCEL, MAX_ABS_LAT_ACCEL),
        "jerk": _strictly_within(jerk, -MAX_ABS_MAG_JERK, MAX_ABS_MAG_JERK),
        "lon_jerk": _strictly_within(lon_jerk, -MAX_ABS_LON_JERK, MAX_ABS_LON_JERK),
        "yaw_accel": _strictly_within(yaw_signal(states, 2, t), -MAX_ABS_YAW_ACCEL, MAX_ABS_YAW_ACCEL),
        "yaw_rate": _strictly_within(yaw_signal(states, 1, t), -MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE),
    }


def history_states(past_states: np.ndarray | None, past_times_s: np.ndarray | None) -> np.ndarray:
    """(H, 11) logged past resampled at 0.1 s from its first sample, stopping *two* grid points before t = 0.

    Official: ``arange(start_us, end_us, 0.1 s)[:-1]`` on the InterpolatedTrajectory of the 2 Hz past ego states
    (-1.5, -1, -0.5, 0 s): -1.5 ... -0.2 s (14 states without timestamp jitter). x, y, velocities, accelerations
    and steering are interpolated linearly, the heading via unwrap / principal value; the rest stays 0.
    """
    if past_states is None or past_times_s is None or len(past_states) < 2:
        return np.zeros((0, STATE_SIZE))
    past = np.asarray(past_states, dtype=np.float64).reshape(-1, STATE_SIZE)
    times_us = np.round(np.asarray(past_times_s, dtype=np.float64) * 1e6).astype(np.int64)
    order = np.argsort(times_us, kind="stable")
    past, times_us = past[order], times_us[order]
    query = np.arange(times_us[0], times_us[-1], HISTORY_STEP_US, dtype=np.int64)[:-1]
    out = np.zeros((len(query), STATE_SIZE))
    if not len(query):
        return out
    knots = times_us.astype(np.float64)
    linear = [StateIndex.X, StateIndex.Y, StateIndex.VELOCITY_X, StateIndex.VELOCITY_Y,
              StateIndex.ACCELERATION_X, StateIndex.ACCELERATION_Y, StateIndex.STEERING_ANGLE]
    q = query.astype(np.float64)[None]
    out[:, linear] = interp_linear(knots[None], past[None][..., linear], q)[0]
    heading = np.unwrap(past[:, StateIndex.HEADING])[None, :, None]
    out[:, StateIndex.HEADING] = principal_value(interp_linear(knots[None], heading, q))[0, :, 0]
    return out


def history_comfort(states: np.ndarray, past_states: np.ndarray | None, past_times_s: np.ndarray | None
                    ) -> np.ndarray:
    """HC in {0, 1} (B,): the six v2 checks on [human past (-1.5 ... -0.2 s), simulated 0 ... 4 s] at 0.1 s spacing.

    The time axis is re-indexed ``arange(n) * 0.1``, so t = 0 sits 0.1 s after -0.2 s (a 0.2 s gap squeezed).
    Without a usable past (fewer than 2 samples) only the simulated states are checked.
    """
    states = np.asarray(states, dtype=np.float64)
    hist = history_states(past_states, past_times_s)
    padded = np.concatenate([np.broadcast_to(hist, (len(states),) + hist.shape), states], axis=1)
    flags = comfort_v2_flags(padded, default_time_points(padded.shape[1]))
    return np.all(np.stack(list(flags.values()), axis=-1), axis=-1).astype(np.float64)


def _extended_comfort_features(states: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """``extract_features``: rear-axle |a| (window 8), its jerk (min(15, T)), yaw rate, yaw acceleration (poly 2)."""
    return {
        "acceleration": acceleration_signal(states, "magnitude", window_length=ACCEL_WINDOW),
        "jerk": jerk_signal(states, "magnitude", t, derivative_window=JERK_DERIVATIVE_WINDOW),
        "yaw_rate": yaw_signal(states, 1, t),
        "yaw_accel": yaw_signal(states, 2, t, poly_order=2),
    }


def extended_comfort_rms(states_now: np.ndarray, states_prev: np.ndarray, dt_s: float = 0.5
                         ) -> dict[str, np.ndarray]:
    """RMS over the overlap of each EC signal's difference (now[:-k] - prev[k:], k = round(dt / 0.1)): (B,) each.

    ``states_now`` / ``states_prev``: simulated states (T, 11) or (B, T, 11) of this frame and of the same log's
    frame that started ``dt_s`` earlier (0 < dt_s < 0.55 s, as asserted by ``SceneAggregator``).
    """
    now = np.asarray(states_now, dtype=np.float64)
    now = now[None] if now.ndim == 2 else now
    prev = np.asarray(states_prev, dtype=np.float64)
    prev = np.broadcast_to(prev[None] if prev.ndim == 2 else prev, now.shape)
    if not 0.0 < dt_s < EC_OVERLAP_GAP_S:
        raise ValueError(f"two-frame comfort needs a predecessor 0 < dt < {EC_OVERLAP_GAP_S} s earlier, got {dt_s}")
    k = int(round(dt_s / DT))
    a, b = now[:, :-k], prev[:, k:]
    t = default_time_points(a.shape[1])
    fa, fb = _extended_comfort_features(a, t), _extended_comfort_features(b, t)
    return {key: np.sqrt(np.mean((fa[key] - fb[key]) ** 2, axis=1)) for key in EC_MAX_RMS}


def two_frame_extended_comfort(states_now: np.ndarray, states_prev: np.ndarray | None, dt_s: float = 0.5
                               ) -> np.ndarray:
    """EC in {0, 1} (B,): every RMS of ``extended_comfort_rms`` <= its bound (inclusive, unlike C / HC).

    NaN where there is no predecessor (``states_prev`` None): the aggregation then drops EC's weight.
    """
    now = np.asarray(states_now, dtype=np.float64)
    if states_prev is None:
        return np.full(1 if now.ndim == 2 else len(now), np.nan)
    rms = extended_comfort_rms(now, states_prev, dt_s)
    ok = np.logical_and.reduce([rms[key] <= bound for key, bound in EC_MAX_RMS.items()])
    return ok.astype(np.float64)


# ================================================================================================================
# Aggregation
# ================================================================================================================


def ego_progress_v2(raw: np.ndarray, multiplicative: np.ndarray, threshold: float = PROGRESS_THRESHOLD
                    ) -> np.ndarray:
    """EP (P,): raw progress over the best progress of proposals passing all multipliers, clipped to [0, 1].

    The proposal's own failures do not mask its raw progress (v1 did); a best <= 5 m gives 1 to everyone.
    """
    raw = np.asarray(raw, dtype=np.float64)
    best = np.max(raw * np.asarray(multiplicative, dtype=np.float64))
    if best > threshold:
        return np.clip(raw / best, 0.0, 1.0)
    return np.ones(len(raw))


def epdms_aggregate(nc, dac, ddc, tlc, ep, ttc, lk, hc, ec) -> np.ndarray:
    """EPDMS = NC*DAC*DDC*TLC * (5 EP + 5 TTC + 2 LK + 2 HC + 2 EC) / 16; a NaN EC drops out (/ 14).

    Mirrors ``compute_final_scores`` of ``run_pdm_score_one_stage.py``; arguments broadcast (scalars or arrays).
    """
    nc, dac, ddc, tlc, ep, ttc, lk, hc, ec = (np.asarray(v, dtype=np.float64) for v in
                                              (nc, dac, ddc, tlc, ep, ttc, lk, hc, ec))
    has_ec = ~np.isnan(ec)
    weighted = (WEIGHTS["ep"] * ep + WEIGHTS["ttc"] * ttc + WEIGHTS["lk"] * lk + WEIGHTS["hc"] * hc
                + np.where(has_ec, WEIGHTS["ec"] * np.nan_to_num(ec), 0.0))
    total = sum(WEIGHTS.values()) - np.where(has_ec, 0.0, WEIGHTS["ec"])
    return nc * dac * ddc * tlc * (weighted / total)


def human_penalty_filter(agent: dict[str, float], human: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """Reset to 1 every metric of FILTER_KEYS that the human scores exactly 0; returns (filtered copy, reset keys).

    The official filter loops over all result columns, but the human is scored alone without its past, so its EP
    and HC are always 1 and EC is added later: only these six can trigger.
    """
    out = dict(agent)
    reset = [key for key in FILTER_KEYS if float(human[key]) == 0.0]
    for key in reset:
        out[key] = 1.0
    return out, reset


def sub_scores_v2(inputs: SceneInputs, states: np.ndarray, tracks: Tracks | None = None) -> dict[str, np.ndarray]:
    """Per-proposal (P,) v2 sub-scores that do not depend on other proposals: nc, dac, ddc, tlc, ttc, lk, hc and
    the raw progress [m] (EP needs the proposal set, EC the previous frame)."""
    tracks = drop_ego_overlaps(inputs.tracks_v2, inputs.initial_state) if tracks is None else tracks
    pts = ego_points(states)
    area = ego_area(pts, states[..., :2], inputs.drivable)
    inter = center_in_intersection(pts, inputs.drivable)
    ttc_area = {key: value[:, :TTC_V2_STEPS] for key, value in area.items()}
    return {
        "nc": no_at_fault_collision(states, pts, area, tracks),
        "dac": drivable_area_compliance(area),
        "ddc": driving_direction_compliance_v2(pts, area, inter),
        "tlc": traffic_light_compliance(pts, inputs.red_lights),
        "ttc": time_to_collision(states[:, :TTC_V2_STEPS], pts[:, :TTC_V2_STEPS], ttc_area, tracks),
        "lk": lane_keeping(pts, inputs.centerline, inter),
        "hc": history_comfort(states, inputs.past_states, inputs.past_times_s),
        "raw_progress": raw_progress(pts, inputs.centerline),
    }


def _v2_plans(inputs: SceneInputs, poses: np.ndarray, interval: float) -> tuple[list, list[str]]:
    agent = np.asarray(poses, dtype=np.float64)
    agent = agent[0] if agent.ndim == 3 and len(agent) == 1 else agent
    if agent.ndim != 2 or agent.shape[1] != 3:
        raise ValueError(f"poses must be one plan of shape (N, 3), got {agent.shape}")
    plans: list[tuple[np.ndarray, float]] = []
    roles: list[str] = []
    if inputs.reference_poses is not None:
        plans.append((inputs.reference_poses, REFERENCE_INTERVAL))
        roles.append("reference")
    plans.append((agent, interval))
    roles.append("agent")
    if inputs.human_poses is not None and len(inputs.human_poses):  # a hand-made case may lack the human log
        plans.append((inputs.human_poses, HUMAN_INTERVAL))
        roles.append("human")
    return plans, roles


def score_proposals_v2(inputs: SceneInputs, poses: np.ndarray, interval: float = 0.5,
                       previous_states: np.ndarray | None = None, previous_dt_s: float = 0.5,
                       human_filter: bool = True) -> dict:
    """Score one agent plan (N, 3) of one scene with EPDMS; rows are [reference (if cached), agent, human].

    Returns (P,) arrays for ``EPDMS_KEYS`` and the simulated ``states`` (P, 41, 11) (keep the agent's row as the
    next frame's ``previous_states``), plus ``roles``, ``agent_index`` and ``filtered`` (keys the human filter
    reset). EP is normalised over [reference, agent] as NAVSIM stacks them; the human is scored on its own as in
    ``pdm_score`` (so its EP is 1), and only the agent row is filtered. EC is filled for the agent only.
    """
    from latentvla.eval.scene_score import simulate_plans

    plans, roles = _v2_plans(inputs, poses, interval)
    states = simulate_plans([inputs], [plans])[0]
    return score_states_v2(inputs, states, roles, previous_states, previous_dt_s, human_filter)


def score_states_v2(inputs: SceneInputs, states: np.ndarray, roles: list[str],
                    previous_states: np.ndarray | None = None, previous_dt_s: float = 0.5,
                    human_filter: bool = True) -> dict:
    """The EPDMS rows of already simulated proposals (see ``score_proposals_v2``)."""
    sub = sub_scores_v2(inputs, states)

    a = roles.index("agent")
    h = roles.index("human") if "human" in roles else None
    mult = sub["nc"] * sub["dac"] * sub["ddc"] * sub["tlc"]
    together = [i for i in range(len(roles)) if i != h]
    ep = np.ones(len(roles))
    ep[together] = ego_progress_v2(sub["raw_progress"][together], mult[together])
    if h is not None:
        ep[h] = ego_progress_v2(sub["raw_progress"][[h]], mult[[h]])[0]
    ec = np.full(len(roles), np.nan)
    if previous_states is not None:
        ec[a] = two_frame_extended_comfort(states[a], previous_states, previous_dt_s)[0]

    out = {key: sub[key].copy() for key in ("nc", "dac", "ddc", "tlc", "ttc", "lk", "hc")}
    out.update(ep=ep, ec=ec)
    filtered: list[str] = []
    if human_filter and h is not None:
        row, filtered = human_penalty_filter({k: out[k][a] for k in FILTER_KEYS}, {k: out[k][h] for k in FILTER_KEYS})
        for key in filtered:
            out[key][a] = row[key]
    out["epdms"] = epdms_aggregate(*(out[k] for k in EPDMS_KEYS[:-1]))
    out.update(states=states, roles=roles, agent_index=a, filtered=filtered, raw_progress=sub["raw_progress"])
    return out


def simulate_previous(previous: dict) -> tuple[np.ndarray, int]:
    """The agent's simulated states (41, 11) in the predecessor scene from a scoring case's ``previous`` entry."""
    init = np.asarray(previous["initial_state"], dtype=np.float64)
    ref = trajectory_states_batch(init, np.asarray(previous["poses"], dtype=np.float64)[None],
                                  float(previous["interval"]), t0_us=int(previous["t0_us"]))
    return simulate(init, ref)[0], int(previous["t0_us"])


def _agent_row(out: dict) -> dict[str, float]:
    a = out["agent_index"]
    return {key: float(out[key][a]) for key in EPDMS_KEYS}


def score_epdms_case(inputs: SceneInputs, poses: np.ndarray, interval: float = 0.5,
                     previous: dict | None = None) -> dict[str, float]:
    """EPDMS of one plan; ``previous`` ({initial_state, t0_us, poses, interval} of the scene 0.5 s earlier) gives EC."""
    prev_states, dt = None, 0.5
    if previous is not None:
        prev_states, prev_t0 = simulate_previous(previous)
        dt = (inputs.t0_us - prev_t0) * 1e-6
    return _agent_row(score_proposals_v2(inputs, poses, interval, previous_states=prev_states, previous_dt_s=dt))


def score_epdms_log(scenes: list[SceneInputs], poses: list[np.ndarray], interval: float = 0.5
                    ) -> list[dict[str, float]]:
    """EPDMS of one agent plan per scene (any number of logs). All proposals are simulated in one batch; scenes
    are then scored in time order so each one's extended comfort (EC) compares the agent's simulated states with
    those of its predecessor 0.5 s earlier in the same log (NaN where the predecessor is not in ``scenes``)."""
    from latentvla.eval.scene_score import simulate_plans

    setup = [_v2_plans(s, p, interval) for s, p in zip(scenes, poses)]
    states = simulate_plans(scenes, [plans for plans, _ in setup])
    order = sorted(range(len(scenes)), key=lambda i: (scenes[i].log_name, scenes[i].t0_us))
    agent_states: dict[str, tuple[np.ndarray, int]] = {}
    out: list[dict[str, float] | None] = [None] * len(scenes)
    for i in order:
        s = scenes[i]
        prev = agent_states.get(s.previous_token) if s.previous_token else None
        res = score_states_v2(s, states[i], setup[i][1], previous_states=None if prev is None else prev[0],
                              previous_dt_s=0.5 if prev is None else (s.t0_us - prev[1]) * 1e-6)
        agent_states[s.token] = (res["states"][res["agent_index"]], s.t0_us)
        out[i] = _agent_row(res)
    return out  # type: ignore[return-value]
