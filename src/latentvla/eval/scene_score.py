"""Score proposals of one scene with the PDMS v1.1 pipeline: interpolate -> LQR + bicycle simulation -> sub-scores.

``SceneInputs`` gathers what the scorer needs from a privileged Scene (NAVSIM's metric cache content except the
PDM-Closed reference, which is the next step of the scorer issue). Proposals are scored together because EP is
normalised across them; proposal 0 plays the reference's role.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentvla.eval.comfort import comfort
from latentvla.eval.interpolate import trajectory_states_batch
from latentvla.eval.observation import Tracks, scene_tracks
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
from latentvla.eval.state import StateIndex
from latentvla.eval.tracker import simulate
from latentvla.schema import EGO, Scene


@dataclass
class SceneInputs:
    token: str
    initial_state: np.ndarray  # (11,) rear axle, global, logged velocity/acceleration, steering 0
    tracks: Tracks
    drivable: DrivableMap
    centerline: np.ndarray  # (N, 2) route centerline from the ego's lane
    t0_us: int


def scene_inputs(scene: Scene) -> SceneInputs:
    cur = scene.current_frame
    es = cur.ego_status
    init = np.zeros(len(StateIndex))
    init[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = es.ego_pose
    init[[StateIndex.VELOCITY_X, StateIndex.VELOCITY_Y]] = es.ego_velocity
    init[[StateIndex.ACCELERATION_X, StateIndex.ACCELERATION_Y]] = es.ego_acceleration
    h = es.ego_pose[2]
    center = es.ego_pose[:2] + EGO.rear_axle_to_center * np.array([np.cos(h), np.sin(h)])
    route = list(cur.roadblock_ids)
    m = scene.map_api
    on_route = [lid for lid, ln in m.lanes.items() if ln.roadblock_id in route]
    if not on_route:
        raise ValueError(f"scene {scene.metadata.scene_token}: no map lane lies on the route {route[:4]}")
    start = min(on_route, key=lambda lid: float(np.min(np.hypot(*(m.lanes[lid].centerline - center).T))))
    seq = m.route_lane_sequence(start, route)
    centerline = np.concatenate([m.lanes[lid].centerline for lid in seq])
    return SceneInputs(scene.metadata.scene_token, init, scene_tracks(scene),
                       DrivableMap.from_map(m, center, route), centerline, int(cur.timestamp))


def score_proposals(inputs: SceneInputs, poses: np.ndarray, interval: float = 0.5) -> dict[str, np.ndarray]:
    """(P, N, 3) relative plans -> per-proposal sub-scores nc, dac, ddc, ttc, ep, c, pdms (each (P,))."""
    ref = trajectory_states_batch(inputs.initial_state, poses, interval, t0_us=inputs.t0_us)
    states = simulate(np.broadcast_to(inputs.initial_state, (len(poses), len(inputs.initial_state))), ref)
    pts = ego_points(states)
    area = ego_area(pts, states[..., :2], inputs.drivable)
    nc = no_at_fault_collision(states, pts, area, inputs.tracks)
    dac = drivable_area_compliance(area)
    ttc = time_to_collision(states, pts, area, inputs.tracks)
    ddc = driving_direction_compliance(pts, area)
    c = comfort(states)
    ep = ego_progress(raw_progress(pts, inputs.centerline), nc * dac)
    return {"nc": nc, "dac": dac, "ddc": ddc, "ttc": ttc, "ep": ep, "c": c, "pdms": pdms(nc, dac, ttc, ep, c)}
