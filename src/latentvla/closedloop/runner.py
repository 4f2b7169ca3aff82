"""``latentvla eval closed-loop``: roll every scene of a split out in closed loop and score the rollouts.

Per scene: the world's expert drives from the restart first (the route-completion reference), then the agent. The
scenes of a job run in lockstep so a learned agent plans them in one batch per 2 Hz tick. Jobs are fixed chunks of
scenes in split order, run through the parallel map (local processes or Ray), so results never depend on
``--workers`` or the backend; the world and the tracker are deterministic, so a rerun gives the same numbers.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentvla.agents.base import Agent
from latentvla.closedloop.metrics import progress_along, progress_line, scene_metrics, summarize
from latentvla.closedloop.rollout import EXPERT, Rollout, RolloutRecord
from latentvla.closedloop.sim import rear_to_center
from latentvla.config import from_dict, load_yaml, to_dict
from latentvla.data.store import SceneStore, open_store, process_store
from latentvla.eval.runner import _resumed, _rows_file, agent_fingerprint, plan_inputs
from latentvla.runtime.io import atomic_write_bytes, write_json
from latentvla.runtime.parallel import parallel_map, progress_bar
from latentvla.runtime.provenance import provenance
from latentvla.world.sensors import SensorConfig

CHUNK_SCENES = 8  # scenes per job, rolled out in lockstep (one agent batch per tick)
DEFAULT_SECONDS = 15.0
MIN_SECONDS = 4.0  # one scorer horizon: the comfort and TTC windows need it
CONTINUATION_M = 300.0  # the expert's lane path beyond its rollout, for agents that get further


class ClosedLoopError(ValueError):
    """The data or the agent cannot be evaluated in closed loop; the message says why and what to do."""


def world_sensors(store: SceneStore) -> SensorConfig:
    """The dataset's sensor rig (its ``world.yaml``), which renders what the agent sees."""
    path = Path(str(store.root)) / "world.yaml"
    if not path.is_file():
        raise ClosedLoopError(f"{store.root} has no world.yaml: closed-loop evaluation needs an embedded-world "
                              "dataset (`latentvla world generate`), whose logs carry the simulator states that "
                              "restart a scene; NAVSIM/OpenScene logs are recordings only")
    cfg = load_yaml(path).get("sensors", {})
    return from_dict(SensorConfig, cfg, "world.yaml sensors")


def check_agent(agent: Agent | None) -> None:
    if agent is None:
        return
    if agent.requires_scene:
        raise ClosedLoopError(f"agent '{agent.name}' needs the scorer's privileged scene (logged future, metric "
                              "cache), which a closed-loop world state does not have; use --agent expert for the "
                              "world's own driver")
    from latentvla.agents.baselines import PredictionsAgent

    if isinstance(agent, PredictionsAgent):
        raise ClosedLoopError("a predictions file holds one plan per logged scene; closed loop needs an agent that "
                              "replans from what it sees (a planner or teacher run, constant-velocity or expert)")


def expert_reference(store: SceneStore, token: str, reactive: bool, seconds: float
                     ) -> tuple[RolloutRecord, np.ndarray, float]:
    """The expert's rollout from the restart, the line progress is measured along and the expert's progress."""
    ref = Rollout(store, token, None, EXPERT, reactive, seconds)
    ref.advance(ref.steps)
    rec = ref.record()
    sim = ref.sim
    path = sim.path(sim.ego).line
    ss = np.arange(sim.ego.s, min(sim.ego.s + CONTINUATION_M, path.length), 1.0)
    centers = np.stack([rear_to_center(s) for s in rec.ego])[:, :2]
    line = progress_line(centers, path.xy(ss) if len(ss) else np.zeros((0, 2)))
    return rec, line, progress_along(line, centers[0], centers[-1])


@dataclass
class _Job:
    data: str
    tokens: list[str]
    agent: Agent | None  # None: the world's expert
    reactive: bool
    seconds: float
    sensors: dict | None
    resume: str | None = None  # directory of finished jobs' rows (a killed run resumes from them)


def _failed(token: str, family: str, err: Exception) -> dict:
    return {"token": token, "family": family, "valid": False, "error": f"{type(err).__name__}: {err}"[:300]}


def run_chunk(job: _Job) -> list[dict]:
    store = process_store(job.data)
    sensors = None if job.sensors is None else from_dict(SensorConfig, job.sensors)
    refs = {t: expert_reference(store, t, job.reactive, job.seconds) for t in job.tokens}
    records: dict[str, RolloutRecord | Exception] = {}
    if job.agent is None:
        records = {t: refs[t][0] for t in job.tokens}
    else:
        live = {t: Rollout(store, t, sensors, job.agent.sensors, job.reactive, job.seconds) for t in job.tokens}
        while live:
            due = [t for t, r in live.items() if r.needs_plan]
            if due:
                inputs, ok = [], []
                for t in due:
                    try:
                        inputs.append(live[t].agent_input())
                        ok.append(t)
                    except Exception as err:  # noqa: BLE001 - a rendering/data failure ends that scene only
                        records[t] = err
                for t, plan in zip(ok, plan_inputs(job.agent, inputs)):
                    if isinstance(plan, Exception):
                        records[t] = plan
                    else:
                        live[t].set_plan(plan)
            for t in list(live):
                if t in records:
                    del live[t]
                    continue
                live[t].advance()
                if live[t].done:
                    records[t] = live.pop(t).record()
    rows = []
    for t in job.tokens:
        rec = records[t]
        family = store.info(t)["family"]
        if isinstance(rec, Exception):
            rows.append(_failed(t, family, rec))
            continue
        _, line, expert_progress = refs[t]
        rows.append(scene_metrics(rec, store.load_map(rec.log), line, expert_progress))
    if job.resume is not None:  # this job's shard, written atomically
        atomic_write_bytes(_rows_file(job.resume, job.tokens), pickle.dumps(rows, protocol=4))
    return rows


def select_tokens(store: SceneStore, split: str, scenes: int | None) -> list[str]:
    """The split's scenes in manifest order, or ``scenes`` of them taken round-robin over families (a balanced,
    deterministic subset)."""
    tokens = store.tokens(split)
    if not tokens:
        raise ClosedLoopError(f"split '{split}' of {store.root} has no scenes")
    if scenes is None or scenes >= len(tokens):
        return tokens
    if scenes < 1:
        raise ClosedLoopError(f"--scenes must be >= 1, got {scenes}")
    by_family: dict[str, list[str]] = {}
    for t in tokens:
        by_family.setdefault(store.info(t)["family"], []).append(t)
    picked: list[str] = []
    queues = [list(v) for _, v in sorted(by_family.items())]
    while len(picked) < scenes:
        for q in queues:
            if q and len(picked) < scenes:
                picked.append(q.pop(0))
    keep = set(picked)
    return [t for t in tokens if t in keep]


def evaluate_closed_loop(data: str | Path, agent_spec: str, out: str | Path | None = None, reactive: bool = True,
                         seconds: float = DEFAULT_SECONDS, split: str = "test", scenes: int | None = None,
                         workers: int = 1, quiet: bool = False) -> dict:
    """Closed-loop evaluation of one agent; returns (and writes to ``out``) the result JSON.

    With ``out`` every finished job's rows go to ``.<out name>.partial/`` beside it: a killed run rerun with the same
    agent, data, scenes, mode and seconds only rolls out what is missing (the directory goes once ``out`` is
    written)."""
    from latentvla.agents.registry import load_agent

    if seconds < MIN_SECONDS:
        raise ClosedLoopError(f"--seconds must be >= {MIN_SECONDS} (one scorer horizon), got {seconds}")
    store = open_store(data, verify_blobs=False)
    sensors = world_sensors(store)
    agent = None if agent_spec == EXPERT else load_agent(agent_spec)
    check_agent(agent)
    tokens = select_tokens(store, split, scenes)
    jobs = [_Job(str(data), tokens[i:i + CHUNK_SCENES], agent, reactive, float(seconds), to_dict(sensors))
            for i in range(0, len(tokens), CHUNK_SCENES)]
    name = EXPERT if agent is None else agent.name
    done: dict[str, dict] = {}
    partial = None if out is None else Path(out).with_name(f".{Path(out).name}.partial")
    if partial is not None:
        key = hashlib.sha256(f"{EXPERT if agent is None else agent_fingerprint(agent)}|{store.digest()}|{reactive}|"
                             f"{float(seconds)}|{CHUNK_SCENES}|{chr(10).join(tokens)}".encode()).hexdigest()[:24]
        done, jobs = _resumed(partial, key, jobs)
        for job in jobs:
            job.resume = str(partial)
    resumed = len(done)
    start = time.time()
    with progress_bar(disable=quiet) as bar:
        task = bar.add_task(f"closed loop {name} ({'reactive' if reactive else 'non-reactive'}, {seconds:g} s)",
                            total=len(tokens), rate="", completed=resumed)
        for rows in parallel_map(run_chunk, jobs, workers=workers):
            done.update({r["token"]: r for r in rows})
            wall = max(time.time() - start, 1e-9)
            bar.update(task, advance=len(rows), rate=f"{(len(done) - resumed) * seconds / wall:.1f}x real time")
    wall = time.time() - start
    rows = [done[t] for t in tokens]
    ran = len(tokens) - resumed
    result = {"agent": name, "agent_spec": agent_spec, "data": str(data), "split": split,
              "mode": "reactive" if reactive else "non-reactive", "seconds": float(seconds), **summarize(rows),
              "timing": {"wall_s": round(wall, 3), "simulated_s": ran * float(seconds),
                         "realtime_factor": round(ran * float(seconds) / max(wall, 1e-9), 2),
                         "workers": workers, "resumed_scenes": resumed},
              "per_scene": rows, "provenance": provenance({"manifest": Path(str(store.root)) / "manifest.json"})}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, result, indent=1)
        shutil.rmtree(partial, ignore_errors=True)
    return result
