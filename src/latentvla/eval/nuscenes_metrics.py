"""nuScenes open-loop planning metrics (L2 and box-overlap collision) in the two conventions the literature mixes.

There is no official nuScenes planning metric; UniAD's config names the two that papers use (docs/EVALUATION.md,
"nuScenes open-loop planning"). Both share the per-step quantities computed here and differ only in which obstacles
count and how the six 0.5 s steps are aggregated:

- ``uniad``: the value *at* 1 / 2 / 3 s (steps 1, 3, 5); obstacles are vehicles only (:data:`UNIAD_VEHICLES`).
- ``stp3``: the mean over the steps *up to* 1 / 2 / 3 s (steps 0-1, 0-3, 0-5); obstacles are ``vehicle.*`` (not
  the ego) and ``human.pedestrian.*``.

Collision: the ego box (4.084 x 1.85 m, centre 0.5 m ahead of the pose, rotated by the pose heading) against every
counted obstacle footprint of that future sample (length = size[1], width = size[0], rotated by the yaw), a
collision being an overlap of positive area. A step where the logged (ground-truth) ego box itself collides is not
counted for the prediction, but the sample stays in the denominator; those logged collisions are reported on their
own as ``gt_collision`` (the collision floor of the human driver). Pure numpy / shapely: no devkit needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely

HORIZON = 6  # poses at 0.5, 1.0, ..., 3.0 s
EGO_LENGTH = 4.084  # along the heading (x)
EGO_WIDTH = 1.85
EGO_FRONT_OFFSET = 0.5  # box centre ahead of the pose
AREA_EPS = 1e-9  # m^2: overlaps at or below this are touching boxes, not collisions
CONVENTIONS: tuple[str, ...] = ("stp3", "uniad")
METRIC_KEYS: tuple[str, ...] = ("l2_1s", "l2_2s", "l2_3s", "l2_avg",
                                "collision_1s", "collision_2s", "collision_3s", "collision_avg")
UNIAD_VEHICLES: tuple[str, ...] = ("vehicle.car", "vehicle.truck", "vehicle.construction", "vehicle.bus.bendy",
                                   "vehicle.bus.rigid", "vehicle.trailer", "vehicle.motorcycle", "vehicle.bicycle")


def counts_as_obstacle(category: str, convention: str) -> bool:
    """Whether an annotation of nuScenes ``category`` is an obstacle under ``convention`` (cones, barriers and
    everything else never are)."""
    if convention == "uniad":
        return category in UNIAD_VEHICLES or category.startswith("vehicle.bus.")
    if convention == "stp3":
        return (category.startswith("vehicle.") and category != "vehicle.ego") or \
            category.startswith("human.pedestrian.")
    raise ValueError(f"unknown convention '{convention}'; valid: {list(CONVENTIONS)}")


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """(M, 5) boxes (x, y, yaw, length, width) -> (M, 4, 2) corners, counter-clockwise."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    half = np.stack([b[:, 3], b[:, 4]], 1)[:, None, :] / 2 * np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    c, s = np.cos(b[:, 2])[:, None], np.sin(b[:, 2])[:, None]
    x = b[:, None, 0] + c * half[..., 0] - s * half[..., 1]
    y = b[:, None, 1] + s * half[..., 0] + c * half[..., 1]
    return np.stack([x, y], -1)


def ego_boxes(poses: np.ndarray) -> np.ndarray:
    """(T, 3) poses (x, y, heading) -> (T, 5) ego boxes, centre 0.5 m ahead along the heading."""
    p = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    out = np.empty((len(p), 5))
    out[:, 0] = p[:, 0] + EGO_FRONT_OFFSET * np.cos(p[:, 2])
    out[:, 1] = p[:, 1] + EGO_FRONT_OFFSET * np.sin(p[:, 2])
    out[:, 2] = p[:, 2]
    out[:, 3], out[:, 4] = EGO_LENGTH, EGO_WIDTH
    return out


def overlaps(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(M,) bool: which of ``others`` (M, 5) overlap ``box`` (5,) with positive area."""
    others = np.asarray(others, dtype=np.float64).reshape(-1, 5)
    hit = np.zeros(len(others), dtype=bool)
    if not len(others):
        return hit
    box = np.asarray(box, dtype=np.float64)
    reach = np.hypot(box[3], box[4]) / 2 + np.hypot(others[:, 3], others[:, 4]) / 2
    near = np.hypot(others[:, 0] - box[0], others[:, 1] - box[1]) <= reach + 1e-6  # bounding circles touch
    if near.any():
        ego = shapely.polygons(box_corners(box[None])[0])
        polys = shapely.polygons(box_corners(others[near]))
        hit[near] = shapely.area(shapely.intersection(ego, polys)) > AREA_EPS
    return hit


def step_collisions(poses: np.ndarray, obstacles: Sequence[np.ndarray]) -> np.ndarray:
    """(T,) bool: the ego box at pose k overlaps one of ``obstacles[k]`` ((M_k, 5) boxes, same frame)."""
    boxes = ego_boxes(poses)
    if len(obstacles) < len(boxes):
        raise ValueError(f"obstacles for {len(obstacles)} steps, but {len(boxes)} poses")
    return np.array([bool(overlaps(b, o).any()) for b, o in zip(boxes, obstacles)], dtype=bool)


@dataclass
class StepObstacles:
    """The annotations of one future sample in the current ego frame: boxes (M, 5) (x, y, yaw, length, width)
    and their nuScenes category names."""

    boxes: np.ndarray
    categories: list[str]

    def select(self, convention: str) -> np.ndarray:
        keep = np.array([counts_as_obstacle(c, convention) for c in self.categories], dtype=bool)
        return np.asarray(self.boxes, dtype=np.float64).reshape(-1, 5)[keep] if len(keep) else np.zeros((0, 5))


@dataclass
class SampleResult:
    """Per-step quantities of one sample: L2 (6,) and, per convention, prediction / logged collisions (6,)."""

    token: str
    l2: np.ndarray
    pred_collision: dict[str, np.ndarray]
    gt_collision: dict[str, np.ndarray]


def check_poses(poses: np.ndarray, what: str, num: int = HORIZON) -> np.ndarray:
    """(num, 3) float64 from an agent's poses; a clear error for too few poses, a wrong shape or NaN/inf."""
    p = np.asarray(poses, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{what}: poses must be (N, 3) (x, y, heading), got shape {p.shape}")
    if p.shape[0] < num:
        raise ValueError(f"{what}: {p.shape[0]} poses, but nuScenes needs at least {num} (0.5 s apart)")
    p = p[:num]
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what}: poses contain NaN or inf")
    return p


def evaluate_sample(token: str, pred: np.ndarray, gt: np.ndarray, obstacles: Sequence[StepObstacles]) -> SampleResult:
    """L2 on (x, y) and per-convention collisions of one sample (pred and gt: (6, 3) in the current ego frame)."""
    pred = check_poses(pred, f"sample {token}: prediction")
    gt = check_poses(gt, f"sample {token}: ground truth")
    if len(obstacles) != HORIZON:
        raise ValueError(f"sample {token}: obstacles for {len(obstacles)} steps, expected {HORIZON}")
    l2 = np.linalg.norm(pred[:, :2] - gt[:, :2], axis=1)
    pc, gc = {}, {}
    for conv in CONVENTIONS:
        obs = [o.select(conv) for o in obstacles]
        pc[conv] = step_collisions(pred, obs)
        gc[conv] = step_collisions(gt, obs)
    return SampleResult(token, l2, pc, gc)


def aggregate(per_step: np.ndarray, convention: str) -> tuple[float, float, float, float]:
    """(1 s, 2 s, 3 s, average) from six per-step values: ``uniad`` takes steps 1, 3, 5; ``stp3`` the mean of
    steps [0, 2t); the average is the mean of the three."""
    v = np.asarray(per_step, dtype=np.float64)
    if v.shape != (HORIZON,):
        raise ValueError(f"per-step values must have shape ({HORIZON},), got {v.shape}")
    if convention == "uniad":
        at = [float(v[2 * t - 1]) for t in (1, 2, 3)]
    elif convention == "stp3":
        at = [float(v[: 2 * t].mean()) for t in (1, 2, 3)]
    else:
        raise ValueError(f"unknown convention '{convention}'; valid: {list(CONVENTIONS)}")
    return at[0], at[1], at[2], float(np.mean(at))


def _metrics(l2_steps: np.ndarray, col_steps: np.ndarray, convention: str) -> dict[str, float]:
    l2 = aggregate(l2_steps, convention)
    col = aggregate(col_steps, convention)
    return dict(zip(METRIC_KEYS, (*l2, *col)))


def summarize(results: Sequence[SampleResult]) -> dict:
    """The output JSON: ``stp3`` / ``uniad`` (L2 in metres, collision in percent), ``samples`` and ``gt_collision``
    (the same metrics of the logged trajectory: L2 0 and its own collision rates)."""
    if not results:
        raise ValueError("no nuScenes samples to summarise (empty split or --limit 0)")
    n = len(results)
    l2 = np.stack([r.l2 for r in results]).mean(0)
    out: dict = {"samples": n, "gt_collision": {}}
    for conv in CONVENTIONS:
        pred = np.stack([r.pred_collision[conv] for r in results])
        gt = np.stack([r.gt_collision[conv] for r in results])
        counted = (pred & ~gt).sum(0) / n * 100.0  # logged-ego collision steps excluded, denominator kept
        out[conv] = _metrics(l2, counted, conv)
        out["gt_collision"][conv] = _metrics(np.zeros(HORIZON), gt.sum(0) / n * 100.0, conv)
    return out
