"""The teacher's outputs per scene, computed once and cached on disk: what fusion and distillation read.

``teacher_outputs(run, data, split)`` returns, for every scene of the split in cache order, ``embeddings``
(S, P + N, D) float16 (pooled visual + generated-action embeddings), ``probs`` (S, N, K) float16 and ``codes``
(S, N) int16, all from the teacher's **own** generation (labels are never read). The file is
``<cache_root or DATA/teacher_cache>/<run key>-<dataset digest>/<split>.npz`` where the run key hashes the
run's weights file, so retraining a run never serves stale outputs; it is written atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from latentvla.runtime.io import atomic_write_bytes, npz_bytes
from latentvla.vla.checkpoint import MODEL_FILE, load_teacher

KEYS = ("embeddings", "probs", "codes")


def run_key(run: str | Path) -> str:
    """16 hex digits of the run's weights (content, not path)."""
    h = hashlib.sha256()
    with open(Path(run) / MODEL_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def cache_file(run: str | Path, data: str | Path, split: str, cache_root: str | Path | None = None) -> Path:
    from latentvla.data.store import dataset_digest, default_cache_dir

    root = Path(cache_root) if cache_root is not None else default_cache_dir(data, "teacher_cache")
    return root / f"{run_key(run)}-{dataset_digest(data)}" / f"{split}.npz"


def teacher_outputs(run: str | Path, data: str | Path, split: str = "test", cache_root: str | Path | None = None,
                    planner_cache_root: str | Path | None = None, workers: int = 1, batch_size: int = 64,
                    quiet: bool = True) -> dict[str, np.ndarray]:
    """Cached outputs (plus ``tokens``) of the teacher in ``run`` on ``split``; computed on first use."""
    from latentvla.vla.data import feature_keys, open_cache

    path = cache_file(run, data, split, cache_root)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (*KEYS, "tokens")}
    model, cfg = load_teacher(run)
    cache = open_cache(data, cfg, (split,), workers=workers, quiet=quiet, cache_root=planner_cache_root)
    tokens = cache.tokens(split)
    keys = feature_keys(cfg)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            feats = cache.features(tokens[i:i + batch_size])
            out = model.encode({k: torch.from_numpy(feats[k]) for k in keys})
            parts["embeddings"].append(out["embeddings"].numpy().astype(np.float16))
            parts["probs"].append(out["probs"].numpy().astype(np.float16))
            parts["codes"].append(out["codes"].numpy().astype(np.int16))
    result = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    result["tokens"] = np.asarray(tokens)
    atomic_write_bytes(path, npz_bytes(result))
    return result
