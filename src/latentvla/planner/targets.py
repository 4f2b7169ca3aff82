"""Planner training targets from the privileged ``Scene`` (NAVSIM TransFuser's targets): they may use the map,
the annotations and the future, and never reach the features (``latentvla.planner.features``).

Keys (per scene; :class:`TargetBuilder` stacks them over a leading batch dimension):

- ``trajectory`` float32 (8, 3): the logged future (x, y, heading) in the t0 ego frame.
- ``bev_semantic_map`` uint8 (P, P), P = ``targets.bev_pixels``, on the LiDAR grid's square ``[-range_m, range_m]``
  with the same orientation (row 0 = +x ahead, column 0 = +y left); the value is the index in ``BEV_CLASSES``:
  road (drivable polygons: roadblock / intersection / drivable_area / carpark), walkway (walkway + crosswalk
  polygons), centerline (every lane and connector centerline, a 1-pixel polyline), static_object, vehicle,
  pedestrian (boxes of the current frame, by name: see ``BOX_CLASS``), red_lane (the polygon between the boundaries
  of each lane whose light is red in the current frame; ``TrafficLightStatus.lane_id`` names a lane connector).
  Classes are painted in ``BEV_CLASSES`` order, so a later class covers an earlier one (red_lane is last: it covers
  a vehicle standing inside a red connector). Geometry is rasterised with OpenCV at 1/256 pixel precision
  (``shift=8``): a polygon marks the cells inside it plus the cells its outline passes through, so even a 0.5 m
  pedestrian marks at least one cell.
- ``agent_states`` float32 (N, 5) (x, y, heading, length, width) in the t0 ego frame of the nearest
  N = ``targets.max_agents`` vehicles whose centre lies inside the BEV square (|x|, |y| <= range_m), nearest first
  (ties keep annotation order), zero rows after them; ``agent_labels`` float32 (N,): 1 for real rows, 0 for padding.

Box names follow ``schema.BOX_NAMES``; the embedded world emits vehicle, pedestrian, bicycle, traffic_cone and
barrier. NAVSIM's classes have no cyclists; here bicycles join the pedestrian class (vulnerable road users) so the
BEV head still sees them. Only ``vehicle`` boxes are agent-box targets, as in NAVSIM.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import cv2
import numpy as np

from latentvla.map_api import DRIVABLE_LAYERS, MapAPI
from latentvla.planner.configuration import AGENT_STATE_COLUMNS, BEV_CLASSES, FeatureConfig
from latentvla.schema import TRAJECTORY_POSES, Annotations, Scene, TrafficLightStatus, wrap_angle

TARGET_KEYS: tuple[str, ...] = ("trajectory", "bev_semantic_map", "agent_states", "agent_labels")
TARGET_DTYPES: dict[str, type] = {"trajectory": np.float32, "bev_semantic_map": np.uint8,
                                  "agent_states": np.float32, "agent_labels": np.float32}
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(BEV_CLASSES)}
BOX_CLASS: dict[str, str] = {"vehicle": "vehicle", "pedestrian": "pedestrian", "bicycle": "pedestrian",
                             "traffic_cone": "static_object", "barrier": "static_object",
                             "czone_sign": "static_object", "generic_object": "static_object"}
WALKWAY_LAYERS: tuple[str, ...] = ("walkway", "crosswalk")
_SHIFT = 8  # cv2 fixed-point bits


def target_shapes(cfg: FeatureConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every target of one scene (no batch dimension)."""
    p, n = cfg.targets.bev_pixels, cfg.targets.max_agents
    return {"trajectory": (TRAJECTORY_POSES, 3), "bev_semantic_map": (p, p),
            "agent_states": (n, len(AGENT_STATE_COLUMNS)), "agent_labels": (n,)}


# --- geometry ----------------------------------------------------------------------------------------------------
def to_ego(points: np.ndarray, ego_pose: np.ndarray) -> np.ndarray:
    """Global (N, 2) points -> the ego frame of ``ego_pose`` (global x, y, heading)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    c, s = np.cos(ego_pose[2]), np.sin(ego_pose[2])
    d = pts - np.asarray(ego_pose[:2], dtype=np.float64)
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=1)


class BevCanvas:
    """A P x P uint8 grid over ``[c - range_m, c + range_m] x [-range_m, range_m]`` of the ego frame (c =
    ``center_x``; row 0 = +x, column 0 = +y), painted with OpenCV in sub-pixel fixed point."""

    def __init__(self, range_m: float, pixels: int, center_x: float = 0.0):
        self.range_m, self.pixels, self.center_x = float(range_m), int(pixels), float(center_x)
        self.res = 2.0 * self.range_m / self.pixels
        self.image = np.zeros((self.pixels, self.pixels), dtype=np.uint8)

    def _pts(self, xy: np.ndarray) -> np.ndarray:
        """Ego (N, 2) -> cv2 fixed-point (N, 2) int32 (u = column, v = row; cell centres at integers)."""
        u = (self.range_m - xy[:, 1]) / self.res - 0.5
        v = (self.range_m + self.center_x - xy[:, 0]) / self.res - 0.5
        return np.round(np.stack([u, v], axis=1) * (1 << _SHIFT)).astype(np.int32)

    def fill(self, polygons: list[np.ndarray], value: int) -> None:
        polys = [self._pts(p) for p in polygons if len(p) >= 3]
        if polys:
            cv2.fillPoly(self.image, polys, int(value), lineType=cv2.LINE_8, shift=_SHIFT)

    def lines(self, polylines: list[np.ndarray], value: int) -> None:
        lines = [self._pts(p) for p in polylines if len(p) >= 2]
        if lines:
            cv2.polylines(self.image, lines, False, int(value), thickness=1, lineType=cv2.LINE_8, shift=_SHIFT)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(N, >=7) boxes (x, y, z, length, width, height, heading) -> (N, 4, 2) footprint corners."""
    b = np.asarray(boxes, dtype=np.float64)
    b = b.reshape(-1, b.shape[-1])
    c, s = np.cos(b[:, 6]), np.sin(b[:, 6])
    hl, hw = b[:, 3:4] / 2, b[:, 4:5] / 2
    sx = np.array([1.0, 1.0, -1.0, -1.0]) * hl
    sy = np.array([1.0, -1.0, -1.0, 1.0]) * hw
    x = b[:, 0:1] + c[:, None] * sx - s[:, None] * sy
    y = b[:, 1:2] + s[:, None] * sx + c[:, None] * sy
    return np.stack([x, y], axis=-1)


class _MapIndex:
    """Bounding boxes of a map's lanes and polygons, so a scene only transforms geometry near the ego."""

    def __init__(self, map_api: MapAPI):
        self.map_api = map_api
        self.lane_ids = sorted(map_api.lanes)
        self.lane_bbox = _bboxes([map_api.lanes[i].centerline for i in self.lane_ids]
                                 ) if self.lane_ids else np.zeros((0, 4))
        lane_outline = [np.concatenate([map_api.lanes[i].left_boundary, map_api.lanes[i].right_boundary])
                        for i in self.lane_ids]
        self.lane_poly_bbox = _bboxes(lane_outline) if lane_outline else np.zeros((0, 4))
        self.layers: dict[str, tuple[list[np.ndarray], np.ndarray]] = {}
        for layer in DRIVABLE_LAYERS + WALKWAY_LAYERS:
            rings = [r for _, r in sorted(map_api.layer(layer).items())]
            self.layers[layer] = (rings, _bboxes(rings) if rings else np.zeros((0, 4)))


def _bboxes(arrays: list[np.ndarray]) -> np.ndarray:
    return np.array([[a[:, 0].min(), a[:, 1].min(), a[:, 0].max(), a[:, 1].max()] if len(a) else [np.inf] * 2
                     + [-np.inf] * 2 for a in arrays], dtype=np.float64).reshape(-1, 4)


def _near(bbox: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    return ((bbox[:, 0] <= center[0] + radius) & (bbox[:, 2] >= center[0] - radius)
            & (bbox[:, 1] <= center[1] + radius) & (bbox[:, 3] >= center[1] - radius))


_INDEX: OrderedDict[int, _MapIndex] = OrderedDict()  # keyed by id(map); the entry keeps its map alive


def _map_index(map_api: MapAPI) -> _MapIndex:
    key = id(map_api)
    idx = _INDEX.get(key)
    if idx is None or idx.map_api is not map_api:
        idx = _MapIndex(map_api)
        _INDEX[key] = idx
        while len(_INDEX) > 8:
            _INDEX.popitem(last=False)
    _INDEX.move_to_end(key)
    return idx


def bev_semantic_map(map_api: MapAPI, ego_pose: np.ndarray, annotations: Annotations,
                     traffic_lights: Sequence[TrafficLightStatus], range_m: float, pixels: int,
                     center_x: float = 0.0) -> np.ndarray:
    """uint8 (P, P) class ids (index in ``BEV_CLASSES``) around ``ego_pose`` (global x, y, heading); boxes are
    in that ego frame, map geometry global."""
    canvas = BevCanvas(range_m, pixels, center_x)
    idx = _map_index(map_api)
    pose = np.asarray(ego_pose, dtype=np.float64)
    radius = range_m * np.sqrt(2.0) + abs(center_x) + 1.0

    def rings(layers: tuple[str, ...]) -> list[np.ndarray]:
        out = []
        for layer in layers:
            rs, bb = idx.layers[layer]
            out += [to_ego(rs[i], pose) for i in np.flatnonzero(_near(bb, pose, radius))]
        return out

    def lane_polygon(lane_id: str) -> np.ndarray:
        lane = map_api.lanes[lane_id]
        return to_ego(np.concatenate([lane.left_boundary, lane.right_boundary[::-1]]), pose)

    canvas.fill(rings(DRIVABLE_LAYERS), CLASS_ID["road"])
    canvas.fill(rings(WALKWAY_LAYERS), CLASS_ID["walkway"])
    near_lanes = [idx.lane_ids[i] for i in np.flatnonzero(_near(idx.lane_bbox, pose, radius))]
    canvas.lines([to_ego(map_api.lanes[i].centerline, pose) for i in near_lanes], CLASS_ID["centerline"])
    if len(annotations):
        corners = box_corners(np.asarray(annotations.boxes, dtype=np.float64).reshape(-1, 7))
        for cls in ("static_object", "vehicle", "pedestrian"):
            sel = [i for i, n in enumerate(annotations.names) if BOX_CLASS.get(n) == cls]
            canvas.fill([corners[i] for i in sel], CLASS_ID[cls])
    red = sorted({tl.lane_id for tl in traffic_lights if tl.is_red and tl.lane_id in map_api.lanes})
    canvas.fill([lane_polygon(i) for i in red], CLASS_ID["red_lane"])
    return canvas.image


def agent_targets(annotations: Annotations, range_m: float, max_agents: int, center_x: float = 0.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(agent_states float32 (N, 5), agent_labels float32 (N,)): nearest vehicles in the BEV square, padded."""
    states = np.zeros((max_agents, len(AGENT_STATE_COLUMNS)), dtype=np.float32)
    labels = np.zeros(max_agents, dtype=np.float32)
    boxes = np.asarray(annotations.boxes, dtype=np.float64).reshape(-1, 7)
    veh = np.array([n == "vehicle" for n in annotations.names], dtype=bool)
    b = boxes[veh]
    b = b[(np.abs(b[:, 0] - center_x) <= range_m) & (np.abs(b[:, 1]) <= range_m)]
    b = b[np.argsort(np.hypot(b[:, 0], b[:, 1]), kind="stable")][:max_agents]
    k = len(b)
    states[:k] = np.stack([b[:, 0], b[:, 1], wrap_angle(b[:, 6]), b[:, 3], b[:, 4]], axis=1) if k else states[:0]
    labels[:k] = 1.0
    return states, labels


class TargetBuilder:
    """``TargetBuilder(cfg)(scenes) -> {key: array (B, ...)}`` with ``TARGET_KEYS`` (see the module docstring)."""

    def __init__(self, cfg: FeatureConfig):
        if cfg.targets.bev_pixels < 1 or cfg.targets.max_agents < 0:
            raise ValueError(f"features.targets needs bev_pixels >= 1 and max_agents >= 0, got {cfg.targets}")
        self.cfg = cfg
        self.shapes = target_shapes(cfg)

    def build_one(self, scene: Scene) -> dict[str, np.ndarray]:
        """Targets of one scene without the batch dimension."""
        if not isinstance(scene, Scene):
            raise TypeError(f"targets are built from a Scene, got {type(scene).__name__}")
        frame = scene.current_frame
        range_m, center_x = self.cfg.lidar.range_m, self.cfg.lidar.center_x_m
        states, labels = agent_targets(frame.annotations, range_m, self.cfg.targets.max_agents, center_x)
        return {
            "trajectory": scene.get_future_trajectory(TRAJECTORY_POSES).poses.astype(np.float32),
            "bev_semantic_map": bev_semantic_map(scene.map_api, frame.ego_status.ego_pose, frame.annotations,
                                                 frame.traffic_lights, range_m, self.cfg.targets.bev_pixels,
                                                 center_x),
            "agent_states": states,
            "agent_labels": labels,
        }

    def __call__(self, scenes: list[Scene]) -> dict[str, np.ndarray]:
        if isinstance(scenes, Scene):
            raise TypeError("TargetBuilder takes a list of Scene; wrap a single scene as [scene] (or call build_one)")
        per = [self.build_one(s) for s in scenes]
        return {k: (np.stack([t[k] for t in per]) if per else np.zeros((0, *self.shapes[k]))).astype(
            TARGET_DTYPES[k], copy=False) for k in TARGET_KEYS}
