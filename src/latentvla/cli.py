"""`latentvla` command line: one sub-command group per stage. Every verb reads the previous stage's artifacts and
writes its own output; bad input ends with a one-line message that names the item and what to do (exit code 2).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperCommand

from latentvla.cli_common import (
    DevicesOpt,
    NumNodesOpt,
    ProfileOpt,
    StrategyOpt,
    _friendly,
    console,
    make_launch,
    ray_option,
)
from latentvla.cli_common import default_workers as _default_workers
from latentvla.data.data_cli import data_app
from latentvla.eval.eval_cli import eval_app
from latentvla.report.cli import report_command
from latentvla.viz.viz_cli import viz_app
from latentvla.vla.vla_cli import vla_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="LatentVLA: latent-action VLA driving, end to end.")
world_app = typer.Typer(no_args_is_help=True, help="The embedded procedural driving world.")

app.add_typer(world_app, name="world")
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
app.add_typer(viz_app, name="viz")
app.command("report")(report_command)
lam_app = typer.Typer(no_args_is_help=True, help="Latent action model: train (two stages), label, report.")
app.add_typer(lam_app, name="lam")
planner_app = typer.Typer(no_args_is_help=True, help="Planner hosts (transfuser | ipad | ego-mlp): train.")
app.add_typer(planner_app, name="planner")
app.add_typer(vla_app, name="vla")




def world_config(profile: str, scenes: int | None, seed: int | None, config: Path | None,
                 overrides: list[str] | None):
    from latentvla.config import resolve
    from latentvla.world.configuration import WorldConfig

    extra = list(overrides or [])
    if scenes is not None:
        extra.append(f"scenes={scenes}")
    if seed is not None:
        extra.append(f"seed={seed}")
    return resolve(WorldConfig, "world", profile, config, extra)


@world_app.command("generate")
@_friendly
@ray_option
def world_generate(
    out: Path = typer.Option(..., "--out", help="Output dataset directory."),
    scenes: int | None = typer.Option(None, "--scenes", help="Number of scenes (default: the profile's)."),
    seed: int | None = typer.Option(None, "--seed", help="World seed (default 0)."),
    profile: str = ProfileOpt,
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU core)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset in --out."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted generation in --out."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with config overrides."),
    set_: list[str] | None = typer.Option(None, "--set", help="Dotted override, e.g. sensors.image_width=256."),
) -> None:
    """Generate scenes (cameras, LiDAR, boxes, map, expert future) into DIR with a manifest and checksums."""
    from latentvla.world.generate import generate

    cfg = world_config(profile, scenes, seed, config, set_)
    manifest = generate(out, cfg, workers=workers or _default_workers(), overwrite=overwrite, resume=resume)
    counts: dict[str, int] = {}
    for s in manifest["scenes"]:
        counts[s["split"]] = counts.get(s["split"], 0) + 1
    console.print(f"[green]wrote[/] {len(manifest['scenes'])} scenes in {len(manifest['logs'])} logs to {out} "
                  f"(splits: {counts}; config hash {manifest['config_hash']})")


@world_app.command("show")
@_friendly
def world_show(
    data: Path = typer.Argument(..., help="Dataset directory."),
    scene: str = typer.Option(..., "--scene", help="Scene token."),
    out: Path = typer.Option(..., "--out", help="Output PNG."),
    agent: str | None = typer.Option(None, "--agent",
                                     help="Also draw this agent's plan: constant-velocity | log-replay | pdm-closed "
                                          "| predictions:FILE.json | PLANNER_RUN_DIR (iPad: all its proposals)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Metric cache root for privileged agents "
                                                                   "(default DATA/metric_cache)."),
) -> None:
    """BEV (map, agents, lights, history, future, route) beside the cameras, future projected into cam_f0;
    with --agent also the agent's plan (BEV and cam_f0) and, for iPad runs, its scored proposals (BEV)."""
    from latentvla.data.store import open_store
    from latentvla.viz.show import show_scene

    if agent is None:
        path = show_scene(open_store(data), scene, out)
        console.print(f"[green]wrote[/] {path}")
        return
    from latentvla.viz.planner_overlay import plan_for_scene, show_plan

    plan = plan_for_scene(data, agent, scene, cache_dir=cache_dir)
    path = show_plan(open_store(data), scene, out, plan)
    extra = f", {len(plan.proposals)} proposals (selected #{plan.selected})" if plan.proposals is not None else ""
    console.print(f"[green]wrote[/] {path} ({plan.agent}{extra})")


@world_app.command("stats")
@_friendly
def world_stats(
    data: Path = typer.Argument(..., help="Dataset directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON on stdout."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write histograms to this PNG."),
) -> None:
    """Counts per family, command and split; speed and curvature histograms."""
    from latentvla.data.store import open_store
    from latentvla.world.stats import compute_stats, plot_stats

    stats = compute_stats(open_store(data))
    if plot is not None:
        plot_stats(stats, plot)
    if as_json:
        sys.stdout.write(json.dumps(stats, sort_keys=True) + "\n")
        return
    _print_stats(stats)


def _print_stats(stats: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{stats['scenes']} scenes")
    splits = sorted(stats["splits"])
    table.add_column("family")
    for s in splits:
        table.add_column(s, justify="right")
    for fam in sorted(stats["families"]):
        table.add_row(fam, *[str(stats["by_split"][s]["families"].get(fam, 0)) for s in splits])
    Console().print(table)
    Console().print(f"commands: {stats['commands']}")


@app.command("demo")
@_friendly
@ray_option
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Demo run directory."),
    profile: str = ProfileOpt,
    scenes: int | None = typer.Option(None, "--scenes", help="Override the profile's world size."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU core)."),
) -> None:
    """Run the pipeline on the embedded world: generate it, then write stats and a gallery per family."""
    from latentvla.demo import run_demo

    run_demo(out, profile=profile, scenes=scenes, workers=workers or _default_workers(), console=console)


def lam_config(profile: str, config: Path | None, overrides: list[str] | None):
    from latentvla.config import resolve
    from latentvla.lam.configuration import LAMConfig

    return resolve(LAMConfig, "lam", profile, config, list(overrides or []))


@lam_app.command("train")
@_friendly
@ray_option
def lam_train(
    data: Path = typer.Option(..., "--data", help="Dataset directory (trains on train, monitors val)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    profile: str = ProfileOpt,
    stage: str = typer.Option("both", "--stage", help="1 | 2 | both"),
    resume: bool = typer.Option(False, "--resume", help="Skip finished stages; resume an interrupted one."),
    workers: int = typer.Option(0, "--workers", help="Worker processes for feature caching (0: one per core)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with config overrides."),
    set_: list[str] | None = typer.Option(None, "--set", help="Dotted override, e.g. model.ego.codebook_size=32."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Feature cache root (default DATA/feature_cache)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    devices: int = DevicesOpt,
    num_nodes: int = NumNodesOpt,
    strategy: str = StrategyOpt,
) -> None:
    """Train the environment (stage 1) and ego (stage 2) latent action models."""
    from latentvla.lam.train import train

    metrics = train(data, out, lam_config(profile, config, set_), stages=stage, resume=resume,
                    workers=workers or _default_workers(), quiet=quiet, cache_root=cache_dir,
                    launch=make_launch(devices, num_nodes, strategy))
    if metrics:
        console.print(f"[green]trained[/] {out}: {json.dumps(metrics)}")


@lam_app.command("label")
@_friendly
@ray_option
def lam_label(
    run: Path = typer.Option(..., "--run", help="LAM run directory."),
    data: Path = typer.Option(..., "--data", help="Dataset directory."),
    workers: int = typer.Option(0, "--workers", help="Worker processes for feature caching (0: one per core)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Feature cache root (default DATA/feature_cache)."),
) -> None:
    """Write per-scene ego and environment token ids for every split (a no-op if already labelled)."""
    from latentvla.lam.report import label

    path = label(run, data, workers=workers or _default_workers(), cache_root=cache_dir)
    console.print(f"[green]labels[/] {path}")


@lam_app.command("report")
@_friendly
@ray_option
def lam_report(
    run: Path = typer.Option(..., "--run", help="LAM run directory."),
    data: Path = typer.Option(..., "--data", help="Dataset directory (evaluates on test)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    workers: int = typer.Option(0, "--workers", help="Worker processes for feature caching (0: one per core)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Feature cache root (default DATA/feature_cache)."),
) -> None:
    """Codebook usage, reconstruction gain, disentanglement (AMI, linear probes) on the test split."""
    from latentvla.lam.report import report

    metrics = report(run, data, workers=workers or _default_workers(), quiet=as_json, cache_root=cache_dir)
    if as_json:
        sys.stdout.write(json.dumps(metrics, sort_keys=True) + "\n")
        return
    for k, v in metrics.items():
        Console().print(f"{k:18s} {v:.4f}" if isinstance(v, float) else f"{k:18s} {v}")


def planner_config(host: str, profile: str, config: Path | None, overrides: list[str] | None):
    from latentvla.config import resolve
    from latentvla.planner.configuration import PlannerConfig

    return resolve(PlannerConfig, "planner", profile, config, [f"host={host}", *(overrides or [])])


@planner_app.command("train")
@_friendly
@ray_option
def planner_train(
    data: Path = typer.Option(..., "--data", help="Dataset directory (trains on train, selects on val)."),
    host: str = typer.Option(..., "--host", help="transfuser | ipad | ego-mlp"),
    out: Path = typer.Option(..., "--out", help="Run directory (a valid --agent for `latentvla score`)."),
    profile: str = ProfileOpt,
    resume: bool = typer.Option(False, "--resume", help="Resume an interrupted run from its last checkpoint."),
    workers: int = typer.Option(0, "--workers", help="Worker processes for feature caching (0: one per core)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with config overrides."),
    set_: list[str] | None = typer.Option(None, "--set", help="Dotted override, e.g. train.epochs=5."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Planner cache root (default DATA/planner_cache)."),
    metric_cache_dir: Path | None = typer.Option(None, "--metric-cache-dir",
                                                 help="Metric cache root for iPad's anchor scores "
                                                      "(default DATA/metric_cache)."),
    teacher: Path | None = typer.Option(None, "--teacher", help="VLA teacher run to fuse (the 'full' model): its "
                                                                "generated-token embeddings feed the planning queries."),
    distill_from: Path | None = typer.Option(None, "--distill-from",
                                             help="Full (fused) planner run to distill into this student (no VLM at "
                                                  "inference)."),
    latent_labels: Path | None = typer.Option(None, "--latent-labels",
                                              help="LAM run whose latent codes train an auxiliary head (control), "
                                                   "or that --oracle latent reads."),
    oracle: str | None = typer.Option(None, "--oracle",
                                      help="Diagnostic: fuse a privileged context instead of a teacher (facts, "
                                           "latent, latent@ACCURACY, expert; docs/TRAINING.md). Scores from a "
                                           "dataset only."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    devices: int = DevicesOpt,
    num_nodes: int = NumNodesOpt,
    strategy: str = StrategyOpt,
) -> None:
    """Train a planner host; the best val-ADE epoch becomes RUN/model.safetensors."""
    from latentvla.planner.sources import Sources
    from latentvla.planner.train import train

    metrics = train(data, out, planner_config(host, profile, config, set_), resume=resume,
                    workers=workers or _default_workers(), quiet=quiet, cache_root=cache_dir,
                    metric_cache_root=metric_cache_dir,
                    sources=Sources(teacher=teacher, distill_from=distill_from, latent_labels=latent_labels,
                                    oracle=oracle),
                    launch=make_launch(devices, num_nodes, strategy))
    if metrics:  # ranks other than 0 return nothing
        console.print(f"[green]trained[/] {out}: {json.dumps(metrics)}")


class _ScoreCommand(TyperCommand):
    """``--explain`` takes a scene token, except with ``--case`` where it is a bare flag."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, a in enumerate(args):
            if a == "--explain" and (i + 1 == len(args) or args[i + 1].startswith("--")):
                args.insert(i + 1, CASE_EXPLAIN)
                break
        return super().parse_args(ctx, args)


CASE_EXPLAIN = "(case)"


@app.command("score", cls=_ScoreCommand)
@_friendly
@ray_option
def score(
    data: Path | None = typer.Option(None, "--data", help="Dataset directory."),
    agent: str = typer.Option("log-replay", "--agent",
                              help="constant-velocity | log-replay | pdm-closed | predictions:FILE.json | RUN_DIR"),
    out: Path | None = typer.Option(None, "--out", help="Per-scene RESULTS.csv (summary: RESULTS.summary.json); "
                                                       "with --dump-case: the case JSON."),
    split: str = typer.Option("test", "--split", help="test | val | train | all"),
    metric: str = typer.Option("pdms", "--metric", help="pdms (NAVSIM v1.1) | epdms (NAVSIM v2)"),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU core)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Metric cache root (default DATA/metric_cache)."),
    explain: str | None = typer.Option(None, "--explain", help="Explain the sub-scores of scene TOKEN "
                                                               "(a bare flag with --case)."),
    dump_case: str | None = typer.Option(None, "--dump-case", help="Write the scoring case of scene TOKEN to --out."),
    case: Path | None = typer.Option(None, "--case", help="Score one scoring-case JSON in isolation."),
    sanity: bool = typer.Option(False, "--sanity", help="Check log replay and constant velocity score as expected."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Score an agent with NAVSIM's PDMS (v1.1) or EPDMS (v2) on a split; also --explain, --dump-case, --case,
    --sanity."""
    from latentvla.eval import score_cli

    if metric not in ("pdms", "epdms"):
        raise ValueError(f"unknown metric '{metric}'; valid: pdms, epdms")
    if case is not None:
        score_cli.run_case(case, explain is not None)
        return
    if data is None:
        raise ValueError("--data DIR is required (or score a single --case CASE.json)")
    workers = workers or _default_workers()
    if sanity:
        if not score_cli.run_sanity(data, split, workers, cache_dir):
            raise typer.Exit(code=1)
        return
    if explain is not None:
        if explain == CASE_EXPLAIN:
            raise ValueError("--explain needs a scene TOKEN (a bare --explain only goes with --case)")
        score_cli.run_explain(data, agent, explain, metric, cache_dir, workers)
        return
    if out is None:
        raise ValueError("--out is required (RESULTS.csv, or CASE.json with --dump-case)")
    if dump_case is not None:
        score_cli.run_dump_case(data, agent, dump_case, out, metric, cache_dir, workers)
        return
    score_cli.run_score(data, agent, out, split, metric, workers, cache_dir, quiet)


def main() -> None:  # console script entry point
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    app()



# --- experiment: the paper's comparison ---------------------------------------------------------------------------
experiment_app = typer.Typer(no_args_is_help=True, help="The LatentVLA comparison: hosts, teacher, full, distilled, "
                                                         "controls.")
app.add_typer(experiment_app, name="experiment")


_ExpData = typer.Option(..., "--data", help="Dataset directory (train / val / test splits).")
_ExpSeeds = typer.Option(1, "--seeds", min=1, help="Seeds of every planner-family row.")
_ExpWorkers = typer.Option(0, "--workers", help="Worker processes (0: one per core).")
_ExpThreads = typer.Option(1, "--threads", min=1, help="torch threads while timing latency (all rows).")
_ExpSet = typer.Option(None, "--set", help="Stage override STAGE:KEY=VALUE, e.g. planner:train.epochs=4 "
                                           "(stages lam, vla, planner).")
_ExpCache = typer.Option(None, "--cache-dir", help="Planner cache root (default DATA/planner_cache).")
_ExpMetricCache = typer.Option(None, "--metric-cache-dir", help="Metric cache root.")
_ExpLamCache = typer.Option(None, "--lam-cache-dir", help="LAM feature cache root.")
_ExpQuiet = typer.Option(False, "--quiet", help="No progress bars.")
_ExpClosedLoop = typer.Option(None, "--closed-loop-scenes", min=0,
                              help="Test scenes each row drives in closed loop (reactive; default per profile: quick "
                                   "4 x 4 s, demo 50 x 15 s, full 200 x 15 s; 0: no closed-loop columns; ablations: "
                                   "0 unless given).")


@experiment_app.command("table")
@_friendly
@ray_option
def experiment_table_cmd(
    data: Path = _ExpData,
    out: Path = typer.Option(..., "--out", help="Output directory: runs, scores, table.csv, table.json."),
    profile: str = ProfileOpt,
    seeds: int = _ExpSeeds,
    models: str | None = typer.Option(None, "--models", help="Comma-separated subset of the rows (default all but "
                                                             "the diagnostic oracle-facts, oracle-latent, oracle-expert)."),
    workers: int = _ExpWorkers,
    threads: int = _ExpThreads,
    set_: list[str] | None = _ExpSet,
    cache_dir: Path | None = _ExpCache,
    metric_cache_dir: Path | None = _ExpMetricCache,
    lam_cache_dir: Path | None = _ExpLamCache,
    quiet: bool = _ExpQuiet,
    closed_loop_scenes: int | None = _ExpClosedLoop,
) -> None:
    """Train what is missing (finished runs are reused), score on the test split (open loop, then closed loop on a
    family-balanced subset), write OUT/table.csv/json."""
    from latentvla.experiment.runs import MODELS
    from latentvla.experiment.table import experiment_table

    plan = _experiment_plan(data, out, profile, seeds, workers, quiet, set_, cache_dir, metric_cache_dir,
                            lam_cache_dir, closed_loop_scenes)
    chosen = tuple(m.strip() for m in models.split(",")) if models else MODELS
    table = experiment_table(plan, chosen, threads=threads, console=console)
    console.print(f"[green]wrote[/] {out / 'table.csv'}, {out / 'table.json'} ({table['scenes']} test scenes, "
                  f"{table['seeds']} seed(s))")


def _experiment_plan(data, out, profile, seeds, workers, quiet, set_, cache_dir, metric_cache_dir, lam_cache_dir,
                     closed_loop_scenes=None):
    from latentvla.experiment.runs import Plan

    overrides: dict[str, list[str]] = {}
    for item in set_ or []:
        stage, sep, kv = item.partition(":")
        if not sep or stage not in ("lam", "vla", "planner") or "=" not in kv:
            raise ValueError(f"--set {item!r}: expected STAGE:KEY=VALUE with STAGE lam, vla or planner")
        overrides.setdefault(stage, []).append(kv)
    return Plan(data, out, profile, seeds, workers or _default_workers(), quiet, cache_dir, metric_cache_dir,
                lam_cache_dir, overrides, closed_loop_scenes)


@experiment_app.command("ablations")
@_friendly
@ray_option
def experiment_ablations_cmd(
    data: Path = _ExpData,
    out: Path = typer.Option(..., "--out", help="Output directory (the same as `experiment table`'s shares its "
                                                "reference runs): ablations.csv, ablations.json."),
    profile: str = ProfileOpt,
    seeds: int = _ExpSeeds,
    only: str | None = typer.Option(None, "--ablations", help="Comma-separated subset (default all): single-stage, "
                                                              "codebook-8, codebook-32, blind-teacher, no-latent-kl, "
                                                              "no-score-kl, no-feature."),
    workers: int = _ExpWorkers,
    threads: int = _ExpThreads,
    set_: list[str] | None = _ExpSet,
    cache_dir: Path | None = _ExpCache,
    metric_cache_dir: Path | None = _ExpMetricCache,
    lam_cache_dir: Path | None = _ExpLamCache,
    quiet: bool = _ExpQuiet,
    closed_loop_scenes: int | None = _ExpClosedLoop,
) -> None:
    """Single-stage latents, codebook size, each distillation term, blind teacher: OUT/ablations.csv/json."""
    from latentvla.experiment.ablations import ABLATIONS, experiment_ablations

    plan = _experiment_plan(data, out, profile, seeds, workers, quiet, set_, cache_dir, metric_cache_dir,
                            lam_cache_dir, closed_loop_scenes)
    names = tuple(n.strip() for n in only.split(",")) if only else ABLATIONS
    table = experiment_ablations(plan, names, threads=threads, console=console)
    console.print(f"[green]wrote[/] {out / 'ablations.csv'}, {out / 'ablations.json'} ({table['scenes']} test scenes, "
                  f"{table['seeds']} seed(s))")


# --- export: deployment formats of trained runs -----------------------------------------------------------------
export_app = typer.Typer(no_args_is_help=True, help="Export trained runs for deployment (ONNX; needs "
                                                     "pip install -e '.\\[export]').")
app.add_typer(export_app, name="export")


@export_app.command("onnx")
@_friendly
def export_onnx_cmd(
    run: Path = typer.Option(..., "--run", help="Planner run directory (any host; the distilled student too)."),
    out: Path = typer.Option(..., "--out", help="Output FILE.onnx (written atomically, only once verified)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    as_json: bool = typer.Option(False, "--json", help="Print the export summary as JSON on stdout."),
) -> None:
    """Export a planner run to ONNX (dynamic batch axis), verified against PyTorch on onnxruntime."""
    if out.suffix != ".onnx":
        raise ValueError(f"--out must end with .onnx, got {out}")
    from latentvla.export.onnx import export_onnx

    try:
        summary = export_onnx(run, out, opset=opset)
    except (ValueError, FileNotFoundError) as e:  # _friendly prints rich markup: keep "[export]" literal
        from rich.markup import escape

        raise type(e)(escape(str(e))) from None
    if as_json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
        return
    console.print(f"[green]wrote[/] {out} ({summary['host']}, {summary['bytes'] / 1e6:.2f} MB, opset "
                  f"{summary['opset']}): inputs {summary['inputs']} -> outputs {summary['outputs']}; max |onnxruntime "
                  f"- torch| on trajectory {summary['max_abs_diff']:.2e}", soft_wrap=True)


if __name__ == "__main__":
    main()
