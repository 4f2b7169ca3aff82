"""PDMS v1.1 sub-scores on simulated ego states, following NAVSIM's ``PDMScorer`` (spec: navsim-metrics §1.4-1.10).

Inputs are batched: ``states`` (B, 41, 11) rear-axle ego states at 0.1 s (``StateIndex`` order), ``tracks`` the
10 Hz ground-truth observation, ``DrivableMap`` the map polygons near the ego. Geometry is vectorised over time and
tracks (separating-axis tests, shapely's vectorised ``contains_xy``); the at-fault bookkeeping loops over the few
actual contacts only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from latentvla.eval.observation import Tracks
from latentvla.map_api import MapAPI
from latentvla.schema import EGO
from latentvla.world.geometry import box_corners

X, Y, HEADING, VX, VY = 0, 1, 2, 3, 4  # first five StateIndex entries (nuPlan PDM order)
STOPPED_SPEED = 5e-2  # m/s: ego or track considered stopped (nuPlan STOPPED_SPEED_THRESHOLD)
TTC_STOPPED_SPEED = 5e-3  # m/s: ego steps below this are skipped by TTC
TTC_OFFSETS = (0, 3, 6, 9)  # steps of 0.1 s the ego polygon is projected ahead
AHEAD_DEG, BEHIND_DEG = 30.0, 150.0
PROGRESS_THRESHOLD = 5.0  # m (v1.1; v1.0 used 0.1)
DDC_HORIZON = 10
MAP_RADIUS = 100.0
DRIVABLE_KINDS = ("roadblock", "intersection", "drivable_area", "carpark")
LANE_KINDS = ("lane", "lane_connector")


def ego_points(states: np.ndarray) -> np.ndarray:
    """(..., 5, 2): corners front-left, rear-left, rear-right, front-right, then the box centre."""
    h = states[..., HEADING]
    cx = states[..., X] + EGO.rear_axle_to_center * np.cos(h)
    cy = states[..., Y] + EGO.rear_axle_to_center * np.sin(h)
    c = box_corners(cx, cy, h, EGO.length, EGO.width)  # FL, FR, RR, RL
    return np.concatenate([c[..., [0, 3, 2, 1], :], np.stack([cx, cy], -1)[..., None, :]], axis=-2)


@dataclass
class DrivableMap:
    """Map polygons within 100 m of the ego centre at t0 (NAVSIM's PDMDrivableMap)."""

    polygons: list[shapely.Polygon]
    kinds: list[str]
    ids: list[str]
    on_route: np.ndarray  # (P,) bool: lane / connector polygons of route roadblocks

    @classmethod
    def from_map(cls, map_api: MapAPI, center: np.ndarray, route_roadblocks: list[str],
                 radius: float = MAP_RADIUS) -> DrivableMap:
        polys, kinds, ids, route = [], [], [], []
        probe = shapely.Point(float(center[0]), float(center[1])).buffer(radius, quad_segs=4)
        route_set = set(route_roadblocks)
        for layer in DRIVABLE_KINDS:
            for pid, ring in sorted(map_api.layer(layer).items()):
                poly = shapely.make_valid(shapely.Polygon(ring))
                if poly.intersects(probe):
                    polys.append(poly), kinds.append(layer), ids.append(pid), route.append(False)
        for lid, lane in sorted(map_api.lanes.items()):
            poly = lane.polygon
            if poly.intersects(probe):
                polys.append(poly)
                kinds.append("lane_connector" if lane.is_connector else "lane")
                ids.append(lid)
                route.append(lane.roadblock_id in route_set)
        return cls(polys, kinds, ids, np.array(route, dtype=bool))

    def to_dict(self) -> dict:
        from latentvla.eval.scene_inputs import geometry_to_list

        return {"polygons": [geometry_to_list(p) for p in self.polygons], "kinds": list(self.kinds),
                "ids": list(self.ids), "on_route": self.on_route.astype(int).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> DrivableMap:
        from latentvla.eval.scene_inputs import geometry_from_list

        kinds = list(d["kinds"])
        bad = sorted(set(kinds) - set(DRIVABLE_KINDS + LANE_KINDS))
        if bad:
            raise ValueError(f"drivable map: unknown polygon kinds {bad}; valid: {list(DRIVABLE_KINDS + LANE_KINDS)}")
        if not (len(kinds) == len(d["polygons"]) == len(d["ids"]) == len(d["on_route"])):
            raise ValueError("drivable map: polygons, kinds, ids and on_route differ in length")
        return cls([geometry_from_list(p) for p in d["polygons"]], kinds, list(d["ids"]),
                   np.asarray(d["on_route"], dtype=bool).reshape(-1))

    def contains(self, pts: np.ndarray) -> np.ndarray:
        """(P, ...) strict-interior test of every polygon for points (..., 2)."""
        flat = pts.reshape(-1, 2)
        out = np.zeros((len(self.polygons), len(flat)), dtype=bool)
        for i, poly in enumerate(self.polygons):
            out[i] = shapely.contains_xy(poly, flat[:, 0], flat[:, 1])
        return out.reshape((len(self.polygons),) + pts.shape[:-1])


def ego_area(points: np.ndarray, rear: np.ndarray, dmap: DrivableMap) -> dict[str, np.ndarray]:
    """Per step flags (B, T): multiple_lanes, non_drivable, oncoming, in_intersection."""
    inside = dmap.contains(points)  # (P, B, T, 5)
    kinds = np.array(dmap.kinds)
    lane = np.isin(kinds, LANE_KINDS)
    drivable = np.isin(kinds, DRIVABLE_KINDS)
    corners = inside[..., :4]
    any_corner = corners.any(-1)  # (P, B, T)
    all_corners = corners.all(-1)
    multiple = (any_corner[lane].sum(0) >= 2) & ~all_corners[lane].any(0)
    corner_ok = corners[drivable].any(0)  # (B, T, 4): each corner in some drivable polygon
    non_drivable = ~corner_ok.all(-1)
    oncoming = ~inside[lane & dmap.on_route, ..., 4].any(0)
    inter = kinds == "intersection"
    in_inter = dmap.contains(rear)[inter].any(0) if inter.any() else np.zeros(rear.shape[:-1], bool)
    return {"multiple_lanes": multiple, "non_drivable": non_drivable, "oncoming": oncoming, "in_intersection": in_inter}


def _track_corners(tracks: Tracks, t: int) -> np.ndarray:
    return box_corners(tracks.x[:, t], tracks.y[:, t], tracks.heading[:, t], tracks.length, tracks.width)


def _intersects(poly: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Separating-axis test, (4, 2) vs (J, 4, 2); touching counts as intersecting (shapely ``intersects``)."""
    hit = np.ones(len(others), dtype=bool)
    for shape in (np.broadcast_to(poly, others.shape), others):
        for k in range(2):
            edge = shape[:, k + 1] - shape[:, k]
            axis = np.stack([-edge[:, 1], edge[:, 0]], -1)
            pa = np.einsum("jik,jk->ji", np.broadcast_to(poly, others.shape), axis)
            pb = np.einsum("jik,jk->ji", others, axis)
            hit &= ~((pa.max(1) < pb.min(1)) | (pb.max(1) < pa.min(1)))
    return hit


def _angle_to(rear: np.ndarray, target: np.ndarray) -> float:
    """Absolute angle (deg) between the ego heading and the vector from the rear axle to ``target``."""
    d = np.arctan2(target[1] - rear[1], target[0] - rear[0]) - rear[2]
    return float(np.degrees(np.abs((d + np.pi) % (2 * np.pi) - np.pi)))


def _live(tracks: Tracks, t: int, ignore: set[int]) -> np.ndarray:
    """Indices of tracks present at step t that are not on the ignore list."""
    return np.array([j for j in np.flatnonzero(tracks.valid[:, t]) if j not in ignore], dtype=int)


def _first_seen(tracks: Tracks) -> np.ndarray:
    return np.argmax(tracks.valid, axis=1)


def no_at_fault_collision(states: np.ndarray, points: np.ndarray, area: dict, tracks: Tracks,
                          explain: list | None = None) -> np.ndarray:
    """NC in {0, 0.5, 1} per proposal (B,)."""
    B, T = states.shape[:2]
    out = np.ones(B)
    if not len(tracks):
        return out
    first = _first_seen(tracks)
    rows = np.arange(len(tracks))
    speed0 = np.hypot(tracks.vx[rows, first], tracks.vy[rows, first])
    center0 = np.stack([tracks.x[rows, first], tracks.y[rows, first]], -1)
    agent = tracks.is_agent
    for b in range(B):
        ignore: set[int] = set()
        for t in range(T):
            live = _live(tracks, t, ignore)
            if not len(live):
                continue
            boxes = _track_corners(tracks, t)[live]
            ego = points[b, t, :4]
            for j in live[_intersects(ego, boxes)]:
                s = states[b, t]
                if np.hypot(s[VX], s[VY]) <= STOPPED_SPEED:
                    kind = "stopped_ego"
                elif not agent[j] or speed0[j] <= STOPPED_SPEED:
                    kind = "stopped_track"
                elif _angle_to(s[:3], center0[j]) > BEHIND_DEG:
                    kind = "active_rear"
                elif shapely.LineString(ego[[0, 3]]).intersects(shapely.Polygon(_track_corners(tracks, t)[j])):
                    kind = "active_front"
                else:
                    kind = "active_lateral"
                at_fault = kind in ("stopped_track", "active_front") or (
                    kind == "active_lateral" and (area["multiple_lanes"][b, t] or area["non_drivable"][b, t]))
                if at_fault:
                    out[b] = min(out[b], 0.0 if agent[j] else 0.5)
                if explain is not None:
                    explain.append({"proposal": b, "t": round(t * 0.1, 1), "track": tracks.tokens[j],
                                    "name": tracks.names[j], "type": kind, "at_fault": bool(at_fault)})
                ignore.add(int(j))
    return out


def drivable_area_compliance(area: dict) -> np.ndarray:
    return (~area["non_drivable"].any(1)).astype(float)


def time_to_collision(states: np.ndarray, points: np.ndarray, area: dict, tracks: Tracks,
                      explain: list | None = None) -> np.ndarray:
    """TTC in {0, 1}: the ego box projected 0/0.3/0.6/0.9 s ahead at constant speed and heading."""
    B, T = states.shape[:2]
    out = np.ones(B)
    if not len(tracks):
        return out
    n_obs = tracks.valid.shape[1]
    for b in range(B):
        ignore: set[int] = set()
        for t in range(T):
            s = states[b, t]
            speed = float(np.hypot(s[VX], s[VY]))
            if speed < TTC_STOPPED_SPEED:
                continue
            risky_area = area["multiple_lanes"][b, t] or area["non_drivable"][b, t] or area["in_intersection"][b, t]
            for k in TTC_OFFSETS:
                idx = t + k
                if idx >= n_obs:
                    continue
                shift = speed * k * 0.1 * np.array([np.cos(s[HEADING]), np.sin(s[HEADING])])
                live = _live(tracks, idx, ignore)
                if not len(live):
                    continue
                hits = live[_intersects(points[b, t, :4] + shift, _track_corners(tracks, idx)[live])]
                for j in hits:
                    angle = _angle_to(s[:3], np.array([tracks.x[j, idx], tracks.y[j, idx]]))
                    if angle < AHEAD_DEG or (risky_area and not angle > BEHIND_DEG):
                        out[b] = 0.0
                        if explain is not None:
                            explain.append({"proposal": b, "t": round(t * 0.1, 1), "offset_s": k * 0.1,
                                            "track": tracks.tokens[j], "name": tracks.names[j]})
                        break
                    ignore.add(int(j))
                if out[b] == 0:
                    break
            if out[b] == 0:
                break  # failed: nothing later can change it
    return out


def driving_direction_compliance(points: np.ndarray, area: dict) -> np.ndarray:
    """DDC in {0, 0.5, 1}: the most distance driven against traffic within any 1 s window."""
    center = points[..., 4, :]
    step = np.zeros(center.shape[:2])
    step[:, 1:] = np.hypot(*np.moveaxis(np.diff(center, axis=1), -1, 0))
    oncoming = np.where(area["oncoming"], step, 0.0)
    csum = np.concatenate([np.zeros((len(step), 1)), np.cumsum(oncoming, axis=1)], axis=1)
    worst = np.zeros(len(step))
    T = step.shape[1]
    for t in range(T):
        lo = max(0, t - DDC_HORIZON)
        worst = np.maximum(worst, csum[:, t + 1] - csum[:, lo])
    return np.where(worst < 2.0, 1.0, np.where(worst < 6.0, 0.5, 0.0))


def raw_progress(points: np.ndarray, centerline: np.ndarray) -> np.ndarray:
    """Distance gained along the route centerline by the box centre between the first and last step."""
    line = shapely.LineString(centerline)
    start = shapely.points(points[:, 0, 4])
    end = shapely.points(points[:, -1, 4])
    return np.maximum(0.0, line.project(end) - line.project(start))


def ego_progress(raw: np.ndarray, multiplicative: np.ndarray, threshold: float = PROGRESS_THRESHOLD) -> np.ndarray:
    """EP normalised across the proposals of one scene (v1.1: masked by NC*DAC, 5 m threshold)."""
    masked = raw * multiplicative
    best = masked.max()
    if best > threshold:
        return masked / best
    return (multiplicative > 0).astype(float)


def pdms(nc: np.ndarray, dac: np.ndarray, ttc: np.ndarray, ep: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per-scene PDMS v1.1 = NC * DAC * (5 TTC + 5 EP + 2 C) / 12."""
    return nc * dac * (5.0 * ttc + 5.0 * ep + 2.0 * c) / 12.0
