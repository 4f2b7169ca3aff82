"""Full model vs distilled student: parameters and batch-1 latency, and their ratio (printed, not a timed test).

Per profile (quick, demo) the models are built exactly as the comparison trains them, with random weights
(latency does not depend on them): the teacher (``vla`` preset, in-code tokenizer, 16 codes, 12 positions), the
full model (``ipad`` host of the ``planner`` preset plus gated fusion sized to the teacher's ``encode`` output) and
the student (the same host in eval mode: its distillation heads are training-only). Timed, interleaved, eval and
no_grad, on random features of the planner cache's shapes and dtypes:

- ``full``: the teacher's ``encode`` (prefill + 12 generated tokens + pooling) then the fused planner;
- ``student``: the planner alone; ``ratio`` = full / student (the paper reports about 3.8x);
- ``student_ort``: the same student exported to ONNX on onnxruntime (with the ``[export]`` extra).

The paper-scale row (``--skip-paper-scale`` skips it) pairs the Qwen2.5-VL-3B language-model sizes (random init,
timed through ``bench_vla.paper_scale``: generate and encode, few repeats) with the ``full`` planner preset's iPad
student; its ratio = (3B encode + fused planner) / student. Not timed anywhere: the frozen EfficientNet-Lite0
features every row shares. Nothing is downloaded.

With ``--device cuda`` every model and input lives on the GPU, each timed call ends with a synchronise, and the
paper-scale language model is bfloat16 (created on the GPU): the setting of the paper's own latency figure.

    python benchmarks/bench_distill.py [--repeats 50] [--warmup 5] [--threads 1] [--skip-paper-scale]
                                       [--device cuda] [--paper-smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_vla import build_teacher, cuda_sync, paper_scale, random_features  # noqa: E402

from latentvla.config import resolve  # noqa: E402
from latentvla.export.onnx import random_features as random_features_np  # noqa: E402
from latentvla.planner.configuration import PlannerConfig  # noqa: E402
from latentvla.planner.fusion import TEACHER_KEY  # noqa: E402
from latentvla.planner.modeling import build_model  # noqa: E402
from latentvla.runtime.timing import interleaved_ms  # noqa: E402
from latentvla.vla.configuration import VLAConfig  # noqa: E402


def planner_features(cfg: PlannerConfig, rng: np.random.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    """A batch-1 host input of the cached shapes and dtypes (the export module's random batch) on ``device``."""
    return {k: torch.from_numpy(v).to(device)
            for k, v in random_features_np(cfg, 1, int(rng.integers(1 << 31))).items()}


def fused_pair(profile: str, tokens: int, dim: int, device: torch.device):
    """(full planner, student planner, their config) at ``profile`` for teacher outputs of (tokens, dim)."""
    cfg = resolve(PlannerConfig, "planner", profile, overrides=["host=ipad"])
    full_cfg = replace(cfg, fusion=replace(cfg.fusion, enabled=True, context_tokens=tokens, context_dim=dim))
    stud_cfg = replace(cfg, distill=replace(cfg.distill, latent_target="teacher", latent_positions=12,
                                            latent_codes=16, full_key="x"))
    torch.manual_seed(0)
    return build_model(full_cfg).eval().to(device), build_model(stud_cfg).eval().to(device), cfg


def n_params(m: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in m.parameters()))


def profile_row(profile: str, args, rng) -> dict:
    device = torch.device(args.device)
    vcfg = resolve(VLAConfig, "vla", profile)
    teacher, _ = build_teacher(vcfg)
    teacher.to(device)
    tfeats = {k: v.to(device) for k, v in random_features(vcfg, rng).items()}
    with torch.no_grad():
        emb = teacher.encode(tfeats)["embeddings"]
    full, student, pcfg = fused_pair(profile, emb.shape[1], emb.shape[2], device)
    pfeats = planner_features(pcfg, rng, device)

    @torch.no_grad()
    def run_full():
        e = teacher.encode(tfeats)["embeddings"].to(torch.float16)
        full({**pfeats, TEACHER_KEY: e})

    @torch.no_grad()
    def run_student():
        student(pfeats)

    fns = [run_full, run_student]
    ort = student_session(student, pcfg, args.threads) if device.type == "cpu" else None
    if ort is not None:
        np_feats = {k: v.numpy() for k, v in pfeats.items()}
        fns.append(lambda: ort(np_feats))
    ms = interleaved_ms(fns, args.repeats, args.warmup, sync=cuda_sync(device))
    f, s = float(np.median(ms[0])), float(np.median(ms[1]))
    row = {"profile": profile, "teacher_params": n_params(teacher), "full_params": n_params(full) + n_params(teacher),
           "student_params": n_params(student), "full_ms": f, "student_ms": s, "ratio": f / s}
    if ort is not None:
        row.update(student_ort_ms=float(np.median(ms[2])), ratio_ort=f / float(np.median(ms[2])))
    return row


def student_session(student, cfg, threads: int):
    """The student exported to ONNX and loaded in onnxruntime (None without the [export] extra)."""
    import tempfile

    from latentvla.export.onnx import export_onnx, onnx_session
    from latentvla.planner.checkpoint import save_planner

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        save_planner(student, student.cfg, run / "model.safetensors")
        try:
            export_onnx(run, run / "student.onnx")
        except ValueError as e:  # onnxruntime missing: PyTorch figures only
            print(f"(no onnxruntime row: {e})")
            return None
        return onnx_session((run / "student.onnx").read_bytes(), threads=threads, spin=False)


def paper_row(args, rng) -> dict:
    device = torch.device(args.device)
    lm = paper_scale(argparse.Namespace(paper_dtype="auto", threads=args.threads, device=args.device,
                                        paper_smoke=args.paper_smoke, paper_repeats=args.paper_repeats,
                                        paper_warmup=1), rng)
    hidden = lm["hidden"]
    full, student, pcfg = fused_pair("full", 27 + 12, hidden, device)  # pooled lite0 tokens + 12 actions
    pfeats = planner_features(pcfg, rng, device)
    emb = torch.randn(1, 27 + 12, hidden).half().to(device)
    with torch.no_grad():
        ms_fused, ms_student = interleaved_ms([lambda: full({**pfeats, TEACHER_KEY: emb}), lambda: student(pfeats)],
                                              args.paper_planner_repeats, 2, sync=cuda_sync(device))
    fused, stud = float(np.median(ms_fused)), float(np.median(ms_student))
    total = lm["encode_ms_median"] + fused
    return {"profile": f"{lm['profile']} + full preset", "device": lm["device"], "teacher_params": lm["params"], "student_params": n_params(student),
            "full_params": lm["params"] + n_params(full), "encode_ms": lm["encode_ms_median"], "fused_ms": fused,
            "full_ms": total, "student_ms": stud, "ratio": total / stud, "dtype": lm["dtype"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paper-repeats", type=int, default=2)
    ap.add_argument("--paper-planner-repeats", type=int, default=10)
    ap.add_argument("--skip-paper-scale", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where every model runs (CUDA: timing waits "
                    "for the GPU; the paper-scale row is bfloat16, weights created on the GPU; no onnxruntime row)")
    ap.add_argument("--paper-smoke", action="store_true", help="a tiny stand-in for the 3B sizes (checks the path)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = [profile_row(p, args, rng) for p in ("quick", "demo")]
    if not args.skip_paper_scale:
        rows.append(paper_row(args, rng))
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"{args.threads} thread(s)"
    print(f"batch 1, {where}, median ms (full = teacher encode incl. generation + fused planner)")
    print(f"{'profile':24s} {'teacher':>12s} {'full':>12s} {'student':>12s} {'full ms':>10s} {'student ms':>11s} "
          f"{'ratio':>7s}")
    for r in rows:
        print(f"{r['profile']:24s} {r['teacher_params']:12,d} {r['full_params']:12,d} {r['student_params']:12,d} "
              f"{r['full_ms']:10.1f} {r['student_ms']:11.2f} {r['ratio']:7.1f}"
              + (f"   student on onnxruntime {r['student_ort_ms']:.2f} ms (ratio {r['ratio_ort']:.1f})"
                 if "student_ort_ms" in r else ""))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
