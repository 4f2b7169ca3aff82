"""Perception trunk shared by the TransFuser and iPad hosts: LiDAR BEV CNN, camera branch, two-scale GPT fusion.

Plain PyTorch (no torchvision / timm), sized for CPU training. The LiDAR CNN halves the BEV grid at every stage
(``lidar_channels`` gives the widths); the last two stages (16x16 and 8x8 for a 64x64 grid) meet the camera's
stride-16 and stride-32 maps. At each of those two scales, TransFuser's GPT fusion runs: both maps are average-
pooled to a small token grid ("anchors", as in TransFuser), flattened with learned positional embeddings,
concatenated, passed through ``fusion_layers`` transformer blocks, split back, upsampled to each map's size and
added residually to it. The fused stride-16 image map also feeds the stride-32 image map (average-pooled, 1x1
conv), so both camera scales see the first fusion, as TransFuser's image CNN does.

Outputs (``TrunkOutput``): a BEV map at the finest fused scale (FPN: the coarser fused map projected, upsampled
and added), ``dim``-wide decoder tokens pooled from it, and the fused stride-32 image tokens.

Sizes were chosen for a batch-32 training step of ~0.1-0.2 s on 2 CPU cores: fusion on pooled token grids, one
conv per LiDAR stage, narrow fusion widths, heads of >= 32 channels.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.planner.configuration import PlannerConfig

# Channels of the cached frozen camera features at stride 16 and 32 (EfficientNet-Lite0 blocks 5 and 7).
CAMERA_FEATURE_CHANNELS = {"efficientnet-lite0": (112, 320)}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def resize_pos(pos: Tensor, size: tuple[int, int]) -> Tensor:
    """A (1, C, h, w) learned positional map resized (bilinear) to ``size`` when the input grid differs."""
    if tuple(pos.shape[-2:]) == tuple(size):
        return pos
    return F.interpolate(pos, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# Transformer pieces (pre-norm; attention through F.scaled_dot_product_attention)
# ---------------------------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention from ``x`` to ``memory`` (``memory=None``: self-attention)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, memory: Tensor | None = None) -> Tensor:
        mem = x if memory is None else memory
        b, n, c = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.kv(mem).view(b, mem.shape[1], 2, h, c // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def mlp(dim: int, ratio: int, dropout: float = 0.0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ratio * dim, dim))


class EncoderBlock(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = mlp(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Queries: self-attention, cross-attention to (already normalised) memory tokens, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.mlp = mlp(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        x = x + self.self_attn(self.ln1(x))
        x = x + self.cross_attn(self.ln2(x), memory)
        return x + self.mlp(self.ln3(x))


# ---------------------------------------------------------------------------------------------------------------
# Branches
# ---------------------------------------------------------------------------------------------------------------


class LidarEncoder(nn.Module):
    """BEV histogram (B, 2, P, P) -> one map per stage; every stage halves the grid with one 3x3 conv.

    One conv per stage (no BatchNorm on this branch): on a 2-core CPU every full-batch feature map costs
    milliseconds forward + backward, and the fusion transformers that follow add the depth and context."""

    def __init__(self, channels: list[int], in_channels: int = 2) -> None:
        super().__init__()
        stages, cin = [], in_channels
        for cout in channels:
            stages.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU(inplace=True)))
            cin = cout
        self.stages = nn.ModuleList(stages)


class CameraStem(nn.Module):
    """Own small CNN for ``camera.backbone == "none"``: stitched uint8 image (B, 3, H, 3W) -> stride-16 and
    stride-32 maps. ImageNet normalisation happens here, so the cached input stays uint8 (4x smaller)."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 48, 64, 128)) -> None:
        super().__init__()
        layers, cin = [], 3
        for cout in channels[:-1]:
            layers.append(conv_bn_relu(cin, cout, stride=2))
            cin = cout
        self.to_s16 = nn.Sequential(*layers)
        self.to_s32 = conv_bn_relu(cin, channels[-1], stride=2)
        self.out_channels = (channels[-2], channels[-1])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = (image.float() - self.mean) / self.std
        s16 = self.to_s16(x)
        return s16, self.to_s32(s16)


class TokenFusion(nn.Module):
    """TransFuser's GPT fusion at one scale: pooled BEV + image tokens -> transformer -> residual to both maps.
    Uses min(heads, width // 32) heads (at least 1)."""

    def __init__(self, width: int, heads: int, layers: int, bev_anchor: tuple[int, int],
                 image_anchor: tuple[int, int], mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        # Heads of at least 32 channels: on CPU, attention costs heads x tokens^2 whatever the head width.
        heads = max(1, min(heads, width // 32))
        self.bev_anchor, self.image_anchor = tuple(bev_anchor), tuple(image_anchor)
        self.bev_pos = nn.Parameter(torch.randn(1, bev_anchor[0] * bev_anchor[1], width) * 0.02)
        self.image_pos = nn.Parameter(torch.randn(1, image_anchor[0] * image_anchor[1], width) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(width, heads, mlp_ratio, dropout) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)

    @staticmethod
    def _pool(x: Tensor, size: tuple[int, int]) -> Tensor:
        return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)

    @staticmethod
    def _back(tokens: Tensor, size: tuple[int, int], like: Tensor) -> Tensor:
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *size)
        if tuple(like.shape[-2:]) != size:
            grid = F.interpolate(grid, size=like.shape[-2:], mode="nearest")
        return like + grid

    def forward(self, bev: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        b_tok = self._pool(bev, self.bev_anchor).flatten(2).transpose(1, 2) + self.bev_pos
        i_tok = self._pool(image, self.image_anchor).flatten(2).transpose(1, 2) + self.image_pos
        x = self.ln(self.blocks(torch.cat([b_tok, i_tok], dim=1)))
        n = b_tok.shape[1]
        return self._back(x[:, :n], self.bev_anchor, bev), self._back(x[:, n:], self.image_anchor, image)


# ---------------------------------------------------------------------------------------------------------------
# Trunk
# ---------------------------------------------------------------------------------------------------------------


class TrunkOutput(NamedTuple):
    bev_map: Tensor  # (B, bev_channels, Hb, Wb) at the finest fused BEV scale (orientation of lidar_bev)
    bev_tokens: Tensor  # (B, Hd * Wd, dim) decoder tokens pooled from bev_map, positional embedding added
    image_tokens: Tensor  # (B, Hi * Wi, dim) fused stride-32 camera tokens, positional embedding added
    image_token: Tensor  # (B, 1, dim) mean of image_tokens (before the positional embedding)


def camera_grid(cfg: PlannerConfig, stride: int) -> tuple[int, int]:
    cam = cfg.features.camera
    n = len(cam.cameras)
    return -(-cam.image_height // stride), -(-(n * cam.image_width) // stride)


class PerceptionTrunk(nn.Module):
    """LiDAR + camera branches with two-scale GPT fusion; see the module docstring. Widths come from
    ``cfg.transfuser`` (both hosts use it): the two fusion scales run at ``lidar_channels[-2:]``."""

    def __init__(self, cfg: PlannerConfig) -> None:
        super().__init__()
        tf = cfg.transfuser
        chans = list(tf.lidar_channels)
        if len(chans) < 2:
            raise ValueError(f"transfuser.lidar_channels needs >= 2 stages, got {chans}")
        pixels = cfg.features.lidar.pixels
        if pixels % (2 ** len(chans)):
            raise ValueError(f"features.lidar.pixels ({pixels}) must be divisible by 2**{len(chans)}")
        self.pixels, self.backbone = pixels, cfg.features.camera.backbone
        w16, w32, dim = chans[-2], chans[-1], tf.dim
        self.lidar = LidarEncoder(chans)
        if self.backbone == "none":
            self.stem: CameraStem | None = CameraStem()
            c16, c32 = self.stem.out_channels
        else:
            self.stem = None
            c16, c32 = CAMERA_FEATURE_CHANNELS[self.backbone]
        # Frozen features have a large, channel-dependent range: a 1x1 projection then BatchNorm (on the narrow
        # side, cheaper than normalising the 112 / 320 input channels) puts them on the fusion scale.
        self.adapt16 = nn.Sequential(nn.Conv2d(c16, w16, 1, bias=False), nn.BatchNorm2d(w16))
        self.adapt32 = nn.Sequential(nn.Conv2d(c32, w32, 1, bias=False), nn.BatchNorm2d(w32))
        self.down16 = nn.Conv2d(w16, w32, 1)  # fused s16 (average-pooled to the s32 grid) -> s32 image map
        side = pixels // 2 ** (len(chans) - 1)
        self.bev_size = (side, side)  # grid of bev_map (the finest fused scale)
        anchor = tuple(tf.image_anchor) if tf.image_anchor else camera_grid(cfg, 32)
        if len(anchor) != 2 or min(anchor) < 1 or tf.bev_anchor < 1:
            raise ValueError(f"transfuser.bev_anchor must be >= 1 and image_anchor [] or [rows, cols] >= 1, got "
                             f"{tf.bev_anchor}, {tf.image_anchor}")
        scales = []  # (bev side, camera grid) of the two fusion scales; anchors never exceed the map itself
        for bev_side, stride in ((side, 16), (side // 2, 32)):
            grid = camera_grid(cfg, stride)
            scales.append(((min(tf.bev_anchor, bev_side),) * 2, (min(anchor[0], grid[0]), min(anchor[1], grid[1]))))
        self.fuse16 = TokenFusion(w16, tf.heads, tf.fusion_layers, *scales[0], tf.mlp_ratio, tf.dropout)
        self.fuse32 = TokenFusion(w32, tf.heads, tf.fusion_layers, *scales[1], tf.mlp_ratio, tf.dropout)
        self.top = nn.Conv2d(w32, w16, 1)  # FPN top-down: coarse fused map onto the finest fused grid
        self.bev_channels = w16
        self.decoder_grid = (min(tf.decoder_bev_tokens, side),) * 2
        self.bev_proj = nn.Linear(w16, dim)
        self.bev_pos = nn.Parameter(torch.randn(1, self.decoder_grid[0] * self.decoder_grid[1], dim) * 0.02)
        self.image_proj = nn.Linear(w32, dim)
        self.image_pos = nn.Parameter(torch.randn(1, dim, *camera_grid(cfg, 32)) * 0.02)

    def camera_maps(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The two camera maps at the fusion widths, from cached features or the own stem."""
        if self.stem is not None:
            if "camera" not in features:
                raise ValueError("camera.backbone is 'none': features need 'camera' (B, 3, H, 3W) uint8")
            s16, s32 = self.stem(features["camera"])
        else:
            if "camera_s16" not in features or "camera_s32" not in features:
                raise ValueError(f"camera.backbone is '{self.backbone}': features need 'camera_s16' and "
                                 f"'camera_s32' (got {sorted(features)})")
            s16, s32 = features["camera_s16"].float(), features["camera_s32"].float()
        return self.adapt16(s16), self.adapt32(s32)

    def forward(self, features: dict[str, Tensor]) -> TrunkOutput:
        lidar = features.get("lidar_bev")
        if not isinstance(lidar, Tensor):
            raise ValueError(f"features need 'lidar_bev' (B, 2, {self.pixels}, {self.pixels}), got {sorted(features)}")
        lidar = lidar.float()
        if lidar.ndim != 4 or lidar.shape[1] != 2 or tuple(lidar.shape[-2:]) != (self.pixels, self.pixels):
            raise ValueError(f"lidar_bev must be (B, 2, {self.pixels}, {self.pixels}), got {tuple(lidar.shape)}")
        img16, img32 = self.camera_maps(features)
        x = lidar
        for stage in self.lidar.stages[:-1]:
            x = stage(x)
        bev16, img16 = self.fuse16(x, img16)
        img32 = img32 + self.down16(F.adaptive_avg_pool2d(img16, img32.shape[-2:]))
        bev32, img32 = self.fuse32(self.lidar.stages[-1](bev16), img32)
        top = F.interpolate(self.top(bev32), size=bev16.shape[-2:], mode="nearest")
        bev_map = F.relu(bev16 + top)
        pooled = bev_map if bev_map.shape[-1] == self.decoder_grid[-1] else F.adaptive_avg_pool2d(
            bev_map, self.decoder_grid)
        bev_tokens = self.bev_proj(pooled.flatten(2).transpose(1, 2)) + self.bev_pos
        img = self.image_proj(img32.flatten(2).transpose(1, 2))
        pos = resize_pos(self.image_pos, tuple(img32.shape[-2:])).flatten(2).transpose(1, 2)
        return TrunkOutput(bev_map, bev_tokens, img + pos, img.mean(1, keepdim=True))
