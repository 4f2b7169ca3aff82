"""``latentvla lam label`` / ``lam report``: token ids per scene, and the metrics of a trained LAM on the test split.

Every scene's latent sentence is ``windows`` consecutive windows from its current frame, ``num_queries`` tokens each,
for both codebooks (environment, ego). The report's keys are a contract (issue: LAM): perplexity_ego/env,
codes_used_ego/env, recon_gain, ami_ego_command/ami_env_command (AMI between each token position's code and the
ego manoeuvre class of its window, averaged over positions), probe_ego_motion/probe_env_motion (test R² of a linear
probe from a window's codes to the ego's motion over it, fitted on train scenes) and probe_ego_agents/
probe_env_agents (the same to the nearest other agents' own motion, in the ego frame at t).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from latentvla.config import from_dict
from latentvla.data.store import SceneStore, open_store
from latentvla.lam import metrics as M
from latentvla.lam.configuration import LAMConfig
from latentvla.lam.data import scene_windows, split_logs
from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import parallel_map, progress_bar
from latentvla.schema import global_to_local

NEAREST_AGENTS = 3
CEILING_COMPONENTS = 24  # principal directions per feature token for the feature-ceiling diagnostic
REPORT_KEYS = ("perplexity_ego", "perplexity_env", "codes_used_ego", "codes_used_env", "recon_gain",
               "ami_ego_command", "ami_env_command", "probe_ego_motion", "probe_env_motion", "probe_ego_agents",
               "probe_env_agents")


def load_run(run: str | Path):
    from latentvla.lam.modeling import LatentActionModel

    run = Path(run)
    weights = run / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: train both stages first (`latentvla lam train --out {run}`)")
    cfg = from_dict(LAMConfig, yaml.safe_load((run / "config.yaml").read_text()))
    return cfg, LatentActionModel.load(weights)


def agents_motion(frames: list[dict], start: int, end: int) -> np.ndarray:
    """(2,) mean displacement of the nearest agents over the window, in the ego frame at t.

    The agents' own motion (what the environment did), not their motion relative to the ego: the relative
    displacement is dominated by minus the ego's own displacement (most nearby agents are slow or parked), which
    made this an ego-motion probe in disguise (mean -8.3 m against the ego's +8.7 m on the demo world)."""
    a, b = frames[start], frames[end]
    pa, pb = np.asarray(a["ego"]["pose"], dtype=np.float64), np.asarray(b["ego"]["pose"], dtype=np.float64)
    boxes_b = {tok: np.asarray(box, dtype=np.float64) for tok, box in zip(b["track_tokens"], b["boxes"])}
    found = []
    for tok, box in zip(a["track_tokens"], a["boxes"]):
        if tok in boxes_b:
            xy_b = global_to_local(np.array([[*boxes_b[tok][:2], 0.0]]), global_to_local(pa[None], pb)[0])[0, :2]
            found.append((float(np.hypot(box[0], box[1])), xy_b - np.asarray(box[:2])))
    if not found:
        return np.zeros(2)
    found.sort(key=lambda f: f[0])
    return np.mean([d for _, d in found[:NEAREST_AGENTS]], axis=0)


def _shuffle_diagnostic(model, batch: list[tuple], seed: int) -> dict[str, float]:
    ft, ftp, em = (torch.cat(x) for x in zip(*batch))
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(ft)))
    return {k: float(v) * len(ft) for k, v in model.shuffled_recon(ft, ftp, em, perm).items()}


def scene_codes(store: SceneStore, cache, model, cfg: LAMConfig, split: str, batch: int = 512,
                tokens_subset: list[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(tokens, env codes (N, W, Q), ego codes (N, W, Q)) of the split's scenes (or of ``tokens_subset``),
    windows encoded in batches: what labelling needs, without the report's reconstruction and diagnostics."""
    wf = cfg.window_frames
    model.eval()
    tokens, ft, ftp, em = [], [], [], []
    for token in (store.tokens(split) if tokens_subset is None else tokens_subset):
        log, starts, mot = scene_windows(store, token, wf, cfg.windows)
        feats = cache.load_log(log)[0]
        s = np.asarray(starts)
        tokens.append(token), ft.append(feats[s]), ftp.append(feats[s + wf]), em.append(mot)
    if not tokens:
        return [], np.zeros((0, cfg.windows, cfg.model.num_queries), np.int64), \
            np.zeros((0, cfg.windows, cfg.model.num_queries), np.int64)
    ft, ftp, em = (np.concatenate(x) for x in (ft, ftp, em))
    env, ego = [], []
    with torch.no_grad():
        for i in range(0, len(ft), batch):
            e, g = model.encode(*(torch.from_numpy(x[i:i + batch]).float() for x in (ft, ftp, em)))
            env.append(e.numpy()), ego.append(g.numpy())
    shape = (len(tokens), cfg.windows, -1)
    return tokens, np.concatenate(env).reshape(shape), np.concatenate(ego).reshape(shape)


def scene_tokens(store: SceneStore, cache, model, cfg: LAMConfig, split: str,
                 basis: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Codes (N, W, Q) of both codebooks, window motions (N, W, 9), agents' motion (N, W, 2), the feature
    errors of the split's scenes and the shuffled-latent diagnostic (recon gain with ego / env latents permuted
    across windows, in chunks of ~256 windows). With ``basis`` ((mean, (D, c)) of the frozen features), also the
    windows' reduced frame-t features and their change, (N * W, T, c) each, for ``metrics.feature_ceiling``."""
    env, ego, motion, agents, tokens, recon, copy = [], [], [], [], [], [], []
    frame, change = [], []
    chunk: list[tuple] = []
    sums: dict[str, float] = {}
    n_windows = 0

    def flush() -> None:
        nonlocal n_windows
        if chunk:
            for k, v in _shuffle_diagnostic(model, chunk, cfg.seed + len(sums) + n_windows).items():
                sums[k] = sums.get(k, 0.0) + v
            n_windows += sum(len(c[0]) for c in chunk)
            chunk.clear()

    wf = cfg.window_frames
    model.eval()
    for token in store.tokens(split):
        log, starts, mot = scene_windows(store, token, wf, cfg.windows)
        feats = cache.load_log(log)[0]
        s = np.asarray(starts)
        ft, ftp = torch.from_numpy(feats[s]).float(), torch.from_numpy(feats[s + wf]).float()
        em = torch.from_numpy(mot)
        with torch.no_grad():
            e_codes, g_codes = model.encode(ft, ftp, em)
            out = model(ft, ftp, em)
        env.append(e_codes.numpy()), ego.append(g_codes.numpy()), motion.append(mot), tokens.append(token)
        frames = store._log(log)["frames"]
        agents.append(np.stack([agents_motion(frames, st, st + wf) for st in starts]))
        recon.append(float(out["recon_mse"])), copy.append(float(out["copy_mse"]))
        if basis is not None:  # in torch: numpy BLAS calls between the model's steps fight torch for the cores
            pt, ptp = ((x - basis[0]) @ basis[1] for x in (ft, ftp))
            frame.append(pt.numpy()), change.append((ptp - pt).numpy())
        chunk.append((ft, ftp, em))
        if sum(len(c[0]) for c in chunk) >= 256:
            flush()
    flush()
    if not tokens:
        raise ValueError(f"split '{split}' has no scenes")
    base = sums["copy_mse"]
    names = {"recon_mse": "recon_gain", "ego_shuffled_mse": "recon_gain_ego_shuffled",
             "env_shuffled_mse": "recon_gain_env_shuffled"}
    diagnostics = {name: 1.0 - sums[k] / max(base, 1e-12) for k, name in names.items()}
    return {"tokens": tokens, "env": np.stack(env), "ego": np.stack(ego), "motion": np.stack(motion),
            "agents": np.stack(agents), "recon_mse": float(np.mean(recon)), "copy_mse": float(np.mean(copy)),
            "diagnostics": diagnostics,
            "frame": np.concatenate(frame) if frame else None, "change": np.concatenate(change) if change else None}


def _open_cache(data: Path, cfg: LAMConfig, store: SceneStore, splits: tuple[str, ...], workers: int, quiet: bool,
                cache_root: str | Path | None):
    from latentvla.lam.features import open_features

    logs = [log for s in splits for log in split_logs(store, s)]
    return open_features(data, cfg.encoder, cache_root=cache_root, logs=logs, workers=workers, quiet=quiet)


@dataclass
class _LabelJob:
    run: str
    data: str
    features: list[str]  # the feature cache directories (one per sensor)
    log: str
    split: str
    tokens: list[str]
    out: str  # the shard file


_RUNS: dict[str, tuple] = {}


def _label_log(job: _LabelJob) -> tuple[str, int]:
    """Label one log's scenes into its own shard (atomic): a killed labelling keeps its finished logs."""
    from latentvla.data.store import process_store
    from latentvla.lam.features import reopen_features

    if job.run not in _RUNS:
        cfg, model = load_run(job.run)
        _RUNS.clear()
        _RUNS[job.run] = cfg, model, reopen_features(job.features, cfg.encoder)
    cfg, model, cache = _RUNS[job.run]
    tokens, env, ego = scene_codes(process_store(job.data), cache, model, cfg, job.split, tokens_subset=job.tokens)
    rows = {tok: {"split": job.split, "ego": ego[i].ravel().tolist(), "env": env[i].ravel().tolist()}
            for i, tok in enumerate(tokens)}
    write_json(Path(job.out), rows)
    return job.log, len(rows)


def label(run: str | Path, data: str | Path, workers: int = 1, quiet: bool = False,
          cache_root: str | Path | None = None) -> Path:
    """Per-scene env and ego token ids for every split, in ``RUN/labels/<dataset>.json`` (a no-op when present).
    One job per log through the parallel map (local pool or Ray), each writing ``<dataset>.shards/<log>.json``
    atomically; a rerun after a kill labels only the missing logs; the shards are merged in manifest order."""
    import shutil

    from latentvla.data.store import dataset_digest

    run = Path(run)
    digest = dataset_digest(data)
    out = run / "labels" / f"{digest}.json"
    if out.is_file():
        return out
    cfg, _ = load_run(run)
    store = open_store(data, verify_blobs=False)
    cache = _open_cache(data, cfg, store, ("train", "val", "test"), workers, quiet, cache_root)
    shards = run / "labels" / f"{digest}.shards"
    paths = [str(p) for p in cache.paths]
    jobs = [_LabelJob(str(run), str(data), paths, log, split, toks, str(shards / f"{log}.json"))
            for split in ("train", "val", "test") for log, toks in store.tokens_by_log(split).items()]
    todo = [j for j in jobs if not Path(j.out).is_file()]
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("labelling scenes (latent actions)", total=sum(len(j.tokens) for j in todo), rate="")
        for _log, n in parallel_map(_label_log, todo, workers=workers):
            bar.advance(task, n)
    labels = {}
    for job in jobs:  # manifest order: splits, logs, scenes
        labels.update(read_json(Path(job.out)))
    write_json(out, {"run_config": read_json(run / "run.json")["config_hash"], "window_s": cfg.window_s,
                     "windows": cfg.windows, "num_queries": cfg.model.num_queries, "scenes": labels})
    shutil.rmtree(shards, ignore_errors=True)
    return out


def _basis_rows(cache, logs: list[str], feat_dim: int, max_rows: int = 20000, max_logs: int = 200) -> np.ndarray:
    """Feature tokens (M <= ~max_rows, D) for the ceiling's PCA: evenly spaced frames of at most ``max_logs`` logs,
    so memory stays small on real logs of hundreds of frames."""
    logs = logs[:max_logs]
    rows = []
    for log in logs:
        feats = cache.load_log(log)[0]
        per_log = max(1, max_rows // max(1, len(logs) * feats.shape[1]))
        rows.append(feats[np.linspace(0, len(feats) - 1, min(len(feats), per_log)).astype(int)].reshape(-1, feat_dim))
    return np.concatenate(rows)


def report(run: str | Path, data: str | Path, workers: int = 1, quiet: bool = False,
           cache_root: str | Path | None = None) -> dict:
    """The contract metrics on the test split (probes fitted on train); also merged into RUN/metrics.json. Figures:
    RUN/report/code_usage.png and, per codebook, codes_<ego|env>.png (example windows of each code)."""
    run, data = Path(run), Path(data)
    cfg, model = load_run(run)
    store = open_store(data, verify_blobs=False)
    cache = _open_cache(data, cfg, store, ("train", "test"), workers, quiet, cache_root)
    basis = tuple(torch.from_numpy(b).float() for b in M.pca_basis(
        _basis_rows(cache, split_logs(store, "train"), model.feat_dim), CEILING_COMPONENTS))
    test = scene_tokens(store, cache, model, cfg, "test", basis)
    train = scene_tokens(store, cache, model, cfg, "train", basis)
    n_env, n_ego = cfg.model.env.codebook_size, cfg.model.ego.codebook_size
    out: dict = {
        "perplexity_ego": M.perplexity(test["ego"], n_ego), "perplexity_env": M.perplexity(test["env"], n_env),
        "codes_used_ego": M.codes_used(test["ego"]), "codes_used_env": M.codes_used(test["env"]),
        "recon_gain": 1.0 - test["recon_mse"] / max(test["copy_mse"], 1e-12),
    }
    man = M.maneuver_class(test["motion"].reshape(-1, test["motion"].shape[-1])).reshape(test["motion"].shape[:2])
    for name in ("ego", "env"):
        codes = test[name]  # (N, W, Q)
        out[f"ami_{name}_command"] = float(np.mean([M.adjusted_mutual_info(codes[:, w, q], man[:, w])
                                                    for w in range(codes.shape[1]) for q in range(codes.shape[2])]))
        k = n_ego if name == "ego" else n_env
        x_tr = M.one_hot(train[name].reshape(-1, train[name].shape[-1]), k)
        x_te = M.one_hot(codes.reshape(-1, codes.shape[-1]), k)
        out[f"probe_{name}_motion"] = M.probe_r2(x_tr, train["motion"].reshape(-1, 9)[:, :3],
                                                 x_te, test["motion"].reshape(-1, 9)[:, :3])
        out[f"probe_{name}_agents"] = M.probe_r2(x_tr, train["agents"].reshape(-1, 2), x_te,
                                                 test["agents"].reshape(-1, 2))
    out = {k: out[k] for k in REPORT_KEYS}
    from latentvla.lam.figures import code_examples_figure, code_usage_figure, example_sensor

    figures = run / "report"
    code_usage_figure({"ego": test["ego"], "env": test["env"]}, {"ego": n_ego, "env": n_env},
                      figures / "code_usage.png")
    for name, size in (("ego", n_ego), ("env", n_env)):
        code_examples_figure(store, cfg, test["tokens"], test[name], size, figures / f"codes_{name}.png",
                             sensor=example_sensor(cfg, name))
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    # Diagnostics beside the contract keys (metrics.json only): the recon gain when the ego (or env) latents are
    # permuted across windows shows how much the forward model relies on each latent.
    # The same agents' motion read linearly from the frozen features themselves: the env latents encode the change
    # t -> t+Δ, so agents_ceiling_change bounds what probe_env_agents can reach on these features.
    ceiling = M.feature_ceiling((train["frame"], train["change"], train["agents"].reshape(-1, 2)),
                                (test["frame"], test["change"], test["agents"].reshape(-1, 2)))
    diagnostics = {**test["diagnostics"], **{f"agents_ceiling_{k}": v for k, v in ceiling.items()},
                   "agents_from_ego_motion": M.probe_r2(train["motion"].reshape(-1, 9), train["agents"].reshape(-1, 2),
                                                        test["motion"].reshape(-1, 9), test["agents"].reshape(-1, 2))}
    metrics.update(out, test_scenes=len(test["tokens"]), diagnostics=diagnostics)
    write_json(run / "metrics.json", metrics, indent=1)
    return out
