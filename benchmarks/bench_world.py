"""World benchmarks (printed figures, not timed tests).

1. generation with sensors at a profile (default demo), one worker: scenes/s per core (target >= 5);
2. ``SceneStore.load_agent_input`` with the default sensor set (current cameras + LiDAR): ms per scene
   (target <= 20 ms);
3. scaling to 100,000 scenes: manifest size and index time of a 100k-scene manifest, and load time per scene
   measured on datasets of two sizes (it must not grow with the dataset).

    python benchmarks/bench_world.py [--profile demo] [--scenes 95]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from latentvla.config import resolve
from latentvla.data.store import SceneStore
from latentvla.runtime.parallel import pin_threads
from latentvla.world.configuration import WorldConfig
from latentvla.world.generate import generate


def load_ms(root: Path, n: int = 200) -> float:
    store = SceneStore(root)
    tokens = store.tokens()
    for t in tokens[:5]:
        store.load_agent_input(t)  # warm-up (imports, first log parse)
    times = []
    for t in (tokens * (n // len(tokens) + 1))[:n]:
        t0 = time.perf_counter()
        store.load_agent_input(t)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--scenes", type=int, default=95)
    args = ap.parse_args()
    pin_threads()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve(WorldConfig, "world", args.profile, overrides=[f"scenes={args.scenes}"])
        t0 = time.perf_counter()
        generate(Path(tmp) / "w", cfg, workers=1, quiet=True)
        dt = time.perf_counter() - t0
        print(f"generation ({args.profile}, {cfg.sensors.image_width}x{cfg.sensors.image_height} x "
              f"{len(cfg.sensors.cameras)} cameras, {cfg.sensors.lidar_beams}-beam LiDAR, stride {cfg.stride}): "
              f"{args.scenes / dt:.2f} scenes/s on 1 core ({dt:.1f} s for {args.scenes} scenes)")
        small = load_ms(Path(tmp) / "w")
        print(f"load_agent_input (current cameras + LiDAR, checksums verified): {small:.2f} ms per scene (median)")
        cfg2 = resolve(WorldConfig, "world", args.profile, overrides=[f"scenes={args.scenes * 3}", "seed=1"])
        generate(Path(tmp) / "w3", cfg2, workers=2, quiet=True)
        big = load_ms(Path(tmp) / "w3")
        print(f"load_agent_input on a 3x larger dataset: {big:.2f} ms per scene (ratio {big / small:.2f}; "
              "per-scene cost must not grow with size)")
        # A 100k-scene manifest: written once at the end; everything else is per log.
        m = json.loads((Path(tmp) / "w" / "manifest.json").read_text())
        scenes = [dict(s, token=f"{i:016x}") for i, s in enumerate(m["scenes"] * (100_000 // len(m["scenes"]) + 1))]
        m["scenes"] = scenes[:100_000]
        big_manifest = Path(tmp) / "big" / "manifest.json"
        big_manifest.parent.mkdir()
        big_manifest.write_text(json.dumps(m, sort_keys=True, indent=1))
        t0 = time.perf_counter()
        store = SceneStore(big_manifest.parent)
        t_index = time.perf_counter() - t0
        print(f"100,000-scene manifest: {big_manifest.stat().st_size / 1e6:.1f} MB, indexed in {t_index:.2f} s "
              f"({len(store)} scenes); sensor blobs and frames live in per-log files written once")


if __name__ == "__main__":
    main()
