"""nuScenes through the official devkit: evaluation samples, the logged future, obstacles and zero-shot inputs.

The conventions (docs/EVALUATION.md, "nuScenes open-loop planning"):

- samples: key frames with 6 later key frames in their scene (the last 6 of every scene are dropped);
- the reference pose of a sample is the ego_pose of its LIDAR_TOP key-frame sample_data; the ground truth is the
  next 6 samples' LIDAR_TOP ego poses in that frame (x forward, y left; full 3-D inverse of the reference pose);
- obstacles at step k: every annotation of the k-th future sample, in the same frame, length = size[1],
  width = size[0], rotated by its yaw.

Zero-shot inputs map the six cameras onto our names by viewing angle (:data:`CAMERA_MAP`), keep their real
intrinsics / extrinsics, move the LIDAR_TOP key-frame sweep into the ego frame, derive velocity / acceleration from
the key-frame ego poses by backward differences and the driving command from the logged 3 s endpoint (as the
standard protocol does). The devkit is imported lazily: it is an optional extra.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from latentvla.data.navsim_source import quaternion_matrix  # one (w, x, y, z) convention for every source
from latentvla.eval.nuscenes_metrics import HORIZON, StepObstacles
from latentvla.schema import (
    NUM_HISTORY_FRAMES,
    AgentInput,
    Camera,
    EgoStatus,
    Lidar,
    command_one_hot,
    global_to_local,
    wrap_angle,
)

VERSIONS: tuple[str, ...] = ("v1.0-mini", "v1.0-trainval")
# nuScenes camera -> our name by yaw: NAVSIM's l0/r0 look at +-55 deg, l1/r1 at +-90, l2/r2 at +-125, b0 at 180;
# nuScenes' front-left/right look at +-55 deg and back-left/right at +-110 deg (nearer 125 than 90).
CAMERA_MAP: dict[str, str] = {"CAM_FRONT": "cam_f0", "CAM_FRONT_LEFT": "cam_l0", "CAM_FRONT_RIGHT": "cam_r0",
                              "CAM_BACK_LEFT": "cam_l2", "CAM_BACK_RIGHT": "cam_r2", "CAM_BACK": "cam_b0"}
LIDAR_CHANNEL = "LIDAR_TOP"
COMMAND_THRESHOLD_M = 2.0  # |y| of the 3 s logged endpoint (y left) at or beyond which the command turns
INSTALL_HINT = ('pip install -e ".[nuscenes]" && pip install --no-deps nuscenes-devkit==1.2.0 '
                '(the devkit pins numpy<2, so it is installed without its dependency pins)')


class NuScenesError(ValueError):
    """A bad dataroot, version, split or sample: the message names the item and what to do."""


def import_devkit() -> Any:
    """The ``nuscenes`` package, or a clear error with the install lines."""
    try:
        import nuscenes  # noqa: F401
        from nuscenes.nuscenes import NuScenes  # noqa: F401
    except ImportError as e:
        raise NuScenesError(f"nuScenes evaluation needs the nuscenes-devkit ({e}); install it with: "
                            f"{INSTALL_HINT}") from None
    import nuscenes

    return nuscenes


def load_nuscenes(dataroot: str | Path, version: str) -> Any:
    """``NuScenes(version, dataroot)`` after checking both exist (the devkit only asserts)."""
    root = Path(dataroot)
    if version not in VERSIONS:
        raise NuScenesError(f"unknown nuScenes version '{version}'; valid: {list(VERSIONS)}")
    if not root.is_dir():
        raise NuScenesError(f"nuScenes dataroot {root} does not exist")
    if not (root / version).is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise NuScenesError(f"nuScenes dataroot {root} has no '{version}' table directory (found: {have or 'none'})")
    import_devkit()
    from nuscenes.nuscenes import NuScenes

    with contextlib.redirect_stdout(io.StringIO()):
        return NuScenes(version=version, dataroot=str(root), verbose=False)


def split_scene_names(version: str, split: str) -> list[str]:
    """Scene names of ``split`` from the devkit's official splits; on ``v1.0-mini``, ``val`` / ``train`` mean
    ``mini_val`` / ``mini_train``."""
    import_devkit()
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    mini = version == "v1.0-mini"
    alias = {"val": "mini_val", "train": "mini_train"} if mini else {}
    valid = ["val", "train", "mini_val", "mini_train"] if mini else ["val", "train", "train_detect", "train_track"]
    if split not in valid:
        raise NuScenesError(f"unknown split '{split}' for {version}; valid: {valid}")
    return list(splits[alias.get(split, split)])


def yaw_of(rotation: np.ndarray) -> float:
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


@dataclass
class Pose:
    """A global ego pose: rotation (3, 3), translation (3,), timestamp (us)."""

    rotation: np.ndarray
    translation: np.ndarray
    timestamp: int

    @property
    def yaw(self) -> float:
        return yaw_of(self.rotation)

    @property
    def pose2d(self) -> np.ndarray:
        return np.array([self.translation[0], self.translation[1], self.yaw])

    def to_local(self, rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A global rotation / translation in this pose's frame."""
        return self.rotation.T @ rotation, self.rotation.T @ (np.asarray(translation, dtype=np.float64)
                                                              - self.translation)


def driving_command(gt: np.ndarray) -> str:
    """left / right / straight from the logged endpoint at 3 s: y >= 2 m left, y <= -2 m right (our y left)."""
    y = float(np.asarray(gt)[HORIZON - 1, 1])
    return "left" if y >= COMMAND_THRESHOLD_M else "right" if y <= -COMMAND_THRESHOLD_M else "straight"


class NuScenesSource:
    """One version and split of a nuScenes dataroot, read through the devkit's tables."""

    def __init__(self, dataroot: str | Path, version: str, split: str):
        self.dataroot, self.version, self.split = Path(dataroot), version, split
        self.nusc = load_nuscenes(dataroot, version)
        names = set(split_scene_names(version, split))
        self.scenes = sorted((s for s in self.nusc.scene if s["name"] in names), key=lambda s: s["name"])
        self.scene_samples: dict[str, list[str]] = {s["token"]: self._chain(s) for s in self.scenes}
        self.position: dict[str, tuple[str, int]] = {t: (st, i) for st, toks in self.scene_samples.items()
                                                      for i, t in enumerate(toks)}
        self._motion: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _chain(self, scene: dict) -> list[str]:
        tokens, tok = [], scene["first_sample_token"]
        while tok:
            tokens.append(tok)
            tok = self.nusc.get("sample", tok)["next"]
        return tokens

    # --- evaluation samples, ground truth, obstacles -------------------------------------------------------------
    def eval_tokens(self) -> list[str]:
        """Key frames with ``HORIZON`` later samples in their scene, scenes in name order."""
        return [t for s in self.scenes for t in self.scene_samples[s["token"]][:-HORIZON]]

    def _check(self, token: str) -> tuple[list[str], int]:
        if token not in self.position:
            raise NuScenesError(f"sample token '{token}' is not in split '{self.split}' of {self.version}")
        scene, i = self.position[token]
        return self.scene_samples[scene], i

    def pose(self, token: str) -> Pose:
        """Ego pose of the sample's LIDAR_TOP key-frame sample_data (the reference of every quantity)."""
        sample = self.nusc.get("sample", token)
        if LIDAR_CHANNEL not in sample["data"]:
            raise NuScenesError(f"sample {token} has no {LIDAR_CHANNEL} key-frame sample_data")
        sd = self.nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        ep = self.nusc.get("ego_pose", sd["ego_pose_token"])
        return Pose(quaternion_matrix(ep["rotation"]), np.asarray(ep["translation"], dtype=np.float64),
                    int(sd["timestamp"]))

    def future_tokens(self, token: str) -> list[str]:
        samples, i = self._check(token)
        future = samples[i + 1: i + 1 + HORIZON]
        if len(future) < HORIZON:
            raise NuScenesError(f"sample {token} has {len(future)} later samples in its scene, {HORIZON} needed")
        return future

    def ground_truth(self, token: str) -> np.ndarray:
        """(6, 3) logged future poses (x, y, heading) in the sample's ego frame."""
        ref = self.pose(token)
        out = np.empty((HORIZON, 3))
        for k, fut in enumerate(self.future_tokens(token)):
            p = self.pose(fut)
            rot, t = ref.to_local(p.rotation, p.translation)
            out[k] = t[0], t[1], yaw_of(rot)
        return out

    def obstacles(self, token: str) -> list[StepObstacles]:
        """All annotations of each of the 6 future samples, in the sample's ego frame (x, y, yaw, length, width)."""
        ref = self.pose(token)
        steps = []
        for fut in self.future_tokens(token):
            boxes, cats = [], []
            for ann_token in self.nusc.get("sample", fut)["anns"]:
                ann = self.nusc.get("sample_annotation", ann_token)
                rot, t = ref.to_local(quaternion_matrix(ann["rotation"]), ann["translation"])
                w, length = float(ann["size"][0]), float(ann["size"][1])
                boxes.append((t[0], t[1], yaw_of(rot), length, w))
                cats.append(ann["category_name"])
            steps.append(StepObstacles(np.array(boxes, dtype=np.float64).reshape(-1, 5), cats))
        return steps

    # --- ego motion --------------------------------------------------------------------------------------------
    def motion(self, scene_token: str) -> tuple[np.ndarray, np.ndarray]:
        """Per key frame of a scene: velocity (N, 2) and acceleration (N, 2), each in that frame's ego frame.
        Backward differences over the key frames (past only); a scene's first frame(s), where the difference is
        undefined, copy the first defined value (zero for a one-frame scene)."""
        if scene_token in self._motion:
            return self._motion[scene_token]
        poses = [self.pose(t) for t in self.scene_samples[scene_token]]
        n = len(poses)
        vel, acc = np.zeros((n, 2)), np.zeros((n, 2))
        for i in range(1, n):
            dt = (poses[i].timestamp - poses[i - 1].timestamp) * 1e-6
            d = poses[i].translation[:2] - poses[i - 1].translation[:2]
            c, s = np.cos(poses[i].yaw), np.sin(poses[i].yaw)
            vel[i] = np.array([c * d[0] + s * d[1], -s * d[0] + c * d[1]]) / max(dt, 1e-6)
        if n > 1:
            vel[0] = vel[1]
        for i in range(2, n):
            dt = (poses[i].timestamp - poses[i - 1].timestamp) * 1e-6
            a = poses[i - 1].yaw - poses[i].yaw  # the previous velocity rotated into this frame
            prev = np.array([np.cos(a) * vel[i - 1, 0] - np.sin(a) * vel[i - 1, 1],
                             np.sin(a) * vel[i - 1, 0] + np.cos(a) * vel[i - 1, 1]])
            acc[i] = (vel[i] - prev) / max(dt, 1e-6)
        if n > 2:
            acc[:2] = acc[2]
        self._motion[scene_token] = (vel, acc)
        return vel, acc

    # --- zero-shot agent input ---------------------------------------------------------------------------------
    def cameras(self, token: str, load: tuple[str, ...] | None = ()) -> dict[str, Camera]:
        """The six cameras under our names with real intrinsics / extrinsics; images (RGB uint8) of ``load``
        (our names; None = all)."""
        sample = self.nusc.get("sample", token)
        out = {}
        for channel, name in CAMERA_MAP.items():
            if channel not in sample["data"]:
                continue
            sd = self.nusc.get("sample_data", sample["data"][channel])
            cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            image = self._image(sd["filename"]) if load is None or name in load else None
            out[name] = Camera(name=name, intrinsics=np.asarray(cs["camera_intrinsic"], dtype=np.float64),
                               sensor2ego_rotation=quaternion_matrix(cs["rotation"]),
                               sensor2ego_translation=np.asarray(cs["translation"], dtype=np.float64),
                               image=image, width=int(sd["width"]), height=int(sd["height"]))
        return out

    def _image(self, filename: str) -> np.ndarray:
        path = self.dataroot / filename
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise NuScenesError(f"camera image {path} is missing or unreadable")
        return np.ascontiguousarray(img[:, :, ::-1])

    def lidar(self, token: str) -> Lidar:
        """The LIDAR_TOP key-frame sweep in the ego frame: float32 (N, 5) x, y, z, intensity, ring."""
        sample = self.nusc.get("sample", token)
        sd = self.nusc.get("sample_data", sample["data"][LIDAR_CHANNEL])
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        path = self.dataroot / sd["filename"]
        if not path.is_file():
            raise NuScenesError(f"LiDAR sweep {path} is missing")
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % 5:
            raise NuScenesError(f"LiDAR sweep {path} is not float32 (N, 5) x, y, z, intensity, ring")
        pts = raw.reshape(-1, 5).copy()
        xyz = pts[:, :3].astype(np.float64) @ quaternion_matrix(cs["rotation"]).T + np.asarray(cs["translation"])
        pts[:, :3] = xyz.astype(np.float32)
        return Lidar(pts)

    def agent_input(self, token: str, sensors: str = "current", cameras: tuple[str, ...] | None = None,
                    ego_status: bool = True) -> AgentInput:
        """What a planner sees at ``token``: 4 ego statuses at 2 Hz (current last; previous key frames, padded
        with the scene's first), relative to the current pose, each velocity / acceleration in its own frame (zero
        without ``ego_status``), the command derived from the logged future; sensors of the current frame
        (``current``), of every history frame (``history``) or none. ``cameras``: images to load (None: all)."""
        samples, i = self._check(token)
        scene_token = self.position[token][0]
        vel, acc = self.motion(scene_token)
        one_hot = command_one_hot(driving_command(self.ground_truth(token)))
        origin = self.pose(token).pose2d
        history = [max(j, 0) for j in range(i - NUM_HISTORY_FRAMES + 1, i + 1)]
        statuses, cams, lidars = [], [], []
        for n, j in enumerate(history):
            rel = global_to_local(self.pose(samples[j]).pose2d[None], origin)[0]
            rel[2] = float(wrap_angle(rel[2]))
            v, a = (vel[j], acc[j]) if ego_status else (np.zeros(2), np.zeros(2))
            statuses.append(EgoStatus(rel.astype(np.float32), v.astype(np.float32), a.astype(np.float32),
                                      one_hot.copy(), False))
            with_sensors = sensors == "history" or (sensors == "current" and n == len(history) - 1)
            cams.append(self.cameras(samples[j], cameras) if with_sensors else {})
            lidars.append(self.lidar(samples[j]) if with_sensors else None)
        return AgentInput(ego_statuses=statuses, cameras=cams, lidars=lidars, token=token)
