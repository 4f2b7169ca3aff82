"""Real-format building blocks of the NAVSIM reader: allow-list unpickling, nuPlan .pcd, frame conversion."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latentvla.data.navsim_source import (
    command_from_vector,
    convert_frame,
    extract_scenes,
    quaternion_matrix,
    quaternion_yaw,
)
from latentvla.data.pcd import decode_pcd, encode_pcd, read_pcd
from latentvla.data.safe_pickle import UnsafePickleError, safe_load, safe_loads
from latentvla.data.store import DataError


# --- allow-list unpickler ----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_reads_numpy_and_builtins(protocol):
    obj = [{"token": "a", "boxes": np.arange(14, dtype=np.float64).reshape(2, 7), "names": np.array(["vehicle", "x"]),
            "flag": np.bool_(True), "v": np.float32(1.5), "t": (1, 2.0, None), "s": {1, 2}, "b": b"\x00\x01"}]
    back = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert back[0]["token"] == "a" and back[0]["t"] == (1, 2.0, None) and back[0]["s"] == {1, 2}
    np.testing.assert_array_equal(back[0]["boxes"], obj[0]["boxes"])
    assert list(back[0]["names"]) == ["vehicle", "x"] and back[0]["v"] == np.float32(1.5)


def test_unpickler_maps_numpy1_module_names():
    """Real OpenScene logs were written by numpy 1.x: their arrays name numpy.core.multiarray."""
    data = pickle.dumps(np.array([1.0, 2.0]), protocol=2)
    assert b"numpy._core" in data or b"numpy.core" in data
    legacy = data.replace(b"numpy._core", b"numpy.core")
    np.testing.assert_array_equal(safe_loads(legacy), [1.0, 2.0])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_unpickler_refuses_other_classes(tmp_path):
    path = tmp_path / "log.pkl"
    path.write_bytes(pickle.dumps([{"token": "a", "x": _Evil()}]))
    with pytest.raises(UnsafePickleError, match=r"log\.pkl.*refusing to unpickle '(posix|os)\.system'"):
        safe_load(path)
    from collections import OrderedDict

    with pytest.raises(UnsafePickleError, match="collections.OrderedDict"):
        safe_loads(pickle.dumps(OrderedDict(a=1)), "x.pkl")


def test_unpickler_corrupt_and_missing(tmp_path):
    path = tmp_path / "broken.pkl"
    path.write_bytes(pickle.dumps([{"a": np.zeros(100)}])[:50])
    with pytest.raises(DataError, match=r"broken\.pkl is not a readable pickle"):
        safe_load(path)
    with pytest.raises(DataError, match=r"nothere\.pkl is missing"):
        safe_load(tmp_path / "nothere.pkl")


# --- .pcd ----------------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 50), st.integers(0, 2**31 - 1))
def test_pcd_round_trip(n, seed):
    pts = np.random.default_rng(seed).normal(size=(n, 6)).astype(np.float32)
    fields, back = decode_pcd(encode_pcd(pts))
    assert fields == ("x", "y", "z", "intensity", "ring", "lidar_info")
    np.testing.assert_array_equal(back, pts)


def test_pcd_golden_mixed_types_and_trailing_bytes():
    """A hand-written header with mixed column types; trailing bytes after POINTS rows are ignored (real files)."""
    header = (b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity ring\nSIZE 4 4 4 1 2\nTYPE F F F U U\n"
              b"COUNT 1 1 1 1 1\nWIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA binary\n")
    rows = np.array([(1.0, 2.0, 3.0, 200, 7), (-1.5, 0.0, 0.25, 3, 31)],
                    dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "u1"), ("r", "<u2")])
    fields, pts = decode_pcd(header + rows.tobytes() + b"\x00garbage")
    assert fields == ("x", "y", "z", "intensity", "ring")
    np.testing.assert_array_equal(pts, [[1, 2, 3, 200, 7], [-1.5, 0, 0.25, 3, 31]])


def test_pcd_errors_name_the_file(tmp_path):
    good = encode_pcd(np.zeros((4, 6), np.float32))
    bad_header = tmp_path / "bad.pcd"
    bad_header.write_bytes(good.replace(b"VIEWPOINT", b"VIEWPINT"))
    with pytest.raises(DataError, match=r"bad\.pcd: unexpected \.pcd header line 'VIEWPINT"):
        read_pcd(bad_header)
    ascii_pcd = tmp_path / "ascii.pcd"
    ascii_pcd.write_bytes(good.replace(b"DATA binary", b"DATA ascii"))
    with pytest.raises(DataError, match=r"ascii\.pcd: only 'DATA binary'"):
        read_pcd(ascii_pcd)
    short = tmp_path / "short.pcd"
    short.write_bytes(good[:-5])
    with pytest.raises(DataError, match=r"short\.pcd.*truncated"):
        read_pcd(short)
    with pytest.raises(DataError, match=r"none\.pcd is missing"):
        read_pcd(tmp_path / "none.pcd")
    with pytest.raises(DataError, match="not a .pcd file"):
        decode_pcd(b"hello world", "x.pcd")


# --- frames --------------------------------------------------------------------------------------------------
def test_quaternion_golden():
    h = 0.7
    q = [math.cos(h / 2), 0, 0, math.sin(h / 2)]
    assert quaternion_yaw(q) == pytest.approx(h)
    np.testing.assert_allclose(quaternion_matrix(q), [[math.cos(h), -math.sin(h), 0], [math.sin(h), math.cos(h), 0],
                                                      [0, 0, 1]], atol=1e-12)
    # 90 deg about x: y -> z
    s = math.sqrt(0.5)
    np.testing.assert_allclose(quaternion_matrix([s, s, 0, 0]) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    with pytest.raises(ValueError, match="invalid quaternion"):
        quaternion_matrix([0, 0, 0, 0])


def test_command_vector():
    assert command_from_vector([1, 0, 0, 0]) == "left"
    assert command_from_vector(np.array([0, 0, 1, 0])) == "right"
    assert command_from_vector([0, 0, 0, 0]) == "unknown"


def _frames(n: int, no_route: tuple[int, ...] = ()) -> list[dict]:
    return [{"token": f"t{i}", "roadblock_ids": [] if i in no_route else ["1"]} for i in range(n)]


def test_extract_scenes_sliding_windows():
    """NAVSIM's filter: 14-frame windows at frame_interval, token = window frame 3, has_route on that frame."""
    assert extract_scenes(_frames(13), {}) == []
    assert extract_scenes(_frames(14), {}) == [3]
    assert extract_scenes(_frames(20), {}) == list(range(3, 10))
    assert extract_scenes(_frames(20), {"frame_interval": 3}) == [3, 6, 9]
    assert extract_scenes(_frames(20, no_route=(5,)), {}) == [3, 4, 6, 7, 8, 9]
    assert extract_scenes(_frames(20, no_route=(5,)), {"has_route": False}) == list(range(3, 10))
    assert extract_scenes(_frames(20), {"tokens": ["t4", "t9", "t15"]}) == [4, 9]


def test_convert_frame_reports_missing_fields():
    with pytest.raises(DataError, match=r"log\.pkl: frame abc lacks or has a malformed OpenScene field.*anns"):
        convert_frame({"token": "abc"}, "log.pkl")
