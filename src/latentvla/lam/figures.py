"""Human-readable LAM report: code-usage histograms and, per code, a strip of example frame pairs (what the code
"means" is easiest to judge by looking at the windows it was given to). Each codebook is shown through the sensor
its IDM reads: camera frames, or the LiDAR's above-ground BEV histogram (forward up) for a LiDAR-only IDM."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from latentvla.data.store import SceneStore  # noqa: E402
from latentvla.lam.configuration import LAMConfig  # noqa: E402
from latentvla.lam.data import scene_windows  # noqa: E402


def code_usage_figure(codes: dict[str, np.ndarray], sizes: dict[str, int], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(codes), figsize=(5 * len(codes), 3))
    for ax, (name, c) in zip(np.atleast_1d(axes), codes.items()):
        counts = np.bincount(c.ravel(), minlength=sizes[name])
        ax.bar(np.arange(sizes[name]), counts / max(counts.sum(), 1))
        ax.set_title(f"{name} codes ({int((counts > 0).sum())}/{sizes[name]} used)")
        ax.set_xlabel("code")
        ax.set_ylabel("share of tokens")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _image(store: SceneStore, log: str, index: int, cfg: LAMConfig, sensor: str) -> np.ndarray:
    """RGB uint8 view of one frame: the configured camera, or the LiDAR's above-ground BEV channel."""
    from latentvla.lam.encoder import bev_histogram
    from latentvla.planner.features import lidar_bev

    frame = store._log(log)["frames"][index]
    if sensor == "camera":
        camera = cfg.encoder.camera
        return store._camera(log, camera, frame["sensors"][camera], frame["token"]).image
    points = store._lidar(log, frame["sensors"]["lidar"], frame["token"]).points
    bev = lidar_bev(points, bev_histogram(cfg.encoder))[1]
    return np.repeat((255 * (1.0 - bev)).astype(np.uint8)[..., None], 3, axis=-1)  # points dark on white


def example_sensor(cfg: LAMConfig, codebook: str) -> str:
    """``lidar`` when the codebook's IDM reads only LiDAR tokens (or the encoder is LiDAR-only), else ``camera``."""
    from latentvla.lam.encoder import LIDAR_BEV

    chosen = getattr(cfg.model, f"{codebook}_sensor")
    return "lidar" if chosen == "lidar" or cfg.encoder.name == LIDAR_BEV else "camera"


def code_examples_figure(store: SceneStore, cfg: LAMConfig, tokens: list[str], codes: np.ndarray, size: int,
                         path: Path, per_code: int = 3, sensor: str = "camera") -> Path:
    """One row per code: up to ``per_code`` windows (start | end frame of ``sensor``) in which any query got
    that code."""
    wf = cfg.window_frames
    fig, axes = plt.subplots(size, per_code, figsize=(3.2 * per_code, 1.0 * size + 0.5), squeeze=False)
    for c in range(size):
        hits = np.argwhere((codes == c).any(-1))[:per_code]  # (scene, window) pairs
        for k in range(per_code):
            ax = axes[c, k]
            ax.axis("off")
            if k < len(hits):
                s, w = hits[k]
                log, starts, _ = scene_windows(store, tokens[s], wf, cfg.windows)
                a = _image(store, log, starts[w], cfg, sensor)
                b = _image(store, log, starts[w] + wf, cfg, sensor)
                ax.imshow(np.concatenate([a, b], axis=1))
            if k == 0:
                ax.set_title(f"code {c}", fontsize=7, loc="left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
