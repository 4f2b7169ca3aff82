"""NAVSIM / OpenScene logs as a scene source: ``--data navsim:SPLIT`` anywhere a dataset directory is accepted.

Layout (as NAVSIM documents it): ``$OPENSCENE_DATA_ROOT/navsim_logs/<log dir>/<log>.pkl`` (a list of 2 Hz frame
dicts), ``$OPENSCENE_DATA_ROOT/sensor_blobs/<log dir>/...`` (JPEG cameras, ``.pcd`` LiDAR) and nuPlan maps under
``$NUPLAN_MAPS_ROOT``. ``SPLIT`` is a scene-filter name (navtrain, navtest, navmini, or one that
``latentvla data export-openscene`` wrote) or a log directory; several may be joined with commas
(``navsim:train,val``). Scenes are NAVSIM's sliding windows (4 history + 10 future frames, ``frame_interval``,
``has_route`` and the filter's ``log_names``/``tokens``), the scene token being the token of window frame 3.

Every log is converted once (allow-list unpickler) into the same per-log dict the embedded world stores, so
``SceneStore``'s decoding serves both sources. The scan (tokens per log, content digests of the pickles) is
cached under the cache home keyed by file sizes and mtimes, so a second start on navtrain costs seconds.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from latentvla.data.pcd import decode_pcd
from latentvla.data.safe_pickle import safe_load
from latentvla.data.store import DataError, SceneStore
from latentvla.map_api import MapAPI
from latentvla.runtime.io import read_json, sha256_file, write_json
from latentvla.schema import CAMERA_NAMES, DRIVING_COMMANDS, NUM_FUTURE_FRAMES, NUM_HISTORY_FRAMES, Lidar

PREFIX = "navsim:"
CAMERA_KEYS: dict[str, str] = {name: name.upper() for name in CAMERA_NAMES}  # cam_f0 <-> CAM_F0
MAP_ALIASES = {"las_vegas": "us-nv-las-vegas-strip", "boston": "us-ma-boston",
               "pittsburgh": "us-pa-pittsburgh-hazelwood", "singapore": "sg-one-north"}
# official scene filters: (log directory under navsim_logs, scene count of the filter on NAVSIM main)
OFFICIAL_SPLITS: dict[str, tuple[str, int]] = {"navtrain": ("trainval", 103288), "navtest": ("test", 12146),
                                               "navmini": ("mini", 396)}
VAL_FRACTION = 0.05  # logs held out for validation when a spec names only training splits
DEVKIT_FILTERS = "navsim/planning/script/config/common/train_test_split"
INDEX_FORMAT = 1
EXTRA = "latentvla_"  # keys the exporter adds (NAVSIM ignores unknown keys); real logs simply lack them


def is_navsim_spec(spec: str | Path) -> bool:
    return str(spec).startswith(PREFIX)


def env_root(var: str, must_contain: str, hint: str) -> Path:
    """A NAVSIM environment variable resolved to an existing directory holding ``must_contain``."""
    value = os.environ.get(var)
    if not value:
        raise DataError(f"{var} is not set: export {var}=<dir> ({hint})")
    root = Path(value).expanduser()
    if not (root / must_contain).exists():
        raise DataError(f"{var}={value} does not contain {must_contain} ({hint}); check the path")
    return root


def cache_home() -> Path:
    """Where caches of NAVSIM data live (the data tree may be read-only): $LATENTVLA_CACHE_ROOT, else
    $NAVSIM_EXP_ROOT/latentvla_cache, else ~/.cache/latentvla."""
    if os.environ.get("LATENTVLA_CACHE_ROOT"):
        return Path(os.environ["LATENTVLA_CACHE_ROOT"]).expanduser()
    if os.environ.get("NAVSIM_EXP_ROOT"):
        return Path(os.environ["NAVSIM_EXP_ROOT"]).expanduser() / "latentvla_cache"
    return Path.home() / ".cache" / "latentvla"


@dataclass
class SplitSpec:
    """One named split: which log directory, which scene filter (None: every window with a route), which role."""

    name: str
    log_dir: str
    filter_path: Path | None
    role: str  # train | val | test
    filter: dict


def _devkit_splits() -> Path | None:
    """The devkit's ``train_test_split`` config directory under $NAVSIM_DEVKIT_ROOT (None when unset)."""
    root = os.environ.get("NAVSIM_DEVKIT_ROOT")
    return Path(root).expanduser() / DEVKIT_FILTERS if root else None


def _filter_dirs(root: Path) -> list[Path]:
    devkit = _devkit_splits()
    return [root / "scene_filters"] + ([devkit / "scene_filter"] if devkit else [])


def _role(name: str) -> str:
    if "test" in name:
        return "test"
    if "val" in name and "trainval" not in name:
        return "val"
    return "train"


def resolve_split(root: Path, name: str) -> SplitSpec:
    """Find a split's log directory and scene filter (our export's ``scene_filters/``, then the devkit's)."""
    filter_path = next((d / f"{name}.yaml" for d in _filter_dirs(root) if (d / f"{name}.yaml").is_file()), None)
    flt: dict = {}
    if filter_path is not None:
        try:
            flt = yaml.safe_load(filter_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise DataError(f"scene filter {filter_path} is not valid YAML ({e})") from None
    if flt.get("max_scenes"):
        raise DataError(f"scene filter {filter_path}: max_scenes={flt['max_scenes']} is not supported; remove it "
                        f"from the filter")
    log_dir = str(flt.get("latentvla_log_dir") or "")
    devkit = _devkit_splits()
    if not log_dir and devkit is not None and (devkit / f"{name}.yaml").is_file():
        log_dir = str((yaml.safe_load((devkit / f"{name}.yaml").read_text()) or {}).get("data_split", ""))
    if not log_dir:
        log_dir = OFFICIAL_SPLITS[name][0] if name in OFFICIAL_SPLITS else name
    if not (root / "navsim_logs" / log_dir).is_dir():
        have = sorted(p.name for p in (root / "navsim_logs").iterdir() if p.is_dir())
        raise DataError(f"navsim split '{name}': {root / 'navsim_logs' / log_dir} does not exist (log directories "
                        f"present: {have or 'none'}); download the OpenScene logs of that split or pick another")
    hist, fut = int(flt.get("num_history_frames", NUM_HISTORY_FRAMES)), int(flt.get("num_future_frames",
                                                                                   NUM_FUTURE_FRAMES))
    if (hist, fut) != (NUM_HISTORY_FRAMES, NUM_FUTURE_FRAMES):
        raise DataError(f"scene filter {filter_path}: {hist} history + {fut} future frames; LatentVLA reads the "
                        f"{NUM_HISTORY_FRAMES} + {NUM_FUTURE_FRAMES} layout of navtrain/navtest (two-stage splits "
                        f"are not supported)")
    return SplitSpec(name, log_dir, filter_path, _role(name), flt)


def parse_spec(spec: str | Path) -> list[str]:
    names = [s.strip() for s in str(spec)[len(PREFIX):].split(",") if s.strip()]
    if not names:
        raise DataError(f"'{spec}' names no split: use navsim:SPLIT, e.g. navsim:navtest or navsim:navtrain")
    return names


# --- frame conversion --------------------------------------------------------------------------------------
def quaternion_matrix(q) -> np.ndarray:
    """(w, x, y, z) unit quaternion -> 3x3 rotation matrix."""
    w, x, y, z = (float(v) for v in np.asarray(q, dtype=np.float64).reshape(4))
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if n == 0 or not math.isfinite(n):
        raise ValueError(f"invalid quaternion {q}")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def quaternion_yaw(q) -> float:
    w, x, y, z = (float(v) for v in np.asarray(q, dtype=np.float64).reshape(4))
    return math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))


def command_from_vector(vec) -> str:
    v = np.asarray(vec).reshape(-1)
    if v.shape != (4,) or v.sum() != 1:
        return "unknown"
    return DRIVING_COMMANDS[int(np.argmax(v))]


def _lidar2ego(fr: dict) -> tuple[np.ndarray, np.ndarray]:
    if "lidar2ego_rotation" in fr and "lidar2ego_translation" in fr:
        return quaternion_matrix(fr["lidar2ego_rotation"]), np.asarray(fr["lidar2ego_translation"], np.float64)
    return np.eye(3), np.zeros(3)


def convert_frame(fr: dict, source: str) -> dict:
    """An OpenScene frame dict -> the embedded world's frame dict (what ``SceneStore._frame`` decodes)."""
    try:
        anns = fr["anns"]
        n = len(anns["gt_names"])
        state = np.asarray(fr["ego_dynamic_state"], dtype=np.float64).reshape(-1)
        t = np.asarray(fr["ego2global_translation"], dtype=np.float64).reshape(3)
        out = {
            "token": str(fr["token"]),
            "timestamp": int(fr["timestamp"]),
            "ego": {"pose": [float(t[0]), float(t[1]), quaternion_yaw(fr["ego2global_rotation"])],
                    "velocity": state[:2].tolist(), "acceleration": state[2:4].tolist(),
                    "command": command_from_vector(fr["driving_command"])},
            "boxes": np.asarray(anns["gt_boxes"], dtype=np.float64).reshape(n, 7),
            "names": [str(s) for s in anns["gt_names"]],
            "velocity_3d": np.asarray(anns["gt_velocity_3d"], dtype=np.float64).reshape(n, 3),
            "track_tokens": [str(s) for s in anns["track_tokens"]],
            "brake_lights": np.asarray(anns.get(EXTRA + "brake_lights", np.zeros(n, bool)), dtype=bool),
            "traffic_lights": [[str(lid), "red" if bool(red) else "green"] for lid, red in fr["traffic_lights"]],
            "route": [str(r) for r in fr["roadblock_ids"]],
            "sensors": {},
        }
        for name, key in CAMERA_KEYS.items():
            cam = (fr.get("cams") or {}).get(key)
            if cam and cam.get("data_path"):
                out["sensors"][name] = str(cam["data_path"])
        if fr.get("lidar_path"):
            out["sensors"]["lidar"] = str(fr["lidar_path"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source}: frame {fr.get('token', '?') if isinstance(fr, dict) else '?'} lacks or has a "
                        f"malformed OpenScene field ({type(e).__name__}: {e}); is this an OpenScene navsim log?") from None
    return out


def camera_specs(fr: dict) -> dict[str, dict]:
    """Per-camera calibration of a frame, extrinsics composed into the ego frame (lidar2ego @ sensor2lidar)."""
    r_le, t_le = _lidar2ego(fr)
    specs = {}
    for name, key in CAMERA_KEYS.items():
        cam = (fr.get("cams") or {}).get(key)
        if not cam:
            continue
        r_sl = np.asarray(cam["sensor2lidar_rotation"], dtype=np.float64).reshape(3, 3)
        t_sl = np.asarray(cam["sensor2lidar_translation"], dtype=np.float64).reshape(3)
        specs[name] = {"intrinsics": np.asarray(cam["cam_intrinsic"], dtype=np.float64).reshape(3, 3),
                       "sensor2ego_rotation": r_le @ r_sl, "sensor2ego_translation": r_le @ t_sl + t_le,
                       "distortion": np.asarray(cam.get("distortion", np.zeros(5)), dtype=np.float64).reshape(-1),
                       "width": int(cam.get(EXTRA + "width", 0)), "height": int(cam.get(EXTRA + "height", 0))}
    return specs


def extract_scenes(frames: list[dict], flt: dict) -> list[int]:
    """Indices of the current frame (window index 3) of NAVSIM's scene windows that pass the filter."""
    hist, fut = NUM_HISTORY_FRAMES, NUM_FUTURE_FRAMES
    interval = int(flt.get("frame_interval") or 1)
    tokens = set(flt["tokens"]) if flt.get("tokens") else None
    out = []
    for start in range(0, len(frames), interval):
        if start + hist + fut > len(frames):
            break
        cur = start + hist - 1
        if flt.get("has_route", True) and not frames[cur]["roadblock_ids"]:
            continue
        if tokens is not None and str(frames[cur]["token"]) not in tokens:
            continue
        out.append(cur)
    return out


class NavsimSource(SceneStore):
    """``SceneStore`` over OpenScene logs: same ``tokens / info / load_scene / load_agent_input / load_map`` API.

    Roles: a split whose name contains "test" serves ``test``, one with "val" serves ``val``, others ``train``;
    a spec without a val split holds out ``VAL_FRACTION`` of the training logs (at least one, chosen by a hash
    of the log name, so the choice never changes) for validation.
    """

    def __init__(self, spec: str | Path, verify_blobs: bool = True, cache_logs: int = 8, quiet: bool = True):
        self.spec = str(spec)
        root = env_root("OPENSCENE_DATA_ROOT", "navsim_logs",
                        "the OpenScene root holding navsim_logs/ and sensor_blobs/")
        self.maps_root: Path | None = None
        if os.environ.get("NUPLAN_MAPS_ROOT"):
            self.maps_root = env_root("NUPLAN_MAPS_ROOT", "nuplan-maps-v1.0.json",
                                      "the nuPlan maps directory holding nuplan-maps-v1.0.json and one folder per city")
        self.root = root
        self.splits = [resolve_split(root, name) for name in parse_spec(spec)]
        if len({s.name for s in self.splits}) != len(self.splits):
            raise DataError(f"'{spec}' names a split twice")
        self.index = self._scan(root, quiet)
        self._log_dir = {log: e["log_dir"] for log, e in self.index["logs"].items()}
        self._setup(root, self._manifest(), verify_blobs, cache_logs)

    # --- scanning ---------------------------------------------------------------------------------------
    def _scan(self, root: Path, quiet: bool) -> dict:
        from latentvla.runtime.parallel import progress_bar

        key = hashlib.sha256(f"{INDEX_FORMAT}|{root.resolve()}|{self.spec}".encode())
        for s in self.splits:
            key.update(s.filter_path.read_bytes() if s.filter_path else b"-")
        index_path = cache_home() / "navsim_index" / f"{key.hexdigest()[:16]}.json"
        old = read_json(index_path)["logs"] if index_path.is_file() else {}
        logs: dict[str, dict] = {}
        todo: list[tuple[SplitSpec, Path]] = []
        seen: set[str] = set()
        for split in self.splits:
            wanted = set(split.filter.get("log_names") or [])
            for pkl in sorted((root / "navsim_logs" / split.log_dir).glob("*.pkl")):
                if wanted and pkl.stem not in wanted:
                    continue
                if pkl.stem in seen:
                    raise DataError(f"log {pkl.stem} appears in two splits of '{self.spec}'")
                seen.add(pkl.stem)
                st = pkl.stat()
                prev = old.get(pkl.stem)
                if prev and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns and \
                        prev["split"] == split.name:
                    logs[pkl.stem] = prev
                else:
                    todo.append((split, pkl))
        with progress_bar(disable=quiet or not todo) as bar:
            task = bar.add_task(f"indexing {len(todo)} NAVSIM logs", total=len(todo), rate="")
            for split, pkl in todo:
                frames = safe_load(pkl)
                if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
                    raise DataError(f"{pkl}: expected a list of frame dicts (an OpenScene navsim log), got "
                                    f"{type(frames).__name__}")
                scenes = []
                for cur in extract_scenes(frames, split.filter):
                    scenes.append([str(frames[cur]["token"]), cur, command_from_vector(frames[cur]["driving_command"]),
                                   str(frames[cur].get(EXTRA + "family", "navsim"))])
                st = pkl.stat()
                logs[pkl.stem] = {"split": split.name, "log_dir": split.log_dir, "size": st.st_size,
                                  "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(pkl), "frames": len(frames),
                                  "scenes": scenes}
                bar.advance(task)
        index = {"format": INDEX_FORMAT, "spec": self.spec, "logs": dict(sorted(logs.items()))}
        if todo:
            write_json(index_path, index)
        return index

    def _manifest(self) -> dict:
        roles = {s.name: s.role for s in self.splits}
        log_role = {log: roles[e["split"]] for log, e in self.index["logs"].items()}
        if "val" not in roles.values():
            train = sorted((lg for lg, r in log_role.items() if r == "train"),
                           key=lambda lg: hashlib.sha256(lg.encode()).hexdigest())
            if len(train) >= 2:
                for lg in train[: max(1, round(VAL_FRACTION * len(train)))]:
                    log_role[lg] = "val"
        scenes, seen = [], set()
        for log, e in self.index["logs"].items():
            for tok, _cur, cmd, fam in e["scenes"]:
                if tok in seen:
                    raise DataError(f"scene token {tok} appears twice (log {log}); the logs overlap")
                seen.add(tok)
                scenes.append({"token": tok, "family": fam, "command": cmd, "log": log, "split": log_role[log]})
        if not scenes:
            raise DataError(f"'{self.spec}' has no scenes in {self.root / 'navsim_logs'} "
                            f"({', '.join(s.log_dir for s in self.splits)}): are the logs downloaded, and does the "
                            f"scene filter match them?")
        return {"scenes": scenes, "logs": {}}

    # --- per-log data -----------------------------------------------------------------------------------
    def _log_path(self, name: str) -> Path:
        return self.root / "navsim_logs" / self._log_dir[name] / f"{name}.pkl"

    def _log(self, name: str) -> dict:
        def load() -> dict:
            path = self._log_path(name)
            raw = safe_load(path)
            frames = [convert_frame(fr, str(path)) for fr in raw]
            entry = self.index["logs"][name]
            with_cams = next((fr for fr in raw if fr.get("cams")), raw[0])
            loc = str(raw[0].get("map_location", ""))
            return {"frames": frames, "log_name": name, "map_name": MAP_ALIASES.get(loc, loc),
                    "cameras": camera_specs(with_cams), "_lidar2ego": _lidar2ego(raw[0]), "_sums": {},
                    "scenes": [{"token": t, "frame_index": c, "command": cmd} for t, c, cmd, _ in entry["scenes"]],
                    "_frame_of": {t: c for t, c, _, _ in entry["scenes"]}}

        return self._logs.get_or(name, load)

    def _blob_path(self, log: str, rel: str) -> Path:
        return self.root / "sensor_blobs" / self._log_dir[log] / rel

    def _blob(self, log: str, rel: str, token: str) -> bytes:
        path = self._blob_path(log, rel)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"scene {token}: sensor file {path} is missing (partial download? run "
                            f"`latentvla data doctor --data {self.spec}`)") from None

    def _lidar(self, log: str, rel: str, token: str) -> Lidar:
        fields, pts = decode_pcd(self._blob(log, rel, token), str(self._blob_path(log, rel)))
        if fields[:4] != ("x", "y", "z", "intensity"):
            raise DataError(f"scene {token}: {self._blob_path(log, rel)} has fields {fields}; expected x y z "
                            f"intensity [ring ...] as nuPlan's merged point cloud")
        ring = pts[:, 4:5] if len(fields) > 4 else np.zeros((len(pts), 1), np.float32)
        rot, trans = self._log(log)["_lidar2ego"]
        xyz = pts[:, :3].astype(np.float64) @ rot.T + trans
        return Lidar(np.concatenate([xyz.astype(np.float32), pts[:, 3:4], ring], axis=1))

    def load_map(self, log: str) -> MapAPI:
        name = self._log(log)["map_name"]

        def load() -> MapAPI:
            if self.maps_root is None:
                raise DataError("NUPLAN_MAPS_ROOT is not set: export NUPLAN_MAPS_ROOT=<dir with "
                                "nuplan-maps-v1.0.json> (maps are needed for scoring and map-based agents)")
            from latentvla.data.nuplan_map import read_nuplan_map

            return read_nuplan_map(self.maps_root, name)

        return self._maps.get_or(name, load)

    def load_sim_state(self, token: str) -> dict:
        raise DataError(f"scene {token}: NAVSIM logs carry no simulator state; closed-loop restarts need the "
                        f"embedded world (`latentvla world generate`)")

    def load_scene(self, token: str, sensors: str = "none", with_sim_state: bool = True):
        return super().load_scene(token, sensors, with_sim_state=False)

    # --- integrity / identity ---------------------------------------------------------------------------
    def digest(self) -> str:
        h = hashlib.sha256(self.spec.encode())
        for s in self.splits:
            h.update(s.name.encode() + b"\0" + (s.filter_path.read_bytes() if s.filter_path else b"-"))
        for log, e in self.index["logs"].items():
            h.update(f"{log}\0{e['sha256']}\0".encode())
        return h.hexdigest()[:16]

    def missing_sensor_files(self, progress=None) -> list[str]:
        """One line per sensor file a frame references but the disk lacks (the doctor's check)."""
        problems = []
        for log in self.index["logs"]:
            for fr in self._log(log)["frames"]:
                for rel in fr["sensors"].values():
                    if not self._blob_path(log, rel).is_file():
                        problems.append(f"missing: {self._blob_path(log, rel)} (log {log}, frame {fr['token']})")
            if progress:
                progress(log)
        return problems

    def verify(self, progress=None) -> list[str]:
        return self.missing_sensor_files(progress)
