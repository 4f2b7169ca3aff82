"""The metric cache: every scene's ``SceneInputs`` (map geometry near the ego, agents' boxes, route, lights, the
PDM-Closed reference plan) computed once and stored next to the dataset, so scoring never touches the logs again.

Layout ``<cache_root>/<key>/``: ``shards/<log>.bin`` (one per log; the log's drivable polygons stored once and
referenced by the scenes) and ``index.json`` (written last: its presence marks a complete cache). The key is
``<dataset digest>-<config hash>``: the digest covers ``manifest.json`` and every log's ``SHA256SUMS``, the hash the
``MetricCacheConfig`` (scorer/cache format version and reference-planner settings), so a changed dataset or a new
scorer version can never be scored against a stale cache (NAVSIM issue #28). Shards are written atomically and an
interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from latentvla.config import config_hash, to_dict
from latentvla.data.store import (
    DataError,
    SceneStore,
    data_label,
    dataset_digest,
    default_cache_dir,
    open_store,
    process_store,
)
from latentvla.eval.observation import Tracks
from latentvla.eval.pdm_metrics import DrivableMap
from latentvla.eval.scene_inputs import V1_FUTURE_FRAMES, RedLights, SceneInputs, Sighting, scene_inputs
from latentvla.runtime.io import atomic_write_bytes, read_json, write_json
from latentvla.runtime.parallel import parallel_map, progress_bar

CACHE_FORMAT = 3


@dataclass
class MetricCacheConfig:
    """What the cached content depends on besides the data (hashed into the cache key)."""

    format_version: int = CACHE_FORMAT
    scorer: str = "pdms-v1.1+epdms-v2"
    map_radius: float = 100.0
    reference: str = "pdm-closed"


def cache_key(root: str | Path, cfg: MetricCacheConfig) -> str:
    return f"{dataset_digest(root)}-{config_hash(cfg)}"


# --- shards ---------------------------------------------------------------------------------------------------
# A shard is one deterministic file per log: numeric fields of all its scenes concatenated per field (with
# per-scene lengths), the log's polygons once as WKB (exact doubles), and a JSON header for the strings and the
# array table. Layout: b"LVMC" + uint64 header length + header JSON + zlib(all array bytes). Loading is one
# decompression plus zero-copy views; no per-number text parsing (the cache is read far more than written).
_MAGIC = b"LVMC"
_TRACK_FIELDS = ("x", "y", "heading", "vx", "vy", "valid", "length", "width")


def _scene_record(e: SceneInputs, poly_index: dict[str, int], polys: list) -> tuple[dict, dict]:
    def index(key: str, geom) -> int:
        if key not in poly_index:
            poly_index[key] = len(polys)
            polys.append(geom)
        return poly_index[key]

    dm = e.drivable
    arrays = {
        "initial_state": e.initial_state[None], "centerline": e.centerline, "human_poses": e.human_poses,
        "past_states": e.past_states, "past_times_s": e.past_times_s,
        "reference_poses": np.zeros((0, 3)) if e.reference_poses is None else e.reference_poses,
        "driving_commands": np.zeros((0, 4), np.float32) if e.driving_commands is None else e.driving_commands,
        "sight_boxes": np.concatenate([sg.boxes for sg in e.sightings]) if e.sightings else np.zeros((0, 7)),
        "sight_counts": np.array([len(sg.tokens) for sg in e.sightings], dtype=np.int64),
        "sight_times": np.array([sg.time_s for sg in e.sightings]),
        "drivable_idx": np.array([index(f"{k}/{i}", g) for k, i, g in zip(dm.kinds, dm.ids, dm.polygons)],
                                 dtype=np.int64),
        "on_route": dm.on_route.astype(bool),
        "red_idx": np.array([index(f"red/{lid}", g) for lid, g in zip(e.red_lights.lane_ids, e.red_lights.polygons)],
                            dtype=np.int64),
        "red": (e.red_lights.red.astype(bool).reshape(len(e.red_lights.lane_ids), -1) if e.red_lights.lane_ids
                else np.zeros((0, V1_FUTURE_FRAMES + 1), dtype=bool)),
    }
    header = {"token": e.token, "log_name": e.log_name, "family": e.family, "t0_us": e.t0_us,
              "route_roadblocks": e.route_roadblocks, "speed_limit": e.speed_limit,
              "previous_token": e.previous_token, "red_lane_ids": e.red_lights.lane_ids,
              "sight_tokens": [sg.tokens for sg in e.sightings], "sight_names": [sg.names for sg in e.sightings],
              "drivable_kinds": list(dm.kinds), "drivable_ids": list(dm.ids)}
    for tag, tr in (("t1", e.tracks), ("t2", e.tracks_v2)):
        for f in _TRACK_FIELDS:
            arrays[f"{tag}_{f}"] = getattr(tr, f)
        header[f"{tag}_tokens"], header[f"{tag}_names"] = tr.tokens, tr.names
    return arrays, header


def _encode_shard(log: str, entries: list[SceneInputs]) -> bytes:
    poly_index: dict[str, int] = {}
    polys: list = []
    records = [_scene_record(e, poly_index, polys) for e in entries]
    out: dict[str, np.ndarray] = {}
    for key in records[0][0]:
        parts = [r[0][key] for r in records]
        out[key] = np.concatenate(parts)
        out[key + "#n"] = np.array([len(p) for p in parts], dtype=np.int64)
    wkb = [shapely.to_wkb(g, byte_order=1) for g in polys]
    out["wkb"] = np.frombuffer(b"".join(wkb), dtype=np.uint8)
    out["wkb#n"] = np.array([len(w) for w in wkb], dtype=np.int64)
    table, chunks, offset = {}, [], 0
    for key in sorted(out):
        a = np.ascontiguousarray(out[key])
        table[key] = [a.dtype.str, list(a.shape), offset]
        chunks.append(a.tobytes())
        offset += a.nbytes
    header = json.dumps({"format": CACHE_FORMAT, "log": log, "scenes": [r[1] for r in records], "arrays": table},
                        sort_keys=True).encode()
    return _MAGIC + struct.pack("<Q", len(header)) + header + zlib.compress(b"".join(chunks), 1)


def _read_shard(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    if data[:4] != _MAGIC:
        raise ValueError("not a metric cache shard (bad magic)")
    (n,) = struct.unpack("<Q", data[4:12])
    header = json.loads(data[12:12 + n])
    blob = zlib.decompress(data[12 + n:])
    arrays = {}
    for key, (dtype, shape, offset) in header.pop("arrays").items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape))
        arrays[key] = np.frombuffer(blob, dtype=dt, count=count, offset=offset).reshape(shape)
    return header, arrays


def _decode_shard(data: bytes, path: Path) -> dict[str, SceneInputs]:
    try:
        header, arrays = _read_shard(data)
        raw = arrays["wkb"].tobytes()
        ends = np.cumsum(arrays["wkb#n"])
        geoms = shapely.from_wkb([raw[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)])
        cols = {k[:-2]: (arrays[k[:-2]], np.concatenate([[0], np.cumsum(arrays[k])]).tolist())
                for k in arrays if k.endswith("#n") and k != "wkb#n"}
    except Exception as e:  # zip / npy / json / wkb errors all mean the same thing
        raise DataError(f"metric cache shard {path} is corrupt ({type(e).__name__}: {e}); delete the cache "
                        f"directory to rebuild it") from None
    if header.get("format") != CACHE_FORMAT:
        raise DataError(f"metric cache shard {path} has format {header.get('format')}, expected {CACHE_FORMAT}")
    out = {}
    for i, h in enumerate(header["scenes"]):
        c = {k: a[o[i]:o[i + 1]] for k, (a, o) in cols.items()}
        bounds = [0, *np.cumsum(c["sight_counts"]).tolist()]
        sightings = [Sighting(float(t), tok, nm, c["sight_boxes"][bounds[f]:bounds[f + 1]])
                     for f, (t, tok, nm) in enumerate(zip(c["sight_times"], h["sight_tokens"], h["sight_names"]))]
        drivable = DrivableMap(list(geoms[c["drivable_idx"]]), list(h["drivable_kinds"]),
                               list(h["drivable_ids"]), c["on_route"])
        inputs = SceneInputs(
            token=h["token"], log_name=h["log_name"], family=h["family"], t0_us=int(h["t0_us"]),
            initial_state=c["initial_state"][0], sightings=sightings, drivable=drivable,
            route_roadblocks=list(h["route_roadblocks"]), centerline=c["centerline"],
            speed_limit=float(h["speed_limit"]),
            red_lights=RedLights(list(h["red_lane_ids"]), list(geoms[c["red_idx"]]), c["red"]),
            human_poses=c["human_poses"], past_states=c["past_states"], past_times_s=c["past_times_s"],
            reference_poses=c["reference_poses"] if len(c["reference_poses"]) else None,
            previous_token=h["previous_token"],
            driving_commands=c["driving_commands"] if len(c["driving_commands"]) else None)
        for tag, prop in (("t1", "tracks"), ("t2", "tracks_v2")):  # pre-fill the cached properties
            inputs.__dict__[prop] = Tracks(list(h[f"{tag}_tokens"]), list(h[f"{tag}_names"]),
                                           **{f: c[f"{tag}_{f}"] for f in _TRACK_FIELDS})
        out[inputs.token] = inputs
    return out


# --- building -------------------------------------------------------------------------------------------------
@dataclass
class _LogJob:
    data: str
    log: str
    tokens: list[str]
    out: str


def build_log_entries(store: SceneStore, tokens: list[str]) -> list[SceneInputs]:
    """SceneInputs (with the PDM-Closed plan) for the scenes of one log, predecessor links included."""
    from latentvla.eval.reference import pdm_closed_plan

    log = store._log(store.info(tokens[0])["log"])
    frame_of = log["_frame_of"]
    by_frame = {frame_of[t]: t for t in tokens}
    entries = []
    for tok in tokens:
        scene = store.load_scene(tok, with_sim_state=False)
        inputs = scene_inputs(scene, previous_token=by_frame.get(frame_of[tok] - 1))
        inputs.reference_poses = pdm_closed_plan(inputs)
        entries.append(inputs)
    return entries


def _build_log(job: _LogJob) -> tuple[str, int]:
    entries = build_log_entries(process_store(job.data), job.tokens)
    atomic_write_bytes(Path(job.out) / "shards" / f"{job.log}.bin", _encode_shard(job.log, entries))
    return job.log, len(entries)


class MetricCache:
    """``MetricCache.open(data)`` then ``ensure(tokens)`` (builds the missing shards of those scenes' logs, in
    parallel, with a progress bar) and ``load(token)``. Shards are built per log on first use, so scoring the test
    split never pays for caching the training split."""

    def __init__(self, path: Path, index: dict, data: Path | None = None):
        self.path = Path(path)
        self.index = index
        self.data = data
        self._shard_of: dict[str, str] = index["scenes"]
        self._loaded: dict[str, dict[str, SceneInputs]] = {}

    @classmethod
    def open(cls, data: str | Path, cfg: MetricCacheConfig | None = None, cache_root: str | Path | None = None,
             workers: int = 1, quiet: bool = False, tokens: list[str] | None = None) -> MetricCache:
        """Open (creating the index if needed) and build the shards ``tokens`` need (all scenes if None)."""
        cfg = cfg or MetricCacheConfig()
        key = cache_key(data, cfg)
        path = Path(cache_root or default_cache_dir(data, "metric_cache")) / key
        if not (path / "index.json").is_file():
            store = open_store(data, verify_blobs=False)
            write_json(path / "index.json", {"key": key, "config": to_dict(cfg), "dataset": data_label(data),
                                             "scenes": {s["token"]: s["log"] for s in store.manifest["scenes"]}})
        index = read_json(path / "index.json")
        if index.get("key") != key:
            raise DataError(f"metric cache {path} belongs to {index.get('key')}, not {key}; delete it to rebuild")
        cache = cls(path, index, data)
        cache.ensure(tokens, workers=workers, quiet=quiet)
        return cache

    def ensure(self, tokens: list[str] | None = None, workers: int = 1, quiet: bool = False) -> int:
        """Build the missing shards of the logs of ``tokens`` (all if None); returns the number of scenes built."""
        logs = sorted({self.log_of(t) for t in (self.tokens if tokens is None else tokens)})
        if all((self.path / "shards" / f"{log}.bin").is_file() for log in logs):
            return 0
        if self.data is None:
            raise DataError(f"metric cache {self.path} lacks shards and was opened without its dataset")
        return build(self.data, self.path, workers=workers, quiet=quiet, logs=logs)["built_scenes"]

    @property
    def tokens(self) -> list[str]:
        return list(self._shard_of)

    def log_of(self, token: str) -> str:
        try:
            return self._shard_of[token]
        except KeyError:
            raise KeyError(f"scene token '{token}' is not in the metric cache {self.path}") from None

    def load_log(self, log: str) -> dict[str, SceneInputs]:
        if log not in self._loaded:
            if len(self._loaded) >= 16:
                self._loaded.pop(next(iter(self._loaded)))
            path = self.path / "shards" / f"{log}.bin"
            if not path.is_file():
                raise DataError(f"metric cache shard {path} is missing; run `latentvla score` again to build it")
            self._loaded[log] = _decode_shard(path.read_bytes(), path)
        return self._loaded[log]

    def load(self, token: str) -> SceneInputs:
        return self.load_log(self.log_of(token))[token]


def build(data: Path, path: Path, workers: int = 1, quiet: bool = False, logs: list[str] | None = None) -> dict:
    """Compute the missing shards of ``logs`` (all logs if None); resumable (each shard is written atomically)."""
    store = open_store(data, verify_blobs=False)
    by_log = store.tokens_by_log()
    wanted = sorted(by_log) if logs is None else sorted(logs)
    todo = [_LogJob(str(data), log, by_log[log], str(path)) for log in wanted
            if not (path / "shards" / f"{log}.bin").is_file()]
    total = sum(len(by_log[log]) for log in wanted)
    start, built = time.time(), 0
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("building metric cache", total=total, completed=total - sum(len(j.tokens) for j in todo),
                            rate="")
        for _, n in parallel_map(_build_log, todo, workers=workers):
            built += n
            bar.update(task, advance=n, rate=f"{built / max(time.time() - start, 1e-9):.1f} scenes/s")
    return {"built_scenes": built, "build_seconds": round(time.time() - start, 3)}


_PROCESS_CACHES: dict[str, MetricCache] = {}


def process_cache(path: str | Path) -> MetricCache:
    """One reader (with its LRU of decoded shards) per built cache directory and process, for pool workers."""
    from latentvla.runtime.io import read_json

    key = str(path)
    if key not in _PROCESS_CACHES:
        _PROCESS_CACHES[key] = MetricCache(Path(path), read_json(Path(path) / "index.json"))
    return _PROCESS_CACHES[key]
