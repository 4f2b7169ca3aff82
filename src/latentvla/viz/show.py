"""One-figure inspection of a scene: a BEV panel (map, boxes, lights, route, ego history / logged future, extra
trajectories) next to the current frame's camera images with the trajectories projected into ``cam_f0``."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from latentvla.runtime.io import atomic_write_bytes
from latentvla.schema import CAMERA_NAMES, Camera
from latentvla.viz.bev import (
    draw_boxes,
    draw_ego,
    draw_light_legend,
    draw_map,
    draw_trajectory,
    setup_bev_axes,
    stop_line_states,
)

HISTORY_COLOR = "#444444"
FUTURE_COLOR = "#00a651"
EXTRA_COLORS = ("#d62728", "#9467bd", "#ff7f0e", "#17becf", "#e377c2", "#8c564b", "#bcbd22", "#1f77b4")
PROJECT_CAMERA = "cam_f0"
MIN_DEPTH = 0.5


def save_figure_atomic(fig: Figure, out_path: str | Path, dpi: float) -> Path:
    """Render a PNG in memory, write it to a temporary sibling and ``os.replace`` it (no partial files)."""
    out = Path(out_path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(out, buf.getvalue())
    return out


def _densify(xy: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Resample an (N, 2) polyline every ``step`` metres (keeps the vertices)."""
    out = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:], strict=True):
        n = max(int(np.ceil(np.hypot(*(b - a)) / step)), 1)
        t = np.linspace(0.0, 1.0, n + 1)[1:, None]
        out.append(a + t * (b - a))
    return np.concatenate(out)


def project_ground_polyline(camera: Camera, poses: np.ndarray, from_origin: bool = True) -> np.ndarray:
    """Ego-frame poses on the ground (z = 0) -> (M, 2) pixels, NaN rows where depth <= 0.5 m (line breaks)."""
    xy = np.asarray(poses, dtype=np.float64).reshape(len(poses), -1)[:, :2]
    if from_origin:
        xy = np.concatenate([np.zeros((1, 2)), xy])
    if len(xy) == 0:
        return np.zeros((0, 2))
    xy = _densify(xy)
    pts = np.concatenate([xy, np.zeros((len(xy), 1))], axis=1)
    uv, depth = camera.project(pts)
    uv = uv.copy()
    uv[depth <= MIN_DEPTH] = np.nan
    return uv


def _aspect(cams: dict[str, Camera]) -> float:
    for cam in cams.values():
        h, w = cam.image.shape[:2]
        return w / max(h, 1)
    return 2.0


def _layout(n_cams: int, aspect: float) -> tuple[Figure, list[float], list[list[float]]]:
    """Figure and axes rectangles (figure fractions): a square BEV panel left, cameras in 2 columns right."""
    cam_w, title_h, gap = 3.6, 0.3, 0.15  # inches
    rows = max(math.ceil(n_cams / 2), 1)
    row_h = cam_w / aspect + title_h
    bev = max(rows * row_h - title_h, 5.2)
    left, bottom, top = 0.75, 0.55, 0.65  # room for BEV tick labels and the suptitle
    width = left + bev + 0.35 + 2 * cam_w + gap + 0.1
    height = bottom + bev + top
    fig = Figure(figsize=(width, height))
    bev_rect = [left / width, bottom / height, bev / width, bev / height]
    y_top = bottom + bev  # cameras hang from the BEV's top edge
    x0 = left + bev + 0.35
    cam_rects = []
    for k in range(n_cams):
        r, c = divmod(k, 2)
        y = y_top - (r + 1) * row_h + title_h
        cam_rects.append([(x0 + c * (cam_w + gap)) / width, y / height, cam_w / width, (cam_w / aspect) / height])
    return fig, bev_rect, cam_rects


def _camera_order(names: list[str]) -> list[str]:
    known = [n for n in CAMERA_NAMES if n in names]
    return known + sorted(n for n in names if n not in CAMERA_NAMES)


def show_scene(
    store,
    token: str,
    out_path: str | Path,
    extra_trajectories: dict[str, np.ndarray] | None = None,
    radius: float = 50.0,
    bev_overlay: Callable[[Axes], object] | None = None,
) -> Path:
    """Write one PNG for scene ``token``: BEV panel left, current camera images right; returns the path.

    ``bev_overlay(ax)`` draws extra content on the BEV axes after the map, boxes and ego and before the
    trajectories (e.g. iPad's proposals, :mod:`latentvla.viz.planner_overlay`); legend entries it labels are kept."""
    scene = store.load_scene(token, sensors="current", with_sim_state=False)
    info = store.info(token)
    frame = scene.current_frame
    extras = {k: np.asarray(v, dtype=np.float64) for k, v in (extra_trajectories or {}).items()}
    history = scene.get_history_trajectory().poses
    try:
        future = scene.get_future_trajectory().poses
    except ValueError:
        future = np.zeros((0, 3))
    trajectories: list[tuple[str, np.ndarray, str]] = [("logged future", future, FUTURE_COLOR)]
    trajectories += [(name, poses, EXTRA_COLORS[i % len(EXTRA_COLORS)]) for i, (name, poses) in enumerate(extras.items())]

    cams = {n: c for n, c in frame.cameras.items() if c.image is not None}
    order = _camera_order(list(cams))
    fig, bev_rect, cam_rects = _layout(len(order), _aspect(cams))

    # --- BEV ---------------------------------------------------------------------------------------------------
    ax = fig.add_axes(bev_rect)
    setup_bev_axes(ax, radius)
    pose = frame.ego_status.ego_pose
    draw_map(ax, scene.map_api, pose, radius, traffic_lights=frame.traffic_lights,
             route_roadblock_ids=frame.roadblock_ids)
    ann = frame.annotations
    draw_boxes(ax, ann.boxes, ann.names, ann.brake_lights)
    draw_ego(ax)
    if bev_overlay is not None:
        bev_overlay(ax)
    draw_trajectory(ax, history, color=HISTORY_COLOR, label="history", from_origin=False, ms=2.5, lw=1.4)
    for name, poses, color in trajectories:
        if len(poses):
            draw_trajectory(ax, poses, color=color, label=name)
    draw_light_legend(ax, stop_line_states(scene.map_api, frame.traffic_lights))
    ax.legend(loc="upper right", fontsize=7, framealpha=0.85)
    v = float(np.hypot(*frame.ego_status.ego_velocity[:2]))
    ax.set_title(f"BEV (ego frame, x forward up), ego {v:.1f} m/s", fontsize=9)

    # --- cameras -----------------------------------------------------------------------------------------------
    for k, name in enumerate(order):
        cam = cams[name]
        cax = fig.add_axes(cam_rects[k])
        img = cam.image
        h, w = img.shape[:2]
        cax.imshow(img, interpolation="bilinear")
        if name == PROJECT_CAMERA:
            for label, poses, color in trajectories:
                if len(poses):
                    uv = project_ground_polyline(cam, poses)
                    cax.plot(uv[:, 0], uv[:, 1], color=color, lw=1.6, label=label)
        cax.set_xlim(-0.5, w - 0.5)
        cax.set_ylim(h - 0.5, -0.5)
        cax.set_title(name, fontsize=9)
        cax.set_xticks([])
        cax.set_yticks([])
    if not order:
        fig.text(0.75, 0.5, "no camera images", ha="center", va="center", fontsize=10)

    fig.suptitle(f"{token}  |  family: {info['family']}  |  command: {info['command']}  |  split: {info['split']}",
                 fontsize=11)
    return save_figure_atomic(fig, out_path, dpi=85)
