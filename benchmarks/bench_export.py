"""PyTorch vs onnxruntime latency of an exported planner (printed figures, not a timed test), batch 1.

Builds an untrained planner of ``--host`` at ``--profile`` (quick by default; latency does not depend on the
weights), or takes a trained ``--run``, exports it with ``latentvla.export.onnx.export_onnx`` and times the model
forward (eval, no_grad) against the onnxruntime session on the same random features (exact cached shapes and
dtypes), on the same number of threads (``torch.set_num_threads`` and ORT ``intra_op_num_threads``). Calls are
interleaved round-robin (``interleaved_ms``) so background load affects both alike; ORT runs without idle-thread
spinning, which would otherwise starve the PyTorch call after it (ORT alone is ~0.5 ms faster with spinning). The
PyTorch forward computes every head (agent boxes, BEV map: what ``PlannerAgent`` runs); the ONNX graph keeps only
the exported outputs, so part of the gap is pruned auxiliary heads. The last line is JSON.

    python benchmarks/bench_export.py [--host ipad] [--profile quick] [--threads 2] [--warmup 5] [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from latentvla.config import resolve
from latentvla.export.onnx import export_onnx, onnx_session, random_features
from latentvla.planner.checkpoint import load_planner, save_planner
from latentvla.planner.configuration import PlannerConfig
from latentvla.planner.modeling import build_model
from latentvla.planner.train import MODEL_FILE
from latentvla.runtime.timing import interleaved_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="ipad", help="transfuser | ipad | ego-mlp (ignored with --run)")
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--run", type=Path, default=None, help="a trained planner run directory instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            cfg = resolve(PlannerConfig, "planner", args.profile, None, [f"host={args.host}"])
            torch.manual_seed(0)
            run = Path(tmp) / "run"
            save_planner(build_model(cfg), cfg, run / MODEL_FILE)
        summary = export_onnx(run, Path(tmp) / "model.onnx")
        model, cfg = load_planner(run / MODEL_FILE if run.is_dir() else run)
        # no busy-waiting ORT threads: they would steal the CPU from the PyTorch call timed right after
        session = onnx_session(Path(tmp) / "model.onnx", threads=args.threads, spin=False)

    feats = random_features(cfg, 1, seed=0)
    tensors = {k: torch.from_numpy(v) for k, v in feats.items()}

    def torch_forward() -> None:
        with torch.no_grad():
            model(tensors)

    def ort_forward() -> None:
        session(feats)

    t_ms, o_ms = (float(np.median(x)) for x in interleaved_ms([torch_forward, ort_forward], args.repeats,
                                                              args.warmup))
    result = {"host": cfg.host, "profile": None if args.run else args.profile, "threads": args.threads,
              "batch": 1, "warmup": args.warmup, "repeats": args.repeats, "torch_ms": round(t_ms, 3),
              "onnxruntime_ms": round(o_ms, 3), "torch_over_onnxruntime": round(t_ms / o_ms, 2),
              "onnx_bytes": summary["bytes"], "max_abs_diff": summary["max_abs_diff"]}
    print(f"{cfg.host} ({result['profile'] or run}), batch 1, {args.threads} threads, median of {args.repeats} "
          f"after {args.warmup} warm-up:")
    print(f"  pytorch      {t_ms:8.3f} ms")
    print(f"  onnxruntime  {o_ms:8.3f} ms")
    print(f"  ratio        {t_ms / o_ms:8.2f}x (pytorch / onnxruntime)")
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
