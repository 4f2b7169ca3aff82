"""Teacher weights on disk: ``RUN/model.safetensors`` (every weight, the config and the action vocabulary in the
metadata) beside ``RUN/tokenizer/`` (the tokenizer with its added image and action tokens). The two together
rebuild the teacher with no other file and no download: a teacher fine-tuned from real weights (``backbone.path``)
also stores its Hugging Face architecture, so loading it never needs that checkpoint directory again."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from latentvla.config import from_dict, to_dict
from latentvla.runtime.io import atomic_write_bytes, weights_metadata
from latentvla.vla.configuration import VLAConfig

FORMAT = "latentvla.vla/1"
MODEL_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


def save_teacher(model, run: str | Path) -> None:
    """Atomic write of the weights; the tokenizer directory is written first (its files are small)."""
    run = Path(run)
    model.processor.tokenizer.save_pretrained(str(run / TOKENIZER_DIR))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(to_dict(model.cfg)), "num_positions": str(model.num_positions),
            "num_codes": str(model.vocab.num_codes), "camera_grid": json.dumps(list(model.camera_grid))}
    if model.cfg.backbone.path:
        meta["hf_config"] = model.vlm.config.to_json_string(use_diff=False)
    atomic_write_bytes(run / MODEL_FILE, save(tensors, metadata=meta))


def read_meta(run: str | Path) -> dict:
    return weights_metadata(Path(run) / MODEL_FILE, FORMAT, f"train the teacher first: `latentvla vla train --out {run}`")


def load_tokenizer(run: str | Path):
    from transformers import PreTrainedTokenizerFast

    path = Path(run) / TOKENIZER_DIR
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{path}/tokenizer.json not found: the run {run} is incomplete")
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def load_teacher(run: str | Path, device: str = "cpu"):
    """(teacher in eval mode, its config) from a run directory written by ``save_teacher``."""
    from latentvla.vla.modeling import LatentVLATeacher
    from latentvla.vla.processor import add_vla_tokens

    meta = read_meta(run)
    cfg = from_dict(VLAConfig, json.loads(meta["config"]))
    tokenizer = load_tokenizer(run)
    vocab = add_vla_tokens(tokenizer, int(meta["num_codes"]))
    hf_config = json.loads(meta["hf_config"]) if "hf_config" in meta else None
    model = LatentVLATeacher(cfg, tokenizer, vocab, int(meta["num_positions"]),
                             tuple(json.loads(meta["camera_grid"])), hf_config)
    model.load_state_dict(load_file(str(Path(run) / MODEL_FILE), device=device))
    return model.to(device).eval(), cfg


def load_weights_into(model: torch.nn.Module, run: str | Path) -> list[str]:
    """Initialise ``model`` from another run's weights (``--init``): every tensor whose name and shape match is
    copied; one that differs only in its first dimension (token embeddings and LM head rows after more action
    tokens were appended) gets its leading rows copied. Returns the names left (partly) at their init."""
    state = read_state(run)
    own = model.state_dict()
    new, skipped = {}, []
    for k, v in own.items():
        src = state.get(k)
        if src is not None and src.shape == v.shape:
            new[k] = src
            continue
        skipped.append(k)
        if src is not None and src.ndim == v.ndim >= 1 and src.shape[1:] == v.shape[1:]:
            rows = min(len(src), len(v))
            new[k] = v.clone()
            new[k][:rows] = src[:rows]
    model.load_state_dict(new, strict=False)
    return skipped


def read_state(run: str | Path) -> dict[str, torch.Tensor]:
    read_meta(run)
    return load_file(str(Path(run) / MODEL_FILE))
