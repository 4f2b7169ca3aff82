"""Export an embedded-world dataset in the real OpenScene / nuPlan formats (``latentvla data export-openscene``).

Writes ``ROOT/navsim_logs/<split>/<log>.pkl`` (a list of OpenScene frame dicts), ``ROOT/sensor_blobs/<split>/<log>/
CAM_*/<frame>.jpg`` and ``MergedPointCloud/<frame>.pcd``, NAVSIM scene filters ``ROOT/scene_filters/<split>.yaml``
and nuPlan GPKG maps under ``ROOT/maps`` (so ``OPENSCENE_DATA_ROOT=ROOT NUPLAN_MAPS_ROOT=ROOT/maps``). Reading the
export back with ``--data navsim:<split>`` gives the same scene tokens and the same scenes up to float tolerance,
JPEG compression of the images and the map's integer FIDs; it is how the NAVSIM reader is tested without the
real data, and a way to hand world data to NAVSIM tooling.

The LiDAR is written in a LiDAR frame ``LIDAR2EGO_TRANSLATION`` above/ahead of the rear axle (as on the nuPlan
vehicle) so that readers must apply ``lidar2ego``; cameras get ``sensor2lidar`` extrinsics accordingly. Keys
prefixed ``latentvla_`` (family, brake lights, image size) are extras NAVSIM ignores. Logs are written sensor
files first and the pickle last (atomically), so an interrupted export resumes at the first unfinished log.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from latentvla.data.navsim_source import CAMERA_KEYS, EXTRA
from latentvla.data.pcd import encode_pcd
from latentvla.data.store import DataError, SceneStore, process_store
from latentvla.runtime.io import atomic_write_bytes, atomic_write_text, load_npz
from latentvla.runtime.parallel import parallel_map, progress_bar
from latentvla.schema import command_one_hot

LIDAR2EGO_TRANSLATION = np.array([1.0, 0.0, 1.8])  # nuPlan-like roof LiDAR, identity rotation
MAP_VERSION = "9.12.1817"


@dataclass
class _LogJob:
    data: str
    out: str
    log: str
    split: str
    jpeg_quality: int
    ids: dict[str, str]  # map ids -> nuPlan FIDs (maps are written by the driver: one index file, no races)


def _sha(*parts: object) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _jpeg(png_or_jpg: bytes, quality: int, source: str) -> bytes:
    if png_or_jpg[:3] == b"\xff\xd8\xff":
        return png_or_jpg
    img = cv2.imdecode(np.frombuffer(png_or_jpg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{source}: image cannot be decoded")
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid image
        raise DataError(f"{source}: JPEG encoding failed")
    return buf.tobytes()


def _frame_dict(log: str, meta: dict, k: int, ids: dict[str, str], sensors: dict) -> dict:
    fr = meta["frames"][k]
    e = fr["ego"]
    x, y, h = (float(v) for v in e["pose"])
    n = len(fr["names"])
    boxes = np.asarray(fr["boxes"], dtype=np.float64).reshape(n, 7)
    out = {
        "token": fr["token"], "frame_idx": k, "timestamp": int(fr["timestamp"]), "log_name": log,
        "log_token": _sha("log", log), "scene_name": log, "scene_token": _sha("scene", log),
        "map_location": meta["map_name"], "vehicle_name": "latentvla-world",
        "ego2global_translation": np.array([x, y, 0.0]),
        "ego2global_rotation": np.array([np.cos(h / 2), 0.0, 0.0, np.sin(h / 2)]),
        "ego_dynamic_state": np.array([*e["velocity"][:2], *e["acceleration"][:2]], dtype=np.float64),
        "driving_command": command_one_hot(e["command"]),
        "roadblock_ids": [ids.get(r, r) for r in fr["route"]],
        "traffic_lights": [(ids.get(lid, lid), state == "red") for lid, state in fr["traffic_lights"]],
        "anns": {"gt_boxes": boxes, "gt_names": np.array(fr["names"], dtype=object).astype(str),
                 "gt_velocity_3d": np.asarray(fr["velocity_3d"], dtype=np.float64).reshape(n, 3),
                 "instance_tokens": [_sha("instance", fr["token"], t) for t in fr["track_tokens"]],
                 "track_tokens": list(fr["track_tokens"]),
                 EXTRA + "brake_lights": np.asarray(fr["brake_lights"], dtype=bool)},
        "cams": {CAMERA_KEYS[name]: cam for name, cam in sensors["cams"].items()},
        "lidar_path": sensors.get("lidar"),
        "lidar2ego_translation": LIDAR2EGO_TRANSLATION.copy(),
        "lidar2ego_rotation": np.array([1.0, 0.0, 0.0, 0.0]),
        EXTRA + "family": meta["family"],
    }
    return out


def _export_log(job: _LogJob) -> tuple[str, list[str]]:
    """Write one log's sensor files, then its pickle; returns (log, its scene tokens)."""
    store = process_store(job.data)  # one checksum-verifying store per process, not one per log
    out = Path(job.out)
    meta = store._log(job.log)
    tokens = [sc["token"] for sc in meta["scenes"]]
    pkl = out / "navsim_logs" / job.split / f"{job.log}.pkl"
    if pkl.is_file():
        return job.log, tokens
    ids = job.ids
    blobs = out / "sensor_blobs" / job.split
    frames = []
    for k, fr in enumerate(meta["frames"]):
        sensors: dict = {"cams": {}}
        for name, rel in sorted(fr["sensors"].items()):
            data = store._blob(job.log, rel, fr["token"])
            if name == "lidar":
                pts = load_npz(data)["points"].astype(np.float64)
                ring = pts[:, 4] if pts.shape[1] > 4 else np.zeros(len(pts))
                cloud = np.column_stack([pts[:, :3] - LIDAR2EGO_TRANSLATION, pts[:, 3], ring, np.zeros(len(pts))])
                path = f"{job.log}/MergedPointCloud/{fr['token']}.pcd"
                atomic_write_bytes(blobs / path, encode_pcd(cloud))
                sensors["lidar"] = path
                continue
            spec = meta["cameras"][name]
            path = f"{job.log}/{CAMERA_KEYS[name]}/{fr['token']}.jpg"
            atomic_write_bytes(blobs / path, _jpeg(data, job.jpeg_quality, f"{store.root / 'logs' / job.log / rel}"))
            sensors["cams"][name] = {
                "data_path": path,
                "sensor2lidar_rotation": np.asarray(spec["sensor2ego_rotation"], dtype=np.float64),
                "sensor2lidar_translation": np.asarray(spec["sensor2ego_translation"], np.float64) - LIDAR2EGO_TRANSLATION,
                "cam_intrinsic": np.asarray(spec["intrinsics"], dtype=np.float64),
                "distortion": np.zeros(5),
                EXTRA + "width": int(spec["width"]), EXTRA + "height": int(spec["height"]),
            }
        frames.append(_frame_dict(job.log, meta, k, ids, sensors))
    atomic_write_bytes(pkl, pickle.dumps(frames, protocol=4))
    return job.log, tokens


def scene_filter_yaml(name: str, logs: list[str], tokens: list[str]) -> str:
    """A NAVSIM ``SceneFilter`` config (the format of navsim's ``train_test_split/scene_filter/*.yaml``)."""
    body = {"_target_": "navsim.common.dataclasses.SceneFilter", "_convert_": "all", "num_history_frames": 4,
            "num_future_frames": 10, "frame_interval": 1, "has_route": True, "max_scenes": None,
            "log_names": list(logs), "tokens": list(tokens)}
    return f"# scene filter '{name}' written by latentvla data export-openscene\n" + yaml.safe_dump(body, sort_keys=False)


def export_openscene(data: str | Path, out: str | Path, jpeg_quality: int = 95, workers: int = 1,
                     quiet: bool = False) -> dict:
    """Export every log of a generated dataset; returns {split: scene count}. Resumes an interrupted export."""
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    from latentvla.data.nuplan_map import write_nuplan_map

    store = SceneStore(data, verify_blobs=True)
    out = Path(out)
    jobs = []
    for split in ("train", "val", "test"):
        for log in store.tokens_by_log(split):
            ids = write_nuplan_map(store.load_map(log), out / "maps", store._log(log)["map_name"], MAP_VERSION)
            jobs.append(_LogJob(str(data), str(out), log, split, jpeg_quality, ids))
    done: dict[str, list[str]] = {}
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("exporting logs to OpenScene format", total=len(jobs), rate="")
        for log, tokens in parallel_map(_export_log, jobs, workers=workers):
            done[log] = tokens
            bar.advance(task)
    counts = {}
    for split in ("train", "val", "test"):
        logs = [j.log for j in jobs if j.split == split]
        tokens = [t for lg in logs for t in done[lg]]
        if logs:
            atomic_write_text(out / "scene_filters" / f"{split}.yaml", scene_filter_yaml(split, logs, tokens))
            counts[split] = len(tokens)
    return counts
