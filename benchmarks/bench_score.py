"""Scorer benchmark (printed figures, not timed tests), one core:

1. metric-cache build (SceneInputs + PDM-Closed plan per scene): scenes/s;
2. PDMS v1.1 with a warm cache (agent + reference simulated, all sub-scores): scenes/s, and the ratio against the
   official v1.1 scorer's ~23 ms per scene on this machine type (measured once by running the official code,
   navsim-metrics.md §10; it cannot be re-run here because the official stack does not install offline);
3. EPDMS v2 with a warm cache (agent + reference + human, the v2 sub-scores): scenes/s, against the official ~70 ms.

The target of the scorer issue is >= 400 scenes/s per core for PDMS (>= 10x the official scorer).

    python benchmarks/bench_score.py [--data DIR] [--scenes 200] [--agent constant-velocity]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from latentvla.agents import load_agent
from latentvla.config import resolve
from latentvla.eval.metric_cache import MetricCache
from latentvla.eval.runner import score_split
from latentvla.runtime.parallel import pin_threads
from latentvla.world.configuration import WorldConfig
from latentvla.world.generate import generate

OFFICIAL_MS = {"pdms": 23.0, "epdms": 70.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="dataset (default: generate a quick world)")
    ap.add_argument("--scenes", type=int, default=200, help="scenes of the generated world")
    ap.add_argument("--agent", default="constant-velocity")
    args = ap.parse_args()
    pin_threads()
    tmp = Path(tempfile.mkdtemp(prefix="bench_score_"))
    data = args.data
    if data is None:
        data = tmp / "world"
        generate(data, resolve(WorldConfig, "world", "quick", overrides=[f"scenes={args.scenes}", "seed=11"]),
                 workers=1, quiet=True)
    t0 = time.perf_counter()
    cache = MetricCache.open(data, cache_root=tmp / "cache", workers=1, quiet=True)
    build_s = time.perf_counter() - t0
    n = len(cache.tokens)
    print(f"metric cache build: {n} scenes in {build_s:.1f} s = {n / build_s:.1f} scenes/s per core")
    agent = load_agent(args.agent)
    for metric in ("pdms", "epdms"):
        score_split(data, agent, split="all", metric=metric, cache_root=tmp / "cache", quiet=True)  # warm
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            rows, _ = score_split(data, agent, split="all", metric=metric, cache_root=tmp / "cache", quiet=True)
            best = min(best, time.perf_counter() - t0)
        rate = len(rows) / best
        ratio = rate * OFFICIAL_MS[metric] / 1e3
        print(f"{metric}: {len(rows)} scenes in {best:.2f} s = {rate:.0f} scenes/s per core "
              f"({1e3 / rate:.2f} ms/scene; {ratio:.1f}x the official ~{OFFICIAL_MS[metric]:.0f} ms/scene)")


if __name__ == "__main__":
    main()
