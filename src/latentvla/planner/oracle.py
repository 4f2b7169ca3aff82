"""Privileged fusion contexts: how much *any* teacher could add to a host through the fusion path (diagnostics).

``planner train --oracle NAME`` trains the "full" architecture (same gated cross-attention, same fusion points)
with one of these in place of the VLA teacher's embeddings, so its score bounds what a teacher carrying that
knowledge could give the host:

- ``facts``: the current frame's perception facts (``vla/facts.py``: vehicles ahead, the lead vehicle's distance
  and brake lights, the light ahead, people near the path, a blocked lane, vehicles beside), one token per fact,
  one-hot over that fact's answers. Exactly the knowledge the pretraining stand-in teaches (from the ground-truth
  annotations, so a perfect perceiver of them).
- ``latent``: the LAM's true ego tokens (one-hot, N x K): what a teacher with perfect token accuracy would
  generate. Needs the LAM run (``--latent-labels``). ``latent@A`` (0 < A < 1) replaces each token by a uniformly
  drawn code often enough that a fraction A stays right: a teacher of token accuracy A whose errors are noise.
- ``expert``: the expert's own future trajectory (Fourier features of every pose). A **mechanism check** only:
  it puts the target into the features, so a working fusion path must score near log-replay with it.

All three read ground truth the agent contract forbids (annotations, labels, the future): such a run scores only
from a dataset (``latentvla score --data``; ``use_cache``), never on live inputs, and is no agent to report as a
method. ``run.json`` names the oracle; the fusion's ``teacher_key`` is ``oracle:<name>`` (with the LAM config hash
for ``latent``), so an oracle run never reuses a teacher run or the other way round.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

ORACLES = ("facts", "latent", "expert")
FOURIER_FREQS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)  # rad per metre / radian: 125 m down to 3 m periods


def parse_oracle(name: str) -> tuple[str, float | None]:
    """``"latent@0.5"`` -> ("latent", 0.5); any other valid name -> (name, None). Clear error otherwise."""
    kind, _, acc = name.partition("@")
    if kind not in ORACLES or (acc and kind != "latent"):
        raise ValueError(f"unknown oracle '{name}'; valid: {list(ORACLES)} or latent@A (token accuracy 0 < A < 1)")
    if not acc:
        return kind, None
    try:
        a = float(acc)
    except ValueError:
        a = -1.0
    if not 0.0 < a < 1.0:
        raise ValueError(f"oracle '{name}': the token accuracy after '@' must lie in (0, 1)")
    return kind, a


def noisy_codes(codes: np.ndarray, tokens: list[str], num_codes: int, accuracy: float) -> np.ndarray:
    """``codes`` (S, N) with each entry replaced, with probability q = (1 - A) / (1 - 1 / K), by a uniform draw
    over the K codes (so a fraction A is right in expectation). The draws of a scene depend on its token only,
    so every split, process and run sees the same noisy context."""
    q = (1.0 - accuracy) / (1.0 - 1.0 / num_codes)
    out = np.array(codes, copy=True)
    for i, tok in enumerate(tokens):
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(tok.encode()).digest()[:8], "little"))
        swap = rng.random(out.shape[1]) < q
        out[i, swap] = rng.integers(0, num_codes, int(swap.sum()))
    return out


def fact_values() -> dict[str, tuple[str, ...]]:
    """Every answer each perception fact can take (``vla.facts.perception_facts``), in a fixed order."""
    from latentvla.vla.facts import LEAD_AHEAD_M, MAX_COUNT, QUESTIONS

    yes_no = ("no", "yes")
    values = {k: yes_no for k in QUESTIONS}
    values["vehicles_ahead"] = tuple(str(n) for n in range(MAX_COUNT + 1))
    values["lead_distance"] = ("none", *(f"{d} m" for d in range(0, int(LEAD_AHEAD_M) + 5, 5)))
    values["lead_braking"] = ("none", *yes_no)
    values["light"] = ("none", "red", "yellow", "green")
    return values


def facts_onehot(facts: list[dict[str, str]]) -> np.ndarray:
    """(S, facts, max answers) one-hot: token j is fact j, its channel the answer's index."""
    values = fact_values()
    width = max(map(len, values.values()))
    out = np.zeros((len(facts), len(values), width), np.float16)
    for i, f in enumerate(facts):
        for j, (key, allowed) in enumerate(values.items()):
            if f[key] not in allowed:
                raise ValueError(f"perception fact {key}={f[key]!r} is not one of {list(allowed)}: "
                                 f"update planner/oracle.fact_values with vla/facts.py")
            out[i, j, allowed.index(f[key])] = 1
    return out


def fourier(trajectory: np.ndarray) -> np.ndarray:
    """(S, P, 3) poses -> (S, P, 6 * len(FOURIER_FREQS)) sin / cos features: bounded, so the context's layer
    norm keeps the magnitudes (a 3-wide token of raw poses would be normalised to its shape alone)."""
    a = np.asarray(trajectory, np.float64)[..., None] * np.asarray(FOURIER_FREQS)
    return np.concatenate([np.sin(a), np.cos(a)], -1).reshape(*a.shape[:2], -1).astype(np.float16)


def oracle_context(name: str, data: str | Path, split: str, tokens: list[str], features_cfg=None,
                   latent_labels: Path | None = None, planner_cache_root: str | Path | None = None,
                   workers: int = 1, quiet: bool = True) -> np.ndarray:
    """(S, T, D) float16 context of ``tokens`` (scenes of ``split``) for the oracle ``name``; ``features_cfg``
    (the planner's) locates the planner cache that holds the expert trajectories."""
    name, accuracy = parse_oracle(name)
    data = Path(data)
    if name == "facts":
        from latentvla.vla.pretrain import scene_facts

        return facts_onehot(scene_facts(data, tokens, quiet=quiet))
    if name == "latent":
        if latent_labels is None:
            raise ValueError("--oracle latent reads the LAM's true tokens: give the LAM run with --latent-labels")
        from latentvla.vla.data import label_codes, load_labels

        labels = load_labels(latent_labels, data, "ego", workers=workers, quiet=quiet)
        codes = label_codes(labels, tokens, split)
        if accuracy is not None:
            codes = noisy_codes(codes, tokens, labels.num_codes, accuracy)
        return np.eye(labels.num_codes, dtype=np.float16)[codes]
    from latentvla.planner.cache import PlannerCache
    from latentvla.planner.configuration import FeatureConfig

    cache = PlannerCache.open(data, features_cfg or FeatureConfig(), cache_root=planner_cache_root, workers=workers, quiet=quiet,
                              splits=None if split == "all" else (split,))
    return fourier(cache.load(tokens)[1]["trajectory"])


def oracle_key(name: str, latent_labels: Path | None = None) -> str:
    """The fusion ``teacher_key`` of an oracle run (pins the LAM run's config for ``latent``)."""
    if parse_oracle(name)[0] == "latent" and latent_labels is not None:
        from latentvla.runtime.io import read_json

        return f"oracle:{name}:{read_json(Path(latent_labels) / 'run.json')['config_hash']}"
    return f"oracle:{name}"
