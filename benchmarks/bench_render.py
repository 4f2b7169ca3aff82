"""Micro-benchmark of the embedded world's sensor renderers on a synthetic, typically busy scene.

Why: the simulator renders 4 cameras + 1 LiDAR scan per frame for every scene it generates, so these two
functions bound dataset-generation throughput. Run: ``python benchmarks/bench_render.py [--example out.png]``.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from latentvla.world.render.camera import prepare_scene, render_camera
from latentvla.world.render.lidar import cast_lidar
from latentvla.world.render.types import GroundLayer, RenderBox, RenderScene
from latentvla.world.sensors import SensorConfig, make_rig


def _rect(cx: float, cy: float, length: float, width: float, heading: float = 0.0) -> np.ndarray:
    c, s = np.cos(heading), np.sin(heading)
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [length / 2, width / 2]
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


def synthetic_scene(seed: int = 0) -> RenderScene:
    """A 4-lane road along x with a crossing road, ~300 marking rings, sidewalks, and 30 road users and props."""
    rng = np.random.default_rng(seed)
    road = [_rect(0.0, 0.0, 300.0, 14.0), _rect(40.0, 0.0, 14.0, 300.0)]
    road += [_rect(x, 0.0, 10.0, 14.0) for x in (-80.0, -40.0, 80.0, 120.0, 160.0, 200.0, -120.0, -160.0)]
    sidewalk = [_rect(0.0, 9.5, 300.0, 5.0), _rect(0.0, -9.5, 300.0, 5.0)]
    dashes = [_rect(x, y, 3.0, 0.15) for y in (-3.5, 3.5) for x in np.arange(-150.0, 150.0, 6.0)]
    dashes += [_rect(40.0 + x, y, 0.15, 3.0) for x in (-3.5, 3.5) for y in np.arange(-150.0, 150.0, 6.0)]
    edges = [_rect(0.0, y, 300.0, 0.15) for y in (-6.9, 6.9)] + [_rect(0.0, y, 300.0, 0.12) for y in (-0.1, 0.1)]
    crosswalk = [_rect(x, y, 3.0, 0.5) for x in (30.0, 50.0) for y in np.arange(-6.5, 7.0, 1.0)]
    crosswalk += [_rect(40.0 + x, y, 0.5, 3.0) for y in (-10.0, 10.0) for x in np.arange(-6.5, 7.0, 1.0)]
    arrow = np.array([[0.0, -0.15], [2.0, -0.15], [2.0, -0.5], [3.0, 0.0], [2.0, 0.5], [2.0, 0.15], [0.0, 0.15]])
    arrows = [arrow + [x, y] for x in np.arange(-120.0, 20.0, 10.0) for y in (-5.25, -1.75)]
    stop = [_rect(28.0, -3.5, 0.4, 7.0)]
    ground = [
        GroundLayer("road", (90, 90, 95), road, 0.1),
        GroundLayer("sidewalk", (170, 165, 160), sidewalk, 0.2),
        GroundLayer("lane_dash", (240, 240, 240), dashes, 0.6),
        GroundLayer("lane_edge", (235, 235, 235), edges[:2], 0.6),
        GroundLayer("center_line", (240, 200, 40), edges[2:], 0.6),
        GroundLayer("crosswalk", (245, 245, 245), crosswalk + stop + arrows, 0.6),
    ]
    boxes = [
        RenderBox(14.0, 0.0 - 1.75, 0.0, 4.6, 1.9, 1.5, 0.0, "vehicle", (200, 40, 40), brake_on=True),
        RenderBox(22.0, 1.75, 0.0, 4.8, 2.0, 1.6, 0.0, "vehicle", (40, 80, 200), brake_on=False),
        RenderBox(29.0, -8.0, 3.2, 0.4, 0.45, 1.1, np.pi, "traffic_light", (30, 30, 30), light_state="red"),
        RenderBox(29.0, -8.0, 0.0, 0.2, 0.2, 3.2, 0.0, "pole", (120, 120, 120)),
        RenderBox(18.0, 7.5, 0.0, 0.5, 0.6, 1.75, -np.pi / 2, "pedestrian", (230, 160, 30)),
    ]
    kinds = [("vehicle", (4.5, 1.9, 1.5)), ("pedestrian", (0.5, 0.6, 1.75)), ("bicycle", (1.8, 0.6, 1.6)),
             ("traffic_cone", (0.4, 0.4, 0.7)), ("barrier", (2.0, 0.4, 1.0)), ("pole", (0.2, 0.2, 4.0))]
    while len(boxes) < 30:
        kind, (length, width, height) = kinds[rng.integers(len(kinds))]
        x, y = rng.uniform(-60.0, 80.0), rng.choice([-5.25, -1.75, 1.75, 5.25, -9.0, 9.0])
        if abs(x) < 6.0 and abs(y) < 3.0:
            continue
        color = tuple(int(v) for v in rng.integers(30, 230, 3))
        boxes.append(RenderBox(x, float(y), 0.0, length, width, height, float(rng.normal(0.0, 0.1)), kind, color,
                               brake_on=bool(rng.random() < 0.5)))
    return RenderScene(ground, boxes)


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--example", default="", help="write an upscaled 4-camera mosaic of the scene here")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    cfg = SensorConfig()
    rig = make_rig(cfg)
    scene = synthetic_scene()
    n_rings = sum(len(layer.rings) for layer in scene.ground)
    print(f"scene: {len(scene.ground)} layers, {n_rings} rings, {len(scene.boxes)} boxes; "
          f"{len(rig)} cameras {cfg.image_width}x{cfg.image_height}")

    def all_cams() -> None:
        ps = prepare_scene(scene)
        for cam in rig.values():
            render_camera(cam, ps, cfg.render_range)

    ms_all = _time(all_cams, args.repeat)
    ps = prepare_scene(scene)
    ms_prep = _time(lambda: prepare_scene(scene), args.repeat)
    for name, cam in rig.items():
        print(f"  {name}: {_time(lambda cam=cam: render_camera(cam, ps, cfg.render_range), args.repeat):6.2f} ms")
    print(f"prepare_scene: {ms_prep:.2f} ms; all {len(rig)} cameras incl. prepare: {ms_all:.2f} ms "
          f"({ms_all / len(rig):.2f} ms per camera)")
    ms_lidar = _time(lambda: cast_lidar(scene, cfg), args.repeat)
    pts = cast_lidar(scene, cfg)
    print(f"lidar: {ms_lidar:.2f} ms per scan ({cfg.lidar_beams}x{int(360 / cfg.lidar_azimuth_step_deg)} rays, "
          f"{len(pts)} returns)")
    if args.example:
        order = ["cam_l0", "cam_f0", "cam_r0", "cam_b0"]
        tiles = [render_camera(rig[n], ps, cfg.render_range) for n in order if n in rig]
        mosaic = np.concatenate(tiles, axis=1)
        big = cv2.resize(mosaic, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(args.example, cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
        print(f"wrote {args.example} ({' | '.join(order)})")


if __name__ == "__main__":
    main()
