"""Dataset statistics: scene counts per family / command / split, ego speed and future-path curvature histograms.

Counts come from the manifest; speed and curvature read each log's ``log.json`` ONCE (all the log's scenes at
once), never a sensor blob, so a 100k-scene dataset takes seconds to minutes, not hours.
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from latentvla.runtime.io import atomic_write_bytes
from latentvla.schema import NUM_FUTURE_FRAMES, TRAJECTORY_POSES

SPEED_EDGES = np.linspace(0.0, 20.0, 21)  # m/s, 1 m/s bins
CURVATURE_EDGES = np.linspace(0.0, 0.2, 21)  # 1/m, 0.01 bins
SPLIT_ORDER = ("train", "val", "test")
MIN_PATH_LENGTH = 1.0  # m: a (nearly) standing ego has no meaningful path curvature -> 0


def path_curvature(poses: np.ndarray, min_length: float = MIN_PATH_LENGTH) -> float:
    """|Net heading change| / path length of (N, 3) poses (x, y, heading), in 1/m.

    Exact for a circular arc (1 / radius) and 0 for a straight line; heading increments are wrapped so a path
    through +-pi is handled. Paths shorter than ``min_length`` metres (standing ego) return 0.
    """
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 3:
        raise ValueError(f"poses must be (N, 3) (x, y, heading), got shape {p.shape}")
    if len(p) < 2:
        return 0.0
    length = float(np.sum(np.hypot(np.diff(p[:, 0]), np.diff(p[:, 1]))))
    if length < min_length:
        return 0.0
    dh = (np.diff(p[:, 2]) + np.pi) % (2 * np.pi) - np.pi
    return float(abs(np.sum(dh)) / length)


def _histogram(values: list[float], edges: np.ndarray) -> dict:
    """Counts per bin; values beyond the last edge fall into the last bin (so counts sum to len(values))."""
    v = np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1])
    counts, _ = np.histogram(v, bins=edges)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _sorted_counts(counter: Counter) -> dict[str, int]:
    return {k: int(counter[k]) for k in sorted(counter)}


def _split_order(names) -> list[str]:
    return sorted(names, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def compute_stats(store) -> dict:
    """Stats of a ``SceneStore``: scenes, families, commands, splits, by_split, speed_hist, curvature_hist."""
    scenes = store.manifest["scenes"]
    families, commands, splits = Counter(), Counter(), Counter()
    split_fam: dict[str, Counter] = defaultdict(Counter)
    split_cmd: dict[str, Counter] = defaultdict(Counter)
    by_log: dict[str, list[str]] = defaultdict(list)
    for s in scenes:
        families[s["family"]] += 1
        commands[s["command"]] += 1
        splits[s["split"]] += 1
        split_fam[s["split"]][s["family"]] += 1
        split_cmd[s["split"]][s["command"]] += 1
        by_log[s["log"]].append(s["token"])

    speeds: list[float] = []
    curvatures: list[float] = []
    horizon = min(TRAJECTORY_POSES, NUM_FUTURE_FRAMES)
    for log_name, tokens in by_log.items():  # manifest order; each log.json parsed once
        log = store._log(log_name)
        frame_of = {sc["token"]: int(sc["frame_index"]) for sc in log["scenes"]}
        frames = log["frames"]
        for tok in tokens:
            cur = frame_of.get(tok)
            if cur is None:
                raise ValueError(f"scene {tok} is listed in the manifest but not in logs/{log_name}/log.json")
            ego = frames[cur]["ego"]
            speeds.append(float(np.hypot(*ego["velocity"][:2])))
            window = frames[cur: cur + horizon + 1]  # current pose + 4 s of logged future
            poses = np.asarray([f["ego"]["pose"] for f in window], dtype=np.float64)
            curvatures.append(path_curvature(poses))

    return {
        "scenes": len(scenes),
        "families": _sorted_counts(families),
        "commands": _sorted_counts(commands),
        "splits": {sp: int(splits[sp]) for sp in _split_order(splits)},
        "by_split": {sp: {"families": _sorted_counts(split_fam[sp]), "commands": _sorted_counts(split_cmd[sp])}
                     for sp in _split_order(splits)},
        "speed_hist": _histogram(speeds, SPEED_EDGES),
        "curvature_hist": _histogram(curvatures, CURVATURE_EDGES),
    }


def _grouped_bars(ax, by_split: dict, key: str, title: str) -> None:
    names = sorted({n for v in by_split.values() for n in v[key]})
    split_names = list(by_split)
    width = 0.8 / max(len(split_names), 1)
    x = np.arange(len(names))
    for i, sp in enumerate(split_names):
        counts = [by_split[sp][key].get(n, 0) for n in names]
        ax.bar(x + (i - (len(split_names) - 1) / 2) * width, counts, width, label=sp)
    ax.set_xticks(x)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("scenes")
    ax.set_title(title, fontsize=10)
    if split_names:
        ax.legend(fontsize=8)


def _hist_bars(ax, hist: dict, title: str, xlabel: str, color: str) -> None:
    edges = np.asarray(hist["edges"])
    ax.bar(edges[:-1], hist["counts"], np.diff(edges), align="edge", color=color, edgecolor="white", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("scenes")
    ax.set_title(title, fontsize=10)


def plot_stats(stats: dict, out_png: str | Path) -> Path:
    """Family counts per split (grouped bars), command counts per split, speed and curvature histograms."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12.0, 8.0), layout="constrained")
    axes = fig.subplots(2, 2)
    _grouped_bars(axes[0, 0], stats["by_split"], "families", "scenes per family and split")
    _grouped_bars(axes[0, 1], stats["by_split"], "commands", "scenes per driving command and split")
    _hist_bars(axes[1, 0], stats["speed_hist"], "ego speed at the current frame (last bin: >=)", "speed [m/s]",
               "#1f77b4")
    _hist_bars(axes[1, 1], stats["curvature_hist"], "|curvature| of the logged 4 s future (last bin: >=)",
               "curvature [1/m]", "#2ca02c")
    fig.suptitle(f"{stats['scenes']} scenes  |  splits: "
                 + ", ".join(f"{k} {v}" for k, v in stats["splits"].items()), fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    out = Path(out_png)
    atomic_write_bytes(out, buf.getvalue())
    return out
