"""Bird's-eye-view matplotlib helpers, all in the EGO frame of a scene's current frame.

Axes convention: ego x (forward) points UP, ego y (left) is the horizontal axis reversed, so the left of the car is
on the left of the picture. Every helper takes ego-frame arrays (x, y[, ...]) and plots ``(y, x)``; call
:func:`setup_bev_axes` once to fix limits, equal aspect and the reversed horizontal axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Polygon as MplPolygon

from latentvla.map_api import DRIVABLE_LAYERS, MapAPI
from latentvla.schema import EGO

ROAD_COLOR = "#b4b4b8"
ROUTE_COLOR = "#9ec5f0"
WALKWAY_COLOR = "#e9e4d6"
CROSSWALK_COLOR = "#ffffff"
CENTERLINE_COLOR = "#7a8aa0"
EGO_COLOR = "#1f4e9c"
BRAKE_COLOR = "#e0201b"
LIGHT_COLORS: dict[str, str] = {"green": "#1fb141", "yellow": "#f2c200", "red": "#e0201b", "unknown": "#8c8c8c"}
STOP_LINE_NO_LIGHT = "#f5f5f5"
BOUNDARY_STYLES: dict[str, dict] = {
    "none": {"color": "#9a9aa0", "lw": 0.5, "ls": "-"},
    "dashed_white": {"color": "white", "lw": 0.8, "ls": (0, (4, 4))},
    "solid_white": {"color": "white", "lw": 1.1, "ls": "-"},
    "solid_yellow": {"color": "#f2c200", "lw": 1.2, "ls": "-"},
}
BOX_COLORS: dict[str, str] = {
    "vehicle": "#f28e2b", "pedestrian": "#b04ad6", "bicycle": "#17becf", "traffic_cone": "#ff6f00",
    "barrier": "#8c564b", "czone_sign": "#bcbd22", "generic_object": "#7f7f7f",
}
_LIGHT_PRIORITY = ("red", "yellow", "green", "unknown")  # most restrictive first


# --- frames ----------------------------------------------------------------------------------------------------
def to_ego(points: np.ndarray, ego_pose_global: np.ndarray) -> np.ndarray:
    """(N, 2) global points -> (N, 2) points in the ego frame of ``ego_pose_global`` (x, y, heading)."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0, h = (float(v) for v in np.asarray(ego_pose_global, dtype=np.float64)[:3])
    c, s = np.cos(h), np.sin(h)
    dx, dy = p[:, 0] - x0, p[:, 1] - y0
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=1)


def _hv(xy: np.ndarray) -> np.ndarray:
    """Ego (x, y) -> plot (horizontal, vertical) = (y, x)."""
    xy = np.asarray(xy, dtype=np.float64)
    return xy[:, [1, 0]]


def _near(xy: np.ndarray, radius: float) -> bool:
    """Whether an ego-frame geometry's bounding box touches the square view of half-size ``radius``."""
    if len(xy) == 0:
        return False
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    return bool(hi[0] >= -radius and lo[0] <= radius and hi[1] >= -radius and lo[1] <= radius)


def setup_bev_axes(ax: Axes, radius: float, background: str = "#5f8a4f") -> None:
    """Square view of half-size ``radius`` around the ego, x forward up, y left on the (reversed) horizontal."""
    ax.set_xlim(radius, -radius)  # reversed: +y (left) on the left
    ax.set_ylim(-radius, radius)
    ax.set_aspect("equal")
    ax.set_facecolor(background)
    ax.set_xlabel("y [m] (left +)")
    ax.set_ylabel("x [m] (forward +)")
    ax.tick_params(labelsize=7)


def _fill(ax: Axes, xy: np.ndarray, **kw) -> None:
    ax.add_patch(MplPolygon(_hv(xy), closed=True, **kw))


def _line(ax: Axes, xy: np.ndarray, **kw) -> None:
    hv = _hv(xy)
    ax.plot(hv[:, 0], hv[:, 1], **kw)


# --- map -------------------------------------------------------------------------------------------------------
def stop_line_states(map_api: MapAPI, traffic_lights: Iterable) -> dict[str, str]:
    """Stop line id -> state of the light controlling its lanes' connectors (most restrictive when mixed).

    ``traffic_lights`` holds ``(lane_id, state)`` pairs or objects with ``lane_id``/``state`` (lane ids are the
    controlled connectors, NAVSIM's lane_connector_id). Stop lines without a controlled lane are left out.
    """
    state_of: dict[str, str] = {}
    for tl in traffic_lights:
        lane_id, state = (tl.lane_id, tl.state) if hasattr(tl, "lane_id") else (tl[0], tl[1])
        state_of[str(lane_id)] = str(state)
    out: dict[str, str] = {}
    for sid, lane_ids in map_api.stop_line_lanes.items():
        found = set()
        for lid in lane_ids:
            lane = map_api.lanes.get(lid)
            for cand in [lid] + (list(lane.successors) if lane is not None else []):
                if cand in state_of:
                    found.add(state_of[cand])
        if found:
            out[sid] = next((s for s in _LIGHT_PRIORITY if s in found), sorted(found)[0])
    return out


def draw_map(
    ax: Axes,
    map_api: MapAPI,
    ego_pose_global: np.ndarray,
    radius: float,
    traffic_lights: Iterable | None = None,
    route_roadblock_ids: Iterable[str] | None = None,
    centerlines: bool = True,
) -> None:
    """Drivable area (grey), walkways, hatched crosswalks, route lanes (light blue), lane boundaries by marking
    type, thin dashed centerlines and stop lines coloured by their light's state (when ``traffic_lights`` given)."""
    margin = radius * 1.5

    def local_rings(layer: str) -> Iterable[tuple[str, np.ndarray]]:
        for pid, ring in sorted(map_api.layer(layer).items()):
            xy = to_ego(ring, ego_pose_global)
            if _near(xy, margin):
                yield pid, xy

    for layer in ("walkway",):
        for _, xy in local_rings(layer):
            _fill(ax, xy, facecolor=WALKWAY_COLOR, edgecolor="none", zorder=1)
    for layer in DRIVABLE_LAYERS:
        for _, xy in local_rings(layer):
            _fill(ax, xy, facecolor=ROAD_COLOR, edgecolor="none", zorder=2)

    lanes = []
    for lane in map_api.lanes.values():
        cl = to_ego(lane.centerline, ego_pose_global)
        if _near(cl, margin):
            lanes.append((lane, cl))
    route = set(route_roadblock_ids or ())
    for lane, _ in lanes:
        if lane.roadblock_id in route:
            ring = np.concatenate([lane.left_boundary, lane.right_boundary[::-1]])
            _fill(ax, to_ego(ring, ego_pose_global), facecolor=ROUTE_COLOR, edgecolor="none", alpha=0.4, zorder=3)

    for _, xy in local_rings("crosswalk"):
        _fill(ax, xy, facecolor=CROSSWALK_COLOR, edgecolor="#6f6f6f", hatch="////", lw=0.4, alpha=0.9, zorder=4)

    for lane, _ in lanes:
        if lane.is_connector:  # connectors only get their centerline (their boundaries criss-cross the junction)
            continue
        for bound, kind in ((lane.left_boundary, lane.left_boundary_type),
                            (lane.right_boundary, lane.right_boundary_type)):
            _line(ax, to_ego(bound, ego_pose_global), zorder=5, **BOUNDARY_STYLES.get(kind, BOUNDARY_STYLES["none"]))
    if centerlines:
        for _, cl in lanes:
            _line(ax, cl, color=CENTERLINE_COLOR, lw=0.5, ls=(0, (2, 3)), zorder=5)

    states = stop_line_states(map_api, traffic_lights) if traffic_lights is not None else {}
    for sid, xy in local_rings("stop_line"):
        color = LIGHT_COLORS.get(states[sid], LIGHT_COLORS["unknown"]) if sid in states else STOP_LINE_NO_LIGHT
        _fill(ax, xy, facecolor=color, edgecolor=color, lw=1.5, zorder=6)


# --- objects ---------------------------------------------------------------------------------------------------
def box_corners(x: float, y: float, length: float, width: float, heading: float) -> np.ndarray:
    """(4, 2) corners (front-left, front-right, rear-right, rear-left) of a box centred at (x, y)."""
    c, s = np.cos(heading), np.sin(heading)
    local = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]], dtype=np.float64) * [length / 2, width / 2]
    return local @ np.array([[c, s], [-s, c]]) + [x, y]


def _draw_box(ax: Axes, x: float, y: float, length: float, width: float, heading: float, face: str, edge: str,
              lw: float, zorder: int, alpha: float = 0.9) -> None:
    corners = box_corners(x, y, length, width, heading)
    _fill(ax, corners, facecolor=face, edgecolor=edge, lw=lw, alpha=alpha, zorder=zorder)
    tip = np.array([[x, y], [x + np.cos(heading) * length / 2, y + np.sin(heading) * length / 2]])
    _line(ax, tip, color=edge, lw=max(lw, 0.8), zorder=zorder + 0.1, solid_capstyle="butt")


def draw_boxes(ax: Axes, boxes: np.ndarray, names: list[str], brake_lights: np.ndarray | None = None,
               zorder: int = 8) -> None:
    """(N, 7) ego-frame boxes (x, y, z, l, w, h, heading): rotated rectangles with a heading tick, coloured per
    class; vehicles whose brake lights are on are outlined red."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    brakes = np.zeros(len(boxes), dtype=bool) if brake_lights is None else np.asarray(brake_lights, dtype=bool)
    for i, (b, name) in enumerate(zip(boxes, names, strict=False)):
        braking = bool(brakes[i]) if i < len(brakes) else False
        small = b[3] < 1.5 and b[4] < 1.5
        edge, lw = (BRAKE_COLOR, 2.0) if braking else ("#222222", 0.4 if small else 0.7)
        # tiny objects (cones, pedestrians) stay visible at a 100 m view
        length, width = max(b[3], 1.0), max(b[4], 1.0)
        _draw_box(ax, b[0], b[1], length, width, b[6], BOX_COLORS.get(name, BOX_COLORS["generic_object"]), edge,
                  lw, zorder)


def draw_ego(ax: Axes, color: str = EGO_COLOR, zorder: int = 9) -> None:
    """The ego box (5.176 x 2.297 m), rear axle at the origin, centre 1.461 m ahead, heading along +x."""
    _draw_box(ax, EGO.rear_axle_to_center, 0.0, EGO.length, EGO.width, 0.0, color, "white", 1.0, zorder, alpha=1.0)
    ax.plot([0.0], [0.0], marker="o", ms=2.5, color="white", zorder=zorder + 0.2)


def draw_trajectory(ax: Axes, poses: np.ndarray, **style) -> None:
    """(N, 2+) ego-frame poses as a polyline with markers; ``style`` goes to ``ax.plot`` (label, color, ...).

    ``from_origin=True`` (default) starts the line at the ego's rear axle."""
    poses = np.asarray(poses, dtype=np.float64).reshape(len(poses), -1)
    if len(poses) == 0:
        return
    xy = poses[:, :2]
    if style.pop("from_origin", True):
        xy = np.concatenate([np.zeros((1, 2)), xy])
        markevery = list(range(1, len(xy)))
    else:
        markevery = None
    kw = {"lw": 1.8, "marker": "o", "ms": 3.0, "zorder": 10, "markevery": markevery}
    kw.update(style)
    _line(ax, xy, **kw)


def draw_light_legend(ax: Axes, states: Mapping[str, str], loc: str = "lower left") -> None:
    """A compact text box 'stop lines: S0 red, S1 green ...' in a corner of the axes."""
    if not states:
        return
    text = "lights: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    pos = {"lower left": (0.02, 0.02, "left", "bottom"), "upper left": (0.02, 0.98, "left", "top")}[loc]
    ax.text(pos[0], pos[1], text, transform=ax.transAxes, ha=pos[2], va=pos[3], fontsize=7,
            bbox={"boxstyle": "round,pad=0.25", "fc": "white", "alpha": 0.8, "lw": 0}, zorder=20)
