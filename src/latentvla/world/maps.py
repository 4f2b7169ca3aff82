"""Procedural road networks: multi-lane corridors (straights, curves, on-ramps, crosswalks) and signalised 4-way / T
intersections with lane connectors. Built in a local frame and placed in the global frame by one rigid transform,
so every coordinate the simulator sees is global (NAVSIM's convention).

Each builder returns the :class:`MapAPI` plus a :class:`MapInfo` with the handles scenario families need
(which lane is where, pedestrian paths, light heads); MapInfo is set-up only and never stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
import shapely.affinity

from latentvla.map_api import Lane, MapAPI
from latentvla.world.geometry import Polyline, arc, dedupe, hermite, offset, resample


@dataclass
class Placement:
    """Local -> global rigid transform of a map."""

    rotation: float
    offset: tuple[float, float]

    def points(self, p: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.rotation), np.sin(self.rotation)
        p = np.asarray(p, dtype=np.float64)
        return p @ np.array([[c, s], [-s, c]]) + np.asarray(self.offset)

    def heading(self, h: float) -> float:
        return float(h + self.rotation)


@dataclass
class LightHead:
    light_id: str
    x: float
    y: float
    heading: float  # the lamp face looks along this heading


@dataclass
class MapInfo:
    kind: str  # corridor | intersection
    # corridor
    fwd_lanes: list[list[str]] = field(default_factory=list)  # [segment][lane index, 0 = leftmost]
    bwd_lanes: list[list[str]] = field(default_factory=list)  # [segment][lane index] in their driving order
    ramp_lanes: list[str] = field(default_factory=list)
    segment_length: float = 0.0
    lane_width: float = 3.5
    crosswalk_paths: list[np.ndarray] = field(default_factory=list)  # pedestrian paths across the road
    sidewalk_paths: list[np.ndarray] = field(default_factory=list)  # right and left sidewalks, along the road
    shoulder_path: np.ndarray | None = None  # along the right shoulder (parking, cyclists)
    reference: np.ndarray | None = None  # road reference line (between the directions)
    # intersection
    arms: list[int] = field(default_factory=list)
    incoming: dict[int, list[str]] = field(default_factory=dict)  # arm -> lane ids (0 = leftmost)
    outgoing: dict[int, list[str]] = field(default_factory=dict)
    movements: dict[tuple[int, int], list[str]] = field(default_factory=dict)  # (from arm, to arm) -> connectors
    arm_crosswalk_paths: dict[int, np.ndarray] = field(default_factory=dict)
    light_heads: list[LightHead] = field(default_factory=list)
    poles: list[tuple[float, float]] = field(default_factory=list)


SHOULDER = 1.0  # paved margin outside the outer lanes of junction arms


def _band(ref: np.ndarray, d_left: float, d_right: float) -> np.ndarray:
    """Polygon ring between two offsets of a reference line (left offset, then right offset reversed)."""
    return np.concatenate([offset(ref, d_left), offset(ref, d_right)[::-1]])


def turn_of(i: int, j: int) -> str:
    """Movement from arm i (driving inwards) to arm j (driving outwards); arms are numbered CCW."""
    return {2: "straight", 3: "left", 1: "right"}[(j - i) % 4]


# ----------------------------------------------------------------------------------------------------------------
def build_corridor(
    name: str,
    place: Placement,
    length: float = 360.0,
    n_fwd: int = 2,
    n_bwd: int = 1,
    lane_width: float = 3.5,
    curve_start: float = 150.0,
    curve_angle: float = 0.0,
    curve_radius: float = 150.0,
    shoulder: float = 2.5,
    segment_length: float = 40.0,
    crosswalk_s: float | None = None,
    ramp_end: float | None = None,
    speed_limit: float = 13.9,
) -> tuple[MapAPI, MapInfo]:
    """A road with ``n_fwd`` lanes in the ego direction (right-hand traffic) and ``n_bwd`` oncoming lanes."""
    w = lane_width
    # Reference line in the local frame: straight, arc, straight.
    pts = [np.array([[0.0, 0.0], [curve_start, 0.0]])]
    heading, end = 0.0, np.array([curve_start, 0.0])
    if abs(curve_angle) > 1e-6:
        sgn = np.sign(curve_angle)
        center = end + sgn * curve_radius * np.array([-np.sin(heading), np.cos(heading)])
        a0 = np.arctan2(*(end - center)[::-1])
        pts.append(arc(center, curve_radius, a0, a0 + curve_angle, step=1.0))
        heading = curve_angle
        end = pts[-1][-1]
    rest = max(10.0, length - (curve_start + abs(curve_angle) * curve_radius))
    pts.append(np.stack([end, end + rest * np.array([np.cos(heading), np.sin(heading)])]))
    ref_local = resample(np.concatenate(pts), 1.0)
    ref_line = Polyline(ref_local)
    total = ref_line.length
    cuts = list(np.arange(0.0, total - segment_length * 0.5, segment_length)) + [total]
    if ramp_end is not None:
        ramp_end = float(min(cuts, key=lambda c: abs(c - ramp_end)))

    lanes: dict[str, Lane] = {}
    polygons: dict[str, dict[str, np.ndarray]] = {"roadblock": {}, "crosswalk": {}, "walkway": {}}
    info = MapInfo(kind="corridor", segment_length=segment_length, lane_width=w)
    n_seg = len(cuts) - 1
    for k in range(n_seg):
        seg = ref_line.slice_points(cuts[k], cuts[k + 1])
        has_ramp = ramp_end is not None and cuts[k + 1] <= ramp_end + 1e-6
        n_main = n_fwd + (1 if has_ramp else 0)
        fwd_ids = []
        for j in range(n_main):
            lid = f"L{k:02d}_f{j}"
            left_t = ("solid_yellow" if n_bwd else "solid_white") if j == 0 else "dashed_white"
            right_t = "solid_white" if j == n_main - 1 else "dashed_white"
            lanes[lid] = Lane(
                id=lid, centerline=place.points(offset(seg, -(j + 0.5) * w)),
                left_boundary=place.points(offset(seg, -j * w)), right_boundary=place.points(offset(seg, -(j + 1) * w)),
                roadblock_id=f"RB{k:02d}_f", speed_limit=speed_limit,
                left_boundary_type=left_t, right_boundary_type=right_t,
            )
            fwd_ids.append(lid)
        left_edge = 0.0 if n_bwd else 0.8  # a one-way road keeps a narrow left shoulder
        polygons["roadblock"][f"RB{k:02d}_f"] = place.points(_band(seg, left_edge, -(n_main * w + shoulder)))
        info.fwd_lanes.append(fwd_ids[:n_fwd])
        if has_ramp:
            info.ramp_lanes.append(fwd_ids[n_fwd])
        bwd_ids = []
        for j in range(n_bwd):
            lid = f"L{k:02d}_b{j}"
            lanes[lid] = Lane(
                id=lid, centerline=place.points(offset(seg, (j + 0.5) * w)[::-1]),
                left_boundary=place.points(offset(seg, j * w)[::-1]),
                right_boundary=place.points(offset(seg, (j + 1) * w)[::-1]),
                roadblock_id=f"RB{k:02d}_b", speed_limit=speed_limit,
                left_boundary_type="solid_yellow" if j == 0 else "dashed_white",
                right_boundary_type="solid_white" if j == n_bwd - 1 else "dashed_white",
            )
            bwd_ids.append(lid)
        if n_bwd:
            polygons["roadblock"][f"RB{k:02d}_b"] = place.points(_band(seg, n_bwd * w + shoulder, 0.0))
        info.bwd_lanes.append(bwd_ids)
    # Connectivity along the road.
    for k in range(n_seg - 1):
        for j in range(n_fwd + 1):  # the on-ramp lane (index n_fwd) ends where the next segment has none
            a, b = f"L{k:02d}_f{j}", f"L{k + 1:02d}_f{j}"
            if a in lanes and b in lanes:
                lanes[a].successors.append(b)
                lanes[b].predecessors.append(a)
        for j in range(n_bwd):
            a, b = f"L{k + 1:02d}_b{j}", f"L{k:02d}_b{j}"
            lanes[a].successors.append(b)
            lanes[b].predecessors.append(a)
    # Same-direction neighbours.
    for lid, lane in lanes.items():
        seg, kind_j = lid[1:3], lid.split("_")[1]
        d, j = kind_j[0], int(kind_j[1:])
        left, right = f"L{seg}_{d}{j - 1}", f"L{seg}_{d}{j + 1}"
        lane.left_neighbor = left if j > 0 and left in lanes else None
        lane.right_neighbor = right if right in lanes else None

    half_left = n_bwd * w + shoulder if n_bwd else 0.8
    half_right = n_fwd * w + shoulder + (w if ramp_end is not None else 0.0)
    polygons["walkway"]["W_right"] = place.points(_band(ref_local, -half_right, -half_right - 3.0))
    polygons["walkway"]["W_left"] = place.points(_band(ref_local, half_left + 3.0, half_left))
    info.sidewalk_paths = [place.points(offset(ref_local, -half_right - 1.5)), place.points(offset(ref_local, half_left + 1.5))]
    info.shoulder_path = place.points(offset(ref_local, -(n_fwd * w + shoulder / 2)))
    info.reference = place.points(ref_local)
    if crosswalk_s is not None:
        c0, c1 = crosswalk_s - 2.0, crosswalk_s + 2.0
        band = ref_line.slice_points(c0, c1)
        ring = np.concatenate([offset(band, half_left), offset(band, -half_right)[::-1]])
        polygons["crosswalk"]["X0"] = place.points(ring)
        p = ref_line.pose(crosswalk_s)
        nrm = np.array([-np.sin(p[2]), np.cos(p[2])])
        walk = np.stack([p[:2] - nrm * (half_right + 1.5), p[:2] + nrm * (half_left + 1.5)])
        info.crosswalk_paths.append(place.points(walk))
    return MapAPI(name, lanes, polygons), info


def _junction_polygon(ex: float, ey: float, hx: float, hy: float, arms: tuple[int, ...], r: float = 8.0) -> np.ndarray:
    """The junction box plus rounded curb fillets between adjacent arms (turning vehicles' corners stay on it).

    ``hx``/``hy``: half-widths of the roads along y/x; the fillet circle is tangent to both road edges.
    """
    parts = [shapely.box(-ex, -ey, ex, ey)]
    for sx, sy, a, b in ((1, 1, 0, 1), (-1, 1, 1, 2), (-1, -1, 2, 3), (1, -1, 3, 0)):
        if a in arms and b in arms:
            sq = shapely.box(hx, hy, ex + r, ey + r)
            disk = shapely.Point(ex + r, ey + r).buffer(r + (ex - hx), quad_segs=8)
            patch = shapely.affinity.scale(sq.difference(disk), sx, sy, origin=(0, 0))
            parts.append(patch)
    poly = shapely.union_all(parts).simplify(1e-6)
    return np.asarray(poly.exterior.coords)[:-1]


# ----------------------------------------------------------------------------------------------------------------
def build_intersection(
    name: str,
    place: Placement,
    arms: tuple[int, ...] = (0, 1, 2, 3),
    lanes_x: int = 1,
    lanes_y: int = 1,
    lane_width: float = 3.5,
    arm_length: float = 110.0,
    speed_limit: float = 13.9,
) -> tuple[MapAPI, MapInfo]:
    """Signalised junction; arm i points along angle i*90 deg from the centre. Lights: group A = arms 0/2, B = 1/3."""
    w = lane_width
    n_of = {0: lanes_x, 2: lanes_x, 1: lanes_y, 3: lanes_y}
    edge = {i: n_of[(i + 1) % 4] * w + SHOULDER + 2.0 for i in range(4)}  # box half-extent along arm i
    stop = {i: edge[i] + 5.0 for i in range(4)}  # stop line / lane end distance from the centre
    u = {i: np.array([np.cos(i * np.pi / 2), np.sin(i * np.pi / 2)]) for i in range(4)}
    rn = {i: np.array([u[i][1], -u[i][0]]) for i in range(4)}  # right normal of the outward direction
    lanes: dict[str, Lane] = {}
    polygons: dict[str, dict[str, np.ndarray]] = {"roadblock": {}, "intersection": {}, "crosswalk": {},
                                                   "walkway": {}, "stop_line": {}}
    stop_lanes: dict[str, list[str]] = {}
    info = MapInfo(kind="intersection", lane_width=w, arms=list(arms))
    light = {0: "TL_A", 2: "TL_A", 1: "TL_B", 3: "TL_B"}

    def line(i: int, lat: float, d0: float, d1: float) -> np.ndarray:
        return resample(np.stack([u[i] * d0 + rn[i] * lat, u[i] * d1 + rn[i] * lat]), 2.0)

    for i in arms:
        n = n_of[i]
        inc, out = [], []
        for k in range(n):
            # Incoming lanes lie left of the outward direction (right of the inward one).
            lid = f"A{i}_in{k}"
            lanes[lid] = Lane(
                lid, place.points(line(i, -(k + 0.5) * w, arm_length, stop[i])),
                place.points(line(i, -k * w, arm_length, stop[i])), place.points(line(i, -(k + 1) * w, arm_length, stop[i])),
                roadblock_id=f"RB{i}_in", speed_limit=speed_limit,
                left_boundary_type="solid_yellow" if k == 0 else "dashed_white",
                right_boundary_type="solid_white" if k == n - 1 else "dashed_white",
            )
            inc.append(lid)
            lid = f"A{i}_out{k}"
            lanes[lid] = Lane(
                lid, place.points(line(i, (k + 0.5) * w, stop[i], arm_length)),
                place.points(line(i, k * w, stop[i], arm_length)), place.points(line(i, (k + 1) * w, stop[i], arm_length)),
                roadblock_id=f"RB{i}_out", speed_limit=speed_limit,
                left_boundary_type="solid_yellow" if k == 0 else "dashed_white",
                right_boundary_type="solid_white" if k == n - 1 else "dashed_white",
            )
            out.append(lid)
        for lst in (inc, out):
            for a, b in zip(lst[:-1], lst[1:]):
                lanes[a].right_neighbor, lanes[b].left_neighbor = b, a
        info.incoming[i], info.outgoing[i] = inc, out
        e, hw = edge[i], n * w + SHOULDER
        polygons["roadblock"][f"RB{i}_in"] = place.points(np.stack([
            u[i] * e, u[i] * arm_length, u[i] * arm_length - rn[i] * hw, u[i] * e - rn[i] * hw]))
        polygons["roadblock"][f"RB{i}_out"] = place.points(np.stack([
            u[i] * e + rn[i] * hw, u[i] * arm_length + rn[i] * hw, u[i] * arm_length, u[i] * e]))
        polygons["crosswalk"][f"X{i}"] = place.points(np.stack([
            u[i] * (e + 0.5) - rn[i] * hw, u[i] * (e + 0.5) + rn[i] * hw,
            u[i] * (e + 4.5) + rn[i] * hw, u[i] * (e + 4.5) - rn[i] * hw]))
        polygons["stop_line"][f"S{i}"] = place.points(np.stack([
            u[i] * stop[i], u[i] * stop[i] - rn[i] * n * w, u[i] * (stop[i] + 0.5) - rn[i] * n * w, u[i] * (stop[i] + 0.5)]))
        stop_lanes[f"S{i}"] = list(inc)
        for side in (1.0, -1.0):
            polygons["walkway"][f"W{i}{'r' if side > 0 else 'l'}"] = place.points(np.stack([
                u[i] * e + side * rn[i] * hw, u[i] * arm_length + side * rn[i] * hw,
                u[i] * arm_length + side * rn[i] * (hw + 3.0), u[i] * e + side * rn[i] * (hw + 3.0)]))
        info.arm_crosswalk_paths[i] = place.points(np.stack([
            u[i] * (e + 2.5) - rn[i] * (hw + 1.5), u[i] * (e + 2.5) + rn[i] * (hw + 1.5)]))
    ex, ey = edge[0], edge[1]
    polygons["intersection"]["I0"] = place.points(
        _junction_polygon(ex, ey, lanes_y * w + SHOULDER, lanes_x * w + SHOULDER, arms))
    # Lane connectors for every allowed movement.
    for i in arms:
        for j in arms:
            if i == j:
                continue
            turn = turn_of(i, j)
            inc, out = info.incoming[i], info.outgoing[j]
            opposite_missing = (i + 2) % 4 not in arms
            if turn == "left":
                # On a T junction without a straight exit, every lane may turn (no lane is a dead end).
                pairs = [(0, 0)] if not opposite_missing else [(k, 0) for k in range(len(inc))]
                if opposite_missing and (i + 1) % 4 in arms and len(inc) > 1:
                    pairs = [(k, 0) for k in range(len(inc) - 1)]
            elif turn == "right":
                pairs = [(len(inc) - 1, len(out) - 1)]
                if opposite_missing and (i + 3) % 4 not in arms:
                    pairs = [(k, min(k, len(out) - 1)) for k in range(len(inc))]
            else:
                pairs = [(k, min(k, len(out) - 1)) for k in range(len(inc))]
            conns = []
            for k, m in pairs:
                a, b = lanes[inc[k]], lanes[out[m]]
                p0 = u[i] * stop[i] - rn[i] * (k + 0.5) * w
                p1 = u[j] * stop[j] + rn[j] * (m + 0.5) * w
                h0, h1 = np.arctan2(-u[i][1], -u[i][0]), np.arctan2(u[j][1], u[j][0])
                kk = 0.5 if turn != "straight" else 0.33
                cl = dedupe(hermite(p0, h0, p1, h1, step=1.0, k=kk))
                lid = f"C{i}{j}_{k}"
                lanes[lid] = Lane(
                    lid, place.points(cl), place.points(offset(cl, w / 2)), place.points(offset(cl, -w / 2)),
                    roadblock_id=f"RBC{i}{j}", is_connector=True, speed_limit=speed_limit, traffic_light_id=light[i],
                )
                a.successors.append(lid)
                lanes[lid].predecessors.append(a.id)
                lanes[lid].successors.append(b.id)
                b.predecessors.append(lid)
                conns.append(lid)
            info.movements[(i, j)] = conns
    # Light heads on the far side of the junction, over the incoming lanes' axis, facing the approaching traffic.
    for i in arms:
        far = edge[(i + 2) % 4] + 2.0
        for k in range(n_of[i]):
            p = -u[i] * far - rn[i] * (k + 0.5) * w
            info.light_heads.append(LightHead(light[i], *place.points(p[None])[0], place.heading(i * np.pi / 2)))
        pole = -u[i] * far - rn[i] * (n_of[i] * w + SHOULDER + 1.0)
        info.poles.append(tuple(place.points(pole[None])[0]))
    return MapAPI(name, lanes, polygons, stop_lanes), info
