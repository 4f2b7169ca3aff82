"""A trained teacher run as an ``Agent``: ``latentvla score --agent runs/vla/<name>`` scores the teacher alone.

It reads the same planner features as training (live from the ``AgentInput`` or from the planner cache), generates
its own latent action tokens and decodes them, with the ego status, into a trajectory. No label is ever read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentvla.planner.agent import FeatureAgent
from latentvla.schema import AgentInput
from latentvla.vla.data import feature_keys


class TeacherAgent(FeatureAgent):
    """``require_head=False``: a teacher used only for its embeddings (a full planner's, possibly untrained)."""

    def __init__(self, run: str | Path, device: str = "cpu", require_head: bool = True):
        from latentvla.runtime.io import read_json
        from latentvla.vla.checkpoint import load_teacher, read_meta

        self.run = Path(run)
        read_meta(self.run)  # clear error if unfinished
        if require_head and "val_ade" not in read_json(self.run / "metrics.json"):
            raise ValueError(f"{self.run}: the trajectory head was not trained yet (rerun `latentvla vla train ... "
                             f"--out {self.run} --resume`)")
        self.model, self.cfg = load_teacher(self.run, device)
        self.feature_keys = feature_keys(self.cfg)
        self.name = f"vla:{self.run.name}"
        self.init_features(self.cfg.features, device)

    @torch.no_grad()
    def encode(self, agent_inputs: list[AgentInput], feats: dict[str, torch.Tensor] | None = None
               ) -> dict[str, torch.Tensor]:
        """The teacher's encode() on these inputs; ``feats``: planner features already built with the same
        feature config (the frozen backbone then runs once for planner and teacher)."""
        feats = self.features(agent_inputs) if feats is None else feats
        return self.model.encode({k: v for k, v in feats.items() if k in self.feature_keys})

    @torch.no_grad()
    def infer(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 8, 3) from prebuilt features: token generation and the trajectory head (latency benchmarks)."""
        feats = {k: v for k, v in feats.items() if k in self.feature_keys}
        return self.model.trajectory(self.model.encode(feats)["embeddings"], feats["ego_status"])

    @torch.no_grad()
    def plan(self, agent_inputs: list[AgentInput]) -> dict[str, np.ndarray]:
        feats = {k: v for k, v in self.features(agent_inputs).items() if k in self.feature_keys}
        enc = self.model.encode(feats)
        traj = self.model.trajectory(enc["embeddings"], feats["ego_status"])
        return {"trajectory": traj.cpu().numpy(), "codes": enc["codes"].cpu().numpy(),
                "probs": enc["probs"].cpu().numpy()}

    def describe(self) -> str:
        return f"{self.name} (VLA teacher, {self.run})"
