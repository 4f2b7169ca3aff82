"""``latentvla eval nuscenes``: run an agent (or read its predictions) on nuScenes samples and score both the
``stp3`` and the ``uniad`` conventions (see :mod:`latentvla.eval.nuscenes_metrics`).

Agents are the ones ``latentvla score`` takes. Planners trained on the embedded world or NAVSIM run unchanged
(zero-shot) on inputs built by :class:`latentvla.data.nuscenes_source.NuScenesSource`; their 8 poses are cut to the
first 6 (both datasets plan at 0.5 s). ``log-replay`` is fed the logged 6 s future; ``pdm-closed`` (and any other
agent that needs NAVSIM's privileged scene) cannot run: nuScenes has no NAVSIM map, route or metric cache.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from latentvla.agents.base import Agent
from latentvla.data.nuscenes_source import CAMERA_MAP, NuScenesError, NuScenesSource
from latentvla.eval.nuscenes_metrics import (
    CONVENTIONS,
    HORIZON,
    METRIC_KEYS,
    SampleResult,
    check_poses,
    evaluate_sample,
    summarize,
)

BATCH = 8  # samples per network call for agents with compute_trajectories
MIN_STEP_M = 0.1  # (N, 2) predictions: shorter steps keep the previous heading


def _agent(agent_spec: str) -> Agent:
    from latentvla.agents import load_agent

    agent = load_agent(agent_spec)
    if agent.requires_scene and agent.name != "log-replay":
        raise NuScenesError(f"agent '{agent_spec}' cannot run on nuScenes: it needs NAVSIM's privileged scene (map, "
                            f"route and the metric cache's plan), which nuScenes does not provide; use "
                            f"constant-velocity, log-replay, a run directory or predictions:FILE.json")
    return agent


def headings_from_path(xy: np.ndarray) -> np.ndarray:
    """Headings of (N, 2) waypoints from the direction of travel (the first from the origin); steps shorter than
    ``MIN_STEP_M`` keep the previous heading (0 before any motion)."""
    xy = np.asarray(xy, dtype=np.float64)
    prev, heading, out = np.zeros(2), 0.0, np.zeros(len(xy))
    for k, p in enumerate(xy):
        d = p - prev
        if np.hypot(*d) >= MIN_STEP_M:
            heading = math.atan2(d[1], d[0])
        out[k], prev = heading, p
    return out


def check_predictions(agent, tokens: list[str]) -> None:
    """Validate a ``predictions:FILE.json`` agent on every sample before running: present, (N >= 6, 2 or 3),
    finite. Two columns (x, y) get headings from the direction of travel."""
    path = agent.path
    missing = [t for t in tokens if t not in agent.predictions]
    if missing:
        raise NuScenesError(f"predictions file {path} has no trajectory for sample token '{missing[0]}' "
                            f"({len(missing)} of {len(tokens)} samples missing); it needs {HORIZON} poses per "
                            f"sample token of the split")
    for t in tokens:
        try:
            p = np.asarray(agent.predictions[t], dtype=np.float64)
        except (TypeError, ValueError):
            raise NuScenesError(f"predictions file {path}: sample {t} is not a numeric array of poses") from None
        if p.ndim == 2 and p.shape[1] == 2:
            p = np.concatenate([p, headings_from_path(p)[:, None]], 1)
        try:
            p = check_poses(p, f"predictions file {path}: sample {t}")
        except ValueError as e:
            raise NuScenesError(str(e)) from None
        agent.predictions[t] = p.tolist()


def _cameras_needed(agent) -> tuple[str, ...] | None:
    cfg = getattr(agent, "features_cfg", None)
    if cfg is None or getattr(agent, "sensors", "none") == "none":
        return None
    wanted = tuple(cfg.camera.cameras)
    absent = [c for c in wanted if c not in CAMERA_MAP.values()]
    if absent:
        raise NuScenesError(f"agent {agent.name} reads camera '{absent[0]}', which nuScenes does not have (its "
                            f"cameras map onto {sorted(CAMERA_MAP.values())})")
    return wanted


def _plan(agent, inputs, gts: list[np.ndarray]) -> list[np.ndarray]:
    if getattr(agent, "requires_scene", False):  # log-replay: the logged future
        return [agent.compute_trajectory(a, SimpleNamespace(human_poses=g, token=a.token)).poses
                for a, g in zip(inputs, gts)]
    if hasattr(agent, "compute_trajectories"):
        return [t.poses for t in agent.compute_trajectories(inputs)]
    return [agent.compute_trajectory(a).poses for a in inputs]


def evaluate_nuscenes(dataroot: str | Path, version: str, split: str, agent_spec: str, out: str | Path | None,
                      ego_status: bool = True, limit: int | None = None, quiet: bool = False) -> dict:
    """Score ``agent_spec`` on nuScenes ``version`` / ``split``; writes the summary JSON to ``out`` (atomic) when
    given and returns it: ``stp3`` / ``uniad`` / ``gt_collision`` and ``samples``."""
    from latentvla.runtime.io import write_json
    from latentvla.runtime.parallel import progress_bar

    if out is not None and Path(out).suffix != ".json":
        raise NuScenesError(f"--out must name a .json file, got {out}")
    if limit is not None and limit < 1:
        raise NuScenesError(f"--limit must be >= 1, got {limit}")
    agent = _agent(agent_spec)
    source = NuScenesSource(dataroot, version, split)
    tokens = source.eval_tokens()[:limit] if limit is not None else source.eval_tokens()
    if not tokens:
        raise NuScenesError(f"split '{split}' of {version} in {dataroot} has no sample with {HORIZON} later samples "
                            f"(scenes found: {len(source.scenes)})")
    if hasattr(agent, "predictions"):
        check_predictions(agent, tokens)
    sensors, cameras = getattr(agent, "sensors", "none"), _cameras_needed(agent)
    results: list[SampleResult] = []
    start = time.time()
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task(f"nuScenes {version}/{split}", total=len(tokens), rate="")
        for b in range(0, len(tokens), BATCH):
            batch = tokens[b: b + BATCH]
            gts = [source.ground_truth(t) for t in batch]
            inputs = [source.agent_input(t, sensors, cameras, ego_status) for t in batch]
            for t, gt, poses in zip(batch, gts, _plan(agent, inputs, gts)):
                try:
                    pred = check_poses(poses, f"agent {agent.name} on sample {t}")
                except ValueError as e:
                    raise NuScenesError(str(e)) from None
                results.append(evaluate_sample(t, pred, gt, source.obstacles(t)))
            done = len(results)
            bar.update(task, advance=len(batch), rate=f"{done / max(time.time() - start, 1e-9):.1f} samples/s")
    summary = summarize(results)
    if out is not None:
        write_json(Path(out), summary, indent=1)
    return summary


def summary_table(summary: dict, title: str):
    """Both conventions and the logged trajectory's collision floor (``logged``), one row per metric."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    cols = [(conv, summary[conv]) for conv in CONVENTIONS]
    cols += [(f"{conv} logged", summary["gt_collision"][conv]) for conv in CONVENTIONS]
    for name, _ in cols:
        table.add_column(name, justify="right")
    for key in METRIC_KEYS:
        table.add_row(key, *[f"{values[key]:.3f}" for _, values in cols])
    return table
