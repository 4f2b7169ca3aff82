"""Read a generated dataset: the manifest indexes scenes; each log directory holds frames, map, restart states
and sensor blobs. Reading streams per scene (a small LRU of parsed logs), so a 100k-scene dataset costs the same
per scene as a tiny one. Every sensor blob is checked against its log's SHA256SUMS before it is decoded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from latentvla.map_api import MapAPI
from latentvla.runtime.io import load_npz, parse_sha256sums, read_json, sha256_bytes, sha256_file
from latentvla.schema import (
    AgentInput,
    Annotations,
    Camera,
    EgoStatus,
    Frame,
    Lidar,
    Scene,
    SceneMetadata,
    TrafficLightStatus,
    command_one_hot,
    global_to_local,
)

SPLIT_NAMES = ("train", "val", "test")


class DataError(ValueError):
    """A dataset file is missing, corrupt or inconsistent; the message names the scene and the file."""


def read_data_file(path: str | Path, what: str = "") -> bytes:
    """A dataset file's bytes; a missing one raises ``DataError`` naming it (``what``: e.g. "LiDAR file ")."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what}{path} is missing") from None


class LRU(OrderedDict):
    """A dict of at most ``size`` entries: ``get_or(key, make)`` returns the entry (now the most recent) or stores
    ``make()``, dropping the least recently used entry beyond ``size``."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        val = make()
        self[key] = val
        if len(self) > self.size:
            self.popitem(last=False)
        return val


class SceneStore:
    """``SceneStore(DIR)``: ``tokens(split)``, ``load_scene(token)``, ``load_agent_input(token)``, ``verify()``."""

    def __init__(self, root: str | Path, verify_blobs: bool = True, cache_logs: int = 32):
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise DataError(f"{manifest_path} not found: generate a world with `latentvla world generate --out "
                            f"{root}` (or finish one with --resume), or pass --data navsim:SPLIT for NAVSIM logs")
        try:
            manifest = read_json(manifest_path)
        except ValueError as e:
            raise DataError(str(e)) from None
        self._setup(root, manifest, verify_blobs, cache_logs)

    def _setup(self, root: Path, manifest: dict, verify_blobs: bool, cache_logs: int) -> None:
        """Index a manifest (``scenes``: token, family, command, log, split); shared with other sources."""
        self.root = root
        self.manifest = manifest
        self.verify_blobs = verify_blobs
        self._index = {s["token"]: s for s in self.manifest["scenes"]}
        self._logs = LRU(cache_logs)
        self._maps = LRU(8)

    # --- index ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def tokens(self, split: str | None = None) -> list[str]:
        if split in (None, "all"):
            return [s["token"] for s in self.manifest["scenes"]]
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split '{split}'; valid splits: {list(SPLIT_NAMES) + ['all']}")
        return [s["token"] for s in self.manifest["scenes"] if s["split"] == split]

    def tokens_by_log(self, split: str | None = None) -> dict[str, list[str]]:
        """Scene tokens of ``split`` grouped by log, logs and tokens in manifest order (splits are assigned by log,
        so a log's scenes never straddle splits)."""
        out: dict[str, list[str]] = {}
        for tok in self.tokens(split):
            out.setdefault(self._index[tok]["log"], []).append(tok)
        return out

    def info(self, token: str) -> dict:
        """Manifest entry of a scene: token, family, command, log, split."""
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"scene token '{token}' is not in {self.root / 'manifest.json'}") from None

    # --- per-log files ----------------------------------------------------------------------------------
    def _log(self, name: str) -> dict:
        def load() -> dict:
            d = self.root / "logs" / name
            try:
                meta = read_json(d / "log.json")
            except (FileNotFoundError, ValueError) as e:
                raise DataError(f"log {name}: {e}") from None
            sums_path = d / "SHA256SUMS"
            if not sums_path.is_file():
                raise DataError(f"log {name}: {sums_path} is missing; run `latentvla data verify {self.root}`")
            meta["_sums"] = parse_sha256sums(sums_path)
            meta["_frame_of"] = {sc["token"]: sc["frame_index"] for sc in meta["scenes"]}
            return meta

        return self._logs.get_or(name, load)

    def _blob(self, log: str, rel: str, token: str) -> bytes:
        path = self.root / "logs" / log / rel
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"scene {token}: file {path} is missing") from None
        if self.verify_blobs:
            expected = self._log(log)["_sums"].get(rel)
            if expected is None or sha256_bytes(data) != expected:
                raise DataError(f"scene {token}: file {path} is corrupt (checksum mismatch); regenerate the log or "
                                f"run `latentvla data verify {self.root}`")
        return data

    def load_map(self, log: str) -> MapAPI:
        def load() -> MapAPI:
            path = self.root / "logs" / log / "map.json"
            try:
                return MapAPI.from_dict(json.loads(self._blob(log, "map.json", f"(log {log})")))
            except (KeyError, ValueError, TypeError) as e:
                if isinstance(e, DataError):
                    raise
                raise DataError(f"log {log}: {path} is corrupt ({e})") from None

        return self._maps.get_or(log, load)

    def load_sim_state(self, token: str) -> dict:
        """The simulator state at the scene's current frame (restart point for closed-loop evaluation)."""
        info = self.info(token)
        log = self._log(info["log"])
        raw = self._blob(info["log"], "sim.json.gz", token)
        return json.loads(gzip.decompress(raw))["frames"][log["_frame_of"][token]]

    # --- decoding ---------------------------------------------------------------------------------------
    def _camera(self, log: str, name: str, rel: str | None, token: str) -> Camera:
        spec = self._log(log)["cameras"][name]
        image = None
        if rel is not None:
            buf = np.frombuffer(self._blob(log, rel, token), dtype=np.uint8)
            bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
            if bgr is None:
                raise DataError(f"scene {token}: image {self.root / 'logs' / log / rel} cannot be decoded")
            image = np.ascontiguousarray(bgr[..., ::-1])
        width, height = spec["width"], spec["height"]
        if image is not None and not (width and height):  # OpenScene logs do not record image sizes
            height, width = image.shape[:2]
        return Camera(name=name, intrinsics=np.asarray(spec["intrinsics"]),
                      sensor2ego_rotation=np.asarray(spec["sensor2ego_rotation"]),
                      sensor2ego_translation=np.asarray(spec["sensor2ego_translation"]), image=image,
                      distortion=np.asarray(spec.get("distortion", np.zeros(5)), dtype=np.float64),
                      width=width, height=height)

    def _lidar(self, log: str, rel: str, token: str) -> Lidar:
        try:
            pts = load_npz(self._blob(log, rel, token))["points"]
        except DataError:
            raise
        except Exception as e:  # zip/npy format errors
            raise DataError(f"scene {token}: LiDAR file {self.root / 'logs' / log / rel} is corrupt ({e})") from None
        return Lidar(pts.astype(np.float32, copy=False))

    def _frame(self, log: str, fr: dict, token: str, sensors: bool) -> Frame:
        e = fr["ego"]
        status = EgoStatus(np.asarray(e["pose"], dtype=np.float64), np.asarray(e["velocity"], dtype=np.float32),
                           np.asarray(e["acceleration"], dtype=np.float32), command_one_hot(e["command"]), True)
        n = len(fr["names"])
        ann = Annotations(np.asarray(fr["boxes"], dtype=np.float64).reshape(n, 7), list(fr["names"]),
                          np.asarray(fr["velocity_3d"], dtype=np.float64).reshape(n, 3), list(fr["track_tokens"]),
                          np.asarray(fr["brake_lights"], dtype=bool))
        cams, lidar = {}, None
        if sensors:
            for name, rel in fr["sensors"].items():
                if name == "lidar":
                    lidar = self._lidar(log, rel, token)
                else:
                    cams[name] = self._camera(log, name, rel, token)
        return Frame(fr["token"], int(fr["timestamp"]), status, ann,
                     [TrafficLightStatus(lid, st) for lid, st in fr["traffic_lights"]], list(fr["route"]), cams, lidar)

    def load_scene(self, token: str, sensors: str = "none", with_sim_state: bool = True) -> Scene:
        """Privileged scene (14 frames, map, restart state). ``sensors``: none | current | all."""
        if sensors not in ("none", "current", "all"):
            raise ValueError(f"sensors must be one of none/current/all, got '{sensors}'")
        info = self.info(token)
        log = self._log(info["log"])
        cur = log["_frame_of"].get(token)
        if cur is None:
            raise DataError(f"scene {token} is listed in the manifest but not in logs/{info['log']}/log.json")
        frames = []
        for i in range(cur - 3, cur + 11):
            want = sensors == "all" or (sensors == "current" and i == cur)
            frames.append(self._frame(info["log"], log["frames"][i], token, want))
        meta = SceneMetadata(log_name=info["log"], scene_token=token, map_name=log["map_name"],
                             initial_token=log["frames"][cur - 3]["token"], family=info["family"], split=info["split"],
                             command=info["command"])
        sim_state = self.load_sim_state(token) if with_sim_state else None
        return Scene(meta, frames, self.load_map(info["log"]), sim_state)

    def load_agent_input(self, token: str, history_sensors: bool = False, sensors: bool = True) -> AgentInput:
        """What a planner sees: 4 ego statuses (current frame last) and the current frame's cameras + LiDAR
        (``sensors=False``: ego statuses only, for agents that need no sensors)."""
        info = self.info(token)
        log = self._log(info["log"])
        cur = log["_frame_of"][token]
        history = log["frames"][cur - 3: cur + 1]
        origin = np.asarray(history[-1]["ego"]["pose"], dtype=np.float64)
        statuses, cams, lidars = [], [], []
        for k, fr in enumerate(history):
            e = fr["ego"]
            rel = global_to_local(np.asarray(e["pose"])[None], origin)[0].astype(np.float32)
            statuses.append(EgoStatus(rel, np.asarray(e["velocity"], dtype=np.float32),
                                      np.asarray(e["acceleration"], dtype=np.float32), command_one_hot(e["command"])))
            load = sensors and (history_sensors or k == len(history) - 1)
            cams.append({n: self._camera(info["log"], n, r if load else None, token)
                         for n, r in fr["sensors"].items() if n != "lidar"})
            lidars.append(self._lidar(info["log"], fr["sensors"]["lidar"], token) if load else None)
        return AgentInput(statuses, cams, lidars, token)

    def log_images(self, log: str, camera: str) -> tuple[list[str], list[int], Iterator[np.ndarray]]:
        """Every frame of ``log`` in time order: (frame tokens, timestamps in µs, a lazy iterator over ``camera``'s
        images, RGB uint8 HxWx3, one decoded at a time with checksum verification). The camera is checked up front:
        a ``DataError`` names it and the log's available cameras."""
        return self.log_sensor(log, camera)

    def log_sensor(self, log: str, sensor: str) -> tuple[list[str], list[int], Iterator[np.ndarray]]:
        """Like ``log_images`` for any sensor: a camera name (RGB uint8 HxWx3 images) or ``lidar`` (float32 (N, >=3)
        ego-frame point clouds), one decoded at a time with checksum verification."""
        meta = self._log(log)
        if sensor != "lidar" and sensor not in meta["cameras"]:
            raise DataError(f"camera '{sensor}' is not in the dataset {self.root} (log {log}); available cameras: "
                            f"{sorted(meta['cameras'])} (or 'lidar')")
        frames = sorted(meta["frames"], key=lambda fr: int(fr["timestamp"]))

        def decoded() -> Iterator[np.ndarray]:
            for fr in frames:
                rel = fr["sensors"].get(sensor)
                if rel is None:
                    raise DataError(f"log {log}: frame {fr['token']} has no '{sensor}' data")
                if sensor == "lidar":
                    yield self._lidar(log, rel, fr["token"]).points
                else:
                    yield self._camera(log, sensor, rel, fr["token"]).image

        return [fr["token"] for fr in frames], [int(fr["timestamp"]) for fr in frames], decoded()

    # --- integrity / identity ---------------------------------------------------------------------------
    def verify(self, progress=None) -> list[str]:
        """Re-check every checksum; returns one line per missing or corrupt file (empty: all good)."""
        return verify_dataset(self.root, progress)

    def digest(self) -> str:
        """sha256 over manifest.json and every log's SHA256SUMS (which cover every file of the dataset)."""
        h = hashlib.sha256()
        h.update((self.root / "manifest.json").read_bytes())
        for log, entry in sorted(self.manifest.get("logs", {}).items()):
            sums = self.root / entry["sha256sums"]
            if not sums.is_file():
                raise DataError(f"log {log}: {sums} is missing; run `latentvla data verify {self.root}`")
            h.update(log.encode() + b"\0" + sums.read_bytes())
        return h.hexdigest()[:16]


def open_store(data: str | Path, verify_blobs: bool = True, cache_logs: int = 32) -> SceneStore:
    """The scene source behind ``--data``: a generated dataset directory, or ``navsim:SPLIT[,SPLIT]`` for
    OpenScene logs under $OPENSCENE_DATA_ROOT (see ``latentvla.data.navsim_source``)."""
    from latentvla.data.navsim_source import NavsimSource, is_navsim_spec

    if is_navsim_spec(data):
        return NavsimSource(str(data), verify_blobs=verify_blobs, cache_logs=min(cache_logs, 8))
    return SceneStore(data, verify_blobs=verify_blobs, cache_logs=cache_logs)


def dataset_digest(data: str | Path) -> str:
    """Identity of a dataset for cache keys (see ``SceneStore.digest``)."""
    return open_store(data, verify_blobs=False).digest()


def default_cache_dir(data: str | Path, name: str) -> Path:
    """Where a cache named ``name`` lives by default for ``--data``: next to a dataset directory, under the
    cache home for NAVSIM logs (whose tree is often read-only)."""
    from latentvla.data.navsim_source import cache_home, is_navsim_spec

    return cache_home() / name if is_navsim_spec(data) else Path(data) / name


def data_label(data: str | Path) -> str:
    """A short human name of ``--data`` for cache metadata and logs."""
    from latentvla.data.navsim_source import is_navsim_spec

    return str(data) if is_navsim_spec(data) else Path(data).name


_PROCESS_STORES: dict[str, SceneStore] = {}


def process_store(root: str | Path) -> SceneStore:
    """One checksum-verifying store per dataset and process, so pool workers parse each log once across jobs."""
    key = str(root)
    if key not in _PROCESS_STORES:
        _PROCESS_STORES[key] = open_store(root, verify_blobs=True)
    return _PROCESS_STORES[key]


def verify_dataset(root: str | Path, progress=None) -> list[str]:
    root = Path(root)
    problems: list[str] = []
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return [f"missing: {manifest_path}"]
    try:
        manifest = read_json(manifest_path)
    except ValueError as e:
        return [f"corrupt: {manifest_path} ({e})"]
    for log, entry in sorted(manifest.get("logs", {}).items()):
        sums_path = root / entry["sha256sums"]
        if not sums_path.is_file():
            problems.append(f"missing: {sums_path} (log {log})")
            if progress:
                progress(log)
            continue
        try:
            sums = parse_sha256sums(sums_path)
        except ValueError as e:
            problems.append(f"corrupt: {e}")
            continue
        for rel, digest in sorted(sums.items()):
            path = sums_path.parent / rel
            if not path.is_file():
                problems.append(f"missing: {path} (log {log})")
            elif sha256_file(path) != digest:
                problems.append(f"corrupt: {path} (log {log}, checksum mismatch)")
        if progress:
            progress(log)
    return problems
