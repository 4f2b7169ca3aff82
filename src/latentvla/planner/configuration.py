"""Typed configuration of the planner hosts (one dataclass tree; presets in configs/planner/<profile>.yaml).

Three hosts share one feature/target pipeline and one training loop:

- ``transfuser``: camera (front three cameras stitched) and LiDAR (BEV histogram) branches fused by transformer
  blocks at two scales, a trajectory query, and NAVSIM TransFuser's auxiliary heads (BEV semantic map, agent boxes).
- ``ipad``: the same perception trunk, then ``num_proposals`` anchored proposal queries refined over ``iterations``
  rounds of attention to the BEV / image tokens around each proposal, and a scoring head that predicts each
  proposal's PDMS sub-scores; the best-scored proposal is the output.
- ``ego-mlp``: NAVSIM's EgoStatusMLP (ego status only), the shortcut baseline.

Coordinates follow NAVSIM: ego frame at t0 (x forward, y left, metres), BEV grids with row 0 at +x (far ahead) and
column 0 at +y (left), so an image of the grid looks like the scene seen from above with the ego driving up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latentvla.config import HASH_OMIT_DEFAULT

HOSTS = ("transfuser", "ipad", "ego-mlp")

# BEV semantic classes (index = class id in ``bev_semantic_map``; 0 is background). NAVSIM TransFuser's seven
# classes plus the lanes that a red light currently closes (the embedded world's long tail is full of them).
BEV_CLASSES = ("background", "road", "walkway", "centerline", "static_object", "vehicle", "pedestrian", "red_lane")

# Columns of ``agent_states`` (ego frame at t0) and the PDMS sub-scores the iPad scoring head predicts.
AGENT_STATE_COLUMNS = ("x", "y", "heading", "length", "width")
PROPOSAL_SCORE_COLUMNS = ("no_at_fault_collisions", "drivable_area_compliance", "time_to_collision_within_bound",
                          "ego_progress", "comfort", "pdms")


@dataclass
class CameraFeatureConfig:
    """Front cameras stitched left to right. ``backbone``: ``efficientnet-lite0`` (frozen ImageNet features at
    stride 16 and 32, cached: fast on CPU) or ``none`` (the stitched uint8 image; the host trains its own CNN)."""

    cameras: list[str] = field(default_factory=lambda: ["cam_l0", "cam_f0", "cam_r0"])
    image_height: int = 96  # per camera, after resizing
    image_width: int = 192
    backbone: str = "efficientnet-lite0"  # efficientnet-lite0 | none


@dataclass
class LidarFeatureConfig:
    """TransFuser's BEV histogram: points counted per cell below / above ``split_height`` (ego z), clipped at
    ``max_points`` and scaled to [0, 1]. The grid covers ``center_x_m + [-range_m, range_m]`` in x and
    ``[-range_m, range_m]`` in y."""

    range_m: float = 32.0
    # x of the grid's centre in the ego frame. TransFuser's square (0) sees as far behind as ahead; a forward shift
    # trades rear range for the hazards ahead at the same cell size (the BEV targets and boxes follow the grid).
    center_x_m: float = 0.0
    pixels: int = 64
    split_height: float = 0.2
    max_points: int = 5
    min_height: float = -2.0
    max_height: float = 100.0


@dataclass
class TargetConfig:
    max_agents: int = 20  # agent box slots (nearest vehicles in the BEV range)
    bev_pixels: int = 64  # semantic map grid (same range as the LiDAR grid)


@dataclass
class FeatureConfig:
    camera: CameraFeatureConfig = field(default_factory=CameraFeatureConfig)
    lidar: LidarFeatureConfig = field(default_factory=LidarFeatureConfig)
    targets: TargetConfig = field(default_factory=TargetConfig)
    batch_size: int = 32  # frames per frozen-backbone batch while caching


@dataclass
class TransFuserConfig:
    dim: int = 128
    heads: int = 4
    fusion_layers: int = 1  # transformer layers per fusion scale
    decoder_layers: int = 2  # query decoder over the fused BEV tokens
    # Plain-PyTorch LiDAR CNN stages (each halves the grid); the last two are the fusion scales and widths.
    # [16, 32, 64] (was [32, 64, 128]) keeps a batch-32 training step near 0.15 s on 2 CPU cores.
    lidar_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    # Fusion token grids ("anchors", TransFuser: 8x8 BEV, 8x32 image): each fusion scale average-pools its BEV map
    # to bev_anchor x bev_anchor and its camera map to image_anchor ([] = the stride-32 camera grid, 3x18).
    bev_anchor: int = 8
    image_anchor: list[int] = field(default_factory=list)
    decoder_bev_tokens: int = 8  # the query decoder reads the fused BEV map pooled to this many tokens per side
    mlp_ratio: int = 2  # transformer MLP width / dim (fusion, decoder, iPad proposal layers); NAVSIM: 4
    bev_loss_weight: float = 1.0  # NAVSIM: 10 (measured here over three seeds: no better, docs/TRAINING.md)
    agent_loss_weight: float = 1.0
    agent_class_weight: float = 10.0  # NAVSIM: existence BCE weight inside the agent loss (and matching cost)
    agent_box_weight: float = 1.0  # NAVSIM: box L1 weight inside the agent loss (and matching cost)
    trajectory_loss_weight: float = 10.0
    dropout: float = 0.0
    # The trajectory as an ego-status prior (an EgoStatusMLP of ``ego_mlp``'s size) plus the fused scene's
    # correction, whose last layer starts at zero: the host starts from the ego-only plan and learns what the scene
    # changes, instead of rediscovering the ego shortcut through the transformer.
    ego_prior: bool = False


@dataclass
class IPadConfig:
    num_proposals: int = 32  # anchored proposals (k-means of train-split expert trajectories)
    iterations: int = 3  # refinement rounds
    points_per_proposal: int = 4  # BEV sampling points along each proposal (deformable-style attention)
    score_loss_weight: float = 1.0
    refine_loss_weight: float = 10.0
    imitation_loss_weight: float = 1.0
    imitation_temperature: float = 1.0  # metres: soft target softmax(-ADE(anchor, gt) / T) over the anchors
    score_weights: dict[str, float] = field(default_factory=lambda: {"no_at_fault_collisions": 1.0,
                                                                      "drivable_area_compliance": 1.0,
                                                                      "time_to_collision_within_bound": 1.0,
                                                                      "ego_progress": 1.0, "comfort": 0.5,
                                                                      "pdms": 1.0})


@dataclass
class EgoMLPConfig:
    hidden: int = 256
    layers: int = 2
    trajectory_loss_weight: float = 1.0


@dataclass
class FusionConfig:
    """LatentVLA's "full" model: the teacher's pooled visual + generated-action embeddings become keys / values of
    gated cross-attention from the host's planning queries (iPad: every proposal round; TransFuser: the decoded
    trajectory query). The gates start at ``gate_init`` (0: tanh(0) = 0, so training starts from the host's own
    behaviour). ``planner train --teacher VLA_RUN`` switches it on and fills ``context_*`` and ``teacher_key``
    (the teacher's weights hash, so a retrained teacher never reuses a stale run).

    ``zero_output``: the blocks' output projections (attention and MLP) start at zero instead, so the fused model
    starts as the host whatever the gates, and ``gate_init`` must open the gates (e.g. 1.0). A closed tanh gate
    hands the block's own weights no gradient and barely moves in a short run (|tanh g| < 0.1 after 12 demo
    epochs); zero output projections learn from the first step (adapter / ControlNet style). On iPad fused with
    the expert's own future as context (a mechanism check, docs/TRAINING.md) it lowers val ADE 0.35 -> 0.27 m."""

    enabled: bool = False
    layers: int = 1  # gated cross-attention blocks per fusion point
    gate_init: float = 0.0
    zero_output: bool = field(default=False, metadata=HASH_OMIT_DEFAULT)
    context_dim: int = 0  # teacher embedding width D
    context_tokens: int = 0  # pooled visual + action tokens per scene
    teacher_key: str = ""


LATENT_TARGETS = ("none", "teacher", "labels")


@dataclass
class DistillConfig:
    """Extra training signals of the student (``--distill-from FULL_RUN``) and the ``ipad-aux`` control.

    - ``latent_target``: a head decodes ``latent_positions`` x ``latent_codes`` latent-token logits from the
      host's scene tokens; ``teacher``: KL from the teacher's per-position soft distributions (the paper's
      distillation target), ``labels``: cross-entropy to the LAM's codes (the auxiliary-task control, no teacher).
    - ``score_weight``: KL between the full model's and the student's proposal selection distributions (iPad).
    - ``feature_weight``: MSE between a linear map of the student's planning features and the full model's fused
      ones. Each weight 0 switches its term off; ``temperature`` softens both KL terms (scaled by T^2)."""

    latent_target: str = "none"
    latent_positions: int = 0
    latent_codes: int = 0
    latent_weight: float = 1.0
    score_weight: float = 1.0
    feature_weight: float = 1.0
    temperature: float = 1.0
    full_key: str = ""  # the full model's weights hash; "" = no full-model terms
    source_key: str = ""  # the teacher's weights hash or the LAM labels' config hash behind latent_target


@dataclass
class PlannerTrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 10
    # Linear learning-rate warm-up over the first ``warmup_epochs`` (fractions allowed) before the per-epoch cosine
    # decay; 0 = none. ``grad_clip``: clip the global gradient norm to this value; 0 = off.
    warmup_epochs: float = 0.0
    grad_clip: float = 0.0
    # Exponential moving average of the weights, updated every optimiser step (0 = off; 0.99 averages about the
    # last 100 steps). Validation, the best-epoch selection and the saved model then use the averaged weights.
    ema_decay: float = 0.0
    val_every_epochs: int = 1
    num_threads: int = 2
    workers: int = 1  # processes for feature / target caching


@dataclass
class PlannerConfig:
    seed: int = 0
    host: str = "transfuser"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    transfuser: TransFuserConfig = field(default_factory=TransFuserConfig)
    ipad: IPadConfig = field(default_factory=IPadConfig)
    ego_mlp: EgoMLPConfig = field(default_factory=EgoMLPConfig)
    train: PlannerTrainConfig = field(default_factory=PlannerTrainConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.host not in HOSTS:
            raise ValueError(f"unknown host '{self.host}'; valid hosts: {list(HOSTS)}")
        if self.distill.latent_target not in LATENT_TARGETS:
            raise ValueError(f"distill.latent_target '{self.distill.latent_target}' invalid; valid: "
                             f"{list(LATENT_TARGETS)}")
        if self.host == "ego-mlp" and (self.fusion.enabled or self.distill.latent_target != "none"
                                       or self.distill.full_key):
            raise ValueError("the ego-mlp host has no scene tokens or planning queries: fusion and distillation "
                             "need host transfuser or ipad")
        if self.fusion.zero_output and self.fusion.gate_init == 0.0:
            raise ValueError("fusion.zero_output starts the fusion blocks' output projections at zero; with "
                             "fusion.gate_init 0 as well nothing would ever learn: set fusion.gate_init (e.g. 1.0)")
        t = self.train
        if t.warmup_epochs < 0 or t.grad_clip < 0 or not (t.ema_decay == 0.0 or 0.0 < t.ema_decay < 1.0):
            raise ValueError(f"train.warmup_epochs and train.grad_clip must be >= 0 and train.ema_decay in (0, 1) "
                             f"or 0 (off), got {t.warmup_epochs}, {t.grad_clip}, {t.ema_decay}")
        if self.features.camera.backbone not in ("efficientnet-lite0", "none"):
            raise ValueError(f"features.camera.backbone '{self.features.camera.backbone}' invalid; "
                             f"valid: ['efficientnet-lite0', 'none']")
