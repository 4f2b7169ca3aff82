"""``latentvla experiment table``: train what is missing, score every row on the test split, write the table.

Per (model, seed) the per-scene PDMS v1.1 and EPDMS v2 rows are kept in ``OUT/scores/<model>.seed<k>.json``
(keyed by the run's weights hash, so a retrained run is re-scored) with NAVSIM-style CSVs beside them. Latency is
the network's: batch 1 on precomputed sensor features of one test scene (the frozen image backbone, identical
for every learned row, is not timed), warm-up then the median of ``repeats`` calls, all rows in one process
with one torch thread setting, timed round-robin across rows after all scoring; ``full`` and ``teacher`` include the teacher's token generation.
Reference rows (``pdm-closed``, ``log-replay``) read privileged scene data, so they have no latency.

Closed loop (``closed_loop_score``, ``red_light_violations``): the first seed of every row that can drive is rolled
out in the reactive world (``latentvla eval closed-loop``) on a family-balanced subset of the test split
(``CLOSED_LOOP`` per profile, ``--closed-loop-scenes``), cached in ``OUT/closed_loop/<model>.json`` by weights key.
``log-replay`` drives as the world's expert (the log's own driver); ``pdm-closed`` needs the scorer's privileged
inputs, which a closed-loop world state has none of, so its cells stay empty.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from latentvla.data.store import open_store
from latentvla.experiment.runs import (
    MODELS,
    ORACLE_ROWS,
    PLANNER_ROWS,
    REFERENCE_ROWS,
    TEACHER_ROWS,
    Plan,
    train_all,
)
from latentvla.experiment.stats import PAIRS, build_table, render_tables, write_table
from latentvla.runtime.io import read_json, write_json
from latentvla.runtime.parallel import torch_threads

CLOSED_LOOP = {"quick": (4, 4.0), "demo": (50, 15.0), "full": (200, 15.0)}  # profile -> (scenes, seconds)
CLOSED_LOOP_KEYS = ("closed_loop_score", "red_light_violations")
LATENCY_REPEATS = 50
LATENCY_WARMUP = 5


def weights_key(run: Path | None, name: str) -> str:
    from latentvla.vla.encode_cache import run_key

    return name if run is None else f"{name}:{run_key(run)}"


def load_row_agent(model: str, run: Path | None):
    from latentvla.agents import load_agent

    return load_agent(model if run is None else str(run))


def score_rows(plan: Plan, model: str, seed: int, run: Path | None, console: Console) -> dict[str, list[dict]]:
    """{"pdms": rows, "epdms": rows} of one (model, seed) on the test split, reused when already scored."""
    from latentvla.eval.runner import score_split, write_results

    path = plan.out / "scores" / f"{model}.seed{seed}.json"
    key = weights_key(run, model)
    if path.is_file():
        doc = read_json(path)
        if doc.get("key") == key:
            return {"pdms": doc["pdms"], "epdms": doc["epdms"]}
    agent = load_row_agent(model, run)
    if hasattr(agent, "use_cache"):
        agent.use_cache(plan.data, "test", cache_root=plan.planner_cache_root, workers=plan.workers)
    out: dict[str, list[dict]] = {}
    for metric in ("pdms", "epdms"):
        rows, summary = score_split(plan.data, agent, "test", metric=metric, workers=plan.workers,
                                    cache_root=plan.metric_cache_root, quiet=plan.quiet)
        write_results(rows, summary, path.with_name(f"{model}.seed{seed}.{metric}.csv"), metric)
        out[metric] = [{k: _plain(v) for k, v in r.items()} for r in rows]
    write_json(path, {"key": key, **out})
    console.print(f"{model} (seed {seed}): PDMS {np.mean([r['pdms'] if r['valid'] else 0 for r in out['pdms']]):.4f}")
    return out


def closed_loop_cells(plan: Plan, model: str, run: Path | None, console: Console) -> dict | None:
    """The row's closed-loop mean (``CLOSED_LOOP_KEYS`` and the rest), reused when already run; None where the
    model cannot drive in closed loop or closed loop is off."""
    from latentvla.closedloop.runner import evaluate_closed_loop

    scenes, seconds = CLOSED_LOOP.get(plan.profile, CLOSED_LOOP["demo"])
    scenes = scenes if plan.closed_loop_scenes is None else plan.closed_loop_scenes
    if not scenes or model == "pdm-closed" or model in ORACLE_ROWS:
        return None
    spec = "expert" if model == "log-replay" else (model if run is None else str(run))
    path = plan.out / "closed_loop" / f"{model}.json"
    key = f"{weights_key(run, model)}|{scenes}|{seconds}"
    if path.is_file():
        doc = read_json(path)
        if doc.get("key") == key:
            return doc["mean"]
    result = evaluate_closed_loop(plan.data, spec, path, reactive=True, seconds=seconds, scenes=scenes,
                                  workers=plan.workers, quiet=plan.quiet)  # resumable; then stamped with its key
    write_json(path, {"key": key, **result}, indent=1)
    console.print(f"{model}: closed_loop_score {result['mean']['closed_loop_score']:.4f} ({result['scenes']} scenes "
                  f"x {seconds:g} s, reactive)")
    return result["mean"]


def _plain(v):
    """JSON-safe scalar: numpy scalars to Python, NaN (a sub-score NAVSIM leaves undefined) to None."""
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def latency_fn(plan: Plan, model: str, run: Path | None, token: str):
    """(parameters used at inference, a batch-1 call of the network, or None for reference rows)."""
    from latentvla.planner.cache import PlannerCache

    if model in REFERENCE_ROWS:
        if model != "constant-velocity":
            return 0, None

        agent = load_row_agent(model, None)
        inp = open_store(plan.data, verify_blobs=False).load_agent_input(token, sensors=False)
        return 0, lambda: agent.compute_trajectory(inp)
    agent = load_row_agent(model, run)
    params = sum(p.numel() for p in agent.model.parameters())
    if model in ORACLE_ROWS:
        return int(params), None  # a privileged context exists only for dataset scenes: nothing to time
    teacher = getattr(agent, "teacher", None)
    if teacher is not None:
        params += sum(p.numel() for p in teacher.model.parameters())
    cache = PlannerCache.open(plan.data, agent.features_cfg, cache_root=plan.planner_cache_root,
                              workers=plan.workers, quiet=True, splits=["test"])
    feats = {k: torch.from_numpy(v) for k, v in cache.features([token]).items()}
    return int(params), lambda: agent.infer(feats)


def latencies_ms(fns: dict[str, object], threads: int) -> dict[str, float]:
    """Median batch-1 latency of every callable, timed round-robin (``interleaved_ms``) after all scoring, so
    background load and warm-up affect every row alike."""
    from latentvla.runtime.timing import interleaved_ms

    timed = {k: f for k, f in fns.items() if f is not None}
    with torch_threads(threads):
        ms = interleaved_ms(list(timed.values()), LATENCY_REPEATS, LATENCY_WARMUP)
    return {k: float(np.median(m)) for k, m in zip(timed, ms)}


def run_of(model: str, seed: int, runs: dict) -> Path | None:
    if model in PLANNER_ROWS:
        return runs["planner"][(model, seed)]
    if model in TEACHER_ROWS:
        return runs["teachers"][TEACHER_ROWS[model]]
    return None


def score_models(plan: Plan, by_model: dict[str, dict[int, Path | None]], threads: int, console: Console
                 ) -> dict[str, dict]:
    """``build_table``'s input: every model's per-seed PDMS / EPDMS rows (scored or reused), params, latency."""

    token = open_store(plan.data, verify_blobs=False).tokens("test")[0]
    console.rule("[bold]scoring[/] (PDMS v1.1 and EPDMS v2 on split test) and latency")
    out, fns = {}, {}
    for model, runs in by_model.items():
        scored = [score_rows(plan, model, s, run, console) for s, run in sorted(runs.items())]
        params, fns[model] = latency_fn(plan, model, runs[min(runs)], token)
        out[model] = {"rows": [s["pdms"] for s in scored], "epdms_rows": [s["epdms"] for s in scored],
                      "params": params, "closed_loop": closed_loop_cells(plan, model, runs[min(runs)], console)}
    ms = latencies_ms(fns, threads)
    for model in out:
        out[model]["latency_ms"] = ms.get(model)
    return out


def publish(table: dict, plan: Plan, threads: int, stem: str, console: Console) -> None:
    """Stamp the profile and thread setting, write OUT/<stem>.csv / .json, print both tables."""
    table.update(profile=plan.profile, latency_threads=threads)
    write_table(table, plan.out, stem=stem)
    print_tables(render_tables(table), console)


def print_tables(tables, console: Console, log_width: int = 200) -> None:
    """Print rich tables, at ``log_width`` columns when the console is no terminal: a log file would otherwise get
    80 columns and every cell cut to "0.8…" (``print(width=)`` does not widen a table)."""
    out = console if console.is_terminal else Console(file=console.file, width=log_width)
    for t in tables:
        out.print(t)


def scene_logs(store) -> dict[str, str]:
    """Test scene token -> its log: the resampling unit of ``paired_by_log`` (a log's scenes overlap in time)."""
    return {t: store.info(t)["log"] for t in store.tokens("test")}


def experiment_table(plan: Plan, models: tuple[str, ...] = MODELS, threads: int = 1,
                     console: Console | None = None) -> dict:
    """Train, score and tabulate; writes OUT/table.csv, OUT/table.json and prints both tables."""

    console = console or Console(stderr=True)
    unknown = [m for m in models if m not in MODELS + ORACLE_ROWS]
    if unknown:
        raise ValueError(f"unknown model '{unknown[0]}'; valid: {list(MODELS + ORACLE_ROWS)}")
    store = open_store(plan.data, verify_blobs=False)
    missing = [s for s in ("train", "val", "test") if not store.tokens(s)]
    if missing:
        raise ValueError(f"{plan.data} has no scenes in split(s) {missing}; the comparison needs train, val and test")
    plan.out.mkdir(parents=True, exist_ok=True)
    runs = train_all(plan, models, console)
    by_model = {m: {s: run_of(m, s, runs) for s in (range(plan.seeds) if m in PLANNER_ROWS else range(1))}
                for m in models}
    table_models = score_models(plan, by_model, threads, console)
    pairs = {**PAIRS, **{f"{m}-ipad": (m, "ipad") for m in models if m in ORACLE_ROWS}}
    table = build_table(table_models, pairs, logs=scene_logs(store))
    publish(table, plan, threads, "table", console)
    write_json(plan.out / "runs.json", {"lam": str(runs["lam"]), "teachers": {k: str(v) for k, v in runs["teachers"].items()},
                                        "planner": {f"{m}.seed{s}": str(p) for (m, s), p in runs["planner"].items()}},
               indent=1)
    return table
