"""Closed-loop speed (a printed figure, not a timed test): ``latentvla eval closed-loop`` of one agent on a
family-balanced subset of the test split, reactive traffic, and the real-time factor it reaches:

    real-time factor = scenes x seconds simulated / wall-clock seconds

The wall clock covers everything the command does per scene: the expert's reference rollout, the agent's rollout
(sensors rendered at 2 Hz, the network, LQR tracking, the 10 Hz world) and the scoring. Target: >= 5x real time for
the distilled student on 100 scenes x 15 s on 2 cores (``--workers 2``). The result JSON (``--out``) is the
evaluation itself, so the same run also gives the student's closed-loop numbers.

    python benchmarks/bench_closed_loop.py --data DATA --agent RUN_DIR [--scenes 100] [--seconds 15] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import time

from latentvla.closedloop.runner import evaluate_closed_loop

TARGET = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="Embedded-world dataset (demo profile for the target figure).")
    ap.add_argument("--agent", required=True, help="Agent spec: a planner run (the distilled student), expert, ...")
    ap.add_argument("--scenes", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--non-reactive", action="store_true")
    ap.add_argument("--out", default=None, help="Also write the closed-loop result JSON here.")
    args = ap.parse_args()
    start = time.time()
    res = evaluate_closed_loop(args.data, args.agent, args.out, reactive=not args.non_reactive, seconds=args.seconds,
                               scenes=args.scenes, workers=args.workers, quiet=True)
    wall = time.time() - start
    sim = res["scenes"] * args.seconds
    factor = sim / wall
    print(f"closed loop {res['agent']} ({res['mode']}): {res['scenes']} scenes x {args.seconds:g} s = {sim:.0f} s "
          f"simulated in {wall:.1f} s wall on {args.workers} worker(s) ({os.cpu_count()} CPUs): "
          f"{factor:.2f}x real time (target >= {TARGET:g}x: {'met' if factor >= TARGET else 'NOT met'}); "
          f"{1000 * wall / max(res['scenes'], 1):.0f} ms per scene")
    print(f"closed_loop_score {res['mean']['closed_loop_score']:.4f}, collision_rate {res['mean']['collision_rate']:.3f},"
          f" invalid {res['invalid']}")


if __name__ == "__main__":
    main()
