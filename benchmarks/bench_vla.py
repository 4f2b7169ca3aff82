"""VLA teacher latency and size (printed figures, not timed tests), batch 1, on ``--threads`` CPU threads:

1. for every profile (quick, demo, full) a teacher with random weights, built exactly as ``vla train`` builds one
   (the in-code tokenizer plus 16 action codes, 12 action positions, the stride-32 grid of the profile's planner
   features): parameters (all, and the language model ``model.lm`` alone) and the prompt length L
   (``model.inputs(features)["input_ids"]``, image tokens included);
2. latency (eval, no_grad) on random features of the cached shapes and dtypes (``ego_status`` (1, 8) float32
   with a one-hot command, ``camera_s32`` (1, 320, h, w) float16), median and p90 ms, all interleaved:
   ``generate`` (one prefill of L tokens + 12 KV-cached greedy steps restricted to ``<act_*>``), ``encode``
   (``generate`` + one teacher-forced pass over its own tokens + attention pooling: what a distilled planner
   consumes per scene) and ``plan`` (``encode`` + the trajectory head: the teacher as a planner);
3. each profile's ``plan`` latency relative to demo's, from the same run;
4. paper scale, once (``--skip-paper-scale`` / ``--quick`` skip it): Qwen2.5-VL-3B-Instruct's language model
   sizes (hidden 2048, 36 layers, 16 heads, 2 kv heads, MLP 11008, tied head, rope theta 1e6, M-RoPE sections
   [16, 24, 24]) built through the same teacher class, random init, ``generate`` and ``encode`` at batch 1
   (``--paper-repeats``, few: seconds per call on a CPU). The vocabulary is our small tokenizer's (the teacher
   sizes its embeddings to the tokenizer), so the parameters the real 151,936-token vocabulary adds are printed
   as computed figures, next to the real model's counts taken on the meta device (nothing materialised).

Why: the teacher runs once per scene to produce the planner's distillation targets (``encode``) and is scored
as a planner itself (``plan``); these numbers say what that costs per scene at each profile and how far the CPU
profiles are from the paper's 3B backbone. Not timed: the frozen EfficientNet-Lite0 that produces ``camera_s32``
(the planner cache holds it) and, in the paper-scale row, the 3B release's vision tower. Random weights
(latency does not depend on them); the last line is the same figures as JSON. Nothing is downloaded.

    python benchmarks/bench_vla.py [--repeats 20] [--warmup 3] [--threads 1] [--skip-paper-scale] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach the hub

import numpy as np
import torch

from latentvla.config import PROFILES, resolve
from latentvla.planner.features import FEATURE_DTYPES, feature_shapes
from latentvla.runtime.timing import interleaved_ms
from latentvla.schema import command_one_hot
from latentvla.vla.configuration import VLAConfig, camera_key
from latentvla.vla.modeling import ADAPTERS, NO_SPECIAL_IDS, LatentVLATeacher, Qwen25VLAdapter
from latentvla.vla.processor import add_vla_tokens, build_tokenizer

NUM_CODES = 16  # latent action vocabulary K
NUM_POSITIONS = 12  # action tokens per scene N
REFERENCE = "demo"
PAPER_PROFILE = "full"  # the paper-scale row starts from this preset (vision overridden to lite0)
# Qwen2.5-VL-3B-Instruct (config.json of the release). BackboneConfig holds the sizes; the rest is what the
# adapter's tiny config fixes for small models (rope theta 1e4, sections head_dim // 4, untied head, 1024 positions).
PAPER_SIZES = {"hidden_size": 2048, "layers": 36, "heads": 16, "kv_heads": 2, "intermediate_size": 11008}
PAPER_TEXT = {"max_position_embeddings": 128000, "rms_norm_eps": 1e-6,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}}
PAPER_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
                "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
PAPER_VOCAB = 151936
SMOKE_SIZES = {"hidden_size": 256, "layers": 2, "heads": 2, "kv_heads": 2, "intermediate_size": 512}  # head_dim 128 (M-RoPE)


class PaperQwen25VLAdapter(Qwen25VLAdapter):
    """Qwen2.5-VL with the 3B release's config around the ``BackboneConfig`` sizes (tied head, rope theta 1e6,
    M-RoPE [16, 24, 24], the real vision tower, which the teacher drops as usual), built in ``dtype``."""

    def __init__(self, dtype: torch.dtype, vocab_size: int | None = None) -> None:
        self.dtype, self.vocab_size = dtype, vocab_size

    def tiny_config(self, b, vocab_size: int):
        from transformers import Qwen2_5_VLConfig

        ids = {} if self.vocab_size else NO_SPECIAL_IDS  # the real ids only make sense in the real vocabulary
        text = dict(PAPER_TEXT, vocab_size=self.vocab_size or vocab_size, hidden_size=b.hidden_size,
                    intermediate_size=b.intermediate_size, num_hidden_layers=b.layers, num_attention_heads=b.heads,
                    num_key_value_heads=b.kv_heads, **ids)
        return Qwen2_5_VLConfig(text_config=text, vision_config=PAPER_VISION, tie_word_embeddings=True, **ids)

    def build(self, b, vocab_size: int):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            return super().build(b, vocab_size)
        finally:
            torch.set_default_dtype(previous)


@contextlib.contextmanager
def adapter_for(family: str, adapter):
    """The teacher looks its adapter up in ``ADAPTERS``: swap one in for the duration of a build."""
    saved = ADAPTERS[family]
    ADAPTERS[family] = adapter
    try:
        yield
    finally:
        ADAPTERS[family] = saved


def random_features(cfg: VLAConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Batch-1 teacher features of the planner cache's shapes and stored dtypes."""
    ego = np.concatenate([rng.normal(0, 3, 4), command_one_hot("straight")]).astype(FEATURE_DTYPES["ego_status"])
    key = camera_key(cfg)
    shape = (1, *feature_shapes(cfg.features)[key])
    camera = (np.abs(rng.normal(0, 1, shape)) if key == "camera_s32" else rng.integers(0, 256, shape))
    return {"ego_status": torch.from_numpy(ego[None]), key: torch.from_numpy(camera.astype(FEATURE_DTYPES[key]))}


def build_teacher(cfg: VLAConfig) -> tuple[LatentVLATeacher, object]:
    """As ``latentvla.vla.train.build_teacher`` without a backbone path: in-code tokenizer, seeded random init."""
    tok = build_tokenizer()
    vocab = add_vla_tokens(tok, NUM_CODES)
    torch.manual_seed(cfg.seed)
    grid = feature_shapes(cfg.features)[camera_key(cfg)][-2:]
    return LatentVLATeacher(cfg, tok, vocab, NUM_POSITIONS, grid).eval(), tok


def n_params(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))  # shared (tied) tensors once


def describe(name: str, model: LatentVLATeacher, feats: dict[str, torch.Tensor]) -> dict:
    return {"profile": name, "params": n_params(model), "lm_params": n_params(model.lm),
            "hidden": model.hidden_size, "layers": model.lm.config.num_hidden_layers,
            "seq_len": int(model.inputs(feats)["input_ids"].shape[1]),
            "image_tokens": model.processor.num_image_tokens}


def timed(model: LatentVLATeacher, feats: dict[str, torch.Tensor], what: tuple[str, ...]) -> list:
    calls = {"generate": model.generate, "encode": model.encode, "plan": model.plan}

    def call(fn):
        @torch.no_grad()
        def run():
            fn(feats)
        return run

    return [call(calls[w]) for w in what]


def bf16_matmul(threads: int) -> tuple[bool, str]:
    """Whether bfloat16 matmuls are usable here: they must run, agree with float32 and not be much slower (CPUs
    without native bf16 kernels emulate them, a hundred times slower than float32 for a prefill-sized GEMM)."""
    a, b = torch.randn(64, 512), torch.randn(512, 512)
    try:
        out = a.bfloat16() @ b.bfloat16()
    except RuntimeError as e:
        return False, f"bf16 matmul fails: {e}"
    if not torch.allclose(out.float(), a @ b, rtol=0.05, atol=0.5):
        return False, "bf16 matmul gives wrong results"

    def best(x, y):
        t = []
        for _ in range(5):
            t0 = time.perf_counter()
            x @ y
            t.append(time.perf_counter() - t0)
        return min(t)

    slow = best(a.bfloat16(), b.bfloat16()) / best(a, b)
    if slow > 4:
        return False, (f"bf16 matmul runs but is {slow:.0f}x slower than float32 on this CPU "
                       f"(no native bf16 kernels: mkldnn bf16 = {torch.ops.mkldnn._is_mkldnn_bf16_supported()})")
    return True, f"bf16 matmul {slow:.1f}x the float32 time"


def cuda_sync(device: torch.device):
    """What timing must call to wait for ``device``'s queued work (None on the CPU)."""
    return torch.cuda.synchronize if device.type == "cuda" else None


def paper_scale(args, rng: np.random.Generator) -> dict:
    """The paper-scale row: Qwen2.5-VL-3B language model sizes through ``LatentVLATeacher``, timed once, on
    ``args.device`` (default cpu; on CUDA the weights are created on the GPU and ``auto`` means bfloat16)."""
    device = torch.device(getattr(args, "device", "cpu"))
    sizes = SMOKE_SIZES if getattr(args, "paper_smoke", False) else PAPER_SIZES
    if args.paper_dtype == "auto" and device.type == "cuda":
        dtype, why = torch.bfloat16, "bf16 on CUDA"
    elif args.paper_dtype == "auto":
        ok, why = bf16_matmul(args.threads)
        dtype = torch.bfloat16 if ok else torch.float32
        why = why if ok else why + "; float32 instead"
    else:
        dtype, why = getattr(torch, args.paper_dtype), "--paper-dtype"
    # the language model alone: lite0 image tokens (the 0.67 B-parameter vision tower is counted below, not timed)
    overrides = [f"backbone.{k}={v}" for k, v in sizes.items()] + [
        "backbone.gradient_checkpointing=false", "backbone.vision=lite0", "features.camera.backbone=efficientnet-lite0",
        "features.camera.image_height=96", "features.camera.image_width=192", "backbone.image_pool=[1,1]"]
    cfg = resolve(VLAConfig, "vla", PAPER_PROFILE, overrides=overrides)
    t0 = time.perf_counter()
    with adapter_for(cfg.backbone.family, PaperQwen25VLAdapter(dtype)), device:
        model, tok = build_teacher(cfg)
    model.pool_attn.to(dtype)  # reads the LM's hidden states; projector and trajectory head stay float32
    build_s = time.perf_counter() - t0
    feats = {k: v.to(device) for k, v in random_features(cfg, rng).items()}
    row = describe("paper-3B" if sizes is PAPER_SIZES else "paper-smoke", model, feats)
    ms = interleaved_ms(timed(model, feats, ("generate", "encode")), args.paper_repeats, args.paper_warmup,
                        sync=cuda_sync(device))
    for key, m in zip(("generate", "encode"), ms, strict=True):
        row.update({f"{key}_ms_median": float(np.median(m)), f"{key}_ms_p90": float(np.percentile(m, 90))})
    del model
    # the real release on the meta device (shapes only): its vocabulary and vision tower, counted not built
    with torch.device("meta"):
        real = PaperQwen25VLAdapter(torch.float32, PAPER_VOCAB).build(cfg.backbone, PAPER_VOCAB)
    ours, hidden = len(tok), PAPER_SIZES["hidden_size"]
    row.update({"dtype": str(dtype).removeprefix("torch."), "dtype_reason": why, "build_s": build_s,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "repeats": args.paper_repeats, "our_vocab": ours, "real_vocab": PAPER_VOCAB,
                "vocab_extra_tied_computed": (PAPER_VOCAB - ours) * hidden,
                "vocab_extra_untied_computed": 2 * (PAPER_VOCAB - ours) * hidden,
                "real_total_params_meta": n_params(real), "real_lm_params_meta": n_params(real.model.language_model),
                "real_vision_params_meta": n_params(real.model.visual)})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per profile and function")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-paper-scale", action="store_true", help="leave out the Qwen2.5-VL-3B-sized row")
    ap.add_argument("--paper-repeats", type=int, default=2, help="timed generate/encode calls at paper scale")
    ap.add_argument("--paper-warmup", type=int, default=1)
    ap.add_argument("--paper-dtype", default="auto", choices=("auto", "bfloat16", "float32"),
                    help="auto: bfloat16 where this CPU has usable bf16 matmuls, else float32")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 repeats, 1 warm-up, no paper scale")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable", category=FutureWarning)  # full
    if args.quick:
        args.repeats, args.warmup, args.skip_paper_scale = 5, 1, True
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    rows, fns = [], []
    for profile in args.profiles:
        cfg = resolve(VLAConfig, "vla", profile)
        model, _ = build_teacher(cfg)
        feats = random_features(cfg, rng)
        rows.append(describe(profile, model, feats))
        fns.append(timed(model, feats, ("generate", "encode", "plan")))
    ms = iter(interleaved_ms([fn for f in fns for fn in f], args.repeats, args.warmup))  # all 9 round-robin
    for r in rows:
        for key in ("generate", "encode", "plan"):
            m = next(ms)
            r.update({f"{key}_ms_median": float(np.median(m)), f"{key}_ms_p90": float(np.percentile(m, 90))})
    ref = next((r for r in rows if r["profile"] == REFERENCE), None)
    for r in rows:
        r["plan_vs_demo"] = r["plan_ms_median"] / ref["plan_ms_median"] if ref else None
    paper = None if args.skip_paper_scale else paper_scale(args, rng)

    print(f"VLA teacher latency, batch 1, {args.threads} thread(s), torch {torch.__version__}, random weights, "
          f"{NUM_CODES} codes x {NUM_POSITIONS} positions; median of {args.repeats} (p90) after {args.warmup} warm-up, "
          f"all profiles and functions interleaved")
    head = (f"{'profile':9s} {'params':>13s} {'lm params':>13s} {'D':>5s} {'lay':>3s} {'L':>4s} {'img':>4s} "
            f"{'generate ms':>11s} {'p90':>8s} {'encode ms':>10s} {'p90':>8s} {'plan ms':>9s} {'p90':>8s} "
            f"{'plan/demo':>9s}")
    print(head)
    print("-" * len(head))

    def fmt(r: dict, key: str, width: int) -> str:
        v = r.get(f"{key}_ms_median")
        return f"{'-':>{width}s} {'-':>8s}" if v is None else f"{v:>{width}.1f} {r[f'{key}_ms_p90']:>8.1f}"

    for r in rows + ([paper] if paper else []):
        ratio = r.get("plan_vs_demo")
        print(f"{r['profile']:9s} {r['params']:>13,d} {r['lm_params']:>13,d} {r['hidden']:>5d} {r['layers']:>3d} "
              f"{r['seq_len']:>4d} {r['image_tokens']:>4d} {fmt(r, 'generate', 11)} {fmt(r, 'encode', 10)} "
              f"{fmt(r, 'plan', 9)} {'-' if ratio is None else f'{ratio:.2f}x':>9s}")
    print("params = the whole teacher (LM + head + lite0 projector + pooling + trajectory head); lm params = "
          "model.lm (embeddings + decoder, no separate head); L = prompt length with the img image tokens; "
          "generate = prefill + 12 KV-cached greedy steps; encode = generate + teacher-forced pass + pooling; "
          "plan = encode + trajectory head")
    print("vision: quick and demo (lite0) drop the family's vision tower and feed the frozen EfficientNet-Lite0 "
          "stride-32 features (not timed: the planner cache holds them) through an MLP projector; full (native) "
          "runs the family's own (here one-block) vision tower on the stitched 224x672 image, inside the timings")
    if paper:
        print(f"paper-3B: Qwen2.5-VL-3B-Instruct language-model sizes (hidden 2048, 36 layers, 16 heads / 2 kv, "
              f"MLP 11008, tied head, rope theta 1e6, M-RoPE [16, 24, 24]) built through LatentVLATeacher "
              f"(adapter config swapped in; lite0 image tokens, 3x18 grid), random init, {paper['dtype']} "
              f"({paper['dtype_reason']}); built in {paper['build_s']:.0f} s; median of {paper['repeats']} after "
              f"{args.paper_warmup} warm-up, measured alone (not interleaved), plan not timed")
        print(f"paper-3B vocabulary: measured with our tokenizer's {paper['our_vocab']} tokens; the real "
              f"{paper['real_vocab']:,d}-row vocabulary would add {paper['vocab_extra_tied_computed']:,d} parameters "
              f"with the tied head (as released), {paper['vocab_extra_untied_computed']:,d} if untied (computed: "
              f"(V_real - V_ours) x 2048 per matrix, not measured) -> teacher ~"
              f"{paper['params'] + paper['vocab_extra_tied_computed']:,d} tied")
        print(f"paper-3B release on the meta device (counted, not built or timed): total "
              f"{paper['real_total_params_meta']:,d} = language model {paper['real_lm_params_meta']:,d} + vision "
              f"tower {paper['real_vision_params_meta']:,d} (depth 32, hidden 1280; not in the paper-3B timing)")
    print(json.dumps({"benchmark": "vla_latency", "threads": args.threads, "batch": 1, "repeats": args.repeats,
                      "warmup": args.warmup, "num_codes": NUM_CODES, "num_positions": NUM_POSITIONS,
                      "profiles": rows, "paper_scale": paper}))


if __name__ == "__main__":
    main()
