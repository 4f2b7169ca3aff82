"""A trained planner run directory as an ``Agent``: ``latentvla score --agent runs/planner/<name>`` works.

The agent sees only the ``AgentInput`` (ego history and the current frame's sensors), builds the same features as
training (``FeatureBuilder``; the frozen camera backbone runs here instead of in the cache) and returns the host's
trajectory. iPad's proposals and their combined scores are kept from the last call (``last_output``) for plots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentvla.agents.base import Agent
from latentvla.planner.fusion import TEACHER_KEY
from latentvla.runtime.io import read_json
from latentvla.schema import AgentInput, Trajectory


class FeatureAgent(Agent):
    """An agent whose network reads planner features: built live from the ``AgentInput`` (``FeatureBuilder``) or
    read from the planner cache (``use_cache``). Subclasses call ``init_features`` and implement ``plan``;
    ``compute_trajectories`` plans many scenes in one batch (the scorer uses it when present)."""

    requires_scene = False
    sensors = "current"
    cache = None

    def init_features(self, features_cfg, device: str) -> None:
        from latentvla.planner.features import FeatureBuilder

        self.features_cfg, self.device = features_cfg, device
        self.builder = FeatureBuilder(features_cfg, device=device)
        self.last_output: dict[str, np.ndarray] = {}

    def use_cache(self, data: str | Path, split: str, cache_root: str | Path | None = None, workers: int = 1,
                  quiet: bool = True) -> None:
        """Read the split's features from the planner cache (built if missing) instead of running the frozen
        backbone per scene: identical inputs to what training saw, and no sensor decoding while scoring. The
        agent then asks the runner for no sensors; a scene missing from the cache fails loudly."""
        from latentvla.planner.cache import PlannerCache

        self.cache = PlannerCache.open(data, self.features_cfg, cache_root=cache_root, workers=workers, quiet=quiet,
                                       splits=None if split == "all" else [split])
        self.sensors = "none"

    def features(self, agent_inputs: list[AgentInput]) -> dict[str, torch.Tensor]:
        from latentvla.planner.features import FEATURE_DTYPES

        if self.cache is not None:
            return {k: torch.from_numpy(v).to(self.device)
                    for k, v in self.cache.features([a.token for a in agent_inputs]).items()}
        # stored dtypes (float16 camera features) so live and cached inputs match what training saw
        return {k: torch.from_numpy(np.asarray(v, dtype=FEATURE_DTYPES[k])).to(self.device)
                for k, v in self.builder(agent_inputs).items()}

    def plan(self, agent_inputs: list[AgentInput]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def compute_trajectories(self, agent_inputs: list[AgentInput]) -> list[Trajectory]:
        out = self.plan(agent_inputs)
        return [Trajectory(t.astype(np.float32)) for t in out["trajectory"]]

    def compute_trajectory(self, agent_input: AgentInput, scene=None) -> Trajectory:
        out = self.plan([agent_input])
        self.last_output = {k: v[0] for k, v in out.items()}
        return Trajectory(out["trajectory"][0].astype(np.float32))


class PlannerAgent(FeatureAgent):
    def __init__(self, run: str | Path, device: str = "cpu"):
        from latentvla.planner.checkpoint import load_planner
        from latentvla.planner.train import MODEL_FILE

        self.run = Path(run)
        path = self.run / MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.run} has no {MODEL_FILE}: the planner run is unfinished (rerun "
                                    f"`latentvla planner train ... --out {self.run} --resume`)")
        self.model, self.cfg = load_planner(path, device)
        self.name = f"{self.cfg.host}:{self.run.name}"
        self.sensors = "none" if self.cfg.host == "ego-mlp" else "current"
        self.init_features(self.cfg.features, device)
        self.teacher = None  # the full model's VLA teacher (its generation runs inside plan())
        self.teacher_cache: dict[str, np.ndarray] | None = None
        info = read_json(self.run / "run.json") if (self.run / "run.json").is_file() else {}
        self.oracle = info.get("oracle")
        # the LAM run an ``--oracle latent`` run reads (recorded relative to the run)
        self.oracle_labels = (self.run / info["latent_labels"]).resolve() if self.oracle and info.get("latent_labels") \
            else None
        if self.oracle:  # privileged context (planner/oracle.py): scored from a dataset only
            self.name = f"{self.cfg.host}+oracle-{self.oracle}:{self.run.name}"
        elif self.cfg.fusion.enabled:
            from latentvla.planner.sources import teacher_run_of
            from latentvla.vla.agent import TeacherAgent

            self.teacher = TeacherAgent(teacher_run_of(self.run), device, require_head=False)

    def use_cache(self, data: str | Path, split: str, cache_root: str | Path | None = None, workers: int = 1,
                  quiet: bool = True) -> None:
        """Cached planner features and, for a full model, the teacher's cached outputs (same generation)."""
        if self.cfg.host == "ego-mlp":
            return  # nothing to gain: ego status only
        super().use_cache(data, split, cache_root, workers, quiet)
        if self.oracle:
            from latentvla.planner.cache import SPLIT_NAMES
            from latentvla.planner.oracle import oracle_context

            splits = SPLIT_NAMES if split == "all" else (split,)
            tokens = [t for s in splits for t in self.cache.tokens(s)]
            ctx = oracle_context(self.oracle, data, split, tokens, self.cfg.features, self.oracle_labels,
                                 planner_cache_root=cache_root, workers=workers, quiet=quiet)
            self.teacher_cache = dict(zip(tokens, ctx))
        elif self.teacher is not None:
            from latentvla.vla.encode_cache import teacher_outputs

            out = teacher_outputs(self.teacher.run, data, split, planner_cache_root=cache_root, workers=workers,
                                  quiet=quiet)
            self.teacher_cache = {str(t): e for t, e in zip(out["tokens"], out["embeddings"])}

    def features(self, agent_inputs: list[AgentInput]) -> dict[str, torch.Tensor]:
        if self.cache is None and self.cfg.host == "ego-mlp":  # ego status only: no sensors, no backbone
            return {"ego_status": torch.from_numpy(np.stack([self.builder.ego_status(a) for a in agent_inputs]))}
        feats = super().features(agent_inputs)
        if self.teacher is not None or self.oracle:
            feats[TEACHER_KEY] = self.teacher_embeddings(agent_inputs, feats)
        return feats

    @torch.no_grad()
    def infer(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 8, 3) from prebuilt planner features; a full model runs its teacher here (generation included,
        never the cache): what a latency benchmark must time."""
        if self.teacher is not None or self.oracle:
            feats = {**feats, TEACHER_KEY: self.live_teacher_embeddings(feats)}
        return self.model(feats)["trajectory"]

    def teacher_embeddings(self, agent_inputs: list[AgentInput], feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, D) from the teacher cache or the teacher's own generation on these inputs (never labels)."""
        if self.teacher_cache is not None:
            missing = [a.token for a in agent_inputs if a.token not in self.teacher_cache]
            if missing:
                source = f"oracle '{self.oracle}'" if self.oracle else f"teacher cache of {self.teacher.run}"
                raise KeyError(f"scene {missing[0]} is not in the {source}")
            return torch.from_numpy(np.stack([self.teacher_cache[a.token] for a in agent_inputs])).to(self.device)
        return self.live_teacher_embeddings(feats, agent_inputs)

    def live_teacher_embeddings(self, feats: dict[str, torch.Tensor],
                                agent_inputs: list[AgentInput] | None = None) -> torch.Tensor:
        """The teacher's generation on the planner's features (its own, built from ``agent_inputs``, when the
        two feature configs differ), in the stored precision (float16) so live and cached inputs match."""
        if self.oracle:
            raise ValueError(f"{self.run} reads the privileged oracle context '{self.oracle}' (ground truth an agent "
                             f"never sees): it scores only from a dataset (`latentvla score --data`, use_cache)")
        same = self.teacher.features_cfg == self.features_cfg
        if not same and agent_inputs is None:
            raise ValueError(f"{self.run}: the teacher reads other features than the planner; time plan() instead")
        return self.teacher.encode(agent_inputs, feats if same else None)["embeddings"].to(torch.float16)

    @torch.no_grad()
    def plan(self, agent_inputs: list[AgentInput]) -> dict[str, np.ndarray]:
        """Batched inference: every model output as numpy (``trajectory`` (B, 8, 3) among them)."""
        out = self.model(self.features(agent_inputs))
        return {k: v.detach().cpu().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}

    def describe(self) -> str:
        return f"{self.name} ({self.cfg.host}, {self.run})"
