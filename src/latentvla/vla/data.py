"""What the teacher trains and is evaluated on: planner-cache features (ego status, camera) and a LAM run's
latent action labels, per split, held in memory (about 35 kB per scene at the demo size).

Labels come from ``latentvla lam label`` (``LAM_RUN/labels/<dataset digest>.json``); they are written on demand
(a no-op when present). They are training and evaluation targets only: nothing on the inference path reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.runtime.io import read_json
from latentvla.vla.configuration import VLAConfig


def feature_keys(cfg: VLAConfig) -> tuple[str, str]:
    from latentvla.vla.configuration import camera_key

    return ("ego_status", camera_key(cfg))


@dataclass
class LatentLabels:
    """Per-scene action codes of one LAM run on one dataset. ``codes[token]`` is (N,): the ego tokens, then (with
    ``ego+env``) the environment tokens offset by the ego codebook size, so one vocabulary of ``num_codes``
    covers both."""

    lam_run: str
    lam_config_hash: str
    num_codes: int
    num_positions: int
    codes: dict[str, np.ndarray]
    families: dict[str, str]


def load_labels(lam_run: str | Path, data: str | Path, targets: str = "ego", workers: int = 1,
                quiet: bool = False, cache_root: str | Path | None = None) -> LatentLabels:
    from latentvla.lam.report import label, load_run

    lam_run, data = Path(lam_run), Path(data)
    if not (lam_run / "run.json").is_file():
        raise FileNotFoundError(f"--labels {lam_run} is not a LAM run directory (no run.json); train one with "
                                f"`latentvla lam train --data {data} --out {lam_run}`")
    lam_cfg, _ = load_run(lam_run)
    doc = read_json(label(lam_run, data, workers=workers, quiet=quiet, cache_root=cache_root))
    n_ego = lam_cfg.model.ego.codebook_size
    codes: dict[str, np.ndarray] = {}
    for tok, row in doc["scenes"].items():
        ego = np.asarray(row["ego"], dtype=np.int64)
        codes[tok] = ego if targets == "ego" else np.concatenate([ego, n_ego + np.asarray(row["env"], np.int64)])
    num_codes = n_ego if targets == "ego" else n_ego + lam_cfg.model.env.codebook_size
    lengths = {len(c) for c in codes.values()}
    if len(lengths) != 1:
        raise ValueError(f"{lam_run}: label rows have different lengths {sorted(lengths)}; re-run `lam label`")
    from latentvla.data.store import open_store

    store = open_store(data, verify_blobs=False)
    families = {tok: store.info(tok)["family"] for tok in codes}
    return LatentLabels(str(lam_run), read_json(lam_run / "run.json")["config_hash"], num_codes, lengths.pop(),
                        codes, families)


@dataclass
class SplitArrays:
    tokens: list[str]
    features: dict[str, np.ndarray]  # ego_status (S, 8) float32; camera_s32 (S, 320, h, w) float16 or camera uint8
    codes: np.ndarray  # (S, N) int64
    families: list[str]
    trajectory: np.ndarray  # (S, 8, 3) expert poses: a training target of the trajectory head, never an input

    def __len__(self) -> int:
        return len(self.tokens)


def label_codes(labels: LatentLabels, tokens: list[str], split: str) -> np.ndarray:
    """(S, N) codes of ``tokens`` (scenes of ``split``); a scene without a label is an error, not a skip."""
    missing = [t for t in tokens if t not in labels.codes]
    if missing:
        raise ValueError(f"{len(missing)} {split} scenes (e.g. {missing[0]}) have no label in {labels.lam_run}; "
                         f"the labels belong to another dataset: delete {labels.lam_run}/labels and re-label")
    return np.stack([labels.codes[t] for t in tokens]) if tokens else np.zeros((0, labels.num_positions), np.int64)


def split_arrays(cache, labels: LatentLabels, split: str, cfg: VLAConfig) -> SplitArrays:
    """Features and labels of every scene of ``split`` (a scene without a label is an error, not a skip)."""
    tokens = cache.tokens(split)
    codes = label_codes(labels, tokens, split)
    feats, targets = cache.load(tokens)
    return SplitArrays(tokens, {k: feats[k] for k in feature_keys(cfg)}, codes, [labels.families[t] for t in tokens],
                       targets["trajectory"])


def open_cache(data: str | Path, cfg: VLAConfig, splits: tuple[str, ...], workers: int = 1, quiet: bool = False,
               cache_root: str | Path | None = None):
    from latentvla.planner.cache import PlannerCache

    return PlannerCache.open(data, cfg.features, cache_root=cache_root, workers=workers, quiet=quiet, splits=splits)
