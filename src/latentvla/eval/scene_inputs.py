"""Everything the scorer needs for one scene, detached from the dataset: NAVSIM's metric-cache entry.

``SceneInputs`` is built once per scene from a privileged ``Scene`` (``scene_inputs``) and then lives in the metric
cache and in scoring-case JSON files (``to_dict`` / ``from_dict`` round-trip exactly: floats go through JSON's
shortest repr). It holds:

- the initial ego state (rear axle, global; steering and yaw rate 0 as the official simulation starts);
- the raw ground-truth boxes of frames t = 0 ... 5 s at 2 Hz (``sightings``), from which the v1 (0-5 s) and v2
  (0-4 s) 10 Hz observations are interpolated;
- the drivable map within 100 m, the route and its centerline, the on-route lane connectors with their red-light
  state per 2 Hz frame (v2 TLC);
- the logged human future (log replay, v2 human filter) and past (v2 history comfort);
- the PDM-Closed reference plan (EP normalisation), filled in when the metric cache is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import shapely

from latentvla.eval.observation import Tracks, interpolate_tracks
from latentvla.eval.pdm_metrics import DrivableMap
from latentvla.eval.state import StateIndex
from latentvla.schema import EGO, AgentInput, EgoStatus, Scene, global_to_local, local_to_global

V1_FUTURE_FRAMES = 10  # 5 s of observation (v1.1 metric cache)
V2_FUTURE_FRAMES = 8  # 4 s (v2 metric cache)
REFERENCE_INTERVAL = 0.1  # PDM-Closed plans are stored at 10 Hz


@dataclass
class Sighting:
    """Boxes of one 2 Hz frame in the global frame: rows (x, y, heading, vx, vy, length, width)."""

    time_s: float
    tokens: list[str]
    names: list[str]
    boxes: np.ndarray  # (n, 7)

    def to_dict(self) -> dict:
        return {"time_s": self.time_s, "tokens": self.tokens, "names": self.names, "boxes": self.boxes.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Sighting:
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 7)
        if not (len(d["tokens"]) == len(d["names"]) == len(boxes)):
            raise ValueError(f"sighting at t={d['time_s']}: tokens, names and boxes differ in length")
        return cls(float(d["time_s"]), list(d["tokens"]), list(d["names"]), boxes)


def tracks_from_sightings(sightings: list[Sighting], future_frames: int) -> Tracks:
    """10 Hz tracks over ``future_frames`` * 0.5 s from the 2 Hz sightings (official interpolation quirks)."""
    by_token: dict[str, list] = {}
    for s in sightings:
        if s.time_s > future_frames * 0.5 + 1e-9:
            continue
        for tok, name, row in zip(s.tokens, s.names, s.boxes):
            by_token.setdefault(tok, []).append((s.time_s, row, name))
    return interpolate_tracks(by_token, steps=future_frames * 5 + 1)


@dataclass
class RedLights:
    """On-route lane connectors and whether each is red at each 2 Hz frame t = 0, 0.5, ... (NAVSIM v2 TLC)."""

    lane_ids: list[str]
    polygons: list[shapely.Geometry]
    red: np.ndarray  # (K, F) bool

    def at_steps(self, num_steps: int = 41, dt: float = 0.1) -> np.ndarray:
        """(K, num_steps) red flags held piecewise-constant from the 2 Hz frames."""
        if not len(self.lane_ids):
            return np.zeros((0, num_steps), dtype=bool)
        frame = np.minimum(np.floor(np.arange(num_steps) * dt / 0.5 + 1e-9).astype(int), self.red.shape[1] - 1)
        return self.red[:, frame]


@dataclass
class SceneInputs:
    token: str
    log_name: str
    family: str
    t0_us: int
    initial_state: np.ndarray  # (11,) StateIndex order
    sightings: list[Sighting]
    drivable: DrivableMap
    route_roadblocks: list[str]
    centerline: np.ndarray  # (N, 2) route centerline from the ego's lane
    speed_limit: float  # m/s of the starting lane (PDM-Closed's IDM target; NaN: unknown -> 15 m/s fallback)
    red_lights: RedLights
    human_poses: np.ndarray | None  # (8, 3) logged future in the current rear-axle frame, 0.5 s apart
    past_states: np.ndarray  # (4, 11) logged ego states at -1.5, -1.0, -0.5, 0 s (global)
    past_times_s: np.ndarray  # (4,)
    reference_poses: np.ndarray | None = None  # (M, 3) PDM-Closed plan, current frame, REFERENCE_INTERVAL apart
    previous_token: str | None = None  # the same log's scene starting 0.5 s earlier (v2 extended comfort)
    driving_commands: np.ndarray | None = None  # (4, 4) one-hot commands of the history frames

    @cached_property
    def tracks(self) -> Tracks:
        """v1.1 observation: 51 steps over 0-5 s."""
        return tracks_from_sightings(self.sightings, V1_FUTURE_FRAMES)

    @cached_property
    def tracks_v2(self) -> Tracks:
        """v2 observation: 41 steps over 0-4 s."""
        return tracks_from_sightings(self.sightings, V2_FUTURE_FRAMES)

    def transformed(self, rotation: float, offset: np.ndarray) -> SceneInputs:
        """The same scene rotated by ``rotation`` about the origin, then shifted by ``offset`` (global frame).

        Every score must be invariant to this (tested); relative plans (human, reference) are unchanged.
        """
        c, s = np.cos(rotation), np.sin(rotation)
        rot = np.array([[c, -s], [s, c]])
        off = np.asarray(offset, dtype=np.float64)

        def xy(a: np.ndarray) -> np.ndarray:
            return a @ rot.T + off

        def state(a: np.ndarray) -> np.ndarray:  # positions and heading move; ego-frame velocities do not
            a = a.copy()
            a[..., :2] = xy(a[..., :2])
            a[..., 2] = (a[..., 2] + rotation + np.pi) % (2 * np.pi) - np.pi
            return a

        def geom(g: shapely.Geometry) -> shapely.Geometry:
            return shapely.transform(g, xy)

        sightings = []
        for sg in self.sightings:
            b = sg.boxes.copy()
            b[:, :3] = state(b[:, :3])
            b[:, 3:5] = b[:, 3:5] @ rot.T  # global velocities rotate
            sightings.append(Sighting(sg.time_s, list(sg.tokens), list(sg.names), b))
        dm = self.drivable
        return SceneInputs(
            token=self.token, log_name=self.log_name, family=self.family, t0_us=self.t0_us,
            initial_state=state(self.initial_state), sightings=sightings,
            drivable=DrivableMap([geom(p) for p in dm.polygons], list(dm.kinds), list(dm.ids), dm.on_route.copy()),
            route_roadblocks=list(self.route_roadblocks), centerline=xy(self.centerline),
            speed_limit=self.speed_limit,
            red_lights=RedLights(list(self.red_lights.lane_ids), [geom(p) for p in self.red_lights.polygons],
                                 self.red_lights.red.copy()),
            human_poses=None if self.human_poses is None else self.human_poses.copy(), past_states=state(self.past_states),
            past_times_s=self.past_times_s.copy(),
            reference_poses=None if self.reference_poses is None else self.reference_poses.copy(),
            previous_token=self.previous_token, driving_commands=self.driving_commands,
        )

    def agent_input(self) -> AgentInput:
        """What a sensor-free agent sees (ego history relative to the current pose), straight from the cache:
        equal to ``SceneStore.load_agent_input(token, sensors=False)`` without reading the logs."""
        if self.driving_commands is None:
            raise ValueError(f"scene {self.token}: the cached inputs hold no driving commands")
        origin = self.initial_state[:3]
        rel = global_to_local(self.past_states[:, :3], origin).astype(np.float32)
        statuses = [EgoStatus(rel[k], self.past_states[k, 3:5].astype(np.float32),
                              self.past_states[k, 5:7].astype(np.float32), self.driving_commands[k])
                    for k in range(len(rel))]
        return AgentInput(statuses, [{} for _ in statuses], [None for _ in statuses], self.token)

    # --- serialisation ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "token": self.token, "log_name": self.log_name, "family": self.family, "t0_us": self.t0_us,
            "initial_state": self.initial_state.tolist(),
            "sightings": [s.to_dict() for s in self.sightings],
            "drivable": self.drivable.to_dict(),
            "route_roadblocks": list(self.route_roadblocks),
            "centerline": self.centerline.tolist(),
            "speed_limit": None if not np.isfinite(self.speed_limit) else self.speed_limit,
            "red_lights": {"lane_ids": self.red_lights.lane_ids,
                           "polygons": [geometry_to_list(p) for p in self.red_lights.polygons],
                           "red": self.red_lights.red.astype(int).tolist()},
            "human_poses": None if self.human_poses is None else self.human_poses.tolist(),
            "past_states": self.past_states.tolist(),
            "past_times_s": self.past_times_s.tolist(),
            "reference_poses": None if self.reference_poses is None else self.reference_poses.tolist(),
            "previous_token": self.previous_token,
            "driving_commands": None if self.driving_commands is None else self.driving_commands.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, drivable: DrivableMap | None = None) -> SceneInputs:
        """``drivable`` replaces ``d["drivable"]`` (the metric cache stores a log's polygons once). Required keys:
        token, initial_state, sightings, drivable, centerline; the others are optional (hand-made cases)."""
        rl = d.get("red_lights") or {"lane_ids": [], "polygons": [], "red": []}
        ids = list(rl["lane_ids"])
        red = np.asarray(rl["red"], dtype=bool).reshape(len(ids), -1) if ids else np.zeros((0, 1), dtype=bool)
        ref = d.get("reference_poses")
        init = np.asarray(d["initial_state"], dtype=np.float64)
        if init.shape != (len(StateIndex),):
            raise ValueError(f"initial_state must have {len(StateIndex)} entries (StateIndex order), got {init.shape}")
        past = d.get("past_states")
        human = d.get("human_poses")
        cmds = d.get("driving_commands")
        return cls(
            token=d["token"], log_name=d.get("log_name", ""), family=d.get("family", ""), t0_us=int(d.get("t0_us", 0)),
            initial_state=init,
            sightings=[Sighting.from_dict(s) for s in d["sightings"]],
            drivable=drivable if drivable is not None else DrivableMap.from_dict(d["drivable"]),
            route_roadblocks=list(d.get("route_roadblocks", [])),
            centerline=np.asarray(d["centerline"], dtype=np.float64).reshape(-1, 2),
            speed_limit=float("nan") if d.get("speed_limit") is None else float(d["speed_limit"]),
            red_lights=RedLights(ids, [geometry_from_list(p) for p in rl["polygons"]], red),
            human_poses=None if human is None else np.asarray(human, dtype=np.float64).reshape(-1, 3),
            past_states=(init[None].copy() if past is None
                         else np.asarray(past, dtype=np.float64).reshape(-1, len(StateIndex))),
            past_times_s=np.asarray(d.get("past_times_s", [0.0] if past is None else None), dtype=np.float64),
            reference_poses=None if ref is None else np.asarray(ref, dtype=np.float64).reshape(-1, 3),
            previous_token=d.get("previous_token"),
            driving_commands=None if cmds is None else np.asarray(cmds, dtype=np.float32),
        )


def geometry_to_list(geom: shapely.Geometry) -> list:
    """Polygon / MultiPolygon -> [[exterior, *holes], ...] with rings as [[x, y], ...] (exact floats)."""
    parts = geom.geoms if hasattr(geom, "geoms") else [geom]
    out = []
    for p in parts:
        if p.is_empty or p.geom_type != "Polygon":
            continue
        out.append([np.asarray(p.exterior.coords).tolist()] + [np.asarray(r.coords).tolist() for r in p.interiors])
    return out


def geometry_from_list(parts: list) -> shapely.Geometry:
    polys = [shapely.Polygon(rings[0], rings[1:]) for rings in parts]
    if len(polys) == 1:
        return polys[0]
    return shapely.MultiPolygon(polys)


def ego_state_array(pose: np.ndarray, velocity: np.ndarray, acceleration: np.ndarray) -> np.ndarray:
    """(11,) state from a logged ego status: steering, yaw rate and angular acceleration 0 (official start)."""
    s = np.zeros(len(StateIndex))
    s[[StateIndex.X, StateIndex.Y, StateIndex.HEADING]] = pose
    s[[StateIndex.VELOCITY_X, StateIndex.VELOCITY_Y]] = velocity
    s[[StateIndex.ACCELERATION_X, StateIndex.ACCELERATION_Y]] = acceleration
    return s


def route_lanes(scene_map, route: list[str], center: np.ndarray, token: str) -> list[str]:
    """The on-route lane sequence starting at the on-route lane closest to ``center``."""
    on_route = [lid for lid, ln in scene_map.lanes.items() if ln.roadblock_id in route]
    if not on_route:
        raise ValueError(f"scene {token}: no map lane lies on the route {route[:4]}")
    start = min(on_route, key=lambda lid: float(np.min(np.hypot(*(scene_map.lanes[lid].centerline - center).T))))
    return scene_map.route_lane_sequence(start, route)


def scene_sightings(scene: Scene, future_frames: int = V1_FUTURE_FRAMES) -> list[Sighting]:
    out = []
    cur = scene.current_index
    for k in range(future_frames + 1):
        frame = scene.frames[cur + k]
        ann = frame.annotations
        ego = frame.ego_status.ego_pose
        if len(ann):
            poses = local_to_global(ann.boxes[:, [0, 1, 6]], ego)
            c, s = np.cos(ego[2]), np.sin(ego[2])
            vx = c * ann.velocity_3d[:, 0] - s * ann.velocity_3d[:, 1]
            vy = s * ann.velocity_3d[:, 0] + c * ann.velocity_3d[:, 1]
            boxes = np.column_stack([poses, vx, vy, ann.boxes[:, 3], ann.boxes[:, 4]])
        else:
            boxes = np.zeros((0, 7))
        out.append(Sighting(k * 0.5, list(ann.track_tokens), list(ann.names), boxes))
    return out


def scene_inputs(scene: Scene, previous_token: str | None = None) -> SceneInputs:
    """Build the scorer's inputs from a privileged scene (no reference plan yet: see ``reference.py``)."""
    cur = scene.current_frame
    es = cur.ego_status
    token = scene.metadata.scene_token
    init = ego_state_array(es.ego_pose, es.ego_velocity, es.ego_acceleration)
    h = es.ego_pose[2]
    center = es.ego_pose[:2] + EGO.rear_axle_to_center * np.array([np.cos(h), np.sin(h)])
    route = list(cur.roadblock_ids)
    m = scene.map_api
    lanes = route_lanes(m, route, center, token)
    centerline = np.concatenate([m.lanes[lid].centerline for lid in lanes])
    route_set = set(route)
    connectors = sorted(lid for lid, ln in m.lanes.items() if ln.is_connector and ln.roadblock_id in route_set)
    ci = scene.current_index
    future = scene.frames[ci: ci + V1_FUTURE_FRAMES + 1]
    red = np.zeros((len(connectors), len(future)), dtype=bool)
    for f, frame in enumerate(future):
        reds = {tl.lane_id for tl in frame.traffic_lights if tl.is_red}
        red[:, f] = [lid in reds for lid in connectors]
    past = scene.frames[: ci + 1]
    past_states = np.stack([ego_state_array(f.ego_status.ego_pose, f.ego_status.ego_velocity,
                                            f.ego_status.ego_acceleration) for f in past])
    past_times = np.array([(f.timestamp - cur.timestamp) * 1e-6 for f in past])
    return SceneInputs(
        token=token, log_name=scene.metadata.log_name, family=scene.metadata.family, t0_us=int(cur.timestamp),
        initial_state=init, sightings=scene_sightings(scene), drivable=DrivableMap.from_map(m, center, route),
        route_roadblocks=route, centerline=centerline, speed_limit=float(m.lanes[lanes[0]].speed_limit),
        red_lights=RedLights(connectors, [m.lanes[lid].polygon for lid in connectors], red),
        human_poses=scene._relative_poses(range(ci + 1, ci + 9)),
        past_states=past_states, past_times_s=past_times, previous_token=previous_token,
        driving_commands=np.stack([np.asarray(f.ego_status.driving_command, dtype=np.float32) for f in past]),
    )
