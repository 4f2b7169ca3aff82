"""Write a :class:`MapAPI` as a nuPlan map package (``<maps_root>/<map>/<version>/map.gpkg`` + the json index).

The layers and columns are those of nuPlan's ``nuplan-maps-v1.0`` GeoPackages as nuplan-devkit reads them; the
format decisions (FIDs, boundary types, traffic lights, direct lane links) are documented in
:mod:`latentvla.data.nuplan_map`. Writing first plans every object and its FID (validating that the map fits
nuPlan's topology), then emits the tables into a temporary file that is moved into place.
"""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from latentvla.data.nuplan_gpkg import (
    add_attribute_table,
    add_feature_table,
    atomic_write_bytes,
    create_gpkg,
    parse_utm_epsg,
    register_map,
)
from latentvla.map_api import Lane, MapAPI

DEFAULT_EPSG = 32619  # WGS 84 / UTM 19N, the CRS of us-ma-boston (map version 9.12.1817)
DIRECT_LINK_LENGTH = 5e-7  # [m] baseline of a connector standing in for a direct lane -> lane link
BOUNDARY_TYPE_FID = {"dashed_white": 0, "solid_white": 2, "solid_yellow": 2, "none": 3}
STOP_TRAFFIC_LIGHT, STOP_UNKNOWN = 2, 5  # nuPlan StopLineType values
INTERSECTION_DEFAULT, INTERSECTION_TRAFFIC_LIGHT = 0, 1  # nuPlan IntersectionType values
_TYPES = {"i": "INTEGER", "m": "MEDIUMINT", "r": "REAL", "t": "TEXT", "b": "BOOLEAN"}


def _cols(spec: str) -> list[tuple[str, str]]:
    return [(name, _TYPES[code]) for name, code in (item.split(":") for item in spec.split())]


# Column lists of nuPlan's map.gpkg (extension columns carry what nuPlan cannot and start with "latentvla_").
SCHEMAS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "lanes_polygons": ("POLYGON", _cols(
        "lane_group_fid:i lane_fid:i lane_index:m creator_id:t name:t road_type_fid:i lane_type_fid:i width:m "
        "left_offset:r right_offset:r min_speed:r max_speed:r stops:m left_boundary_fid:i right_boundary_fid:i "
        "speed_limit_mps:r left_has_reflectors:b right_has_reflectors:b from_edge_fid:i to_edge_fid:i")),
    "lane_connectors": ("LINESTRING", _cols(
        "exit_lane_group_fid:i exit_lane_fid:i entry_lane_group_fid:i lane_group_connector_fid:i entry_lane_fid:i "
        "intersection_fid:i turn_type_fid:i bulb_fids:t traffic_light_stop_line_fids:t overlap:m creator_id:t "
        "reflector_side_fid:i left_has_reflectors:b right_has_reflectors:b speed_limit_mps:r "
        "latentvla_traffic_light_id:t latentvla_direct_link:b")),
    "gen_lane_connectors_scaled_width_polygons": ("POLYGON", _cols(
        "baseline_path_fid:i lane_connector_fid:i from_edge_fid:i to_edge_fid:i left_boundary_fid:i "
        "right_boundary_fid:i")),
    "baseline_paths": ("LINESTRING", _cols(
        "path_type_fid:i creator_id:t lane_fid:i lane_connector_fid:i dubins_node_fids:t")),
    "boundaries": ("LINESTRING", _cols(
        "boundary_segment_fids:t has_reflectors:b boundary_type_fid:i creator_id:t latentvla_boundary_type:t")),
    "lane_groups_polygons": ("POLYGON", _cols(
        "creator_id:t left_boundary_fid:i right_boundary_fid:i from_edge_fid:i to_edge_fid:i")),
    "lane_group_connectors": ("POLYGON", _cols(
        "intersection_fid:i from_lane_group_fid:i to_lane_group_fid:i creator_id:t from_edge_fid:i to_edge_fid:i "
        "left_boundary_fid:i right_boundary_fid:i")),
    "road_segments": ("POLYGON", _cols("lane_group_fids:t creator_id:t")),
    "stop_polygons": ("POLYGON", _cols(
        "stop_polygon_type_fid:i lane_group_fid:i lane_fids:t lane_connector_fids:t traffic_light_fids:t "
        "crosswalk_fids:t precedence_area_fids:t creator_id:t")),
    "intersections": ("POLYGON", _cols("creator_id:t intersection_type_fid:i is_mini:b")),
    "crosswalks": ("POLYGON", _cols("intersection_fids:t lane_fids:t creator_id:t is_marked:b")),
    "walkways": ("POLYGON", _cols("creator_id:t")),
    "carpark_areas": ("POLYGON", _cols("heading:r creator_id:t")),
    "generic_drivable_areas": ("POLYGON", _cols("creator_id:t")),
    "traffic_lights": ("POINT", _cols("creator_id:t")),  # present in nuPlan maps; we have no light positions
    "dubins_nodes": ("POINT", _cols("radius:r heading:r creator_id:t")),
}
LAYER_TABLES = {  # our polygon layers (besides roadblocks and stop lines) -> nuPlan tables
    "intersection": "intersections", "crosswalk": "crosswalks", "walkway": "walkways",
    "carpark": "carpark_areas", "drivable_area": "generic_drivable_areas",
}
CREATOR = "latentvla"


@dataclass
class _Conn:
    """A nuPlan lane connector: one of ours, or a synthetic stand-in for a direct lane -> lane link."""

    key: str
    exit_lane: str
    entry_lane: str
    group: str  # roadblock-connector key
    lane: Lane
    direct: bool


@dataclass
class _Plan:
    lanes: dict[str, Lane]
    conns: dict[str, _Conn]
    groups: dict[str, list[str]]  # roadblock id -> lane ids by lane_index
    lane_index: dict[str, int]
    group_conns: dict[str, tuple[str, str]]  # roadblock-connector key -> (from roadblock, to roadblock)
    fid: dict[str, int] = field(default_factory=dict)  # our ids and synthetic keys -> FID
    kind: dict[str, str] = field(default_factory=dict)  # id -> category (for ambiguity errors)


def _check_name(value: str, what: str) -> None:
    if not value or not re.fullmatch(r"[A-Za-z0-9._-]+", value) or value in (".", ".."):
        raise ValueError(f"{what} '{value}' must be a plain directory name (letters, digits, '.', '_', '-')")


def _direct_lane(a: Lane, b: Lane) -> Lane:
    """Boundaries and baseline of the connector standing in for a direct link from lane ``a`` to lane ``b``."""

    def seg(p: np.ndarray, q: np.ndarray, ref: np.ndarray) -> np.ndarray:
        d = q - p
        dist = float(np.hypot(*d))
        if dist >= 1e-6:
            return np.stack([p, q])
        d = d if dist > 1e-12 else ref
        return np.stack([p, p + DIRECT_LINK_LENGTH * d / max(float(np.hypot(*d)), 1e-300)])

    ref = b.centerline[1] - b.centerline[0]
    if float(np.hypot(*ref)) <= 1e-12:
        ref = a.centerline[-1] - a.centerline[-2]
    return Lane(
        id=f"{a.id}->{b.id}", centerline=seg(a.centerline[-1], b.centerline[0], ref),
        left_boundary=seg(a.left_boundary[-1], b.left_boundary[0], ref),
        right_boundary=seg(a.right_boundary[-1], b.right_boundary[0], ref),
        roadblock_id=f"{a.roadblock_id}->{b.roadblock_id}", is_connector=True, speed_limit=a.speed_limit,
    )


def _lane_order(lanes: list[Lane]) -> list[str | None]:
    """Lanes of one roadblock left to right along right-neighbour chains; ``None`` gaps separate chains."""
    ids = {ln.id for ln in lanes}
    right = {ln.id: ln.right_neighbor for ln in lanes if ln.right_neighbor in ids}
    is_right_of_someone = set(right.values())
    order: list[str | None] = []
    seen: set[str] = set()
    for head in sorted(ids - is_right_of_someone) + sorted(ids):
        if head in seen:
            continue
        if order:
            order.append(None)  # an index gap: nuPlan derives neighbours from lane_index +- 1
        cur: str | None = head
        while cur is not None and cur not in seen:
            seen.add(cur)
            order.append(cur)
            cur = right.get(cur)
    return order


def _plan(m: MapAPI) -> _Plan:
    lanes = {k: v for k, v in m.lanes.items() if not v.is_connector}
    ours = {k: v for k, v in m.lanes.items() if v.is_connector}
    for ln in m.lanes.values():
        if len(ln.centerline) < 2 or len(ln.left_boundary) < 2 or len(ln.right_boundary) < 2:
            raise ValueError(f"lane {ln.id}: centerline and boundaries need at least two points each")
    edges: set[tuple[str, str]] = set()
    for ln in m.lanes.values():
        for s in ln.successors:
            edges.add((ln.id, s))
        for p in ln.predecessors:
            edges.add((p, ln.id))
    for a, b in sorted(edges):
        if a not in m.lanes or b not in m.lanes:
            raise ValueError(f"lane link {a} -> {b} names a lane that is not in map '{m.name}'")
        if a in ours and b in ours:
            raise ValueError(f"lane connectors {a} -> {b} are chained; nuPlan connects lanes only through "
                             f"single connectors (lane -> connector -> lane)")
    conns: dict[str, _Conn] = {}
    for cid, c in sorted(ours.items()):
        ins = sorted(a for a, b in edges if b == cid)
        outs = sorted(b for a, b in edges if a == cid)
        if len(ins) != 1 or len(outs) != 1:
            raise ValueError(f"lane connector {cid} has predecessors {ins} and successors {outs}; a nuPlan lane "
                             f"connector needs exactly one of each")
        conns[cid] = _Conn(cid, ins[0], outs[0], c.roadblock_id, c, direct=False)
    for a, b in sorted((a, b) for a, b in edges if a in lanes and b in lanes):
        ln = _direct_lane(lanes[a], lanes[b])
        conns[ln.id] = _Conn(ln.id, a, b, ln.roadblock_id, ln, direct=True)

    rb_polys = m.layer("roadblock")
    lane_rbs = {ln.roadblock_id for ln in lanes.values()}
    group_conns: dict[str, tuple[str, str]] = {}
    for key in sorted({c.group for c in conns.values()}):
        members = [c for c in conns.values() if c.group == key]
        if key in lane_rbs or key in rb_polys:
            raise ValueError(f"roadblock {key} holds lane connectors and also lanes or a 'roadblock' polygon; "
                             f"nuPlan keeps roadblock connectors apart from roadblocks")
        froms = sorted({lanes[c.exit_lane].roadblock_id for c in members})
        tos = sorted({lanes[c.entry_lane].roadblock_id for c in members})
        if len(froms) != 1 or len(tos) != 1:
            raise ValueError(f"roadblock connector {key} links roadblocks {froms} to {tos}; nuPlan needs exactly "
                             f"one roadblock on each side")
        group_conns[key] = (froms[0], tos[0])

    groups: dict[str, list[str]] = {}
    lane_index: dict[str, int] = {}
    by_rb: dict[str, list[Lane]] = defaultdict(list)
    for ln in lanes.values():
        by_rb[ln.roadblock_id].append(ln)
    for rb in sorted(lane_rbs | set(rb_polys)):
        order = _lane_order(by_rb.get(rb, []))
        groups[rb] = [x for x in order if x is not None]
        lane_index.update({x: i for i, x in enumerate(order) if x is not None})
    plan = _Plan(lanes, conns, groups, lane_index, group_conns)

    # FIDs: one counter over every table, in a fixed category order and sorted ids within a category.
    our_groups = {c.roadblock_id for c in ours.values()}
    cats: list[tuple[str, list[str]]] = [
        ("lane", sorted(lanes)),
        ("lane connector", sorted(k for k, c in conns.items() if not c.direct)),
        ("direct-link connector", sorted(k for k, c in conns.items() if c.direct)),
        ("roadblock", sorted(groups)),
        ("roadblock connector", sorted(k for k in group_conns if k in our_groups)),
        ("direct-link roadblock connector", sorted(k for k in group_conns if k not in our_groups)),
    ]
    cats += [(layer, sorted(m.layer(layer))) for layer in (*LAYER_TABLES, "stop_line")]
    missing = sorted(set(m.stop_line_lanes) - set(m.layer("stop_line")))
    if missing:
        raise ValueError(f"stop_line_lanes names stop lines {missing} that have no 'stop_line' polygon")
    # equal-width FIDs (10^k ...): their strings sort like the integers, i.e. in our sorted id order, so code that
    # breaks ties by id string behaves the same on the export as on the original map
    nxt = 10 ** len(str(sum(len(ids) for _, ids in cats)))
    for kind, ids in cats:
        for oid in ids:
            if oid in plan.fid:
                raise ValueError(f"id '{oid}' is used by a {plan.kind[oid]} and a {kind}; the returned id mapping "
                                 f"needs map-wide unique ids")
            plan.fid[oid], plan.kind[oid], nxt = nxt, kind, nxt + 1
    return plan


def _poly(ring: np.ndarray) -> shapely.Polygon:
    return shapely.Polygon(np.asarray(ring, dtype=np.float64))


def _lane_poly(ln: Lane) -> shapely.Polygon:
    return _poly(np.concatenate([ln.left_boundary, ln.right_boundary[::-1]]))


def _as_polygon(geom: shapely.Geometry) -> shapely.Polygon:
    """A single polygon for a nuPlan POLYGON column (convex hull of anything else)."""
    if isinstance(geom, shapely.Polygon) and not geom.is_empty:
        return geom
    hull = geom.convex_hull
    return hull if isinstance(hull, shapely.Polygon) and not hull.is_empty else hull.buffer(1e-6)


def _turn_type(cl: np.ndarray) -> int:
    d0, d1 = cl[1] - cl[0], cl[-1] - cl[-2]
    dh = float(np.degrees(np.arctan2(d0[0] * d1[1] - d0[1] * d1[0], d0 @ d1)))
    return 0 if abs(dh) < 30 else 3 if abs(dh) > 150 else 1 if dh > 0 else 2


def _write_tables(path: Path, m: MapAPI, plan: _Plan, epsg: int) -> None:
    fid = plan.fid
    nxt = max(fid.values(), default=0) + 1
    tables: dict[str, list[tuple[int, shapely.Geometry, dict]]] = {t: [] for t in SCHEMAS}
    boundary_fid: dict[tuple[str, bytes], int] = {}

    def new_fid() -> int:
        nonlocal nxt
        nxt += 1
        return nxt - 1

    def boundary(line: np.ndarray, kind: str) -> int:
        key = (kind, np.ascontiguousarray(line, dtype=np.float64).tobytes())
        if key not in boundary_fid:
            boundary_fid[key] = new_fid()
            tables["boundaries"].append((boundary_fid[key], shapely.LineString(line), {
                "boundary_type_fid": BOUNDARY_TYPE_FID[kind], "has_reflectors": 0, "creator_id": CREATOR,
                "latentvla_boundary_type": kind}))
        return boundary_fid[key]

    for lid in sorted(plan.lanes):
        ln = plan.lanes[lid]
        left, right = boundary(ln.left_boundary, ln.left_boundary_type), boundary(ln.right_boundary, ln.right_boundary_type)
        tables["lanes_polygons"].append((fid[lid], _lane_poly(ln), {
            "lane_group_fid": fid[ln.roadblock_id], "lane_fid": fid[lid], "lane_index": plan.lane_index[lid],
            "creator_id": CREATOR, "lane_type_fid": 0, "left_boundary_fid": left, "right_boundary_fid": right,
            "speed_limit_mps": float(ln.speed_limit), "left_has_reflectors": 0, "right_has_reflectors": 0}))
        tables["baseline_paths"].append((new_fid(), shapely.LineString(ln.centerline),
                                         {"lane_fid": fid[lid], "creator_id": CREATOR}))

    # Stop lines: governed lanes, and which of them lead into signalised connectors.
    governed = {sid: set(lids) for sid, lids in m.stop_line_lanes.items()}
    conn_stops: dict[str, list[str]] = defaultdict(list)
    for key, c in sorted(plan.conns.items()):
        if c.lane.traffic_light_id:
            conn_stops[key] = sorted((s for s, lids in governed.items() if c.exit_lane in lids), key=fid.get)
    inter_polys = {iid: shapely.make_valid(_poly(r)) for iid, r in m.layer("intersection").items()}
    signalised: set[str] = set()

    def intersection_of(geom: shapely.Geometry) -> str | None:
        best = max(inter_polys, key=lambda i: (inter_polys[i].intersection(geom).area, i), default=None)
        return best if best is not None and inter_polys[best].intersection(geom).area > 0 else None

    group_geom: dict[str, list[shapely.Geometry]] = defaultdict(list)
    for key in sorted(plan.conns, key=fid.get):
        c = plan.conns[key]
        ln = c.lane
        poly = _lane_poly(ln)
        group_geom[c.group].append(shapely.make_valid(poly))
        inter = intersection_of(shapely.make_valid(poly))
        if inter and c.lane.traffic_light_id:
            signalised.add(inter)
        bp = new_fid()
        exit_rb, entry_rb = plan.group_conns[c.group]
        tables["lane_connectors"].append((fid[key], shapely.LineString(ln.centerline), {
            "exit_lane_group_fid": fid[exit_rb], "exit_lane_fid": fid[c.exit_lane],
            "entry_lane_group_fid": fid[entry_rb], "entry_lane_fid": fid[c.entry_lane],
            "lane_group_connector_fid": fid[c.group], "intersection_fid": fid.get(inter) if inter else None,
            "turn_type_fid": _turn_type(ln.centerline), "bulb_fids": "",
            "traffic_light_stop_line_fids": ",".join(str(fid[s]) for s in conn_stops.get(key, [])),
            "overlap": 0, "creator_id": CREATOR, "left_has_reflectors": 0, "right_has_reflectors": 0,
            "speed_limit_mps": float(ln.speed_limit), "latentvla_traffic_light_id": ln.traffic_light_id,
            "latentvla_direct_link": int(c.direct)}))
        tables["baseline_paths"].append((bp, shapely.LineString(ln.centerline),
                                         {"lane_connector_fid": fid[key], "creator_id": CREATOR}))
        tables["gen_lane_connectors_scaled_width_polygons"].append((new_fid(), poly, {
            "baseline_path_fid": bp, "lane_connector_fid": fid[key],
            "left_boundary_fid": boundary(ln.left_boundary, ln.left_boundary_type),
            "right_boundary_fid": boundary(ln.right_boundary, ln.right_boundary_type)}))

    rb_polys = m.layer("roadblock")
    for rb in sorted(plan.groups, key=fid.get):
        lids = plan.groups[rb]
        if rb in rb_polys:
            geom = _poly(rb_polys[rb])
        else:  # lanes without a roadblock polygon: the union of their lane polygons
            geom = _as_polygon(shapely.union_all([shapely.make_valid(_lane_poly(plan.lanes[x])) for x in lids]))
        first, last = (plan.lanes[lids[0]], plan.lanes[lids[-1]]) if lids else (None, None)
        tables["lane_groups_polygons"].append((fid[rb], geom, {
            "creator_id": CREATOR,
            "left_boundary_fid": boundary(first.left_boundary, first.left_boundary_type) if first else None,
            "right_boundary_fid": boundary(last.right_boundary, last.right_boundary_type) if last else None}))
        tables["road_segments"].append((new_fid(), geom, {"lane_group_fids": str(fid[rb]), "creator_id": CREATOR}))
    for key in sorted(plan.group_conns, key=fid.get):
        a, b = plan.group_conns[key]
        geom = _as_polygon(shapely.union_all(group_geom[key]))
        inter = intersection_of(geom)
        tables["lane_group_connectors"].append((fid[key], geom, {
            "intersection_fid": fid.get(inter) if inter else None, "from_lane_group_fid": fid[a],
            "to_lane_group_fid": fid[b], "creator_id": CREATOR}))

    for layer, table in LAYER_TABLES.items():
        for pid, ring in sorted(m.layer(layer).items(), key=lambda kv: fid[kv[0]]):
            values: dict = {"creator_id": CREATOR}
            if layer == "intersection":
                values.update(intersection_type_fid=INTERSECTION_TRAFFIC_LIGHT if pid in signalised
                              else INTERSECTION_DEFAULT, is_mini=0)
            elif layer == "crosswalk":
                values.update(is_marked=1)
            tables[table].append((fid[pid], _poly(ring), values))
    for sid, ring in sorted(m.layer("stop_line").items(), key=lambda kv: fid[kv[0]]):
        lids = sorted(governed.get(sid, set()), key=fid.get)
        rbs = {m.lanes[x].roadblock_id for x in lids if not m.lanes[x].is_connector}
        lights = any(sid in stops for stops in conn_stops.values())
        tables["stop_polygons"].append((fid[sid], _poly(ring), {
            "stop_polygon_type_fid": STOP_TRAFFIC_LIGHT if lights else STOP_UNKNOWN,
            "lane_group_fid": fid[rbs.pop()] if len(rbs) == 1 else None,
            "lane_fids": ",".join(str(fid[x]) for x in lids if not m.lanes[x].is_connector),
            "lane_connector_fids": ",".join(str(fid[x]) for x in lids if m.lanes[x].is_connector),
            "creator_id": CREATOR}))

    conn = sqlite3.connect(path)
    try:
        create_gpkg(conn, epsg)
        for table, (geom_type, columns) in SCHEMAS.items():
            add_feature_table(conn, table, geom_type, epsg, columns, sorted(tables[table], key=lambda r: r[0]))
        add_attribute_table(conn, "meta", [("key", "TEXT"), ("value", "TEXT")], [
            ("projectedCoordSystem", f"epsg:{epsg}"), ("geographicCoordSystem", "epsg:4326"),
            ("latentvla_writer", "latentvla.data.nuplan_map_write 1")])
        conn.commit()
    finally:
        conn.close()


def write_nuplan_map(map_api: MapAPI, maps_root: Path, map_name: str, version: str = "9.12.1817", *,
                     epsg: int = DEFAULT_EPSG) -> dict[str, str]:
    """Write ``maps_root/<map_name>/<version>/map.gpkg`` and register it in ``nuplan-maps-v1.0.json``.

    Returns {our id -> nuPlan FID string} for every lane, lane connector, roadblock, roadblock connector and
    polygon (intersection, crosswalk, walkway, carpark, drivable area, stop line), plus ``"A->B"`` keys for the
    connectors and roadblock connectors synthesised for direct lane links. ``epsg`` is the WGS84 UTM CRS the
    coordinates are declared in (they are written unchanged).
    """
    _check_name(map_name, "map_name")
    _check_name(version, "version")
    if parse_utm_epsg(f"epsg:{epsg}") is None:
        raise ValueError(f"epsg {epsg} is not a WGS84 UTM zone (32601-32660 or 32701-32760)")
    plan = _plan(map_api)
    maps_root = Path(maps_root)
    atomic_write_bytes(maps_root / map_name / version / "map.gpkg", lambda tmp: _write_tables(tmp, map_api, plan, epsg))
    register_map(maps_root, map_name, version)
    return {k: str(v) for k, v in sorted(plan.fid.items(), key=lambda kv: kv[1])}
