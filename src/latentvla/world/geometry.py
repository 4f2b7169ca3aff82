"""Planar geometry for the world: arc-length polylines, curves, offsets and oriented boxes (all vectorised)."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np


def wrap(a: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def dedupe(points: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Drop consecutive duplicate vertices (zero-length segments break headings)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 2:
        return points
    keep = np.ones(len(points), dtype=bool)
    keep[1:] = np.hypot(*np.diff(points, axis=0).T) > eps
    return points[keep]


class Polyline:
    """A path parameterised by arc length ``s``; poses are interpolated linearly between vertices."""

    def __init__(self, points: np.ndarray):
        pts = dedupe(points)
        if len(pts) < 2:
            raise ValueError("a polyline needs at least two distinct points")
        self.points = pts
        seg = np.diff(pts, axis=0)
        self.seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self.s = np.concatenate([[0.0], np.cumsum(self.seg_len)])
        self.seg_heading = np.arctan2(seg[:, 1], seg[:, 0])
        # Curvature per vertex from heading change over the neighbouring half-segments.
        dh = wrap(np.diff(self.seg_heading))
        ds = 0.5 * (self.seg_len[:-1] + self.seg_len[1:])
        k = np.zeros(len(pts))
        k[1:-1] = dh / np.maximum(ds, 1e-6)
        self.curvature = k
        # Plain-list copies for the scalar fast path (numpy call overhead dominates single lookups).
        self._s_list = self.s.tolist()
        self._pts = pts.tolist()
        self._seg_len = self.seg_len.tolist()
        self._seg_heading = self.seg_heading.tolist()

    def pose1(self, s: float) -> tuple[float, float, float]:
        """Scalar :meth:`pose` without numpy overhead (the simulator's hot path)."""
        sl = self._s_list
        s = min(max(s, 0.0), sl[-1])
        i = min(max(bisect_right(sl, s) - 1, 0), len(self._seg_len) - 1)
        t = (s - sl[i]) / max(self._seg_len[i], 1e-12)
        (x0, y0), (x1, y1) = self._pts[i], self._pts[i + 1]
        return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, self._seg_heading[i]

    @property
    def length(self) -> float:
        return float(self.s[-1])

    def _index(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        i = np.clip(np.searchsorted(self.s, s, side="right") - 1, 0, len(self.seg_len) - 1)
        t = (s - self.s[i]) / np.maximum(self.seg_len[i], 1e-12)
        return i, t

    def xy(self, s: np.ndarray | float) -> np.ndarray:
        i, t = self._index(s)
        return self.points[i] + (self.points[i + 1] - self.points[i]) * np.asarray(t)[..., None]

    def heading(self, s: np.ndarray | float) -> np.ndarray:
        i, _ = self._index(s)
        return self.seg_heading[i]

    def pose(self, s: np.ndarray | float) -> np.ndarray:
        """(..., 3) x, y, heading at arc length s (clamped to the ends)."""
        xy = self.xy(s)
        return np.concatenate([xy, np.asarray(self.heading(s))[..., None]], axis=-1)

    def curvature_at(self, s: np.ndarray | float) -> np.ndarray:
        return np.interp(s, self.s, self.curvature)

    def max_abs_curvature(self, s0: float, s1: float) -> float:
        m = (self.s >= s0) & (self.s <= s1)
        return float(np.max(np.abs(self.curvature[m]))) if np.any(m) else 0.0

    def project(self, xy: np.ndarray, s_min: float = -np.inf, s_max: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """Nearest point on the path for (N, 2) points: arc length s and signed lateral offset (left +)."""
        xy = np.atleast_2d(np.asarray(xy, dtype=np.float64))
        lo = max(0, int(np.searchsorted(self.s, s_min, side="right")) - 1) if np.isfinite(s_min) else 0
        hi = int(np.searchsorted(self.s, s_max, side="left")) + 1 if np.isfinite(s_max) else len(self.s)
        hi = min(max(hi, lo + 2), len(self.s))
        a = self.points[lo:hi - 1]
        ab = self.points[lo + 1:hi] - a
        L2 = np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12)
        ap = xy[:, None, :] - a[None]
        t = np.clip(np.einsum("nij,ij->ni", ap, ab) / L2, 0.0, 1.0)
        proj = a[None] + t[..., None] * ab[None]
        d2 = np.sum((xy[:, None, :] - proj) ** 2, axis=-1)
        j = np.argmin(d2, axis=1)
        rows = np.arange(len(xy))
        s = self.s[lo + j] + t[rows, j] * np.sqrt(L2[j])
        cross = ab[j, 0] * ap[rows, j, 1] - ab[j, 1] * ap[rows, j, 0]
        lat = np.sign(cross) * np.sqrt(d2[rows, j])
        return s, lat

    def slice_points(self, s0: float, s1: float) -> np.ndarray:
        """Vertices between s0 and s1 with interpolated end points."""
        inner = self.points[(self.s > s0) & (self.s < s1)]
        return np.concatenate([self.xy(s0)[None], inner, self.xy(s1)[None]])


def resample(points: np.ndarray, step: float) -> np.ndarray:
    line = Polyline(points)
    n = max(2, int(np.ceil(line.length / step)) + 1)
    return line.xy(np.linspace(0.0, line.length, n))


def offset(points: np.ndarray, d: float) -> np.ndarray:
    """Offset a polyline by ``d`` metres to its left (negative: right), using vertex normals."""
    pts = dedupe(points)
    tang = np.gradient(pts, axis=0)
    tang /= np.maximum(np.hypot(tang[:, 0], tang[:, 1]), 1e-12)[:, None]
    normal = np.stack([-tang[:, 1], tang[:, 0]], axis=1)
    return pts + d * normal


def arc(center: np.ndarray, radius: float, a0: float, a1: float, step: float = 1.0) -> np.ndarray:
    n = max(2, int(np.ceil(abs(a1 - a0) * radius / step)) + 1)
    a = np.linspace(a0, a1, n)
    return np.stack([center[0] + radius * np.cos(a), center[1] + radius * np.sin(a)], axis=1)


def hermite(p0: np.ndarray, h0: float, p1: np.ndarray, h1: float, step: float = 1.0, k: float = 1.0) -> np.ndarray:
    """Cubic Hermite curve from pose (p0, h0) to (p1, h1); tangent length k * chord."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    chord = float(np.hypot(*(p1 - p0)))
    m0 = k * chord * np.array([np.cos(h0), np.sin(h0)])
    m1 = k * chord * np.array([np.cos(h1), np.sin(h1)])
    n = max(3, int(np.ceil(chord * 1.3 / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    return h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1


def box_corners(x, y, heading, length, width) -> np.ndarray:
    """(..., 4, 2) footprint corners (front-left, front-right, rear-right, rear-left) of oriented boxes."""
    x, y, heading = np.asarray(x, float), np.asarray(y, float), np.asarray(heading, float)
    hl, hw = np.asarray(length, float) / 2, np.asarray(width, float) / 2
    c, s = np.cos(heading), np.sin(heading)
    lx = np.stack([hl, hl, -hl, -hl], axis=-1)
    ly = np.stack([hw, -hw, -hw, hw], axis=-1) * np.ones_like(lx)
    cx = x[..., None] + c[..., None] * lx - s[..., None] * ly
    cy = y[..., None] + s[..., None] * lx + c[..., None] * ly
    return np.stack([cx, cy], axis=-1)


def boxes_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Separating-axis test between (N, 4, 2) and (N, 4, 2) rectangles; True where they overlap (touching excluded)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    overlap = np.ones(a.shape[:-2], dtype=bool)
    for poly in (a, b):
        for k in range(2):
            edge = poly[..., k + 1, :] - poly[..., k, :]
            axis = np.stack([-edge[..., 1], edge[..., 0]], axis=-1)
            pa = np.einsum("...ij,...j->...i", a, axis)
            pb = np.einsum("...ij,...j->...i", b, axis)
            sep = (pa.max(-1) <= pb.min(-1)) | (pb.max(-1) <= pa.min(-1))
            overlap &= ~sep
    return overlap


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (x * (6 * x - 15) + 10)
