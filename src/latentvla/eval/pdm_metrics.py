"""PDMS v1.1 sub-scores on simulated ego states, following NAVSIM's ``PDMScorer`` (spec: navsim-metrics §1.4-1.10).

Inputs are batched: ``states`` (B, 41, 11) rear-axle ego states at 0.1 s (``StateIndex`` order), ``tracks`` the
10 Hz ground-truth observation, ``DrivableMap`` the map polygons near the ego. The geometry has no Python loop over
steps, tracks or polygons:

- map flags: a bounding-box filter pairs each ego point (corners, centre, rear axle) with the polygons its role needs,
  one vectorised ``shapely.contains_xy`` over those pairs decides them (strict interior, NAVSIM's
  ``shapely.vectorized.contains``); the prepared polygons and their boxes are indexed once per ``DrivableMap``;
- NC and TTC: one bounding-circle filter over (proposal, step, TTC offset, track), then one separating-axis test of the
  candidate box pairs (touching counts). Only each track's first contact matters (the official ignore list takes in
  every track met, and a TTC failure ends the proposal's check), and those contacts are classified together, in the
  official order. The front-bumper test is an exact segment / box intersection (shapely ``intersects``);
- DDC: the 1 s window sums are differences of one cumulative sum.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

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
        pts = np.asarray(pts)
        flat = pts.reshape(-1, 2).astype(float, copy=False)
        x, y = flat[:, 0], flat[:, 1]
        out = np.zeros((len(self.polygons), len(flat)), dtype=bool)
        index = self._index()
        p, n = index.decide(index.candidates(x, y), x, y)
        out[p, n] = True
        return out.reshape((len(self.polygons),) + pts.shape[:-1])

    def _index(self) -> _MapIndex:
        """The query index, built on first use; rebuilt when ``polygons``, ``kinds`` or ``on_route`` is reassigned
        (or ``polygons`` changes length). Replace, do not mutate, the polygon list of a map already queried."""
        key = (id(self.polygons), len(self.polygons), id(self.kinds), id(self.on_route))
        index = self.__dict__.get("_map_index")
        if index is None or index.key != key:
            index = self.__dict__["_map_index"] = _MapIndex(self, key)
        return index

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_map_index"}


# Polygon kind -> bits 1 lane / lane connector, 2 drivable, 4 intersection; roles of an ego point (0-3 corners,
# 4 centre, 5 rear axle) that test a polygon of kind bits c, on the route or not: _ROLES[2 * c + on_route].
_KIND_BITS = {**{k: 1 for k in LANE_KINDS}, **{k: 2 for k in DRIVABLE_KINDS}, "intersection": 6}
_ROLES = np.array([[c & 3 > 0] * 4 + [c & 1 > 0 and r, c & 4 > 0] for c in range(8) for r in (0, 1)], dtype=bool)
DIRECT_PAIRS = 20_000  # up to this many (polygon, point) pairs, bounding boxes are tested directly
SAT_BLOCK = 2048  # candidate box pairs per separating-axis test (bounds memory on crowded scenes)


class _MapIndex:
    """Prepared polygons, their bounding boxes and, per role of an ego point, whether the polygon is tested for it.

    Roles: 0-3 the box corners (lanes, lane connectors and drivable polygons), 4 the centre (on-route lanes),
    5 the rear axle (intersections). A point strictly inside a polygon is strictly inside its bounding box, so the box
    filter never drops a true pair; ``contains_xy`` then decides each candidate pair exactly (strict interior).
    """

    def __init__(self, dmap: DrivableMap, key: tuple):
        self.key = key
        self.geoms = np.fromiter(dmap.polygons, dtype=object, count=len(dmap.polygons))
        shapely.prepare(self.geoms)
        bounds = shapely.bounds(self.geoms).reshape(-1, 4).T[:, :, None]  # NaN for empty geometries: never inside
        self.x0, self.y0, self.x1, self.y1 = bounds  # (P, 1) each
        code = np.array([_KIND_BITS.get(k, 0) for k in dmap.kinds], dtype=np.intp).reshape(-1)
        self.lane, self.drivable = code & 1 > 0, code & 2 > 0
        self.roles = _ROLES[2 * code + np.asarray(dmap.on_route, dtype=np.intp).reshape(-1)]  # (P, 6)

    def candidates(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(P, N) bool: point strictly inside the polygon's bounding box."""
        return (x > self.x0) & (x < self.x1) & (y > self.y0) & (y < self.y1)

    def decide(self, cand: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(polygon, point) index pairs of the candidates whose point lies in the polygon's interior."""
        p, n = np.divmod(np.flatnonzero(cand), cand.shape[1])  # (np.nonzero is slow on 2-d arrays)
        ok = shapely.contains_xy(self.geoms[p], x[n], y[n])
        return p[ok], n[ok]


def ego_area(points: np.ndarray, rear: np.ndarray, dmap: DrivableMap) -> dict[str, np.ndarray]:
    """Per step flags (B, T): multiple_lanes, non_drivable, oncoming, in_intersection.

    Every (polygon, point) pair that matters for the point's role (see ``_MapIndex``) and passes the bounding-box
    test is decided by one vectorised ``contains_xy``; the flags are then counts per step.
    """
    index = dmap._index()
    lead = points.shape[:-2]
    n, P = math.prod(lead), len(dmap.polygons)
    with_rear = rear.shape[:-1] == lead
    parts = [points.reshape(n, 5, 2)] + ([rear.reshape(n, 1, 2)] if with_rear else [])
    xy = np.concatenate(parts, axis=1).astype(float, copy=False)  # (n, R, 2): point k = step * R + role
    R = xy.shape[1]
    if P * n * R <= DIRECT_PAIRS:
        x, y = xy[..., 0].ravel(), xy[..., 1].ravel()
        p, k = np.divmod(np.flatnonzero(index.candidates(x, y).reshape(P, n, R) & index.roles[:, None, :R]),
                         n * R)
    else:  # first the polygons whose bounding box meets that of a step's points, then the points themselves
        x, y = np.ascontiguousarray(xy.transpose(2, 1, 0))  # (R, n) each
        near = (x.max(0) > index.x0) & (x.min(0) < index.x1) & (y.max(0) > index.y0) & (y.min(0) < index.y1)
        p, s = np.divmod(np.flatnonzero(near), n)
        x, y = x.T[s], y.T[s]  # (pairs, R)
        q = np.flatnonzero(index.roles[p, :R] & (x > index.x0[p]) & (x < index.x1[p]) & (y > index.y0[p])
                           & (y < index.y1[p]))
        p, k = p[q // R], s[q // R] * R + q % R
        x, y = xy[..., 0].ravel(), xy[..., 1].ravel()
    ok = shapely.contains_xy(index.geoms[p], x[k], y[k])
    p, k = p[ok], k[ok]
    s, r = np.divmod(k, R)
    hit = np.zeros(n * R, dtype=bool)  # corner in a drivable polygon, centre on the route, rear axle in an intersection
    hit[k[(r >= 4) | index.drivable[p]]] = True
    hit = hit.reshape(n, R)
    lane = (r < 4) & index.lane[p]
    count = np.bincount(s[lane] * P + p[lane], minlength=n * P).reshape(n, P)  # corners per (step, lane)
    multiple = ((count > 0).sum(1) >= 2) & ~(count == 4).any(1)
    if with_rear:
        in_inter = hit[:, 5].reshape(lead)
    else:
        inter = index.roles[:, 5]
        in_inter = dmap.contains(rear)[inter].any(0) if inter.any() else np.zeros(rear.shape[:-1], bool)
    return {"multiple_lanes": multiple.reshape(lead), "non_drivable": ~hit[:, :4].all(1).reshape(lead),
            "oncoming": ~hit[:, 4].reshape(lead), "in_intersection": in_inter}


_SIGN_L = np.array([1.0, 1.0, -1.0, -1.0])[:, None]  # box_corners' corner order FL, FR, RR, RL
_SIGN_W = np.array([1.0, -1.0, -1.0, 1.0])[:, None]
_EDGE_FROM, _EDGE_TO = np.array([0, 1, 4, 5]), np.array([1, 2, 5, 6])


def _box_corners_t(x, y, heading, length, width) -> tuple[np.ndarray, np.ndarray]:
    """``box_corners`` of n boxes as x and y arrays (4, n) (contiguous per corner), with the same arithmetic."""
    c, s = np.cos(heading), np.sin(heading)
    hl, hw = length / 2, width / 2
    lx, ly = hl * _SIGN_L, hw * _SIGN_W
    return x + c * lx - s * ly, y + s * lx + c * ly


def _sat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Separating-axis test of quads a (corners 0-3) vs b (corners 4-7) given as x and y arrays (8, n), on the normals
    of the first two edges of each; touching counts as intersecting (shapely ``intersects``). Bit for bit the
    arithmetic of the per-step loop it replaced."""
    ex, ey = x[_EDGE_TO] - x[_EDGE_FROM], y[_EDGE_TO] - y[_EDGE_FROM]  # (4 axes, n); axis = (-ey, ex)
    proj = x[:, None] * -ey + y[:, None] * ex  # (8 corners, 4 axes, n)
    pa, pb = proj[:4], proj[4:]
    return ~((pa.max(0) < pb.min(0)) | (pb.max(0) < pa.min(0))).any(0)


def _contacts(states: np.ndarray, points: np.ndarray, tracks: Tracks, offsets: tuple[int, ...],
              steps: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """First contact of each (proposal, track): the ego box at step t, translated ``offset`` steps ahead at its speed
    and heading (NC: offsets (0,), no translation), intersecting the box of a track present at t + offset (< the
    observation length), for steps where ``steps`` (B, T) holds. Returns b, t, k (index into ``offsets``), j and the
    track box corners x, y (4, n), in (b, t, k, j) order. A bounding-circle filter (its margin far above rounding)
    selects the pairs, the separating-axis test decides them. Later contacts of a track are dropped: the official
    ignore list holds every track met, unless the check has ended."""
    B, T = states.shape[:2]
    J, n_obs = tracks.valid.shape
    ks = np.asarray(offsets)
    px = points[..., :4, 0].transpose(2, 0, 1).reshape(4, B * T)  # corner-major: contiguous gathers below
    py = points[..., :4, 1].transpose(2, 0, 1).reshape(4, B * T)
    cx, cy = points[..., 4, 0, None], points[..., 4, 1, None]  # box centres (B, T, K)
    shifted = any(offsets)
    if shifted:
        h = states[..., HEADING]
        dist = np.hypot(states[..., VX], states[..., VY])[..., None] * ks * 0.1
        sx, sy = dist * np.cos(h)[..., None], dist * np.sin(h)[..., None]
        cx, cy = cx + sx, cy + sy
    if steps is not None:
        cx = np.where(steps[..., None], cx, np.inf)
    obs, inside = _observation_steps(T, offsets, n_obs)
    live = tracks.valid.T[obs] if inside is None else tracks.valid.T[obs] & inside  # (T, K, J)
    d = points[..., :4, :] - points[..., 4:, :]
    margin = 1e-6 + 1e-9 * float(np.abs(points[..., 4, :]).max(initial=0.0))
    reach = np.sqrt((d * d).sum(-1).max(initial=0.0)) + 0.5 * np.hypot(tracks.length, tracks.width) + margin
    dx, dy = cx[..., None] - tracks.x.T[obs], cy[..., None] - tracks.y.T[obs]  # (B, T, K, J)
    flat = np.flatnonzero((dx * dx + dy * dy <= reach * reach) & live)
    b, t, k, j = np.unravel_index(flat, dx.shape)
    if not len(flat):
        return b, t, k, j, np.zeros((4, 0)), np.zeros((4, 0))
    tt = obs[t, k]
    qx, qy = _box_corners_t(tracks.x[j, tt], tracks.y[j, tt], tracks.heading[j, tt], tracks.length[j],
                            tracks.width[j])
    bt = b * T + t
    ex, ey = px.take(bt, 1), py.take(bt, 1)
    if shifted:
        ex, ey = ex + sx[b, t, k], ey + sy[b, t, k]
    x, y, key = np.concatenate([ex, qx]), np.concatenate([ey, qy]), b * J + j
    if len(key) <= SAT_BLOCK:
        first = _first_hits(key, np.flatnonzero(_sat(x, y)))
    else:  # in blocks, in order, leaving out the pairs of the tracks already met (long overlaps: many candidates)
        met, parts = np.zeros(B * J, dtype=bool), []
        for lo in range(0, len(key), SAT_BLOCK):
            c = np.arange(lo, min(lo + SAT_BLOCK, len(key)))
            c = c[~met[key[c]]]
            parts.append(_first_hits(key, c[_sat(x[:, c], y[:, c])]))
            met[key[parts[-1]]] = True
        first = np.concatenate(parts)
    return b[first], t[first], k[first], j[first], qx[:, first], qy[:, first]


def _first_hits(key: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """The first of the (sorted) positions ``hit`` for each key, in order."""
    order = np.argsort(key[hit], kind="stable")
    sk = key[hit][order]
    new = np.ones(len(sk), dtype=bool)
    new[1:] = sk[1:] != sk[:-1]
    return hit[np.sort(order[new])]


@functools.lru_cache(maxsize=64)
def _observation_steps(T: int, offsets: tuple[int, ...], n_obs: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Observation index t + offset (T, K), clipped, and where it exists (T, K, 1) (None: everywhere)."""
    idx = np.arange(T)[:, None] + np.asarray(offsets, dtype=np.intp)
    obs = np.minimum(idx, max(n_obs - 1, 0))
    inside = None if T - 1 + max(offsets) < n_obs else (idx < n_obs)[..., None]
    for a in (obs, inside):
        if a is not None:
            a.flags.writeable = False  # shared by the cache
    return obs, inside


def _orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact sign of the orientation of (a, b, c) (..., 2): a floating-point filter, exact rationals when unsure."""
    shape = a.shape[:-1]
    a, b, c = (np.reshape(v, (-1, 2)) for v in (a, b, c))
    left = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
    right = (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    det = left - right
    sign = np.sign(det).astype(int)
    for i in np.flatnonzero(np.abs(det) <= 1e-12 * (np.abs(left) + np.abs(right))):
        (ax, ay), (bx, by), (cx, cy) = (tuple(map(Fraction, v[i].tolist())) for v in (a, b, c))
        exact = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        sign[i] = (exact > 0) - (exact < 0)
    return sign.reshape(shape)


def _segments_hit_boxes(p: np.ndarray, q: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Whether segments p-q (n, 2) meet closed convex quads ``box`` (n, 4, 2); touching counts (shapely
    ``intersects``): an endpoint inside or on the quad, or the segment meeting an edge (collinear: overlapping)."""
    a, b = box, np.roll(box, -1, axis=1)
    p4, q4 = np.broadcast_to(p[:, None], a.shape), np.broadcast_to(q[:, None], a.shape)
    o = _orient(np.concatenate([a, a, p4], 1), np.concatenate([b, b, q4], 1), np.concatenate([p4, q4, a], 1))
    op, oq, oa = o[:, :4], o[:, 4:8], o[:, 8:]  # p, q against each edge; each vertex against the segment's line
    ob = np.roll(oa, -1, axis=1)
    inside = (op >= 0).all(1) | (op <= 0).all(1) | (oq >= 0).all(1) | (oq <= 0).all(1)
    lo, hi = np.minimum(p, q)[:, None], np.maximum(p, q)[:, None]
    overlap = ((np.minimum(a, b) <= hi) & (np.maximum(a, b) >= lo)).all(-1)
    collinear = (oa == 0) & (ob == 0)  # then op == oq == 0 too
    return inside | ((oa * ob <= 0) & (op * oq <= 0) & (~collinear | overlap)).any(1)


def _segment_hits_box(p: np.ndarray, q: np.ndarray, box: np.ndarray) -> bool:
    """``_segments_hit_boxes`` for one segment (2,) x 2 and one quad (4, 2)."""
    return bool(_segments_hit_boxes(np.asarray(p, float)[None], np.asarray(q, float)[None],
                                    np.asarray(box, float)[None])[0])


def _angle_to(rear: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Absolute angle (deg) between the ego heading and the vector from the rear axle to ``target`` (rows)."""
    d = np.arctan2(target[..., 1] - rear[..., 1], target[..., 0] - rear[..., 0]) - rear[..., 2]
    return np.degrees(np.abs((d + np.pi) % (2 * np.pi) - np.pi))


def no_at_fault_collision(states: np.ndarray, points: np.ndarray, area: dict, tracks: Tracks,
                          explain: list | None = None) -> np.ndarray:
    """NC in {0, 0.5, 1} per proposal (B,)."""
    B, T = states.shape[:2]
    out = np.ones(B)
    if not len(tracks):
        return out
    b, t, _, j, qx, qy = _contacts(states, points, tracks, (0,))
    if not len(b):
        return out
    boxes = np.stack([qx.T, qy.T], -1)
    first = np.argmax(tracks.valid, axis=1)[j]  # the track's state at its first appearance decides "stopped"
    agent = tracks.is_agent[j]
    s = states[b, t]
    kind = np.full(len(b), "active_lateral", dtype=object)
    todo = np.ones(len(b), dtype=bool)
    for name, test in (("stopped_ego", lambda i: np.hypot(s[i, VX], s[i, VY]) <= STOPPED_SPEED),
                       ("stopped_track", lambda i: ~agent[i] | (np.hypot(tracks.vx[j[i], first[i]],
                                                                        tracks.vy[j[i], first[i]]) <= STOPPED_SPEED)),
                       ("active_rear", lambda i: _angle_to(s[i, :3], np.stack(
                           [tracks.x[j[i], first[i]], tracks.y[j[i], first[i]]], -1)) > BEHIND_DEG),
                       ("active_front", lambda i: _segments_hit_boxes(points[b[i], t[i], 0], points[b[i], t[i], 3],
                                                                      boxes[i]))):  # front bumper FL -> FR
        i = np.flatnonzero(todo)
        if not len(i):
            break
        hit = i[test(i)]
        kind[hit], todo[hit] = name, False
    at_fault = (kind == "stopped_track") | (kind == "active_front") | (
        (kind == "active_lateral") & (area["multiple_lanes"][b, t] | area["non_drivable"][b, t]))
    np.minimum.at(out, b[at_fault], np.where(agent[at_fault], 0.0, 0.5))
    if explain is not None:
        for c in range(len(b)):
            jc = int(j[c])
            explain.append({"proposal": int(b[c]), "t": round(int(t[c]) * 0.1, 1), "track": tracks.tokens[jc],
                            "name": tracks.names[jc], "type": kind[c], "at_fault": bool(at_fault[c])})
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
    moving = ~(np.hypot(states[..., VX], states[..., VY]) < TTC_STOPPED_SPEED)
    b, t, k, j, _, _ = _contacts(states, points, tracks, TTC_OFFSETS, steps=moving)
    if not len(b):
        return out
    obs = t + np.asarray(TTC_OFFSETS)[k]
    angle = _angle_to(states[b, t, :3], np.stack([tracks.x[j, obs], tracks.y[j, obs]], -1))
    risky = area["multiple_lanes"][b, t] | area["non_drivable"][b, t] | area["in_intersection"][b, t]
    fail = np.flatnonzero((angle < AHEAD_DEG) | (risky & ~(angle > BEHIND_DEG)))
    # A track met without failing goes on the ignore list; the first failure of a proposal ends its check.
    fail = fail[np.unique(b[fail], return_index=True)[1]]
    out[b[fail]] = 0.0
    if explain is not None:
        for c in fail:
            jc = int(j[c])
            explain.append({"proposal": int(b[c]), "t": round(int(t[c]) * 0.1, 1),
                            "offset_s": TTC_OFFSETS[int(k[c])] * 0.1, "track": tracks.tokens[jc],
                            "name": tracks.names[jc]})
    return out


def driving_direction_compliance(points: np.ndarray, area: dict) -> np.ndarray:
    """DDC in {0, 0.5, 1}: the most distance driven against traffic within any 1 s window."""
    B, T = points.shape[:2]
    center = points[:, :, 4]
    d = center[:, 1:] - center[:, :-1]
    oncoming = np.where(area["oncoming"][:, 1:], np.hypot(d[..., 0], d[..., 1]), 0.0)  # step t-1 -> t
    csum = np.concatenate([np.zeros((B, 2)), np.cumsum(oncoming, axis=1)], axis=1)  # (B, T + 1), step 0 moves 0
    window = csum[:, 1:] - csum[:, np.maximum(np.arange(T) - DDC_HORIZON, 0)]  # distance within [t - 10, t]
    worst = np.maximum(window.max(1), 0.0) if T > 1 else np.zeros(B)
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
