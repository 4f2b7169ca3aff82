"""NAVSIM's EgoStatusMLP: the trajectory from the ego status alone (velocity, acceleration, command).

The shortcut baseline: on NAVSIM it reaches 65.6 PDMS without seeing the scene, so every sensor-based host must
beat it by a clear margin for its perception to count.
"""

from __future__ import annotations

from torch import Tensor, nn

from latentvla.planner.configuration import PlannerConfig
from latentvla.planner.modeling import (
    EGO_DIM,
    NUM_POSES,
    POSE_DIM,
    PlannerModel,
    bounded_poses,
    trajectory_l1,
)


def ego_trajectory_mlp(hidden: int, layers: int) -> nn.Sequential:
    """Normalised ego status (8) -> ``layers`` ReLU layers of width ``hidden`` -> 8 x 3 raw pose outputs."""
    if layers < 1 or hidden < 1:
        raise ValueError(f"ego_mlp.layers and ego_mlp.hidden must be >= 1, got {layers}, {hidden}")
    modules: list[nn.Module] = []
    width = EGO_DIM
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    modules.append(nn.Linear(width, NUM_POSES * POSE_DIM))
    return nn.Sequential(*modules)


class EgoMLPModel(PlannerModel):
    """Normalised ego status -> ``layers`` hidden ReLU layers of width ``hidden`` -> 8 x (x, y, heading)."""

    host = "ego-mlp"

    def __init__(self, cfg: PlannerConfig) -> None:
        super().__init__(cfg)
        self.mlp = ego_trajectory_mlp(cfg.ego_mlp.hidden, cfg.ego_mlp.layers)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        ego = self.normalized_ego(features)
        return {"trajectory": bounded_poses(self.mlp(ego).view(-1, NUM_POSES, POSE_DIM))}

    def compute_loss(self, features: dict[str, Tensor], targets: dict[str, Tensor],
                     predictions: dict[str, Tensor]) -> dict[str, Tensor]:
        traj = trajectory_l1(predictions["trajectory"], targets["trajectory"])
        return {"trajectory": traj, "loss": self.cfg.ego_mlp.trajectory_loss_weight * traj}
