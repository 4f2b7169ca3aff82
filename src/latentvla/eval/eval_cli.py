"""``latentvla eval ...``: evaluations on other datasets (``nuscenes``: open-loop L2 / collision).

cli.py registers ``eval_app`` as ``eval``. Heavy imports (devkit, torch, agents) happen inside the command, so
``latentvla --help`` stays fast and the nuScenes extra is only needed when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from latentvla.cli_common import console, ray_option
from latentvla.cli_common import friendly as _friendly

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate agents: closed loop in the embedded world, open loop on "
                                                  "nuScenes.")


@eval_app.callback()
def _group() -> None:
    """Evaluate agents beyond open-loop PDMS: closed-loop rollouts in the embedded world, nuScenes open loop."""


@eval_app.command("closed-loop")
@_friendly
@ray_option
def closed_loop_command(
    data: Path = typer.Option(..., "--data", help="Embedded-world dataset directory (its logs carry the simulator "
                                                  "states a scene restarts from)."),
    agent: str = typer.Option(..., "--agent", help="expert (the world's own driver) | constant-velocity | "
                                                   "PLANNER_RUN_DIR | VLA_RUN_DIR"),
    out: Path = typer.Option(..., "--out", help="Result JSON: mean, by_family, per_scene, timing, provenance."),
    reactive: bool = typer.Option(True, "--reactive/--non-reactive",
                                  help="Others react to the ego (IDM following, yielding, pedestrians that wait) "
                                       "or replay the log."),
    seconds: float = typer.Option(15.0, "--seconds", help="Simulated seconds per scene (>= 4)."),
    split: str = typer.Option("test", "--split", help="train | val | test"),
    scenes: int | None = typer.Option(None, "--scenes", help="Only N scenes, taken round-robin over families "
                                                           "(default: the whole split)."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU core)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Closed-loop driving: restart each scene's world, let the agent replan at 2 Hz from rendered sensors, track
    its plans with the scorer's LQR + bicycle model at 10 Hz among reactive (or logged) traffic, then score
    collisions, off-road, red lights, route completion against the expert, comfort and closed_loop_score."""
    import os

    from latentvla.closedloop.report import summary_table
    from latentvla.closedloop.runner import evaluate_closed_loop

    result = evaluate_closed_loop(data, agent, out, reactive=reactive, seconds=seconds, split=split, scenes=scenes,
                                  workers=workers or max(1, os.cpu_count() or 1), quiet=quiet)
    Console().print(summary_table(result))
    console.print(f"[green]wrote[/] {out} ({result['timing']['realtime_factor']:g}x real time)")


@eval_app.command("nuscenes")
@_friendly
def nuscenes_command(
    dataroot: Path = typer.Option(..., "--dataroot", help="nuScenes root (holds v1.0-mini/ or v1.0-trainval/, "
                                                          "samples/)."),
    version: str = typer.Option("v1.0-trainval", "--version", help="v1.0-mini | v1.0-trainval"),
    split: str = typer.Option("val", "--split", help="val | train (on v1.0-mini: mini_val | mini_train)."),
    agent: str = typer.Option(..., "--agent", help="constant-velocity | log-replay | predictions:FILE.json (6 poses "
                                                   "per sample token) | PLANNER_RUN_DIR | VLA_RUN_DIR"),
    out: Path = typer.Option(..., "--out", help="Summary JSON (stp3, uniad, samples, gt_collision)."),
    no_ego_status: bool = typer.Option(False, "--no-ego-status", help="Zero the velocity and acceleration the "
                                                                      "agent sees (the command stays)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N samples (smoke runs)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Open-loop planning on nuScenes (6 poses, 3 s): L2 and collision rate in the stp3 and uniad conventions, plus
    the logged trajectory's own collision floor; planners run zero-shot."""
    from latentvla.eval.nuscenes_eval import evaluate_nuscenes, summary_table

    summary = evaluate_nuscenes(dataroot, version, split, agent, out, ego_status=not no_ego_status, limit=limit,
                                quiet=quiet)
    ego = "without" if no_ego_status else "with"
    Console().print(summary_table(summary, f"nuScenes {version}/{split} - {agent} - {ego} ego status "
                                           f"({summary['samples']} samples; L2 m, collision %)"))
    console.print(f"[green]wrote[/] {out}")
