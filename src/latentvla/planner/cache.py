"""The planner's on-disk feature/target cache: every scene's features (AgentInput only) and targets (privileged
Scene) computed once, so planner training reads small arrays instead of decoding images and running the frozen
backbone every epoch.

Layout ``<cache_root or DATA/planner_cache>/<key>/``: ``meta.json`` (what the cache was built with) and one
``<log>.npz`` per log holding ``tokens`` (S,) (the log's scenes in manifest order) and, per key, ``feature__<key>``
and ``target__<key>`` with a leading (S,) dimension. Shards are compact: camera features float16, images and BEV
maps uint8, the LiDAR histogram as uint8 clipped counts (decoded exactly to the builder's float32 values),
deflate-compressed. The key is ``<dataset digest>-<hash>`` where the hash covers the FeatureConfig (without
``batch_size``, which only moves float rounding), ``PLANNER_CACHE_FORMAT`` and, for the EfficientNet backbone, the
weights fingerprint: a changed dataset, config or weights never reads stale arrays.

Shards are written atomically with fixed zip timestamps, one job per log through ``runtime.parallel_map``; a killed
build resumes by building only the missing shards. A corrupt or truncated shard is never rebuilt silently: reading
it raises a ``DataError`` naming the file and saying to delete it (``PlannerCache.open`` then rebuilds it). Usage::

    cache = PlannerCache.open(data_dir, cfg.features, workers=2)   # builds what is missing, with a progress bar
    feats, targets = cache.load(cache.tokens("train")[:64])        # dicts of stacked arrays, in the given order
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.config import config_hash, from_dict, to_dict
from latentvla.data.store import (
    SPLIT_NAMES,
    DataError,
    SceneStore,
    data_label,
    dataset_digest,
    default_cache_dir,
    open_store,
    process_store,
)
from latentvla.planner.configuration import FeatureConfig
from latentvla.planner.features import (
    FEATURE_DTYPES,
    LITE0,
    FeatureBuilder,
    feature_shapes,
    validate_feature_config,
)
from latentvla.planner.targets import TARGET_DTYPES, TARGET_KEYS, TargetBuilder, target_shapes
from latentvla.runtime.io import atomic_write_bytes, check_cache_meta, npz_bytes
from latentvla.runtime.parallel import parallel_map, progress_bar

PLANNER_CACHE_FORMAT = 1
_F, _T = "feature__", "target__"


def planner_cache_key(data_dir: str | Path, cfg: FeatureConfig) -> str:
    """``<dataset digest>-<16-hex hash of config, format and backbone weights>``: the cache directory name."""
    h = hashlib.sha256(f"{config_hash(cfg, exclude=('batch_size',))}:{PLANNER_CACHE_FORMAT}:"
                       f"{_weights_fingerprint(cfg)}".encode())
    return f"{dataset_digest(data_dir)}-{h.hexdigest()[:16]}"


def _weights_fingerprint(cfg: FeatureConfig) -> str:
    if cfg.camera.backbone != LITE0:
        return "none"
    from latentvla.lam.encoder import lite0_fingerprint

    return lite0_fingerprint()


# --- storage codec -----------------------------------------------------------------------------------------------
def _lidar_as_counts(cfg: FeatureConfig) -> bool:
    return cfg.lidar.max_points <= 255


def encode_shard(cfg: FeatureConfig, tokens: list[str], feats: dict[str, np.ndarray],
                 targets: dict[str, np.ndarray]) -> bytes:
    """The deterministic ``.npz`` bytes of one log's scenes."""
    arrays = {"tokens": np.asarray(tokens, dtype=np.str_)}
    for k, v in feats.items():
        if k == "lidar_bev" and _lidar_as_counts(cfg):
            v = np.rint(v * cfg.lidar.max_points).astype(np.uint8)
        arrays[_F + k] = np.ascontiguousarray(v)
    for k, v in targets.items():
        arrays[_T + k] = np.ascontiguousarray(v)
    return npz_bytes(arrays)


def _decode(cfg: FeatureConfig, key: str, arr: np.ndarray) -> np.ndarray:
    if key == "lidar_bev" and _lidar_as_counts(cfg):
        return arr.astype(np.float32) / np.float32(cfg.lidar.max_points)  # the builder's exact values
    return arr


# --- building (one pair of builders per process) -----------------------------------------------------------------
@dataclass
class _LogJob:
    data: str
    log: str
    tokens: list[str]
    cfg: dict
    out: str


_BUILDERS: dict[str, tuple[FeatureBuilder, TargetBuilder]] = {}


def _builders(cfg_dict: dict) -> tuple[FeatureBuilder, TargetBuilder]:
    cfg = from_dict(FeatureConfig, cfg_dict)
    key = config_hash(cfg)
    if key not in _BUILDERS:
        _BUILDERS.clear()
        _BUILDERS[key] = (FeatureBuilder(cfg), TargetBuilder(cfg))
    return _BUILDERS[key]


def build_log(store: SceneStore, tokens: list[str], fb: FeatureBuilder, tb: TargetBuilder
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(features, targets) of ``tokens`` (one log), in chunks of ``batch_size`` scenes to bound memory."""
    feats: list[dict[str, np.ndarray]] = []
    targs: list[dict[str, np.ndarray]] = []
    bs = fb.cfg.batch_size
    for i in range(0, len(tokens), bs):
        chunk = tokens[i:i + bs]
        feats.append(fb([store.load_agent_input(t) for t in chunk]))
        targs.append(tb([store.load_scene(t, sensors="none", with_sim_state=False) for t in chunk]))
    if not feats:
        return fb([]), tb([])
    return ({k: np.concatenate([f[k] for f in feats]) for k in feats[0]},
            {k: np.concatenate([t[k] for t in targs]) for k in targs[0]})


def _build_job(job: _LogJob) -> tuple[str, int]:
    fb, tb = _builders(job.cfg)
    feats, targs = build_log(process_store(job.data), job.tokens, fb, tb)
    atomic_write_bytes(Path(job.out) / f"{job.log}.npz", encode_shard(fb.cfg, job.tokens, feats, targs))
    return job.log, len(job.tokens)


class PlannerCache:
    """``PlannerCache.open(DATA, cfg)`` builds the missing shards; ``tokens(split)``, ``load(tokens)`` and
    ``load_split(split)`` read them."""

    def __init__(self, path: Path, cfg: FeatureConfig, data: Path | None, log_tokens: dict[str, list[str]],
                 split_tokens: dict[str, list[str]], cache_logs: int = 16):
        self.path = Path(path)
        self.key = self.path.name
        self.cfg = cfg
        self.data = data
        self.log_tokens = dict(sorted(log_tokens.items()))
        self.split_tokens = split_tokens
        self.feature_shapes = feature_shapes(cfg)
        self.target_shapes = target_shapes(cfg)
        self.built: list[str] = []  # logs built by the last open()/ensure()
        self._where = {t: (log, i) for log, toks in self.log_tokens.items() for i, t in enumerate(toks)}
        self._loaded: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()
        self._cache_logs = cache_logs

    @classmethod
    def open(cls, data_dir: str | Path, cfg: FeatureConfig, cache_root: str | Path | None = None, workers: int = 1,
             quiet: bool = False, splits: list[str] | None = None) -> PlannerCache:
        """Open the cache of ``cfg`` over the dataset ``data_dir`` and build the missing shards of the logs of
        ``splits`` (all splits if None), ``workers`` processes in parallel, with a progress bar unless ``quiet``."""
        validate_feature_config(cfg)
        data = Path(data_dir)
        store = open_store(data, verify_blobs=False)
        splits = list(SPLIT_NAMES if splits is None else splits)
        bad = [s for s in splits if s not in SPLIT_NAMES]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; valid splits: {list(SPLIT_NAMES)}")
        split_tokens = {s: store.tokens(s) for s in splits}
        log_tokens: dict[str, list[str]] = {}
        for s in splits:
            log_tokens.update(store.tokens_by_log(s))
        key = planner_cache_key(data, cfg)
        path = Path(cache_root or default_cache_dir(data, "planner_cache")) / key
        meta = {"key": key, "format": PLANNER_CACHE_FORMAT, "features": to_dict(cfg),
                "weights": _weights_fingerprint(cfg), "dataset": data_label(data)}
        try:
            check_cache_meta(path, meta, ("key", "format", "weights"), "planner cache")
        except ValueError as e:
            raise DataError(str(e)) from None
        cache = cls(path, cfg, data, log_tokens, split_tokens)
        cache.ensure(workers=workers, quiet=quiet)
        return cache

    def file(self, log: str) -> Path:
        return self.path / f"{log}.npz"

    @property
    def logs(self) -> list[str]:
        return list(self.log_tokens)

    def ensure(self, workers: int = 1, quiet: bool = False) -> list[str]:
        """Build the missing shards; returns the logs built."""
        todo = [log for log in self.log_tokens if not self.file(log).is_file()]
        self.built = []
        if not todo:
            return []
        if self.data is None:
            raise DataError(f"planner cache {self.path} lacks {len(todo)} shard(s) and was opened without its dataset")
        cfg_dict = to_dict(self.cfg)
        jobs = [_LogJob(str(self.data), log, self.log_tokens[log], cfg_dict, str(self.path)) for log in todo]
        start, done = time.time(), 0
        with progress_bar(disable=quiet) as bar:
            task = bar.add_task(f"planner cache ({self.cfg.camera.backbone})",
                                total=sum(len(j.tokens) for j in jobs), rate="")
            for log, n in parallel_map(_build_job, jobs, workers=workers):
                self.built.append(log)
                done += n
                bar.update(task, advance=n, rate=f"{done / max(time.time() - start, 1e-9):.1f} scenes/s")
        self.built.sort()
        for log in self.built:
            self._loaded.pop(log, None)
        return self.built

    # --- reading ---------------------------------------------------------------------------------------------------
    def tokens(self, split: str) -> list[str]:
        """Scene tokens of ``split`` in manifest order."""
        if split not in self.split_tokens:
            raise ValueError(f"split '{split}' is not in planner cache {self.path} (it holds "
                             f"{sorted(self.split_tokens)}); open it with splits including '{split}'")
        return list(self.split_tokens[split])

    def _read(self, log: str) -> dict[str, np.ndarray]:
        path = self.file(log)
        if not path.is_file():
            raise DataError(f"planner cache shard {path} is missing (interrupted build or deleted); run "
                            f"PlannerCache.open(...) to build it")
        expected = self.log_tokens[log]
        n = len(expected)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            tokens = [str(t) for t in arrays.pop("tokens")]
            if tokens != expected:
                raise ValueError(f"holds scenes {tokens[:3]}... not the log's {expected[:3]}...")
            out: dict[str, np.ndarray] = {}
            for prefix, shapes, dtypes in ((_F, self.feature_shapes, FEATURE_DTYPES),
                                           (_T, self.target_shapes, TARGET_DTYPES)):
                for k, shape in shapes.items():
                    arr = _decode(self.cfg, k, arrays[prefix + k]) if prefix == _F else arrays[prefix + k]
                    if arr.shape != (n, *shape) or arr.dtype != dtypes[k]:
                        raise ValueError(f"{prefix + k} is {arr.dtype} {arr.shape}, expected "
                                         f"{np.dtype(dtypes[k])} {(n, *shape)}")
                    arr.flags.writeable = False
                    out[prefix + k] = arr
        except Exception as e:  # zip / CRC / npy / key / shape errors all mean the same thing
            raise DataError(f"planner cache shard {path} is corrupt ({type(e).__name__}: {e}); delete it and run "
                            f"PlannerCache.open(...) again to rebuild it") from None
        return out

    def load_log(self, log: str) -> dict[str, np.ndarray]:
        """The decoded arrays of one shard (read-only), ``feature__<key>`` / ``target__<key>``; small LRU."""
        if log not in self.log_tokens:
            raise KeyError(f"log '{log}' is not in planner cache {self.path}")
        if log in self._loaded:
            self._loaded.move_to_end(log)
        else:
            self._loaded[log] = self._read(log)
            while len(self._loaded) > self._cache_logs:
                self._loaded.popitem(last=False)
        return self._loaded[log]

    def load(self, tokens: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(features, targets) of ``tokens``, stacked in the given order (contract dtypes, fresh arrays)."""
        tokens = list(tokens)
        unknown = [t for t in tokens if t not in self._where]
        if unknown:
            raise KeyError(f"{len(unknown)} scene token(s) are not in planner cache {self.path} (splits "
                           f"{sorted(self.split_tokens)}): {unknown[:5]}")
        by_log: dict[str, list[tuple[int, int]]] = {}
        for pos, t in enumerate(tokens):
            log, row = self._where[t]
            by_log.setdefault(log, []).append((pos, row))
        feats = {k: np.empty((len(tokens), *s), FEATURE_DTYPES[k]) for k, s in self.feature_shapes.items()}
        targs = {k: np.empty((len(tokens), *s), TARGET_DTYPES[k]) for k, s in self.target_shapes.items()}
        for log, pairs in by_log.items():
            arrays = self.load_log(log)
            pos, rows = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True))
            for k in feats:
                feats[k][pos] = arrays[_F + k][rows]
            for k in TARGET_KEYS:
                targs[k][pos] = arrays[_T + k][rows]
        return feats, targs

    def features(self, tokens: list[str]) -> dict[str, np.ndarray]:
        """Features only (what an agent may read at inference): ``load(tokens)[0]``."""
        return self.load(tokens)[0]

    def load_split(self, split: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``load(tokens(split))``."""
        return self.load(self.tokens(split))

    def nbytes(self) -> int:
        """Bytes of the shards on disk."""
        return sum(self.file(log).stat().st_size for log in self.log_tokens if self.file(log).is_file())
