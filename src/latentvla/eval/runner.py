"""``latentvla score``: run an agent on a split, score every scene, write the per-scene CSV and the summary.

Work is split by log (a log's scenes share a cache shard, and EPDMS's extended comfort pairs each scene with its
predecessor in the same log); logs are scored in parallel and rows are put back in manifest order, so the output
does not depend on ``--workers``. As NAVSIM does, a scene whose agent fails (exception, NaN/inf, wrong shape or
number of poses) is marked ``valid=false`` with the reason and left out of the mean; the summary also reports the
score with such scenes counted as 0, so nobody games the mean by failing on hard scenes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.agents.base import Agent
from latentvla.data.store import SceneStore, open_store, process_store
from latentvla.eval.metric_cache import MetricCache, process_cache
from latentvla.eval.scene_inputs import SceneInputs
from latentvla.runtime.io import atomic_write_bytes, atomic_write_text, read_json, write_json
from latentvla.runtime.parallel import parallel_map, progress_bar
from latentvla.schema import TRAJECTORY_POSES, AgentInput, Trajectory

METRICS = {
    "pdms": ("pdms-v1.1", ("nc", "dac", "ttc", "ep", "c", "pdms"), ("ddc",)),
    "epdms": ("epdms-v2", ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc", "ec", "epdms"), ()),
}
INTERVAL = 0.5


def columns(metric: str) -> list[str]:
    _, main, extra = METRICS[metric]
    return ["token", "family", "valid", *main, *extra, "error"]


def score_column(metric: str) -> str:
    return METRICS[metric][1][-1]


def agent_plan(agent: Agent, store: SceneStore, inputs: SceneInputs) -> np.ndarray:
    """The agent's plan for one scene as (8, 3) float64; raises ValueError with the reason if unusable."""
    agent_input = _agent_input(agent, store, inputs)
    return checked_poses(agent.compute_trajectory(agent_input, inputs if agent.requires_scene else None))


AGENT_BATCH = 64  # scenes per compute_trajectories call (agents that plan in batches)


def plan_inputs(agent: Agent, inputs: list[AgentInput]) -> list[np.ndarray | Exception]:
    """The agent's plan (8, 3) per ready input, in one ``compute_trajectories`` call when the agent plans in
    batches; any failure becomes that input's exception (a failing or short batch is retried one by one)."""
    if hasattr(agent, "compute_trajectories"):
        try:
            trajs = agent.compute_trajectories(inputs)
            if len(trajs) != len(inputs):
                raise ValueError(f"{len(trajs)} trajectories for {len(inputs)} inputs")
            return [checked_poses(t) for t in trajs]
        except Exception:  # noqa: BLE001 - find the failing input(s) below
            pass
    out: list[np.ndarray | Exception] = []
    for a in inputs:
        try:
            out.append(checked_poses(agent.compute_trajectory(a)))
        except Exception as err:  # noqa: BLE001 - marks that scene invalid, never the run
            out.append(err)
    return out


def agent_plans(agent: Agent, store: SceneStore, entries: list[SceneInputs]) -> dict[str, np.ndarray | Exception]:
    """Plans of many scenes: one ``compute_trajectories`` call per ``AGENT_BATCH`` scenes when the agent has it
    (learned planners: one network pass instead of one per scene), else scene by scene. Any agent failure
    becomes that scene's exception (a failing batch is retried scene by scene), never the run's."""
    out: dict[str, np.ndarray | Exception] = {}
    batched = hasattr(agent, "compute_trajectories") and not agent.requires_scene
    step = AGENT_BATCH if batched else 1
    for i in range(0, len(entries), step):
        chunk = entries[i:i + step]
        if batched:
            try:
                inputs = [_agent_input(agent, store, e) for e in chunk]
            except Exception:  # noqa: BLE001 - find the scene(s) whose input fails one by one below
                inputs = None
            if inputs is not None:
                out.update(zip([e.token for e in chunk], plan_inputs(agent, inputs), strict=True))
                continue
        for e in chunk:
            try:
                out[e.token] = agent_plan(agent, store, e)
            except Exception as err:  # noqa: BLE001 - any agent failure marks the scene invalid, never the run
                out[e.token] = err
    return out


def _agent_input(agent: Agent, store: SceneStore, inputs: SceneInputs):
    if agent.sensors == "none" and inputs.driving_commands is not None:
        return inputs.agent_input()  # no log access needed
    return store.load_agent_input(inputs.token, sensors=agent.sensors != "none",
                                  history_sensors=agent.sensors == "history")


def checked_poses(traj: object) -> np.ndarray:
    """An agent's output as (8, 3) float64 poses; raises ValueError with the reason if it is unusable."""
    if not isinstance(traj, Trajectory):
        raise ValueError(f"agent returned {type(traj).__name__}, not a Trajectory")
    poses = np.asarray(traj.poses, dtype=np.float64)
    if poses.shape != (TRAJECTORY_POSES, 3):
        raise ValueError(f"expected {TRAJECTORY_POSES} poses of (x, y, heading), got shape {poses.shape}")
    if not np.all(np.isfinite(poses)):
        raise ValueError("trajectory contains NaN or inf")
    return poses


BATCH_SCENES = 256  # scenes per job: the batched tracker's per-step overhead is shared by this many scenes


@dataclass
class _Job:
    data: str
    cache: str
    tokens: list[str]  # whole logs, in manifest order
    agent: Agent
    metric: str
    resume: str | None = None  # directory of finished jobs' rows (see score_split's resume_dir)


def _rows_file(resume: str | Path, tokens: list[str]) -> Path:
    return Path(resume) / f"{hashlib.sha256(chr(10).join(tokens).encode()).hexdigest()[:24]}.pkl"


def agent_fingerprint(agent: Agent) -> str:
    """What a resumed scoring run must share with the interrupted one: the agent's class and description and the
    content of the files it was loaded from (a run directory's top-level files or a predictions file)."""
    h = hashlib.sha256(f"{type(agent).__module__}.{type(agent).__qualname__}|{agent.describe()}".encode())
    for attr in ("run", "path"):
        p = getattr(agent, attr, None)
        if isinstance(p, (str, Path)) and Path(p).exists():
            files = [Path(p)] if Path(p).is_file() else sorted(f for f in Path(p).iterdir() if f.is_file())
            for f in files:
                h.update(f.name.encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:24]


def _resumed(resume_dir: Path, key: str, jobs: list[_Job]) -> tuple[dict[str, dict], list[_Job]]:
    """Rows of the jobs an interrupted run with the same ``key`` finished, and the jobs left to run."""
    meta = resume_dir / "resume.json"
    if resume_dir.is_dir() and not (meta.is_file() and read_json(meta).get("key") == key):
        shutil.rmtree(resume_dir)  # another agent, metric, dataset or scene set: start over
    resume_dir.mkdir(parents=True, exist_ok=True)
    write_json(meta, {"key": key})
    done: dict[str, dict] = {}
    todo = []
    for job in jobs:
        path = _rows_file(resume_dir, job.tokens)
        if path.is_file():
            done.update({r["token"]: r for r in pickle.loads(path.read_bytes())})
        else:
            todo.append(job)
    return done, todo


def _open(job: _Job) -> tuple[SceneStore, MetricCache]:
    return process_store(job.data), process_cache(job.cache)


def _score_chunk(job: _Job) -> list[dict]:
    store, cache = _open(job)
    entries = {t: cache.load(t) for t in job.tokens}
    rows = {t: {"token": t, "family": entries[t].family, "valid": True, "error": ""} for t in job.tokens}
    plans = {}
    for tok, plan in agent_plans(job.agent, store, [entries[t] for t in job.tokens]).items():
        if isinstance(plan, Exception):
            rows[tok].update(valid=False, error=f"{type(plan).__name__}: {plan}"[:300])
        else:
            plans[tok] = plan
    ok = [t for t in job.tokens if t in plans]
    if job.metric == "pdms":
        from latentvla.eval.scene_score import score_pdms_batch

        for tok, sub in zip(ok, score_pdms_batch([entries[t] for t in ok], [plans[t] for t in ok], INTERVAL)):
            rows[tok].update(sub)
    else:
        from latentvla.eval.epdms import score_epdms_log

        for tok, sub in zip(ok, score_epdms_log([entries[t] for t in ok], [plans[t] for t in ok], INTERVAL)):
            rows[tok].update(sub)
    out = [rows[t] for t in job.tokens]
    if job.resume is not None:  # this job's shard: a killed run resumes without scoring these scenes again
        atomic_write_bytes(_rows_file(job.resume, job.tokens), pickle.dumps(out, protocol=4))
    return out


def score_split(data: str | Path, agent: Agent, split: str = "test", metric: str = "pdms", workers: int = 1,
                cache_root: str | Path | None = None, quiet: bool = False, tokens: list[str] | None = None,
                resume_dir: str | Path | None = None) -> tuple[list[dict], dict]:
    """Score ``agent`` on ``split`` (or the given subset of its ``tokens``): (rows in manifest order, summary).

    With ``resume_dir`` every job (whole logs, ``BATCH_SCENES`` scenes or more) writes its rows there atomically
    and a rerun with the same agent, metric, data and scenes reuses them: a killed run loses no finished job. The
    caller deletes the directory once the results are written."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; valid: {list(METRICS)}")
    data = Path(data)
    store = open_store(data, verify_blobs=False)
    in_split = store.tokens(split)
    if tokens is not None:
        unknown = sorted(set(tokens) - set(in_split))
        if unknown:
            raise KeyError(f"scene token '{unknown[0]}' is not in split '{split}' of {data}")
        keep = set(tokens)
        tokens = [t for t in in_split if t in keep]
    else:
        tokens = in_split
    if not tokens:
        raise ValueError(f"split '{split}' of {data} has no scenes")
    if hasattr(agent, "check_tokens"):
        agent.check_tokens(tokens)
    cache = MetricCache.open(data, cache_root=cache_root, workers=workers, quiet=quiet, tokens=tokens)
    keep = set(tokens)
    by_log = {log: [t for t in toks if t in keep] for log, toks in store.tokens_by_log(split).items()}
    jobs, chunk = [], []
    for toks in by_log.values():  # fixed partition (never depends on --workers): identical results
        chunk += toks
        if len(chunk) >= BATCH_SCENES:
            jobs.append(_Job(str(data), str(cache.path), chunk, agent, metric))
            chunk = []
    if chunk:
        jobs.append(_Job(str(data), str(cache.path), chunk, agent, metric))
    done: dict[str, dict] = {}
    if resume_dir is not None:
        key = hashlib.sha256(f"{agent_fingerprint(agent)}|{metric}|{cache.index['key']}|{BATCH_SCENES}|"
                             f"{chr(10).join(tokens)}".encode()).hexdigest()[:24]
        done, jobs = _resumed(Path(resume_dir), key, jobs)
        for job in jobs:
            job.resume = str(resume_dir)
    start = time.time()
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task(f"scoring {agent.name} ({METRICS[metric][0]})", total=len(tokens), rate="",
                            completed=len(done))
        resumed = len(done)
        for rows in parallel_map(_score_chunk, jobs, workers=workers):
            done.update({r["token"]: r for r in rows})
            rate = (len(done) - resumed) / max(time.time() - start, 1e-9)
            bar.update(task, advance=len(rows), rate=f"{rate:.0f} scenes/s")
    rows = [done[t] for t in tokens]
    summary = summarize(rows, metric, split)
    summary.update(agent=agent.name, data=str(data), cache_key=cache.index["key"],
                   seconds=round(time.time() - start, 3))
    return rows, summary


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def aggregate(rows: list[dict], cols: list[str], score: str) -> dict:
    """``mean`` over valid scenes, ``by_family`` (scene and invalid counts, means over its valid scenes) and the
    score with invalid scenes counted as 0: the aggregation of open- and closed-loop results alike."""
    valid = [r for r in rows if r["valid"]]
    families: dict[str, list[dict]] = {}
    for r in rows:
        families.setdefault(r["family"], []).append(r)
    by_family = {}
    for fam, rs in sorted(families.items()):
        ok = [r for r in rs if r["valid"]]
        by_family[fam] = {"scenes": len(rs), "invalid": len(rs) - len(ok), **{c: _mean([r[c] for r in ok])
                                                                              for c in cols}}
    with_zero = float(np.mean([r[score] if r["valid"] else 0.0 for r in rows])) if rows else None
    return {"scenes": len(rows), "invalid": len(rows) - len(valid),
            "mean": {c: _mean([r[c] for r in valid]) for c in cols}, "by_family": by_family,
            f"{score}_with_invalid_as_zero": with_zero}


def summarize(rows: list[dict], metric: str, split: str) -> dict:
    """Means over valid scenes (per-scene scores first, then the mean: NAVSIM's aggregation)."""
    name, main, extra = METRICS[metric]
    return {"metric": name, "split": split, **aggregate(rows, [*main, *extra], score_column(metric))}


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(round(v, 6))
    return "" if v is None else str(v)


def write_results(rows: list[dict], summary: dict, out: str | Path, metric: str) -> Path:
    """Per-scene CSV at ``out`` and the summary next to it (``x.csv`` -> ``x.summary.json``)."""
    out = Path(out)
    if out.suffix != ".csv":
        raise ValueError(f"--out must name a .csv file, got {out}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = columns(metric)
    w.writerow(cols)
    for r in rows:
        w.writerow([_fmt(r.get(c, float("nan") if c not in ("token", "family", "error") else "")) for c in cols])
    atomic_write_text(out, buf.getvalue())
    summary_path = out.with_name(out.name[: -len(".csv")] + ".summary.json")
    write_json(summary_path, summary, indent=1)
    return summary_path
