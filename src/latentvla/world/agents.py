"""Road users of the embedded world and the paths they follow.

Every agent is plain data (JSON round-trips exactly) so a simulator state can be saved at any frame and restarted:
the path is not stored but rebuilt from its spec (lane ids or explicit points, plus the lane changes made so far).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from latentvla.map_api import MapAPI
from latentvla.world.geometry import Polyline, smoothstep

AGENT_KINDS = ("ego", "vehicle", "pedestrian", "bicycle", "traffic_cone", "barrier")


@dataclass
class Agent:
    id: str
    kind: str
    length: float
    width: float
    height: float
    color: tuple[int, int, int]
    lanes: list[str] = field(default_factory=list)  # lane sequence (vehicles, bicycles, ego)
    points: list[list[float]] | None = None  # explicit path (pedestrians, static objects)
    lane_changes: list[dict] = field(default_factory=list)  # [{"s0", "length", "lanes"}], applied in order
    s: float = 0.0
    v: float = 0.0
    a: float = 0.0
    lateral: float = 0.0  # fixed offset from the path (parked cars on a shoulder line, nudges)
    v0: float = 12.0  # desired speed
    T: float = 1.5  # time headway
    s_min: float = 2.0  # standstill gap
    a_max: float = 1.5
    b_comf: float = 2.0
    b_max: float = 7.0
    static: bool = False
    active: bool = True
    brake_on: bool = False
    behavior: dict = field(default_factory=dict)  # scripted intent (family), with its own progress state

    def to_dict(self) -> dict:
        """Plain-data copy (behaviour and lane changes copied: the simulator mutates them)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["color"] = list(self.color)
        d["lanes"] = list(self.lanes)
        d["points"] = [list(p) for p in self.points] if self.points is not None else None
        d["lane_changes"] = [dict(lc) for lc in self.lane_changes]
        d["behavior"] = copy.deepcopy(self.behavior)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Agent:
        d = dict(d)
        d["color"] = tuple(d["color"])
        return cls(**d)

    @property
    def current_lanes(self) -> list[str]:
        """The lane sequence the agent is on now: its initial lanes, or those of its latest lane change."""
        return list(self.lane_changes[-1]["lanes"]) if self.lane_changes else list(self.lanes)


class Path:
    """An agent's path: a polyline plus the arc-length ranges of the lanes it runs through."""

    def __init__(self, line: Polyline, lane_ranges: list[tuple[str, float, float]]):
        self.line = line
        self.lane_ranges = lane_ranges

    def lane_at(self, s: float) -> str | None:
        for lid, a, b in self.lane_ranges:
            if a - 1e-6 <= s <= b + 1e-6:
                return lid
        return self.lane_ranges[-1][0] if self.lane_ranges and s > self.lane_ranges[-1][2] else None


def lane_polyline(map_api: MapAPI, lane_ids: list[str]) -> np.ndarray:
    missing = [lid for lid in lane_ids if lid not in map_api.lanes]
    if missing:
        raise ValueError(f"map {map_api.name} has no lane(s) {missing}")
    return np.concatenate([map_api.lanes[lid].centerline for lid in lane_ids])


def _lane_ranges(map_api: MapAPI, lane_ids: list[str], line: Polyline, s_from: float = 0.0) -> list:
    out, s = [], s_from
    for lid in lane_ids:
        cl = map_api.lanes[lid].centerline
        s_end, _ = line.project(cl[-1:], s_min=s - 1.0)
        out.append((lid, s, float(s_end[0])))
        s = float(s_end[0])
    return out


def build_path(map_api: MapAPI, agent: Agent) -> Path:
    """Deterministically rebuild an agent's path from its spec."""
    if agent.points is not None:
        pts = np.asarray(agent.points, dtype=np.float64)
        return Path(Polyline(pts), [])
    line = Polyline(lane_polyline(map_api, agent.lanes))
    ranges = _lane_ranges(map_api, agent.lanes, line)
    for lc in agent.lane_changes:
        target = Polyline(lane_polyline(map_api, lc["lanes"]))
        s0, length = float(lc["s0"]), float(lc["length"])
        ss = np.append(np.arange(s0, s0 + length, 1.0), s0 + length)
        cur = line.xy(ss)
        st, _ = target.project(cur)
        w = smoothstep((ss - s0) / length)[:, None]
        blend = (1.0 - w) * cur + w * target.xy(st)
        rest = target.slice_points(float(st[-1]), target.length)[1:]
        prefix = line.slice_points(0.0, s0)
        line = Polyline(np.concatenate([prefix, blend, rest]))
        kept = [(lid, a, min(b, s0)) for lid, a, b in ranges if a < s0]
        ranges = kept + _lane_ranges(map_api, lc["lanes"], line, s_from=s0)
    return Path(line, ranges)


def idm_accel(v: float, v0: float, gap: float | None, v_lead: float, agent: Agent) -> float:
    """Intelligent Driver Model acceleration (free road when ``gap`` is None)."""
    v0 = max(v0, 0.1)
    free = 1.0 - (max(v, 0.0) / v0) ** 4
    if gap is None:
        return agent.a_max * free
    s_star = agent.s_min + max(0.0, v * agent.T + v * (v - v_lead) / (2.0 * np.sqrt(agent.a_max * agent.b_comf)))
    return agent.a_max * (free - (s_star / max(gap, 0.05)) ** 2)
