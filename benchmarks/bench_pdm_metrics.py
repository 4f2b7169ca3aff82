"""PDMS v1.1 scorer geometry benchmark (printed figures, not timed tests).

Builds realistic scorer inputs from a small generated world (two simulated proposals per scene: the logged human plan
and the same plan 30 % faster, as ``score_proposals`` simulates them) and prints the mean ms per scene of
``ego_area``, ``no_at_fault_collision``, ``time_to_collision`` and ``driving_direction_compliance`` (target: the four
together well under 1 ms), then the whole ``score_proposals`` throughput in scenes/s on one core (target >= 400).
The scenes are timed as generated (~18 polygons, ~6 tracks) and densified with shifted copies of their tracks and map
polygons (~100 polygons, ~30 tracks: the target's size, a stress case since the copies crowd the ego's path).

    python benchmarks/bench_pdm_metrics.py [--scenes 40] [--world DIR] [--repeat 20]

The world is generated with ``latentvla world generate --profile quick --seed 3`` if ``--world`` does not exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import shapely
import shapely.affinity

from latentvla.data.store import SceneStore
from latentvla.eval.interpolate import trajectory_states_batch
from latentvla.eval.observation import Tracks
from latentvla.eval.pdm_metrics import (
    DrivableMap,
    driving_direction_compliance,
    ego_area,
    ego_points,
    no_at_fault_collision,
    time_to_collision,
)
from latentvla.eval.scene_inputs import scene_inputs
from latentvla.eval.scene_score import score_proposals
from latentvla.eval.tracker import simulate
from latentvla.runtime.parallel import pin_threads


def densify(inputs, tracks: int = 30, polygons: int = 100):
    """The same scene with shifted copies of its tracks and map polygons up to ``tracks`` / ``polygons`` each."""
    trk, dm = inputs.tracks, inputs.drivable
    shifts = [(dx, dy) for dy in (0.0, 3.5, -3.5, 7.0, -7.0) for dx in (0.0, 12.0, -12.0, 24.0, -24.0, 36.0)]
    k = min(len(shifts), -(-tracks // max(1, len(trk))))
    cat = {f: np.concatenate([getattr(trk, f)] * k) for f in ("length", "width", "valid", "heading", "vx", "vy")}
    cat["x"] = np.concatenate([trk.x + dx for dx, _ in shifts[:k]])
    cat["y"] = np.concatenate([trk.y + dy for _, dy in shifts[:k]])
    names = trk.names * k
    tokens = [f"{t}#{i}" for i in range(k) for t in trk.tokens]
    m = -(-polygons // max(1, len(dm.polygons)))
    polys = [shapely.affinity.translate(p, 30.0 * (i % 3 - 1), 30.0 * (i // 3 % 3 - 1))
             for i in range(m) for p in dm.polygons]
    dmap = DrivableMap(polys, dm.kinds * m, [f"{p}#{i}" for i in range(m) for p in dm.ids],
                       np.concatenate([dm.on_route] * m))
    return dataclasses.replace(inputs, drivable=dmap), Tracks(tokens, names, **cat)


def build_cases(world: Path, n: int, dense: bool) -> list[tuple]:
    store = SceneStore(world)
    cases = []
    for token in store.tokens()[:n]:
        inputs = scene_inputs(store.load_scene(token, with_sim_state=False))
        tracks = inputs.tracks
        if dense:
            inputs, tracks = densify(inputs)
            inputs.__dict__["tracks"] = tracks  # the cached property
        poses = np.stack([inputs.human_poses, inputs.human_poses * [1.3, 1.3, 1.0]])
        ref = trajectory_states_batch(inputs.initial_state, poses, 0.5, t0_us=inputs.t0_us)
        states = simulate(np.broadcast_to(inputs.initial_state, (len(poses), len(inputs.initial_state))), ref)
        cases.append((inputs, poses, states, ego_points(states), tracks))
    return cases


def run(cases: list[tuple], repeat: int, label: str) -> None:
    n_poly = np.mean([len(c[0].drivable.polygons) for c in cases])
    n_trk = np.mean([len(c[4]) for c in cases])
    print(f"{label}: {len(cases)} scenes, 2 proposals x 41 steps, {n_poly:.0f} map polygons and {n_trk:.0f} tracks "
          "on average")
    # ego_area's map index is built lazily once per map: time the first call separately.
    t0 = time.perf_counter()
    areas = [ego_area(pts, states[..., :2], inputs.drivable) for inputs, _, states, pts, _ in cases]
    first = (time.perf_counter() - t0) * 1e3 / len(cases)
    funcs = {
        "ego_area": lambda c, a: ego_area(c[3], c[2][..., :2], c[0].drivable),
        "no_at_fault_collision": lambda c, a: no_at_fault_collision(c[2], c[3], a, c[4]),
        "time_to_collision": lambda c, a: time_to_collision(c[2], c[3], a, c[4]),
        "driving_direction_compliance": lambda c, a: driving_direction_compliance(c[3], a),
    }
    total = 0.0
    for name, fn in funcs.items():
        t0 = time.perf_counter()
        for _ in range(repeat):
            for c, a in zip(cases, areas):
                fn(c, a)
        ms = (time.perf_counter() - t0) * 1e3 / (repeat * len(cases))
        total += ms
        print(f"  {name:30s} {ms:8.3f} ms/scene")
    print(f"  {'sum of the four':30s} {total:8.3f} ms/scene (ego_area first call per map: {first:.3f} ms)")
    for inputs, poses, *_ in cases:
        score_proposals(inputs, poses)  # warm-up
    t0 = time.perf_counter()
    reps = max(1, repeat // 4)
    for _ in range(reps):
        for inputs, poses, *_ in cases:
            score_proposals(inputs, poses)
    dt = (time.perf_counter() - t0) / (reps * len(cases))
    print(f"  score_proposals (simulation + all sub-scores): {dt * 1e3:.3f} ms/scene, {1 / dt:.0f} scenes/s on 1 core")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", type=int, default=40)
    ap.add_argument("--world", type=Path, default=None, help="dataset (default: a quick world in a temp folder)")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    pin_threads()
    if args.world is None:
        args.world = Path(tempfile.mkdtemp(prefix="bench_pdm_")) / "world"
    if not args.world.exists():
        exe = Path(sys.executable).with_name("latentvla")
        subprocess.run([str(exe), "world", "generate", "--out", str(args.world), "--scenes", str(args.scenes),
                        "--profile", "quick", "--seed", "3"], check=True, capture_output=True)
    run(build_cases(args.world, args.scenes, dense=False), args.repeat, "world scenes")
    run(build_cases(args.world, args.scenes, dense=True), args.repeat, "densified (copies of tracks and polygons)")


if __name__ == "__main__":
    main()
