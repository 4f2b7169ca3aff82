"""Planner features, NAVSIM's rule: built from the ``AgentInput`` only (history ego statuses + current sensors),
never from the map, tracks, annotations or the future, so the same code runs at inference on a live input.

Keys (shapes without the batch dimension, see :func:`feature_shapes`):

- ``ego_status`` float32 (8,): current vx, vy, ax, ay (ego frame) and the one-hot driving command
  (:func:`latentvla.data.torch_dataset.ego_status_features`).
- ``lidar_bev`` float32 (2, P, P): TransFuser's LiDAR histogram of the current sweep on the BEV grid (below).
  Channel 0 counts points with ``min_height <= z <= split_height``, channel 1 those with
  ``split_height < z <= max_height``; counts are clipped at ``max_points`` and divided by it.
  Heights are ego-frame z. The embedded world's LiDAR (``world/render/lidar.py``) sits at
  ``SensorConfig.lidar_height`` = 1.9 m above the ego origin, but it reports returns in the ego frame whose z = 0 is
  the ground plane (ground hits are written with z = 0 exactly), so ``split_height`` is a height above the road:
  the default 0.2 m puts the road surface in channel 0 and anything standing on it (vehicle bodies, pedestrians)
  in channel 1. NAVSIM/OpenScene sweeps are in the ego frame as well (origin at the rear axle on the ground).
- camera, ``backbone = "efficientnet-lite0"``: ``camera_s16`` float16 (112, ceil(H/16), n*ceil(W/16)) and
  ``camera_s32`` float16 (320, ceil(H/32), n*ceil(W/32)): the frozen ImageNet EfficientNet-Lite0 outputs of the
  last 112-channel block (block 10, stride 16) and the last 320-channel block (block 15, stride 32, *before* the
  1280-channel head conv), computed per camera at (image_height, image_width) and concatenated along the width in
  ``cameras`` order (left to right). Block indices are found from the installed package's block arguments, not
  hard-coded, and checked against these channel counts.
- camera, ``backbone = "none"``: ``camera`` uint8 (3, H, n*W): the resized RGB images stitched left to right.

BEV grid (shared with the targets): the square ``[c - range_m, c + range_m] x [-range_m, range_m]`` of the ego
frame (c = ``lidar.center_x_m``, 0 by default) in ``P x P`` cells of ``2 * range_m / P`` metres; row 0 is +x (far
ahead), column 0 is +y (left): cell (row, col) holds ``c + range_m - (row + 1) * res < x <= c + range_m - row * res``
and likewise for y with col (c = 0). Points outside are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from latentvla.planner.configuration import CameraFeatureConfig, FeatureConfig, LidarFeatureConfig
from latentvla.schema import AgentInput

LITE0 = "efficientnet-lite0"
S16_CHANNELS = 112  # EfficientNet-Lite0 stage 5 (stride 16) output channels
S32_CHANNELS = 320  # stage 7 (stride 32) output channels, before the 1280-channel head conv
# Every key a FeatureBuilder can emit; which ones depends on the camera backbone (see feature_keys).
FEATURE_KEYS: tuple[str, ...] = ("ego_status", "lidar_bev", "camera", "camera_s16", "camera_s32")
FEATURE_DTYPES: dict[str, type] = {"ego_status": np.float32, "lidar_bev": np.float32, "camera": np.uint8,
                                   "camera_s16": np.float16, "camera_s32": np.float16}


def feature_keys(cfg: FeatureConfig) -> tuple[str, ...]:
    """The keys :class:`FeatureBuilder` emits under ``cfg``."""
    if cfg.camera.backbone == LITE0:
        return ("ego_status", "lidar_bev", "camera_s16", "camera_s32")
    if cfg.camera.backbone == "none":
        return ("ego_status", "lidar_bev", "camera")
    raise ValueError(f"features.camera.backbone '{cfg.camera.backbone}' invalid; valid: ['{LITE0}', 'none']")


def _ceil_div(a: int, b: int) -> int:
    return -(-int(a) // b)


def feature_shapes(cfg: FeatureConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every feature of one scene (no batch dimension) under ``cfg``."""
    cam, p = cfg.camera, cfg.lidar.pixels
    n, h, w = len(cam.cameras), cam.image_height, cam.image_width
    shapes: dict[str, tuple[int, ...]] = {"ego_status": (8,), "lidar_bev": (2, p, p)}
    if cam.backbone == LITE0:
        shapes["camera_s16"] = (S16_CHANNELS, _ceil_div(h, 16), n * _ceil_div(w, 16))
        shapes["camera_s32"] = (S32_CHANNELS, _ceil_div(h, 32), n * _ceil_div(w, 32))
    else:
        shapes["camera"] = (3, h, n * w)
    assert tuple(shapes) == feature_keys(cfg)
    return shapes


def validate_feature_config(cfg: FeatureConfig) -> None:
    """Raise a ValueError naming the bad field (cheap; before any model or worker starts)."""
    feature_keys(cfg)
    cam, lid = cfg.camera, cfg.lidar
    if not cam.cameras:
        raise ValueError("features.camera.cameras must name at least one camera")
    if cam.image_height < 1 or cam.image_width < 1:
        raise ValueError(f"features.camera image size must be positive, got {cam.image_height}x{cam.image_width}")
    if lid.pixels < 1 or lid.range_m <= 0 or lid.max_points < 1:
        raise ValueError(f"features.lidar needs pixels >= 1, range_m > 0 and max_points >= 1, got {lid}")
    if not lid.min_height <= lid.split_height <= lid.max_height:
        raise ValueError(f"features.lidar needs min_height <= split_height <= max_height, got {lid}")
    if cfg.batch_size < 1:
        raise ValueError(f"features.batch_size must be >= 1, got {cfg.batch_size}")


# --- BEV grid ----------------------------------------------------------------------------------------------------
def bev_cells(xy: np.ndarray, range_m: float, pixels: int, center_x: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Integer (row, col) cells of ego-frame points (N, 2) on the BEV grid (may lie outside [0, pixels))."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    res = 2.0 * range_m / pixels
    row = np.floor((range_m + center_x - xy[:, 0]) / res).astype(np.int64)
    col = np.floor((range_m - xy[:, 1]) / res).astype(np.int64)
    return row, col


def lidar_bev(points: np.ndarray, cfg: LidarFeatureConfig) -> np.ndarray:
    """TransFuser's two-channel LiDAR histogram, float32 (2, P, P) in [0, 1] (see the module docstring)."""
    pts = np.asarray(points)
    p = int(cfg.pixels)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"LiDAR points must be (N, >=3) (x, y, z, ...), got {pts.shape}")
    z = pts[:, 2]
    # heights compare in the cloud's own precision, so a float32 z of 0.2 counts as "<= split_height = 0.2"
    lo, split, hi = (np.asarray(v, dtype=z.dtype if z.dtype.kind == "f" else np.float64)
                     for v in (cfg.min_height, cfg.split_height, cfg.max_height))
    row, col = bev_cells(pts[:, :2], cfg.range_m, p, cfg.center_x_m)
    keep = (z >= lo) & (z <= hi) & (row >= 0) & (row < p) & (col >= 0) & (col < p)
    channel = (z[keep] > split).astype(np.int64)
    flat = (channel * p + row[keep]) * p + col[keep]
    counts = np.bincount(flat, minlength=2 * p * p).reshape(2, p, p)
    return np.minimum(counts, cfg.max_points).astype(np.float32) / np.float32(cfg.max_points)


# --- cameras -----------------------------------------------------------------------------------------------------
def camera_images(agent_input: AgentInput, cfg: CameraFeatureConfig) -> list[np.ndarray]:
    """The current frame's images of ``cfg.cameras`` (left to right), RGB uint8 resized to the configured size."""
    current = agent_input.cameras[-1] if agent_input.cameras else {}
    h, w = cfg.image_height, cfg.image_width
    out = []
    for name in cfg.cameras:
        cam = current.get(name)
        if cam is None or cam.image is None:
            have = sorted(n for n, c in current.items() if c.image is not None)
            raise ValueError(f"scene {agent_input.token or '?'}: camera '{name}' has no image in the current frame; "
                             f"loaded cameras: {have} (set features.camera.cameras to a subset of them)")
        img = np.asarray(cam.image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"scene {agent_input.token or '?'}: camera '{name}' image must be RGB uint8 (H, W, 3), "
                             f"got {img.dtype} {img.shape}")
        if img.shape[:2] != (h, w):
            img = cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA)
        out.append(img)
    return out


class Lite0MultiScale:
    """Frozen EfficientNet-Lite0 trunk up to its last block: (B, H, W, 3) uint8 -> float32 maps at stride 16
    (112 ch) and 32 (320 ch). Weights, normalisation and freezing come from :mod:`latentvla.lam.encoder`."""

    def __init__(self, image_height: int, image_width: int, device: str = "cpu"):
        from latentvla.lam.encoder import load_lite0

        self.device = device
        self.model = load_lite0(image_height, image_width, device)
        outs = [int(b._block_args.output_filters) for b in self.model._blocks]
        self.s16_index = max(i for i, c in enumerate(outs) if c == S16_CHANNELS) if S16_CHANNELS in outs else -1
        self.s32_index = len(outs) - 1
        if self.s16_index < 0 or outs[-1] != S32_CHANNELS:
            raise RuntimeError(f"unexpected EfficientNet-Lite0 block outputs {outs}: expected a {S16_CHANNELS}-channel "
                               f"stage and a last block of {S32_CHANNELS} channels (efficientnet-lite-pytorch changed?)")

    def __call__(self, images: np.ndarray):
        import torch

        from latentvla.lam.encoder import lite0_input

        m = self.model
        if m.training:  # stay frozen even if someone flipped the module to train mode
            m.eval()
        x = lite0_input(images, self.device)
        with torch.inference_mode():
            x = m._swish(m._bn0(m._conv_stem(x)))
            s16 = None
            rate, n = m._global_params.drop_connect_rate, len(m._blocks)
            for idx, block in enumerate(m._blocks):  # as EfficientNet.extract_features, minus the head conv
                x = block(x, drop_connect_rate=rate * idx / n if rate else rate)
                if idx == self.s16_index:
                    s16 = x
            return s16.float().cpu().numpy(), x.float().cpu().numpy()


_BACKBONES: dict[tuple[int, int, str], Lite0MultiScale] = {}  # one per image size and device in this process


def lite0_backbone(image_height: int, image_width: int, device: str = "cpu") -> Lite0MultiScale:
    key = (int(image_height), int(image_width), device)
    if key not in _BACKBONES:
        if len(_BACKBONES) >= 2:
            _BACKBONES.clear()
        _BACKBONES[key] = Lite0MultiScale(*key)
    return _BACKBONES[key]


def _check_inputs(agent_inputs: Sequence[AgentInput]) -> list[AgentInput]:
    if isinstance(agent_inputs, AgentInput):
        raise TypeError("FeatureBuilder takes a list of AgentInput; wrap a single input as [agent_input] "
                        "(or call build_one)")
    out = list(agent_inputs)
    for ai in out:
        if not isinstance(ai, AgentInput):
            raise TypeError(f"features are built from AgentInput only (NAVSIM: never the Scene, map or future); "
                            f"got {type(ai).__name__}")
    return out


class FeatureBuilder:
    """``FeatureBuilder(cfg)(agent_inputs) -> {key: array (B, ...)}`` with the keys of :func:`feature_keys`.

    Needs no dataset: the planner calls it at inference on ``[agent_input]``. Images go through the frozen backbone
    ``cfg.batch_size`` at a time on torch's current thread count."""

    def __init__(self, cfg: FeatureConfig, device: str = "cpu"):
        validate_feature_config(cfg)
        self.cfg = cfg
        self.device = device
        self.keys = feature_keys(cfg)
        self.shapes = feature_shapes(cfg)

    @property
    def backbone(self) -> Lite0MultiScale:
        cam = self.cfg.camera
        return lite0_backbone(cam.image_height, cam.image_width, self.device)

    def ego_status(self, agent_input: AgentInput) -> np.ndarray:
        from latentvla.data.torch_dataset import ego_status_features

        vec = ego_status_features(agent_input)["ego_status"].numpy().astype(np.float32)
        if vec.shape != (8,):
            raise ValueError(f"scene {agent_input.token or '?'}: ego status has shape {vec.shape}, expected (8,)")
        return vec

    def lidar(self, agent_input: AgentInput) -> np.ndarray:
        sweep = agent_input.lidars[-1] if agent_input.lidars else None
        if sweep is None:
            raise ValueError(f"scene {agent_input.token or '?'}: the current frame's LiDAR was not loaded "
                             f"(load the AgentInput with sensors=True)")
        return lidar_bev(sweep.points, self.cfg.lidar)

    def __call__(self, agent_inputs: list[AgentInput]) -> dict[str, np.ndarray]:
        inputs = _check_inputs(agent_inputs)
        b = len(inputs)
        out: dict[str, np.ndarray] = {
            "ego_status": np.stack([self.ego_status(ai) for ai in inputs]) if b else None,
            "lidar_bev": np.stack([self.lidar(ai) for ai in inputs]) if b else None,
        }
        images = [camera_images(ai, self.cfg.camera) for ai in inputs]
        if self.cfg.camera.backbone == LITE0:
            out.update(self._lite0(images))
        elif b:
            out["camera"] = np.stack([np.concatenate(ims, axis=1).transpose(2, 0, 1) for ims in images])
        for key in self.keys:  # empty batches keep their shapes
            if out.get(key) is None:
                out[key] = np.zeros((0, *self.shapes[key]), dtype=FEATURE_DTYPES[key])
            out[key] = np.ascontiguousarray(out[key], dtype=FEATURE_DTYPES[key])
        return out

    def _lite0(self, images: list[list[np.ndarray]]) -> dict[str, np.ndarray]:
        if not images:
            return {}
        n = len(self.cfg.camera.cameras)
        flat = np.stack([im for ims in images for im in ims])  # (B * n, H, W, 3), cameras of a scene adjacent
        bs = self.cfg.batch_size
        s16, s32 = [], []
        for i in range(0, len(flat), bs):
            a, c = self.backbone(flat[i:i + bs])
            s16.append(a.astype(np.float16))
            s32.append(c.astype(np.float16))

        def stitch(maps: list[np.ndarray]) -> np.ndarray:
            f = np.concatenate(maps)  # (B * n, C, h, w)
            f = f.reshape(len(images), n, *f.shape[1:])  # (B, n, C, h, w)
            return np.concatenate([f[:, k] for k in range(n)], axis=-1)  # along width, cameras left to right

        return {"camera_s16": stitch(s16), "camera_s32": stitch(s32)}

    def build_one(self, agent_input: AgentInput) -> dict[str, np.ndarray]:
        """Features of one input without the batch dimension."""
        return {k: v[0] for k, v in self([agent_input]).items()}
