"""A tiny nuScenes database in the real v1.0-mini JSON schema (all 13 tables, real field names), with key-frame
camera JPEGs, LIDAR_TOP ``.pcd.bin`` sweeps and a map PNG, for tests that load it through the official devkit.

Scenes are given as global ego poses (x, y, yaw) at 2 Hz and annotations in the global frame; cameras and the
LiDAR carry nuScenes-like extrinsics (cameras at yaw 0, +-55, +-110, 180 deg; LIDAR_TOP rotated -90 deg about z).
Every sample_data has its own ego_pose record: camera records are taken 10 ms after the LiDAR and 0.1 m further,
so code that reads a camera's ego pose instead of LIDAR_TOP's is caught.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

CATEGORIES = (  # real nuScenes(-lidarseg) category names in index order
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle",
    "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck", "flat.driveable_surface",
    "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade", "static.other", "static.vegetation",
    "vehicle.ego",
)
CAMERAS = {"CAM_FRONT": 0.0, "CAM_FRONT_RIGHT": -55.0, "CAM_BACK_RIGHT": -110.0, "CAM_BACK": 180.0,
           "CAM_BACK_LEFT": 110.0, "CAM_FRONT_LEFT": 55.0}  # yaw in degrees
CAMERA_COLORS = {name: (40 * i + 20, 255 - 40 * i, 100) for i, name in enumerate(CAMERAS)}  # RGB fill per camera
LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)
IMAGE_W, IMAGE_H = 160, 90
T0_US = 1533151603547590
CAMERA_DT_US = 10_000
CAMERA_SHIFT_M = 0.1


def token(*parts: object) -> str:
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def yaw_quaternion(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _quaternion(matrix: np.ndarray) -> list[float]:
    x, y, z, w = Rotation.from_matrix(matrix).as_quat()
    return [float(w), float(x), float(y), float(z)]


def camera_rotation(yaw_deg: float) -> np.ndarray:
    """Camera (x right, y down, z forward) -> ego rotation of a camera looking at ``yaw_deg``."""
    front = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix() @ front


def lidar_rotation() -> np.ndarray:
    return Rotation.from_euler("z", -90.0, degrees=True).as_matrix()


def intrinsics() -> list[list[float]]:
    return [[126.6, 0.0, IMAGE_W / 2], [0.0, 126.6, IMAGE_H / 2], [0.0, 0.0, 1.0]]


@dataclass
class Annotation:
    """One box of one key frame, global frame; size is (width, length, height) as nuScenes stores it."""

    frame: int
    instance: str
    category: str
    x: float
    y: float
    yaw: float
    size: tuple[float, float, float]


@dataclass
class SceneSpec:
    name: str
    poses: list[tuple[float, float, float]]  # LIDAR_TOP ego pose (x, y, yaw) per key frame, 0.5 s apart
    annotations: list[Annotation] = field(default_factory=list)
    lidar_points: np.ndarray | None = None  # (N, 5) in the LiDAR frame, written for every key frame


def _sample_data(sample: str, channel: str, frame: int, scene: SceneSpec, ts: int, tables: dict) -> dict:
    cam = channel != "LIDAR_TOP"
    x, y, yaw = scene.poses[frame]
    if cam:  # a camera's own ego pose: 10 ms later, 0.1 m further along the heading
        x, y, ts = x + CAMERA_SHIFT_M * np.cos(yaw), y + CAMERA_SHIFT_M * np.sin(yaw), ts + CAMERA_DT_US
    ep = {"token": token("ego_pose", scene.name, frame, channel), "timestamp": ts,
          "rotation": yaw_quaternion(yaw), "translation": [float(x), float(y), 0.0]}
    tables["ego_pose"].append(ep)
    ext = "jpg" if cam else "pcd.bin"
    return {"token": token("sample_data", scene.name, frame, channel), "sample_token": sample,
            "ego_pose_token": ep["token"], "calibrated_sensor_token": token("calibrated_sensor", channel),
            "timestamp": ts, "fileformat": "jpg" if cam else "pcd", "is_key_frame": True,
            "height": IMAGE_H if cam else 0, "width": IMAGE_W if cam else 0,
            "filename": f"samples/{channel}/n015-2018-07-24-11-22-45+0800__{channel}__{ts}.{ext}",
            "prev": "", "next": ""}


def _write_files(root: Path, record: dict, scene: SceneSpec, channel: str) -> None:
    path = root / record["filename"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if channel == "LIDAR_TOP":
        pts = scene.lidar_points if scene.lidar_points is not None else np.zeros((0, 5))
        np.asarray(pts, dtype=np.float32).tofile(path)
        return
    img = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8)
    img[:] = CAMERA_COLORS[channel]
    cv2.imwrite(str(path), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])


def write_nuscenes_db(root: str | Path, scenes: list[SceneSpec], version: str = "v1.0-mini") -> Path:
    """Write the tables under ROOT/VERSION and the sensor files under ROOT/samples; returns ROOT."""
    root = Path(root)
    tables: dict[str, list] = {name: [] for name in (
        "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
        "sample_annotation", "sample_data", "scene", "sensor", "visibility")}
    tables["attribute"] = [{"token": token("attribute", n), "name": n, "description": n} for n in (
        "vehicle.moving", "vehicle.stopped", "vehicle.parked", "pedestrian.standing", "cycle.without_rider")]
    tables["visibility"] = [{"description": f"visibility of whole object is between {lo} and {hi}%",
                             "token": str(i + 1), "level": f"v{lo}-{hi}"}
                            for i, (lo, hi) in enumerate(((0, 40), (40, 60), (60, 80), (80, 100)))]
    tables["category"] = [{"token": token("category", n), "name": n, "description": n, "index": i}
                          for i, n in enumerate(CATEGORIES)]
    channels = [*CAMERAS, "LIDAR_TOP"]
    for ch in channels:
        cam = ch != "LIDAR_TOP"
        tables["sensor"].append({"token": token("sensor", ch), "channel": ch, "modality": "camera" if cam else "lidar"})
        rot = camera_rotation(CAMERAS[ch]) if cam else lidar_rotation()
        trans = ([1.5 * np.cos(np.radians(CAMERAS[ch])) + 1.0, 0.5 * np.sin(np.radians(CAMERAS[ch])), 1.5]
                 if cam else list(LIDAR_TRANSLATION))
        tables["calibrated_sensor"].append({"token": token("calibrated_sensor", ch), "sensor_token": token("sensor", ch),
                                            "translation": [float(v) for v in trans], "rotation": _quaternion(rot),
                                            "camera_intrinsic": intrinsics() if cam else []})
    log = token("log", "singapore")
    tables["log"].append({"token": log, "logfile": "n015-2018-07-24-11-22-45+0800", "vehicle": "n015",
                          "date_captured": "2018-07-24", "location": "singapore-onenorth"})
    tables["map"].append({"category": "semantic_prior", "token": token("map"), "filename": f"maps/{token('map')}.png",
                          "log_tokens": [log]})
    (root / "maps").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "maps" / f"{token('map')}.png"), np.zeros((20, 20), np.uint8))
    ts0 = T0_US
    for scene in scenes:
        scene_token = token("scene", scene.name)
        samples = [token("sample", scene.name, f) for f in range(len(scene.poses))]
        last: dict[str, dict] = {}
        for f, sample in enumerate(samples):
            ts = ts0 + 500_000 * f
            tables["sample"].append({"token": sample, "timestamp": ts, "prev": samples[f - 1] if f else "",
                                     "next": samples[f + 1] if f + 1 < len(samples) else "",
                                     "scene_token": scene_token})
            for ch in channels:
                rec = _sample_data(sample, ch, f, scene, ts, tables)
                if ch in last:
                    rec["prev"], last[ch]["next"] = last[ch]["token"], rec["token"]
                last[ch] = rec
                tables["sample_data"].append(rec)
                _write_files(root, rec, scene, ch)
        ts0 += 500_000 * (len(scene.poses) + 40)
        tables["scene"].append({"token": scene_token, "log_token": log, "nbr_samples": len(samples),
                                "first_sample_token": samples[0], "last_sample_token": samples[-1],
                                "name": scene.name, "description": "tiny test scene"})
        by_instance: dict[str, list[Annotation]] = {}
        for a in scene.annotations:
            by_instance.setdefault(a.instance, []).append(a)
        for inst, anns in by_instance.items():
            anns = sorted(anns, key=lambda a: a.frame)
            toks = [token("sample_annotation", scene.name, inst, a.frame) for a in anns]
            for i, a in enumerate(anns):
                tables["sample_annotation"].append({
                    "token": toks[i], "sample_token": samples[a.frame],
                    "instance_token": token("instance", scene.name, inst), "visibility_token": "4",
                    "attribute_tokens": [], "translation": [float(a.x), float(a.y), 0.8],
                    "size": [float(v) for v in a.size], "rotation": yaw_quaternion(a.yaw),
                    "prev": toks[i - 1] if i else "", "next": toks[i + 1] if i + 1 < len(toks) else "",
                    "num_lidar_pts": 10, "num_radar_pts": 0})
            tables["instance"].append({"token": token("instance", scene.name, inst),
                                       "category_token": token("category", anns[0].category),
                                       "nbr_annotations": len(anns), "first_annotation_token": toks[0],
                                       "last_annotation_token": toks[-1]})
    out = root / version
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (out / f"{name}.json").write_text(json.dumps(rows, indent=0))
    return root
