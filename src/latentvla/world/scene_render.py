"""Turn the map and the simulator state into what the sensor renderers draw, in the ego frame.

Ground primitives (road, sidewalks, zebra stripes, stop lines, dashed and solid lane markings) are built once per
map in global coordinates; each frame only moves the nearby ones into the ego frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from latentvla.map_api import DRIVABLE_LAYERS, MapAPI
from latentvla.world.geometry import Polyline, dedupe, offset
from latentvla.world.render.types import GroundLayer, RenderBox, RenderScene

ROAD = (72, 72, 76)
WALKWAY = (150, 150, 144)
WHITE = (232, 232, 232)
YELLOW = (228, 186, 40)
MARK_WIDTH = 0.15
DASH, GAP = 3.0, 6.0
KIND_INTENSITY = {"vehicle": 0.45, "pedestrian": 0.25, "bicycle": 0.35, "traffic_cone": 0.8, "barrier": 0.7,
                  "pole": 0.3, "traffic_light": 0.3}


@dataclass
class _Layer:
    name: str
    color: tuple[int, int, int]
    intensity: float
    rings: list[np.ndarray]
    centers: np.ndarray  # (R, 2)
    radii: np.ndarray  # (R,)
    flat: np.ndarray  # all vertices, (V, 2): moved to the ego frame in one operation per frame
    starts: np.ndarray  # (R + 1,) vertex offsets of each ring in ``flat``


def _layer(name: str, color, intensity: float, rings: list[np.ndarray]) -> _Layer:
    rings = [np.asarray(r, dtype=np.float64) for r in rings if len(r) >= 3]
    if rings:
        lo = np.array([r.min(0) for r in rings])
        hi = np.array([r.max(0) for r in rings])
        centers, radii = (lo + hi) / 2, np.hypot(*((hi - lo) / 2).T)
        flat = np.concatenate(rings)
    else:
        centers, radii, flat = np.zeros((0, 2)), np.zeros(0), np.zeros((0, 2))
    starts = np.concatenate([[0], np.cumsum([len(r) for r in rings])]).astype(int)
    return _Layer(name, color, intensity, rings, centers, radii, flat, starts)


def _strip_quads(line: np.ndarray, dashed: bool) -> list[np.ndarray]:
    """A marking along a polyline as small quads (dashes, or 6 m pieces of a solid line)."""
    pl = Polyline(line)
    step = DASH + GAP if dashed else 6.0
    length = DASH if dashed else 6.0
    quads = []
    for s0 in np.arange(0.0, pl.length - 0.3, step):
        seg = dedupe(pl.slice_points(s0, min(s0 + length, pl.length)))
        if len(seg) < 2:
            continue
        left, right = offset(seg, MARK_WIDTH / 2), offset(seg, -MARK_WIDTH / 2)
        quads.append(np.concatenate([left, right[::-1]]))
    return quads


def _zebra(ring: np.ndarray, n: int = 8) -> list[np.ndarray]:
    """Zebra stripes across a crosswalk polygon (stripes parallel to its short side)."""
    poly = shapely.Polygon(ring).minimum_rotated_rectangle
    c = np.asarray(poly.exterior.coords)[:4]
    e0, e1 = c[1] - c[0], c[2] - c[1]
    if np.hypot(*e0) < np.hypot(*e1):  # make e0 the long side
        c = np.roll(c, -1, axis=0)
        e0, e1 = c[1] - c[0], c[2] - c[1]
    out = []
    for k in range(n):
        a, b = (2 * k + 0.5) / (2 * n), (2 * k + 1.5) / (2 * n)
        out.append(np.stack([c[0] + a * e0, c[0] + b * e0, c[0] + b * e0 + e1, c[0] + a * e0 + e1]))
    return out


def ground_layers(map_api: MapAPI) -> list[_Layer]:
    road = [r for layer in DRIVABLE_LAYERS for r in map_api.layer(layer).values()]
    walk = list(map_api.layer("walkway").values())
    zebra = [q for r in map_api.layer("crosswalk").values() for q in _zebra(r)]
    stops = list(map_api.layer("stop_line").values())
    white, yellow = [], []
    for lane in map_api.lanes.values():
        bounds = [(lane.right_boundary, lane.right_boundary_type)]
        if lane.left_neighbor is None:  # shared boundaries are drawn once, from the lane on their left
            bounds.append((lane.left_boundary, lane.left_boundary_type))
        for line, kind in bounds:
            if kind == "none":
                continue
            quads = _strip_quads(line, dashed=kind.startswith("dashed"))
            (yellow if kind.endswith("yellow") else white).extend(quads)
    return [
        _layer("walkway", WALKWAY, 0.2, walk),
        _layer("road", ROAD, 0.12, road),
        _layer("crosswalk", WHITE, 0.5, zebra),
        _layer("stop_line", WHITE, 0.5, stops),
        _layer("marking_white", WHITE, 0.45, white),
        _layer("marking_yellow", YELLOW, 0.4, yellow),
    ]


def _to_ego(xy: np.ndarray, pose: np.ndarray) -> np.ndarray:
    c, s = np.cos(pose[2]), np.sin(pose[2])
    d = xy - pose[:2]
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def render_scene(layers: list[_Layer], boxes: list[dict], props: dict, light_of, ego_pose: np.ndarray,
                 render_range: float) -> RenderScene:
    """RenderScene in the ego frame of ``ego_pose`` (rear axle, global).

    ``boxes``: dicts with x, y, heading (global centre), length, width, height, kind, color, brake_on.
    ``light_of(group) -> state`` gives the current colour of a light group.
    """
    ground = []
    for layer in layers:
        if not layer.rings:
            continue
        near = np.flatnonzero(np.hypot(*(layer.centers - ego_pose[:2]).T) - layer.radii < render_range)
        if len(near) == 0:
            continue
        flat = _to_ego(layer.flat, ego_pose)
        rings = [flat[layer.starts[i]:layer.starts[i + 1]] for i in near]
        ground.append(GroundLayer(layer.name, layer.color, rings, layer.intensity))
    out = []
    for b in boxes:
        xy = _to_ego(np.array([b["x"], b["y"]]), ego_pose)
        if np.hypot(*xy) > render_range:
            continue
        out.append(RenderBox(float(xy[0]), float(xy[1]), 0.0, b["length"], b["width"], b["height"],
                             float(b["heading"] - ego_pose[2]), b["kind"], tuple(b["color"]), bool(b["brake_on"]),
                             None, KIND_INTENSITY.get(b["kind"], 0.3)))
    for group, x, y, heading in props.get("light_heads", []):
        xy = _to_ego(np.array([x, y]), ego_pose)
        if np.hypot(*xy) <= render_range:
            out.append(RenderBox(float(xy[0]), float(xy[1]), 4.4, 0.5, 1.0, 2.4, float(heading - ego_pose[2]),
                                 "traffic_light", (30, 30, 30), False, light_of(group), KIND_INTENSITY["traffic_light"]))
    for x, y in props.get("poles", []):
        xy = _to_ego(np.array([x, y]), ego_pose)
        if np.hypot(*xy) <= render_range:
            out.append(RenderBox(float(xy[0]), float(xy[1]), 0.0, 0.3, 0.3, 6.8, 0.0, "pole", (90, 90, 95), False, None,
                                 KIND_INTENSITY["pole"]))
    return RenderScene(ground=ground, boxes=out)
