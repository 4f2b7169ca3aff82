"""Camera rasterizer for the embedded world: painter's algorithm over ground layers and shaded boxes.

Why a painter's algorithm: a frame is a few flat ground layers (drawn in list order on z=0) plus tens of convex
boxes standing on them, so filling the ground first and then the boxes' visible faces far-to-near with
``cv2.fillPoly`` is exact for ground-vs-box occlusion, good for box-vs-box, and costs ~1 ms per small image.
Polygons crossing the near plane are clipped in 3-D (Sutherland-Hodgman) before projection, so road polygons
reaching behind the camera project correctly; a guard band clip keeps the rare huge projections within int32.
Pixel coordinates follow ``Camera.project`` (pixel centres at integers) with 4 fractional bits (``shift``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from latentvla.schema import Camera
from latentvla.world.render.types import RenderBox, RenderScene

SKY_COLOR = (150, 190, 235)
GRASS_COLOR = (78, 112, 58)
NEAR = 0.1  # near-plane depth (m)
SHIFT = 4  # fractional bits of the fixed-point vertices handed to cv2.fillPoly
_SCALE = float(1 << SHIFT)
GUARD = 1.0  # guard band (image sizes) kept when a projection must be clipped to stay inside ``_PX_LIMIT``
_PX_LIMIT = float(1 << 22)  # |pixel| bound so that fixed-point coordinates fit int32 comfortably
_FAR_GROUND = 2.0e3  # half-size (m) of the grass square; its far edge lies < 0.1 px below the true horizon
_CLASH_MARGIN = 0.05  # ground rings whose bboxes come this close are filled one by one (fillPoly is even-odd)

# Box corners in unit local coordinates (x, y in [-1, 1] times half length/width; z in [0, 1] times height).
_CORNERS = np.array(
    [[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=float
)
# Faces as corner indices, in the order +x (front), -x (rear), +y (left), -y (right), top, bottom.
FACES = np.array([[1, 2, 6, 5], [0, 4, 7, 3], [2, 3, 7, 6], [0, 1, 5, 4], [4, 5, 6, 7], [0, 3, 2, 1]])
_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
FACE_FRONT, FACE_REAR = 0, 1
# Per-face shading (multiplier, whiten): top lighter, sides darker, so box shapes read at low resolution.
_SHADE = ((0.88, 0.0), (0.80, 0.0), (0.68, 0.0), (0.60, 0.0), (0.70, 0.30), (0.45, 0.0))

BRAKE_ON_COLOR = (255, 20, 20)
BRAKE_OFF_COLOR = (90, 10, 10)
LIGHT_COLORS = {"red": (255, 30, 30), "yellow": (255, 200, 0), "green": (30, 255, 60)}
LAMP_OFF_COLOR = (55, 55, 55)
HOUSING_COLOR = (30, 30, 30)
BRAKE_LAMP_SIZE = (0.40, 0.30)  # width, height (m): ~2 px at 25 m in a 192-px-wide 70-degree camera
BRAKE_LAMP_HEIGHT = 0.8  # lamp centre above the box bottom (m)
OVERLAY_OFFSET = 0.02  # lamps float 2 cm off their face so they are never coplanar with it


def shade_colors(color) -> np.ndarray:
    """Face RGB in ``FACES`` order as the renderer draws them: (6, 3) for one colour, (B, 6, 3) for (B, 3)."""
    c = np.asarray(color, dtype=float)[..., None, :]
    mult, whiten = np.array(_SHADE).T
    return np.clip(np.rint(c * mult[:, None] + 255.0 * whiten[:, None]), 0, 255).astype(np.int64)


def _quad(x: float, yc: float, zc: float, w: float, h: float) -> np.ndarray:
    """A local-frame rectangle in the plane x = const, centred at (yc, zc)."""
    return np.array([[x, yc - w / 2, zc - h / 2], [x, yc + w / 2, zc - h / 2],
                     [x, yc + w / 2, zc + h / 2], [x, yc - w / 2, zc + h / 2]])


def _overlays(box: RenderBox) -> list[tuple[int, np.ndarray, tuple[int, int, int]]]:
    """Lamp quads (face index, (4, 3) box-local corners, RGB) drawn on top of their face when it is visible."""
    hl, hw, h = box.length / 2, box.width / 2, box.height
    out: list[tuple[int, np.ndarray, tuple[int, int, int]]] = []
    if box.kind == "vehicle":
        lw = min(BRAKE_LAMP_SIZE[0], 0.3 * box.width)
        lh = min(BRAKE_LAMP_SIZE[1], 0.3 * h)
        zc = min(BRAKE_LAMP_HEIGHT, 0.55 * h)
        col = BRAKE_ON_COLOR if box.brake_on else BRAKE_OFF_COLOR
        for side in (-1.0, 1.0):
            yc = side * (hw - 0.04 - lw / 2)
            out.append((FACE_REAR, _quad(-hl - OVERLAY_OFFSET, yc, zc, lw, lh), col))
    elif box.kind == "traffic_light":
        cell = h / 3.0
        size = 0.85 * min(cell, box.width)
        for i, state in enumerate(("red", "yellow", "green")):  # top to bottom
            col = LIGHT_COLORS[state] if box.light_state == state else LAMP_OFF_COLOR
            zc = h - (i + 0.5) * cell
            out.append((FACE_FRONT, _quad(hl + OVERLAY_OFFSET, 0.0, zc, size, size), col))
    return out


def _to_ego(params: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Box-local points (B, K, 3) (origin bottom centre, x along heading) -> ego; params rows x y z L W H yaw."""
    c, s = np.cos(params[:, 6])[:, None], np.sin(params[:, 6])[:, None]
    out = np.empty(local.shape)
    out[..., 0] = params[:, 0, None] + c * local[..., 0] - s * local[..., 1]
    out[..., 1] = params[:, 1, None] + s * local[..., 0] + c * local[..., 1]
    out[..., 2] = params[:, 2, None] + local[..., 2]
    return out


@dataclass
class PreparedScene:
    """Camera-independent packing of a ``RenderScene``; build once per frame and share across cameras.

    Ground rings of all layers are padded (last vertex repeated) to power-of-two vertex counts and stacked, so
    each camera transforms, culls and projects them in a few array operations whatever the number of rings.
    """

    n_layers: int
    colors: list[tuple[int, int, int]]  # per ground layer
    groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # rings (M, S, 2), bboxes (M, 4), key (M,) sorted
    corners: np.ndarray  # (B, 8, 3) ego
    params: np.ndarray  # (B, 7) x y z L W H yaw
    normals: np.ndarray  # (B, 6, 3) outward face normals (ego)
    face_points: np.ndarray  # (B, 6, 3) a point on each face
    face_colors: list[list[tuple[int, int, int]]]
    quads: np.ndarray  # (Q, 4, 3) lamp overlays, ego
    quad_face: list[int]
    quad_colors: list[tuple[int, int, int]]
    box_quads: list[list[int]]  # overlay indices of each box


def _clashing(bb: np.ndarray) -> np.ndarray:
    """Rings whose (margin-grown) bboxes touch another ring's: filled alone since cv2.fillPoly is even-odd.

    Disjoint ground polygons project to disjoint image regions, so this camera-independent test suffices.
    Sweep over x-sorted boxes: only pairs overlapping in x are expanded, so cost grows ~linearly with rings.
    """
    n = len(bb)
    clash = np.zeros(n, dtype=bool)
    if n < 2:
        return clash
    lo, hi = bb[:, :2] - _CLASH_MARGIN, bb[:, 2:] + _CLASH_MARGIN
    order = np.argsort(lo[:, 0], kind="stable")
    lo, hi = lo[order], hi[order]
    end = np.searchsorted(lo[:, 0], hi[:, 0], side="right")  # boxes j < end[i] start before i ends
    counts = np.maximum(end - np.arange(n) - 1, 0)  # partners j > i (sorted order)
    total = int(counts.sum())
    if total:
        i = np.repeat(np.arange(n), counts)
        j = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts) + i + 1
        hit = (lo[j, 1] <= hi[i, 1]) & (lo[i, 1] <= hi[j, 1])
        clash[order[i[hit]]] = True
        clash[order[j[hit]]] = True
    return clash


def prepare_scene(scene: RenderScene) -> PreparedScene:
    """Pack ground rings and box geometry once per frame (everything per camera is then vectorised)."""
    rings, layer_of = [], []
    for li, layer in enumerate(scene.ground):
        for ring in layer.rings:
            r = np.asarray(ring, dtype=float).reshape(-1, 2)
            if len(r) >= 3:
                rings.append(r)
                layer_of.append(li)
    sizes = np.array([max(4, 1 << (len(r) - 1).bit_length()) for r in rings], dtype=np.int64)
    layer_arr = np.array(layer_of, dtype=np.int64)
    bbox = np.empty((len(rings), 4))
    packed = []
    for size in np.unique(sizes).tolist():
        idx = np.flatnonzero(sizes == size)
        arr = np.empty((len(idx), size, 2))
        for j, i in enumerate(idx.tolist()):
            r = rings[i]
            arr[j, : len(r)] = r
            arr[j, len(r):] = r[-1]
        bbox[idx] = np.concatenate([arr.min(axis=1), arr.max(axis=1)], axis=1)
        packed.append((idx, arr))
    clash = np.zeros(len(rings), dtype=bool)
    for li in range(len(scene.ground)):
        sel = np.flatnonzero(layer_arr == li)
        clash[sel] = _clashing(bbox[sel])
    key = 2 * layer_arr + clash
    groups = []
    for idx, arr in packed:
        order = np.argsort(key[idx], kind="stable")
        groups.append((arr[order], bbox[idx[order]], key[idx[order]]))

    boxes = scene.boxes
    params = np.array([[b.x, b.y, b.z, b.length, b.width, b.height, b.heading] for b in boxes]).reshape(-1, 7)
    half = np.stack([params[:, 3] / 2, params[:, 4] / 2, params[:, 5]], axis=1)
    corners = _to_ego(params, _CORNERS[None] * half[:, None])
    c, s = np.cos(params[:, 6])[:, None], np.sin(params[:, 6])[:, None]
    normals = np.stack([c * _NORMALS[:, 0] - s * _NORMALS[:, 1], s * _NORMALS[:, 0] + c * _NORMALS[:, 1],
                        np.broadcast_to(_NORMALS[:, 2], c.shape[:1] + (6,))], axis=-1)
    base = np.array([HOUSING_COLOR if b.kind == "traffic_light" else b.color for b in boxes]).reshape(-1, 3)
    face_colors = [[tuple(f) for f in row] for row in shade_colors(base).tolist()]
    local, owner, quad_face, quad_colors = [], [], [], []
    box_quads: list[list[int]] = [[] for _ in boxes]
    for i, b in enumerate(boxes):
        for face, quad, color in _overlays(b):
            box_quads[i].append(len(local))
            local.append(quad)
            owner.append(i)
            quad_face.append(face)
            quad_colors.append(color)
    quads = _to_ego(params[owner], np.array(local)) if local else np.empty((0, 4, 3))
    return PreparedScene(len(scene.ground), [tuple(int(v) for v in g.color) for g in scene.ground], groups,
                         corners, params, normals, corners[:, FACES[:, 0]], face_colors, quads, quad_face,
                         quad_colors, box_quads)


class _View:
    """Per-camera transform, culling planes and fixed-point projection."""

    def __init__(self, cam: Camera) -> None:
        self.rot = np.asarray(cam.sensor2ego_rotation, dtype=float)
        self.pos = np.asarray(cam.sensor2ego_translation, dtype=float)
        self.offset = -self.pos @ self.rot
        k = np.asarray(cam.intrinsics, dtype=float)
        self.k2, self.c2 = k[:2, :2].T.copy(), k[:2, 2].copy()
        self.w, self.h = int(cam.width), int(cam.height)
        self.cull = self._planes(k, 1.0, 1.0)  # near plane + the image borders (+1 px)
        self.cull_n, self.cull_d = self.cull[:, :3].T.copy(), self.cull[:, 3].copy()
        self.guard = self._planes(k, GUARD * self.w, GUARD * self.h)

    def _planes(self, k: np.ndarray, mu: float, mv: float) -> np.ndarray:
        """(5, 4) half-spaces n.p + d >= 0 in camera coordinates: near, u >= -mu, u <= W+mu, v >= -mv, v <= H+mv."""
        fx, s, cx, fy, cy = k[0, 0], k[0, 1], k[0, 2], k[1, 1], k[1, 2]
        return np.array([
            [0.0, 0.0, 1.0, -NEAR],
            [fx, s, cx + mu, 0.0],
            [-fx, -s, self.w + mu - cx, 0.0],
            [0.0, fy, cy + mv, 0.0],
            [0.0, -fy, self.h + mv - cy, 0.0],
        ])

    def project(self, cam_pts: np.ndarray) -> np.ndarray:
        """(..., 3) camera points -> float pixels (u, v); only meaningful in front of the near plane."""
        z = np.maximum(cam_pts[..., 2:3], NEAR)
        return (cam_pts[..., :2] / z) @ self.k2 + self.c2

    def clip_px(self, poly: np.ndarray) -> np.ndarray | None:
        """Near-clip a camera-frame polygon (and guard-clip when its projection is huge) -> fixed-point pixels."""
        poly = _clip(poly, self.guard[:1])
        if len(poly) < 3:
            return None
        uv = self.project(poly)
        if np.abs(uv).max() >= _PX_LIMIT:
            poly = _clip(poly, self.guard[1:])
            if len(poly) < 3:
                return None
            uv = self.project(poly)
        return np.rint(uv * _SCALE).astype(np.int32)


def _clip(poly: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a planar (n, 3) polygon against half-spaces n.p + d >= 0 (vectorised per plane)."""
    for pl in planes:
        d = poly @ pl[:3] + pl[3]
        inside = d >= 0.0
        if inside.all():
            continue
        if not inside.any():
            return poly[:0]
        nxt = np.arange(1, len(poly) + 1)
        nxt[-1] = 0
        cross = inside != inside[nxt]
        t = np.where(cross, d / np.where(cross, d - d[nxt], 1.0), 0.0)
        inter = poly + t[:, None] * (poly[nxt] - poly)
        poly = np.stack([poly, inter], axis=1)[np.stack([inside, cross], axis=1)]
    return poly


def _visible(view: _View, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Of polygons (M, S, 3): not wholly outside one frustum plane; and wholly in front of the near plane."""
    d = cam @ view.cull_n + view.cull_d
    out = d < 0.0
    return ~out.all(axis=1).any(axis=1), ~out[..., 0].any(axis=1)


def _fast_px(view: _View, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project near-safe polygons (M, S, 3) -> fixed-point pixels and whether each stayed within ``_PX_LIMIT``."""
    uv = view.project(cam)
    ok = (np.abs(uv) < _PX_LIMIT).all(axis=(1, 2))
    return np.rint(np.clip(uv, -_PX_LIMIT, _PX_LIMIT) * _SCALE).astype(np.int32), ok  # clip: no int overflow


def _draw_ground(img: np.ndarray, view: _View, ps: PreparedScene, render_range: float) -> None:
    """All layers: cull/project every ring group at once, then one fillPoly per layer (+ one per clashing ring)."""
    buckets: dict[int, list[np.ndarray]] = {}
    cx, cy = view.pos[0], view.pos[1]
    for rings, bbox, key in ps.groups:
        dx = np.maximum(np.maximum(bbox[:, 0] - cx, cx - bbox[:, 2]), 0.0)
        dy = np.maximum(np.maximum(bbox[:, 1] - cy, cy - bbox[:, 3]), 0.0)
        keep = np.flatnonzero(dx * dx + dy * dy <= render_range * render_range)
        if not len(keep):
            continue
        xy = rings[keep]
        cam = xy[..., 0:1] * view.rot[0] + xy[..., 1:2] * view.rot[1] + view.offset  # (M, S, 3)
        vis, front = _visible(view, cam)
        px, ok = _fast_px(view, cam)
        fast = vis & front & ok
        k = key[keep]
        for i in np.flatnonzero(vis & ~fast):
            clipped = view.clip_px(cam[i])
            if clipped is not None:
                buckets.setdefault(int(k[i]), []).append(clipped)
        sel = np.flatnonzero(fast)
        if len(sel):
            kf = k[sel]
            px_list = list(px[sel])
            uniq, start = np.unique(kf, return_index=True)
            bounds = start.tolist() + [len(sel)]
            for j, u in enumerate(uniq.tolist()):
                buckets.setdefault(u, []).extend(px_list[bounds[j]: bounds[j + 1]])
    for li in range(ps.n_layers):
        color = ps.colors[li]
        alone = buckets.get(2 * li)
        if alone:
            cv2.fillPoly(img, alone, color, cv2.LINE_8, SHIFT)
        for poly in buckets.get(2 * li + 1, ()):
            cv2.fillPoly(img, [poly], color, cv2.LINE_8, SHIFT)


def _draw_boxes(img: np.ndarray, view: _View, ps: PreparedScene, render_range: float) -> None:
    """Visible faces of boxes far-to-near, each followed by its lamp overlays on visible faces."""
    if not len(ps.params):
        return
    rel = ps.params[:, :2] - view.pos[:2]
    keep = np.hypot(rel[:, 0], rel[:, 1]) - np.hypot(ps.params[:, 3], ps.params[:, 4]) / 2 <= render_range
    cam = ps.corners @ view.rot + view.offset  # (B, 8, 3)
    vis, front = _visible(view, cam)
    px, ok = _fast_px(view, cam)
    fast = (front & ok).tolist()
    px_faces = np.ascontiguousarray(px[:, FACES])  # (B, 6, 4, 2); cv2 needs contiguous rows
    cam_faces = cam[:, FACES]
    facing = (np.einsum("bfk,bfk->bf", ps.normals, view.pos - ps.face_points) > 1e-9).tolist()
    if len(ps.quads):
        qcam = ps.quads @ view.rot + view.offset
        qvis, qfront = _visible(view, qcam)
        qpx, qok = _fast_px(view, qcam)
        qfast = (qfront & qok).tolist()
        qvis = qvis.tolist()
    idx = np.flatnonzero(keep & vis)
    dist = np.linalg.norm(ps.corners[idx].mean(axis=1) - view.pos, axis=1)
    for b in idx[np.argsort(-dist, kind="stable")].tolist():
        colors, face_on = ps.face_colors[b], facing[b]
        for f in range(6):
            if face_on[f]:
                poly = px_faces[b, f] if fast[b] else view.clip_px(cam_faces[b, f])
                if poly is not None:
                    cv2.fillPoly(img, [poly], colors[f], cv2.LINE_8, SHIFT)
        for q in ps.box_quads[b]:
            if face_on[ps.quad_face[q]] and qvis[q]:
                poly = qpx[q] if qfast[q] else view.clip_px(qcam[q])
                if poly is not None:
                    cv2.fillPoly(img, [poly], ps.quad_colors[q], cv2.LINE_8, SHIFT)


def _draw_grass(img: np.ndarray, view: _View) -> None:
    """Grass = a huge ground square around the camera; its clipped far edge is the horizon for any camera pose."""
    far = _FAR_GROUND * np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    far[:, :2] += view.pos[:2]
    poly = view.clip_px(far @ view.rot + view.offset)
    if poly is not None:
        cv2.fillPoly(img, [poly], GRASS_COLOR, cv2.LINE_8, SHIFT)


def render_camera(camera: Camera, scene: RenderScene | PreparedScene, render_range: float = 90.0) -> np.ndarray:
    """(H, W, 3) uint8 RGB view of ``scene`` (ego frame); pass a ``PreparedScene`` to share packing across cameras."""
    ps = scene if isinstance(scene, PreparedScene) else prepare_scene(scene)
    view = _View(camera)
    img = np.empty((view.h, view.w, 3), dtype=np.uint8)
    img[:] = SKY_COLOR
    _draw_grass(img, view)
    _draw_ground(img, view, ps, render_range)
    _draw_boxes(img, view, ps, render_range)
    return img


def render_cameras(cameras: dict[str, Camera], scene: RenderScene, render_range: float = 90.0) -> dict[str, np.ndarray]:
    """Render every camera of a rig from one shared ``PreparedScene``."""
    ps = prepare_scene(scene)
    return {name: render_camera(cam, ps, render_range) for name, cam in cameras.items()}
