"""iPad's proposal anchors and their offline PDMS sub-scores.

Anchors are k-means centres of the train split's expert trajectories (8 poses, ego frame): a fixed vocabulary of
plausible plans that proposal queries start from. Each anchor is scored once per training scene with the project's
own PDMS v1.1 scorer (LQR tracking + bicycle model, NC / DAC / TTC / EP / C against the metric cache), as if it
were the submitted plan: simulated beside the scene's PDM-Closed reference, EP normalised over the pair
[reference, anchor] exactly as ``latentvla score`` normalises [reference, agent]. These scores are the targets of
iPad's scoring head (Hydra-MDP's recipe), so the host learns which plans are safe without ever scoring online.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.planner.configuration import PROPOSAL_SCORE_COLUMNS
from latentvla.runtime.io import atomic_write_bytes, load_npz, npz_bytes

_SUBSCORES = ("nc", "dac", "ttc", "ep", "c", "pdms")  # scorer keys, in PROPOSAL_SCORE_COLUMNS order
_CHUNK = 32  # scenes per batched simulation
_SAVE_EVERY_S = 60.0  # anchor_scores checkpoints the scores file this often (resume after a kill)
assert len(_SUBSCORES) == len(PROPOSAL_SCORE_COLUMNS)


def fit_anchors(trajectories: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """(M, 8, 3) expert trajectories -> (k, 8, 3) k-means centres on the (x, y) poses, k-means++ initialised
    from ``seed`` (deterministic). Headings are the cluster means of the members' headings."""
    traj = np.asarray(trajectories, dtype=np.float64)
    if traj.ndim != 3 or traj.shape[-1] != 3:
        raise ValueError(f"trajectories must be (M, poses, 3), got {traj.shape}")
    if len(traj) < k:
        raise ValueError(f"need at least {k} trajectories for {k} anchors, got {len(traj)}")
    x = traj[..., :2].reshape(len(traj), -1)
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        centres.append(x[rng.choice(len(x), p=p)])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iterations):
        assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    assign = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    heading = np.stack([np.arctan2(np.sin(traj[assign == j, :, 2]).mean(0), np.cos(traj[assign == j, :, 2]).mean(0))
                        if (assign == j).any() else np.zeros(traj.shape[1]) for j in range(k)])
    out = np.concatenate([c.reshape(k, traj.shape[1], 2), heading[..., None]], -1)
    order = np.lexsort((out[:, -1, 1], out[:, -1, 0]))  # canonical order: by final x, then final y
    return out[order].astype(np.float32)


def score_anchors_batch(scenes: list, anchors: np.ndarray, interval: float = 0.5) -> list[np.ndarray]:
    """(K, 6) sub-scores (PROPOSAL_SCORE_COLUMNS) of each anchor as the submitted plan, for each scene (one
    batched LQR + bicycle simulation for all scenes: the tracker's cost hardly grows with the batch)."""
    from latentvla.eval.scene_score import pdms_from_states, reference_plan, simulate_plans

    plans = [[reference_plan(s)] + [(a, interval) for a in anchors] for s in scenes]
    out = []
    for inputs, states in zip(scenes, simulate_plans(scenes, plans)):
        sub = pdms_from_states(inputs, states)
        out.append(_pairwise_ep(sub, np.asarray(_raw_progress(inputs, states))))
    return out


def _raw_progress(inputs, states: np.ndarray) -> np.ndarray:
    from latentvla.eval.pdm_metrics import ego_points, raw_progress

    return raw_progress(ego_points(states), inputs.centerline)


def _pairwise_ep(sub: dict[str, np.ndarray], raw: np.ndarray) -> np.ndarray:
    """Re-normalise EP per [reference, anchor] pair (the scorer normalised over all proposals at once)."""
    from latentvla.eval.pdm_metrics import ego_progress, pdms

    mult = sub["nc"] * sub["dac"]
    ep = np.array([ego_progress(raw[[0, i]], mult[[0, i]])[1] for i in range(1, len(raw))])
    nc, dac, ttc, c = (sub[k][1:] for k in ("nc", "dac", "ttc", "c"))
    return np.stack([nc, dac, ttc, ep, c, pdms(nc, dac, ttc, ep, c)], 1).astype(np.float32)


@dataclass
class _Chunk:
    cache: str
    tokens: list[str]
    anchors: np.ndarray


def _score_chunk(job: _Chunk) -> tuple[list[str], list[np.ndarray]]:
    from latentvla.eval.metric_cache import process_cache

    cache = process_cache(job.cache)
    return job.tokens, score_anchors_batch([cache.load(t) for t in job.tokens], job.anchors)


def anchors_digest(anchors: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(anchors, dtype=np.float32).tobytes()).hexdigest()[:12]


def anchor_scores(data: str | Path, tokens: list[str], anchors: np.ndarray, cache_root: str | Path | None = None,
                  workers: int = 1, quiet: bool = False) -> np.ndarray:
    """(len(tokens), K, 6) anchor sub-scores of the given scenes, computed once and stored in the metric cache's
    directory under ``anchor_scores/<anchors digest>.npz`` (scenes scored earlier are reused)."""
    from latentvla.eval.metric_cache import MetricCache
    from latentvla.runtime.parallel import parallel_map, progress_bar

    cache = MetricCache.open(data, cache_root=cache_root, workers=workers, quiet=quiet, tokens=tokens)
    path = cache.path / "anchor_scores" / f"{anchors_digest(anchors)}.npz"
    known: dict[str, np.ndarray] = {}
    if path.is_file():
        z = load_npz(path.read_bytes())
        known = dict(zip(z["tokens"].tolist(), z["scores"]))
    todo = [t for t in dict.fromkeys(tokens) if t not in known]
    if todo:
        jobs = [_Chunk(str(cache.path), todo[i: i + _CHUNK], anchors) for i in range(0, len(todo), _CHUNK)]
        saved = time.monotonic()
        with progress_bar(disable=quiet) as bar:
            task = bar.add_task("anchor scores", total=len(todo), rate="")
            for chunk, scores in parallel_map(_score_chunk, jobs, workers):
                known.update(zip(chunk, scores))
                bar.advance(task, len(chunk))
                if time.monotonic() - saved > _SAVE_EVERY_S:  # a killed run keeps what it scored
                    _save_scores(path, known)
                    saved = time.monotonic()
        _save_scores(path, known)
    return np.stack([known[t] for t in tokens])


def _save_scores(path: Path, known: dict[str, np.ndarray]) -> None:
    """All scores known so far, sorted by token: the same bytes however the run was interrupted and resumed."""
    keys = sorted(known)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, npz_bytes({"tokens": np.array(keys), "scores": np.stack([known[k] for k in keys])}))
