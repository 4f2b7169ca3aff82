"""The embedded world's sensor rig: NAVSIM-named pinhole cameras and a spinning LiDAR, both in the ego frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentvla.schema import CAMERA_NAMES, Camera

# Yaw (deg, CCW from ego x) and mounting position (m, ego frame, rear-axle origin) per NAVSIM camera name.
CAMERA_MOUNTS: dict[str, tuple[float, tuple[float, float, float]]] = {
    "cam_f0": (0.0, (1.9, 0.0, 1.6)),
    "cam_l0": (55.0, (1.7, 0.5, 1.6)),
    "cam_l1": (100.0, (1.0, 0.9, 1.6)),
    "cam_l2": (145.0, (0.0, 0.9, 1.6)),
    "cam_r0": (-55.0, (1.7, -0.5, 1.6)),
    "cam_r1": (-100.0, (1.0, -0.9, 1.6)),
    "cam_r2": (-145.0, (0.0, -0.9, 1.6)),
    "cam_b0": (180.0, (-1.0, 0.0, 1.6)),
}


@dataclass
class SensorConfig:
    cameras: list[str] = field(default_factory=lambda: ["cam_l0", "cam_f0", "cam_r0", "cam_b0"])
    image_width: int = 192
    image_height: int = 96
    front_fov_deg: float = 70.0  # horizontal field of view of cam_f0
    side_fov_deg: float = 90.0  # all other cameras
    image_format: str = "png"  # png (lossless, keeps tiny lamps crisp) or jpg
    jpeg_quality: int = 92
    lidar_beams: int = 16
    lidar_elevation_min_deg: float = -20.0
    lidar_elevation_max_deg: float = 5.0
    lidar_azimuth_step_deg: float = 1.0
    lidar_max_range: float = 70.0
    lidar_height: float = 1.9
    render_range: float = 90.0  # objects/markings farther than this are not drawn

    def validate(self) -> None:
        bad = [c for c in self.cameras if c not in CAMERA_NAMES]
        if bad:
            raise ValueError(f"unknown camera(s) {bad}; valid cameras: {list(CAMERA_NAMES)}")
        if not self.cameras:
            raise ValueError("sensors.cameras must name at least one camera")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"sensors.image_format '{self.image_format}' invalid; valid: ['png', 'jpg']")
        if self.image_width < 8 or self.image_height < 8:
            raise ValueError("sensors.image_width/image_height must be at least 8 pixels")
        if self.lidar_beams < 1 or self.lidar_azimuth_step_deg <= 0:
            raise ValueError("sensors.lidar_beams must be >= 1 and lidar_azimuth_step_deg > 0")


def camera_rotation(yaw_deg: float) -> np.ndarray:
    """Camera (x right, y down, z forward) -> ego (x fwd, y left, z up) rotation for a level camera at ``yaw``."""
    yaw = np.deg2rad(yaw_deg)
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    return np.stack([right, down, forward], axis=1)  # columns: camera axes expressed in the ego frame


def make_camera(name: str, cfg: SensorConfig) -> Camera:
    """The rig's camera ``name`` without an image (intrinsics + extrinsics)."""
    if name not in CAMERA_MOUNTS:
        raise ValueError(f"unknown camera '{name}'; valid cameras: {list(CAMERA_NAMES)}")
    yaw, pos = CAMERA_MOUNTS[name]
    fov = cfg.front_fov_deg if name == "cam_f0" else cfg.side_fov_deg
    w, h = cfg.image_width, cfg.image_height
    f = (w / 2.0) / np.tan(np.deg2rad(fov) / 2.0)
    k = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
    return Camera(
        name=name,
        intrinsics=k,
        sensor2ego_rotation=camera_rotation(yaw),
        sensor2ego_translation=np.array(pos, dtype=np.float64),
        width=w,
        height=h,
    )


def make_rig(cfg: SensorConfig) -> dict[str, Camera]:
    return {name: make_camera(name, cfg) for name in cfg.cameras}


def lidar_ray_directions(cfg: SensorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (R, 3) in the ego frame and their beam (ring) index (R,)."""
    elev = np.deg2rad(np.linspace(cfg.lidar_elevation_min_deg, cfg.lidar_elevation_max_deg, cfg.lidar_beams))
    az = np.deg2rad(np.arange(0.0, 360.0, cfg.lidar_azimuth_step_deg))
    e, a = np.meshgrid(elev, az, indexing="ij")
    dirs = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1).reshape(-1, 3)
    ring = np.repeat(np.arange(cfg.lidar_beams), az.size)
    return dirs, ring
