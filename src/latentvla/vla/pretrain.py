"""``latentvla vla pretrain``: the pretraining stand-in, generic image-text pretraining of the tiny backbone.

Real VLMs bring visual knowledge from web-scale image-text pretraining; a random-init CPU backbone has none. This
stage gives it the same kind of knowledge the same way: captioning and visual question answering on text written
automatically from each scene's **perception facts** (``vla/facts.py``: objects and where they are, light colours,
brake lights, people near the path, blocked lanes), never from what the expert does next, on a separately
generated, family-balanced world (``--data``; docs/TRAINING.md gives the command). The loss is next-token NLL on the
answer (or caption) tokens. The run is a teacher checkpoint (same architecture, tokenizer with the action tokens
already added) that ``vla train --init RUN`` starts from.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentvla.config import config_hash, dump_yaml
from latentvla.runtime.distributed import Launch, curve_logger, is_rank_zero, train_loader, trainer_kwargs
from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import progress_bar, torch_threads
from latentvla.runtime.provenance import provenance
from latentvla.vla.checkpoint import MODEL_FILE, load_teacher, save_teacher
from latentvla.vla.configuration import VLAConfig, camera_key
from latentvla.vla.facts import QUESTIONS, TASKS, perception_facts, task_text

PRETRAIN_POSITIONS = 1  # the pretraining run has no action sequence; its trajectory head is never used


def scene_facts(data: Path, tokens: list[str], quiet: bool = True) -> list[dict[str, str]]:
    from latentvla.data.store import open_store

    store = open_store(data, verify_blobs=False)
    out = []
    with progress_bar(quiet) as bar:
        task = bar.add_task("perception facts", total=len(tokens), rate="")
        for tok in tokens:
            out.append(perception_facts(store.load_scene(tok, sensors="none", with_sim_state=False)))
            bar.advance(task)
    return out


def examples(facts: list[dict[str, str]], per_scene: int, seed: int) -> list[tuple[int, str, str, str]]:
    """(scene index, task, prompt, answer): every scene's caption plus ``per_scene - 1`` distinct questions drawn
    with a seeded generator (the same seed gives the same pretraining set)."""
    rng = np.random.default_rng(seed)
    questions = list(QUESTIONS)
    out = []
    for i, f in enumerate(facts):
        picks = ["caption", *rng.choice(questions, size=min(per_scene - 1, len(questions)), replace=False)]
        for task in picks:
            out.append((i, task, *task_text(task, f)))
    return out


class TextDataset(torch.utils.data.Dataset):
    def __init__(self, camera: np.ndarray, rows: list[tuple[int, str, str, str]]):
        self.camera, self.rows = camera, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        idx, task, prompt, answer = self.rows[i]
        return torch.from_numpy(np.asarray(self.camera[idx])), prompt, answer, task


def collate(items):
    camera, prompts, answers, tasks = zip(*items)
    return torch.stack(camera), list(prompts), list(answers), list(tasks)


def text_loss(model, camera: torch.Tensor, prompts: list[str], answers: list[str]):
    """(mean NLL of the answer tokens, per-row flags: every answer token is the argmax)."""
    batch = model.processor.text_batch(prompts, answers)
    hidden = model.hidden_of(batch["input_ids"].to(camera.device), batch["attention_mask"].to(camera.device), camera)
    labels = batch["labels"][:, 1:].to(camera.device)
    logits = model.vlm.lm_head(hidden[:, :-1]).float()
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
    exact = ((logits.argmax(-1) == labels) | (labels == -100)).all(1)  # = greedy decoding reproduces the answer
    return loss, exact


def _module(model, cfg: VLAConfig):
    import lightning as L

    class PretrainModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model

        def training_step(self, batch, _):
            camera, prompts, answers, _tasks = batch
            loss, _ = text_loss(self.model, camera, prompts, answers)
            self.log("pretrain/nll", loss.detach(), batch_size=len(prompts))
            return loss

        def validation_step(self, batch, _):
            camera, prompts, answers, _tasks = batch
            loss, exact = text_loss(self.model, camera, prompts, answers)
            self.log_dict({"val/nll": loss, "val/exact": exact.float().mean()}, batch_size=len(prompts),
                          on_epoch=True, sync_dist=True)

        def configure_optimizers(self):
            p = cfg.pretrain
            opt = torch.optim.AdamW([q for q in self.model.parameters() if q.requires_grad], lr=p.lr,
                                    weight_decay=cfg.train.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, p.epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return PretrainModule()


@torch.no_grad()
def answer_accuracy(model, camera: np.ndarray, rows: list[tuple[int, str, str, str]], batch_size: int = 128
                    ) -> dict[str, float]:
    """Exact-match accuracy per task on ``rows`` (teacher forcing: every answer token is the argmax)."""
    hits: dict[str, list[bool]] = {t: [] for t in TASKS}
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        cam = torch.from_numpy(np.stack([camera[r[0]] for r in chunk]))
        _, exact = text_loss(model, cam, [r[2] for r in chunk], [r[3] for r in chunk])
        for r, e in zip(chunk, exact.tolist()):
            hits[r[1]].append(bool(e))
    return {t: float(np.mean(v)) for t, v in hits.items() if v}


def pretrain(data: str | Path, run: str | Path, cfg: VLAConfig, workers: int = 1, quiet: bool = False,
             cache_root: str | Path | None = None, launch: Launch | None = None) -> dict:
    """Pretrain into ``run`` (or reuse the finished run with the same config and data); returns metrics.json
    (empty on ranks other than 0 of a distributed ``launch``)."""
    with torch_threads():
        return _pretrain(Path(data), Path(run), cfg, workers, quiet, cache_root, launch or Launch())


def _pretrain(data: Path, run: Path, cfg: VLAConfig, workers: int, quiet: bool, cache_root, launch: Launch) -> dict:
    import lightning as L

    from latentvla.data.store import dataset_digest
    from latentvla.vla.data import open_cache
    from latentvla.vla.train import build_teacher

    digest = config_hash({"config": cfg, "data": dataset_digest(data)})
    if (run / "run.json").is_file() and read_json(run / "run.json").get("config_hash") != digest:
        raise ValueError(f"{run} holds a pretraining run with another config or world; choose a new --out")
    if (run / MODEL_FILE).is_file() and (run / "metrics.json").is_file():
        return read_json(run / "metrics.json")
    if is_rank_zero():
        run.mkdir(parents=True, exist_ok=True)
        dump_yaml(cfg, run / "config.yaml")
        write_json(run / "run.json", {"stage": "vla-pretrain", "config_hash": digest, "data": str(data),
                                      "provenance": provenance({"manifest": data / "manifest.json"})}, indent=1)
    torch.set_num_threads(1)
    start = time.time()
    cache = open_cache(data, cfg, ("train", "val"), workers=workers, quiet=quiet, cache_root=cache_root)
    splits = {}
    for split in ("train", "val"):
        tokens = cache.tokens(split)
        if not tokens:
            raise ValueError(f"pretraining world {data} has no {split} scenes")
        camera = cache.features(tokens)[camera_key(cfg)]
        facts = scene_facts(data, tokens, quiet)
        splits[split] = (camera, examples(facts, cfg.pretrain.tasks_per_scene, cfg.seed + (split == "val")))
    prep_s = time.time() - start
    torch.set_num_threads(cfg.train.num_threads)
    model = build_teacher(cfg, cfg.pretrain.action_codes, PRETRAIN_POSITIONS, tuple(splits["train"][0].shape[-2:]))
    if quiet:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    train_set = TextDataset(*splits["train"])
    loader, accum = train_loader(train_set, cfg.pretrain.batch_size, launch, cfg.seed, collate_fn=collate)
    val_loader = torch.utils.data.DataLoader(TextDataset(*splits["val"]), batch_size=128, collate_fn=collate)
    ckpt_dir = run / "checkpoints"
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/nll", mode="min",
                                               save_top_k=1)
    trainer = L.Trainer(max_epochs=cfg.pretrain.epochs, logger=curve_logger(run, "pretrain"), log_every_n_steps=1,
                        accumulate_grad_batches=accum,
                        **trainer_kwargs(launch, "auto"), deterministic=True, precision=cfg.train.precision, enable_progress_bar=not quiet,
                        enable_model_summary=False, default_root_dir=str(ckpt_dir), num_sanity_val_steps=0,
                        callbacks=[best])
    module = _module(model, cfg)
    t0 = time.time()
    trainer.fit(module, loader, val_loader)
    train_s = time.time() - t0
    if not trainer.is_global_zero:
        return {}
    if best.best_model_path:
        module.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"])
    save_teacher(model.cpu().eval(), run)
    model, _ = load_teacher(run)
    accuracy = answer_accuracy(model, *splits["val"])
    majority = majority_answer_accuracy(splits["train"][1], splits["val"][1])
    metrics = {"train_examples": len(train_set), "val_examples": len(splits["val"][1]),
               "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step),
               "prepare_seconds": round(prep_s, 1), "train_seconds": round(train_s, 1),
               "val_exact_by_task": accuracy, "val_exact_majority_by_task": majority,
               "best_val_nll": float(best.best_model_score) if best.best_model_score is not None else None}
    write_json(run / "metrics.json", metrics, indent=1)
    return metrics


def majority_answer_accuracy(train_rows, val_rows) -> dict[str, float]:
    """The control: always answering the train split's most frequent answer of each task."""
    from collections import Counter

    common = {t: Counter(r[3] for r in train_rows if r[1] == t).most_common(1) for t in TASKS}
    out = {}
    for t in TASKS:
        val = [r[3] for r in val_rows if r[1] == t]
        if val and common[t]:
            out[t] = float(np.mean([a == common[t][0][0] for a in val]))
    return out
