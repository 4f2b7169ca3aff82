"""nuPlan/OpenScene LiDAR ``.pcd`` files (``sensor_blobs/<split>/<log>/MergedPointCloud/<token>.pcd``).

Format as nuPlan's ``PointCloud.parse`` reads it: an ASCII header (``VERSION FIELDS SIZE TYPE COUNT WIDTH HEIGHT
VIEWPOINT POINTS DATA``, ``#`` comments), then ``DATA binary`` rows packed per the SIZE/TYPE columns. Real files
may carry trailing bytes, so exactly POINTS rows are read. NAVSIM's merged cloud has the fields
x, y, z, intensity, ring, lidar_info (lidar id), all float32, in the LiDAR frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latentvla.data.store import DataError, read_data_file

PCD_FIELDS: tuple[str, ...] = ("x", "y", "z", "intensity", "ring", "lidar_info")
_HEADER_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS", "DATA")
_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8",
          ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}


def encode_pcd(points: np.ndarray, fields: tuple[str, ...] = PCD_FIELDS) -> bytes:
    """(N, len(fields)) points -> binary ``.pcd`` bytes (float32 columns, nuPlan's merged-cloud header)."""
    pts = np.ascontiguousarray(points, dtype="<f4")
    if pts.ndim != 2 or pts.shape[1] != len(fields):
        raise ValueError(f"points must be (N, {len(fields)}) for fields {fields}, got {pts.shape}")
    n = len(pts)
    k = len(fields)
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\n"
        "VERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\n"
        f"SIZE {' '.join(['4'] * k)}\n"
        f"TYPE {' '.join(['F'] * k)}\n"
        f"COUNT {' '.join(['1'] * k)}\n"
        f"WIDTH {n}\n"
        "HEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {n}\n"
        "DATA binary\n"
    )
    return header.encode("ascii") + pts.tobytes()


def decode_pcd(data: bytes, source: str = "<bytes>") -> tuple[tuple[str, ...], np.ndarray]:
    """Binary ``.pcd`` bytes -> (field names, (N, fields) float32 array); a broken header names ``source``."""
    header: dict[str, list[str]] = {}
    pos = 0
    while "DATA" not in header:
        end = data.find(b"\n", pos)
        if end < 0:
            raise DataError(f"{source}: not a .pcd file (header ends before its DATA line); re-download it")
        line = data[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        if key not in _HEADER_KEYS:
            raise DataError(f"{source}: unexpected .pcd header line '{line[:60]}' (expected one of "
                            f"{', '.join(_HEADER_KEYS)}); the file is corrupt or not a nuPlan point cloud")
        header[key] = vals
    missing = [k for k in ("FIELDS", "SIZE", "TYPE", "POINTS") if k not in header]
    if missing:
        raise DataError(f"{source}: .pcd header lacks {', '.join(missing)}")
    if header["DATA"] != ["binary"]:
        raise DataError(f"{source}: only 'DATA binary' .pcd files are supported (got DATA {' '.join(header['DATA'])})")
    fields, sizes, types = header["FIELDS"], header["SIZE"], header["TYPE"]
    counts = header.get("COUNT", ["1"] * len(fields))
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise DataError(f"{source}: .pcd header FIELDS/SIZE/TYPE/COUNT lengths differ")
    try:
        dtype = np.dtype([(f, _TYPES[(t, int(s))], (int(c),) if int(c) > 1 else ())
                          for f, s, t, c in zip(fields, sizes, types, counts)])
        n = int(header["POINTS"][0])
    except (KeyError, ValueError) as e:
        raise DataError(f"{source}: unsupported .pcd SIZE/TYPE/POINTS in header ({e})") from None
    need = n * dtype.itemsize
    if len(data) - pos < need:
        raise DataError(f"{source}: .pcd holds {len(data) - pos} data bytes but POINTS {n} needs {need}; "
                        f"the file is truncated, re-download it")
    rows = np.frombuffer(data, dtype=dtype, count=n, offset=pos)
    cols = [rows[f].astype(np.float32).reshape(n, max(1, int(np.prod(dtype[f].shape)))) for f in fields]
    return tuple(fields), np.concatenate(cols, axis=1) if cols else np.zeros((n, 0), np.float32)


def read_pcd(path: str | Path) -> tuple[tuple[str, ...], np.ndarray]:
    path = Path(path)
    data = read_data_file(path, "LiDAR file ")
    return decode_pcd(data, str(path))
