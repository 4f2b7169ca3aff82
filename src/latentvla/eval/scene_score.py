"""Score proposals of one scene with the PDMS v1.1 pipeline: interpolate -> LQR + bicycle simulation -> sub-scores.

Proposals are scored together because EP is normalised across them; proposal 0 plays the reference's role
(NAVSIM stacks [PDM-Closed, agent]).
"""

from __future__ import annotations

import numpy as np

from latentvla.eval.comfort import comfort
from latentvla.eval.interpolate import trajectory_states_batch
from latentvla.eval.pdm_metrics import (
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
from latentvla.eval.scene_inputs import SceneInputs, scene_inputs
from latentvla.eval.tracker import simulate

__all__ = ["SceneInputs", "scene_inputs", "score_proposals"]


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
