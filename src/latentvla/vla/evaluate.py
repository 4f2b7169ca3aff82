"""``latentvla vla eval``: how well the teacher predicts the latent actions of unseen scenes (test split).

Keys (a contract): ``token_accuracy`` and ``sequence_accuracy`` (the teacher's greedy generation against the
labels: per token, and whole sequences), ``top5_accuracy`` and ``nll`` (teacher-forced distributions: label among
the five most likely codes; mean next-token NLL over the full vocabulary, the training loss), and two controls:
``baseline_token_accuracy`` (the train split's majority code at each position) and ``blind_token_accuracy`` (a
teacher trained with blank images on the same budget, ``RUN/blind``, trained here on first use). ``by_family``:
token accuracy per scenario family. Everything is written into ``RUN/metrics.json`` beside the training numbers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import torch_threads
from latentvla.vla.checkpoint import load_teacher
from latentvla.vla.data import SplitArrays, load_labels, open_cache, split_arrays

EVAL_KEYS = ("token_accuracy", "sequence_accuracy", "top5_accuracy", "nll", "baseline_token_accuracy",
             "blind_token_accuracy", "by_family")
BLIND_DIR = "blind"


def batches(arrays: SplitArrays, size: int):
    for i in range(0, len(arrays), size):
        yield {k: torch.from_numpy(np.asarray(v[i:i + size])) for k, v in arrays.features.items()}, \
            torch.from_numpy(arrays.codes[i:i + size])


@torch.no_grad()
def predict(model, arrays: SplitArrays, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Generated codes (S, N) and, under teacher forcing on the labels, the top-5 hits (S, N) and NLL (S, N)."""
    codes, top5, nll = [], [], []
    for feats, labels in batches(arrays, batch_size):
        codes.append(model.generate(feats).numpy())
        logits = model(feats, labels)["logits"].float()
        ranked = model.action_logits(logits).topk(min(5, model.vocab.num_codes), dim=-1).indices
        top5.append((ranked == labels[..., None]).any(-1).numpy())
        nll.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), model.action_ids[labels],
                                                     reduction="none").numpy())
    empty = np.zeros((0, arrays.codes.shape[1]))
    return {"codes": np.concatenate(codes) if codes else empty, "top5": np.concatenate(top5) if top5 else empty,
            "nll": np.concatenate(nll) if nll else empty}


def token_scores(pred: np.ndarray, labels: np.ndarray, families: list[str]) -> dict:
    hits = pred == labels
    fam = np.asarray(families)
    return {"token_accuracy": float(hits.mean()), "sequence_accuracy": float(hits.all(1).mean()),
            "by_family": {f: float(hits[fam == f].mean()) for f in sorted(set(families))}}


def majority_codes(train_codes: np.ndarray, num_codes: int) -> np.ndarray:
    """(N,) the most frequent code at each position of the train split (lowest code on ties)."""
    return np.array([np.bincount(train_codes[:, j], minlength=num_codes).argmax()
                     for j in range(train_codes.shape[1])])


def evaluate(run: str | Path, data: str | Path, split: str = "test", workers: int = 1, quiet: bool = False,
             cache_root: str | Path | None = None, lam_cache_root: str | Path | None = None) -> dict:
    from latentvla.vla.train import train

    run, data = Path(run), Path(data)
    model, cfg = load_teacher(run)
    info = read_json(run / "run.json")
    labels = load_labels(info["labels"], data, cfg.actions.targets, workers=workers, quiet=True,
                         cache_root=lam_cache_root)
    cache = open_cache(data, cfg, (split, "train"), workers=workers, quiet=quiet, cache_root=cache_root)
    test, train_arrays = split_arrays(cache, labels, split, cfg), split_arrays(cache, labels, "train", cfg)
    if not len(test):
        raise ValueError(f"{data} has no scenes in the {split} split")
    with torch_threads(cfg.train.num_threads):
        out = predict(model, test)
        scores = token_scores(out["codes"], test.codes, test.families)
        majority = majority_codes(train_arrays.codes, model.vocab.num_codes)
        if cfg.blind:
            blind_acc = scores["token_accuracy"]
        else:  # the control: same config, labels, init and budget, blank images
            blind_run = run / BLIND_DIR
            train(data, blind_run, replace(cfg, blind=True), info["labels"], init=info.get("init"), workers=workers,
                  quiet=quiet, cache_root=cache_root, lam_cache_root=lam_cache_root)
            blind_model, _ = load_teacher(blind_run)
            blind_acc = float((predict(blind_model, test)["codes"] == test.codes).mean())
    result = {"token_accuracy": scores["token_accuracy"], "sequence_accuracy": scores["sequence_accuracy"],
              "top5_accuracy": float(out["top5"].mean()), "nll": float(out["nll"].mean()),
              "baseline_token_accuracy": float((test.codes == majority[None]).mean()),
              "blind_token_accuracy": blind_acc, "by_family": scores["by_family"]}
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    metrics.update(result, eval_split=split, eval_scenes=len(test))
    write_json(run / "metrics.json", metrics, indent=1)
    return {k: result[k] for k in EVAL_KEYS}
