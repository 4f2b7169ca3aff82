"""LatentVLA's additions to a host: teacher fusion ("full") and the student's distillation heads and losses.

- ``Fusion``: the teacher's embeddings (features key ``teacher_embeddings``, (B, T, D) from the teacher's own
  generation, never the LAM labels) are normalised and projected to the host width, then read by gated
  cross-attention blocks (Flamingo-style ``q + tanh(g) * attn(ln(q), ctx)``) at each fusion point of the host.
  With the gates at 0 the fused model computes exactly the host, so fusion can only add to it.
- ``LatentHead``: ``positions`` learned queries decode the host's scene tokens into latent-token logits; trained
  against the teacher's soft distributions (distillation) or the LAM codes (the ``ipad-aux`` control).
- ``distill_losses``: the student's extra terms; what they compare to lives in ``targets`` (the teacher's
  ``latent_probs``, the full model's ``full_selection`` and ``full_plan_features``), so nothing of the teacher or
  the full model is needed at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.planner.backbones import Attention, DecoderBlock, mlp
from latentvla.planner.configuration import PlannerConfig

TEACHER_KEY = "teacher_embeddings"


def check_teacher_embeddings(features: dict[str, Tensor], tokens: int, dim: int) -> Tensor:
    x = features.get(TEACHER_KEY)
    if not isinstance(x, Tensor):
        raise ValueError(f"this planner fuses a VLA teacher: features need '{TEACHER_KEY}' (B, {tokens}, {dim}) "
                         f"from the teacher's encode() (score it through its run directory, which loads the teacher)")
    if x.ndim != 3 or tuple(x.shape[1:]) != (tokens, dim):
        raise ValueError(f"{TEACHER_KEY} must have shape (B, {tokens}, {dim}), got {tuple(x.shape)}: the teacher "
                         f"does not match the one this planner was trained with")
    return x.float()


class GatedCrossAttention(nn.Module):
    """q + tanh(g_a) * attn(ln(q), ctx), then q + tanh(g_m) * mlp(ln(q)); identity while both gates are 0, or
    (``zero_output``) while the attention's and the MLP's output projections are 0."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float, gate_init: float,
                 zero_output: bool = False) -> None:
        super().__init__()
        self.ln_q, self.ln_m = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = mlp(dim, mlp_ratio, dropout)
        self.gate_attn = nn.Parameter(torch.tensor(float(gate_init)))
        self.gate_mlp = nn.Parameter(torch.tensor(float(gate_init)))
        if zero_output:
            for layer in (self.attn.proj, self.mlp[-1]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, q: Tensor, context: Tensor) -> Tensor:
        q = q + torch.tanh(self.gate_attn) * self.attn(self.ln_q(q), context)
        return q + torch.tanh(self.gate_mlp) * self.mlp(self.ln_m(q))


class Fusion(nn.Module):
    """Teacher context projector plus ``points`` fusion points of ``cfg.fusion.layers`` gated blocks each."""

    def __init__(self, cfg: PlannerConfig, points: int) -> None:
        super().__init__()
        fu, tf = cfg.fusion, cfg.transfuser
        if fu.context_dim < 1 or fu.context_tokens < 1 or fu.layers < 1:
            raise ValueError(f"fusion needs context_dim, context_tokens and layers >= 1 (set by `planner train "
                             f"--teacher`), got {fu.context_dim}, {fu.context_tokens}, {fu.layers}")
        self.tokens, self.dim = fu.context_tokens, fu.context_dim
        self.ln = nn.LayerNorm(fu.context_dim)
        self.proj = nn.Linear(fu.context_dim, tf.dim)
        self.pos = nn.Parameter(torch.randn(1, fu.context_tokens, tf.dim) * 0.02)
        self.points = nn.ModuleList(
            nn.ModuleList(GatedCrossAttention(tf.dim, tf.heads, tf.mlp_ratio, tf.dropout, fu.gate_init,
                                                  fu.zero_output)
                          for _ in range(fu.layers)) for _ in range(points))

    def context(self, features: dict[str, Tensor]) -> Tensor:
        """(B, T, host dim) key / value tokens from the features' teacher embeddings."""
        x = check_teacher_embeddings(features, self.tokens, self.dim)
        return self.proj(self.ln(x)) + self.pos

    def fuse(self, point: int, q: Tensor, context: Tensor) -> Tensor:
        for block in self.points[point]:
            q = block(q, context)
        return q

    def gates(self) -> list[float]:
        """tanh of every gate (attention, MLP per block): how much of the teacher the model lets in."""
        return [float(torch.tanh(g.detach())) for blocks in self.points for b in blocks for g in (b.gate_attn, b.gate_mlp)]


class LatentHead(nn.Module):
    """Learned queries -> one decoder block over the scene tokens -> (B, positions, codes) logits."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, positions: int, codes: int) -> None:
        super().__init__()
        if positions < 1 or codes < 2:
            raise ValueError(f"distill.latent_positions must be >= 1 and latent_codes >= 2, got {positions}, {codes}")
        self.queries = nn.Parameter(torch.randn(1, positions, dim) * 0.02)
        self.ln_mem = nn.LayerNorm(dim)
        self.block = DecoderBlock(dim, heads, mlp_ratio)
        self.ln_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, codes)

    def forward(self, memory: Tensor) -> Tensor:
        q = self.queries.expand(memory.shape[0], -1, -1)
        return self.out(self.ln_out(self.block(q, self.ln_mem(memory))))


class DistillHeads(nn.Module):
    """The optional extras of ``cfg``: fusion (``fusion.enabled``), latent head, feature-alignment map."""

    def __init__(self, cfg: PlannerConfig, fusion_points: int) -> None:
        super().__init__()
        tf, d = cfg.transfuser, cfg.distill
        self.cfg = cfg
        self.fusion = Fusion(cfg, fusion_points) if cfg.fusion.enabled else None
        self.latent = (LatentHead(tf.dim, tf.heads, tf.mlp_ratio, d.latent_positions, d.latent_codes)
                       if d.latent_target != "none" else None)
        self.align = nn.Linear(tf.dim, tf.dim) if d.full_key and d.feature_weight > 0 else None

    def outputs(self, predictions: dict[str, Tensor], scene_tokens: Tensor) -> None:
        """Add ``latent_logits`` / ``aligned_features`` to ``predictions`` (in place) when configured. Training
        only: they feed the distillation losses, so a student in eval mode costs exactly its host."""
        if not self.training:
            return
        if self.latent is not None:
            predictions["latent_logits"] = self.latent(scene_tokens)
        if self.align is not None:
            predictions["aligned_features"] = self.align(predictions["plan_features"])


def soft_kl(target_probs: Tensor, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(p || softmax(logits / T)) * T^2, summed over the last axis and averaged over the rest (Hinton)."""
    p = target_probs.float().clamp_min(0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)
    kl = (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(-1)
    return kl.mean() * temperature ** 2


def distill_losses(cfg: PlannerConfig, targets: dict[str, Tensor], predictions: dict[str, Tensor],
                   selection_logits: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """The student's extra terms and their weighted sum. ``selection_logits``: the student's (B, N) proposal
    selection scores *with* gradients (iPad); the full model's come as ``targets["full_selection"]``."""
    d = cfg.distill
    terms: dict[str, Tensor] = {}
    ref = predictions["trajectory"]
    total = ref.new_zeros(())
    if "latent_logits" in predictions and d.latent_weight > 0:
        if "latent_probs" not in targets:
            raise ValueError(f"distill.latent_target={d.latent_target!r} needs targets['latent_probs']")
        terms["latent_kl"] = soft_kl(targets["latent_probs"], predictions["latent_logits"],
                                     d.temperature if d.latent_target == "teacher" else 1.0)
        total = total + d.latent_weight * terms["latent_kl"]
    if d.full_key and d.score_weight > 0 and selection_logits is not None:
        if "full_selection" not in targets:
            raise ValueError("distillation from a full model needs targets['full_selection']")
        full = targets["full_selection"].float()
        terms["score_kl"] = soft_kl(F.softmax(full / d.temperature, dim=-1), selection_logits, d.temperature)
        total = total + d.score_weight * terms["score_kl"]
    if "aligned_features" in predictions:
        if "full_plan_features" not in targets:
            raise ValueError("distillation from a full model needs targets['full_plan_features']")
        terms["feature_mse"] = F.mse_loss(predictions["aligned_features"], targets["full_plan_features"].float())
        total = total + d.feature_weight * terms["feature_mse"]
    return terms, total
