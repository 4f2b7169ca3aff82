"""nuPlan map GeoPackages: round trips of embedded-world maps, GDAL readability, the index, errors, and a
hand-built golden map in nuPlan's own layout (no extension columns)."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
import shapely

from latentvla.data.nuplan_gpkg import (
    INDEX_NAME,
    create_gpkg,
    decode_geometry,
    encode_geometry,
    lonlat_to_utm,
    parse_utm_epsg,
)
from latentvla.data.nuplan_map import read_nuplan_map, write_nuplan_map
from latentvla.data.nuplan_map_write import SCHEMAS
from latentvla.data.store import DataError
from latentvla.map_api import POLYGON_LAYERS, Lane, MapAPI
from latentvla.world.maps import Placement, build_corridor, build_intersection


def _maps() -> dict[str, MapAPI]:
    return {
        "straight": build_corridor("straight", Placement(0.4, (1500.0, -2900.0)), length=200.0, n_fwd=2, n_bwd=1,
                                   crosswalk_s=90.0)[0],
        "curve_ramp": build_corridor("curve_ramp", Placement(-1.2, (300.0, 80.0)), length=260.0, n_fwd=2, n_bwd=2,
                                     curve_angle=0.5, ramp_end=80.0, speed_limit=11.1)[0],
        "junction4": build_intersection("junction4", Placement(0.7, (-400.0, 950.0)), lanes_x=2, lanes_y=1,
                                        arm_length=60.0)[0],
        "junction_t": build_intersection("junction_t", Placement(0.0, (10.0, 20.0)), arms=(0, 1, 3),
                                         arm_length=50.0)[0],
    }


MAPS = _maps()


def _gpkg(root: Path, name: str, version: str = "9.12.1817") -> Path:
    return root / name / version / "map.gpkg"


def assert_round_trip(m: MapAPI, r: MapAPI, ids: dict[str, str]) -> None:
    def fids(xs: list[str]) -> list[str]:
        return sorted((ids[x] for x in xs), key=int)

    assert set(r.lanes) == {ids[k] for k in m.lanes}
    for lid, ln in m.lanes.items():
        q = r.lanes[ids[lid]]
        for a, b in ((ln.centerline, q.centerline), (ln.left_boundary, q.left_boundary),
                     (ln.right_boundary, q.right_boundary)):
            assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-6), lid
        assert q.successors == fids(ln.successors) and q.predecessors == fids(ln.predecessors), lid
        assert (q.left_neighbor, q.right_neighbor) == (ids.get(ln.left_neighbor), ids.get(ln.right_neighbor)), lid
        assert (q.is_connector, q.speed_limit, q.roadblock_id) == (ln.is_connector, ln.speed_limit, ids[ln.roadblock_id])
        assert (q.left_boundary_type, q.right_boundary_type) == (ln.left_boundary_type, ln.right_boundary_type), lid
        assert q.traffic_light_id == ln.traffic_light_id, lid
    for layer in POLYGON_LAYERS:
        ours, theirs = m.layer(layer), r.layer(layer)
        assert set(theirs) == {ids[k] for k in ours}, layer
        for pid, ring in ours.items():
            assert np.allclose(theirs[ids[pid]], ring, rtol=0, atol=1e-6), (layer, pid)
    assert m.drivable_area.symmetric_difference(r.drivable_area).area < 1e-6
    assert r.stop_line_lanes == {ids[k]: fids(v) for k, v in m.stop_line_lanes.items()}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_round_trip(tmp_path, name):
    m = MAPS[name]
    ids = write_nuplan_map(m, tmp_path, "us-ma-boston")
    r = read_nuplan_map(tmp_path, "us-ma-boston")
    assert r.name == "us-ma-boston"
    assert_round_trip(m, r, ids)
    # every id is mapped to a distinct FID; writing again gives the same FIDs
    assert len(set(ids.values())) == len(ids)
    assert write_nuplan_map(m, tmp_path, "again") == ids


def test_signalised_junction_content(tmp_path):
    m = MAPS["junction4"]
    assert m.stop_line_lanes and any(ln.traffic_light_id for ln in m.lanes.values()) and m.layer("crosswalk")
    ids = write_nuplan_map(m, tmp_path, "j")
    with sqlite3.connect(_gpkg(tmp_path, "j")) as db:
        rows = db.execute("SELECT fid, exit_lane_fid, entry_lane_fid, traffic_light_stop_line_fids, "
                          "latentvla_direct_link FROM lane_connectors").fetchall()
        stop_types = dict(db.execute("SELECT fid, stop_polygon_type_fid FROM stop_polygons"))
        inter = db.execute("SELECT intersection_type_fid FROM intersections").fetchall()
        lane_fids = {r[0] for r in db.execute("SELECT lane_fid FROM lanes_polygons")}
        lane_pks = {r[0] for r in db.execute("SELECT fid FROM lanes_polygons")}
    assert lane_fids == lane_pks  # a lane's FID equals its lane_fid
    by_fid = {r[0]: r for r in rows}
    c = m.lanes["C02_0"]  # arm 0 -> arm 2, straight, signalised by stop line S0
    fid, exit_fid, entry_fid, stops, direct = by_fid[int(ids["C02_0"])]
    assert (exit_fid, entry_fid, direct) == (int(ids[c.predecessors[0]]), int(ids[c.successors[0]]), 0)
    assert stops == ids["S0"] and stop_types[int(ids["S0"])] == 2 and inter == [(1,)]


def test_direct_links_become_degenerate_connectors(tmp_path):
    m = MAPS["straight"]
    ids = write_nuplan_map(m, tmp_path, "s")
    assert m.lanes["L00_f0"].successors == ["L01_f0"]
    key = "L00_f0->L01_f0"
    assert key in ids and "RB00_f->RB01_f" in ids
    with sqlite3.connect(_gpkg(tmp_path, "s")) as db:
        exit_fid, entry_fid, group, flag = db.execute(
            "SELECT exit_lane_fid, entry_lane_fid, lane_group_connector_fid, latentvla_direct_link "
            "FROM lane_connectors WHERE fid = ?", (int(ids[key]),)).fetchone()
        (blob,) = db.execute("SELECT geom FROM baseline_paths WHERE lane_connector_fid = ?", (int(ids[key]),)).fetchone()
        frm, to = db.execute("SELECT from_lane_group_fid, to_lane_group_fid FROM lane_group_connectors WHERE fid = ?",
                             (int(ids["RB00_f->RB01_f"]),)).fetchone()
        n_direct = db.execute("SELECT count(*) FROM lane_connectors WHERE latentvla_direct_link = 1").fetchone()[0]
        # without our flag the reader still collapses them: their baselines are shorter than 1e-6 m
        db.execute("UPDATE lane_connectors SET latentvla_direct_link = 0")
    assert (exit_fid, entry_fid, flag) == (int(ids["L00_f0"]), int(ids["L01_f0"]), 1)
    assert group == int(ids["RB00_f->RB01_f"]) and (frm, to) == (int(ids["RB00_f"]), int(ids["RB01_f"]))
    length = decode_geometry(blob, "test").length
    assert 0 < length < 1e-6  # positive: nuPlan's extract_discrete_polyline asserts length > 0
    n_links = sum(len(ln.successors) for ln in m.lanes.values())
    assert n_direct == n_links  # a corridor has only direct links
    assert_round_trip(m, read_nuplan_map(tmp_path, "s"), ids)


def test_direct_link_across_a_gap(tmp_path):
    """A link between lanes 0.5 m apart: the flag collapses it; without the flag it is a real connector."""
    def lane(lid: str, x0: float, rb: str) -> Lane:
        x = np.array([x0, x0 + 10.0])
        return Lane(lid, np.stack([x, [0.0, 0.0]], 1), np.stack([x, [1.75, 1.75]], 1),
                    np.stack([x, [-1.75, -1.75]], 1), rb)

    a, b = lane("A", 0.0, "RA"), lane("B", 10.5, "RB")
    a.successors, b.predecessors = ["B"], ["A"]
    blocks = {"RA": np.array([[0, 2], [10, 2], [10, -2], [0, -2]], float),
              "RB": np.array([[10.5, 2], [20.5, 2], [20.5, -2], [10.5, -2]], float)}
    m = MapAPI("gap", {"A": a, "B": b}, {"roadblock": blocks})
    ids = write_nuplan_map(m, tmp_path, "gap")
    assert_round_trip(m, read_nuplan_map(tmp_path, "gap"), ids)
    with sqlite3.connect(_gpkg(tmp_path, "gap")) as db:
        db.execute("UPDATE lane_connectors SET latentvla_direct_link = 0")
    r = read_nuplan_map(tmp_path, "gap")
    conn = r.lanes[ids["A->B"]]
    assert conn.is_connector and conn.roadblock_id == ids["RA->RB"] and np.isclose(shapely.LineString(conn.centerline).length, 0.5)
    assert r.lanes[ids["A"]].successors == [ids["A->B"]] and conn.successors == [ids["B"]]


def test_gpkg_core_tables_and_meta(tmp_path):
    write_nuplan_map(MAPS["junction_t"], tmp_path, "t", epsg=32648)
    with sqlite3.connect(_gpkg(tmp_path, "t")) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 10200
        srs = {r[0]: r for r in db.execute("SELECT srs_id, organization, organization_coordsys_id, definition "
                                            "FROM gpkg_spatial_ref_sys")}
        assert {-1, 0, 4326, 32648} <= set(srs) and 'AUTHORITY["EPSG","32648"]' in srs[32648][3]
        contents = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents"))
        geom_cols = {r[0]: r[1:] for r in db.execute("SELECT table_name, column_name, geometry_type_name, srs_id "
                                                      "FROM gpkg_geometry_columns")}
        meta = dict(db.execute("SELECT key, value FROM meta"))
    assert contents == {**{t: "features" for t in SCHEMAS}, "meta": "attributes"}
    assert geom_cols == {t: ("geom", gt, 32648) for t, (gt, _) in SCHEMAS.items()}
    assert meta["projectedCoordSystem"] == "epsg:32648" and parse_utm_epsg(meta["projectedCoordSystem"]) == 32648


@pytest.mark.filterwarnings("error")  # GDAL warnings surface as RuntimeWarning in pyogrio
def test_gdal_reads_every_layer(tmp_path):
    pyogrio = pytest.importorskip("pyogrio")
    m = MAPS["junction4"]
    write_nuplan_map(m, tmp_path, "g")
    path = _gpkg(tmp_path, "g")
    layers = dict(pyogrio.list_layers(path))
    assert set(layers) == set(SCHEMAS) | {"meta"}
    gdal_types = {"POLYGON": "Polygon", "LINESTRING": "LineString", "POINT": "Point"}
    with sqlite3.connect(path) as db:
        for table, (geom_type, columns) in SCHEMAS.items():
            info = pyogrio.read_info(path, layer=table)
            assert info["crs"] == "EPSG:32619" and info["geometry_type"] == gdal_types[geom_type], table
            assert list(info["fields"]) == [c for c, _ in columns] and info["fid_column"] == "fid", table
            meta, fids, geoms, _ = pyogrio.raw.read(path, layer=table, return_fids=True)
            ours = dict(db.execute(f'SELECT fid, geom FROM "{table}"').fetchall())
            assert sorted(fids.tolist()) == sorted(ours), table
            for fid, wkb in zip(fids.tolist(), geoms):
                assert shapely.from_wkb(wkb).equals_exact(decode_geometry(ours[fid], table), 0.0), (table, fid)
    meta, _, _, (keys, values) = pyogrio.raw.read(path, layer="meta")
    assert dict(zip(keys, values))["projectedCoordSystem"] == "epsg:32619"


def test_index_json(tmp_path):
    (tmp_path / INDEX_NAME).write_text(json.dumps({"sg-one-north": {"version": "9.17.1964", "layers": {"x": 1}}}))
    write_nuplan_map(MAPS["junction_t"], tmp_path, "us-ma-boston")
    write_nuplan_map(MAPS["straight"], tmp_path, "us-pa-pittsburgh-hazelwood", version="9.17.1937")
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index == {"sg-one-north": {"version": "9.17.1964", "layers": {"x": 1}},
                     "us-ma-boston": {"version": "9.12.1817", "layers": {}},
                     "us-pa-pittsburgh-hazelwood": {"version": "9.17.1937", "layers": {}}}
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    assert len(read_nuplan_map(tmp_path, "us-pa-pittsburgh-hazelwood").lanes) == len(MAPS["straight"].lanes)
    assert len(read_nuplan_map(tmp_path, "us-ma-boston", version="9.12.1817").lanes) == len(MAPS["junction_t"].lanes)


# --- errors -------------------------------------------------------------------------------------------------
@pytest.fixture
def written(tmp_path) -> Path:
    write_nuplan_map(MAPS["junction_t"], tmp_path, "m")
    return tmp_path


def test_missing_paths_raise_data_errors(tmp_path, written):
    with pytest.raises(DataError, match="does not exist"):
        read_nuplan_map(tmp_path / "nope", "m")
    with pytest.raises(DataError, match="nuplan-maps-v1.0.json not found"):
        read_nuplan_map(_gpkg(written, "m").parent, "m")  # a directory without an index
    with pytest.raises(DataError, match=r"'other' is not registered .*known: \['m'\]"):
        read_nuplan_map(written, "other")
    with pytest.raises(DataError, match="9.99.1/map.gpkg not found"):
        read_nuplan_map(written, "m", version="9.99.1")
    _gpkg(written, "m").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DataError, match="not a readable GeoPackage"):
        read_nuplan_map(written, "m")


@pytest.mark.parametrize("sql, pattern", [
    ("DROP TABLE lanes_polygons", "required layer 'lanes_polygons' is missing"),
    ("DROP TABLE meta", "missing the 'meta' table"),
    ("DELETE FROM meta WHERE key = 'projectedCoordSystem'", "no projectedCoordSystem"),
    ("ALTER TABLE lane_connectors DROP COLUMN entry_lane_fid", r"'lane_connectors' lacks column\(s\) \['entry_lane_fid'\]"),
    ("UPDATE baseline_paths SET geom = X'00112233445566778899' WHERE fid = (SELECT min(fid) FROM baseline_paths)",
     r"layer 'baseline_paths' fid \d+: not a GeoPackage geometry blob"),
    ("UPDATE boundaries SET geom = ? WHERE fid = (SELECT min(fid) FROM boundaries)",
     r"layer 'boundaries' fid \d+: unreadable WKB"),
    ("UPDATE walkways SET geom = 'GP' WHERE fid = (SELECT min(fid) FROM walkways)",
     r"layer 'walkways' fid \d+: the geometry cell holds str"),
    ("UPDATE gpkg_geometry_columns SET srs_id = 3857", "stored in EPSG:3857"),
])
def test_broken_gpkg_raises_data_error(written, sql, pattern):
    path = _gpkg(written, "m")
    with sqlite3.connect(path) as db:
        if "3857" in sql:
            db.execute("INSERT INTO gpkg_spatial_ref_sys VALUES ('pseudo mercator', 3857, 'EPSG', 3857, 'x', NULL)")
        # a valid GeoPackage header (little-endian, XY envelope) followed by a truncated WKB
        db.execute(sql, (b"GP\x00\x03" + struct.pack("<i4d", 32619, 0, 1, 0, 1) + b"\x01\x02",) if "?" in sql else ())
    with pytest.raises(DataError, match=pattern) as err:
        read_nuplan_map(written, "m")
    assert str(path) in str(err.value)


def test_writer_rejects_what_nuplan_cannot_hold(tmp_path):
    m = MAPS["junction_t"]
    with pytest.raises(ValueError, match="plain directory name"):
        write_nuplan_map(m, tmp_path, "../escape")
    with pytest.raises(ValueError, match="not a WGS84 UTM zone"):
        write_nuplan_map(m, tmp_path, "m", epsg=4326)
    bad = MapAPI.from_dict(m.to_dict())
    conn = next(ln for ln in bad.lanes.values() if ln.is_connector)
    extra = next(k for k, ln in bad.lanes.items() if not ln.is_connector and k not in conn.predecessors)
    conn.predecessors.append(extra)
    with pytest.raises(ValueError, match=f"lane connector {conn.id} has predecessors"):
        write_nuplan_map(bad, tmp_path, "m")
    clash = MapAPI.from_dict(m.to_dict())
    clash.polygons["walkway"]["X0"] = clash.polygons["walkway"].pop(sorted(clash.polygons["walkway"])[0])
    with pytest.raises(ValueError, match="id 'X0' is used by a crosswalk and a walkway"):
        write_nuplan_map(clash, tmp_path, "m")
    assert not (tmp_path / INDEX_NAME).exists()


# --- geometry plumbing and a hand-built golden map ---------------------------------------------------------
def test_lonlat_to_utm_matches_proj():
    # reference values from PROJ (pyproj 3.7, EPSG:4326 -> EPSG:326xx/327xx, always_xy)
    for epsg, lon, lat, e, n in [(32619, -71.0495, 42.351785, 331199.9728683606, 4690870.032925679),
                                 (32648, 103.787, 1.2999, 365047.8348795977, 143710.6650873013),
                                 (32617, -79.95, 40.42, 589076.9543108837, 4474904.057631455),
                                 (32733, 15.0, -33.0, 500000.0000000015, 6348713.056040317)]:
        x, y = lonlat_to_utm(np.array([lon]), np.array([lat]), epsg)
        assert abs(x[0] - e) < 1e-6 and abs(y[0] - n) < 1e-6, epsg
    assert parse_utm_epsg("+proj=utm +zone=48 +datum=WGS84 +units=m +no_defs") == 32648
    assert parse_utm_epsg("EPSG:32733") == 32733 and parse_utm_epsg("epsg:3857") is None


def test_geometry_blob_variants():
    line = shapely.LineString([(1.0, 2.0), (3.0, 5.0)])
    blob = encode_geometry(line, 32619)
    assert blob[:4] == b"GP\x00\x03" and struct.unpack("<i", blob[4:8])[0] == 32619
    assert decode_geometry(blob, "t").equals_exact(line, 0.0)
    # big-endian header with a 3D envelope (GDAL may write either); WKB follows unchanged
    header = b"GP\x00" + bytes([0b0000_0100]) + struct.pack(">i6d", 32619, 1, 3, 2, 5, 0, 0)
    assert decode_geometry(header + shapely.to_wkb(line), "t").equals_exact(line, 0.0)
    assert decode_geometry(None, "t") is None
    with pytest.raises(DataError, match="extended"):
        decode_geometry(b"GP\x00\x21" + blob[4:], "t")


ORIGIN_UTM = (331000.0, 4690000.0)
ORIGIN_LONLAT = (-71.0495, 42.351785)


def _hand_built(tmp_path: Path, lonlat: bool) -> Path:
    """Two lanes side by side in lane group 100 (11 left of 12), lane 13 ahead of 11 in group 101, and lane
    connector 21 from 11 to 13 behind the traffic-light stop polygon 31; nuPlan's columns only."""

    def pt(x: float, y: float) -> tuple[float, float]:
        if lonlat:  # roughly metres near Boston; the reader projects with the meta CRS
            return ORIGIN_LONLAT[0] + x * 1.2e-5, ORIGIN_LONLAT[1] + y * 0.9e-5
        return ORIGIN_UTM[0] + x, ORIGIN_UTM[1] + y

    def line(*xy: tuple[float, float]) -> shapely.LineString:
        return shapely.LineString([pt(*p) for p in xy])

    def box(x0: float, x1: float, y0: float, y1: float) -> shapely.Polygon:
        return shapely.Polygon([pt(x0, y0), pt(x1, y0), pt(x1, y1), pt(x0, y1)])

    srs = 4326 if lonlat else 32619
    tables = {
        "lanes_polygons": ("POLYGON", "lane_fid INTEGER, lane_group_fid INTEGER, lane_index MEDIUMINT, "
                                      "speed_limit_mps REAL, left_boundary_fid INTEGER, right_boundary_fid INTEGER", [
            (11, box(0, 50, 0, 3.5), (11, 100, 0, 13.4, 41, 42)),
            (12, box(0, 50, -3.5, 0), (12, 100, 1, None, 42, 43)),
            (13, box(60, 100, 0, 3.5), (13, 101, 0, 11.0, 44, 45))]),
        "baseline_paths": ("LINESTRING", "lane_fid INTEGER, lane_connector_fid INTEGER", [
            (51, line((0, 1.75), (25, 1.75), (50, 1.75)), (11, None)),
            (52, line((0, -1.75), (50, -1.75)), (12, None)),
            (53, line((60, 1.75), (100, 1.75)), (13, None)),
            (54, line((50, 1.75), (55, 1.75), (60, 1.75)), (None, 21))]),
        "boundaries": ("LINESTRING", "boundary_type_fid INTEGER", [
            (41, line((0, 3.5), (50, 3.5)), (2,)), (42, line((0, 0), (50, 0)), (0,)),
            (43, line((50, -3.5), (0, -3.5)), (2,)),  # stored against the driving direction
            (44, line((60, 3.5), (100, 3.5)), (2,)), (45, line((60, 0), (100, 0)), (3,)),
            (46, line((50, 3.5), (60, 3.5)), (3,)), (47, line((50, 0), (60, 0)), (3,))]),
        "lane_connectors": ("LINESTRING", "exit_lane_fid INTEGER, entry_lane_fid INTEGER, "
                                          "lane_group_connector_fid INTEGER, speed_limit_mps REAL, "
                                          "traffic_light_stop_line_fids TEXT", [
            (21, line((50, 1.75), (60, 1.75)), (11, 13, 200, 8.0, "31"))]),
        "gen_lane_connectors_scaled_width_polygons": ("POLYGON", "lane_connector_fid INTEGER, "
                                                                 "left_boundary_fid INTEGER, right_boundary_fid INTEGER", [
            (61, box(50, 60, 0, 3.5), (21, 46, 47))]),
        "lane_groups_polygons": ("POLYGON", "creator_id TEXT", [
            (100, box(0, 50, -4, 4), ("x",)), (101, box(60, 100, 0, 4), ("x",))]),
        "lane_group_connectors": ("POLYGON", "from_lane_group_fid INTEGER, to_lane_group_fid INTEGER", [
            (200, box(50, 60, 0, 3.5), (100, 101))]),
        "stop_polygons": ("POLYGON", "stop_polygon_type_fid INTEGER", [(31, box(49.5, 50, 0, 3.5), (2,))]),
    }
    path = _gpkg(tmp_path, "sg-one-north", "9.17.1964")
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as db:
        create_gpkg(db, 32619)
        for name, (geom_type, cols, rows) in tables.items():
            db.execute(f"CREATE TABLE {name} (fid INTEGER PRIMARY KEY, geom {geom_type}, {cols})")
            db.execute("INSERT INTO gpkg_contents (table_name, data_type, srs_id) VALUES (?, 'features', ?)", (name, srs))
            db.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)", (name, geom_type, srs))
            marks = ", ".join("?" * (2 + len(rows[0][2])))
            db.executemany(f"INSERT INTO {name} VALUES ({marks})", [(f, encode_geometry(g, srs), *v) for f, g, v in rows])
        db.execute("CREATE TABLE meta (fid INTEGER PRIMARY KEY, key TEXT, value TEXT)")
        db.execute("INSERT INTO meta (key, value) VALUES ('projectedCoordSystem', 'epsg:32619')")
    (tmp_path / INDEX_NAME).write_text(json.dumps({"sg-one-north": {"version": "9.17.1964"}}))
    return path


@pytest.mark.parametrize("lonlat", [False, True], ids=["utm", "lonlat"])
def test_hand_built_golden(tmp_path, lonlat):
    _hand_built(tmp_path, lonlat)
    r = read_nuplan_map(tmp_path, "sg-one-north")
    assert set(r.lanes) == {"11", "12", "13", "21"}
    l11, l12, l13, c21 = (r.lanes[k] for k in ("11", "12", "13", "21"))
    assert (l11.successors, c21.predecessors, c21.successors, l13.predecessors) == (["21"], ["11"], ["13"], ["21"])
    assert l12.successors == l12.predecessors == l11.predecessors == l13.successors == []
    assert (l11.left_neighbor, l11.right_neighbor, l12.left_neighbor, l12.right_neighbor) == (None, "12", "11", None)
    assert l13.left_neighbor is None and l13.right_neighbor is None and c21.left_neighbor is None
    assert [ln.speed_limit for ln in (l11, l12, l13, c21)] == [13.4, 13.9, 11.0, 8.0]  # NULL -> Lane default
    assert [ln.roadblock_id for ln in (l11, l12, l13, c21)] == ["100", "100", "101", "200"]
    assert [ln.is_connector for ln in (l11, l12, l13, c21)] == [False, False, False, True]
    assert (l11.left_boundary_type, l11.right_boundary_type) == ("solid_white", "dashed_white")
    assert (l12.left_boundary_type, l12.right_boundary_type) == ("dashed_white", "solid_white")
    assert (l13.right_boundary_type, c21.left_boundary_type) == ("none", "none")
    assert c21.traffic_light_id == "21" and l11.traffic_light_id is None  # a connector is its own light group
    assert r.stop_line_lanes == {"31": ["11"]}
    assert set(r.layer("roadblock")) == {"100", "101"} and set(r.layer("stop_line")) == {"31"}
    assert np.all(np.diff(l12.right_boundary[:, 0]) > 0)  # re-oriented to the driving direction
    if lonlat:
        e, n = lonlat_to_utm(np.array([ORIGIN_LONLAT[0]]), np.array([ORIGIN_LONLAT[1] + 1.75 * 0.9e-5]), 32619)
        assert np.allclose(l11.centerline[0], [e[0], n[0]], rtol=0, atol=1e-6)
        assert abs(np.hypot(*(l11.centerline[-1] - l11.centerline[0])) - 50 * 1.2e-5 * 82_000) < 5.0
    else:
        assert np.array_equal(l11.centerline, [[331000.0, 4690001.75], [331025.0, 4690001.75], [331050.0, 4690001.75]])
    assert np.all(np.abs(np.concatenate([ln.centerline for ln in r.lanes.values()]) - ORIGIN_UTM) < 1500)  # UTM metres
