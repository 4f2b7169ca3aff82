"""Which LAM feature tokens come from which sensor, and ego-motion compensation of the LiDAR tokens.

With ``encoder.lidar`` a frame's tokens are the camera's followed by LiDAR BEV patches (block layout, see
``lam.features.CameraLidarFeatures``). :class:`SensorLayout` records that split and the BEV geometry so the model
can give each IDM one sensor (``model.env_sensor`` / ``model.ego_sensor``) and can resample frame t+Δ's LiDAR
patches into frame t's ego frame (``model.env_warp``).

Why warp: the environment IDM is *given* the ego motion (stage 1), yet a transformer over BEV patches does not learn
to undo a 5-10 m shift of the whole raster from one conditioning token in a few hundred steps, so the change it sees
is dominated by the ego's own motion. Resampled into frame t, the static world cancels and what remains in
``warped(t+Δ) - t`` is what the other agents did: the environment action, by construction (ground returns, whose
ring pattern moves with the sensor, are held at frame t's).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from latentvla.lam.configuration import EncoderConfig

SENSORS = ("all", "camera", "lidar")


@dataclass(frozen=True)
class SensorLayout:
    """Tokens [0, camera_tokens) are the camera's; the last ``lidar_tokens`` tokens are LiDAR BEV patches whose
    features sit in dims [lidar_offset, feat_dim) as (2, pixels / rows, pixels / cols) channel-major patches, the
    grid row-major, rows running from +x (ahead) to -x and columns from +y (left) to -y (``bev_cells``)."""

    camera_tokens: int
    lidar_tokens: int = 0
    lidar_offset: int = 0
    bev_grid: tuple[int, int] = (1, 1)
    bev_pixels: int = 1
    bev_range_m: float = 1.0
    bev_center_x_m: float = 0.0

    @property
    def tokens(self) -> int:
        return self.camera_tokens + self.lidar_tokens

    def token_slice(self, sensor: str) -> slice:
        """The tokens of ``sensor`` ("all", "camera" or "lidar"); an error names what the features lack."""
        if sensor not in SENSORS:
            raise ValueError(f"sensor must be one of {SENSORS}, got {sensor!r}")
        if sensor == "all":
            return slice(0, self.tokens)
        n = self.camera_tokens if sensor == "camera" else self.lidar_tokens
        if n == 0:
            raise ValueError(f"the LAM features have no {sensor} tokens (layout: {self.camera_tokens} camera, "
                             f"{self.lidar_tokens} LiDAR); set encoder.lidar=true for camera + LiDAR tokens")
        return slice(0, n) if sensor == "camera" else slice(self.camera_tokens, self.tokens)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SensorLayout:
        d = json.loads(text)
        return cls(**{**d, "bev_grid": tuple(d["bev_grid"])})


def sensor_layout(enc: EncoderConfig, tokens: int, feat_dim: int) -> SensorLayout:
    """The layout of features built by ``enc`` with ``tokens`` tokens of ``feat_dim`` dims per frame."""
    from latentvla.lam.encoder import LIDAR_BEV, LidarBEVEncoder
    from latentvla.lam.features import sensor_configs

    if not enc.lidar and enc.name != LIDAR_BEV:
        return SensorLayout(camera_tokens=tokens)
    lidar = LidarBEVEncoder(sensor_configs(enc)[-1])  # no weights: only its token shape is read
    (rows, cols), p = lidar.grid, int(enc.bev_pixels)
    lidar_tokens, lidar_dim = lidar.num_tokens, lidar.dim
    if lidar_tokens > tokens or lidar_dim > feat_dim:
        raise ValueError(f"features of {tokens} tokens x {feat_dim} dims cannot hold the {lidar_tokens} LiDAR "
                         f"tokens x {lidar_dim} dims of bev_grid {tuple(enc.bev_grid)}, bev_pixels {p}")
    return SensorLayout(camera_tokens=tokens - lidar_tokens, lidar_tokens=lidar_tokens,
                        lidar_offset=feat_dim - lidar_dim, bev_grid=(rows, cols), bev_pixels=p,
                        bev_range_m=float(enc.bev_range_m), bev_center_x_m=float(enc.bev_center_x_m))


def _raster(tokens: Tensor, layout: SensorLayout) -> Tensor:
    """(B, rows * cols, 2 * ph * pw) patches -> (B, 2, P, P) raster (the inverse of ``bev_patches``)."""
    (rows, cols), p = layout.bev_grid, layout.bev_pixels
    b = tokens.shape[0]
    x = tokens.reshape(b, rows, cols, 2, p // rows, p // cols).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 2, p, p)


def bev_patches(raster: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, 2, P, P) BEV raster -> (B, rows * cols, 2 * (P / rows) * (P / cols)) tokens: the grid row-major, each
    patch flattened channel-major. The one patch layout of the LiDAR tokens (``LidarBEVEncoder`` writes it)."""
    (rows, cols), p = grid, raster.shape[-1]
    b = raster.shape[0]
    x = raster.reshape(b, 2, rows, p // rows, cols, p // cols).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, rows * cols, -1)


def warp_lidar(feat_t: Tensor, feat_tp: Tensor, pose: Tensor, layout: SensorLayout) -> Tensor:
    """``feat_tp`` with its LiDAR tokens resampled into frame t's ego frame (bilinear).

    ``pose`` (B, 3) is frame t+Δ's ego pose (x, y, heading) in frame t (``lam.data.ego_motion``'s first three
    numbers). Cells of frame t's grid that frame t+Δ's grid does not cover keep frame t's value, so the change there
    is zero rather than an edge whose width would encode the ego's speed. The low channel (returns below the
    histogram's split height, i.e. the ground) is frame t's: its ring pattern is centred on the sensor, so warped it
    would be a picture of the ego's own motion, and the ground does not move. Camera tokens are returned unchanged.
    """
    if not layout.lidar_tokens:
        raise ValueError("warp_lidar needs LiDAR tokens in the features (encoder.lidar=true or encoder.name=lidar-bev)")
    s, d = layout.token_slice("lidar"), layout.lidar_offset
    bev_t, bev_tp = _raster(feat_t[:, s, d:], layout), _raster(feat_tp[:, s, d:], layout)
    p, r, cx = layout.bev_pixels, layout.bev_range_m, layout.bev_center_x_m
    res = 2.0 * r / p
    centres = (torch.arange(p, dtype=feat_t.dtype, device=feat_t.device) + 0.5) * res
    x = (r + cx - centres)[:, None].expand(p, p)  # (row, col) -> ego-frame x of frame t
    y = (r - centres)[None, :].expand(p, p)
    dx, dy, th = (pose[:, i, None, None].to(feat_t.dtype) for i in range(3))
    cos, sin = torch.cos(th), torch.sin(th)
    xp = cos * (x - dx) + sin * (y - dy)  # the same ground point in frame t+Δ
    yp = -sin * (x - dx) + cos * (y - dy)
    grid = torch.stack([-yp / r, (cx - xp) / r], dim=-1)  # grid_sample's (col, row) in [-1, 1], align_corners=False
    warped = F.grid_sample(bev_tp, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(bev_tp[:, :1]), grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    warped = warped + (1.0 - inside) * bev_t
    warped[:, 0] = bev_t[:, 0]  # ground returns: the scan's rings travel with the sensor, not with the world
    out = feat_tp.clone()
    out[:, s, d:] = bev_patches(warped, layout.bev_grid)
    return out
