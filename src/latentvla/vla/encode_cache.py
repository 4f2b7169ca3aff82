"""The teacher's outputs per scene, computed once and cached on disk: what fusion and distillation read.

``teacher_outputs(run, data, split)`` returns, for every scene of the split in cache order, ``embeddings``
(S, P + N, D) float16 (pooled visual + generated-action embeddings), ``probs`` (S, N, K) float16 and ``codes``
(S, N) int16, all from the teacher's **own** generation (labels are never read). The file is
``<cache_root or DATA/teacher_cache>/<run key>-<dataset digest>/<split>.npz`` where the run key hashes the
run's weights file, so retraining a run never serves stale outputs; it is written atomically, after one shard per
log (``<split>.shards/<log>.npz``, the resume points of a killed export).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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


@dataclass
class _EncodeJob:
    run: str
    data: str
    split: str
    planner_cache_root: str | None
    tokens: list[str]  # one log's scenes, in cache order
    batch_size: int
    out: str  # the shard file


_TEACHERS: dict[str, tuple] = {}


def _encode_log(job: _EncodeJob) -> int:
    """Encode one log's scenes with the teacher into its own shard (atomic), so a killed export keeps them."""
    from latentvla.vla.data import feature_keys, open_cache

    key = f"{job.run}|{job.data}|{job.split}"
    if key not in _TEACHERS:
        model, cfg = load_teacher(job.run)
        _TEACHERS.clear()
        _TEACHERS[key] = model, cfg, open_cache(job.data, cfg, (job.split,), workers=1, quiet=True,
                                                cache_root=job.planner_cache_root)
    model, cfg, cache = _TEACHERS[key]
    keys = feature_keys(cfg)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
    with torch.no_grad():
        for i in range(0, len(job.tokens), job.batch_size):
            feats = cache.features(job.tokens[i:i + job.batch_size])
            out = model.encode({k: torch.from_numpy(feats[k]) for k in keys})
            parts["embeddings"].append(out["embeddings"].numpy().astype(np.float16))
            parts["probs"].append(out["probs"].numpy().astype(np.float16))
            parts["codes"].append(out["codes"].numpy().astype(np.int16))
    atomic_write_bytes(Path(job.out), npz_bytes({k: np.concatenate(v) for k, v in parts.items()}))
    return len(job.tokens)


def teacher_outputs(run: str | Path, data: str | Path, split: str = "test", cache_root: str | Path | None = None,
                    planner_cache_root: str | Path | None = None, workers: int = 1, batch_size: int = 64,
                    quiet: bool = True) -> dict[str, np.ndarray]:
    """Cached outputs (plus ``tokens``) of the teacher in ``run`` on ``split``; computed on first use, one job per
    log through the parallel map (local pool or Ray), each writing ``<split>.shards/<log>.npz`` atomically (a
    rerun after a kill encodes only the missing logs); the shards are merged in cache order."""
    import shutil

    from latentvla.data.store import open_store
    from latentvla.runtime.parallel import parallel_map, progress_bar
    from latentvla.vla.data import open_cache

    path = cache_file(run, data, split, cache_root)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in (*KEYS, "tokens")}
    _, cfg = load_teacher(run)
    tokens = open_cache(data, cfg, (split,), workers=workers, quiet=quiet, cache_root=planner_cache_root).tokens(split)
    by_log = open_store(data, verify_blobs=False).tokens_by_log(split)
    if [t for toks in by_log.values() for t in toks] != list(tokens):
        raise ValueError(f"the planner cache of {data} lists split '{split}' in another order than the dataset; "
                         f"delete the planner cache to rebuild it")
    shards = path.with_name(f"{split}.shards")
    jobs = [_EncodeJob(str(run), str(data), split, None if planner_cache_root is None else str(planner_cache_root),
                       toks, batch_size, str(shards / f"{log}.npz")) for log, toks in by_log.items()]
    todo = [j for j in jobs if not Path(j.out).is_file()]
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task(f"teacher outputs ({split})", total=sum(len(j.tokens) for j in todo), rate="")
        for n in parallel_map(_encode_log, todo, workers=workers):
            bar.advance(task, n)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in KEYS}
    for job in jobs:
        with np.load(job.out, allow_pickle=False) as z:
            for k in KEYS:
                parts[k].append(z[k])
    result = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}
    result["tokens"] = np.asarray(tokens)
    atomic_write_bytes(path, npz_bytes(result))
    shutil.rmtree(shards, ignore_errors=True)
    return result
