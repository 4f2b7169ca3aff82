"""Reference and baseline agents: constant velocity, log replay (the human / expert future), PDM-Closed, and
trajectories produced elsewhere (``predictions:FILE.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from latentvla.agents.base import Agent
from latentvla.eval.scene_inputs import REFERENCE_INTERVAL, SceneInputs
from latentvla.schema import TRAJECTORY_POSES, AgentInput, Trajectory

INTERVAL = 0.5


class ConstantVelocityAgent(Agent):
    """NAVSIM's ``ConstantVelocityAgent``: the current speed held straight ahead for 4 s."""

    name = "constant-velocity"

    def compute_trajectory(self, agent_input: AgentInput, scene: SceneInputs | None = None) -> Trajectory:
        v = agent_input.current.ego_velocity
        speed = math.hypot(float(v[0]), float(v[1]))
        t = np.arange(1, TRAJECTORY_POSES + 1) * INTERVAL
        return Trajectory(np.stack([speed * t, np.zeros_like(t), np.zeros_like(t)], 1))


class LogReplayAgent(Agent):
    """The logged future of the ego (NAVSIM's ``HumanAgent``): the expert driver of the embedded world."""

    name = "log-replay"
    requires_scene = True

    def compute_trajectory(self, agent_input: AgentInput, scene: SceneInputs | None = None) -> Trajectory:
        if scene is None:
            raise ValueError("log-replay needs the privileged scene (requires_scene)")
        return Trajectory(scene.human_poses)


class PDMClosedAgent(Agent):
    """The PDM-Closed reference planner (privileged: map, route, current detections) at 8 poses x 0.5 s."""

    name = "pdm-closed"
    requires_scene = True

    def compute_trajectory(self, agent_input: AgentInput, scene: SceneInputs | None = None) -> Trajectory:
        if scene is None:
            raise ValueError("pdm-closed needs the privileged scene (requires_scene)")
        if scene.reference_poses is None:
            raise ValueError(f"scene {scene.token}: the metric cache holds no PDM-Closed plan")
        step = round(INTERVAL / REFERENCE_INTERVAL)
        return Trajectory(scene.reference_poses[step - 1:: step][:TRAJECTORY_POSES])


class PredictionsAgent(Agent):
    """Trajectories computed elsewhere: ``{"<scene token>": [[x, y, heading], ...], ...}`` (current ego frame,
    0.5 s apart). Entries are validated by the scorer, so a malformed one marks its scene invalid."""

    requires_scene = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = f"predictions:{self.path.name}"
        if not self.path.is_file():
            raise FileNotFoundError(f"predictions file {self.path} not found")
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"predictions file {self.path} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"predictions file {self.path} must hold an object {{token: [[x, y, heading], ...]}}")
        self.predictions: dict = data

    def check_tokens(self, tokens: list[str]) -> None:
        missing = [t for t in tokens if t not in self.predictions]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise KeyError(f"predictions file {self.path} has no trajectory for scene token '{missing[0]}'"
                           f"{', ' + ', '.join(repr(m) for m in missing[1:3]) if len(missing) > 1 else ''}{more}; "
                           f"it must cover every scene of the split")

    def compute_trajectory(self, agent_input: AgentInput, scene: SceneInputs | None = None) -> Trajectory:
        if agent_input.token not in self.predictions:
            raise KeyError(f"predictions file {self.path} has no trajectory for scene token '{agent_input.token}'")
        return Trajectory(np.asarray(self.predictions[agent_input.token], dtype=np.float64))
