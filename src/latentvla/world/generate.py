"""Generate an embedded-world dataset: plan logs (splits by log, family quotas), record them in parallel, write
each log directory atomically with its SHA256SUMS, and the manifest last.

Resumable: a finished log directory is never recomputed; the manifest's presence means the dataset is complete.
Deterministic: the plan and every log are pure functions of (seed, config), whatever the worker count.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.config import config_hash, dump_yaml, from_dict, to_dict
from latentvla.runtime.io import dumps_json, format_sha256sums, read_json, sha256_bytes, write_json
from latentvla.runtime.parallel import parallel_map, progress_bar
from latentvla.world.configuration import SPLITS, WorldConfig
from latentvla.world.families import FAMILIES
from latentvla.world.record import FORMAT_VERSION, LogPlan, record_log

MANIFEST = "manifest.json"
STATE = ".generation.json"
CONFIG = "world.yaml"
OWNED = (MANIFEST, STATE, CONFIG, "logs")  # what --overwrite removes


class GenerationError(RuntimeError):
    """The output directory or a resume request is inconsistent; the message says what to do."""


def _largest_remainder(total: int, weights: dict[str, float], minimum: int = 0) -> dict[str, int]:
    keys = [k for k in weights if weights[k] > 0]
    wsum = sum(weights[k] for k in keys)
    base = {k: minimum for k in keys} if total >= minimum * len(keys) else {k: 0 for k in keys}
    rest = total - sum(base.values())
    raw = {k: rest * weights[k] / wsum for k in keys}
    counts = {k: base[k] + int(math.floor(raw[k])) for k in keys}
    left = total - sum(counts.values())
    for k in sorted(keys, key=lambda k: (-(raw[k] - math.floor(raw[k])), keys.index(k)))[:left]:
        counts[k] += 1
    return counts


def plan_logs(cfg: WorldConfig) -> list[LogPlan]:
    """Which log gets which split, family, length and command flag (independent of workers and resume)."""
    per_log = cfg.scenes_per_log
    n_logs = math.ceil(cfg.scenes / per_log)
    last = cfg.scenes - (n_logs - 1) * per_log
    rng = np.random.default_rng([cfg.seed, 7919])
    split_counts = _largest_remainder(n_logs, {s: cfg.splits.get(s, 0.0) for s in SPLITS}, minimum=1)
    labels = [s for s in SPLITS for _ in range(split_counts.get(s, 0))]
    split_of = [labels[i] for i in rng.permutation(n_logs)]
    family_of: list[str] = [""] * n_logs
    for split in SPLITS:
        idx = [i for i in range(n_logs) if split_of[i] == split]
        if not idx:
            continue
        weights = cfg.family_weights.get(split, {f: 1.0 for f in FAMILIES})
        quota = _largest_remainder(len(idx), weights, minimum=1)
        fams = [f for f in FAMILIES for _ in range(quota.get(f, 0))]
        for i, k in zip(idx, rng.permutation(len(fams))):
            family_of[i] = fams[k]
    unknown = rng.random(n_logs) < cfg.unknown_command_rate
    plans = []
    for i in range(n_logs):
        frames = cfg.frames_per_log if i < n_logs - 1 else 14 + (last - 1) * cfg.stride
        plans.append(LogPlan(i, f"log_{i:06d}", family_of[i], split_of[i], frames, bool(unknown[i])))
    return plans


@dataclass
class _Job:
    plan: LogPlan
    cfg: dict
    out: str


def _run_job(job: _Job) -> dict:
    cfg = from_dict(WorldConfig, job.cfg)
    try:
        rec = record_log(job.plan, cfg)
    except Exception as e:  # a generator bug: name the log so it can be reproduced alone
        raise RuntimeError(f"generating {job.plan.name} ({job.plan.family}, seed {cfg.seed}) failed: {e!r}") from e
    logs = Path(job.out) / "logs"
    final = logs / job.plan.name
    tmp = logs / f".tmp-{job.plan.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    blobs = dict(rec.files)
    blobs["log.json"] = (dumps_json(rec.meta) + "\n").encode()
    blobs["map.json"] = (dumps_json(rec.map_json) + "\n").encode()
    blobs["sim.json.gz"] = rec.sim_states
    for rel, data in blobs.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    sums = format_sha256sums((rel, sha256_bytes(data)) for rel, data in blobs.items())
    (tmp / "SHA256SUMS").write_text(sums)
    os.replace(tmp, final)  # atomic: a log directory is either complete or absent
    return _summary(rec.meta)


def _summary(meta: dict) -> dict:
    return {"name": meta["log_name"], "family": meta["family"], "split": meta["split"], "attempt": meta["attempt"],
            "scenes": meta["scenes"]}


def _complete(logs: Path, name: str) -> bool:
    return (logs / name / "SHA256SUMS").is_file() and (logs / name / "log.json").is_file()


def _prepare_dir(out: Path, cfg: WorldConfig, digest: str, overwrite: bool, resume: bool) -> bool:
    """Create/validate the output directory. Returns True if a finished identical dataset is already there."""
    if out.exists() and not out.is_dir():
        raise GenerationError(f"{out} exists and is not a directory")
    entries = [p for p in out.iterdir()] if out.exists() else []
    if entries and overwrite:
        for name in OWNED:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        entries = list(out.iterdir())
        if entries:
            raise GenerationError(f"{out} holds files this generator did not write ({sorted(e.name for e in entries)[:5]}); "
                                  "remove them or choose another --out")
    elif entries and not resume:
        raise GenerationError(f"{out} is not empty: pass --overwrite to replace it or --resume to finish an "
                              "interrupted generation")
    elif entries and resume:
        state = out / STATE
        if not state.is_file():
            raise GenerationError(f"cannot resume: {out} has no {STATE} (not a generation in progress); use --overwrite")
        prev = read_json(state)
        if prev.get("config_hash") != digest:
            raise GenerationError(
                f"cannot resume: {out} was generated with config hash {prev.get('config_hash')} but this run's is "
                f"{digest} (seed, scenes, profile or overrides differ); use the same arguments or --overwrite")
        if (out / MANIFEST).is_file():
            return True
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    for tmp in (out / "logs").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed worker
    write_json(out / STATE, {"config_hash": digest, "format_version": FORMAT_VERSION})
    dump_yaml(cfg, out / CONFIG)
    return False


def generate(out: str | Path, cfg: WorldConfig, workers: int = 1, overwrite: bool = False, resume: bool = False,
             quiet: bool = False) -> dict:
    """Generate (or finish) the dataset in ``out``; returns the manifest."""
    out = Path(out)
    if overwrite and resume:
        raise GenerationError("choose one of --overwrite and --resume")
    digest = config_hash(cfg)
    if _prepare_dir(out, cfg, digest, overwrite, resume):
        return read_json(out / MANIFEST)
    plans = plan_logs(cfg)
    logs = out / "logs"
    summaries: dict[int, dict] = {}
    todo = []
    for p in plans:
        if _complete(logs, p.name):
            summaries[p.index] = _summary(read_json(logs / p.name / "log.json"))
        else:
            todo.append(_Job(p, to_dict(cfg), str(out)))
    total = sum(len(s["scenes"]) for s in summaries.values()) + sum(
        (j.plan.frames - 14) // cfg.stride + 1 for j in todo)
    start, done_scenes = time.time(), 0
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task("generating scenes", total=cfg.scenes, rate="",
                            completed=sum(len(s["scenes"]) for s in summaries.values()))
        index = {j.plan.name: j.plan.index for j in todo}
        for summary in parallel_map(_run_job, todo, workers=workers):
            summaries[index[summary["name"]]] = summary
            done_scenes += len(summary["scenes"])
            rate = done_scenes / max(time.time() - start, 1e-9)
            bar.update(task, advance=len(summary["scenes"]), rate=f"{rate:.1f} scenes/s")
    assert total == cfg.scenes, (total, cfg.scenes)
    manifest = build_manifest(cfg, digest, [summaries[p.index] for p in plans])
    write_json(out / MANIFEST, manifest, indent=1)
    return manifest


def build_manifest(cfg: WorldConfig, digest: str, summaries: list[dict]) -> dict:
    scenes, logs = [], {}
    for s in summaries:
        for sc in s["scenes"]:
            scenes.append({"token": sc["token"], "family": s["family"], "command": sc["command"], "log": s["name"],
                           "split": s["split"]})
        logs[s["name"]] = {"sha256sums": f"logs/{s['name']}/SHA256SUMS"}
    return {"format_version": FORMAT_VERSION, "seed": cfg.seed, "config_hash": digest, "scenes": scenes, "logs": logs}

