"""Planner host latency and size (printed figures, not timed tests), batch 1, on ``--threads`` CPU threads:

1. parameters (trainable, and the total the agent runs, i.e. with the frozen EfficientNet-Lite0 camera backbone
   for the camera hosts) and the fp32 weight size of every host (ego-mlp, transfuser, ipad) at ``--profile``;
2. model forward (eval, no_grad) on random features of the exact cached shapes and dtypes: median and p90 ms;
3. end to end, as ``latentvla score`` runs a planner live: ``PlannerAgent.plan`` on a synthetic ``AgentInput``
   (3 camera images at the embedded world's sensor size, one LiDAR sweep), i.e. image resize, the frozen
   EfficientNet-Lite0 on each camera, the LiDAR histogram and the forward: median ms;
4. each host's latency relative to transfuser's.

Random weights by default (latency does not depend on them); ``--runs DIR ...`` times trained planner run
directories instead (their own configs). The last line is the same figures as JSON.

    python benchmarks/bench_planner.py [--profile demo] [--repeats 200] [--threads 1] [--runs RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from latentvla.config import resolve
from latentvla.planner.agent import PlannerAgent
from latentvla.planner.checkpoint import load_planner, save_planner
from latentvla.planner.configuration import PlannerConfig
from latentvla.planner.features import FEATURE_DTYPES, LITE0, feature_shapes, lite0_backbone
from latentvla.planner.modeling import build_model
from latentvla.planner.train import MODEL_FILE
from latentvla.runtime.timing import interleaved_ms
from latentvla.schema import AgentInput, Camera, EgoStatus, Lidar, command_one_hot
from latentvla.world.sensors import SensorConfig

HOSTS = ("ego-mlp", "transfuser", "ipad")
REFERENCE = "transfuser"


def random_features(cfg: PlannerConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Batch-1 features of the exact shapes and stored dtypes ``FeatureBuilder`` / the planner cache produce."""
    out = {}
    for key, shape in feature_shapes(cfg.features).items():
        dtype = FEATURE_DTYPES[key]
        if key == "camera":
            arr = rng.integers(0, 256, (1, *shape), dtype=np.uint8)
        elif key == "lidar_bev":
            arr = rng.random((1, *shape)).astype(dtype)
        elif key == "ego_status":
            arr = np.concatenate([rng.normal(0, 3, 4), command_one_hot("straight")]).astype(dtype)[None]
        else:  # frozen-backbone activations
            arr = np.abs(rng.normal(0, 1, (1, *shape))).astype(dtype)
        out[key] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


def synthetic_input(cfg: PlannerConfig, rng: np.random.Generator) -> AgentInput:
    """An ``AgentInput`` built by hand: 4 history ego statuses, the configured cameras at the embedded world's
    sensor resolution (so the resize is timed too) and a LiDAR sweep of the world's size, in the current frame."""
    sensors = SensorConfig()
    h, w = sensors.image_height, sensors.image_width
    k = np.array([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1]], dtype=np.float64)
    cams = {name: Camera(name, k, np.eye(3), np.zeros(3), rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                         width=w, height=h) for name in cfg.features.camera.cameras}
    n_points = int(sensors.lidar_beams * round(360.0 / sensors.lidar_azimuth_step_deg))
    pts = np.concatenate([rng.uniform(-40, 40, (n_points, 2)), rng.uniform(0, 3, (n_points, 1)),
                          rng.random((n_points, 1)), rng.integers(0, sensors.lidar_beams, (n_points, 1))], 1)
    statuses = [EgoStatus(np.array([-1.5 * (3 - i) * 5.0, 0.0, 0.0]), np.array([5.0, 0.0]), np.array([0.2, 0.0]),
                          command_one_hot("straight")) for i in range(4)]
    return AgentInput(ego_statuses=statuses, cameras=[{}, {}, {}, cams], lidars=[None, None, None,
                                                                                 Lidar(pts.astype(np.float32))],
                      token="bench")


def lite0_parameters(cfg: PlannerConfig) -> int:
    if cfg.host == "ego-mlp" or cfg.features.camera.backbone != LITE0:
        return 0
    cam = cfg.features.camera
    return sum(p.numel() for p in lite0_backbone(cam.image_height, cam.image_width).model.parameters())


def prepare(name: str, model, cfg: PlannerConfig, run: Path, rng: np.random.Generator) -> dict:
    """Everything one host's timings need: the model with random features, the agent with a synthetic input."""
    model.eval()
    feats = random_features(cfg, rng)
    agent = PlannerAgent(run)
    ai = synthetic_input(cfg, rng)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    own = sum(p.numel() for p in model.parameters())
    row = {"host": cfg.host, "name": name, "trainable_params": int(trainable),
           "total_params": int(own + lite0_parameters(cfg)),
           "weights_mb": sum(v.numel() * v.element_size() for v in model.state_dict().values()) / 2**20}

    @torch.no_grad()
    def forward():
        model(feats)

    cam = cfg.features.camera
    return {"row": row, "model": forward, "e2e": lambda: agent.plan([ai]),
            "image_size": (cam.image_height, cam.image_width) if cfg.host != "ego-mlp" else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", help="planner profile of the random-weight hosts")
    ap.add_argument("--hosts", nargs="+", default=list(HOSTS), choices=HOSTS)
    ap.add_argument("--runs", nargs="+", type=Path, default=None,
                    help="trained planner run directories to time instead of random-weight hosts")
    ap.add_argument("--repeats", type=int, default=200, help="timed model forwards per host")
    ap.add_argument("--e2e-repeats", type=int, default=40, help="timed end-to-end agent calls per host")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    tmp_dir = tempfile.TemporaryDirectory(prefix="bench_planner_")  # removed at exit
    tmp = Path(tmp_dir.name)
    hosts = []
    if args.runs:
        for run in args.runs:
            model, cfg = load_planner(run / MODEL_FILE)
            hosts.append(prepare(run.name, model, cfg, run, rng))
    else:
        for host in args.hosts:
            cfg = resolve(PlannerConfig, "planner", args.profile, overrides=[f"host={host}"])
            torch.manual_seed(cfg.seed)
            model = build_model(cfg)
            run = tmp / host  # the agent reads a run directory: save the random weights as one
            run.mkdir()
            save_planner(model, cfg, run / MODEL_FILE)
            hosts.append(prepare(host, model, cfg, run, rng))
    model_ms = interleaved_ms([h["model"] for h in hosts], args.repeats, args.warmup)
    e2e_warmup = max(2, args.warmup // 4)
    if len({h["image_size"] for h in hosts} - {None}) <= 2:  # the process keeps two frozen backbones (features.py)
        e2e_ms = interleaved_ms([h["e2e"] for h in hosts], args.e2e_repeats, e2e_warmup)
    else:  # runs of many image sizes: one host after the other, or every call would rebuild its backbone
        e2e_ms = [interleaved_ms([h["e2e"]], args.e2e_repeats, e2e_warmup)[0] for h in hosts]
    rows = [h["row"] for h in hosts]
    for r, m, e in zip(rows, model_ms, e2e_ms, strict=True):
        r.update({"model_ms_median": float(np.median(m)), "model_ms_p90": float(np.percentile(m, 90)),
                  "e2e_ms_median": float(np.median(e)), "e2e_ms_p90": float(np.percentile(e, 90))})

    ref = next((r for r in rows if r["host"] == REFERENCE), None)
    for r in rows:
        r["model_vs_transfuser"] = r["model_ms_median"] / ref["model_ms_median"] if ref else None
        r["e2e_vs_transfuser"] = r["e2e_ms_median"] / ref["e2e_ms_median"] if ref else None

    src = "runs " + " ".join(str(r) for r in args.runs) if args.runs else f"profile {args.profile}, random weights"
    print(f"planner latency, batch 1, {args.threads} thread(s), torch {torch.__version__} ({src}); "
          f"model: median of {args.repeats}, end to end: median of {args.e2e_repeats}, hosts interleaved")
    head = (f"{'host':14s} {'trainable':>10s} {'total':>10s} {'MB':>6s} {'model ms':>9s} {'p90':>7s} "
            f"{'e2e ms':>8s} {'p90':>7s} {'model/TF':>8s} {'e2e/TF':>7s}")
    print(head)
    print("-" * len(head))

    def ratio(v) -> str:
        return "-" if v is None else f"{v:.2f}x"

    for r in rows:
        print(f"{r['name']:14s} {r['trainable_params']:>10,d} {r['total_params']:>10,d} {r['weights_mb']:>6.2f} "
              f"{r['model_ms_median']:>9.2f} {r['model_ms_p90']:>7.2f} {r['e2e_ms_median']:>8.2f} "
              f"{r['e2e_ms_p90']:>7.2f} {ratio(r['model_vs_transfuser']):>8s} {ratio(r['e2e_vs_transfuser']):>7s}")
    print("total = trainable + the frozen EfficientNet-Lite0 the camera hosts run at inference; "
          "e2e = PlannerAgent.plan on a synthetic AgentInput (features from raw sensors + forward)")
    print(json.dumps({"benchmark": "planner_latency", "profile": None if args.runs else args.profile,
                      "threads": args.threads, "batch": 1, "repeats": args.repeats,
                      "e2e_repeats": args.e2e_repeats, "hosts": rows}))


if __name__ == "__main__":
    main()
