"""iPad host (iterative proposal-centric planning, scaled for CPU) on the shared TransFuser perception trunk.

``num_proposals`` proposal queries start from anchor trajectories (k-means of train-split expert trajectories,
passed to ``build_model``; a fixed fan of constant-speed arcs otherwise). Each of ``iterations`` rounds:

1. re-embeds the current proposal poses and samples the fused BEV map at ``points_per_proposal`` points along
   the proposal (``F.grid_sample``: proposal-centric, deformable-attention style, the offsets being the
   proposal itself);
2. cross-attends to the fused camera tokens, then (the "full" model, ``cfg.fusion.enabled``) to the VLA teacher's
   embeddings through gated cross-attention (``planner/fusion.py``);
3. self-attends among proposals (they compete and coordinate);
4. predicts a residual offset to every pose, so the proposal is refined iteratively.

The round's reference proposal is detached (Deformable-DETR-style), so each round learns its own correction.

Heads: ``proposal_scores`` (B, N, len(PROPOSAL_SCORE_COLUMNS)) logits whose sigmoids predict the PDMS sub-scores
(and PDMS) of each proposal's *anchor* as scored offline, and ``proposal_imitation`` (B, N) logits of "this
anchor is the expert's". Selection (Hydra-MDP style) maximises

    selection_score_i = sum_k w_k * log sigmoid(score_ik) + log_softmax(imitation)_i,   w = cfg.ipad.score_weights

i.e. the log of a weighted product of predicted sub-scores times the imitation probability; the output
``trajectory`` is the selected proposal after the last refinement round. The auxiliary agent and BEV heads
are TransFuser's, decoded from the same trunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.planner.backbones import Attention, PerceptionTrunk, mlp
from latentvla.planner.configuration import PROPOSAL_SCORE_COLUMNS, PlannerConfig
from latentvla.planner.fusion import DistillHeads, distill_losses
from latentvla.planner.modeling import EGO_DIM, NUM_POSES, POSE_DIM, PlannerModel, check_shape, ego_encoder
from latentvla.planner.modeling_transfuser import AgentHead, BEVSemanticHead, QueryDecoder, aux_losses

DT = 0.5  # seconds between poses


def default_anchors(n: int, num_poses: int = NUM_POSES, dt: float = DT) -> np.ndarray:
    """A deterministic (n, num_poses, 3) fan of constant-speed, constant-yaw-rate arcs (speeds 1-15 m/s, yaw
    rates -0.4..0.4 rad/s, straight included), used when no k-means anchors are given, so the model builds."""
    if n < 1:
        raise ValueError(f"num_proposals must be >= 1, got {n}")
    n_speed = max(1, math.ceil(math.sqrt(n / 2)))
    n_yaw = math.ceil(n / n_speed) | 1  # odd: zero yaw rate (straight) is in the grid
    speeds = np.linspace(1.0, 15.0, n_speed) if n_speed > 1 else np.array([8.0])
    yaws = np.linspace(-0.4, 0.4, n_yaw) if n_yaw > 1 else np.zeros(1)
    grid = [(v, w) for v in speeds for w in yaws]
    straight = [i for i, (_, w) in enumerate(grid) if abs(w) < 1e-9]
    curved = [i for i, (_, w) in enumerate(grid) if abs(w) >= 1e-9]
    if n <= len(straight):
        pick = [straight[i] for i in np.round(np.linspace(0, len(straight) - 1, n)).astype(int)]
    else:  # every straight arc, then curved ones spread evenly over the rest of the grid
        extra = np.round(np.linspace(0, len(curved) - 1, n - len(straight))).astype(int)
        pick = sorted(straight + [curved[i] for i in extra])
    t = dt * np.arange(1, num_poses + 1)
    out = np.zeros((n, num_poses, 3), dtype=np.float32)
    for i, j in enumerate(pick):
        v, w = grid[j]
        heading = w * t
        if abs(w) < 1e-9:
            x, y = v * t, np.zeros_like(t)
        else:
            x, y = v / w * np.sin(heading), v / w * (1.0 - np.cos(heading))
        out[i] = np.stack([x, y, heading], axis=-1)
    return out


def selection_score(scores: Tensor, imitation: Tensor, weights: Tensor) -> Tensor:
    """(B, N, S) score logits, (B, N) imitation logits, (S,) weights -> (B, N) combined log-score (see module)."""
    return (F.logsigmoid(scores) * weights).sum(-1) + F.log_softmax(imitation, dim=-1)


def sampling_matrix(points: int, num_poses: int) -> Tensor:
    """(points, num_poses + 1) linear-interpolation weights over [origin, pose_1..pose_T]: ``points`` points
    evenly spaced in time along the proposal, the last one at its final pose."""
    w = torch.zeros(points, num_poses + 1)
    for i in range(points):
        s = (i + 1) * num_poses / points
        lo = min(int(math.floor(s)), num_poses)
        hi = min(lo + 1, num_poses)
        frac = s - lo
        w[i, lo] += 1.0 - frac
        w[i, hi] += frac
    return w


class ProposalLayer(nn.Module):
    """One refinement round (see the module docstring)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float, bev_channels: int, points: int
                 ) -> None:
        super().__init__()
        self.pose_embed = nn.Sequential(nn.Linear(NUM_POSES * POSE_DIM, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.sample_proj = nn.Linear(points * bev_channels, dim)
        self.ln_c, self.ln_s, self.ln_m, self.ln_o = (nn.LayerNorm(dim) for _ in range(4))
        self.cross_attn = Attention(dim, heads, dropout)
        self.self_attn = Attention(dim, heads, dropout)
        self.mlp = mlp(dim, mlp_ratio, dropout)
        self.offset = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, NUM_POSES * POSE_DIM))
        nn.init.normal_(self.offset[-1].weight, std=1e-3)  # start at the anchors, but let gradients flow
        nn.init.zeros_(self.offset[-1].bias)

    def forward(self, q: Tensor, proposal: Tensor, pose_norm: Tensor, sampled: Tensor, memory: Tensor,
                fuse: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        b, n = q.shape[:2]
        q = q + self.pose_embed((proposal / pose_norm).flatten(2)) + self.sample_proj(sampled)
        q = q + self.cross_attn(self.ln_c(q), memory)
        if fuse is not None:
            q = fuse(q)
        q = q + self.self_attn(self.ln_s(q))
        q = q + self.mlp(self.ln_m(q))
        return q, proposal + self.offset(self.ln_o(q)).view(b, n, NUM_POSES, POSE_DIM)


class IPadModel(PlannerModel):
    """Anchored proposals refined over ``iterations`` rounds, scored, and the best one selected; see module."""

    host = "ipad"

    def __init__(self, cfg: PlannerConfig, anchors: np.ndarray | Tensor | None = None) -> None:
        super().__init__(cfg)
        tf, ip = cfg.transfuser, cfg.ipad
        dim, n = tf.dim, ip.num_proposals
        if ip.iterations < 1 or ip.points_per_proposal < 1:
            raise ValueError(f"ipad.iterations and ipad.points_per_proposal must be >= 1, got {ip.iterations}, "
                             f"{ip.points_per_proposal}")
        unknown = set(ip.score_weights) - set(PROPOSAL_SCORE_COLUMNS)
        if unknown:
            raise ValueError(f"ipad.score_weights has unknown columns {sorted(unknown)}; "
                             f"valid: {list(PROPOSAL_SCORE_COLUMNS)}")
        if anchors is None:
            anchors = default_anchors(n)
        a = torch.as_tensor(np.asarray(anchors) if not isinstance(anchors, Tensor) else anchors).float()
        if tuple(a.shape) != (n, NUM_POSES, POSE_DIM) or not torch.isfinite(a).all():
            raise ValueError(f"anchors must be finite of shape ({n}, {NUM_POSES}, {POSE_DIM}) "
                             f"(ipad.num_proposals={n}), got {tuple(a.shape)}")
        self.register_buffer("anchors", a.clone())
        self.register_buffer("score_weights", torch.tensor(
            [float(ip.score_weights.get(c, 0.0)) for c in PROPOSAL_SCORE_COLUMNS]), persistent=False)
        r = cfg.features.lidar.range_m
        self.range_m, self.center_x = r, cfg.features.lidar.center_x_m
        self.register_buffer("pose_norm", torch.tensor([r, r, 1.0]), persistent=False)
        self.register_buffer("sample_weights", sampling_matrix(ip.points_per_proposal, NUM_POSES),
                             persistent=False)

        self.trunk = PerceptionTrunk(cfg)
        c = self.trunk.bev_channels
        self.ego_embed = ego_encoder(dim)
        # auxiliary perception (TransFuser's heads): agent queries decoded from the BEV tokens, BEV semantics
        self.agent_queries = nn.Parameter(torch.randn(1, cfg.features.targets.max_agents, dim) * 0.02)
        self.agent_decoder = QueryDecoder(dim, tf.heads, tf.decoder_layers, tf.mlp_ratio, tf.dropout)
        self.agent_head = AgentHead(dim, r, tf.mlp_ratio, self.center_x)
        self.bev_head = BEVSemanticHead(c, self.trunk.bev_size, cfg.features.targets.bev_pixels)
        # proposals
        self.query_init = nn.Sequential(nn.Linear(NUM_POSES * POSE_DIM + EGO_DIM, dim), nn.ReLU(),
                                        nn.Linear(dim, dim))
        self.ln_mem = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(ProposalLayer(dim, tf.heads, tf.mlp_ratio, tf.dropout, c,
                                                  ip.points_per_proposal) for _ in range(ip.iterations))
        self.ln_out = nn.LayerNorm(dim)
        self.score_head = nn.Linear(dim, len(PROPOSAL_SCORE_COLUMNS))
        self.imitation_head = nn.Linear(dim, 1, bias=False)  # a shared bias is a no-op under the softmax
        self.extras = DistillHeads(cfg, fusion_points=ip.iterations)

    def sample_bev(self, bev_map: Tensor, proposal: Tensor) -> Tensor:
        """BEV features at points along each proposal: (B, C, H, W), (B, N, T, 3) -> (B, N, points * C).
        Grid orientation: row 0 = +x (ahead), column 0 = +y (left); points outside the grid read zeros."""
        xy = torch.cat([proposal.new_zeros(*proposal.shape[:2], 1, 2), proposal[..., :2]], dim=2)
        pts = torch.einsum("pt,bntc->bnpc", self.sample_weights, xy)  # (B, N, points, 2) metres
        grid = torch.stack([-pts[..., 1], self.center_x - pts[..., 0]], dim=-1) / self.range_m  # (col, row) in [-1, 1]
        s = F.grid_sample(bev_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return s.permute(0, 2, 3, 1).flatten(2)  # (B, N, points * C)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        ego_n = self.normalized_ego(features)
        b = ego_n.shape[0]
        ego = self.ego_embed(ego_n)[:, None]
        trunk = self.trunk(features)

        agents = self.agent_decoder(self.agent_queries.expand(b, -1, -1),
                                    torch.cat([trunk.bev_tokens, trunk.image_token, ego], dim=1))
        agent_states, agent_labels = self.agent_head(agents)

        memory = self.ln_mem(trunk.image_tokens)
        fusion = self.extras.fusion
        context = fusion.context(features) if fusion is not None else None
        anchors = self.anchors.expand(b, -1, -1, -1)
        n = anchors.shape[1]
        q = self.query_init(torch.cat([(anchors / self.pose_norm).flatten(2), ego_n[:, None].expand(-1, n, -1)],
                                      dim=-1))
        proposal, per_iter = anchors, []
        for i, layer in enumerate(self.layers):
            ref = proposal.detach()
            fuse = None if fusion is None else (lambda x, i=i: fusion.fuse(i, x, context))
            q, proposal = layer(q, ref, self.pose_norm, self.sample_bev(trunk.bev_map, ref), memory, fuse)
            per_iter.append(proposal)
        q = self.ln_out(q)
        scores = self.score_head(q)
        imitation = self.imitation_head(q).squeeze(-1)
        combined = selection_score(scores.detach(), imitation.detach(), self.score_weights)
        selected = combined.argmax(-1)
        predictions = {
            "trajectory": proposal[torch.arange(b, device=proposal.device), selected],
            "proposals": proposal,
            "proposals_per_iter": torch.stack(per_iter, dim=1),
            "proposal_scores": scores,
            "proposal_imitation": imitation,
            "selection_score": combined,
            "selected": selected,
            "plan_features": q,
            "agent_states": agent_states,
            "agent_labels": agent_labels,
            "bev_semantic_map": self.bev_head(trunk.bev_map),
        }
        self.extras.outputs(predictions, torch.cat([trunk.bev_tokens, trunk.image_tokens, ego], dim=1))
        return predictions

    def winner(self, gt: Tensor) -> tuple[Tensor, Tensor]:
        """(ADE (B, N) in metres between every anchor and the expert trajectory, index of the closest anchor).
        "Closest" = smallest mean Euclidean (x, y) distance over the 8 poses; anchor-based, so the winner is the
        same proposal in every refinement round."""
        ade = (self.anchors[None, :, :, :2] - gt[:, None, :, :2]).norm(dim=-1).mean(-1)
        return ade, ade.argmin(-1)

    def compute_loss(self, features: dict[str, Tensor], targets: dict[str, Tensor],
                     predictions: dict[str, Tensor]) -> dict[str, Tensor]:
        """Terms: ``refine`` (winner-takes-all L1 of the winner's proposal vs the expert, averaged over rounds),
        ``imitation`` (cross-entropy against softmax(-ADE / imitation_temperature)), ``score`` (BCE of
        ``proposal_scores`` vs ``proposal_targets``; 0 when the targets are absent), TransFuser's aux terms;
        ``loss`` is their weighted sum."""
        ip = self.cfg.ipad
        per_iter = predictions["proposals_per_iter"]  # (B, K, N, T, 3)
        b = per_iter.shape[0]
        gt = check_shape("trajectory target", targets["trajectory"], (b, NUM_POSES, POSE_DIM)).float()
        ade, win = self.winner(gt)
        chosen = per_iter[torch.arange(b, device=gt.device), :, win]  # (B, K, T, 3)
        refine = F.l1_loss(chosen, gt[:, None].expand_as(chosen))
        soft = F.softmax(-ade / ip.imitation_temperature, dim=-1)
        imitation = -(soft * F.log_softmax(predictions["proposal_imitation"], dim=-1)).sum(-1).mean()
        scores = predictions["proposal_scores"]
        if targets.get("proposal_targets") is not None:
            tgt = check_shape("proposal_targets", targets["proposal_targets"], tuple(scores.shape)).float()
            score = F.binary_cross_entropy_with_logits(scores, tgt)
        else:
            score = scores.new_zeros(())
        terms, aux = aux_losses(self.cfg, targets, predictions)
        selection = selection_score(scores, predictions["proposal_imitation"], self.score_weights)
        extra, extra_total = distill_losses(self.cfg, targets, predictions, selection)
        terms.update(extra, refine=refine, imitation=imitation, score=score)
        terms["loss"] = (ip.refine_loss_weight * refine + ip.imitation_loss_weight * imitation
                         + ip.score_loss_weight * score + aux + extra_total)
        return terms
