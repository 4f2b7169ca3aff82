"""Closed-loop metrics of a rollout, with the scorer's own definitions wherever one exists.

- NC, TTC and C are the PDMS v1.1 functions (``eval.pdm_metrics``, ``eval.comfort``) applied to the rollout in windows
  of the scorer's horizon (41 states, 4 s; the last window is aligned to the rollout's end), each with the 10 Hz
  tracks of its own 5 s from the window's start, as the scorer sees a scene: a collision's fault and a track's
  "stopped" state are judged from the window's start. A scene's NC, TTC and C are their minima over the windows.
- DAC: ``drivable_area_compliance`` over the whole rollout.
- Red-light violations: the ego's front bumper crossing the stop line of a signalised lane connector (heading along
  it) while that connector's light is red; of several connectors sharing a stop line the one the ego then follows is
  judged (the nearest centreline over the next 3 s).
- Route completion: the distance made along the expert's own rollout from the same start (its driven path, then its
  lane path on), over the expert's distance in the same time, capped at 1 (1 when the expert stays put).
- ``closed_loop_score = NC · DAC · (1 − red_light_violation) · (5·route_completion + 5·TTC + 2·C) / 12``.
"""

from __future__ import annotations

import numpy as np
import shapely

from latentvla.closedloop.rollout import RolloutRecord
from latentvla.eval.comfort import comfort
from latentvla.eval.observation import OBS_STEPS, Tracks
from latentvla.eval.pdm_metrics import (
    DrivableMap,
    drivable_area_compliance,
    ego_area,
    ego_points,
    no_at_fault_collision,
    time_to_collision,
)
from latentvla.eval.state import NUM_STATES
from latentvla.map_api import MapAPI
from latentvla.world.sim import DT, light_state

KEYS = ("collision_rate", "offroad_rate", "red_light_violations", "route_completion", "mean_progress_m",
        "comfort_rate", "closed_loop_score")
EXTRA_KEYS = ("nc", "dac", "ttc", "c", "expert_progress_m")
MIN_EXPERT_PROGRESS_M = 1.0
LIGHT_FOLLOW_STEPS = 30  # 3 s after a stop-line crossing decide which connector the ego took
STOP_LINE_HEADING_COS = 0.5


def window_starts(steps: int, window: int = NUM_STATES) -> list[int]:
    """Starts of the scorer-length windows covering ``steps`` states (the last aligned to the end)."""
    if steps <= window:
        return [0]
    starts = list(range(0, steps - window + 1, window - 1))
    if starts[-1] + window < steps:
        starts.append(steps - window)
    return starts


def slice_tracks(tracks: Tracks, start: int, length: int = OBS_STEPS) -> Tracks:
    sl = slice(start, start + length)
    return Tracks(tracks.tokens, tracks.names, tracks.length, tracks.width, tracks.valid[:, sl], tracks.x[:, sl],
                  tracks.y[:, sl], tracks.heading[:, sl], tracks.vx[:, sl], tracks.vy[:, sl])


def windowed_scores(states: np.ndarray, tracks: Tracks, dmap: DrivableMap, explain: dict | None = None
                    ) -> dict[str, float]:
    """NC, TTC, C (minima over windows) and DAC of one rollout's states (T, 11)."""
    pts = ego_points(states[None])
    area = ego_area(pts, states[None, :, :2], dmap)
    nc = ttc = c = 1.0
    for s in window_starts(len(states)):
        e = min(s + NUM_STATES, len(states))
        st, pw = states[None, s:e], pts[:, s:e]
        aw = {k: v[:, s:e] for k, v in area.items()}
        tw = slice_tracks(tracks, s)
        nc_list = [] if explain is not None else None
        nc_w = float(no_at_fault_collision(st, pw, aw, tw, explain=nc_list)[0])
        ttc_w = float(time_to_collision(st, pw, aw, tw)[0])
        c_w = float(comfort(st)[0]) if e - s >= 3 else 1.0
        if explain is not None and nc_w < 1.0:
            explain.setdefault("collisions", []).extend(
                {**x, "t": round(x["t"] + s * DT, 1)} for x in nc_list if x["at_fault"])
        nc, ttc, c = min(nc, nc_w), min(ttc, ttc_w), min(c, c_w)
    return {"nc": nc, "dac": float(drivable_area_compliance(area)[0]), "ttc": ttc, "c": c}


def _stop_lines(map_api: MapAPI) -> dict[tuple, list[str]]:
    """Signalised connectors grouped by their (rounded) start point."""
    out: dict[tuple, list[str]] = {}
    for lid, lane in sorted(map_api.lanes.items()):
        if lane.is_connector and lane.traffic_light_id:
            key = tuple(np.round(lane.centerline[0], 1))
            out.setdefault(key, []).append(lid)
    return out


def red_light_events(states: np.ndarray, map_api: MapAPI, lights: dict, t0: float) -> list[dict]:
    """Every stop-line crossing of the ego: time, connector taken, its light then, and whether that was red."""
    pts = ego_points(states[None])[0]  # (T, 5, 2)
    front = 0.5 * (pts[:, 0] + pts[:, 3])
    center = pts[:, 4]
    heading = states[:, 2]
    events = []
    for ids in _stop_lines(map_api).values():
        lane = map_api.lanes[ids[0]]
        a = lane.centerline[0]
        d = lane.centerline[1] - a
        d = d / max(np.hypot(*d), 1e-9)
        half = 0.5 * float(np.hypot(*(lane.left_boundary[0] - lane.right_boundary[0])))
        along = (front - a) @ d
        lateral = (front - a) @ np.array([-d[1], d[0]])
        aligned = np.cos(heading) * d[0] + np.sin(heading) * d[1] > STOP_LINE_HEADING_COS
        crossed = np.flatnonzero((along[:-1] < 0) & (along[1:] >= 0) & (np.abs(lateral[1:]) <= half + 0.5)
                                 & aligned[1:]) + 1
        for t in crossed:
            follow = shapely.points(center[t: min(t + LIGHT_FOLLOW_STEPS, len(center))])
            taken = min(ids, key=lambda i: float(np.mean(shapely.distance(
                shapely.LineString(map_api.lanes[i].centerline), follow))))
            group = map_api.lanes[taken].traffic_light_id
            state = light_state(lights, group, t0 + t * DT)
            events.append({"t": round(float(t) * DT, 1), "connector": taken, "light": state,
                           "violation": state == "red"})
    return sorted(events, key=lambda e: e["t"])


def progress_line(expert_centers: np.ndarray, continuation: np.ndarray) -> np.ndarray:
    """The expert's driven centre path followed by its lane path on (duplicate points dropped)."""
    pts = np.concatenate([expert_centers, continuation])
    keep = np.ones(len(pts), dtype=bool)
    keep[1:] = np.hypot(*np.diff(pts, axis=0).T) > 1e-3
    pts = pts[keep]
    if len(pts) < 2:
        pts = np.concatenate([pts, pts + [1e-3, 0.0]])
    return pts


def progress_along(line: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    ls = shapely.LineString(line)
    return max(0.0, float(ls.project(shapely.Point(end)) - ls.project(shapely.Point(start))))


def closed_loop_score(nc: float, dac: float, red_light: bool, route_completion: float, ttc: float, c: float
                      ) -> float:
    return nc * dac * (0.0 if red_light else 1.0) * (5.0 * route_completion + 5.0 * ttc + 2.0 * c) / 12.0


def scene_metrics(rec: RolloutRecord, map_api: MapAPI, reference_line: np.ndarray, expert_progress: float) -> dict:
    """The per-scene row: the contract keys, the sub-scores and what explains them."""
    states = rec.ego
    reach = float(np.max(np.hypot(*(states[:, :2] - states[0, :2]).T))) + 100.0
    dmap = DrivableMap.from_map(map_api, states[0, :2], rec.route, radius=reach)
    explain: dict = {}
    sub = windowed_scores(states, rec.tracks, dmap, explain)
    events = red_light_events(states, map_api, rec.lights, rec.t0)
    violations = sum(e["violation"] for e in events)
    centers = ego_points(states[None])[0, :, 4]
    progress = progress_along(reference_line, centers[0], centers[-1])
    rc = 1.0 if expert_progress < MIN_EXPERT_PROGRESS_M else min(1.0, progress / expert_progress)
    score = closed_loop_score(sub["nc"], sub["dac"], violations > 0, rc, sub["ttc"], sub["c"])
    return {"token": rec.token, "family": rec.family, "valid": True, "error": "",
            "collision_rate": float(sub["nc"] < 1.0), "offroad_rate": float(sub["dac"] < 1.0),
            "red_light_violations": int(violations), "route_completion": rc, "mean_progress_m": progress,
            "comfort_rate": sub["c"], "closed_loop_score": score, **sub, "expert_progress_m": expert_progress,
            "collisions": explain.get("collisions", []), "stop_lines": events}


def summarize(rows: list[dict]) -> dict:
    """``mean`` over valid scenes, ``by_family`` and the score with failed scenes counted as 0 (the scorer's
    aggregation)."""
    from latentvla.eval.runner import aggregate

    return aggregate(rows, list(KEYS + EXTRA_KEYS), "closed_loop_score")
