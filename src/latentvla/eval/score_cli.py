"""The modes of ``latentvla score`` (split scoring, --explain, --dump-case, --case, --sanity) and their output.

Kept out of cli.py so the command line stays a thin signature; every function here is usable from Python.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from latentvla.agents import load_agent
from latentvla.data.store import open_store
from latentvla.eval.runner import METRICS, columns, score_split, write_results

# Expected PDMS ranges on the embedded world's test split (v1.1): log replay near the top, constant velocity
# far below it. Outside them the scorer, the cache or the data is broken and no model score can be trusted.
SANITY_RANGES = {"log-replay": (0.90, 1.0), "constant-velocity": (0.0, 0.90)}
SANITY_MIN_GAP = 0.05  # log replay must beat constant velocity by at least this much
SANITY_SCENES = 120


def summary_table(summary: dict, title: str | None = None) -> Table:
    """Leaderboard-style table (x100), one row per family plus the mean."""
    metric = "pdms" if summary["metric"].startswith("pdms") else "epdms"
    cols = [c for c in columns(metric) if c not in ("token", "family", "valid", "error")]
    table = Table(title=title or f"{summary['metric']} - {summary.get('agent', '')} - split {summary['split']} "
                                 f"({summary['scenes']} scenes, {summary['invalid']} invalid)")
    table.add_column("family")
    table.add_column("scenes", justify="right")
    for c in cols:
        table.add_column(c.upper(), justify="right")

    def fmt(v) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    for fam, vals in summary["by_family"].items():
        table.add_row(fam, str(vals["scenes"]), *[fmt(vals.get(c)) for c in cols])
    table.add_row("[bold]all[/]", str(summary["scenes"]), *[f"[bold]{fmt(summary['mean'].get(c))}[/]" for c in cols])
    return table


def run_score(data: Path, agent_spec: str, out: Path, split: str, metric: str, workers: int,
              cache_dir: Path | None, quiet: bool = False) -> dict:
    if Path(out).suffix != ".csv":
        raise ValueError(f"--out must name a .csv file, got {out}")
    agent = load_agent(agent_spec)
    if hasattr(agent, "use_cache"):  # trained planners read the split's cached features (built once per dataset)
        agent.use_cache(data, split, workers=workers, quiet=quiet)
    partial = Path(out).with_name(f".{Path(out).name}.partial")  # finished jobs' rows: a killed run resumes
    rows, summary = score_split(data, agent, split=split, metric=metric, workers=workers, cache_root=cache_dir,
                                quiet=quiet, resume_dir=partial)
    summary_path = write_results(rows, summary, out, metric)
    shutil.rmtree(partial, ignore_errors=True)
    console = Console()
    console.print(summary_table(summary))
    score = METRICS[metric][1][-1]
    console.print(f"{score.upper()} with invalid scenes counted as 0: "
                  f"{100 * summary[f'{score}_with_invalid_as_zero']:.2f}  |  wrote {out} and {summary_path}")
    return summary


def _scene_and_plan(data: Path, agent_spec: str, token: str, cache_dir: Path | None, workers: int):
    from latentvla.data.store import open_store
    from latentvla.eval.metric_cache import MetricCache
    from latentvla.eval.runner import agent_plan

    cache = MetricCache.open(data, cache_root=cache_dir, workers=workers, tokens=[token])
    inputs = cache.load(token)
    agent = load_agent(agent_spec)
    store = open_store(data)
    return cache, store, agent, inputs, agent_plan(agent, store, inputs)


def run_explain(data: Path, agent_spec: str, token: str, metric: str, cache_dir: Path | None, workers: int) -> dict:
    """The reasons behind each sub-score of one scene; the scores shown are the case's (``metric``'s) scores."""
    from latentvla.eval.case import parse_case
    from latentvla.eval.explain import explain_lines, explain_pdms

    case = _case_for(data, agent_spec, token, metric, cache_dir, workers)
    report = explain_pdms(*parse_case(case))
    report["scores"] = {k: float("nan") if v is None else v for k, v in case["expected"].items()}
    Console().print(f"[bold]{case['agent']}[/] on {token} ({METRICS[metric][0]})")
    for line in explain_lines(report):
        Console().print(line, highlight=False)
    return report


def _case_for(data: Path, agent_spec: str, token: str, metric: str, cache_dir: Path | None, workers: int) -> dict:
    from latentvla.eval.case import make_case
    from latentvla.eval.runner import INTERVAL, agent_plan

    cache, store, agent, inputs, poses = _scene_and_plan(data, agent_spec, token, cache_dir, workers)
    previous = None
    if metric == "epdms" and inputs.previous_token is not None:
        prev = cache.load(inputs.previous_token)
        try:
            prev_poses = agent_plan(agent, store, prev)
            previous = {"initial_state": prev.initial_state.tolist(), "t0_us": prev.t0_us,
                        "poses": prev_poses.tolist(), "interval": INTERVAL}
        except Exception:  # noqa: BLE001 - the predecessor's plan is unusable: EC is NaN as in the run
            previous = None
    return make_case(inputs, poses, INTERVAL, agent.name, metric, previous)


def run_dump_case(data: Path, agent_spec: str, token: str, out: Path, metric: str, cache_dir: Path | None,
                  workers: int) -> dict:
    from latentvla.eval.case import write_case

    case = _case_for(data, agent_spec, token, metric, cache_dir, workers)
    write_case(case, out)
    Console(stderr=True).print(f"[green]wrote[/] scoring case {out} ({case['agent']} on {token}: "
                               f"{json.dumps(case['expected'])})")
    return case


def run_case(path: Path, explain: bool) -> dict:
    from latentvla.eval.case import finite, parse_case, read_case, score_case

    case = read_case(path)
    scores = score_case(case)
    out: dict = dict(scores)
    if explain:
        from latentvla.eval.explain import explain_pdms

        inputs, poses, interval = parse_case(case)
        report = explain_pdms(inputs, poses, interval)
        report.pop("scores")
        out = {**scores, "explain": report}
    sys.stdout.write(json.dumps(finite(out), sort_keys=False, default=float) + "\n")
    return out


def run_sanity(data: Path, split: str, workers: int, cache_dir: Path | None, scenes: int = SANITY_SCENES) -> bool:
    """Score log replay and constant velocity on a small split; False (loudly) if either is out of range."""

    console = Console()
    tokens = open_store(data, verify_blobs=False).tokens(split)
    step = max(1, len(tokens) // scenes)
    subset = tokens[::step][:scenes]
    results, ok = {}, True
    for name, (lo, hi) in SANITY_RANGES.items():
        _, summary = score_split(data, load_agent(name), split=split, metric="pdms", workers=workers,
                                 cache_root=cache_dir, tokens=subset, quiet=True)
        value = summary["pdms_with_invalid_as_zero"]
        results[name] = value
        good = lo <= value <= hi and summary["invalid"] == 0
        ok &= good
        console.print(f"{'[green]ok[/]  ' if good else '[bold red]FAIL[/]'} {name:18s} PDMS {100 * value:5.1f} "
                      f"(expected {100 * lo:.0f}-{100 * hi:.0f}; {summary['invalid']} invalid of {summary['scenes']})")
    gap = results["log-replay"] - results["constant-velocity"]
    if gap < SANITY_MIN_GAP:
        ok = False
        console.print(f"[bold red]FAIL[/] log replay beats constant velocity by only {100 * gap:.1f} points "
                      f"(expected >= {100 * SANITY_MIN_GAP:.0f})")
    if ok:
        console.print(f"[green]sanity gate passed[/] on {len(subset)} scenes of split '{split}'")
    else:
        console.print("[bold red]SANITY GATE FAILED[/]: do not trust model scores on this data/scorer until fixed")
    return ok
