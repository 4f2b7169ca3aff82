"""Planner weights on disk: one safetensors file whose metadata holds the format, the host and the resolved config,
so a run directory's ``model.safetensors`` alone rebuilds the network (normalisation statistics and iPad's anchors
are buffers, hence inside the file too)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentvla.config import from_dict, to_dict
from latentvla.planner.configuration import PlannerConfig
from latentvla.runtime.io import atomic_write_bytes, weights_metadata

FORMAT = "latentvla.planner/1"


def save_planner(model: torch.nn.Module, cfg: PlannerConfig, path: str | Path) -> None:
    """Atomic write of the weights (all buffers included) with the config in the metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "host": cfg.host, "config": json.dumps(to_dict(cfg))}
    atomic_write_bytes(Path(path), save(tensors, metadata=meta))


def read_config(path: str | Path) -> PlannerConfig:
    meta = weights_metadata(path, FORMAT, "planner weights: train with `latentvla planner train`")
    return from_dict(PlannerConfig, json.loads(meta["config"]))


def load_planner(path: str | Path, device: str = "cpu"):
    """(model in eval mode, its config) from a file written by ``save_planner``."""
    from latentvla.planner.modeling import build_model

    cfg = read_config(path)
    state = load_file(str(path), device=device)
    anchors = state.get("anchors")
    model = build_model(cfg, anchors.numpy() if anchors is not None else None)
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


__all__ = ["FORMAT", "save_planner", "load_planner", "read_config", "save_file"]
