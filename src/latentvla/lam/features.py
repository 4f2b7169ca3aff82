"""The LAM feature cache: every 2 Hz frame of every log encoded once by the frozen encoder and stored next to the
dataset, so latent-action training reads small float16 arrays instead of decoding and encoding images every step.

Layout ``<cache_root or DATA/feature_cache>/<key>/``: ``meta.json`` (what the features were built with) and one
``<log>.npz`` per log holding ``features`` float16 (F, T, D) for the log's F frames of the encoder's sensor
(camera ``enc_cfg.camera``, or ``lidar``) in time order, ``frame_tokens`` (F,) and ``timestamps`` int64 µs (F,).
The key is ``<dataset digest>-<config hash of the EncoderConfig>`` (the digest covers manifest.json and every
log's SHA256SUMS), so a changed dataset or encoder setting never reads stale features; ``meta.json`` also records
the cache format and a fingerprint of the encoder weights, and a mismatch is an error that says to delete the
directory.

Files are written atomically with fixed zip timestamps, and a log's frames are always encoded in time order in
the same batches of ``enc_cfg.batch_size`` (batch size can move the last float bits, by < 1e-5; the torch thread
count does not, checked bitwise on CPU), so on one machine a build is byte-identical across runs and across
``workers``. An interrupted build resumes: only missing log files are encoded. Usage::

    cache = FeatureCache.open(data_dir, cfg.encoder, workers=2)   # builds what is missing, with a progress bar
    feats, tokens = cache.load_log("log_000003")                   # float32 (F, T, D), list[str]
    i = cache.frame_index("log_000003", frame_token)

With ``encoder.lidar`` the LAM reads camera and LiDAR tokens together: ``open_features`` opens one cache per sensor
and joins them per log (:class:`CameraLidarFeatures`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.config import config_hash, from_dict, to_dict
from latentvla.data.store import (
    LRU,
    DataError,
    SceneStore,
    data_label,
    dataset_digest,
    default_cache_dir,
    open_store,
    process_store,
)
from latentvla.lam.configuration import EncoderConfig
from latentvla.lam.encoder import LIDAR_BEV, FrameEncoder, build_encoder, encoder_fingerprint, encoder_sensor
from latentvla.runtime.io import atomic_write_bytes, check_cache_meta, npz_bytes
from latentvla.runtime.parallel import parallel_map, progress_bar

FEATURE_FORMAT = 1
_KEYS = ("features", "frame_tokens", "timestamps")


_LIDAR_FIELDS = ("bev_range_m", "bev_pixels", "bev_center_x_m", "bev_grid", "lidar", "lidar_scale")
_CAMERA_FIELDS = ("camera", "image_height", "image_width", "grid", "lidar", "lidar_scale")


def feature_cache_key(data_dir: str | Path, enc_cfg: EncoderConfig) -> str:
    """``<dataset digest>-<config hash of enc_cfg>``: the cache directory name. Only the fields the encoder reads
    are hashed (a camera encoder ignores the LiDAR fields and vice versa), so camera caches built before the LiDAR
    fields existed keep their names."""
    if enc_cfg.lidar:
        raise ValueError("a camera + LiDAR config has one cache per sensor: use open_features, not FeatureCache")
    drop = _CAMERA_FIELDS if enc_cfg.name == LIDAR_BEV else _LIDAR_FIELDS
    return f"{dataset_digest(data_dir)}-{config_hash(enc_cfg, exclude=drop)}"


def dataset_logs(store: SceneStore) -> list[str]:
    """Every log of the dataset, sorted."""
    return sorted(store.tokens_by_log())


def encode_log(store: SceneStore, encoder: FrameEncoder, log: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(features float16 (F, T, D), frame tokens, timestamps int64): ``log``'s frames of ``encoder.sensor`` in time
    order, decoded and encoded ``encoder.cfg.batch_size`` at a time."""
    tokens, stamps, inputs = store.log_sensor(log, encoder.sensor)
    bs = encoder.cfg.batch_size
    chunks, batch = [], []
    for item in inputs:
        batch.append(item)
        if len(batch) == bs:
            chunks.append(encoder.encode_frames(batch).astype(np.float16))
            batch = []
    if batch:
        chunks.append(encoder.encode_frames(batch).astype(np.float16))
    feats = np.concatenate(chunks) if chunks else np.zeros((0, encoder.num_tokens, encoder.dim), np.float16)
    return feats, tokens, np.asarray(stamps, dtype=np.int64)


def log_file_bytes(features: np.ndarray, tokens: list[str], timestamps: np.ndarray) -> bytes:
    """The deterministic ``.npz`` bytes of one log's features."""
    return npz_bytes({"features": np.ascontiguousarray(features, dtype=np.float16),
                      "frame_tokens": np.asarray(tokens, dtype=np.str_),
                      "timestamps": np.asarray(timestamps, dtype=np.int64)})


# --- building (one encoder per process) -------------------------------------------------------------------------
@dataclass
class _LogJob:
    data: str
    log: str
    encoder: dict
    out: str


_ENCODER: dict[str, FrameEncoder] = {}  # at most one: the last config used in this process


def _encoder(cfg_dict: dict) -> FrameEncoder:
    cfg = from_dict(EncoderConfig, cfg_dict)
    key = config_hash(cfg)
    if key not in _ENCODER:
        _ENCODER.clear()
        _ENCODER[key] = build_encoder(cfg)
    return _ENCODER[key]


def _build_log(job: _LogJob) -> tuple[str, int]:
    encoder = _encoder(job.encoder)
    feats, tokens, stamps = encode_log(process_store(job.data), encoder, job.log)
    atomic_write_bytes(Path(job.out) / f"{job.log}.npz", log_file_bytes(feats, tokens, stamps))
    return job.log, len(tokens)


class FeatureCache:
    """``FeatureCache.open(DATA, enc_cfg)`` builds the missing log files; then ``load_log(log)`` ->
    (float32 (F, T, D), frame tokens) and ``frame_index(log, token)``."""

    def __init__(self, path: Path, enc_cfg: EncoderConfig, data: Path | None = None, logs: list[str] | None = None,
                 cache_logs: int = 8):
        self.path = Path(path)
        self.paths = [self.path]  # what reopen_features needs (one entry per sensor cache)
        self.key = self.path.name
        self.enc_cfg = enc_cfg
        self.data = data
        self.logs = list(logs or [])
        self.built: list[str] = []  # logs encoded by the last open()/ensure()
        self._loaded: LRU = LRU(cache_logs)
        self._tokens: dict[str, list[str]] = {}
        self._index: dict[str, dict[str, int]] = {}
        self._stamps: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, data_dir: str | Path, enc_cfg: EncoderConfig, cache_root: str | Path | None = None,
             logs: list[str] | None = None, workers: int = 1, quiet: bool = False) -> FeatureCache:
        """Open the cache of ``enc_cfg`` over the dataset ``data_dir`` and build the files of ``logs`` (all logs if
        None) that are missing, ``workers`` processes in parallel (one encoder each), with a progress bar."""
        data = Path(data_dir)
        store = open_store(data, verify_blobs=False)
        all_logs = dataset_logs(store)
        if logs is None:
            logs = all_logs
        unknown = sorted(set(logs) - set(all_logs))
        if unknown:
            raise DataError(f"log(s) {unknown} are not in the dataset {data}; it has {len(all_logs)} logs "
                            f"({all_logs[:3]}...)")
        if logs:
            store.log_sensor(logs[0], encoder_sensor(enc_cfg))  # a missing camera fails before anything is written
        key = feature_cache_key(data, enc_cfg)
        path = Path(cache_root or default_cache_dir(data, "feature_cache")) / key
        meta = {"key": key, "format": FEATURE_FORMAT, "encoder": to_dict(enc_cfg),
                "weights": encoder_fingerprint(enc_cfg), "dataset": data_label(data)}
        try:
            check_cache_meta(path, meta, ("key", "format", "weights"), "feature cache")
        except ValueError as e:
            raise DataError(str(e)) from None
        cache = cls(path, enc_cfg, data, sorted(logs))
        cache.ensure(workers=workers, quiet=quiet)
        return cache

    def file(self, log: str) -> Path:
        return self.path / f"{log}.npz"

    def ensure(self, logs: list[str] | None = None, workers: int = 1, quiet: bool = False) -> list[str]:
        """Encode the missing files of ``logs`` (the cache's logs if None); returns the logs built."""
        logs = sorted(self.logs if logs is None else logs)
        todo = [log for log in logs if not self.file(log).is_file()]
        self.built = []
        if not todo:
            return []
        if self.data is None:
            raise DataError(f"feature cache {self.path} lacks {len(todo)} log file(s) and was opened without its "
                            f"dataset")
        store = open_store(self.data, verify_blobs=False, cache_logs=1)
        # frame counts for the progress bar; a missing camera fails here, before any encoder or worker starts
        sensor = encoder_sensor(self.enc_cfg)
        frames = {log: len(store.log_sensor(log, sensor)[0]) for log in todo}
        jobs = [_LogJob(str(self.data), log, to_dict(self.enc_cfg), str(self.path)) for log in todo]
        start, done = time.time(), 0
        with progress_bar(disable=quiet) as bar:
            task = bar.add_task(f"encoding {sensor} ({self.enc_cfg.name})",
                                total=sum(frames.values()), rate="")
            for log, n in parallel_map(_build_log, jobs, workers=workers):
                self.built.append(log)
                done += n
                bar.update(task, advance=n, rate=f"{done / max(time.time() - start, 1e-9):.1f} frames/s")
        self.built.sort()
        for log in self.built:  # forget anything read from a replaced file
            self._forget(log)
        return self.built

    # --- reading ----------------------------------------------------------------------------------------------
    def _forget(self, log: str) -> None:
        for d in (self._loaded, self._tokens, self._index, self._stamps):
            d.pop(log, None)

    def _read(self, log: str, members: tuple[str, ...] = _KEYS) -> dict[str, np.ndarray]:
        path = self.file(log)
        if not path.is_file():
            hint = ("it is not in this cache's logs" if self.logs and log not in self.logs
                    else "the build was interrupted or the file was deleted")
            raise DataError(f"feature file {path} is missing ({hint}); run FeatureCache.open(..., logs=[{log!r}]) "
                            f"to build it")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in members}
            feats = arrays.get("features")
            if feats is not None and (feats.dtype != np.float16 or feats.ndim != 3):
                raise ValueError(f"features are {feats.dtype} {feats.shape}, expected float16 (F, T, D)")
            for k in ("frame_tokens", "timestamps"):
                if k in arrays and (arrays[k].ndim != 1 or (feats is not None and len(arrays[k]) != len(feats))):
                    raise ValueError(f"{k} has shape {arrays[k].shape}, expected one entry per frame")
        except Exception as e:  # zip / CRC / npy / key errors all mean the same thing
            raise DataError(f"feature cache file {path} is corrupt ({type(e).__name__}: {e}); delete it to rebuild "
                            f"it (FeatureCache.open rebuilds missing logs)") from None
        return arrays

    def _meta(self, log: str) -> None:
        if log not in self._tokens:
            arrays = self._read(log, ("frame_tokens", "timestamps"))
            tokens = [str(t) for t in arrays["frame_tokens"]]
            self._tokens[log] = tokens
            self._index[log] = {t: i for i, t in enumerate(tokens)}
            self._stamps[log] = arrays["timestamps"]

    def load_log(self, log: str) -> tuple[np.ndarray, list[str]]:
        """(features float32 (F, T, D), read-only; frame tokens in time order)."""

        def read() -> np.ndarray:
            arrays = self._read(log)
            feats = arrays["features"].astype(np.float32)
            feats.flags.writeable = False
            if log not in self._tokens:
                tokens = [str(t) for t in arrays["frame_tokens"]]
                self._tokens[log] = tokens
                self._index[log] = {t: i for i, t in enumerate(tokens)}
                self._stamps[log] = arrays["timestamps"]
            return feats

        return self._loaded.get_or(log, read), list(self._tokens[log])

    def frame_tokens(self, log: str) -> list[str]:
        self._meta(log)
        return list(self._tokens[log])

    def timestamps(self, log: str) -> np.ndarray:
        """int64 µs, one per frame (time order)."""
        self._meta(log)
        return self._stamps[log].copy()

    def frame_index(self, log: str, token: str) -> int:
        """Row of frame ``token`` in ``load_log(log)``'s features."""
        self._meta(log)
        try:
            return self._index[log][token]
        except KeyError:
            raise KeyError(f"frame token '{token}' is not a frame of log {log} in {self.file(log)}") from None


# --- camera + LiDAR ----------------------------------------------------------------------------------------------
def sensor_configs(enc_cfg: EncoderConfig) -> list[EncoderConfig]:
    """One encoder config per cache: the config itself, or with ``lidar`` its camera part and its ``lidar-bev`` part
    (each with only the fields it reads set, so each reuses the cache of the same encoder run alone)."""
    if not enc_cfg.lidar:  # (EncoderConfig itself rejects lidar with lidar-bev and a lidar_scale <= 0)
        return [enc_cfg]
    base = EncoderConfig()
    camera = dataclasses.replace(enc_cfg, **{k: getattr(base, k) for k in _LIDAR_FIELDS})
    lidar = dataclasses.replace(enc_cfg, name=LIDAR_BEV, **{k: getattr(base, k) for k in _CAMERA_FIELDS})
    return [camera, lidar]


class CameraLidarFeatures:
    """The features of ``encoder.lidar``: per frame, the camera cache's (Tc, Dc) tokens then the LiDAR cache's
    (Tl, Dl) tokens times ``scale``, as one float32 (F, Tc + Tl, Dc + Dl) block array (zeros off the blocks), so the
    LAM reads both sensors through its one input layer. Same reading interface as :class:`FeatureCache`."""

    def __init__(self, camera: FeatureCache, lidar: FeatureCache, scale: float, cache_logs: int = 8):
        self.camera, self.lidar, self.scale = camera, lidar, float(scale)
        self.paths = [camera.path, lidar.path]
        self._loaded: LRU = LRU(cache_logs)

    def _join(self, log: str) -> np.ndarray:
        cam, tokens = self.camera.load_log(log)
        lid, lidar_tokens = self.lidar.load_log(log)
        if lidar_tokens != tokens:
            raise DataError(f"log {log}: the camera features ({self.camera.file(log)}) and the LiDAR features "
                            f"({self.lidar.file(log)}) list different frames; delete both files to rebuild them")
        (f, tc, dc), (tl, dl) = cam.shape, lid.shape[1:]
        out = np.zeros((f, tc + tl, dc + dl), np.float32)
        out[:, :tc, :dc] = cam
        out[:, tc:, dc:] = lid * np.float32(self.scale)
        out.flags.writeable = False
        return out

    def load_log(self, log: str) -> tuple[np.ndarray, list[str]]:
        """(features float32 (F, Tc + Tl, Dc + Dl), read-only; frame tokens in time order)."""
        return self._loaded.get_or(log, lambda: self._join(log)), self.camera.frame_tokens(log)

    def frame_tokens(self, log: str) -> list[str]:
        return self.camera.frame_tokens(log)

    def timestamps(self, log: str) -> np.ndarray:
        return self.camera.timestamps(log)

    def frame_index(self, log: str, token: str) -> int:
        return self.camera.frame_index(log, token)


def open_features(data_dir: str | Path, enc_cfg: EncoderConfig, cache_root: str | Path | None = None,
                  logs: list[str] | None = None, workers: int = 1, quiet: bool = False
                  ) -> FeatureCache | CameraLidarFeatures:
    """The LAM's frame features for ``enc_cfg``: its :class:`FeatureCache`, or with ``encoder.lidar`` the camera
    and LiDAR caches joined (each built where missing, see ``FeatureCache.open``)."""
    return _joined([FeatureCache.open(data_dir, c, cache_root=cache_root, logs=logs, workers=workers, quiet=quiet)
                    for c in sensor_configs(enc_cfg)], enc_cfg)


def reopen_features(paths: list[str], enc_cfg: EncoderConfig) -> FeatureCache | CameraLidarFeatures:
    """Open built caches (``features.paths``) without the dataset, e.g. in a worker process."""
    return _joined([FeatureCache(Path(p), c) for p, c in zip(paths, sensor_configs(enc_cfg), strict=True)], enc_cfg)


def _joined(caches: list[FeatureCache], enc_cfg: EncoderConfig) -> FeatureCache | CameraLidarFeatures:
    return caches[0] if len(caches) == 1 else CameraLidarFeatures(*caches, scale=enc_cfg.lidar_scale)
