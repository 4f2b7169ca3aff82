"""The Agent contract (NAVSIM's ``AbstractAgent``, trimmed to what evaluation needs).

An agent turns an ``AgentInput`` (ego history and sensors, never the map, tracks or future) into a ``Trajectory``
of 8 poses at 0.5 s in the current rear-axle frame. Privileged agents (``requires_scene = True``: log replay, the
PDM-Closed reference) also receive the privileged view; they are references, not submissions. ``sensors`` tells the
runner what to load: decoding images is by far the most expensive part of feeding an agent, so agents that only
need ego status say ``"none"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from latentvla.schema import AgentInput, Trajectory

if TYPE_CHECKING:
    from latentvla.eval.scene_inputs import SceneInputs

SENSOR_MODES = ("none", "current", "history")


class Agent(ABC):
    name: str = "agent"
    requires_scene: bool = False
    sensors: str = "none"  # none | current | history

    @abstractmethod
    def compute_trajectory(self, agent_input: AgentInput, scene: SceneInputs | None = None) -> Trajectory:
        """Plan from the agent input; ``scene`` (the scorer's privileged inputs) only if ``requires_scene``."""

    def describe(self) -> str:
        return self.name
