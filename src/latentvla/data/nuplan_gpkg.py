"""GeoPackage plumbing shared by the nuPlan map writer and reader, in pure Python (sqlite3 + shapely + numpy).

Why not GDAL: the map converter must run wherever the dataset code runs, and GDAL (fiona/pyogrio) is a heavy
native dependency. A GeoPackage is an SQLite file whose geometry cells are "GeoPackage binary" blobs: the 2-byte
magic ``GP``, a version byte (0), a flags byte (bit 0: byte order of the header, bits 1-3: envelope kind,
bit 4: empty geometry, bit 5: extended type), the int32 ``srs_id``, an optional envelope of doubles
(minx, maxx, miny, maxy[, z/m pairs]) and then standard WKB. Readers find layers through the core tables
``gpkg_spatial_ref_sys``, ``gpkg_contents`` and ``gpkg_geometry_columns``, which :func:`create_gpkg` writes.

nuPlan keeps the coordinate system of each city in a ``meta`` table row ``projectedCoordSystem`` (e.g.
``epsg:32619``) and its loader reprojects every layer into it. Our writer stores layers directly in that UTM
CRS, so the reprojection is the identity; maps whose layers are stored in WGS84 lon/lat are projected here with
the Krueger series (6th order, nanometre agreement with PROJ inside a zone) so no pyproj is needed.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import shapely

from latentvla.data.store import DataError

INDEX_NAME = "nuplan-maps-v1.0.json"  # nuPlan's GPKGMapsDB reads f"{map_version}.json" under the maps root
GPKG_APPLICATION_ID = 0x47504B47  # "GPKG"
GPKG_USER_VERSION = 10300  # GeoPackage 1.3
_ENVELOPE_DOUBLES = {0: 0, 1: 4, 2: 6, 3: 6, 4: 8}

WGS84_WKT = (
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],'
    'AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],'
    'UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]]'
)


# --- geometry blobs ---------------------------------------------------------------------------------------
def encode_geometry(geom: shapely.Geometry, srs_id: int) -> bytes:
    """GeoPackage binary blob: little-endian header with an XY envelope (none for empty geometries), then WKB."""
    if geom.is_empty:
        return b"GP" + bytes([0, 0b0001_0001]) + struct.pack("<i", srs_id) + shapely.to_wkb(geom, byte_order=1)
    minx, miny, maxx, maxy = geom.bounds
    header = b"GP" + bytes([0, 0b0000_0011]) + struct.pack("<i4d", srs_id, minx, maxx, miny, maxy)
    return header + shapely.to_wkb(geom, output_dimension=2, byte_order=1)


def decode_geometry(blob: bytes | None, where: str) -> shapely.Geometry | None:
    """Decode a GeoPackage blob (``None`` for a NULL cell); ``where`` names file/layer/fid in the error."""
    if blob is None:
        return None
    hint = "the map file is corrupt: re-export or re-download it"
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise DataError(f"{where}: the geometry cell holds {type(blob).__name__}, not a GeoPackage blob; {hint}")
    data = bytes(blob)
    if len(data) < 8 or data[:2] != b"GP":
        raise DataError(f"{where}: not a GeoPackage geometry blob (no 'GP' magic); {hint}")
    if data[2] != 0:
        raise DataError(f"{where}: unsupported GeoPackage binary version {data[2]}; {hint}")
    flags = data[3]
    if flags & 0b0010_0000:
        raise DataError(f"{where}: extended GeoPackage geometry types are not supported; {hint}")
    kind = (flags >> 1) & 0b111
    if kind not in _ENVELOPE_DOUBLES:
        raise DataError(f"{where}: invalid envelope indicator {kind} in the geometry header; {hint}")
    start = 8 + 8 * _ENVELOPE_DOUBLES[kind]
    try:
        geom = shapely.from_wkb(data[start:])
    except Exception as e:  # shapely raises GEOSException / ValueError subclasses for bad WKB
        raise DataError(f"{where}: unreadable WKB geometry ({e}); {hint}") from None
    if geom is None:
        raise DataError(f"{where}: empty WKB payload; {hint}")
    return geom


# --- coordinate systems -----------------------------------------------------------------------------------
def parse_utm_epsg(text: str | None) -> int | None:
    """EPSG code of a WGS84 UTM CRS written as ``epsg:32619`` or a PROJ string ``+proj=utm +zone=19 ...``."""
    if not text:
        return None
    m = re.fullmatch(r"\s*epsg:(\d+)\s*", text, flags=re.IGNORECASE)
    if m:
        code = int(m.group(1))
        return code if 32601 <= code <= 32660 or 32701 <= code <= 32760 else None
    if "+proj=utm" in text:
        zone = re.search(r"\+zone=(\d+)", text)
        if zone and 1 <= int(zone.group(1)) <= 60:
            return (32700 if "+south" in text else 32600) + int(zone.group(1))
    return None


def utm_wkt(epsg: int) -> str:
    """OGC WKT 1 of "WGS 84 / UTM zone <n><N|S>" (what GDAL writes for these EPSG codes)."""
    zone, south = epsg % 100, epsg >= 32700
    return (
        f'PROJCS["WGS 84 / UTM zone {zone}{"S" if south else "N"}",{WGS84_WKT},PROJECTION["Transverse_Mercator"],'
        f'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",{6 * zone - 183}],'
        f'PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],'
        f'PARAMETER["false_northing",{10000000 if south else 0}],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
        f'AXIS["Easting",EAST],AXIS["Northing",NORTH],AUTHORITY["EPSG","{epsg}"]]'
    )


def lonlat_to_utm(lon: np.ndarray, lat: np.ndarray, epsg: int) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 degrees -> UTM metres (Krueger series to n^6, as in Karney 2011)."""
    zone, south = epsg % 100, epsg >= 32700
    f = 1 / 298.257223563
    n = f / (2 - f)
    e = np.sqrt(f * (2 - f))
    big_a = 6378137.0 / (1 + n) * (1 + n**2 / 4 + n**4 / 64 + n**6 / 256)
    alpha = (
        n / 2 - 2 * n**2 / 3 + 5 * n**3 / 16 + 41 * n**4 / 180 - 127 * n**5 / 288 + 7891 * n**6 / 37800,
        13 * n**2 / 48 - 3 * n**3 / 5 + 557 * n**4 / 1440 + 281 * n**5 / 630 - 1983433 * n**6 / 1935360,
        61 * n**3 / 240 - 103 * n**4 / 140 + 15061 * n**5 / 26880 + 167603 * n**6 / 181440,
        49561 * n**4 / 161280 - 179 * n**5 / 168 + 6601661 * n**6 / 7257600,
        34729 * n**5 / 80640 - 3418889 * n**6 / 1995840,
        212378941 * n**6 / 319334400,
    )
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    lam = np.radians(np.asarray(lon, dtype=np.float64) - (6.0 * zone - 183.0))
    s = np.sin(phi)
    t = np.sinh(np.arctanh(s) - e * np.arctanh(e * s))
    xi_p = np.arctan2(t, np.cos(lam))
    eta_p = np.arctanh(np.sin(lam) / np.sqrt(1 + t * t))
    xi, eta = xi_p.copy(), eta_p.copy()
    for j, a in enumerate(alpha, start=1):
        xi += a * np.sin(2 * j * xi_p) * np.cosh(2 * j * eta_p)
        eta += a * np.cos(2 * j * xi_p) * np.sinh(2 * j * eta_p)
    return 500000.0 + 0.9996 * big_a * eta, (10000000.0 if south else 0.0) + 0.9996 * big_a * xi


def lonlat_transform(epsg: int) -> Callable[[shapely.Geometry], shapely.Geometry]:
    """A geometry transform from WGS84 lon/lat into the given UTM CRS."""

    def tf(geom: shapely.Geometry) -> shapely.Geometry:
        def f(xy: np.ndarray) -> np.ndarray:
            x, y = lonlat_to_utm(xy[:, 0], xy[:, 1], epsg)
            return np.stack([x, y], axis=1)

        return shapely.transform(geom, f)

    return tf


# --- writing ----------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def create_gpkg(conn: sqlite3.Connection, utm_epsg: int) -> None:
    """GeoPackage header pragmas and core tables, with the mandatory SRS rows plus the map's UTM CRS."""
    conn.execute(f"PRAGMA application_id = {GPKG_APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {GPKG_USER_VERSION}")
    conn.executescript(
        """
        CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY,
            organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL,
            description TEXT);
        CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
            identifier TEXT UNIQUE, description TEXT DEFAULT '',
            last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
            CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
        CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL, column_name TEXT NOT NULL,
            geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
            CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
            CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
            CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id));
        """
    )
    rows = [
        ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
        ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
        ("WGS 84 geodetic", 4326, "EPSG", 4326, WGS84_WKT, "longitude/latitude coordinates in decimal degrees"),
    ]
    if utm_epsg != 4326:
        zone = f"{utm_epsg % 100}{'S' if utm_epsg >= 32700 else 'N'}"
        rows.append((f"WGS 84 / UTM zone {zone}", utm_epsg, "EPSG", utm_epsg, utm_wkt(utm_epsg), None))
    conn.executemany("INSERT INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)", rows)


def add_feature_table(conn: sqlite3.Connection, table: str, geometry_type: str, srs_id: int,
                      columns: Sequence[tuple[str, str]], rows: Iterable[tuple[int, shapely.Geometry, dict]]) -> None:
    """A feature table ``(fid, geom, *columns)`` registered in the core tables; rows are (fid, geometry, values)."""
    names = [c for c, _ in columns]
    ddl = ", ".join(f'"{c}" {t}' for c, t in columns)
    conn.execute(f'CREATE TABLE "{table}" ("fid" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, "geom" {geometry_type}'
                 + (f", {ddl})" if ddl else ")"))
    bounds = []
    params = []
    for fid, geom, values in rows:
        bounds.append(geom.bounds)
        params.append((fid, encode_geometry(geom, srs_id), *[values.get(c) for c in names]))
    marks = ", ".join("?" * (len(names) + 2))
    cols = ", ".join(['"fid"', '"geom"', *[f'"{c}"' for c in names]])
    conn.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', params)
    ext = np.asarray(bounds, dtype=np.float64).reshape(-1, 4)
    ext = ext[np.isfinite(ext).all(axis=1)]
    box = (ext[:, 0].min(), ext[:, 1].min(), ext[:, 2].max(), ext[:, 3].max()) if len(ext) else (None,) * 4
    conn.execute("INSERT INTO gpkg_contents VALUES (?, 'features', ?, '', ?, ?, ?, ?, ?, ?)",
                 (table, table, _now(), *[None if v is None else float(v) for v in box], srs_id))
    conn.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)", (table, geometry_type, srs_id))


def add_attribute_table(conn: sqlite3.Connection, table: str, columns: Sequence[tuple[str, str]],
                        rows: Iterable[tuple]) -> None:
    """A non-spatial table (``fid`` + columns) registered as GeoPackage 'attributes' so GDAL lists it."""
    ddl = ", ".join(f'"{c}" {t}' for c, t in columns)
    conn.execute(f'CREATE TABLE "{table}" ("fid" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, {ddl})')
    cols = ", ".join(f'"{c}"' for c, _ in columns)
    conn.executemany(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * len(columns))})', list(rows))
    conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, last_change) "
                 "VALUES (?, 'attributes', ?, ?)", (table, table, _now()))


def atomic_write_bytes(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` on a temporary file next to ``path``, then move it into place with os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the maps index ---------------------------------------------------------------------------------------
def read_index(maps_root: Path) -> dict:
    """The ``nuplan-maps-v1.0.json`` index: ``{map_name: {"version": ..., "layers": {...}}}``."""
    path = maps_root / INDEX_NAME
    if not path.is_file():
        raise DataError(f"{path} not found: point maps_root at the directory holding nuplan-maps-v1.0 "
                        f"(NUPLAN_MAPS_ROOT) or write a map there with write_nuplan_map")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable maps index ({e}); restore it from the nuPlan maps download") from None
    if not isinstance(index, dict):
        raise DataError(f"{path}: the maps index must be a JSON object of map name -> {{'version': ...}}")
    return index


def register_map(maps_root: Path, map_name: str, version: str) -> None:
    """Create or update the index entry for one map (other maps are kept), atomically."""
    path = maps_root / INDEX_NAME
    index = read_index(maps_root) if path.exists() else {}
    # Raster layers (the "layers" metadata) are not written: NAVSIM uses only the vector layers.
    index[map_name] = {"version": version, "layers": {}}
    text = json.dumps(index, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda tmp: tmp.write_text(text))
