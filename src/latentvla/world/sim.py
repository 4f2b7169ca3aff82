"""The embedded world's 10 Hz traffic simulator.

Vehicles, cyclists and the expert ego follow lane paths with IDM longitudinal control, stop at red lights, yield
on permissive left turns and for pedestrians in their corridor, and run scripted intents (hard braking, cut-ins,
jaywalking) that scenario families set. All state is plain data: ``snapshot()`` at any step and ``Simulator(map,
snapshot)`` continues bit-for-bit, which is how a scene restarts for closed-loop evaluation.
"""

from __future__ import annotations

import copy

import numpy as np
import shapely

from latentvla.map_api import MapAPI
from latentvla.schema import EGO
from latentvla.world import expert
from latentvla.world.agents import Agent, Path, build_path, idm_accel
from latentvla.world.geometry import Polyline, box_corners, boxes_overlap, wrap

DT = 0.1
LAT_ACCEL = 2.0  # m/s^2 comfortable lateral acceleration that limits speed in curves
LEFT_TURN_GAP_S = 6.0  # a permissive left turn needs the oncoming traffic this far (in time) from the conflict
MOVING_KINDS = ("ego", "vehicle", "bicycle")


def light_state(lights: dict, group: str, t: float) -> str:
    """State of light group at time t from a fixed cycle ``[[group or 'all', colour, duration], ...]``."""
    cycle = lights.get("cycle", [])
    if not cycle:
        return "green"
    total = sum(p[2] for p in cycle)
    tau = (t + lights.get("offset", 0.0)) % total
    for grp, colour, dur in cycle:
        if tau < dur:
            return colour if grp == group else "red"
        tau -= dur
    return "red"


class Simulator:
    def __init__(self, map_api: MapAPI, state: dict):
        self.map = map_api
        state = copy.deepcopy(state)
        self.t: float = float(state["t"])
        self.step_index: int = int(state.get("step", 0))
        self.agents: list[Agent] = [Agent.from_dict(a) for a in state["agents"]]
        self.route: list[str] = list(state["route"])
        self.lights: dict = state.get("lights", {})
        self.spawns: list[dict] = list(state.get("spawns", []))
        self.props: dict = state.get("props", {})
        self.info: dict = state.get("info", {})
        self._paths: dict[str, Path] = {}
        self._turns: dict[str, str] = {}
        self._conflicts: dict[tuple[str, str], np.ndarray | None] = {}

    # --- state -------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        # Lights, props, info and pending spawn entries are never mutated, so sharing them is safe.
        return {
            "t": self.t, "step": self.step_index, "agents": [a.to_dict() for a in self.agents],
            "route": list(self.route), "lights": self.lights, "spawns": list(self.spawns), "props": self.props,
            "info": self.info,
        }

    @property
    def ego(self) -> Agent:
        return self.agents[0]

    def path(self, agent: Agent) -> Path:
        # A path only changes through a lane change, so (id, number of lane changes) identifies it.
        key = (agent.id, len(agent.lane_changes))
        p = self._paths.get(key)
        if p is None:
            p = self._paths[key] = build_path(self.map, agent)
        return p

    def pose(self, agent: Agent) -> np.ndarray:
        """Centre pose (x, y, heading) of an agent."""
        x, y, h = self.path(agent).line.pose1(agent.s)
        if agent.lateral:
            x, y = x - agent.lateral * np.sin(h), y + agent.lateral * np.cos(h)
        return np.array([x, y, h])

    def light(self, group: str | None) -> str:
        return "green" if group is None else light_state(self.lights, group, self.t)

    def turn(self, lane_id: str) -> tuple[str, float]:
        """(left / right / straight, entry heading) of a lane from its heading change (no naming convention)."""
        t = self._turns.get(lane_id)
        if t is None:
            line = Polyline(self.map.lanes[lane_id].centerline)
            h0 = float(line.heading(0.0))
            dh = float(wrap(line.heading(line.length) - h0))
            t = self._turns[lane_id] = ("left" if dh > 0.6 else "right" if dh < -0.6 else "straight", h0)
        return t

    def conflict_point(self, a: str, b: str) -> np.ndarray | None:
        key = (a, b) if a < b else (b, a)
        if key not in self._conflicts:
            la = shapely.LineString(self.map.lanes[key[0]].centerline)
            lb = shapely.LineString(self.map.lanes[key[1]].centerline)
            inter = la.intersection(lb)
            self._conflicts[key] = None if inter.is_empty else np.asarray(inter.centroid.coords[0])
        return self._conflicts[key]

    # --- hooks for closed-loop evaluation (``latentvla.closedloop``); the generator uses these defaults -----
    def external(self, agent: Agent) -> bool:
        """True for an agent moved from outside the simulator (a closed-loop ego): no IDM acceleration here."""
        return False

    def pedestrian_waits(self, agent: Agent, arr: dict) -> bool:
        """True when a walking pedestrian holds still this step (reactive pedestrians in closed loop)."""
        return False

    # --- perception helpers ------------------------------------------------------------------------------
    def _arrays(self) -> dict:
        act = [a for a in self.agents if a.active]
        poses = np.array([self.pose(a) for a in act])
        return {
            "agents": act, "pose": poses,
            "v": np.array([a.v for a in act]), "l": np.array([a.length for a in act]),
            "w": np.array([a.width for a in act]),
            "ped": np.array([a.kind == "pedestrian" for a in act]),
        }

    def leader(self, agent: Agent, arr: dict, lookahead: float, path: Path | None = None,
               s: float | None = None, margin: float = 0.35) -> tuple[float, float, Agent] | None:
        """Nearest road user in the agent's corridor ahead: (bumper gap, speed along path, who)."""
        path = path or self.path(agent)
        s = agent.s if s is None else s
        me = self.pose(agent)
        dx, dy = arr["pose"][:, 0] - me[0], arr["pose"][:, 1] - me[1]
        ahead_of_me = dx * np.cos(me[2]) + dy * np.sin(me[2]) > -8.0  # (paths may curve: generous)
        near = (np.hypot(dx, dy) < lookahead + 10.0) & ahead_of_me
        cand = [k for k in np.flatnonzero(near) if arr["agents"][k] is not agent]
        if not cand:
            return None
        cand = np.array(cand)
        pts = arr["pose"][cand, :2]
        ped = arr["ped"][cand]
        # Pedestrians also count where they will be in 2 s (they may step into the corridor).
        heading = arr["pose"][cand, 2]
        vel = arr["v"][cand][:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        allpts = np.concatenate([pts, pts + 2.0 * vel])
        ss, lat = path.line.project(allpts, s_min=s - 3.0, s_max=s + lookahead + 10.0)
        n = len(cand)
        ss, lat = ss.reshape(2, n), lat.reshape(2, n)
        dh = heading - path.line.heading(ss[0])
        along = 0.5 * (np.abs(arr["l"][cand] * np.cos(dh)) + np.abs(arr["w"][cand] * np.sin(dh)))
        perp = 0.5 * (np.abs(arr["l"][cand] * np.sin(dh)) + np.abs(arr["w"][cand] * np.cos(dh)))
        m = np.where(ped, margin + 0.5, margin)
        inside = np.abs(lat) - perp[None] < agent.width / 2 + m[None]
        inside[1] &= ped  # the 2-s prediction matters for pedestrians only
        hit = inside[0] | inside[1]
        s_obj = np.where(inside[0], ss[0], ss[1])
        ahead = hit & (s_obj > s) & (s_obj < s + lookahead)
        if not np.any(ahead):
            return None
        gap = s_obj - s - agent.length / 2 - along
        k = np.flatnonzero(ahead)[np.argmin(gap[ahead])]
        who = arr["agents"][cand[k]]
        v_along = float(arr["v"][cand[k]] * np.cos(dh[k])) if not ped[k] else 0.0
        return float(gap[k]), max(v_along, 0.0), who

    def _stop_gaps(self, agent: Agent, path: Path, arr: dict) -> list[float]:
        """Virtual obstacles: red/yellow stop lines, permissive left-turn yields, the end of a dead-end path."""
        gaps = []
        front = agent.s + agent.length / 2
        for lid, s0, _ in path.lane_ranges:
            lane = self.map.lanes[lid]
            if not lane.is_connector or s0 < front - 0.5:
                continue
            dist = s0 - front
            if dist > 120.0:
                break
            state = self.light(lane.traffic_light_id)
            if state == "red" or (state == "yellow" and dist > agent.v ** 2 / (2 * 3.0)):
                gaps.append(dist)
            elif self.turn(lid)[0] == "left" and self._must_yield(agent, lid, arr):
                gaps.append(dist)
            break  # only the next junction matters
        if agent.kind == "ego" or expert.dead_end(self, agent):
            gaps.append(path.line.length - front)
        return gaps

    def _must_yield(self, agent: Agent, lane_id: str, arr: dict) -> bool:
        h0 = self.turn(lane_id)[1]
        for other in arr["agents"]:
            if other is agent or other.kind not in MOVING_KINDS or other.static:
                continue
            opath = self.path(other)
            for lid, s0, s1 in opath.lane_ranges:
                lane = self.map.lanes[lid]
                if not lane.is_connector or s1 < other.s - other.length:
                    continue
                turn, oh = self.turn(lid)
                if turn == "left":
                    continue
                if abs(float(wrap(oh - h0 - np.pi))) > 0.5:
                    continue  # not the opposing approach
                cp = self.conflict_point(lane_id, lid)
                if cp is None:
                    continue
                sc, _ = opath.line.project(cp[None], s_min=s0 - 1, s_max=s1 + 1)
                dist = float(sc[0]) - other.s
                if dist > -other.length and dist / max(other.v, 1.0) < LEFT_TURN_GAP_S:
                    return True
        return False

    def target_speed(self, agent: Agent, path: Path) -> float:
        """Desired speed limited by curvature ahead, reachable with comfortable braking."""
        line = path.line
        horizon = max(15.0, agent.v ** 2 / (2 * agent.b_comf) + 10.0)
        m = (line.s >= agent.s) & (line.s <= agent.s + horizon)
        if not np.any(m):
            return agent.v0
        k = np.abs(line.curvature[m])
        v_lim = np.minimum(agent.v0 ** 2, LAT_ACCEL / np.maximum(k, 1e-6))
        reach = np.sqrt(v_lim + 2 * agent.b_comf * np.maximum(line.s[m] - agent.s, 0.0))
        return float(min(agent.v0, reach.min()))

    # --- dynamics ----------------------------------------------------------------------------------------
    def _accel(self, agent: Agent, arr: dict) -> float:
        path = self.path(agent)
        v0 = self.target_speed(agent, path)
        look = max(40.0, agent.v * 4.0 + 20.0)
        lead = self.leader(agent, arr, look)
        acc = idm_accel(agent.v, v0, lead[0] if lead else None, lead[1] if lead else 0.0, agent)
        for gap in self._stop_gaps(agent, path, arr):
            acc = min(acc, idm_accel(agent.v, v0, gap, 0.0, agent))
        b = agent.behavior
        if b.get("type") == "brake" and b.get("phase") == "braking":
            acc = min(acc, -float(b["decel"]))
        elif b.get("type") == "brake" and b.get("phase") == "holding":
            acc = min(acc, 0.0 if agent.v > 0.05 else acc)
        return float(np.clip(acc, -agent.b_max, agent.a_max))

    def _update_behaviours(self, arr: dict) -> None:
        ego = self.ego
        for agent in self.agents:
            if not agent.active:
                continue
            b = agent.behavior
            kind = b.get("type")
            if kind == "brake":
                if b.get("phase", "wait") == "wait" and self.t >= b["t"]:
                    b["phase"] = "braking"
                elif b.get("phase") == "braking" and agent.v <= b.get("v_end", 0.0) + 1e-3:
                    b["phase"], b["t_hold"] = "holding", self.t
                elif b.get("phase") == "holding" and self.t - b["t_hold"] >= b.get("hold", 2.0):
                    b["phase"] = "done"
            elif kind == "cut_in" and not b.get("done"):
                ego_path = self.path(ego)
                s_o, lat = ego_path.line.project(self.pose(agent)[None, :2], s_min=ego.s - 5, s_max=ego.s + 60)
                gap = float(s_o[0]) - ego.s - (agent.length + ego.length) / 2
                if self.t >= b.get("t_min", 0.0) and b["gap_min"] <= gap <= b["gap_max"] and abs(lat[0]) < 5.0:
                    length = float(np.clip(agent.v * b.get("duration", 2.5), 10.0, 40.0))
                    agent.lane_changes.append({"s0": agent.s, "length": length, "lanes": list(b["lanes"])})
                    b["done"] = True
            elif kind == "walk" and not b.get("started"):
                trig = b.get("trigger_dist")
                ep = self.pose(ego)
                near = trig is not None and np.hypot(*(self.pose(agent)[:2] - ep[:2])) <= trig
                if self.t >= b.get("t", np.inf) or near:
                    b["started"] = True
        expert.decide(self, arr)

    def _spawn(self, arr: dict) -> None:
        keep = []
        for sp in self.spawns:
            if sp["t"] > self.t + 1e-9:
                keep.append(sp)
                continue
            agent = Agent.from_dict(sp["agent"])
            p = self.pose(agent)
            d = np.hypot(arr["pose"][:, 0] - p[0], arr["pose"][:, 1] - p[1]) if len(arr["pose"]) else np.array([np.inf])
            if np.all(d > 15.0):
                self.agents.append(agent)
            else:
                keep.append(sp)  # entry occupied: try again next step
        self.spawns = keep

    def step(self) -> None:
        arr = self._arrays()
        if self.spawns and self.spawns[0]["t"] <= self.t + 1e-9:
            self._spawn(arr)
            arr = self._arrays()
        self._update_behaviours(arr)  # lane changes start at the current s: poses, hence arr, are unchanged
        accel = {}
        for agent in arr["agents"]:
            if agent.kind in MOVING_KINDS and not agent.static and not self.external(agent):
                accel[agent.id] = self._accel(agent, arr)
        for agent in arr["agents"]:
            if agent.static:
                agent.v, agent.a = 0.0, 0.0
            elif agent.kind == "pedestrian":
                b = agent.behavior
                moving = (b.get("started", False) and agent.s < self.path(agent).line.length
                          and not self.pedestrian_waits(agent, arr))
                agent.v = float(b.get("speed", 1.3)) if moving else 0.0
                agent.s = min(agent.s + agent.v * DT, self.path(agent).line.length)
            elif agent.id in accel:
                a = accel[agent.id]
                v_new = max(0.0, agent.v + a * DT)
                agent.a = (v_new - agent.v) / DT
                agent.s += 0.5 * (agent.v + v_new) * DT
                agent.v = v_new
                agent.brake_on = agent.a < -0.6 or (agent.v < 0.2 and agent.kind != "bicycle")
                if agent.kind != "ego" and agent.s >= self.path(agent).line.length - 0.5:
                    agent.active = False  # left the map
        self.t = round(self.t + DT, 6)
        self.step_index += 1

    # --- checks and observations -------------------------------------------------------------------------
    def ego_footprint(self) -> np.ndarray:
        p = self.pose(self.ego)
        return box_corners(p[0], p[1], p[2], self.ego.length, self.ego.width)

    def violations(self) -> list[str]:
        """Why the ego state is unsafe now (collision with a road user, a corner off the drivable area)."""
        out = []
        corners = self.ego_footprint()
        if not np.all(self.map.is_drivable(corners)):
            out.append(f"t={self.t:.1f}s ego corner outside the drivable area")
        others = [a for a in self.agents[1:] if a.active]
        if others:
            poses = np.array([self.pose(a) for a in others])
            boxes = box_corners(poses[:, 0], poses[:, 1], poses[:, 2],
                                [a.length for a in others], [a.width for a in others])
            hit = boxes_overlap(np.broadcast_to(corners, boxes.shape), boxes)
            for k in np.flatnonzero(hit):
                out.append(f"t={self.t:.1f}s ego collides with {others[k].id} ({others[k].kind})")
        return out

    def ego_rear_axle(self) -> np.ndarray:
        p = self.pose(self.ego)
        return np.array([p[0] - EGO.rear_axle_to_center * np.cos(p[2]),
                         p[1] - EGO.rear_axle_to_center * np.sin(p[2]), p[2]])
