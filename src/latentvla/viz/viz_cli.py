"""``latentvla viz ...``: videos of what the agents do (``rollout``: a closed-loop rollout, BEV + front camera).

cli.py registers ``viz_app`` as ``viz``; heavy imports happen inside the command so ``latentvla --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from latentvla.cli_common import console
from latentvla.cli_common import friendly as _friendly

viz_app = typer.Typer(no_args_is_help=True, help="Videos: closed-loop rollouts (BEV beside the front camera).")


@viz_app.callback()
def _group() -> None:
    """Videos of agents driving (a group even with one command, so `viz rollout` keeps its name)."""


@viz_app.command("rollout")
@_friendly
def rollout_command(
    data: Path = typer.Option(..., "--data", help="Embedded-world dataset directory."),
    agent: str = typer.Option(..., "--agent", help="expert | constant-velocity | PLANNER_RUN_DIR | VLA_RUN_DIR"),
    scene: str = typer.Option(..., "--scene", help="Scene token (the restart point)."),
    out: Path = typer.Option(..., "--out", help="FILE.gif or FILE.mp4"),
    seconds: float = typer.Option(15.0, "--seconds", help="Simulated seconds."),
    reactive: bool = typer.Option(True, "--reactive/--non-reactive", help="Others react to the ego, or replay the "
                                                                         "log."),
    every: int = typer.Option(1, "--every", help="One frame per N 10 Hz steps (the video plays in real time)."),
) -> None:
    """Roll a scene out in closed loop with the agent and write the video: BEV (map, lights, road users, the plan,
    the expert's path, the driven path) beside the front camera, with the scene's closed-loop numbers."""
    from latentvla.viz.rollout import render_rollout

    res = render_rollout(data, agent, scene, out, seconds=seconds, reactive=reactive, every=every)
    m = res["metrics"]
    console.print(f"[green]wrote[/] {out} ({res['frames']} frames): closed_loop_score {m['closed_loop_score']:.3f}, "
                  f"collision {m['collision_rate']:.0f}, off-road {m['offroad_rate']:.0f}, red lights "
                  f"{m['red_light_violations']}, route {m['route_completion']:.2f}")
