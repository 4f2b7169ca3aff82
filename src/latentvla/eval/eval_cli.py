"""``latentvla eval ...``: evaluations on other datasets (``nuscenes``: open-loop L2 / collision).

cli.py registers ``eval_app`` as ``eval``. Heavy imports (devkit, torch, agents) happen inside the command, so
``latentvla --help`` stays fast and the nuScenes extra is only needed when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from latentvla.cli_common import console
from latentvla.cli_common import friendly as _friendly

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate agents on other datasets (nuScenes open-loop planning).")


@eval_app.callback()
def _group() -> None:
    """Evaluate agents on other datasets (a group even with one command, so `eval nuscenes` keeps its name)."""


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
