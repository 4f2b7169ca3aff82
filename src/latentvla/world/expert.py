"""The expert ego driver's decisions on top of IDM: lane changes around blockages and off ending lanes, the
route-based driving command, and lane-sequence routing. Its driven path is the log's "human" trajectory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from latentvla.map_api import MapAPI
from latentvla.world.geometry import Polyline, wrap

if TYPE_CHECKING:
    from latentvla.world.agents import Agent
    from latentvla.world.sim import Simulator

COMMAND_TURN_RAD = 0.5  # cumulative route heading change within the look-ahead that makes a left/right command
COMMAND_LOOKAHEAD_M = 40.0


def route_lanes(map_api: MapAPI, start: str, route: list[str]) -> list[str]:
    """Follow successors from ``start`` through the route's roadblocks, in route order."""
    return map_api.route_lane_sequence(start, route)


def dead_end(sim: Simulator, agent: Agent) -> bool:
    """True when the agent's lanes stop before its route does (e.g. an on-ramp that ends)."""
    if not agent.lanes or agent.kind != "ego":
        return False
    last = sim.map.lanes[agent.current_lanes[-1]]
    return not last.successors and last.roadblock_id != sim.route[-1]


def _lane_change_target(sim: Simulator, agent: Agent, arr: dict) -> tuple[str | None, str]:
    path = sim.path(agent)
    lane = sim.map.lanes.get(path.lane_at(agent.s) or "")
    if lane is None or lane.is_connector:
        return None, ""
    if dead_end(sim, agent) and path.line.length - agent.s < 160.0:
        return lane.left_neighbor or lane.right_neighbor, "lane ends"
    lead = sim.leader(agent, arr, 50.0)
    if lead is not None and lead[2].static and lead[2].kind != "pedestrian" and lead[0] < 45.0:
        return lane.left_neighbor or lane.right_neighbor, f"blocked by {lead[2].id}"
    return None, ""


def _gap_ok(sim: Simulator, agent: Agent, target: Agent, arr: dict, length: float) -> bool:
    """Accept the target lane if nobody is alongside and front/rear gaps are safe."""
    tpath = sim.path(target)
    me = sim.pose(agent)
    near = [k for k, (other, pose) in enumerate(zip(arr["agents"], arr["pose"]))
            if other is not agent and np.hypot(pose[0] - me[0], pose[1] - me[1]) < 80.0]
    if not near:
        return True
    s_o, lat = tpath.line.project(arr["pose"][near, :2], s_min=agent.s - 60, s_max=agent.s + 80)
    for k, so, la in zip(near, s_o, lat):
        other = arr["agents"][k]
        if abs(la) > 2.5:
            continue
        ds = float(so) - agent.s
        if ds >= 0:  # ahead: need room to finish the change (static blockers ahead in the target lane too)
            if ds < max(12.0, agent.v * 1.2) + (length if other.static else 0.0):
                return False
        elif -ds < max(12.0, other.v * 1.8 + (other.v - agent.v) * 2.0):
            return False
    return True


def decide(sim: Simulator, arr: dict) -> None:
    """Start a lane change when the ego's lane is blocked or ends and the target lane has a safe gap."""
    from latentvla.world.agents import Agent

    ego = sim.ego
    if not ego.active or ego.behavior.get("type") != "expert" or sim.step_index % 5:
        return  # decides at 2 Hz, like the log's frame rate
    if ego.lane_changes and ego.lane_changes[-1]["s0"] + ego.lane_changes[-1]["length"] > ego.s:
        return  # a change is still in progress
    target, why = _lane_change_target(sim, ego, arr)
    if target is None:
        return
    lanes = route_lanes(sim.map, target, sim.route)
    lead = sim.leader(ego, arr, 60.0)
    room = lead[0] - 3.0 if lead is not None and lead[2].static else 60.0
    length = float(np.clip(ego.v * 3.0, 10.0, 35.0))
    length = min(length, max(8.0, room))
    probe = Agent(id="_probe", kind="ego", length=ego.length, width=ego.width, height=ego.height,
                  color=ego.color, lanes=lanes)
    if not _gap_ok(sim, ego, probe, arr, length):
        return
    ego.lane_changes.append({"s0": ego.s, "length": length, "lanes": lanes})
    ego.behavior.setdefault("log", []).append(f"t={sim.t:.1f} lane change ({why})")


def driving_command(sim: Simulator) -> str:
    """NAVSIM-style route command: turns, sharp curves and route-required lane changes within the look-ahead."""
    ego = sim.ego
    if sim.info.get("unknown_command"):
        return "unknown"
    lanes = ego.current_lanes
    line = Polyline(np.concatenate([sim.map.lanes[lid].centerline for lid in lanes]))
    s, _ = line.project(sim.pose(ego)[None, :2])
    s0 = float(s[0])
    ss = np.linspace(s0, min(s0 + COMMAND_LOOKAHEAD_M, line.length), 20)
    dh = wrap(line.heading(ss) - line.heading(s0))
    if dh.max() > COMMAND_TURN_RAD:
        return "left"
    if dh.min() < -COMMAND_TURN_RAD:
        return "right"
    if dead_end(sim, ego) and line.length - s0 < 120.0:
        lane = sim.map.lanes[lanes[-1]]
        return "left" if lane.left_neighbor else "right"
    return "straight"
