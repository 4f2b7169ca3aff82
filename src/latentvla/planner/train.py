"""``latentvla planner train``: one Lightning path for every host (transfuser | ipad | ego-mlp).

Features and targets come from the planner cache (built once per dataset and feature config, shared by all hosts
and seeds), so an epoch is pure tensor work. The train split trains; the val split selects the epoch with the
lowest average displacement error (ADE), whose weights become ``RUN/model.safetensors``. iPad additionally needs
its anchors (k-means of the train split's expert trajectories) and each anchor's PDMS sub-scores per train scene,
scored offline by the project's scorer and cached beside the metric cache. The run directory holds the resolved
config, ``run.json`` (config hash, provenance) and ``metrics.json``; a finished run with the same config is reused.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from latentvla.config import config_hash, dump_yaml
from latentvla.planner.configuration import PlannerConfig
from latentvla.planner.sources import Sources, add_inputs, configure, relative_sources
from latentvla.runtime.distributed import (
    Launch,
    StepTimer,
    curve_logger,
    is_rank_zero,
    replica_checksums,
    train_loader,
    trainer_kwargs,
)
from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import torch_threads
from latentvla.runtime.provenance import provenance

MODEL_FILE = "model.safetensors"
COMMAND_DIMS = slice(4, 8)  # the one-hot driving command inside ego_status is left unnormalised


class ArrayDataset(torch.utils.data.Dataset):
    """(features, targets) of cached scenes held in memory as numpy arrays; items are torch tensors."""

    def __init__(self, features: dict[str, np.ndarray], targets: dict[str, np.ndarray]):
        sizes = {len(v) for v in (*features.values(), *targets.values())}
        if len(sizes) != 1:
            raise ValueError(f"features and targets disagree on the number of scenes: {sorted(sizes)}")
        self.features, self.targets = features, targets
        self.size = sizes.pop()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        return ({k: torch.from_numpy(np.asarray(v[i])) for k, v in self.features.items()},
                {k: torch.from_numpy(np.asarray(v[i])) for k, v in self.targets.items()})


def normalization_stats(ego_status: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension mean / std of the train split's ego status (the one-hot command stays as is)."""
    x = np.asarray(ego_status, dtype=np.float64)
    mean, std = x.mean(0), x.std(0)
    mean[COMMAND_DIMS], std[COMMAND_DIMS] = 0.0, 1.0
    std = np.where(std > 1e-6, std, 1.0)
    return {"ego_mean": mean.astype(np.float32), "ego_std": std.astype(np.float32)}


def displacement_errors(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ADE, FDE) in metres over (B, 8, 3) trajectories (x, y only)."""
    d = torch.linalg.norm(pred[..., :2] - gt[..., :2], dim=-1)
    return d.mean(), d[:, -1].mean()


def lr_factor(epochs: int, steps_per_epoch: int, warmup_epochs: float = 0.0):
    """Step -> learning-rate factor: a linear warm-up over ``warmup_epochs`` times the cosine decay that steps once
    per epoch (0.5 (1 + cos(pi e / epochs)), e = the step's epoch), so without warm-up the schedule is the plain
    per-epoch cosine annealing. (A one-epoch warm-up did not steady TransFuser on the demo world; the weight EMA
    did, see docs/TRAINING.md.)"""
    if epochs < 1 or steps_per_epoch < 1 or warmup_epochs < 0:
        raise ValueError(f"lr schedule needs epochs >= 1, steps_per_epoch >= 1 and warmup_epochs >= 0, got "
                         f"{epochs}, {steps_per_epoch}, {warmup_epochs}")
    warmup = warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        return ramp * 0.5 * (1.0 + math.cos(math.pi * (step // steps_per_epoch) / epochs))

    return factor


def ema_decay_at(decay: float, updates: int) -> float:
    """Decay of the ``updates``-th EMA update (0-based count of earlier updates): min(decay, (1 + n) / (10 + n)).
    The ramp keeps the average from dwelling on the random initial weights (a plain 0.99 average still holds
    0.99^100 = 37% of them after a whole demo epoch)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def ema_callback(decay: float):
    """Lightning's weight-averaging callback as an exponential moving average (``train.ema_decay``, with the
    warm-up of ``ema_decay_at``): it swaps the averaged weights in for validation and checkpoints (so
    ``best.ckpt`` holds them) and keeps the raw weights for resuming. ``PlannerConfig`` checks the range."""
    from lightning.pytorch.callbacks import WeightAveraging

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(decay, int(num_averaged)))
        else:  # integer buffers (batch-norm step counts) follow the model
            torch._foreach_copy_(averaged, current)

    return WeightAveraging(multi_avg_fn=update)


def _module(model, cfg: PlannerConfig):
    import lightning as L

    class PlannerModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            feats, targets = batch
            losses = self.model.compute_loss(feats, targets, self.model(feats))
            self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=len(targets["trajectory"]))
            return losses["loss"]

        def validation_step(self, batch, _):
            feats, targets = batch
            pred = self.model(feats)
            ade, fde = displacement_errors(pred["trajectory"], targets["trajectory"])
            n = len(targets["trajectory"])
            self.log_dict({"val/ade": ade, "val/fde": fde}, batch_size=n, on_epoch=True, sync_dist=True)

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                    fused=self.device.type == "cpu" or None)
            per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // max(1, cfg.train.epochs))
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.train.epochs, per_epoch,
                                                                     cfg.train.warmup_epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return PlannerModule()


def prepare_targets(data: Path, cfg: PlannerConfig, tokens: list[str], targets: dict[str, np.ndarray],
                    cache_root: str | Path | None, workers: int, quiet: bool) -> np.ndarray | None:
    """Host-specific training targets added in place; returns iPad's anchors (None for other hosts)."""
    if cfg.host != "ipad":
        return None
    from latentvla.planner.anchors import anchor_scores, fit_anchors

    anchors = fit_anchors(targets["trajectory"], cfg.ipad.num_proposals, seed=cfg.seed)
    targets["proposal_targets"] = anchor_scores(data, tokens, anchors, cache_root=cache_root, workers=workers,
                                                quiet=quiet)
    return anchors


def train(data: str | Path, run: str | Path, cfg: PlannerConfig, resume: bool = False, workers: int = 1,
          quiet: bool = False, cache_root: str | Path | None = None, metric_cache_root: str | Path | None = None,
          sources: Sources | None = None, launch: Launch | None = None) -> dict:
    """Train ``cfg.host`` into ``run`` (or reuse the finished run with the same config); returns metrics.json.
    ``sources``: the teacher (full model), full model (student) or LAM labels (aux control) behind the run.
    ``launch``: devices / nodes / strategy (``cfg.train.batch_size`` is the global batch whatever they are).
    torch's thread count is restored afterwards (callers in the same process, e.g. tests, keep theirs)."""
    with torch_threads():
        return _train(Path(data), Path(run), cfg, resume, workers, quiet, cache_root, metric_cache_root,
                      sources or Sources(), launch or Launch())


def _train(data: Path, run: Path, cfg: PlannerConfig, resume: bool, workers: int, quiet: bool,
           cache_root: str | Path | None, metric_cache_root: str | Path | None, sources: Sources,
           launch: Launch) -> dict:
    import lightning as L

    from latentvla.planner.cache import PlannerCache
    from latentvla.planner.checkpoint import load_planner, save_planner
    from latentvla.planner.modeling import build_model

    torch.set_num_threads(1)  # caching: one thread per process (spinning threads crawl on a busy 2-core box)
    source_kw = {"planner_cache_root": cache_root, "workers": workers, "quiet": quiet}
    cfg = configure(cfg, sources, data, **source_kw)
    digest = config_hash(cfg)
    if (run / "run.json").is_file() and read_json(run / "run.json").get("config_hash") != digest:
        raise ValueError(f"{run} holds a planner run with another config; choose a new --out or the same "
                         f"profile/overrides")
    if (run / MODEL_FILE).is_file() and (run / "metrics.json").is_file() and not resume:
        return read_json(run / "metrics.json")  # finished run with this config: reuse
    if is_rank_zero():
        run.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run / "config.yaml")
        write_json(run / "run.json", {"stage": "planner", "host": cfg.host, "config_hash": digest,
                                      **relative_sources(sources, run),
                                      "provenance": provenance({"manifest": data / "manifest.json"},
                                                               parents=sources.parents())}, indent=1)
    torch.manual_seed(cfg.seed)
    start = time.time()
    cache = PlannerCache.open(data, cfg.features, cache_root=cache_root, workers=workers, quiet=quiet,
                              splits=("train", "val"))
    train_tokens, val_tokens = cache.tokens("train"), cache.tokens("val")
    if not train_tokens or not val_tokens:
        raise ValueError(f"{data} needs scenes in both the train and the val split (train {len(train_tokens)}, "
                         f"val {len(val_tokens)})")
    ftr, ttr = cache.load(train_tokens)
    fva, tva = cache.load(val_tokens)
    anchors = prepare_targets(data, cfg, train_tokens, ttr, metric_cache_root, workers, quiet)
    add_inputs(cfg, sources, data, "train", train_tokens, ftr, ttr, True, **source_kw)
    add_inputs(cfg, sources, data, "val", val_tokens, fva, tva, False, **source_kw)
    prep_s = time.time() - start
    torch.set_num_threads(cfg.train.num_threads)
    torch.manual_seed(cfg.seed)  # again: building caches above may draw numbers; the init must not depend on it
    model = build_model(cfg, anchors)
    model.set_normalization(normalization_stats(ftr["ego_status"]))

    if quiet:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")  # --resume
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    loader, accum = train_loader(ArrayDataset(ftr, ttr), cfg.train.batch_size, launch, cfg.seed)
    val_loader = torch.utils.data.DataLoader(ArrayDataset(fva, tva), batch_size=max(cfg.train.batch_size, 64))
    ckpt_dir = run / "checkpoints"
    averaging = [ema_callback(cfg.train.ema_decay)] if cfg.train.ema_decay else []
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/ade",
                                               mode="min", save_last=True, save_top_k=1)
    trainer = L.Trainer(max_epochs=cfg.train.epochs, logger=curve_logger(run, "planner"), log_every_n_steps=1,
                        deterministic=True, accumulate_grad_batches=accum,
                        gradient_clip_val=cfg.train.grad_clip or None,
                        enable_progress_bar=not quiet, enable_model_summary=False, default_root_dir=str(ckpt_dir),
                        check_val_every_n_epoch=cfg.train.val_every_epochs, num_sanity_val_steps=0,
                        callbacks=[best, timer := StepTimer(accum), *averaging], **trainer_kwargs(launch, "cpu"))
    last = ckpt_dir / "last.ckpt"
    module = _module(model, cfg)
    t0 = time.time()
    trainer.fit(module, loader, val_loader, ckpt_path=str(last) if resume and last.is_file() else None)
    train_s = time.time() - t0
    replicas = replica_checksums(module, trainer) if launch.distributed else None
    if not trainer.is_global_zero:
        return {}  # rank 0 alone writes the model and metrics
    if best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    save_planner(model, cfg, run / MODEL_FILE)
    model, _ = load_planner(run / MODEL_FILE)  # what the agent will load
    val = ArrayDataset(fva, tva)
    with torch.no_grad():
        feats = {k: torch.from_numpy(v) for k, v in val.features.items()}
        pred = model(feats)["trajectory"]
    ade, fde = displacement_errors(pred, torch.from_numpy(tva["trajectory"]))
    metrics = {"host": cfg.host, "train_scenes": len(train_tokens), "val_scenes": len(val_tokens),
               "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
               "prepare_seconds": round(prep_s, 1), "train_seconds": round(train_s, 1),
               "parameters": int(sum(p.numel() for p in model.parameters())),
               "val_ade": float(ade), "val_fde": float(fde)}
    metrics["trainable_parameters"] = model.num_parameters(trainable_only=True)
    metrics.update(processes=launch.world_size, global_batch=cfg.train.batch_size,
                   device_batch=loader.batch_size, grad_accumulation=accum, step_ms_median=timer.median_ms)
    if replicas is not None:  # one parameter checksum per rank after training: equal = replicas in sync
        metrics["replica_checksums"] = replicas
    fusion = getattr(getattr(model, "extras", None), "fusion", None)
    if fusion is not None:  # how far the gates opened: how much of the teacher the model uses
        metrics["fusion_gates"] = [round(g, 4) for g in fusion.gates()]
    write_json(run / "metrics.json", metrics, indent=1)
    return metrics
