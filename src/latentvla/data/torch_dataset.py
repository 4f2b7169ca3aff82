"""A torch ``Dataset`` over a SceneStore, NAVSIM-style: features come from the AgentInput only; targets may use
the privileged Scene. Builders are plain callables, so each planner supplies its own without touching this file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from latentvla.data.store import SceneStore, open_store
from latentvla.schema import AgentInput, Scene

FeatureBuilder = Callable[[AgentInput], dict[str, torch.Tensor]]
TargetBuilder = Callable[[Scene], dict[str, torch.Tensor]]


def ego_status_features(agent_input: AgentInput) -> dict[str, torch.Tensor]:
    """Current velocity (2), acceleration (2) and one-hot command (4): NAVSIM's ego-status vector."""
    cur = agent_input.current
    vec = np.concatenate([cur.ego_velocity, cur.ego_acceleration, cur.driving_command]).astype(np.float32)
    return {"ego_status": torch.from_numpy(vec)}


def front_camera_features(agent_input: AgentInput, camera: str = "cam_f0") -> dict[str, torch.Tensor]:
    img = agent_input.cameras[-1][camera].image
    if img is None:
        raise ValueError(f"scene {agent_input.token}: camera {camera} was not loaded")
    out = ego_status_features(agent_input)
    out["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255.0
    return out


def trajectory_target(scene: Scene) -> dict[str, torch.Tensor]:
    return {"trajectory": torch.from_numpy(scene.get_future_trajectory().poses.astype(np.float32))}


class SceneDataset(Dataset):
    """Scenes of one split as (features, targets) tensors dicts. Safe with multi-process DataLoaders."""

    def __init__(self, root: str | Path, split: str | None = "train", features: FeatureBuilder = ego_status_features,
                 targets: TargetBuilder | None = trajectory_target):
        self.root = Path(root)
        self.split = split
        self.features = features
        self.targets = targets
        self._store: SceneStore | None = None
        self.tokens = self.store.tokens(split)

    @property
    def store(self) -> SceneStore:
        if self._store is None:  # opened lazily in each DataLoader worker
            self._store = open_store(self.root)
        return self._store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None
        return state

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        token = self.tokens[i]
        feats = self.features(self.store.load_agent_input(token))
        if self.targets is None:
            return feats, {}
        return feats, self.targets(self.store.load_scene(token, sensors="none", with_sim_state=False))
