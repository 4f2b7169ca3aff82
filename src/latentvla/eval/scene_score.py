"""Score plans with the PDMS v1.1 pipeline: interpolate -> LQR + bicycle simulation -> sub-scores.

A scene's proposals are scored together because EP is normalised across them: NAVSIM stacks [PDM-Closed
reference, agent] and reads the agent's row. Simulation and comfort are batched across *scenes* too
(``score_pdms_batch``): the tracker is a fixed 40-step loop whose cost hardly grows with the batch, so a few
hundred scenes cost about as much as one. Geometry (map, agents) stays per scene, vectorised over time and tracks.
"""

from __future__ import annotations

import numpy as np

from latentvla.eval.comfort import comfort
from latentvla.eval.interpolate import trajectory_states_multi
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
from latentvla.eval.scene_inputs import REFERENCE_INTERVAL, SceneInputs, scene_inputs
from latentvla.eval.state import NUM_STATES, STATE_SIZE
from latentvla.eval.tracker import simulate

__all__ = ["SceneInputs", "scene_inputs", "score_proposals", "score_pdms_batch", "simulate_plans"]

PDMS_KEYS = ("nc", "dac", "ddc", "ttc", "ep", "c", "pdms")


def plan_references(scenes: list[SceneInputs], plans: list[list[tuple[np.ndarray, float]]]) -> np.ndarray:
    """Interpolate every (poses (N, 3), interval) plan of every scene to reference states, (sum P_i, 41, 11) in
    scene-major order; plans of the same shape and interval are interpolated in one vectorised call."""
    flat = [(k, p) for k, ps in enumerate(plans) for p in ps]
    groups: dict[tuple, list[int]] = {}
    for i, (_, (poses, interval)) in enumerate(flat):
        groups.setdefault((np.shape(poses), float(interval)), []).append(i)
    out = np.empty((len(flat), NUM_STATES, STATE_SIZE))
    for (_, interval), rows in groups.items():
        owners = [scenes[flat[i][0]] for i in rows]
        out[rows] = trajectory_states_multi(np.stack([s.initial_state for s in owners]),
                                            np.stack([np.asarray(flat[i][1][0], dtype=np.float64) for i in rows]),
                                            interval, np.array([s.t0_us for s in owners], dtype=np.int64))
    return out


def simulate_plans(scenes: list[SceneInputs], plans: list[list[tuple[np.ndarray, float]]]) -> list[np.ndarray]:
    """One batched LQR + bicycle simulation for the plans of many scenes; returns (P_i, 41, 11) per scene."""
    if not scenes:
        return []
    refs = plan_references(scenes, plans)
    init = np.concatenate([np.broadcast_to(s.initial_state, (len(p), STATE_SIZE)) for s, p in zip(scenes, plans)])
    states = simulate(init, refs)
    return np.split(states, np.cumsum([len(p) for p in plans])[:-1])


def pdms_from_states(inputs: SceneInputs, states: np.ndarray, c: np.ndarray | None = None,
                     explain: dict | None = None, points: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Sub-scores (P,) of the simulated proposals of one scene; EP normalised across them (``c`` and ``points``
    may be passed in when computed for many scenes at once)."""
    pts = ego_points(states) if points is None else points
    area = ego_area(pts, states[..., :2], inputs.drivable)
    nc = no_at_fault_collision(states, pts, area, inputs.tracks,
                               explain=None if explain is None else explain.setdefault("nc", []))
    dac = drivable_area_compliance(area)
    ttc = time_to_collision(states, pts, area, inputs.tracks,
                            explain=None if explain is None else explain.setdefault("ttc", []))
    ddc = driving_direction_compliance(pts, area)
    c = comfort(states) if c is None else c
    raw = raw_progress(pts, inputs.centerline)
    ep = ego_progress(raw, nc * dac)
    if explain is not None:
        explain.update(points=pts, area=area, raw_progress=raw)
    return {"nc": nc, "dac": dac, "ddc": ddc, "ttc": ttc, "ep": ep, "c": c, "pdms": pdms(nc, dac, ttc, ep, c)}


def score_proposals(inputs: SceneInputs, poses: np.ndarray, interval: float = 0.5) -> dict[str, np.ndarray]:
    """(P, N, 3) relative plans of one scene -> per-proposal sub-scores nc, dac, ddc, ttc, ep, c, pdms (each (P,))."""
    states = simulate_plans([inputs], [[(p, interval) for p in poses]])[0]
    return pdms_from_states(inputs, states)


def reference_plan(inputs: SceneInputs) -> tuple[np.ndarray, float]:
    if inputs.reference_poses is None:
        raise ValueError(f"scene {inputs.token}: no PDM-Closed reference plan (build the metric cache first)")
    return inputs.reference_poses, REFERENCE_INTERVAL


def score_pdms_batch(scenes: list[SceneInputs], poses: list[np.ndarray], interval: float = 0.5
                     ) -> list[dict[str, float]]:
    """PDMS v1.1 of one agent plan per scene, each scored against the scene's PDM-Closed reference."""
    plans = [[reference_plan(s), (p, interval)] for s, p in zip(scenes, poses)]
    states = simulate_plans(scenes, plans)
    if not states:
        return []
    flat = np.concatenate(states)
    c_all, pts_all = comfort(flat), ego_points(flat)
    out, k = [], 0
    for s, st in zip(scenes, states):
        sub = pdms_from_states(s, st, c_all[k: k + len(st)], points=pts_all[k: k + len(st)])
        k += len(st)
        out.append({key: float(sub[key][1]) for key in PDMS_KEYS})
    return out
