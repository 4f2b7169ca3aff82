"""Read a nuPlan map package (``nuplan-maps-v1.0``: json index + per-city ``map.gpkg``) into a :class:`MapAPI`.

Ids are nuPlan FIDs as strings. Lanes come from ``lanes_polygons`` + ``baseline_paths`` + ``boundaries``; lane
connectors from ``lane_connectors`` + their baseline paths + ``gen_lane_connectors_scaled_width_polygons``. The
format decisions and what survives a round trip are documented in :mod:`latentvla.data.nuplan_map`.
"""

from __future__ import annotations

import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely

from latentvla.data.nuplan_gpkg import decode_geometry, lonlat_transform, parse_utm_epsg, read_index
from latentvla.data.store import DataError
from latentvla.map_api import Lane, MapAPI

DEGENERATE_LENGTH = 1e-6  # [m] connectors with a shorter baseline path are read as direct lane -> lane links
DEFAULT_SPEED_LIMIT = 13.9  # [m/s] for lanes whose speed_limit_mps is NULL (Lane's default)
BOUNDARY_TYPES_BY_FID = {0: "dashed_white", 2: "solid_white", 3: "none"}  # nuPlan boundary_type_fid
REQUIRED = {  # layer -> columns read (besides fid and geometry)
    "lanes_polygons": ("lane_fid", "lane_group_fid", "lane_index", "speed_limit_mps", "left_boundary_fid",
                       "right_boundary_fid"),
    "lane_connectors": ("exit_lane_fid", "entry_lane_fid", "lane_group_connector_fid", "speed_limit_mps",
                        "traffic_light_stop_line_fids"),
    "gen_lane_connectors_scaled_width_polygons": ("lane_connector_fid", "left_boundary_fid", "right_boundary_fid"),
    "baseline_paths": ("lane_fid", "lane_connector_fid"),
    "boundaries": ("boundary_type_fid",),
    "lane_groups_polygons": (),
    "lane_group_connectors": ("from_lane_group_fid", "to_lane_group_fid"),
}
POLYGON_TABLES = {  # optional polygon layers -> our layer
    "intersections": "intersection", "crosswalks": "crosswalk", "walkways": "walkway",
    "carpark_areas": "carpark", "generic_drivable_areas": "drivable_area", "stop_polygons": "stop_line",
}
EXTRA = {  # optional columns, read when present
    "boundaries": ("latentvla_boundary_type",),
    "lane_connectors": ("latentvla_traffic_light_id", "latentvla_direct_link"),
    "stop_polygons": ("lane_fids", "lane_connector_fids"),
}


def _int(v: object) -> int | None:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return None
    try:
        return int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _fids(v: object) -> list[str]:
    """A nuPlan comma-separated FID list ("12, 13") as id strings."""
    return [s for s in re.split(r"[,\s]+", str(v)) if s] if v not in (None, "") else []


class _Gpkg:
    """Read-only access to one map.gpkg: layer rows with decoded geometry in the map's projected CRS."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            names = self.conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')").fetchall()
        except sqlite3.DatabaseError as e:
            raise DataError(f"{path}: not a readable GeoPackage/SQLite file ({e}); re-download the nuPlan maps "
                            f"or rewrite it with write_nuplan_map") from None
        self.tables = {n.lower(): n for (n,) in names}
        if "gpkg_geometry_columns" not in self.tables:
            raise DataError(f"{path}: not a GeoPackage (no gpkg_geometry_columns table); expected a nuPlan map.gpkg")
        self.geom_cols = {t.lower(): (c, s) for t, c, s in self.conn.execute(
            "SELECT table_name, column_name, srs_id FROM gpkg_geometry_columns")}
        self.srs: dict[int, tuple[str, int]] = {}
        if "gpkg_spatial_ref_sys" in self.tables:
            self.srs = {int(s): (str(o), int(c)) for s, o, c in self.conn.execute(
                "SELECT srs_id, organization, organization_coordsys_id FROM gpkg_spatial_ref_sys")}
        if "meta" not in self.tables:
            raise DataError(f"{path}: missing the 'meta' table (projectedCoordSystem); not a nuPlan map.gpkg")
        meta = dict(self.conn.execute(f'SELECT "key", "value" FROM "{self.tables["meta"]}"').fetchall())
        self.projected = meta.get("projectedCoordSystem")
        if not self.projected:
            raise DataError(f"{path}: the 'meta' table has no projectedCoordSystem row; not a nuPlan map.gpkg")
        m = re.fullmatch(r"\s*epsg:(\d+)\s*", str(self.projected), flags=re.IGNORECASE)
        self.projected_epsg = int(m.group(1)) if m else parse_utm_epsg(str(self.projected))

    def close(self) -> None:
        self.conn.close()

    def has(self, table: str) -> bool:
        return table in self.tables

    def _transform(self, table: str) -> Callable[[shapely.Geometry], shapely.Geometry] | None:
        srs_id = int(self.geom_cols[table][1])
        org, code = self.srs.get(srs_id, ("EPSG", srs_id))
        epsg = code if org.upper() == "EPSG" else None
        if srs_id in (-1, 0) or (epsg is not None and epsg == self.projected_epsg):
            return None  # stored in the projected CRS (or undeclared): coordinates as stored
        if epsg == 4326 and parse_utm_epsg(f"epsg:{self.projected_epsg}"):
            return lonlat_transform(int(self.projected_epsg))  # type: ignore[arg-type]
        raise DataError(f"{self.path}: layer '{table}' is stored in {org}:{code}, which cannot be converted to the "
                        f"map's projectedCoordSystem '{self.projected}' here; reproject the file first "
                        f"(e.g. ogr2ogr -t_srs {self.projected})")

    def rows(self, table: str, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
        """Rows as dicts with 'fid', 'geom' (decoded) and the requested columns (optional ones when present)."""
        if table not in self.tables:
            raise DataError(f"{self.path}: required layer '{table}' is missing; this is not a complete nuPlan map "
                            f"(nuplan-maps-v1.0): re-download it or rewrite it with write_nuplan_map")
        if table not in self.geom_cols:
            raise DataError(f"{self.path}: layer '{table}' is not registered in gpkg_geometry_columns")
        name = self.tables[table]
        info = self.conn.execute(f'PRAGMA table_info("{name}")').fetchall()
        have = {r[1].lower(): r[1] for r in info}
        missing = [c for c in columns if c not in have]
        if missing:
            raise DataError(f"{self.path}: layer '{table}' lacks column(s) {missing}; expected the nuPlan "
                            f"map.gpkg schema (nuplan-maps-v1.0)")
        pk = "fid" if "fid" in have else next((r[1] for r in info if r[5]), "rowid")
        cols = [c for c in (*columns, *optional) if c in have]
        geom_col = self.geom_cols[table][0]
        sql = ", ".join([f'"{pk}"', f'"{geom_col}"', *[f'"{have[c]}"' for c in cols]])
        tf = self._transform(table)
        try:
            records = self.conn.execute(f'SELECT {sql} FROM "{name}"').fetchall()
        except sqlite3.Error as e:
            raise DataError(f"{self.path}: layer '{table}' cannot be read ({e}); the map file is corrupt") from None
        out = []
        for fid, blob, *values in records:
            geom = decode_geometry(blob, f"{self.path} layer '{table}' fid {fid}")
            if tf is not None and geom is not None:
                geom = tf(geom)
            out.append({"fid": int(fid), "geom": geom, **dict(zip(cols, values))})
        return out


def _line(geom: shapely.Geometry | None, where: str) -> np.ndarray:
    if isinstance(geom, shapely.MultiLineString) and len(geom.geoms) > 0:
        geom = shapely.LineString(np.concatenate([np.asarray(g.coords)[:, :2] for g in geom.geoms]))
    if not isinstance(geom, shapely.LineString) or len(geom.coords) < 2:
        raise DataError(f"{where}: expected a line string with at least two points, got "
                        f"{None if geom is None else geom.geom_type}")
    return np.asarray(geom.coords, dtype=np.float64)[:, :2]


def _rings(fid: int, geom: shapely.Geometry | None) -> dict[str, np.ndarray]:
    """Exterior rings by id: a polygon keeps its FID; extra parts of a multipolygon get "<fid>_<k>"."""
    if geom is None or geom.is_empty:
        return {}
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, shapely.Polygon) and not g.is_empty]
    parts.sort(key=lambda g: -g.area)
    return {(str(fid) if k == 0 else f"{fid}_{k}"): np.asarray(g.exterior.coords, dtype=np.float64)[:-1, :2]
            for k, g in enumerate(parts)}


def _oriented(bound: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Boundaries may be shared and stored against the lane's direction: flip those."""
    fwd = np.hypot(*(bound[0] - center[0])) + np.hypot(*(bound[-1] - center[-1]))
    rev = np.hypot(*(bound[-1] - center[0])) + np.hypot(*(bound[0] - center[-1]))
    return bound[::-1].copy() if rev < fwd - 1e-9 else bound


def _resolve(maps_root: Path, map_name: str, version: str | None) -> Path:
    maps_root = Path(maps_root)
    if not maps_root.is_dir():
        raise DataError(f"maps root {maps_root} does not exist: pass the directory holding nuplan-maps-v1.0.json "
                        f"and the per-city map folders (NUPLAN_MAPS_ROOT)")
    if version is None:
        index = read_index(maps_root)
        entry = index.get(map_name)
        if not isinstance(entry, dict) or not entry.get("version"):
            raise DataError(f"map '{map_name}' is not registered in {maps_root / 'nuplan-maps-v1.0.json'} "
                            f"(known: {sorted(index)}); check the map name or pass version=")
        version = str(entry["version"])
    path = maps_root / map_name / version / "map.gpkg"
    if not path.is_file():
        raise DataError(f"{path} not found: the nuPlan maps download is incomplete, or map '{map_name}' version "
                        f"'{version}' was never written")
    return path


def read_nuplan_map(maps_root: Path, map_name: str, version: str | None = None) -> MapAPI:
    """Read ``maps_root/<map_name>/<version>/map.gpkg`` (version from the json index when None) into a MapAPI."""
    path = _resolve(maps_root, map_name, version)
    db = _Gpkg(path)
    try:
        tabs = {t: db.rows(t, cols, EXTRA.get(t, ())) for t, cols in REQUIRED.items()}
        polys = {t: db.rows(t, (), EXTRA.get(t, ())) for t in POLYGON_TABLES if db.has(t)}
    finally:
        db.close()
    where = f"{path}"

    bounds: dict[int, tuple[shapely.Geometry, str]] = {}
    for r in tabs["boundaries"]:
        kind = r.get("latentvla_boundary_type") or BOUNDARY_TYPES_BY_FID.get(_int(r["boundary_type_fid"]), "none")
        bounds[r["fid"]] = (r["geom"], kind)
    lane_paths: dict[int, shapely.Geometry] = {}
    conn_paths: dict[int, shapely.Geometry] = {}
    for r in tabs["baseline_paths"]:
        if _int(r["lane_fid"]) is not None:
            lane_paths[_int(r["lane_fid"])] = r["geom"]  # type: ignore[index]
        elif _int(r["lane_connector_fid"]) is not None:
            conn_paths[_int(r["lane_connector_fid"])] = r["geom"]  # type: ignore[index]
    conn_polys = {_int(r["lane_connector_fid"]): r for r in tabs["gen_lane_connectors_scaled_width_polygons"]}

    def boundary(fid: object, center: np.ndarray, what: str) -> tuple[np.ndarray, str]:
        b = bounds.get(_int(fid))  # type: ignore[arg-type]
        if b is None:
            raise DataError(f"{where}: {what} references boundary {fid}, which is not in layer 'boundaries'")
        return _oriented(_line(b[0], f"{where} layer 'boundaries' fid {fid}"), center), b[1]

    lanes: dict[str, Lane] = {}
    groups: dict[str, dict[int, str]] = defaultdict(dict)
    for r in sorted(tabs["lanes_polygons"], key=lambda r: r["fid"]):
        lid = str(r["fid"])
        path_geom = lane_paths.get(_int(r["lane_fid"]) if _int(r["lane_fid"]) is not None else r["fid"])
        cl = _line(path_geom, f"{where} layer 'baseline_paths' for lane {lid}")
        left, lt = boundary(r["left_boundary_fid"], cl, f"lane {lid}")
        right, rt = boundary(r["right_boundary_fid"], cl, f"lane {lid}")
        speed = r["speed_limit_mps"]
        lanes[lid] = Lane(lid, cl, left, right, roadblock_id=str(_int(r["lane_group_fid"])),
                          speed_limit=float(speed) if speed is not None and np.isfinite(speed) else DEFAULT_SPEED_LIMIT,
                          left_boundary_type=lt, right_boundary_type=rt)
        if _int(r["lane_index"]) is not None:
            groups[lanes[lid].roadblock_id].setdefault(_int(r["lane_index"]), lid)  # type: ignore[arg-type]
    for idx in groups.values():
        for i, lid in idx.items():
            lanes[lid].left_neighbor, lanes[lid].right_neighbor = idx.get(i - 1), idx.get(i + 1)

    succ: dict[str, set[str]] = defaultdict(set)
    pred: dict[str, set[str]] = defaultdict(set)
    stop_of_lane: dict[str, set[str]] = defaultdict(set)  # stop line -> lanes leading into its signalised connectors
    for r in sorted(tabs["lane_connectors"], key=lambda r: r["fid"]):
        cid = str(r["fid"])
        if cid in lanes:
            raise DataError(f"{where}: FID {cid} is both a lane and a lane connector; ids would be ambiguous")
        cl = _line(conn_paths.get(r["fid"]), f"{where} layer 'baseline_paths' for lane connector {cid}")
        a, b = str(_int(r["exit_lane_fid"])), str(_int(r["entry_lane_fid"]))
        if bool(r.get("latentvla_direct_link")) or shapely.LineString(cl).length < DEGENERATE_LENGTH:
            if a in lanes and b in lanes:  # a direct lane -> lane link (written by us; never in real maps)
                succ[a].add(b)
                pred[b].add(a)
            continue
        poly = conn_polys.get(r["fid"])
        if poly is None:
            raise DataError(f"{where}: lane connector {cid} has no row in 'gen_lane_connectors_scaled_width_polygons'")
        left, lt = boundary(poly["left_boundary_fid"], cl, f"lane connector {cid}")
        right, rt = boundary(poly["right_boundary_fid"], cl, f"lane connector {cid}")
        stops = _fids(r["traffic_light_stop_line_fids"])
        light = r["latentvla_traffic_light_id"] if "latentvla_traffic_light_id" in r else (cid if stops else None)
        speed = r["speed_limit_mps"]
        lanes[cid] = Lane(cid, cl, left, right, roadblock_id=str(_int(r["lane_group_connector_fid"])),
                          is_connector=True, left_boundary_type=lt, right_boundary_type=rt,
                          speed_limit=float(speed) if speed is not None and np.isfinite(speed) else DEFAULT_SPEED_LIMIT,
                          traffic_light_id=light or None)
        if a in lanes:
            succ[a].add(cid)
            pred[cid].add(a)
            for s in stops:
                stop_of_lane[s].add(a)
        if b in lanes:
            succ[cid].add(b)
            pred[b].add(cid)
    for lid, ln in lanes.items():
        ln.successors = sorted(succ[lid], key=int)
        ln.predecessors = sorted(pred[lid], key=int)

    polygons: dict[str, dict[str, np.ndarray]] = {"roadblock": {}}
    for r in tabs["lane_groups_polygons"]:
        polygons["roadblock"].update(_rings(r["fid"], r["geom"]))
    stop_line_lanes: dict[str, list[str]] = {}
    for table, layer in POLYGON_TABLES.items():
        for r in polys.get(table, []):
            polygons.setdefault(layer, {}).update(_rings(r["fid"], r["geom"]))
            if table == "stop_polygons":
                sid = str(r["fid"])
                listed = _fids(r.get("lane_fids")) + _fids(r.get("lane_connector_fids"))
                governed = {x for x in listed if x in lanes} | stop_of_lane.get(sid, set())
                if governed:
                    stop_line_lanes[sid] = sorted(governed, key=int)
    return MapAPI(map_name, lanes, {k: v for k, v in polygons.items() if v}, stop_line_lanes)
