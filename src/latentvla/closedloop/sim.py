"""The embedded world restarted from a scene, with the ego under outside control.

``ClosedLoopSim`` is the world's 10 Hz simulator in which the ego is either

- the world's own expert (``ego_state=None``): the reference rollout and ``--agent expert``, or
- driven from outside: its rear-axle state (the scorer's 11-vector, ``StateIndex`` order) is set every step by the
  agent's tracked plan; the simulator only reads its pose.

Reactive mode: everybody else reacts to that ego as to any road user (IDM following, yielding at permissive left
turns, cut-ins measured against it) and walking pedestrians wait when the ego is about to pass their next steps.
Non-reactive mode: everybody else replays the log, i.e. the world as it went on with the expert ego (a shadow
simulator that the outside ego never touches), as NAVSIM's non-reactive logs do.
"""

from __future__ import annotations

import numpy as np

from latentvla.map_api import MapAPI
from latentvla.schema import EGO
from latentvla.world.agents import Agent
from latentvla.world.geometry import wrap
from latentvla.world.sim import Simulator

PED_LOOKAHEAD_S = 3.5  # a pedestrian waits if the ego reaches its next steps within this time ...
PED_MIN_LOOKAHEAD_M = 8.0  # ... or this distance
PED_STEP_M = 1.2  # how far ahead on its path a pedestrian looks before stepping on
PED_MARGIN_M = 1.0  # lateral margin around the ego's corridor
RELOCALIZE_LATERAL_M = 1.8  # the ego is re-assigned to another lane once this far from its own
LANE_HEADING_RAD = 0.6


def rear_to_center(state: np.ndarray) -> np.ndarray:
    """(x, y, heading) of the box centre from a rear-axle state (x, y, heading, ...)."""
    h = float(state[2])
    return np.array([state[0] + EGO.rear_axle_to_center * np.cos(h), state[1] + EGO.rear_axle_to_center * np.sin(h), h])


class ClosedLoopSim(Simulator):
    def __init__(self, map_api: MapAPI, state: dict, ego_state: np.ndarray | None = None, reactive: bool = True):
        super().__init__(map_api, state)
        self.reactive = reactive
        self.ego_state = None if ego_state is None else np.array(ego_state, dtype=np.float64)
        self.shadow: Simulator | None = None
        if self.ego_state is not None:
            self.ego.behavior = {"type": "external"}  # no expert decisions (lane changes) for it
            self.ego.lane_changes = [dict(lc) for lc in self.ego.lane_changes]
            if not reactive:
                self.shadow = Simulator(map_api, state)  # the log goes on with its expert, unseen
                self.agents = [self.ego] + self.shadow.agents[1:]
            self._sync_ego()

    # --- the outside ego -----------------------------------------------------------------------------------
    def external(self, agent: Agent) -> bool:
        return self.ego_state is not None and agent is self.agents[0]

    def pose(self, agent: Agent) -> np.ndarray:
        if self.ego_state is not None and agent is self.agents[0]:
            return rear_to_center(self.ego_state)
        return super().pose(agent)

    def set_ego_state(self, state: np.ndarray) -> None:
        self.ego_state = np.array(state, dtype=np.float64)
        self._sync_ego()

    def _sync_ego(self) -> None:
        """Speed, acceleration and arc length along its lane path of the outside ego (what other agents read)."""
        ego, st = self.ego, self.ego_state
        ego.v = max(float(st[3]), 0.0)
        ego.a = float(st[5])
        ego.brake_on = ego.a < -0.6 or ego.v < 0.2
        line = self.path(ego).line
        s, _ = line.project(rear_to_center(st)[None, :2], s_min=ego.s - 10.0, s_max=ego.s + 40.0)
        ego.s = float(s[0])

    def relocalize(self) -> bool:
        """Put the outside ego on the lane it actually drives in (after it changed lanes or took another turn), so
        its route command and what others read from its lane stay true. Returns True if its lanes changed."""
        if self.ego_state is None:
            return False
        ego = self.ego
        center = rear_to_center(self.ego_state)
        line = self.path(ego).line
        s, lat = line.project(center[None, :2], s_min=ego.s - 10.0, s_max=ego.s + 40.0)
        if abs(float(lat[0])) < RELOCALIZE_LATERAL_M:
            return False
        best, best_d = None, np.inf
        route = set(self.route)
        for lid in self.map.lane_ids_near(center[:2], 3.0):
            lane = self.map.lanes[lid]
            cl = lane.centerline
            k = int(np.argmin(np.hypot(*(cl - center[:2]).T)))
            k = min(k, len(cl) - 2)
            h = np.arctan2(*(cl[k + 1] - cl[k])[::-1])
            if abs(float(wrap(h - center[2]))) > LANE_HEADING_RAD:
                continue
            d = float(np.hypot(*(cl[k] - center[:2]))) - (0.5 if lane.roadblock_id in route else 0.0)
            if d < best_d:
                best, best_d = lid, d
        if best is None or best in ego.current_lanes:
            return False
        ego.lanes = self.map.route_lane_sequence(best, self.route)
        ego.lane_changes = []
        self._paths = {k: v for k, v in self._paths.items() if k[0] != ego.id}
        s, _ = self.path(ego).line.project(center[None, :2])
        ego.s = float(s[0])
        return True

    # --- reactive pedestrians ------------------------------------------------------------------------------
    def pedestrian_waits(self, agent: Agent, arr: dict) -> bool:
        if not self.reactive:
            return False
        ego = self.ego
        if ego.v < 0.5:
            return False
        ex, ey, eh = self.pose(ego)
        c, s = np.cos(eh), np.sin(eh)
        path = self.path(agent).line
        now = np.asarray(path.pose1(agent.s)[:2])
        nxt = path.xy(min(agent.s + PED_STEP_M, path.length))
        reach = max(PED_MIN_LOOKAHEAD_M, ego.v * PED_LOOKAHEAD_S) + ego.length / 2
        half = ego.width / 2 + PED_MARGIN_M

        def in_corridor(p: np.ndarray) -> bool:
            lon = c * (p[0] - ex) + s * (p[1] - ey)
            lat = -s * (p[0] - ex) + c * (p[1] - ey)
            return bool(-ego.length / 2 < lon < reach and abs(lat) < half)

        # Waiting only before stepping in: one already in front of the car keeps walking out of its way.
        return in_corridor(np.asarray(nxt)) and not in_corridor(now)

    # --- stepping ------------------------------------------------------------------------------------------
    def step(self) -> None:
        if self.shadow is None:
            super().step()
            return
        self.shadow.step()  # non-reactive: the others are the log's
        self.agents = [self.ego] + self.shadow.agents[1:]
        self.t, self.step_index = self.shadow.t, self.shadow.step_index

    def ego_rear_state(self) -> np.ndarray:
        """The ego's rear-axle state (11,) in the scorer's layout, whoever drives it."""
        if self.ego_state is not None:
            return self.ego_state.copy()
        from latentvla.eval.state import STATE_SIZE, StateIndex

        ego = self.ego
        rear = self.ego_rear_axle()
        kappa = float(self.path(ego).line.curvature_at(ego.s))
        out = np.zeros(STATE_SIZE)
        out[StateIndex.X], out[StateIndex.Y], out[StateIndex.HEADING] = rear
        out[StateIndex.VELOCITY_X] = ego.v
        out[StateIndex.ACCELERATION_X] = ego.a
        out[StateIndex.ANGULAR_VELOCITY] = ego.v * kappa
        out[StateIndex.STEERING_ANGLE] = np.arctan(EGO.wheel_base * kappa)
        return out
