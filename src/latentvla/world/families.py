"""Scenario families: each draws a map, traffic and a scripted long-tail event from an RNG.

A family returns the map and the simulator's initial state; everything random is drawn here, so simulation is
deterministic and restartable. Several families hinge on cues only a camera shows: light colours (``red_light``),
brake lamps (``follow_brake``), a pedestrian stepping out from behind a parked car (``pedestrian_crossing``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from latentvla.map_api import MapAPI
from latentvla.schema import EGO
from latentvla.world.agents import Agent
from latentvla.world.expert import route_lanes
from latentvla.world.geometry import Polyline, offset, resample
from latentvla.world.maps import MapInfo, Placement, build_corridor, build_intersection

FAMILIES: tuple[str, ...] = (
    "cruise", "follow_brake", "cut_in", "stalled_vehicle", "pedestrian_crossing",
    "red_light", "unprotected_left", "intersection_turn", "construction_narrowing", "merge",
)
LONG_TAIL: tuple[str, ...] = tuple(f for f in FAMILIES if f != "cruise")
CAR_COLORS = [(200, 200, 205), (30, 30, 35), (120, 120, 125), (20, 60, 140), (240, 240, 240), (110, 30, 30),
              (40, 100, 60), (180, 150, 90), (70, 90, 110), (150, 60, 20), (200, 170, 40), (90, 60, 110)]
CLOTHES = [(200, 60, 40), (40, 80, 180), (230, 200, 60), (60, 160, 80), (220, 220, 220), (160, 60, 160)]


@dataclass
class Setup:
    map: MapAPI
    state: dict  # the simulator's initial state
    params: dict  # the drawn parameters, for provenance and stats


class _Ctx:
    """Small helpers shared by the families (id counter, vehicle factory, spawn list)."""

    def __init__(self, rng: np.random.Generator, duration: float):
        self.rng = rng
        self.duration = duration
        self.agents: list[Agent] = []
        self.spawns: list[dict] = []
        self._n = 0

    def new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:03d}"

    def vehicle(self, lanes: list[str], s: float, v: float, v0: float, **kw) -> Agent:
        r = self.rng
        big = r.random() < 0.12
        length = r.uniform(6.0, 8.5) if big else r.uniform(4.2, 5.1)
        width = r.uniform(2.2, 2.5) if big else r.uniform(1.8, 2.0)
        height = r.uniform(2.4, 3.2) if big else r.uniform(1.4, 1.8)
        color = CAR_COLORS[int(r.integers(len(CAR_COLORS)))]
        a = Agent(id=self.new_id("veh"), kind="vehicle", length=length, width=width, height=height, color=color,
                  lanes=list(lanes), s=s, v=v, v0=v0, T=float(r.uniform(1.2, 1.8)), s_min=float(r.uniform(2.0, 3.0)),
                  a_max=float(r.uniform(1.2, 2.0)), b_comf=float(r.uniform(1.8, 2.6)))
        for k, val in kw.items():
            setattr(a, k, val)
        return a

    def static_box(self, kind: str, x: float, y: float, heading: float, dims: tuple, color: tuple) -> Agent:
        pts = [[x, y], [x + 0.01 * np.cos(heading), y + 0.01 * np.sin(heading)]]
        return Agent(id=self.new_id({"vehicle": "veh", "traffic_cone": "cone", "barrier": "bar"}[kind]),
                     kind=kind, length=dims[0], width=dims[1], height=dims[2], color=color, points=pts, static=True)

    def pedestrian(self, path: np.ndarray, speed: float, behavior: dict) -> Agent:
        r = self.rng
        return Agent(id=self.new_id("ped"), kind="pedestrian", length=0.5, width=0.6, height=float(r.uniform(1.55, 1.9)),
                     color=CLOTHES[int(r.integers(len(CLOTHES)))], points=np.asarray(path).tolist(), s=0.0, v=0.0,
                     behavior={"type": "walk", "speed": speed, **behavior})

    def spawn_stream(self, lanes: list[str], v0: float, rate: float, t_from: float = 0.5) -> None:
        """Future arrivals at the start of a lane sequence (Poisson, ``rate`` vehicles per second)."""
        t = t_from + self.rng.exponential(1.0 / rate)
        while t < self.duration:
            a = self.vehicle(lanes, 0.0, v0 * 0.9, v0)
            self.spawns.append({"t": round(float(t), 1), "agent": a.to_dict()})
            t += max(2.0, self.rng.exponential(1.0 / rate))


def _placement(rng: np.random.Generator) -> Placement:
    return Placement(float(rng.uniform(-np.pi, np.pi)), (float(rng.uniform(-3000, 3000)), float(rng.uniform(-3000, 3000))))


def _ego(lanes: list[str], s: float, v: float, v0: float) -> Agent:
    return Agent(id="ego", kind="ego", length=EGO.length, width=EGO.width, height=EGO.height, color=(250, 250, 250),
                 lanes=list(lanes), s=s, v=v, v0=v0, T=1.6, s_min=3.0, a_max=1.8, b_comf=2.5, b_max=6.0,
                 behavior={"type": "expert"})


def _state(ctx: _Ctx, ego: Agent, route: list[str], lights: dict | None = None, props: dict | None = None,
           info: dict | None = None) -> dict:
    return {"t": 0.0, "step": 0, "agents": [ego.to_dict()] + [a.to_dict() for a in ctx.agents],
            "route": route, "lights": lights or {}, "spawns": sorted(ctx.spawns, key=lambda s: s["t"]),
            "props": props or {}, "info": info or {}}


# --- corridors ------------------------------------------------------------------------------------------------
def _corridor(ctx: _Ctx, name: str, *, min_fwd: int = 1, curve: bool = True, **kw) -> tuple[MapAPI, MapInfo, dict]:
    r = ctx.rng
    p = {
        "n_fwd": int(r.integers(max(1, min_fwd), 4)), "n_bwd": int(r.integers(0, 3)),
        "lane_width": float(r.uniform(3.3, 3.8)), "speed_limit": float(r.choice([11.1, 13.9, 16.7])),
        "curve_angle": float(r.choice([-1, 1]) * r.uniform(0.3, 1.2)) if curve and r.random() < 0.45 else 0.0,
        "curve_radius": float(r.uniform(70, 220)), "curve_start": float(r.uniform(90, 200)),
        "length": 420.0,
    }
    p.update(kw)
    m, info = build_corridor(name, _placement(r), **p)
    return m, info, p


def _fwd_seq(m: MapAPI, info: MapInfo, j: int, seg: int = 0) -> list[str]:
    return route_lanes(m, info.fwd_lanes[seg][j], [lanes_rb(m, s[0]) for s in info.fwd_lanes])


def lanes_rb(m: MapAPI, lid: str) -> str:
    return m.lanes[lid].roadblock_id


def _corridor_traffic(ctx: _Ctx, m: MapAPI, info: MapInfo, v_lim: float, ego_j: int, ego_s: float,
                      density: float, keep_clear: tuple[float, float] | None = None, parked: bool = True) -> None:
    """Vehicles in every lane (the ego lane left clear within ``keep_clear``), oncoming streams, parked cars."""
    r = ctx.rng
    route = [lanes_rb(m, s[0]) for s in info.fwd_lanes]
    for j in range(len(info.fwd_lanes[0])):
        s = float(r.uniform(0, 30))
        while s < 300:
            clear = j == ego_j and keep_clear is not None and keep_clear[0] < s - ego_s < keep_clear[1]
            if abs(s - ego_s) > 14.0 and not clear and r.random() < density:
                v0 = v_lim * float(r.uniform(0.75, 1.0))
                ctx.agents.append(ctx.vehicle(route_lanes(m, info.fwd_lanes[0][j], route), s, v0 * 0.9, v0))
            s += float(r.uniform(25, 60))
    if info.bwd_lanes and info.bwd_lanes[0]:
        broute = [lanes_rb(m, s[0]) for s in reversed(info.bwd_lanes)]
        for j in range(len(info.bwd_lanes[0])):
            seq = route_lanes(m, info.bwd_lanes[-1][j], broute)
            s = float(r.uniform(0, 40))
            while s < 380:
                if r.random() < density:
                    v0 = v_lim * float(r.uniform(0.8, 1.0))
                    ctx.agents.append(ctx.vehicle(seq, s, v0, v0))
                s += float(r.uniform(30, 70))
            ctx.spawn_stream(seq, v_lim * float(r.uniform(0.8, 1.0)), rate=0.15 * density + 0.02)
    if parked and r.random() < 0.5:  # parked cars on the shoulder
        line = Polyline(info.shoulder_path)
        for s in np.sort(r.uniform(20, 380, size=int(r.integers(1, 5)))):
            x, y, h = line.pose(float(s))
            ctx.agents.append(ctx.static_box("vehicle", x, y, h, (4.5, 1.9, 1.5), CAR_COLORS[int(r.integers(12))]))
    if parked and r.random() < 0.4:  # cyclists riding along the right shoulder (no shoulder on ramps)
        line = Polyline(info.shoulder_path)
        for s0 in np.sort(r.uniform(0, 250, size=int(r.integers(1, 3)))):
            pts = line.slice_points(float(s0), line.length)
            v0 = float(r.uniform(3.5, 6.0))
            ctx.agents.append(Agent(id=ctx.new_id("cyc"), kind="bicycle", length=1.8, width=0.7, height=1.7,
                                    color=CLOTHES[int(r.integers(len(CLOTHES)))], points=pts.tolist(), v=v0, v0=v0,
                                    T=1.0, s_min=1.5, a_max=1.0, b_comf=2.0))
    for side in info.sidewalk_paths:  # pedestrians strolling on the sidewalks
        for _ in range(int(r.integers(0, 3))):
            s0 = float(r.uniform(0, 300))
            line = Polyline(side)
            pts = line.slice_points(s0, s0 + 60) if r.random() < 0.5 else line.slice_points(s0, s0 + 60)[::-1]
            ctx.agents.append(ctx.pedestrian(pts, float(r.uniform(1.0, 1.6)), {"t": 0.0}))


def _drop_overlaps(ctx: _Ctx, m: MapAPI, keep: set[str]) -> None:
    """Remove traffic that starts overlapping something placed deliberately (the scripted event)."""
    from latentvla.world.agents import build_path
    from latentvla.world.geometry import box_corners, boxes_overlap

    def corners(a: Agent) -> np.ndarray:
        p = build_path(m, a).line.pose(a.s)
        return box_corners(p[0], p[1], p[2], a.length + 4.0, a.width + 0.6)

    fixed = np.array([corners(a) for a in ctx.agents if a.id in keep])
    out = []
    for a in ctx.agents:
        if a.id in keep or not len(fixed) or a.static or not np.any(boxes_overlap(np.broadcast_to(corners(a), fixed.shape), fixed)):
            out.append(a)
    ctx.agents = out


def cruise(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    m, info, p = _corridor(ctx, name)
    j = int(r.integers(len(info.fwd_lanes[0])))
    v = p["speed_limit"] * float(r.uniform(0.85, 1.0))
    s_e = float(r.uniform(30, 60))
    ego = _ego(_fwd_seq(m, info, j), s_e, v * 0.9, v)
    _corridor_traffic(ctx, m, info, p["speed_limit"], j, s_e, density=float(r.uniform(0.2, 0.7)))
    route = [lanes_rb(m, s[0]) for s in info.fwd_lanes]
    return Setup(m, _state(ctx, ego, route), p)


def follow_brake(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    m, info, p = _corridor(ctx, name, curve=False)
    j = int(r.integers(len(info.fwd_lanes[0])))
    v = p["speed_limit"] * float(r.uniform(0.8, 1.0))
    s_e = float(r.uniform(30, 50))
    ego = _ego(_fwd_seq(m, info, j), s_e, v, v)
    gap = float(r.uniform(18, 35))
    lead = ctx.vehicle(_fwd_seq(m, info, j), s_e + gap, v, v)
    lead.T = 1.0
    t_brake = float(r.uniform(2.0, ctx.duration - 4.0))
    lead.behavior = {"type": "brake", "t": t_brake, "decel": float(r.uniform(3.5, 6.0)),
                     "v_end": float(r.choice([0.0, v * r.uniform(0.15, 0.4)])), "hold": float(r.uniform(1.5, 4.0)),
                     "phase": "wait"}
    ctx.agents.append(lead)
    _corridor_traffic(ctx, m, info, p["speed_limit"], j, s_e, density=float(r.uniform(0.1, 0.5)), keep_clear=(-15, 80))
    _drop_overlaps(ctx, m, {lead.id})
    p.update({"t_brake": t_brake, "decel": lead.behavior["decel"], "gap": gap})
    return Setup(m, _state(ctx, ego, [lanes_rb(m, s[0]) for s in info.fwd_lanes]), p)


def cut_in(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    m, info, p = _corridor(ctx, name, min_fwd=2)
    n = len(info.fwd_lanes[0])
    j = int(r.integers(n))
    k = j - 1 if (j == n - 1 or (j > 0 and r.random() < 0.5)) else j + 1
    v = p["speed_limit"] * float(r.uniform(0.8, 1.0))
    s_e = float(r.uniform(30, 50))
    ego = _ego(_fwd_seq(m, info, j), s_e, v, v)
    other = ctx.vehicle(_fwd_seq(m, info, k), s_e + float(r.uniform(-10, 10)), v * float(r.uniform(1.05, 1.25)),
                        v * float(r.uniform(1.05, 1.2)))
    other.behavior = {"type": "cut_in", "lanes": _fwd_seq(m, info, j)[0:], "gap_min": float(r.uniform(5, 8)),
                      "gap_max": float(r.uniform(10, 16)), "duration": float(r.uniform(2.0, 3.0)),
                      "t_min": float(r.uniform(1.0, 5.0))}
    # The cut-in lane sequence must start at the segment the cutter will be in; route_lanes from segment 0 is fine
    # because the blended path projects onto the whole sequence.
    ctx.agents.append(other)
    _corridor_traffic(ctx, m, info, p["speed_limit"], j, s_e, density=float(r.uniform(0.1, 0.4)), keep_clear=(-10, 60))
    _drop_overlaps(ctx, m, {other.id})
    ctx.agents = [a for a in ctx.agents if a.id == other.id or not (a.lanes[:1] == other.lanes[:1] and abs(a.s - other.s) < 25)]
    return Setup(m, _state(ctx, ego, [lanes_rb(m, s[0]) for s in info.fwd_lanes]), p)


def _blocked_lane(ctx: _Ctx, name: str, kind: str) -> Setup:
    r = ctx.rng
    m, info, p = _corridor(ctx, name, min_fwd=2, curve=False)
    n = len(info.fwd_lanes[0])
    j = int(r.integers(n))
    v = p["speed_limit"] * float(r.uniform(0.75, 0.95))
    s_e = float(r.uniform(30, 50))
    seq = _fwd_seq(m, info, j)
    ego = _ego(seq, s_e, v, v)
    line = Polyline(np.concatenate([m.lanes[lid].centerline for lid in seq]))
    s_b = s_e + float(r.uniform(60, 110))
    keep: set[str] = set()
    if kind == "stalled":
        x, y, h = line.pose(s_b)
        st = ctx.static_box("vehicle", x, y, h, (float(r.uniform(4.3, 5.0)), 1.9, 1.6), CAR_COLORS[int(r.integers(12))])
        ctx.agents.append(st)
        keep.add(st.id)
        p["blocker_s"] = s_b - s_e
    else:  # construction: a cone taper across the lane, then cones and barriers along it
        w = info.lane_width
        side = -1.0 if j == n - 1 or (j > 0 and r.random() < 0.5) else 1.0  # taper from the lane's outer edge
        taper, closed = float(r.uniform(15, 25)), float(r.uniform(30, 60))
        for s in np.arange(0.0, taper + closed, 3.0):
            frac = min(1.0, s / taper)
            lat = side * (w / 2 - 0.3) * (1 - 2 * frac) if s <= taper else -side * (w / 2 - 0.3)
            pt = offset(line.slice_points(s_b + s - 0.5, s_b + s + 0.5), lat)[0]
            h = float(line.heading(s_b + s))
            c = ctx.static_box("traffic_cone", pt[0], pt[1], h, (0.45, 0.45, 0.75), (255, 120, 0))
            ctx.agents.append(c)
            keep.add(c.id)
        for s in np.arange(taper + 4.0, taper + closed, 8.0):
            x, y, h = line.pose(s_b + s)
            b = ctx.static_box("barrier", x, y, h, (2.0, 0.5, 1.0), (250, 140, 20))
            ctx.agents.append(b)
            keep.add(b.id)
        p.update({"blocker_s": s_b - s_e, "taper": taper, "closed": closed})
    _corridor_traffic(ctx, m, info, p["speed_limit"], j, s_e, density=float(r.uniform(0.1, 0.35)), keep_clear=(-15, 200))
    _drop_overlaps(ctx, m, keep)
    return Setup(m, _state(ctx, ego, [lanes_rb(m, s[0]) for s in info.fwd_lanes]), p)


def stalled_vehicle(ctx: _Ctx, name: str) -> Setup:
    return _blocked_lane(ctx, name, "stalled")


def construction_narrowing(ctx: _Ctx, name: str) -> Setup:
    return _blocked_lane(ctx, name, "construction")


def pedestrian_crossing(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    s_e = float(r.uniform(30, 50))
    jaywalk = r.random() < 0.5
    v_lim = float(r.choice([8.3, 11.1, 13.9]))
    cross_s = s_e + float(r.uniform(45, 110))
    m, info, p = _corridor(ctx, name, curve=False, speed_limit=v_lim, n_fwd=int(r.integers(1, 3)),
                           crosswalk_s=None if jaywalk else cross_s)
    j = int(r.integers(len(info.fwd_lanes[0])))
    v = v_lim * float(r.uniform(0.8, 1.0))
    ego = _ego(_fwd_seq(m, info, j), s_e, v, v)
    keep: set[str] = set()
    if jaywalk:
        # Steps out from behind a parked car on the right, when the ego is close but can still stop.
        x, y, h = Polyline(info.shoulder_path).pose(cross_s - 3.0)
        car = ctx.static_box("vehicle", x, y, h, (4.6, 1.9, 1.6), CAR_COLORS[int(r.integers(12))])
        ctx.agents.append(car)
        keep.add(car.id)
        start = Polyline(info.sidewalk_paths[0]).pose(cross_s)[:2]
        end = Polyline(info.sidewalk_paths[1]).pose(cross_s)[:2]
        trig = v * v / (2 * 3.5) + float(r.uniform(14, 28))
        ped = ctx.pedestrian(resample(np.stack([start, end]), 0.5), float(r.uniform(1.3, 2.2)), {"trigger_dist": trig})
        ctx.agents.append(ped)
        keep.add(ped.id)
        p.update({"jaywalk": True, "trigger_dist": trig})
    else:
        path = info.crosswalk_paths[0]
        for _ in range(int(r.integers(1, 4))):
            pts = path if r.random() < 0.5 else path[::-1]
            ped = ctx.pedestrian(resample(pts, 0.5), float(r.uniform(1.0, 1.6)), {"t": float(r.uniform(0.0, ctx.duration - 6))})
            ctx.agents.append(ped)
            keep.add(ped.id)
        p.update({"jaywalk": False})
    p["crossing_s"] = cross_s - s_e
    _corridor_traffic(ctx, m, info, v_lim, j, s_e, density=float(r.uniform(0.05, 0.3)), keep_clear=(-15, 200))
    _drop_overlaps(ctx, m, keep)
    return Setup(m, _state(ctx, ego, [lanes_rb(m, s[0]) for s in info.fwd_lanes]), p)


def merge(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    ramp_end = float(r.choice([160.0, 200.0, 240.0]))
    m, info, p = _corridor(ctx, name, curve=False, ramp_end=ramp_end, n_bwd=int(r.integers(0, 2)))
    n = len(info.fwd_lanes[0])
    v = p["speed_limit"] * float(r.uniform(0.7, 0.9))
    s_e = float(r.uniform(20, 50))
    route = [lanes_rb(m, s[0]) for s in info.fwd_lanes]
    ego = _ego(route_lanes(m, info.ramp_lanes[0], route), s_e, v, p["speed_limit"] * 0.95)
    _corridor_traffic(ctx, m, info, p["speed_limit"], -1, s_e, density=float(r.uniform(0.3, 0.7)), parked=False)
    ctx.spawn_stream(_fwd_seq(m, info, n - 1), p["speed_limit"] * 0.9, rate=0.25)
    p["ramp_end"] = ramp_end
    return Setup(m, _state(ctx, ego, route), p)


# --- intersections --------------------------------------------------------------------------------------------
def _junction(ctx: _Ctx, name: str, four_way: bool | None = None, need: tuple[int, ...] = ()) -> tuple[MapAPI, MapInfo, dict]:
    r = ctx.rng
    four = bool(r.random() < 0.7) if four_way is None else four_way
    arms = (0, 1, 2, 3)
    if not four:
        options = [a for a in (0, 1, 3) if a not in need]
        missing = int(r.choice(options))
        arms = tuple(a for a in arms if a != missing)
    p = {"arms": list(arms), "lanes_x": int(r.integers(1, 3)), "lanes_y": int(r.integers(1, 3)),
         "lane_width": float(r.uniform(3.3, 3.7)), "speed_limit": float(r.choice([11.1, 13.9]))}
    m, info = build_intersection(name, _placement(r), arms=arms, lanes_x=p["lanes_x"], lanes_y=p["lanes_y"],
                                 lane_width=p["lane_width"], speed_limit=p["speed_limit"])
    return m, info, p


def _cycle(g_a: float, g_b: float) -> list:
    return [["TL_A", "green", g_a], ["TL_A", "yellow", 3.0], ["all", "red", 1.5],
            ["TL_B", "green", g_b], ["TL_B", "yellow", 3.0], ["all", "red", 1.5]]


def _props(info: MapInfo) -> dict:
    return {"light_heads": [[h.light_id, h.x, h.y, h.heading] for h in info.light_heads],
            "poles": [list(p) for p in info.poles]}


def _junction_traffic(ctx: _Ctx, m: MapAPI, info: MapInfo, v_lim: float, density: float, skip_arm: int = 2,
                      through_only: tuple[int, ...] = ()) -> None:
    """Streams into the junction from every other arm, each vehicle with a random allowed movement."""
    r = ctx.rng
    for i in info.arms:
        if i == skip_arm:
            continue
        for k, lid in enumerate(info.incoming[i]):
            moves = [(i, j) for j in info.arms if j != i and any(c.endswith(f"_{k}") for c in info.movements[(i, j)])]
            if i in through_only:
                moves = [mv for mv in moves if (mv[1] - mv[0]) % 4 == 2] or moves
            t = float(r.uniform(0.0, 3.0))
            while t < ctx.duration:
                mv = moves[int(r.integers(len(moves)))]
                conn = [c for c in info.movements[mv] if c.endswith(f"_{k}")][0]
                lanes = [lid, conn, m.lanes[conn].successors[0]]
                v0 = v_lim * float(r.uniform(0.8, 1.0))
                a = ctx.vehicle(lanes, 0.0, v0 * 0.9, v0)
                ctx.spawns.append({"t": round(t, 1), "agent": a.to_dict()})
                t += max(2.5, float(r.exponential(1.0 / (0.3 * density + 0.05))))


def _ego_at_junction(ctx: _Ctx, m: MapAPI, info: MapInfo, turn: str, dist: float, v: float, v0: float) -> tuple[Agent, list[str]]:
    to = {"straight": 0, "left": 1, "right": 3}[turn]
    inc = info.incoming[2]
    k = 0 if turn == "left" else len(inc) - 1 if turn == "right" else int(ctx.rng.integers(len(inc)))
    conn = [c for c in info.movements[(2, to)] if c.endswith(f"_{k}")][0]
    lanes = [inc[k], conn, m.lanes[conn].successors[0]]
    lane_len = Polyline(m.lanes[inc[k]].centerline).length
    ego = _ego(lanes, max(1.0, lane_len - dist), v, v0)
    return ego, [m.lanes[x].roadblock_id for x in lanes]


def _turn_options(info: MapInfo) -> list[str]:
    return [t for t, arm in (("straight", 0), ("left", 1), ("right", 3)) if arm in info.arms]


def red_light(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    m, info, p = _junction(ctx, name, need=(0,))
    turn = "straight" if r.random() < 0.7 else str(r.choice(_turn_options(info)))
    v = p["speed_limit"] * float(r.uniform(0.8, 1.0))
    ego, route = _ego_at_junction(ctx, m, info, turn, float(r.uniform(35, 80)), v, v)
    g_a, g_b = float(r.uniform(8, 14)), float(r.uniform(8, 16))
    t_yellow = float(r.uniform(-2.0, 4.0))  # when the ego's light turns yellow (negative: already red at start)
    lights = {"cycle": _cycle(g_a, g_b), "offset": g_a - t_yellow}
    _junction_traffic(ctx, m, info, p["speed_limit"], density=float(r.uniform(0.3, 0.8)))
    p.update({"turn": turn, "t_yellow": t_yellow})
    return Setup(m, _state(ctx, ego, route, lights, _props(info)), p)


def unprotected_left(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    m, info, p = _junction(ctx, name, four_way=True)
    v = p["speed_limit"] * float(r.uniform(0.6, 0.9))
    ego, route = _ego_at_junction(ctx, m, info, "left", float(r.uniform(25, 60)), v, v)
    g_a = float(r.uniform(18, 30))
    lights = {"cycle": _cycle(g_a, 10.0), "offset": float(r.uniform(0.0, 4.0))}  # green for the ego at start
    _junction_traffic(ctx, m, info, p["speed_limit"], density=float(r.uniform(0.2, 0.5)), through_only=(0,))
    for k, lid in enumerate(info.incoming[0]):  # a dense oncoming stream
        conn = [c for c in info.movements[(0, 2)] if c.endswith(f"_{k}")][0]
        ctx.spawn_stream([lid, conn, m.lanes[conn].successors[0]], p["speed_limit"] * 0.95, rate=float(r.uniform(0.15, 0.35)),
                         t_from=0.0)
    return Setup(m, _state(ctx, ego, route, lights, _props(info)), p)


def intersection_turn(ctx: _Ctx, name: str) -> Setup:
    r = ctx.rng
    m, info, p = _junction(ctx, name)
    turn = str(r.choice(_turn_options(info)))
    v = p["speed_limit"] * float(r.uniform(0.6, 0.95))
    ego, route = _ego_at_junction(ctx, m, info, turn, float(r.uniform(30, 70)), v, v)
    g_a = float(r.uniform(12, 25))
    lights = {"cycle": _cycle(g_a, float(r.uniform(8, 14))), "offset": float(r.uniform(0.0, g_a))}
    _junction_traffic(ctx, m, info, p["speed_limit"], density=float(r.uniform(0.2, 0.6)))
    exit_arm = {"straight": 0, "left": 1, "right": 3}[turn]
    for _ in range(int(r.integers(0, 3))):  # pedestrians on the exit arm's crosswalk
        pts = info.arm_crosswalk_paths[exit_arm]
        pts = pts if r.random() < 0.5 else pts[::-1]
        ctx.agents.append(ctx.pedestrian(resample(pts, 0.5), float(r.uniform(1.0, 1.5)), {"t": float(r.uniform(0, ctx.duration))}))
    p["turn"] = turn
    return Setup(m, _state(ctx, ego, route, lights, _props(info)), p)


BUILDERS: dict[str, Callable[[_Ctx, str], Setup]] = {
    "cruise": cruise, "follow_brake": follow_brake, "cut_in": cut_in, "stalled_vehicle": stalled_vehicle,
    "pedestrian_crossing": pedestrian_crossing, "red_light": red_light, "unprotected_left": unprotected_left,
    "intersection_turn": intersection_turn, "construction_narrowing": construction_narrowing, "merge": merge,
}


def build(family: str, rng: np.random.Generator, name: str, duration: float) -> Setup:
    if family not in BUILDERS:
        raise ValueError(f"unknown scenario family '{family}'; valid families: {list(FAMILIES)}")
    ctx = _Ctx(rng, duration)
    setup = BUILDERS[family](ctx, name)
    setup.state["info"] = {**setup.state.get("info", {}), "family": family}
    return setup
