"""TransFuser host (NAVSIM's TransFuser agent, scaled for CPU): fused camera + LiDAR trunk, one query decoder.

The decoder reads the fused BEV tokens, one pooled camera token and one ego-status token. Its queries are one
trajectory query (learned + ego embedding) and ``max_agents`` agent queries; heads turn them into the trajectory
and agent boxes, and a small conv head turns the fused BEV map into the BEV semantic map. The decoded trajectory
query is exposed as ``plan_features`` (B, 1, dim). With ``cfg.fusion.enabled`` (the "full" model) the decoded
trajectory query then reads the teacher's embeddings through gated cross-attention (``planner/fusion.py``); the
student's distillation heads read the scene tokens.

The query decoder, agent head and BEV head are reused by the iPad host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.planner.backbones import DecoderBlock, PerceptionTrunk
from latentvla.planner.configuration import AGENT_STATE_COLUMNS, BEV_CLASSES, PlannerConfig
from latentvla.planner.fusion import DistillHeads, distill_losses
from latentvla.planner.modeling import (
    NUM_POSES,
    POSE_DIM,
    PlannerModel,
    agent_loss,
    bev_semantic_loss,
    bounded_poses,
    ego_encoder,
    trajectory_l1,
)
from latentvla.planner.modeling_egomlp import ego_trajectory_mlp


class QueryDecoder(nn.Module):
    """Transformer decoder: queries attend to ``memory`` tokens."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.ln_mem = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, queries: Tensor, memory: Tensor) -> Tensor:
        memory = self.ln_mem(memory)
        x = queries
        for block in self.blocks:
            x = block(x, memory)
        return self.ln_out(x)


class AgentHead(nn.Module):
    """Decoded agent queries -> (x, y, heading, length, width) and an existence logit (NAVSIM bounds: x, y
    tanh * range around the BEV grid's centre, heading tanh * pi)."""

    def __init__(self, dim: int, range_m: float, mlp_ratio: int = 4, center_x: float = 0.0) -> None:
        super().__init__()
        self.range_m, self.center_x = range_m, center_x
        self.state = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.ReLU(), nn.Linear(mlp_ratio * dim,
                                                                                          len(AGENT_STATE_COLUMNS)))
        self.label = nn.Linear(dim, 1)

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor]:
        s = self.state(q)
        xy = torch.tanh(s[..., :2]) * self.range_m
        if self.center_x:
            xy = xy + xy.new_tensor([self.center_x, 0.0])
        heading = torch.tanh(s[..., 2:3]) * math.pi
        return torch.cat([xy, heading, s[..., 3:]], dim=-1), self.label(q).squeeze(-1)


def bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) matrix of 1-D bilinear resampling, identical to F.interpolate(align_corners=False)."""
    eye = torch.eye(n_in)[None]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].t().contiguous()


class BEVSemanticHead(nn.Module):
    """Fused BEV map (B, C, h, w) -> class logits (B, len(BEV_CLASSES), P, P): 3x3 conv, ReLU, 1x1 conv, then
    bilinear upsampling (NAVSIM TransFuser's head, without its 64x64 FPN, which is too slow on CPU). The
    upsampling is two small matrix products (same values as F.interpolate, much faster backward on CPU)."""

    def __init__(self, channels: int, in_size: tuple[int, int], pixels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, len(BEV_CLASSES), 1))
        self.register_buffer("up_h", bilinear_matrix(in_size[0], pixels), persistent=False)
        self.register_buffer("up_w", bilinear_matrix(in_size[1], pixels), persistent=False)

    def forward(self, bev_map: Tensor) -> Tensor:
        return torch.einsum("hi,bciw,jw->bchj", self.up_h, self.net(bev_map), self.up_w)


def aux_losses(cfg: PlannerConfig, targets: dict[str, Tensor], predictions: dict[str, Tensor]
               ) -> tuple[dict[str, Tensor], Tensor]:
    """Agent and BEV-semantic terms and their weighted sum (weights from ``cfg.transfuser``, NAVSIM's split)."""
    tf = cfg.transfuser
    terms = agent_loss(predictions["agent_states"], predictions["agent_labels"], targets["agent_states"],
                       targets["agent_labels"], tf.agent_class_weight, tf.agent_box_weight)
    terms["bev_semantic"] = bev_semantic_loss(predictions["bev_semantic_map"], targets["bev_semantic_map"])
    total = (tf.agent_loss_weight * (tf.agent_class_weight * terms["agent_class"]
                                     + tf.agent_box_weight * terms["agent_box"])
             + tf.bev_loss_weight * terms["bev_semantic"])
    return terms, total


class TransFuserModel(PlannerModel):
    """Camera + LiDAR TransFuser; outputs ``trajectory``, ``agent_states`` (B, N, 5), ``agent_labels`` (B, N)
    logits, ``bev_semantic_map`` (B, classes, P, P) logits and ``plan_features`` (B, 1, dim)."""

    host = "transfuser"

    def __init__(self, cfg: PlannerConfig) -> None:
        super().__init__(cfg)
        tf = cfg.transfuser
        dim, n_agents = tf.dim, cfg.features.targets.max_agents
        self.trunk = PerceptionTrunk(cfg)
        self.ego_embed = ego_encoder(dim)
        self.traj_query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.agent_queries = nn.Parameter(torch.randn(1, n_agents, dim) * 0.02)
        self.decoder = QueryDecoder(dim, tf.heads, tf.decoder_layers, tf.mlp_ratio, tf.dropout)
        # the decoded trajectory query and, as a skip path, the ego embedding
        self.traj_head = nn.Sequential(nn.Linear(2 * dim, tf.mlp_ratio * dim), nn.ReLU(),
                                       nn.Linear(tf.mlp_ratio * dim, NUM_POSES * POSE_DIM))
        self.ego_prior = None
        if tf.ego_prior:
            self.ego_prior = ego_trajectory_mlp(cfg.ego_mlp.hidden, cfg.ego_mlp.layers)
            nn.init.zeros_(self.traj_head[-1].weight)
            nn.init.zeros_(self.traj_head[-1].bias)
        self.agent_head = AgentHead(dim, cfg.features.lidar.range_m, tf.mlp_ratio, cfg.features.lidar.center_x_m)
        self.bev_head = BEVSemanticHead(self.trunk.bev_channels, self.trunk.bev_size,
                                        cfg.features.targets.bev_pixels)
        self.extras = DistillHeads(cfg, fusion_points=1)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        ego_n = self.normalized_ego(features)
        ego = self.ego_embed(ego_n)[:, None]  # (B, 1, dim)
        trunk = self.trunk(features)
        b = ego.shape[0]
        memory = torch.cat([trunk.bev_tokens, trunk.image_token, ego], dim=1)
        queries = torch.cat([self.traj_query + ego, self.agent_queries.expand(b, -1, -1)], dim=1)
        out = self.decoder(queries, memory)
        plan = out[:, :1]
        fusion = self.extras.fusion
        if fusion is not None:
            plan = fusion.fuse(0, plan, fusion.context(features))
        agent_states, agent_labels = self.agent_head(out[:, 1:])
        raw = self.traj_head(torch.cat([plan, ego], -1)).view(b, NUM_POSES * POSE_DIM)
        if self.ego_prior is not None:
            raw = raw + self.ego_prior(ego_n)
        predictions = {
            "trajectory": bounded_poses(raw.view(b, NUM_POSES, POSE_DIM)),
            "agent_states": agent_states,
            "agent_labels": agent_labels,
            "bev_semantic_map": self.bev_head(trunk.bev_map),
            "plan_features": plan,
        }
        self.extras.outputs(predictions, torch.cat([trunk.bev_tokens, trunk.image_tokens, ego], dim=1))
        return predictions

    def compute_loss(self, features: dict[str, Tensor], targets: dict[str, Tensor],
                     predictions: dict[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted terms (``trajectory``, ``agent_class``, ``agent_box``, ``bev_semantic``) and the
        weighted total ``loss`` = 10 traj + agent (10 cls + 1 box) + bev, with the weights from the config."""
        terms, aux = aux_losses(self.cfg, targets, predictions)
        traj = trajectory_l1(predictions["trajectory"], targets["trajectory"])
        extra, extra_total = distill_losses(self.cfg, targets, predictions)
        terms.update(extra, trajectory=traj)
        terms["loss"] = self.cfg.transfuser.trajectory_loss_weight * traj + aux + extra_total
        return terms
