"""Geometric checks of the embedded world's camera rasterizer and LiDAR ray caster against ``Camera.project``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import shapely

from latentvla.world.render.camera import (
    BRAKE_OFF_COLOR,
    BRAKE_ON_COLOR,
    GRASS_COLOR,
    LAMP_OFF_COLOR,
    LIGHT_COLORS,
    SKY_COLOR,
    prepare_scene,
    render_camera,
    render_cameras,
    shade_colors,
)
from latentvla.world.render.lidar import GRASS_INTENSITY, cast_lidar
from latentvla.world.render.types import GroundLayer, RenderBox, RenderScene
from latentvla.world.sensors import SensorConfig, lidar_ray_directions, make_camera, make_rig

CFG = SensorConfig()
ROAD = (90, 90, 95)


def _square(cx: float, cy: float, half: float) -> np.ndarray:
    return np.array([[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]])


def _corners(box: RenderBox) -> np.ndarray:
    sx = np.array([-1, 1, 1, -1, -1, 1, 1, -1]) * box.length / 2
    sy = np.array([-1, -1, 1, 1, -1, -1, 1, 1]) * box.width / 2
    sz = np.array([0, 0, 0, 0, 1, 1, 1, 1]) * box.height
    c, s = np.cos(box.heading), np.sin(box.heading)
    return np.stack([box.x + c * sx - s * sy, box.y + s * sx + c * sy, box.z + sz], axis=1)


def _hull_mask(cam, points: np.ndarray) -> np.ndarray:
    uv, depth = cam.project(points)
    assert (depth > 0).all()
    hull = cv2.convexHull(np.rint(uv * 16).astype(np.int32))
    mask = np.zeros((cam.height, cam.width), np.uint8)
    cv2.fillConvexPoly(mask, hull, 1, cv2.LINE_8, 4)
    return mask.astype(bool)


def _color_mask(img: np.ndarray, colors) -> np.ndarray:
    colors = np.asarray(colors).reshape(-1, 3)
    return (img[..., None, :] == colors).all(axis=-1).any(axis=-1)


def _box_along(cam_name: str, dist: float, kind: str = "barrier", color=(10, 200, 220), **kw) -> RenderBox:
    """A 2 x 2 x 2 m box ``dist`` m along the optical axis of ``cam_name`` (ground level, top above the camera)."""
    cam = make_camera(cam_name, CFG)
    fwd = cam.sensor2ego_rotation[:, 2]
    p = cam.sensor2ego_translation + dist * fwd
    return RenderBox(float(p[0]), float(p[1]), 0.0, 2.0, 2.0, 2.0, 0.3, kind, color, **kw)


@pytest.mark.parametrize(("cam_name", "dist"), [("cam_f0", 15.0), ("cam_l0", 12.0), ("cam_b0", 15.0)])
def test_box_pixels_match_projected_hull(cam_name: str, dist: float) -> None:
    cam = make_camera(cam_name, CFG)
    box = _box_along(cam_name, dist)
    img = render_camera(cam, RenderScene(ground=[], boxes=[box]))
    assert img.shape == (CFG.image_height, CFG.image_width, 3) and img.dtype == np.uint8
    box_px = _color_mask(img, shade_colors(box.color))
    hull = _hull_mask(cam, _corners(box))
    assert box_px.sum() > 50
    assert (box_px & hull).sum() >= 0.9 * box_px.sum()
    assert (box_px & hull).sum() >= 0.5 * hull.sum()
    # Only front-facing faces are drawn: at most 3 distinct shades; the top is above the camera, so unseen.
    shades = {tuple(c) for c in img[box_px].tolist()}
    assert 1 <= len(shades) <= 3
    assert tuple(shade_colors(box.color)[4]) not in shades


def test_empty_scene_sky_above_grass_below_horizon() -> None:
    for name, cam in make_rig(CFG).items():
        img = render_camera(cam, RenderScene())
        cy = int(round(cam.intrinsics[1, 2]))
        assert (img[: cy - 1] == SKY_COLOR).all(), name
        assert (img[cy + 1:] == GRASS_COLOR).all(), name


def test_near_plane_clipped_road_fills_bottom_rows() -> None:
    scene = RenderScene(ground=[GroundLayer("road", ROAD, [_square(0.0, 0.0, 100.0)], 0.1)])
    imgs = render_cameras(make_rig(CFG), scene)
    for name, img in imgs.items():
        assert (img[-20:] == ROAD).all(), name
        assert (img[:20] == SKY_COLOR).all(), name
    # the 100 m half-size square ends before the horizon: a sliver of grass remains just below it
    f0 = imgs["cam_f0"]
    assert (f0 == GRASS_COLOR).all(axis=-1).any()


def _ground_truth_mask(cam, polygon: np.ndarray) -> np.ndarray:
    """Per-pixel ray cast onto z=0 and exact point-in-polygon: the reference for ground-layer rasterisation."""
    v, u = np.mgrid[0: cam.height, 0: cam.width].astype(float)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)
    d = (pix @ np.linalg.inv(cam.intrinsics).T) @ cam.sensor2ego_rotation.T
    z0 = cam.sensor2ego_translation[2]
    down = d[:, 2] < -1e-9
    t = np.where(down, z0 / np.where(down, -d[:, 2], 1.0), 0.0)
    hit = cam.sensor2ego_translation + t[:, None] * d
    inside = down & shapely.contains_xy(shapely.Polygon(polygon), hit[:, 0], hit[:, 1])
    return inside.reshape(cam.height, cam.width)


@pytest.mark.parametrize("cam_name", ["cam_f0", "cam_l0", "cam_b0"])
def test_ground_polygon_behind_camera_matches_per_pixel_ray_cast(cam_name: str) -> None:
    # one vertex far behind the camera: projecting it without near-plane clipping gives a wrong shape
    cam = make_camera(cam_name, CFG)
    rot = cam.sensor2ego_rotation[:2, 2]  # optical axis on the ground
    side = np.array([-rot[1], rot[0]])
    base = cam.sensor2ego_translation[:2]
    poly = np.stack([base - 60.0 * rot + 0.5 * side, base + 25.0 * rot + 12.0 * side, base + 30.0 * rot - 9.0 * side])
    img = render_camera(cam, RenderScene(ground=[GroundLayer("road", ROAD, [poly])]))
    got = (img == ROAD).all(axis=-1)
    ref = _ground_truth_mask(cam, poly)
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(ref.astype(np.uint8), kernel).astype(bool) & ~cv2.erode(ref.astype(np.uint8), kernel).astype(bool)
    assert ref.sum() > 1000
    assert not ((got != ref) & ~edge).any()
    assert (got != ref).sum() <= 0.02 * ref.sum()


def test_overlapping_polygons_of_one_layer_fill_their_union() -> None:
    # cv2.fillPoly is even-odd over the polygons of one call: overlaps must not turn into holes
    a, b = _square(12.0, -0.5, 1.5), _square(13.0, 0.5, 1.5)
    dashes = [_square(x, 1.5, 0.3) for x in np.arange(8.0, 30.0, 2.0)]
    scene = RenderScene(ground=[GroundLayer("marks", (250, 250, 250), [a, b, *dashes], 0.6)])
    cam = make_camera("cam_f0", CFG)
    img = render_camera(cam, scene)
    union = _hull_mask(cam, np.c_[a, np.zeros(4)]) | _hull_mask(cam, np.c_[b, np.zeros(4)])
    overlap = _hull_mask(cam, np.c_[_square(12.5, 0.0, 1.0), np.zeros(4)])
    white = (img == (250, 250, 250)).all(axis=-1)
    assert white[overlap].all()
    assert white[union].mean() > 0.95
    for d in dashes[:5]:
        hull = _hull_mask(cam, np.c_[d, np.zeros(4)])
        assert hull.sum() >= 2 and white[hull].mean() > 0.5


def test_layer_order_later_on_top() -> None:
    road = GroundLayer("road", ROAD, [_square(0.0, 0.0, 100.0)])
    mark = GroundLayer("mark", (240, 240, 240), [_square(10.0, 0.0, 1.0)])
    cam = make_camera("cam_f0", CFG)
    mask = _hull_mask(cam, np.c_[_square(10.0, 0.0, 0.9), np.zeros(4)])
    on_top = render_camera(cam, RenderScene(ground=[road, mark]))
    hidden = render_camera(cam, RenderScene(ground=[mark, road]))
    assert (on_top[mask] == (240, 240, 240)).all()
    assert (hidden[mask] == ROAD).all()


def test_near_box_occludes_far_box_regardless_of_list_order() -> None:
    cam = make_camera("cam_f0", CFG)
    near = RenderBox(12.0, 0.0, 0.0, 1.0, 1.0, 1.2, 0.0, "barrier", (230, 40, 200))
    far = RenderBox(25.0, 0.0, 0.0, 2.0, 6.0, 3.0, 0.0, "barrier", (20, 230, 40))
    img = render_camera(cam, RenderScene(boxes=[near, far]))
    assert np.array_equal(img, render_camera(cam, RenderScene(boxes=[far, near])))
    near_px = _color_mask(img, shade_colors(near.color))
    far_px = _color_mask(img, shade_colors(far.color))
    both = _hull_mask(cam, _corners(near)) & _hull_mask(cam, _corners(far))
    assert both.sum() > 20
    assert not (far_px & both).any()
    assert near_px[both].mean() > 0.9
    assert far_px.sum() > 100  # the far box still shows around the near one


def test_camera_inside_box_and_box_behind_do_not_crash() -> None:
    cam = make_camera("cam_f0", CFG)
    around = RenderBox(1.0, 0.0, 0.0, 8.0, 4.0, 3.0, 0.0, "barrier", (1, 2, 3))
    behind = RenderBox(-10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0, "barrier", (4, 5, 6))
    straddle = RenderBox(2.0, 2.5, 0.0, 6.0, 1.0, 2.0, 0.0, "barrier", (7, 8, 9))  # crosses the near plane
    img = render_camera(cam, RenderScene(boxes=[around, behind, straddle]))
    assert not _color_mask(img, shade_colors(behind.color)).any()
    assert _color_mask(img, shade_colors(straddle.color)).sum() > 50


def _lamp_scene(brake: bool, light: str) -> RenderScene:
    road = GroundLayer("road", ROAD, [_square(0.0, 0.0, 100.0)], 0.1)
    dash = GroundLayer("dash", (240, 240, 240), [_square(x, 2.0, 0.2) for x in range(4, 40, 3)], 0.6)
    car = RenderBox(14.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0, "vehicle", (40, 80, 200), brake_on=brake)
    light_box = RenderBox(18.0, -3.0, 2.5, 0.4, 0.5, 1.2, np.pi, "traffic_light", (30, 30, 30), light_state=light)
    return RenderScene(ground=[road, dash], boxes=[car, light_box])


def test_brake_and_signal_lamps_change_camera_but_not_lidar() -> None:
    cam = make_camera("cam_f0", CFG)
    on, off = _lamp_scene(True, "red"), _lamp_scene(False, "green")
    np.testing.assert_array_equal(cast_lidar(on, CFG), cast_lidar(off, CFG))
    img_on, img_off = render_camera(cam, on), render_camera(cam, off)
    diff = (img_on != img_off).any(axis=-1)
    car, light = on.boxes
    rear = _hull_mask(cam, _corners(car)[[0, 3, 4, 7]])  # the -x face
    head = _hull_mask(cam, _corners(light))
    assert (diff & rear).sum() >= 6
    assert not (diff & ~(rear | head)).any()
    assert _color_mask(img_on[rear & diff], [BRAKE_ON_COLOR]).all()
    assert _color_mask(img_off[rear & diff], [BRAKE_OFF_COLOR]).all()
    red_on = _color_mask(img_on, [LIGHT_COLORS["red"]]) & head
    green_on = _color_mask(img_off, [LIGHT_COLORS["green"]]) & head
    assert red_on.sum() >= 2 and green_on.sum() >= 2
    assert not _color_mask(img_on, [LIGHT_COLORS["green"]]).any()
    assert np.nonzero(red_on)[0].mean() < np.nonzero(green_on)[0].mean()  # red lamp is above green
    assert _color_mask(img_off[red_on], [LAMP_OFF_COLOR]).all()


def test_brake_lamps_visible_at_25m() -> None:
    cam = make_camera("cam_f0", CFG)
    car = RenderBox(27.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0, "vehicle", (200, 200, 200), brake_on=True)
    img = render_camera(cam, RenderScene(boxes=[car]))
    lamps = _color_mask(img, [BRAKE_ON_COLOR])
    assert lamps.sum() >= 2
    cols = np.nonzero(lamps)[1]
    assert cols.min() < cam.intrinsics[0, 2] < cols.max()  # one lamp on each side of the centre line


def _lidar_scene() -> RenderScene:
    boxes = [
        RenderBox(10.0, 0.0, 0.0, 4.5, 1.9, 1.5, 0.0, "vehicle", (1, 1, 1), lidar_intensity=0.31),
        RenderBox(-9.0, 0.3, 0.0, 4.5, 1.9, 1.6, np.pi, "vehicle", (1, 1, 1), lidar_intensity=0.32),  # azimuth wrap
        RenderBox(3.0, 6.0, 0.0, 2.0, 0.6, 1.0, 0.7, "barrier", (1, 1, 1), lidar_intensity=0.33),
        RenderBox(20.0, -8.0, 0.0, 0.3, 0.3, 6.0, 0.0, "pole", (1, 1, 1), lidar_intensity=0.34),
        RenderBox(14.0, -5.0, 2.5, 0.4, 0.5, 1.2, np.pi, "traffic_light", (1, 1, 1), lidar_intensity=0.35),
        RenderBox(30.0, 8.0, 0.0, 0.6, 0.6, 1.8, 1.0, "pedestrian", (1, 1, 1), lidar_intensity=0.36),
    ]
    road = GroundLayer("road", ROAD, [_square(0.0, 0.0, 7.0) * [10.0, 1.0]], 0.1)
    marks = GroundLayer("marks", (250, 250, 250), [_square(x, 3.5, 0.3) for x in range(-30, 30, 2)], 0.7)
    return RenderScene(ground=[road, marks], boxes=boxes)


def _local(points: np.ndarray, box: RenderBox) -> np.ndarray:
    c, s = np.cos(box.heading), np.sin(box.heading)
    dx, dy = points[:, 0] - box.x, points[:, 1] - box.y
    return np.stack([c * dx + s * dy, -s * dx + c * dy, points[:, 2] - box.z - box.height / 2], axis=1)


def _on_box_surface(xyz: np.ndarray, box: RenderBox, tol: float = 0.02) -> np.ndarray:
    """Inside the box grown by ``tol`` and within ``tol`` of one of its faces."""
    loc = np.abs(_local(xyz, box))
    half = np.array([box.length, box.width, box.height]) / 2
    return (loc <= half + tol).all(axis=1) & (np.abs(loc - half) <= tol).any(axis=1)


def test_lidar_points_lie_on_box_surfaces_or_ground() -> None:
    scene = _lidar_scene()
    pts = cast_lidar(scene, CFG)
    assert pts.dtype == np.float32 and pts.shape[1] == 5
    xyz = pts[:, :3].astype(np.float64)
    rng = np.linalg.norm(xyz - [0.0, 0.0, CFG.lidar_height], axis=1)
    assert rng.max() <= CFG.lidar_max_range + 1e-3
    on_any = np.zeros(len(pts), dtype=bool)
    upper = xyz[:, 2] > 0.05
    for box in scene.boxes:
        on = _on_box_surface(xyz, box)
        assert (on & upper).sum() > 0, box.kind  # every box (incl. the one behind, at azimuth +-pi) is hit
        np.testing.assert_allclose(pts[on & upper, 3], box.lidar_intensity, atol=1e-6)
        on_any |= on
    assert on_any[upper].all()  # off the ground, every return lies on some box surface
    ground = ~on_any
    assert ground.sum() > 1000 and np.abs(xyz[ground, 2]).max() < 1e-4
    ahead = (np.abs(_local(xyz, scene.boxes[0])) <= [2.27, 0.97, 0.77]).all(axis=1)
    assert ahead.sum() > 30
    assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(CFG.lidar_beams))


def test_lidar_ground_intensity_follows_top_layer() -> None:
    scene = _lidar_scene()
    pts = cast_lidar(scene, CFG).astype(np.float64)
    on_box = np.any([_on_box_surface(pts[:, :3], b) for b in scene.boxes], axis=0)
    g = pts[(np.abs(pts[:, 2]) < 1e-4) & ~on_box]
    in_road = shapely.contains_xy(shapely.Polygon(scene.ground[0].rings[0]), g[:, 0], g[:, 1])
    marks = shapely.union_all([shapely.Polygon(r) for r in scene.ground[1].rings])
    in_mark = shapely.contains_xy(marks, g[:, 0], g[:, 1])
    assert in_mark.sum() > 5 and in_road.sum() > 100 and (~in_road).sum() > 100
    np.testing.assert_allclose(g[in_mark, 3], 0.7, atol=1e-6)
    np.testing.assert_allclose(g[in_road & ~in_mark, 3], 0.1, atol=1e-6)
    np.testing.assert_allclose(g[~in_road & ~in_mark, 3], GRASS_INTENSITY, atol=1e-6)


def test_lidar_matches_brute_force_all_rays_all_boxes() -> None:
    rng = np.random.default_rng(3)
    params = np.stack([rng.uniform(-40, 40, 25), rng.uniform(-40, 40, 25), rng.choice([0.0, 2.0], 25),
                       rng.uniform(0.3, 6, 25), rng.uniform(0.3, 3, 25), rng.uniform(0.5, 4, 25),
                       rng.uniform(-np.pi, np.pi, 25)], axis=1)
    boxes = [RenderBox(*map(float, p), kind="barrier", color=(0, 0, 0)) for p in params if np.hypot(p[0], p[1]) > 5]
    scene = RenderScene(boxes=boxes)
    pts = cast_lidar(scene, CFG)
    dirs, _ = lidar_ray_directions(CFG)
    o = np.array([0.0, 0.0, CFG.lidar_height])
    t_best = np.where(dirs[:, 2] < 0, o[2] / np.maximum(-dirs[:, 2], 1e-12), np.inf)
    for b in boxes:
        loc_o = _local(o[None], b)[0]
        c, s = np.cos(b.heading), np.sin(b.heading)
        d = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], axis=1)
        half = np.array([b.length, b.width, b.height]) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-half - loc_o) / d, (half - loc_o) / d
        tn = np.nanmax(np.minimum(t1, t2), axis=1)
        tf = np.nanmin(np.maximum(t1, t2), axis=1)
        t_best = np.where((tn <= tf) & (tn > 0) & (tn < t_best), tn, t_best)
    expect = o + t_best[t_best <= CFG.lidar_max_range, None] * dirs[t_best <= CFG.lidar_max_range]
    assert len(pts) == len(expect)
    np.testing.assert_allclose(pts[:, :3], expect, atol=1e-3)


def test_prepared_scene_is_reusable_and_equivalent() -> None:
    scene = _lamp_scene(True, "yellow")
    ps = prepare_scene(scene)
    for name, cam in make_rig(CFG).items():
        assert np.array_equal(render_camera(cam, ps), render_camera(cam, scene)), name
