"""Where the LatentVLA variants of a host get their extra inputs and targets (``planner train`` flags):

- ``--teacher VLA_RUN`` ("full"): the teacher's cached outputs (``vla/encode_cache.py``: its own generation, never
  the LAM labels) become the feature ``teacher_embeddings`` in training, validation and inference.
- ``--distill-from FULL_RUN`` ("distilled"): a student with the host's architecture and no teacher input, trained
  against the full model's teacher (``latent_probs``: per-position soft tokens) and the full model's own outputs on
  the train split (``full_selection``: iPad's proposal selection scores; ``full_plan_features``).
- ``--latent-labels LAM_RUN`` (the ``ipad-aux`` control): the LAM's ego codes as one-hot ``latent_probs``.
- ``--oracle NAME`` (diagnostic, ``planner/oracle.py``): the full architecture fed a privileged context (perception
  facts, the LAM's true tokens with ``--latent-labels``, or the expert's future) instead of the teacher.

Teacher outputs are features (computed from the same inputs an agent sees); everything the student imitates is a
target, so nothing of the teacher or the full model runs when the student drives. The runs behind a planner are
recorded in its ``run.json`` relative to the run directory (the trio can move together) and pinned in its config
by content hashes, so a retrained teacher or full model never reuses a stale run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from latentvla.planner.configuration import PlannerConfig
from latentvla.planner.fusion import TEACHER_KEY
from latentvla.runtime.io import read_json


@dataclass(frozen=True)
class Sources:
    teacher: Path | None = None
    distill_from: Path | None = None
    latent_labels: Path | None = None
    oracle: str | None = None  # planner/oracle.py; with ``latent``, latent_labels names the LAM run it reads

    def __post_init__(self) -> None:
        from latentvla.planner.oracle import parse_oracle

        given = [n for n in ("teacher", "distill_from", "latent_labels", "oracle") if getattr(self, n) is not None]
        latent = self.oracle is not None and parse_oracle(self.oracle)[0] == "latent"
        if latent and self.latent_labels is not None:
            given.remove("latent_labels")
        if len(given) > 1:
            raise ValueError(f"--teacher, --distill-from, --latent-labels and --oracle exclude each other (except "
                             f"--oracle latent with the --latent-labels it reads), got {given}")
        if latent and self.latent_labels is None:
            raise ValueError("--oracle latent reads the LAM's true tokens: give the LAM run with --latent-labels")

    @property
    def aux_labels(self) -> Path | None:
        """The LAM run of the auxiliary latent head (the ``ipad-aux`` control), not of ``--oracle latent``."""
        return self.latent_labels if self.oracle is None else None

    def parents(self) -> list[str]:
        return [str(p) for p in (self.teacher, self.distill_from, self.latent_labels) if p is not None]


def teacher_run_of(run: Path) -> Path:
    """The teacher run a fused planner run was trained with (from its run.json), checked against its hash."""
    from latentvla.planner.checkpoint import read_config
    from latentvla.planner.train import MODEL_FILE
    from latentvla.vla.encode_cache import run_key

    rel = read_json(run / "run.json").get("teacher")
    if not rel:
        raise ValueError(f"{run} was not trained with --teacher: it has no teacher to load")
    teacher = (run / rel).resolve()  # relative to the run (an absolute path stays itself)
    want = read_config(run / MODEL_FILE).fusion.teacher_key
    if not (teacher / "model.safetensors").is_file():
        raise FileNotFoundError(f"{run}: its teacher run {teacher} is gone; keep the teacher run next to the "
                                f"planner run (recorded as {rel!r} in {run / 'run.json'})")
    if run_key(teacher) != want:
        raise ValueError(f"{run}: the teacher at {teacher} changed since training (weights hash {run_key(teacher)}, "
                         f"trained with {want}); retrain the planner")
    return teacher


def configure(cfg: PlannerConfig, sources: Sources, data: Path, **cache) -> PlannerConfig:
    """``cfg`` with its fusion / distill sections filled from the source runs (dimensions and content hashes)."""
    from latentvla.vla.encode_cache import run_key, teacher_outputs

    if sources.teacher is not None:
        out = teacher_outputs(sources.teacher, data, "val", **cache)
        _, t, d = out["embeddings"].shape
        fusion = replace(cfg.fusion, enabled=True, context_tokens=int(t), context_dim=int(d),
                         teacher_key=run_key(sources.teacher))
        return replace(cfg, fusion=fusion)
    if sources.oracle is not None:
        from latentvla.data.store import open_store
        from latentvla.planner.oracle import oracle_context, oracle_key

        tokens = open_store(data, verify_blobs=False).tokens("val")[:1]  # one scene gives the context's shape
        ctx = oracle_context(sources.oracle, data, "val", tokens, cfg.features, sources.latent_labels, **cache)
        fusion = replace(cfg.fusion, enabled=True, context_tokens=int(ctx.shape[1]), context_dim=int(ctx.shape[2]),
                         teacher_key=oracle_key(sources.oracle, sources.latent_labels))
        return replace(cfg, fusion=fusion)
    if sources.distill_from is not None:
        from latentvla.planner.checkpoint import read_config
        from latentvla.planner.train import MODEL_FILE

        full_run = Path(sources.distill_from)
        if not (full_run / MODEL_FILE).is_file():
            raise FileNotFoundError(f"--distill-from {full_run}: no {MODEL_FILE}; train the full model with "
                                    f"`latentvla planner train --teacher VLA_RUN` first")
        full_cfg = read_config(full_run / MODEL_FILE)
        if not full_cfg.fusion.enabled:
            raise ValueError(f"--distill-from {full_run} is a plain {full_cfg.host} run, not a full (fused) model")
        if full_cfg.host != cfg.host:
            raise ValueError(f"--distill-from {full_run} is a {full_cfg.host} model; train the student with "
                             f"--host {full_cfg.host}")
        teacher = teacher_run_of(full_run)
        probs = teacher_outputs(teacher, data, "val", **cache)["probs"]
        distill = replace(cfg.distill, full_key=run_key(full_run), source_key=run_key(teacher))
        if distill.latent_weight > 0:
            distill = replace(distill, latent_target="teacher", latent_positions=int(probs.shape[1]),
                              latent_codes=int(probs.shape[2]))
        return replace(cfg, distill=distill)
    if sources.aux_labels is not None:
        labels = _labels(sources.aux_labels, data, cache)
        distill = replace(cfg.distill, latent_target="labels", latent_positions=labels.num_positions,
                          latent_codes=labels.num_codes, source_key=labels.lam_config_hash, full_key="")
        return replace(cfg, distill=distill)
    return cfg


def _labels(lam_run: Path, data: Path, cache: dict):
    from latentvla.vla.data import load_labels

    return load_labels(lam_run, data, "ego", workers=cache.get("workers", 1), quiet=cache.get("quiet", True))


def _rows(out: dict[str, np.ndarray], tokens: list[str], what: str) -> np.ndarray:
    index = {str(t): i for i, t in enumerate(out["tokens"])}
    missing = [t for t in tokens if t not in index]
    if missing:
        raise ValueError(f"{len(missing)} scenes (e.g. {missing[0]}) have no {what}; the cached outputs belong to "
                         f"another dataset")
    return np.asarray([index[t] for t in tokens], dtype=np.int64)


def add_inputs(cfg: PlannerConfig, sources: Sources, data: Path, split: str, tokens: list[str],
               features: dict[str, np.ndarray], targets: dict[str, np.ndarray], with_targets: bool,
               **cache) -> None:
    """Add the split's teacher features (full) and, when ``with_targets``, the distillation targets, in place."""
    from latentvla.vla.encode_cache import teacher_outputs

    if sources.teacher is not None:
        out = teacher_outputs(sources.teacher, data, split, **cache)
        features[TEACHER_KEY] = out["embeddings"][_rows(out, tokens, "teacher output")]
    if sources.oracle is not None:
        from latentvla.planner.oracle import oracle_context

        features[TEACHER_KEY] = oracle_context(sources.oracle, data, split, tokens, cfg.features,
                                               sources.latent_labels, **cache)
    if not with_targets:
        return
    if sources.aux_labels is not None:
        from latentvla.vla.data import label_codes

        labels = _labels(sources.aux_labels, data, cache)
        codes = label_codes(labels, tokens, split)
        targets["latent_probs"] = np.eye(labels.num_codes, dtype=np.float32)[codes]
    if sources.distill_from is not None:
        full_run = Path(sources.distill_from)
        teacher = teacher_run_of(full_run)
        out = teacher_outputs(teacher, data, split, **cache)
        rows = _rows(out, tokens, "teacher output")
        if cfg.distill.latent_target == "teacher":
            targets["latent_probs"] = out["probs"][rows].astype(np.float32)
        feats = {**features, TEACHER_KEY: out["embeddings"][rows]}
        targets.update(full_outputs(full_run, feats, cfg.train.batch_size))


def full_outputs(full_run: Path, features: dict[str, np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """The full model's ``full_selection`` (iPad) and ``full_plan_features`` on the given features (no grad)."""
    from latentvla.planner.checkpoint import load_planner
    from latentvla.planner.train import MODEL_FILE

    model, cfg = load_planner(full_run / MODEL_FILE)
    n, step = len(features["ego_status"]), max(batch_size, 64)
    parts: dict[str, list[np.ndarray]] = {"full_plan_features": [], "full_selection": []}
    with torch.no_grad():
        for i in range(0, n, step):
            out = model({k: torch.from_numpy(np.asarray(v[i:i + step])) for k, v in features.items()})
            parts["full_plan_features"].append(out["plan_features"].numpy())
            if "selection_score" in out:
                parts["full_selection"].append(out["selection_score"].numpy())
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def relative_sources(sources: Sources, run: Path) -> dict[str, str | None]:
    """The source runs as paths relative to ``run`` (for run.json)."""
    def rel(p: Path | None) -> str | None:
        return None if p is None else os.path.relpath(Path(p).resolve(), Path(run).resolve())

    return {"teacher": rel(sources.teacher), "distill_from": rel(sources.distill_from),
            "latent_labels": rel(sources.latent_labels), "oracle": sources.oracle}
