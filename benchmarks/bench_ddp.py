"""DDP step-time ratio (printed figures, not a timed test): planner training on 1 process vs 2 DDP processes
(gloo on CPU, Lightning's launcher, the CLI as users run it) with the same global batch and data.

Reports, per setting, the median optimizer-step time after warm-up (``step_ms_median`` in metrics.json; start-up,
DDP set-up and validation excluded) and the whole ``trainer.fit`` time, the ratio of the 2-process to the 1-process step time (each step covers the same global batch, so 0.5 is
perfect scaling) and the efficiency ``(t1 / t2) / 2`` (speed-up per process). On this 2-core machine each process
gets one core; the gloo all-reduce and Lightning's per-step overhead show as the excess over 0.5. The last line is
the same figures as JSON.

    python benchmarks/bench_ddp.py --work /tmp/bench_ddp [--data DIR] [--host transfuser] [--epochs 2] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def _world(work: Path, scenes: int) -> Path:
    from latentvla.config import resolve
    from latentvla.world.configuration import WorldConfig
    from latentvla.world.generate import generate

    root = work / "world"
    if not (root / "manifest.json").is_file():
        cfg = resolve(WorldConfig, "world", "quick", overrides=[f"scenes={scenes}", "seed=11"])
        generate(root, cfg, workers=2, quiet=True)
    return root


def _train(data: Path, out: Path, host: str, devices: int, epochs: int, batch: int, cache: Path) -> dict:
    exe = Path(sys.executable).parent / "latentvla"
    cmd = [str(exe), "planner", "train", "--data", str(data), "--host", host, "--out", str(out), "--profile", "quick",
           "--workers", "1", "--quiet", "--cache-dir", str(cache), "--set", f"train.epochs={epochs}",
           "--set", f"train.batch_size={batch}", "--set", "train.num_threads=1"]
    if devices > 1:
        cmd += ["--devices", str(devices), "--strategy", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"training failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (world, caches, runs)")
    ap.add_argument("--data", type=Path, default=None, help="an existing dataset instead of a generated one")
    ap.add_argument("--scenes", type=int, default=400)
    ap.add_argument("--host", default="transfuser")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or _world(args.work, args.scenes)
    cache = args.work / "planner_cache"
    rows = {}
    for devices in (1, 2):
        out = args.work / f"run_{args.host}_{devices}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        m = _train(data, out, args.host, devices, args.epochs, args.batch, cache)
        rows[devices] = {"train_seconds": m["train_seconds"], "steps": m["steps"], "step_ms": m["step_ms_median"]}
    ratio = rows[2]["step_ms"] / rows[1]["step_ms"]
    out = {"host": args.host, "global_batch": args.batch, "one_process": rows[1], "two_processes": rows[2],
           "step_time_ratio_2_over_1": round(ratio, 3), "efficiency_2": round(1 / ratio / 2, 3)}
    print(f"{args.host}: global batch {args.batch}; 1 process {rows[1]['step_ms']:.1f} ms/step, 2 DDP processes "
          f"{rows[2]['step_ms']:.1f} ms/step (ratio {ratio:.2f}; efficiency {1 / ratio / 2:.2f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
