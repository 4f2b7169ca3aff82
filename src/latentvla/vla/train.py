"""``latentvla vla train``: fine-tune the VLA teacher to predict a LAM run's latent action tokens (Lightning).

Train split trains, val split selects (lowest teacher-forced val NLL of the action tokens). The loss is next-token
NLL on the action tokens only; the prompt and image positions carry no loss. A second phase then fits the
trajectory head on the frozen teacher (``trajectory.py``), so the run is also a scoreable agent. ``--init RUN`` starts from another
teacher or pretraining run (every tensor whose name and shape match). The run directory holds ``config.yaml``,
``run.json`` (config hash, labels run, init run, provenance), ``model.safetensors`` + ``tokenizer/`` and
``metrics.json``; a finished run with the same config, labels and init is reused, ``--resume`` continues from
``checkpoints/last.ckpt`` (or, when the teacher finished, runs the head phase only).
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
from latentvla.runtime.distributed import Launch, curve_logger, is_rank_zero, train_loader, trainer_kwargs
from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import torch_threads
from latentvla.runtime.provenance import provenance
from latentvla.vla.checkpoint import MODEL_FILE, load_teacher, load_tokenizer, load_weights_into, save_teacher
from latentvla.vla.configuration import VLAConfig, camera_key
from latentvla.vla.data import SplitArrays, load_labels, open_cache, split_arrays


class TeacherDataset(torch.utils.data.Dataset):
    def __init__(self, arrays: SplitArrays):
        self.a = arrays

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int):
        return ({k: torch.from_numpy(np.asarray(v[i])) for k, v in self.a.features.items()},
                torch.from_numpy(self.a.codes[i]))


def build_teacher(cfg: VLAConfig, num_codes: int, num_positions: int, camera_grid: tuple[int, int],
                  init: str | Path | None = None):
    """A fresh teacher (tokenizer built in code, or the init run's / the backbone's own) with the action tokens."""
    from latentvla.vla.modeling import LatentVLATeacher
    from latentvla.vla.processor import add_vla_tokens, build_tokenizer

    if init is not None:
        tokenizer = load_tokenizer(init)
    elif cfg.backbone.path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.backbone.path, local_files_only=True)
    else:
        tokenizer = build_tokenizer()
    vocab = add_vla_tokens(tokenizer, num_codes)
    torch.manual_seed(cfg.seed)
    model = LatentVLATeacher(cfg, tokenizer, vocab, num_positions, camera_grid)
    if init is not None:
        load_weights_into(model, init)
    return model


def _module(model, cfg: VLAConfig, total_steps: int):
    import lightning as L

    class TeacherModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            feats, codes = batch
            loss = self.model.loss(self.model(feats, codes)["logits"], codes)
            self.log("train/nll", loss.detach(), batch_size=len(codes))
            return loss

        def validation_step(self, batch, _):
            feats, codes = batch
            logits = self.model(feats, codes)["logits"]
            acc = (self.model.action_logits(logits).argmax(-1) == codes).float().mean()
            self.log_dict({"val/nll": self.model.loss(logits, codes), "val/token_accuracy": acc},
                          batch_size=len(codes), on_epoch=True, sync_dist=True)

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
            warm = max(1, cfg.train.warmup_steps)

            def factor(step: int) -> float:  # linear warm-up, then cosine to zero
                if step < warm:
                    return (step + 1) / warm
                return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return TeacherModule()


def train(data: str | Path, run: str | Path, cfg: VLAConfig, labels_run: str | Path, init: str | Path | None = None,
          resume: bool = False, workers: int = 1, quiet: bool = False, cache_root: str | Path | None = None,
          lam_cache_root: str | Path | None = None, launch: Launch | None = None) -> dict:
    """Train into ``run`` (or reuse the finished run with the same config, labels and init); returns metrics.json
    (empty on ranks other than 0: the teacher phase runs on every process of ``launch``, the small trajectory-head
    phase on rank 0 alone). torch's thread count is restored afterwards."""
    with torch_threads():
        return _train(Path(data), Path(run), cfg, Path(labels_run), init, resume, workers, quiet, cache_root,
                      lam_cache_root, launch or Launch())


def _train(data: Path, run: Path, cfg: VLAConfig, labels_run: Path, init: str | Path | None, resume: bool,
           workers: int, quiet: bool, cache_root, lam_cache_root, launch: Launch) -> dict:
    import lightning as L

    labels = load_labels(labels_run, data, cfg.actions.targets, workers=workers, quiet=quiet,
                         cache_root=lam_cache_root)
    init_hash = read_json(Path(init) / "run.json")["config_hash"] if init is not None else None
    digest = config_hash({"config": cfg, "labels": labels.lam_config_hash, "init": init_hash})
    if (run / "run.json").is_file() and read_json(run / "run.json").get("config_hash") != digest:
        raise ValueError(f"{run} holds a teacher run with another config, labels or init; choose a new --out")
    done = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    if (run / MODEL_FILE).is_file() and "val_ade" in done:
        return done  # finished run with this config (nothing left to resume either)
    if resume and (run / MODEL_FILE).is_file() and "best_val_nll" in done:
        return _head_phase(data, run, cfg, labels, done, workers, quiet, cache_root)  # teacher done, head left
    if is_rank_zero():
        run.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run / "config.yaml")
        write_json(run / "run.json", {"stage": "vla", "config_hash": digest, "labels": str(labels_run),
                                      "labels_config_hash": labels.lam_config_hash,
                                      "init": None if init is None else str(init), "blind": cfg.blind,
                                      "provenance": provenance({"manifest": data / "manifest.json"},
                                                               parents=[str(labels_run)] + ([str(init)] if init else []))},
                   indent=1)
    torch.set_num_threads(1)
    start = time.time()
    cache = open_cache(data, cfg, ("train", "val"), workers=workers, quiet=quiet, cache_root=cache_root)
    tr, va = split_arrays(cache, labels, "train", cfg), split_arrays(cache, labels, "val", cfg)
    if not len(tr) or not len(va):
        raise ValueError(f"{data} needs scenes in both the train and the val split (train {len(tr)}, val {len(va)})")
    prep_s = time.time() - start
    torch.set_num_threads(cfg.train.num_threads)
    grid = tuple(tr.features[camera_key(cfg)].shape[-2:])
    model = build_teacher(cfg, labels.num_codes, labels.num_positions, grid, init)

    if quiet:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    loader, accum = train_loader(TeacherDataset(tr), cfg.train.batch_size, launch, cfg.seed)
    val_loader = torch.utils.data.DataLoader(TeacherDataset(va), batch_size=max(cfg.train.batch_size, 64))
    total_steps = cfg.train.epochs * max(1, len(loader) // accum)
    ckpt_dir = run / "checkpoints"
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/nll", mode="min",
                                               save_last=True, save_top_k=1)
    trainer = L.Trainer(max_epochs=cfg.train.epochs, logger=curve_logger(run, "teacher"), log_every_n_steps=1,
                        deterministic=True, accumulate_grad_batches=accum,
                        **trainer_kwargs(launch, "auto"),
                        precision=cfg.train.precision, enable_progress_bar=not quiet, enable_model_summary=False,
                        default_root_dir=str(ckpt_dir), check_val_every_n_epoch=cfg.train.val_every_epochs,
                        num_sanity_val_steps=0, callbacks=[best])
    last = ckpt_dir / "last.ckpt"
    module = _module(model, cfg, total_steps)
    t0 = time.time()
    trainer.fit(module, loader, val_loader, ckpt_path=str(last) if resume and last.is_file() else None)
    train_s = time.time() - t0
    if not trainer.is_global_zero:
        return {}
    if best.best_model_path:
        module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    model = model.cpu().eval()
    save_teacher(model, run)
    model, _ = load_teacher(run)  # what eval and the planner will load
    metrics = {"train_scenes": len(tr), "val_scenes": len(va), "epochs": int(trainer.current_epoch),
               "steps": int(trainer.global_step), "prepare_seconds": round(prep_s, 1),
               "train_seconds": round(train_s, 1), "num_codes": labels.num_codes,
               "num_positions": labels.num_positions,
               "parameters": int(sum(p.numel() for p in model.parameters())),
               "trainable_parameters": int(sum(p.numel() for p in module.model.parameters() if p.requires_grad)),
               "best_val_nll": float(best.best_model_score) if best.best_model_score is not None else None}
    write_json(run / "metrics.json", metrics, indent=1)
    return _head_phase(data, run, cfg, labels, metrics, workers, quiet, cache_root, model, (tr, va))


def _head_phase(data: Path, run: Path, cfg: VLAConfig, labels, metrics: dict, workers: int, quiet: bool, cache_root,
                model=None, arrays: tuple[SplitArrays, SplitArrays] | None = None) -> dict:
    """Phase 2: the trajectory head on the frozen teacher; rewrites the weights and metrics.json."""
    from latentvla.vla.trajectory import train_head

    if arrays is None:
        cache = open_cache(data, cfg, ("train", "val"), workers=workers, quiet=quiet, cache_root=cache_root)
        arrays = split_arrays(cache, labels, "train", cfg), split_arrays(cache, labels, "val", cfg)
    if model is None:
        model, _ = load_teacher(run)
    torch.set_num_threads(cfg.train.num_threads)
    metrics = {**metrics, **train_head(model, cfg, *arrays, run / "checkpoints", quiet)}
    save_teacher(model, run)
    write_json(run / "metrics.json", metrics, indent=1)
    return metrics


def untrained_teacher(data: str | Path, run: str | Path, cfg: VLAConfig, labels_run: str | Path, workers: int = 1,
                      quiet: bool = True, cache_root: str | Path | None = None,
                      lam_cache_root: str | Path | None = None) -> dict:
    """A teacher with the same architecture and vocabulary as a trained one but random weights (the
    ``full-random-vlm`` control: does fusion gain from what the VLA learned, or from extra capacity alone?).
    Written like a trained run (no trajectory head), reused when the config and labels match."""
    data, run = Path(data), Path(run)
    labels = load_labels(labels_run, data, cfg.actions.targets, workers=workers, quiet=quiet,
                         cache_root=lam_cache_root)
    digest = config_hash({"config": cfg, "labels": labels.lam_config_hash, "untrained": True})
    if (run / "run.json").is_file() and read_json(run / "run.json").get("config_hash") != digest:
        raise ValueError(f"{run} holds a teacher run with another config or labels; choose a new --out")
    if (run / MODEL_FILE).is_file() and (run / "metrics.json").is_file():
        return read_json(run / "metrics.json")
    with torch_threads():
        torch.set_num_threads(1)
        cache = open_cache(data, cfg, ("train",), workers=workers, quiet=quiet, cache_root=cache_root)
        grid = tuple(cache.features(cache.tokens("train")[:1])[camera_key(cfg)].shape[-2:])
        model = build_teacher(cfg, labels.num_codes, labels.num_positions, grid).eval()
    run.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run / "config.yaml")
    write_json(run / "run.json", {"stage": "vla", "config_hash": digest, "labels": str(labels_run),
                                  "labels_config_hash": labels.lam_config_hash, "init": None, "untrained": True,
                                  "provenance": provenance({"manifest": data / "manifest.json"},
                                                           parents=[str(labels_run)])}, indent=1)
    save_teacher(model, run)
    metrics = {"untrained": True, "num_codes": labels.num_codes, "num_positions": labels.num_positions,
               "parameters": int(sum(p.numel() for p in model.parameters()))}
    write_json(run / "metrics.json", metrics, indent=1)
    return metrics
