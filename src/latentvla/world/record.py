"""Simulate one log and record it as NAVSIM does: 2 Hz frames (ego, boxes, lights, route, sensors) plus, per frame,
the simulator state that restarts the world there. Logs whose expert would collide or leave the drivable area are
re-drawn (deterministically) so the "human" trajectories are safe by construction; tests re-check it.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from latentvla.runtime.io import dumps_json, npz_bytes
from latentvla.schema import wrap_angle
from latentvla.world import expert, families
from latentvla.world.configuration import WorldConfig
from latentvla.world.render.camera import prepare_scene, render_camera
from latentvla.world.render.lidar import cast_lidar
from latentvla.world.scene_render import ground_layers, render_scene
from latentvla.world.sensors import SensorConfig, make_rig
from latentvla.world.sim import DT, Simulator

FORMAT_VERSION = 1
STEPS_PER_FRAME = 5  # 10 Hz simulation, 2 Hz frames
BOX_NAME = {"vehicle": "vehicle", "pedestrian": "pedestrian", "bicycle": "bicycle",
            "traffic_cone": "traffic_cone", "barrier": "barrier"}


class UnsafeLogError(RuntimeError):
    """No safe draw of a log within ``max_attempts``."""


@dataclass
class LogPlan:
    index: int
    name: str
    family: str
    split: str
    frames: int
    unknown_command: bool


@dataclass
class RecordedLog:
    meta: dict  # log.json content
    map_json: dict
    sim_states: bytes  # gzip JSON, one snapshot per frame
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> sensor blob


def token(*parts: object) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:16]


def boxes_for_render(sim: Simulator) -> list[dict]:
    out = []
    for a in sim.agents[1:]:
        if a.active:
            x, y, h = sim.pose(a)
            out.append({"x": x, "y": y, "heading": h, "length": a.length, "width": a.width, "height": a.height,
                        "kind": a.kind, "color": a.color, "brake_on": a.brake_on and a.kind == "vehicle"})
    return out


def observe(sim: Simulator, log_name: str, radius: float) -> dict:
    """The frame's annotations and ego state (NAVSIM fields), ego-frame boxes."""
    ego = sim.ego
    rear = sim.ego_rear_axle()
    kappa = float(sim.path(ego).line.curvature_at(ego.s))
    c, s = np.cos(rear[2]), np.sin(rear[2])
    boxes, names, vel, tracks, brakes = [], [], [], [], []
    for a in sim.agents[1:]:
        if not a.active or a.kind not in BOX_NAME:
            continue
        x, y, h = sim.pose(a)
        dx, dy = x - rear[0], y - rear[1]
        if np.hypot(dx, dy) > radius:
            continue
        lx, ly = c * dx + s * dy, -s * dx + c * dy
        rel_h = float(wrap_angle(h - rear[2]))
        boxes.append([lx, ly, a.height / 2, a.length, a.width, a.height, rel_h])
        vel.append([a.v * np.cos(rel_h), a.v * np.sin(rel_h), 0.0])
        names.append(BOX_NAME[a.kind])
        tracks.append(token(log_name, a.id))
        brakes.append(bool(a.brake_on and a.kind == "vehicle"))
    lights = sorted(
        (lid, sim.light(lane.traffic_light_id)) for lid, lane in sim.map.lanes.items() if lane.traffic_light_id
    )
    return {
        "ego": {"pose": rear.tolist(), "velocity": [ego.v, 0.0], "acceleration": [ego.a, ego.v ** 2 * kappa],
                "command": expert.driving_command(sim)},
        "boxes": boxes, "names": names, "velocity_3d": vel, "track_tokens": tracks, "brake_lights": brakes,
        "traffic_lights": [list(x) for x in lights], "route": list(sim.route),
    }


def encode_image(img: np.ndarray, sensors: SensorConfig) -> bytes:
    """An RGB image as the dataset stores it (PNG or JPEG at the configured quality)."""
    bgr = np.ascontiguousarray(img[..., ::-1])
    if sensors.image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, sensors.jpeg_quality])
    if not ok:
        raise RuntimeError("image encoding failed")
    return buf.tobytes()


def _simulate(plan: LogPlan, cfg: WorldConfig, attempt: int) -> tuple[families.Setup, list, list] | None:
    """One draw: returns (setup, per-frame snapshots, per-frame observations + render inputs) or None if unsafe."""
    rng = np.random.default_rng([cfg.seed, plan.index, attempt])
    duration = cfg.warmup_seconds + plan.frames * 0.5 + 1.0
    setup = families.build(plan.family, rng, f"map-{plan.name}", duration)
    setup.state["info"].update(unknown_command=plan.unknown_command, seed=cfg.seed, log=plan.name,
                               map_name=setup.map.name, attempt=attempt)
    sim = Simulator(setup.map, setup.state)
    for _ in range(int(round(cfg.warmup_seconds / DT))):
        sim.step()
        if sim.violations():
            return None
    snapshots, records = [], []
    groups = sorted({ln.traffic_light_id for ln in setup.map.lanes.values() if ln.traffic_light_id})
    for f in range(plan.frames):
        snapshots.append(sim.snapshot())
        records.append((observe(sim, plan.name, cfg.annotation_radius), boxes_for_render(sim),
                        {g: sim.light(g) for g in groups}, sim.ego_rear_axle()))
        if f == plan.frames - 1:
            break
        for _ in range(STEPS_PER_FRAME):
            sim.step()
            if sim.violations():
                return None
    return setup, snapshots, records


def record_log(plan: LogPlan, cfg: WorldConfig) -> RecordedLog:
    """Draw, simulate, render and package one log (pure function of the plan and config)."""
    for attempt in range(cfg.max_attempts):
        result = _simulate(plan, cfg, attempt)
        if result is not None:
            break
    else:
        raise UnsafeLogError(f"log {plan.name} ({plan.family}): no safe draw in {cfg.max_attempts} attempts")
    setup, snapshots, records = result
    map_json = setup.map.to_dict()
    layers = ground_layers(setup.map)
    rig = make_rig(cfg.sensors)
    props = setup.state.get("props", {})
    frames, files = [], {}
    t0 = 1_600_000_000_000_000 + plan.index * 100_000_000
    for f, (obs, boxes, lights, rear) in enumerate(records):
        obs["token"] = token(cfg.seed, plan.name, f)
        obs["timestamp"] = t0 + f * 500_000
        scene = render_scene(layers, boxes, props, lambda g, lights=lights: lights.get(g, "green"), rear,
                             cfg.sensors.render_range)
        prepared = prepare_scene(scene)
        sensors = {}
        for name, cam in rig.items():
            rel = f"sensors/{f:03d}/{name}.{cfg.sensors.image_format}"
            files[rel] = encode_image(render_camera(cam, prepared, cfg.sensors.render_range), cfg.sensors)
            sensors[name] = rel
        rel = f"sensors/{f:03d}/lidar.npz"
        files[rel] = npz_bytes({"points": cast_lidar(scene, cfg.sensors)})
        sensors["lidar"] = rel
        obs["sensors"] = sensors
        frames.append(obs)
    scenes = []
    for w in range(0, plan.frames - 13, cfg.stride):
        cur = w + 3
        scenes.append({"token": frames[cur]["token"], "frame_index": cur, "command": frames[cur]["ego"]["command"]})
    meta = {
        "format_version": FORMAT_VERSION, "log_name": plan.name, "map_name": setup.map.name, "family": plan.family,
        "split": plan.split, "seed": cfg.seed, "attempt": attempt, "params": setup.params, "frames": frames,
        "scenes": scenes,
        "cameras": {n: {"intrinsics": c.intrinsics.tolist(), "sensor2ego_rotation": c.sensor2ego_rotation.tolist(),
                        "sensor2ego_translation": c.sensor2ego_translation.tolist(), "width": c.width,
                        "height": c.height} for n, c in rig.items()},
    }
    sim_states = gzip.compress(dumps_json({"frames": snapshots}).encode(), compresslevel=6, mtime=0)
    return RecordedLog(meta, map_json, sim_states, files)
