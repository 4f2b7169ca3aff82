"""One closed-loop rollout: restart the world at a scene, let the agent replan at 2 Hz from freshly rendered
sensors, track each plan with the scorer's LQR + kinematic bicycle at 10 Hz, and record what happened.

The first plan is made from the logged ``AgentInput`` (exactly what open-loop scoring feeds the agent); every later
one from an ``AgentInput`` built the same way from the simulation: the last four 2 Hz ego statuses (current frame
last, poses in the current rear-axle frame, the world's route command) and the cameras and LiDAR rendered by the
generator's own renderers from the world as it now is (JPEG datasets get the same JPEG round trip).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from latentvla.closedloop.sim import ClosedLoopSim
from latentvla.data.store import SceneStore
from latentvla.eval.interpolate import trajectory_states
from latentvla.eval.observation import Tracks
from latentvla.eval.state import StateIndex
from latentvla.eval.tracker import propagate, track, velocity_curvature_profiles
from latentvla.schema import (
    AgentInput,
    Camera,
    EgoStatus,
    Lidar,
    command_one_hot,
    global_to_local,
    local_to_global,
)
from latentvla.world import expert
from latentvla.world.record import BOX_NAME, STEPS_PER_FRAME, boxes_for_render, encode_image
from latentvla.world.render.camera import prepare_scene, render_camera
from latentvla.world.render.lidar import cast_lidar
from latentvla.world.scene_render import ground_layers, render_scene
from latentvla.world.sensors import SensorConfig, make_rig
from latentvla.world.sim import DT

HISTORY = 4  # ego statuses an agent sees (NAVSIM: 4 frames at 2 Hz, current last)
EXPERT = "expert"


@dataclass
class RolloutRecord:
    """What a rollout leaves for scoring and drawing: 10 Hz ego states and tracks from the restart on."""

    token: str
    family: str
    log: str
    t0: float  # world time of the restart (the light programme is a function of it)
    ego: np.ndarray  # (T, 11) rear-axle states, StateIndex order
    tracks: Tracks  # every other road user and object, (J, T)
    route: list[str]  # roadblock ids
    lights: dict  # the light programme (``light_state``)
    plans: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (step, global poses (8, 3)) per replan

    @property
    def steps(self) -> int:
        return len(self.ego)


class _Recorder:
    """Others' boxes per step, turned into ``Tracks`` (global frame, valid while present) at the end."""

    def __init__(self, steps: int):
        self.steps = steps
        self.rows: dict[str, dict] = {}

    def add(self, sim: ClosedLoopSim, k: int) -> None:
        for a in sim.agents[1:]:
            if not a.active or a.kind not in BOX_NAME:
                continue
            row = self.rows.get(a.id)
            if row is None:
                row = self.rows[a.id] = {"name": BOX_NAME[a.kind], "length": a.length, "width": a.width,
                                         "data": np.zeros((self.steps, 5)), "valid": np.zeros(self.steps, bool)}
            x, y, h = sim.pose(a)
            row["data"][k] = (x, y, h, a.v * np.cos(h), a.v * np.sin(h))
            row["valid"][k] = True

    def tracks(self) -> Tracks:
        ids = sorted(self.rows)
        data = np.stack([self.rows[i]["data"] for i in ids]) if ids else np.zeros((0, self.steps, 5))
        heading = np.unwrap(data[..., 2], axis=-1) if ids else data[..., 2]
        return Tracks(tokens=ids, names=[self.rows[i]["name"] for i in ids],
                      length=np.array([self.rows[i]["length"] for i in ids], dtype=np.float64),
                      width=np.array([self.rows[i]["width"] for i in ids], dtype=np.float64),
                      valid=np.stack([self.rows[i]["valid"] for i in ids]) if ids else np.zeros((0, self.steps), bool),
                      x=data[..., 0], y=data[..., 1], heading=heading, vx=data[..., 3], vy=data[..., 4])


class SensorRig:
    """The dataset's cameras and LiDAR, rendered live by the generator's renderers."""

    def __init__(self, cfg: SensorConfig, map_api, props: dict):
        self.cfg = cfg
        self.rig = make_rig(cfg)
        self.layers = ground_layers(map_api)
        self.props = props

    def render(self, sim: ClosedLoopSim, lidar: bool = True) -> tuple[dict[str, Camera], Lidar | None]:
        scene = render_scene(self.layers, boxes_for_render(sim), self.props, sim.light, sim.ego_rear_axle(),
                             self.cfg.render_range)
        prepared = prepare_scene(scene)
        cams = {}
        for name, cam in self.rig.items():
            img = render_camera(cam, prepared, self.cfg.render_range)
            if self.cfg.image_format != "png":  # the dataset's images went through JPEG: so do these
                buf = np.frombuffer(encode_image(img, self.cfg), dtype=np.uint8)
                img = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
            cams[name] = Camera(name=name, intrinsics=cam.intrinsics, sensor2ego_rotation=cam.sensor2ego_rotation,
                                sensor2ego_translation=cam.sensor2ego_translation, image=img,
                                distortion=cam.distortion, width=cam.width, height=cam.height)
        return cams, Lidar(cast_lidar(scene, self.cfg).astype(np.float32, copy=False)) if lidar else None


def _global_status(state: np.ndarray, command: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    v = float(state[StateIndex.VELOCITY_X])
    return (state[:3].copy(), np.array([v, state[StateIndex.VELOCITY_Y]]),
            np.array([state[StateIndex.ACCELERATION_X], v * state[StateIndex.ANGULAR_VELOCITY]]), command)


class Rollout:
    """A scene restarted in closed loop. ``agent_sensors``: the agent's ``sensors`` mode (none | current | history),
    or ``EXPERT`` for the world's own expert driver (no agent, no rendering)."""

    def __init__(self, store: SceneStore, token: str, sensors: SensorConfig | None, agent_sensors: str,
                 reactive: bool = True, seconds: float = 15.0):
        if seconds <= 0:
            raise ValueError(f"--seconds must be > 0, got {seconds}")
        info = store.info(token)
        self.store, self.token, self.family, self.log = store, token, info["family"], info["log"]
        self.map = store.load_map(info["log"])
        state = store.load_sim_state(token)
        self.steps = int(round(seconds / DT))
        self.agent_sensors = agent_sensors
        self.k = 0
        start = ClosedLoopSim(self.map, state, None, reactive)
        if agent_sensors == EXPERT:
            self.sim = start
        else:
            self.sim = ClosedLoopSim(self.map, state, start.ego_rear_state(), reactive)
        self.t0 = self.sim.t
        self.rig = SensorRig(sensors, self.map, state.get("props", {})) if (
            agent_sensors in ("current", "history") and sensors is not None) else None
        if agent_sensors in ("current", "history") and sensors is None:
            raise ValueError("this agent needs sensors: the dataset's sensor configuration (world.yaml) is missing")
        self.ego = np.zeros((self.steps + 1, len(StateIndex)))
        self.ego[0] = self.sim.ego_rear_state()
        self.recorder = _Recorder(self.steps + 1)
        self.recorder.add(self.sim, 0)
        self.plans: list[tuple[int, np.ndarray]] = []
        self._reference = None
        self._logged_input: AgentInput | None = None
        self.history: deque = deque(maxlen=HISTORY)  # global (pose, velocity, acceleration, command)
        self.sensor_history: deque = deque(maxlen=HISTORY)  # (cameras, lidar) per 2 Hz frame
        if agent_sensors != EXPERT:
            self._logged_input = store.load_agent_input(token, sensors=agent_sensors != "none",
                                                        history_sensors=agent_sensors == "history")
            origin = self.ego[0, :3]
            for st, cams, lidar in zip(self._logged_input.ego_statuses, self._logged_input.cameras,
                                       self._logged_input.lidars):
                pose = local_to_global(np.asarray(st.ego_pose, dtype=np.float64)[None], origin)[0]
                self.history.append((pose, np.asarray(st.ego_velocity, dtype=np.float64),
                                     np.asarray(st.ego_acceleration, dtype=np.float64), st.command))
                self.sensor_history.append((cams, lidar))

    # --- the loop ------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.k >= self.steps

    @property
    def needs_plan(self) -> bool:
        return self.agent_sensors != EXPERT and not self.done and self.k % STEPS_PER_FRAME == 0

    def agent_input(self) -> AgentInput:
        """What the agent sees now (the logged input at the restart, the simulated one afterwards)."""
        if self.k == 0:
            return self._logged_input
        self.sim.relocalize()
        self.history.append(_global_status(self.ego[self.k], expert.driving_command(self.sim)))
        if self.rig is not None:
            self.sensor_history.append(self.rig.render(self.sim))
        else:
            self.sensor_history.append(({}, None))
        origin = self.history[-1][0]
        statuses, cams, lidars = [], [], []
        n = len(self.history)
        for i, ((pose, vel, acc, cmd), (c, lidar)) in enumerate(zip(self.history, self.sensor_history)):
            rel = global_to_local(pose[None], origin)[0].astype(np.float32)
            statuses.append(EgoStatus(rel, vel.astype(np.float32), acc.astype(np.float32), command_one_hot(cmd)))
            current = i == n - 1
            keep = self.agent_sensors == "history" or current
            cams.append(c if keep else {name: _without_image(cam) for name, cam in c.items()})
            lidars.append(lidar if keep else None)
        return AgentInput(statuses, cams, lidars, token=f"{self.token}@{self.k}")

    def set_plan(self, poses: np.ndarray, interval: float = 0.5) -> None:
        """Track this plan (poses in the current rear-axle frame) until the next replan."""
        state = self.ego[self.k]
        ref = trajectory_states(state, np.asarray(poses, dtype=np.float64), interval)
        velocity, _, curvature, _ = velocity_curvature_profiles(ref[None, :, : StateIndex.HEADING + 1])
        self._reference = (ref[None], velocity, curvature, self.k)
        self.plans.append((self.k, local_to_global(np.asarray(poses, dtype=np.float64), state[:3])))

    def advance(self, steps: int = STEPS_PER_FRAME) -> None:
        """Step the world (and the tracked ego) ``steps`` times at 10 Hz, or until the rollout ends."""
        for _ in range(steps):
            if self.done:
                return
            if self.agent_sensors != EXPERT:
                if self._reference is None:
                    raise RuntimeError(f"scene {self.token}: no plan to track at step {self.k} (call set_plan)")
                ref, velocity, curvature, start = self._reference
                index = min(self.k - start, ref.shape[1] - 2)
                state = self.ego[self.k][None]
                accel, rate = track(state, ref, velocity, curvature, index)
                new = propagate(state, accel, rate)[0]
                self.sim.step()  # the others react to the ego where it is now
                self.sim.set_ego_state(new)
            else:
                self.sim.step()
            self.k += 1
            self.ego[self.k] = self.sim.ego_rear_state()
            self.recorder.add(self.sim, self.k)

    def record(self) -> RolloutRecord:
        return RolloutRecord(self.token, self.family, self.log, self.t0, self.ego[: self.k + 1].copy(),
                             _sliced(self.recorder.tracks(), self.k + 1), list(self.sim.route), self.sim.lights,
                             list(self.plans))


def _without_image(cam: Camera) -> Camera:
    return Camera(cam.name, cam.intrinsics, cam.sensor2ego_rotation, cam.sensor2ego_translation, None,
                  cam.distortion, cam.width, cam.height)


def _sliced(tracks: Tracks, steps: int) -> Tracks:
    if tracks.valid.shape[1] == steps:
        return tracks
    return Tracks(tracks.tokens, tracks.names, tracks.length, tracks.width, tracks.valid[:, :steps],
                  tracks.x[:, :steps], tracks.y[:, :steps], tracks.heading[:, :steps], tracks.vx[:, :steps],
                  tracks.vy[:, :steps])
