"""``latentvla lam train``: the two LAM stages with Lightning on the train split (val for monitoring).

Stage 1 trains the environment IDM (conditioned on the ego's own motion), its codebook and FDM; stage 2 freezes
them and trains a fresh ego IDM (which never receives ego motion), its codebook and an FDM that sees both latents.
Each stage ends with a safetensors snapshot in the run directory, so ``--resume`` skips finished stages and a
stage's Lightning checkpoint resumes an interrupted one. The run directory holds the resolved config, provenance
and ``metrics.json``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch

from latentvla.config import config_hash, dump_yaml
from latentvla.data.store import SceneStore, open_store
from latentvla.lam.configuration import LAMConfig
from latentvla.lam.data import WindowSet, build_windows, split_logs
from latentvla.runtime.distributed import Launch, curve_logger, is_rank_zero, train_loader, trainer_kwargs
from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.provenance import provenance


class WindowFeatures(torch.utils.data.Dataset):
    """(feat_t, feat_tp, ego_motion) of every window; features of all logs held once (float16)."""

    def __init__(self, windows: WindowSet, features: list[np.ndarray]):
        self.windows = windows
        self.features = [torch.from_numpy(np.asarray(f, dtype=np.float16)) for f in features]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        w = self.windows
        f = self.features[int(w.log_index[i])]
        return f[int(w.start[i])].float(), f[int(w.end[i])].float(), torch.from_numpy(w.motion[i])


def load_split(store: SceneStore, cache, cfg: LAMConfig, split: str) -> WindowFeatures:
    logs = split_logs(store, split)
    if not logs:
        raise ValueError(f"split '{split}' of {store.root} has no logs")
    windows = build_windows(store, logs, cfg.window_frames)
    return WindowFeatures(windows, [cache.load_log(log)[0] for log in logs])


def _module(model, stage: int, cfg: LAMConfig):
    import lightning as L

    class LAMModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            out = self.model(*batch)
            self.log_dict({f"train/{k}": out[k] for k in ("loss", "recon_mse", "copy_mse")}, prog_bar=False)
            return out["loss"]

        def validation_step(self, batch, _):
            out = self.model(*batch)
            self.log_dict({"val/recon_mse": out["recon_mse"], "val/copy_mse": out["copy_mse"]})

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    return LAMModule()


def train_stage(model, stage: int, train: WindowFeatures, val: WindowFeatures, cfg: LAMConfig, run: Path,
                resume: bool, quiet: bool, launch: Launch | None = None) -> dict:
    import logging

    import lightning as L

    if quiet:  # Lightning's banner lines (accelerators, tips) on every stage
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Expected in stage 2 (the frozen stage-1 modules stay in eval mode) and a Lightning-internal deprecation.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

    model.set_stage(stage)
    steps = cfg.train.steps_stage1 if stage == 1 else cfg.train.steps_stage2
    launch = launch or Launch()
    loader, accum = train_loader(train, cfg.train.batch_size, launch, cfg.seed + stage)
    val_loader = torch.utils.data.DataLoader(val, batch_size=cfg.train.batch_size)
    ckpt_dir = run / "checkpoints" / f"stage{stage}"
    trainer = L.Trainer(max_steps=steps, logger=curve_logger(run, f"stage{stage}"), log_every_n_steps=1,
                        deterministic=True, accumulate_grad_batches=accum,
                        **trainer_kwargs(launch, "cpu"),
                        enable_progress_bar=not quiet, enable_model_summary=False, default_root_dir=str(ckpt_dir),
                        val_check_interval=min(cfg.train.val_every, max(1, len(loader))),
                        check_val_every_n_epoch=None, limit_val_batches=8, num_sanity_val_steps=0,
                        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True,
                                                                       save_top_k=0)])
    last = ckpt_dir / "last.ckpt"
    start = time.time()
    # Lightning keeps each module's mode, and a model loaded from a stage-1 snapshot is in eval mode: the EMA
    # codebook and dead-code restarts only run in train mode
    model.train()
    trainer.fit(_module(model, stage, cfg), loader, val_loader, ckpt_path=str(last) if resume and last.is_file()
                else None)
    return {f"stage{stage}_seconds": round(time.time() - start, 1), f"stage{stage}_steps": int(trainer.global_step)}


def train(data: str | Path, run: str | Path, cfg: LAMConfig, stages: str = "both", resume: bool = False,
          workers: int = 1, quiet: bool = False, cache_root: str | Path | None = None,
          launch: Launch | None = None) -> dict:
    """Train the requested stages into ``run``; returns the run's metrics dict (empty on ranks other than 0).
    Frozen-encoder features are cached under ``cache_root`` (default DATA/feature_cache). Under DDP the EMA
    codebook statistics are rank 0's (DDP broadcasts buffers); the straight-through quantizer has no such state."""
    from latentvla.lam.features import open_features
    from latentvla.lam.modeling import LatentActionModel
    from latentvla.lam.sensors import sensor_layout

    if stages not in ("1", "2", "both"):
        raise ValueError(f"--stage must be 1, 2 or both, got '{stages}'")
    data, run = Path(data), Path(run)
    digest = config_hash(cfg)
    cfg_path = run / "config.yaml"
    if cfg_path.is_file() and read_json(run / "run.json").get("config_hash") != digest:
        raise ValueError(f"{run} holds a LAM run with another config; choose a new --out or the same profile/overrides")
    writer = is_rank_zero()
    if writer:
        run.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, cfg_path)
        write_json(run / "run.json", {"stage": "lam", "config_hash": digest,
                                      "provenance": provenance({"manifest": data / "manifest.json"})}, indent=1)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.train.num_threads)
    store = open_store(data, verify_blobs=False)
    logs = split_logs(store, "train") + split_logs(store, "val")
    cache = open_features(data, cfg.encoder, cache_root=cache_root, logs=logs, workers=workers, quiet=quiet)
    train_set, val_set = load_split(store, cache, cfg, "train"), load_split(store, cache, cfg, "val")
    sample = train_set[0][0]
    model = LatentActionModel(cfg.model, feat_dim=sample.shape[-1], tokens=sample.shape[0],
                              layout=sensor_layout(cfg.encoder, sample.shape[0], sample.shape[-1]))
    model.fit_inputs(torch.cat([f.float() for f in train_set.features]), torch.from_numpy(train_set.windows.motion))
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    trained = False
    for stage in (1, 2):
        snapshot = run / f"stage{stage}.safetensors"
        if stages not in ("both", str(stage)):
            if snapshot.is_file():
                model = LatentActionModel.load(snapshot)
            continue
        if resume and snapshot.is_file():
            model = LatentActionModel.load(snapshot)
            continue
        if stage == 2 and not (run / "stage1.safetensors").is_file():
            raise ValueError(f"stage 2 needs stage 1 first: run `latentvla lam train --stage 1 --out {run}`")
        metrics.update(train_stage(model, stage, train_set, val_set, cfg, run, resume, quiet, launch))
        writer = is_rank_zero()  # the process group exists now
        if not writer:
            continue
        model.save(snapshot)
        trained = True
        write_json(run / "metrics.json", metrics, indent=1)
    if not writer:
        return {}
    if (run / "stage2.safetensors").is_file() and (trained or not (run / "model.safetensors").is_file()):
        model.save(run / "model.safetensors")
    metrics.update(train_windows=len(train_set), val_windows=len(val_set))
    write_json(run / "metrics.json", metrics, indent=1)
    return metrics
