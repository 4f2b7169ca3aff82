"""Planner host networks: the common base class, the ``build_model`` factory and the loss helpers they share.

Every host maps a batch of features (dict of tensors with a leading batch dimension) to at least
``"trajectory"`` (B, 8, 3): poses (x, y, heading) in the ego frame at t0, NAVSIM's convention. Training losses
follow NAVSIM TransFuser: L1 on the trajectory, Hungarian-matched L1 + BCE on agent boxes, cross-entropy on the
BEV semantic map. Input statistics (ego-status mean / std) are registered buffers, so a checkpoint written from
``state_dict()`` (safetensors) carries them and inference needs nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from latentvla.planner.configuration import AGENT_STATE_COLUMNS, HOSTS, PlannerConfig

EGO_DIM = 8  # vx, vy, ax, ay + 4-way driving command one-hot
NUM_POSES = 8  # 4 s at 0.5 s
POSE_DIM = 3  # x, y, heading
_HEADING = AGENT_STATE_COLUMNS.index("heading")


def check_shape(name: str, x: object, shape: tuple[int | None, ...]) -> Tensor:
    """Raise a ValueError naming ``name`` unless ``x`` is a tensor of ``shape`` (None: any size); return it."""
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x


class PlannerModel(nn.Module):
    """Base of the planner hosts: ego-status normalisation buffers and the forward / compute_loss contract.

    ``forward(features)`` returns a dict with at least ``"trajectory"`` (B, 8, 3); ``compute_loss(features,
    targets, predictions)`` returns every loss term plus their weighted sum under ``"loss"``. Features and targets
    stay separate (NAVSIM's split) so targets can never leak into a prediction.
    """

    host: str = ""

    def __init__(self, cfg: PlannerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("ego_mean", torch.zeros(EGO_DIM))
        self.register_buffer("ego_std", torch.ones(EGO_DIM))

    @torch.no_grad()
    def set_normalization(self, stats: Mapping[str, np.ndarray | Tensor]) -> None:
        """Set ``ego_mean`` / ``ego_std`` (train-split statistics of ``ego_status``, shape (8,)). Standard
        deviations below 1e-6 (e.g. a command never used) become 1 so the division stays finite."""
        known = {"ego_mean", "ego_std"}
        unknown = set(stats) - known
        if unknown:
            raise ValueError(f"unknown normalisation statistics {sorted(unknown)}; valid: {sorted(known)}")
        for key, value in stats.items():
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).float().flatten()
            if t.numel() != EGO_DIM or not torch.isfinite(t).all():
                raise ValueError(f"{key} must be {EGO_DIM} finite numbers, got shape {tuple(t.shape)}")
            if key == "ego_std":
                t = torch.where(t.abs() > 1e-6, t.abs(), torch.ones_like(t))
            getattr(self, key).copy_(t.to(self.ego_mean.device))

    def normalized_ego(self, features: Mapping[str, Tensor]) -> Tensor:
        ego = check_shape("ego_status", features.get("ego_status"), (None, EGO_DIM)).float()
        return (ego - self.ego_mean) / self.ego_std

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_loss(self, features: dict[str, Tensor], targets: dict[str, Tensor],
                     predictions: dict[str, Tensor]) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------------------------
# Shared heads' output conventions and losses
# ---------------------------------------------------------------------------------------------------------------


def bounded_poses(raw: Tensor) -> Tensor:
    """(..., 3) raw head output -> poses: x, y unbounded, heading tanh * pi (NAVSIM TransFuser's head)."""
    return torch.cat([raw[..., :2], torch.tanh(raw[..., 2:3]) * math.pi], dim=-1)


def wrap_angle(a: Tensor) -> Tensor:
    """Angles to (-pi, pi]."""
    return torch.atan2(torch.sin(a), torch.cos(a))


def trajectory_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean L1 over poses and (x, y, heading), NAVSIM TransFuser's trajectory loss."""
    return F.l1_loss(pred, check_shape("trajectory target", target, tuple(pred.shape)).float())


def hungarian_match(cost: Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-sample optimal assignment of a (B, Q, N) cost: [(query indices, target indices)] (scipy)."""
    c = cost.detach().cpu().double().numpy()
    return [linear_sum_assignment(ci) for ci in c]


def agent_matching_cost(pred_states: Tensor, pred_logits: Tensor, gt_states: Tensor, gt_labels: Tensor,
                        class_weight: float, box_weight: float) -> Tensor:
    """NAVSIM's matching cost (B, Q, N): class_weight * BCE(logit_q, label_n) + box_weight * |xy_q - xy_n|_1
    (the L1 part only for real targets; padding slots are matched too, which teaches "no agent" labels)."""
    logits = pred_logits.detach().float()[:, :, None]  # (B, Q, 1)
    labels = gt_labels.detach().float()[:, None, :]  # (B, 1, N)
    bce = F.binary_cross_entropy_with_logits(logits.expand(-1, -1, labels.shape[2]),
                                             labels.expand(-1, logits.shape[1], -1), reduction="none")
    l1 = (pred_states.detach()[:, :, None, :2] - gt_states.detach()[:, None, :, :2]).abs().sum(-1) * labels
    return class_weight * bce + box_weight * l1


def agent_loss(pred_states: Tensor, pred_logits: Tensor, gt_states: Tensor, gt_labels: Tensor,
               class_weight: float = 10.0, box_weight: float = 1.0) -> dict[str, Tensor]:
    """Hungarian-matched agent loss (NAVSIM TransFuser): ``agent_box`` = L1 summed over the 5 state columns of
    matched real agents / number of real agents (heading difference wrapped to (-pi, pi]); ``agent_class`` = BCE
    of every query's existence logit against its matched label (0 for unmatched queries and padding)."""
    b, q = pred_logits.shape
    check_shape("agent_states target", gt_states, (b, None, len(AGENT_STATE_COLUMNS)))
    n = gt_states.shape[1]
    check_shape("agent_labels target", gt_labels, (b, n))
    gt_states, gt_labels = gt_states.float(), gt_labels.float()
    matches = hungarian_match(agent_matching_cost(pred_states, pred_logits, gt_states, gt_labels,
                                                  class_weight, box_weight))
    bi = torch.cat([torch.full((len(r),), i, dtype=torch.long) for i, (r, _) in enumerate(matches)])
    qi = torch.cat([torch.as_tensor(r, dtype=torch.long) for r, _ in matches])
    ni = torch.cat([torch.as_tensor(c, dtype=torch.long) for _, c in matches])
    dev = pred_states.device
    bi, qi, ni = bi.to(dev), qi.to(dev), ni.to(dev)
    target_labels = torch.zeros_like(pred_logits, dtype=torch.float32)
    target_labels[bi, qi] = gt_labels[bi, ni]
    diff = pred_states[bi, qi] - gt_states[bi, ni]
    diff = torch.cat([diff[:, :_HEADING], wrap_angle(diff[:, _HEADING:_HEADING + 1]), diff[:, _HEADING + 1:]], -1)
    box = (diff.abs().sum(-1) * gt_labels[bi, ni]).sum() / gt_labels.sum().clamp_min(1.0)
    cls = F.binary_cross_entropy_with_logits(pred_logits.float(), target_labels)
    return {"agent_box": box, "agent_class": cls}


def bev_semantic_loss(logits: Tensor, target: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Pixel-wise cross-entropy of (B, C, P, P) logits against (B, P, P) class ids (any integer dtype)."""
    b, _, h, w = logits.shape
    check_shape("bev_semantic_map target", target, (b, h, w))
    return F.cross_entropy(logits.float(), target.long(), weight=class_weights)


# ---------------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------------


def build_model(cfg: PlannerConfig, anchors: np.ndarray | Tensor | None = None) -> PlannerModel:
    """The host named by ``cfg.host``. ``anchors`` ((num_proposals, 8, 3), ego frame) only matter to ``ipad``
    (None: a fixed fan of constant-speed arcs); the other hosts refuse them to catch wiring mistakes."""
    if cfg.host == "ego-mlp":
        from latentvla.planner.modeling_egomlp import EgoMLPModel

        model: PlannerModel = EgoMLPModel(cfg)
    elif cfg.host == "transfuser":
        from latentvla.planner.modeling_transfuser import TransFuserModel

        model = TransFuserModel(cfg)
    elif cfg.host == "ipad":
        from latentvla.planner.modeling_ipad import IPadModel

        return IPadModel(cfg, anchors)
    else:
        raise ValueError(f"unknown host '{cfg.host}'; valid hosts: {list(HOSTS)}")
    if anchors is not None:
        raise ValueError(f"host '{cfg.host}' takes no anchors (only 'ipad' does)")
    return model


def ego_encoder(dim: int) -> nn.Module:
    """Normalised ego status -> a ``dim`` embedding: a two-layer MLP like NAVSIM's EgoStatusMLP, so a camera +
    LiDAR host starts with at least the ego-only baseline's view of its own motion (a single linear layer left
    the hosts behind ego-mlp on val ADE)."""
    return nn.Sequential(nn.Linear(EGO_DIM, dim), nn.ReLU(), nn.Linear(dim, dim))
