"""HD map API shared by all data sources: lanes with connectivity, polygon layers, stop lines, drivable area.

Layer names follow nuPlan: only ``roadblock``, ``intersection``, ``drivable_area`` and ``carpark`` polygons are
drivable (NAVSIM's PDM drivable map). Lanes carry centerline, both boundaries (with marking types, used by the
renderer and lane keeping), successors and same-direction neighbours. Coordinates are global metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import shapely

DRIVABLE_LAYERS: tuple[str, ...] = ("roadblock", "intersection", "drivable_area", "carpark")
POLYGON_LAYERS: tuple[str, ...] = DRIVABLE_LAYERS + ("crosswalk", "walkway", "stop_line")
BOUNDARY_TYPES: tuple[str, ...] = ("none", "dashed_white", "solid_white", "solid_yellow")


@dataclass
class Lane:
    """A lane or lane connector. Polylines are (N, 2) float64 in driving direction."""

    id: str
    centerline: np.ndarray
    left_boundary: np.ndarray
    right_boundary: np.ndarray
    roadblock_id: str
    successors: list[str] = field(default_factory=list)
    predecessors: list[str] = field(default_factory=list)
    left_neighbor: str | None = None
    right_neighbor: str | None = None
    is_connector: bool = False
    speed_limit: float = 13.9  # m/s
    left_boundary_type: str = "none"
    right_boundary_type: str = "none"
    traffic_light_id: str | None = None  # the controlling light group (connectors at signalised junctions)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "centerline": self.centerline.tolist(),
            "left_boundary": self.left_boundary.tolist(),
            "right_boundary": self.right_boundary.tolist(),
            "roadblock_id": self.roadblock_id,
            "successors": list(self.successors),
            "predecessors": list(self.predecessors),
            "left_neighbor": self.left_neighbor,
            "right_neighbor": self.right_neighbor,
            "is_connector": self.is_connector,
            "speed_limit": self.speed_limit,
            "left_boundary_type": self.left_boundary_type,
            "right_boundary_type": self.right_boundary_type,
            "traffic_light_id": self.traffic_light_id,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Lane:
        return cls(
            id=d["id"],
            centerline=np.asarray(d["centerline"], dtype=np.float64).reshape(-1, 2),
            left_boundary=np.asarray(d["left_boundary"], dtype=np.float64).reshape(-1, 2),
            right_boundary=np.asarray(d["right_boundary"], dtype=np.float64).reshape(-1, 2),
            roadblock_id=d["roadblock_id"],
            successors=list(d.get("successors", [])),
            predecessors=list(d.get("predecessors", [])),
            left_neighbor=d.get("left_neighbor"),
            right_neighbor=d.get("right_neighbor"),
            is_connector=bool(d.get("is_connector", False)),
            speed_limit=float(d.get("speed_limit", 13.9)),
            left_boundary_type=d.get("left_boundary_type", "none"),
            right_boundary_type=d.get("right_boundary_type", "none"),
            traffic_light_id=d.get("traffic_light_id"),
        )

    @cached_property
    def polygon(self) -> shapely.Polygon:
        ring = np.concatenate([self.left_boundary, self.right_boundary[::-1]])
        return shapely.make_valid(shapely.Polygon(ring))


@dataclass
class MapAPI:
    """One map: lanes plus named polygon layers. ``polygons[layer][id]`` is an (N, 2) exterior ring."""

    name: str
    lanes: dict[str, Lane] = field(default_factory=dict)
    polygons: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    stop_line_lanes: dict[str, list[str]] = field(default_factory=dict)  # stop line id -> lane ids it governs

    def __post_init__(self) -> None:
        for layer in self.polygons:
            if layer not in POLYGON_LAYERS:
                raise ValueError(f"unknown map layer '{layer}'; valid layers: {list(POLYGON_LAYERS)}")
        for lane in self.lanes.values():
            for t in (lane.left_boundary_type, lane.right_boundary_type):
                if t not in BOUNDARY_TYPES:
                    raise ValueError(f"lane {lane.id}: unknown boundary type '{t}'; valid: {list(BOUNDARY_TYPES)}")

    # --- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "lanes": [self.lanes[k].to_dict() for k in sorted(self.lanes)],
            "polygons": {
                layer: {pid: ring.tolist() for pid, ring in sorted(items.items())}
                for layer, items in sorted(self.polygons.items())
            },
            "stop_line_lanes": {k: list(v) for k, v in sorted(self.stop_line_lanes.items())},
        }

    @classmethod
    def from_dict(cls, d: dict) -> MapAPI:
        return cls(
            name=d["name"],
            lanes={ld["id"]: Lane.from_dict(ld) for ld in d.get("lanes", [])},
            polygons={
                layer: {pid: np.asarray(r, dtype=np.float64).reshape(-1, 2) for pid, r in items.items()}
                for layer, items in d.get("polygons", {}).items()
            },
            stop_line_lanes={k: list(v) for k, v in d.get("stop_line_lanes", {}).items()},
        )

    # --- geometry ------------------------------------------------------------------------------------------
    def layer(self, name: str) -> dict[str, np.ndarray]:
        if name not in POLYGON_LAYERS:
            raise ValueError(f"unknown map layer '{name}'; valid layers: {list(POLYGON_LAYERS)}")
        return self.polygons.get(name, {})

    def layer_geometry(self, name: str) -> list[shapely.Polygon]:
        return [shapely.make_valid(shapely.Polygon(r)) for r in self.layer(name).values()]

    @cached_property
    def drivable_area(self) -> shapely.Geometry:
        """Union of the drivable layers (points on its boundary count as outside, as NAVSIM's contains_xy)."""
        polys = [p for layer in DRIVABLE_LAYERS for p in self.layer_geometry(layer)]
        if not polys:
            return shapely.Polygon()
        return shapely.union_all(polys)

    def is_drivable(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return shapely.contains_xy(self.drivable_area, xy[:, 0], xy[:, 1])

    def lane_ids_near(self, xy: np.ndarray, radius: float) -> list[str]:
        """Lanes whose centerline passes within ``radius`` of the point."""
        xy = np.asarray(xy, dtype=np.float64)
        out = []
        for lid, lane in self.lanes.items():
            d = np.min(np.hypot(*(lane.centerline - xy).T))
            if d <= radius:
                out.append(lid)
        return sorted(out)

    def route_lane_sequence(self, start: str, route: list[str], max_lanes: int = 200) -> list[str]:
        """Follow successors from lane ``start`` through the route's roadblocks, in route order."""
        seq = [start]
        order = {rb: i for i, rb in enumerate(route)}
        while len(seq) <= max_lanes:
            here = order.get(self.lanes[seq[-1]].roadblock_id, -1)
            nxt = [s for s in self.lanes[seq[-1]].successors if order.get(self.lanes[s].roadblock_id, -1) > here]
            if not nxt:
                break
            seq.append(min(nxt, key=lambda s: (order[self.lanes[s].roadblock_id], s)))
        return seq

    def roadblock_ids(self) -> list[str]:
        return sorted({lane.roadblock_id for lane in self.lanes.values()})

    def transformed(self, rotation: float, offset: np.ndarray, name: str | None = None) -> MapAPI:
        """Rotate by ``rotation`` about the origin, then translate; used to place a map in the global frame."""
        c, s = np.cos(rotation), np.sin(rotation)
        rot = np.array([[c, -s], [s, c]])
        off = np.asarray(offset, dtype=np.float64)

        def tf(a: np.ndarray) -> np.ndarray:
            return a @ rot.T + off

        lanes = {}
        for lid, ln in self.lanes.items():
            d = ln.to_dict()
            d["centerline"], d["left_boundary"], d["right_boundary"] = (
                tf(ln.centerline), tf(ln.left_boundary), tf(ln.right_boundary))
            lanes[lid] = Lane.from_dict(d)
        polygons = {layer: {pid: tf(r) for pid, r in items.items()} for layer, items in self.polygons.items()}
        return MapAPI(name or self.name, lanes, polygons, dict(self.stop_line_lanes))
