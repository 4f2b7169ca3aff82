"""The one data model every source (embedded world, NAVSIM/OpenScene, nuScenes) produces and every stage reads.

It mirrors NAVSIM's dataclasses (``navsim/common/dataclasses.py``) so that agents and metrics port both ways:
global frame in metres; the *ego frame* has its origin at the rear axle, x forward, y left, z up; headings are
counter-clockwise radians from x. ``Frame.ego_status`` is global; ``AgentInput.ego_statuses`` are relative to the
current frame; annotations are in their own frame's ego frame. See docs/DATA.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentvla.map_api import MapAPI

DRIVING_COMMANDS: tuple[str, ...] = ("left", "straight", "right", "unknown")
CAMERA_NAMES: tuple[str, ...] = ("cam_f0", "cam_l0", "cam_l1", "cam_l2", "cam_r0", "cam_r1", "cam_r2", "cam_b0")
BOX_NAMES: tuple[str, ...] = (
    "vehicle", "pedestrian", "bicycle", "traffic_cone", "barrier", "czone_sign", "generic_object",
)
TRAFFIC_LIGHT_STATES: tuple[str, ...] = ("green", "yellow", "red", "unknown")
NUM_HISTORY_FRAMES = 4
NUM_FUTURE_FRAMES = 10
FRAME_INTERVAL_S = 0.5
TRAJECTORY_POSES = 8


@dataclass(frozen=True)
class VehicleParameters:
    """Ego vehicle geometry (nuPlan's Chrysler Pacifica, as NAVSIM's scorer uses)."""

    length: float = 5.176
    width: float = 2.297
    height: float = 1.777
    rear_axle_to_center: float = 1.461
    wheel_base: float = 3.089


EGO = VehicleParameters()


def command_one_hot(command: str) -> np.ndarray:
    if command not in DRIVING_COMMANDS:
        raise ValueError(f"unknown driving command '{command}'; valid: {list(DRIVING_COMMANDS)}")
    out = np.zeros(4, dtype=np.int64)
    out[DRIVING_COMMANDS.index(command)] = 1
    return out


def command_name(one_hot: np.ndarray) -> str:
    one_hot = np.asarray(one_hot)
    if one_hot.shape != (4,) or one_hot.sum() != 1:
        return "unknown"
    return DRIVING_COMMANDS[int(np.argmax(one_hot))]


@dataclass
class EgoStatus:
    """Pose (x, y, heading), velocity (vx, vy) and acceleration (ax, ay) in the ego frame, one-hot command."""

    ego_pose: np.ndarray
    ego_velocity: np.ndarray
    ego_acceleration: np.ndarray
    driving_command: np.ndarray
    in_global_frame: bool = False

    @property
    def command(self) -> str:
        return command_name(self.driving_command)


@dataclass
class Camera:
    """Pinhole camera (OpenCV axes: x right, y down, z forward) with its image and extrinsics to the ego frame."""

    name: str
    intrinsics: np.ndarray  # (3, 3)
    sensor2ego_rotation: np.ndarray  # (3, 3): camera axes -> ego axes
    sensor2ego_translation: np.ndarray  # (3,)
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB; None when not loaded
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(5))
    width: int = 0
    height: int = 0

    def ego_to_camera(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) ego-frame points -> (N, 3) camera-frame points."""
        return (np.asarray(points, dtype=np.float64) - self.sensor2ego_translation) @ self.sensor2ego_rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) ego-frame points -> pixel (u, v) (N, 2) and depth (N,); depth <= 0 means behind the camera."""
        cam = self.ego_to_camera(points)
        depth = cam[:, 2]
        safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        uv = (cam[:, :2] / safe[:, None]) @ self.intrinsics[:2, :2].T + self.intrinsics[:2, 2]
        return uv, depth


@dataclass
class Lidar:
    """Point cloud in the ego frame: columns x, y, z, intensity, ring (beam index)."""

    points: np.ndarray  # (N, C >= 4) float32

    def __post_init__(self) -> None:
        if self.points.ndim != 2 or self.points.shape[1] < 4:
            raise ValueError(f"LiDAR points must be (N, >=4), got {self.points.shape}")


@dataclass
class Annotations:
    """Boxes of other road users in the frame's ego frame: (x, y, z, length, width, height, heading)."""

    boxes: np.ndarray  # (N, 7)
    names: list[str]
    velocity_3d: np.ndarray  # (N, 3) in the ego frame
    track_tokens: list[str]
    brake_lights: np.ndarray | None = None  # (N,) bool, privileged extra of the embedded world

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TrafficLightStatus:
    lane_id: str  # the lane connector it controls (NAVSIM: lane_connector_id)
    state: str  # green | yellow | red | unknown

    @property
    def is_red(self) -> bool:
        return self.state == "red"


@dataclass
class Frame:
    token: str
    timestamp: int  # microseconds
    ego_status: EgoStatus  # global frame
    annotations: Annotations
    traffic_lights: list[TrafficLightStatus]
    roadblock_ids: list[str]  # the route
    cameras: dict[str, Camera] = field(default_factory=dict)
    lidar: Lidar | None = None


@dataclass
class SceneMetadata:
    log_name: str
    scene_token: str
    map_name: str
    initial_token: str
    family: str
    split: str
    command: str
    num_history_frames: int = NUM_HISTORY_FRAMES
    num_future_frames: int = NUM_FUTURE_FRAMES


@dataclass
class Trajectory:
    """Poses (x, y, heading) in the current ego frame at ``interval_length`` steps (NAVSIM: 8 x 0.5 s)."""

    poses: np.ndarray
    interval_length: float = FRAME_INTERVAL_S

    def __post_init__(self) -> None:
        self.poses = np.asarray(self.poses, dtype=np.float32)
        if self.poses.ndim != 2 or self.poses.shape[1] != 3:
            raise ValueError(f"trajectory poses must be (N, 3) (x, y, heading), got shape {self.poses.shape}")

    @property
    def num_poses(self) -> int:
        return int(self.poses.shape[0])

    @property
    def time_horizon(self) -> float:
        return self.num_poses * self.interval_length

    def validate(self, num_poses: int = TRAJECTORY_POSES) -> None:
        if self.poses.shape != (num_poses, 3):
            raise ValueError(f"expected {num_poses} poses (shape ({num_poses}, 3)), got {self.poses.shape}")
        if not np.all(np.isfinite(self.poses)):
            raise ValueError("trajectory contains NaN or inf")


@dataclass
class AgentInput:
    """Everything a planner may see: history ego statuses (current frame last) and sensors. No map, tracks, future."""

    ego_statuses: list[EgoStatus]
    cameras: list[dict[str, Camera]]
    lidars: list[Lidar | None]
    token: str = ""

    @property
    def current(self) -> EgoStatus:
        return self.ego_statuses[-1]


def global_to_local(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """(N, 3) global poses -> poses relative to ``origin`` (x, y, heading); headings wrapped to (-pi, pi]."""
    poses = np.asarray(poses, dtype=np.float64)
    c, s = np.cos(origin[2]), np.sin(origin[2])
    dx, dy = poses[:, 0] - origin[0], poses[:, 1] - origin[1]
    out = np.empty_like(poses)
    out[:, 0] = c * dx + s * dy
    out[:, 1] = -s * dx + c * dy
    out[:, 2] = wrap_angle(poses[:, 2] - origin[2])
    return out


def local_to_global(poses: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Inverse of :func:`global_to_local`."""
    poses = np.asarray(poses, dtype=np.float64)
    c, s = np.cos(origin[2]), np.sin(origin[2])
    out = np.empty_like(poses)
    out[:, 0] = origin[0] + c * poses[:, 0] - s * poses[:, 1]
    out[:, 1] = origin[1] + s * poses[:, 0] + c * poses[:, 1]
    out[:, 2] = wrap_angle(poses[:, 2] + origin[2])
    return out


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


@dataclass
class Scene:
    """Privileged view of one scene: 4 history + 10 future frames, the map and the simulator restart state."""

    metadata: SceneMetadata
    frames: list[Frame]
    map_api: MapAPI
    sim_state: dict | None = None  # restart state of the current frame (embedded world only)

    @property
    def current_index(self) -> int:
        return self.metadata.num_history_frames - 1

    @property
    def current_frame(self) -> Frame:
        return self.frames[self.current_index]

    def _relative_poses(self, indices: range) -> np.ndarray:
        origin = self.current_frame.ego_status.ego_pose
        poses = np.stack([self.frames[i].ego_status.ego_pose for i in indices])
        return global_to_local(poses, origin)

    def get_future_trajectory(self, num_poses: int = TRAJECTORY_POSES) -> Trajectory:
        """The logged (expert / human) future in the current ego frame: NAVSIM's imitation target."""
        start = self.current_index + 1
        if start + num_poses > len(self.frames):
            raise ValueError(f"scene {self.metadata.scene_token} has fewer than {num_poses} future frames")
        return Trajectory(self._relative_poses(range(start, start + num_poses)))

    def get_history_trajectory(self) -> Trajectory:
        return Trajectory(self._relative_poses(range(0, self.current_index + 1)))

    def get_agent_input(self) -> AgentInput:
        """Strip everything privileged: ego statuses made relative to the current frame, sensors as loaded."""
        origin = self.current_frame.ego_status.ego_pose
        statuses = []
        for f in self.frames[: self.current_index + 1]:
            es = f.ego_status
            rel = global_to_local(es.ego_pose[None], origin)[0].astype(np.float32)
            statuses.append(EgoStatus(rel, es.ego_velocity, es.ego_acceleration, es.driving_command, False))
        history = self.frames[: self.current_index + 1]
        return AgentInput(
            ego_statuses=statuses,
            cameras=[dict(f.cameras) for f in history],
            lidars=[f.lidar for f in history],
            token=self.metadata.scene_token,
        )
