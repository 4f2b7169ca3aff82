"""The teacher as a planner: train its trajectory head (and the visual pooling) with the VLM frozen.

The frozen teacher's hidden states are computed once per scene (its own greedy tokens: labels never enter), then
the pooling attention and the MLP head fit the expert trajectory with NAVSIM TransFuser's L1 loss; the epoch with
the lowest val ADE is kept (Lightning, like every other training loop).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from latentvla.planner.modeling import trajectory_l1
from latentvla.planner.train import displacement_errors, normalization_stats
from latentvla.vla.data import SplitArrays

HEAD_PARAMS = ("pool_queries", "pool_attn.", "traj_")


def head_inputs(model, arrays: SplitArrays, batch_size: int = 64) -> dict[str, torch.Tensor]:
    parts: dict[str, list[torch.Tensor]] = {"visual": [], "actions": [], "probs": []}
    for i in range(0, len(arrays), batch_size):
        feats = {k: torch.from_numpy(np.asarray(v[i:i + batch_size])) for k, v in arrays.features.items()}
        h = model.hidden_states(feats)
        for k, v in parts.items():
            v.append(h[k])
    return {**{k: torch.cat(v) for k, v in parts.items()},
            "ego_status": torch.from_numpy(np.asarray(arrays.features["ego_status"], dtype=np.float32)),
            "trajectory": torch.from_numpy(np.asarray(arrays.trajectory, dtype=np.float32))}


def _module(model, cfg):
    import lightning as L

    class HeadModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def _plan(self, batch):
            return self.model.trajectory(self.model.embeddings(batch["visual"], batch["actions"]), batch["ego_status"])

        def training_step(self, batch, _):
            loss = trajectory_l1(self._plan(batch), batch["trajectory"])
            self.log("head/l1", loss.detach(), batch_size=len(batch["trajectory"]))
            return loss

        def validation_step(self, batch, _):
            ade, fde = displacement_errors(self._plan(batch), batch["trajectory"])
            self.log_dict({"val/ade": ade, "val/fde": fde}, batch_size=len(batch["trajectory"]), on_epoch=True)

        def configure_optimizers(self):
            params = [p for p in self.model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return HeadModule()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.t = tensors

    def __len__(self) -> int:
        return len(self.t["trajectory"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.t.items()}


def train_head(model, vla_cfg, train: SplitArrays, val: SplitArrays, ckpt_dir: Path, quiet: bool) -> dict:
    """Fit the head in place (teacher weights untouched); returns val ADE/FDE and the seconds spent."""
    import lightning as L

    cfg = vla_cfg.trajectory
    model.reset_head(vla_cfg.seed)
    stats = normalization_stats(train.features["ego_status"])
    model.ego_mean.copy_(torch.from_numpy(stats["ego_mean"]))
    model.ego_std.copy_(torch.from_numpy(stats["ego_std"]))
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(HEAD_PARAMS))
    start = time.time()
    model.eval()
    tr, va = head_inputs(model, train), head_inputs(model, val)
    encode_s = time.time() - start
    gen = torch.Generator().manual_seed(vla_cfg.seed)
    loader = torch.utils.data.DataLoader(_Rows(tr), batch_size=cfg.batch_size, shuffle=True, generator=gen,
                                         drop_last=len(train) > cfg.batch_size)
    val_loader = torch.utils.data.DataLoader(_Rows(va), batch_size=256)
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="head-best", monitor="val/ade",
                                               mode="min", save_top_k=1)
    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator="cpu", devices=1, logger=False, deterministic=True,
                        enable_progress_bar=not quiet, enable_model_summary=False, default_root_dir=str(ckpt_dir),
                        num_sanity_val_steps=0, callbacks=[best])
    module = _module(model, cfg)
    model.train()  # Lightning keeps each module's mode: the head's dropout must be on while it trains
    trainer.fit(module, loader, val_loader)
    if best.best_model_path:
        module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    for n, p in model.named_parameters():
        p.requires_grad_(requires[n])
    model.eval()
    with torch.no_grad():
        ade, fde = displacement_errors(module._plan(va), va["trajectory"])
    return {"head_encode_seconds": round(encode_s, 1), "head_train_seconds": round(time.time() - start - encode_s, 1),
            "val_ade": float(ade), "val_fde": float(fde)}
