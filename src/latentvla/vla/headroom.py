"""``latentvla vla headroom``: how much the pretraining stand-in's knowledge *could* add to the teacher's tokens.

The stand-in (``vla pretrain``) teaches the backbone the current frame's perception facts (``vla/facts.py``). If
those facts told more about the LAM's ego tokens than the teacher's own inputs already do, a pretrained teacher
could beat a random-init one there; if not, no amount of that pretraining can. This measures it directly, with
the same linear probe on four input sets (fitted on train, its L2 weight chosen on val from ``L2_GRID``, scored on
test):

- ``ego``: the ego status the prompt holds (velocity, acceleration, command);
- ``ego+camera``: plus the camera features the teacher reads (global mean + the top principal directions of the
  whole map, fitted on train);
- ``ego+facts`` and ``ego+camera+facts``: plus the ground-truth perception facts (one-hot), i.e. a perfect
  perceiver of what pretraining teaches.

``facts_gain_long_tail`` = long-tail accuracy of ``ego+camera+facts`` minus ``ego+camera``: the headroom of the
pretraining stand-in on the acceptance's families. Written to ``RUN/headroom.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import torch_threads

INPUT_SETS = ("ego", "ego+camera", "ego+facts", "ego+camera+facts")
CAMERA_COMPONENTS = 64
L2_GRID = (1e-4, 1e-3, 1e-2)  # the accuracies move by ~0.01 across it: chosen per input set on val
HEADROOM_FILE = "headroom.json"


def probe_hits(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_codes: int,
               l2: float = 1e-3, steps: int = 100) -> np.ndarray:
    """(S_test, N) hits of a linear softmax probe per position (inputs standardised on train; L2-penalised
    multinomial logistic regression, full-batch L-BFGS, deterministic)."""
    mu, sd = x_train.mean(0), x_train.std(0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    xa = torch.from_numpy((x_train - mu) / sd).float()
    xb = torch.from_numpy((x_test - mu) / sd).float()
    y = torch.from_numpy(np.asarray(y_train, np.int64))
    n_pos = y.shape[1]
    w = torch.zeros(xa.shape[1], n_pos * num_codes, requires_grad=True)
    b = torch.zeros(n_pos * num_codes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logits = (xa @ w + b).view(len(xa), n_pos, num_codes)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xb @ w + b).view(len(xb), n_pos, num_codes).argmax(-1).numpy()
    return pred == np.asarray(y_test)


def _camera_inputs(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Global-mean features plus the top principal directions of the whole map (randomised PCA, seeded: a
    covariance of the ~17k-wide demo map would not fit an eigensolver)."""
    maps = (train, *others)
    flat = [torch.from_numpy(x.reshape(len(x), -1).astype(np.float32)) for x in maps]
    mean = flat[0].mean(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _, _, basis = torch.pca_lowrank(flat[0] - mean, q=min(CAMERA_COMPONENTS, *flat[0].shape), center=False)
    return tuple(np.hstack([x.reshape(len(x), x.shape[1], -1).mean(-1).astype(np.float32), ((f - mean) @ basis).numpy()])
                 for x, f in zip(maps, flat))


def headroom(run: str | Path, data: str | Path, workers: int = 1, quiet: bool = False,
             cache_root: str | Path | None = None, lam_cache_root: str | Path | None = None) -> dict:
    from latentvla.planner.oracle import oracle_context
    from latentvla.vla.checkpoint import load_teacher
    from latentvla.vla.data import feature_keys, load_labels, open_cache, split_arrays
    from latentvla.world.families import LONG_TAIL

    run, data = Path(run), Path(data)
    _, cfg = load_teacher(run)
    labels = load_labels(read_json(run / "run.json")["labels"], data, cfg.actions.targets, workers=workers,
                         quiet=True, cache_root=lam_cache_root)
    splits = ("train", "val", "test")
    cache = open_cache(data, cfg, splits, workers=workers, quiet=quiet, cache_root=cache_root)
    tr, va, te = arrays = tuple(split_arrays(cache, labels, s, cfg) for s in splits)
    if not (len(tr) and len(va) and len(te)):
        raise ValueError(f"{data}: the headroom probe needs scenes in train, val and test ({len(tr)}, {len(va)}, "
                         f"{len(te)})")
    ego_key, camera_key = feature_keys(cfg)
    if tr.features[camera_key].dtype == np.uint8:
        raise ValueError(f"{run} reads raw images (backbone.vision=native): the headroom probe needs the lite0 "
                         f"feature maps of the CPU profiles")
    ego = tuple(a.features[ego_key].astype(np.float32) for a in arrays)
    camera = _camera_inputs(*(a.features[camera_key] for a in arrays))
    facts = tuple(oracle_context("facts", data, split, a.tokens, quiet=quiet).reshape(len(a), -1).astype(np.float32)
                  for split, a in zip(splits, arrays))
    parts = {"ego": (ego,), "ego+camera": (ego, camera), "ego+facts": (ego, facts),
             "ego+camera+facts": (ego, camera, facts)}
    long_tail = np.isin(te.families, LONG_TAIL)
    out: dict = {"split": "test", "scenes": len(te), "inputs": {}}
    with torch_threads(cfg.train.num_threads):
        for name in INPUT_SETS:
            x_tr, x_va, x_te = (np.hstack([p[i] for p in parts[name]]) for i in (0, 1, 2))
            l2 = max(L2_GRID, key=lambda w: probe_hits(x_tr, tr.codes, x_va, va.codes, labels.num_codes, w).mean())
            hits = probe_hits(x_tr, tr.codes, x_te, te.codes, labels.num_codes, l2)
            out["inputs"][name] = {"token_accuracy": float(hits.mean()), "l2": l2,
                                   "long_tail_token_accuracy": float(hits[long_tail].mean()) if long_tail.any()
                                   else None}
    lt = {k: v["long_tail_token_accuracy"] for k, v in out["inputs"].items()}
    out["facts_gain_long_tail"] = (None if lt["ego+camera"] is None
                                   else lt["ego+camera+facts"] - lt["ego+camera"])
    write_json(run / HEADROOM_FILE, out, indent=1)
    return out
