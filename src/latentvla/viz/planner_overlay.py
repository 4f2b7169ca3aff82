"""An agent's plan on the scene figure (``latentvla world show DATA --scene TOKEN --agent AGENT``).

:func:`plan_for_scene` runs any agent ``load_agent`` accepts on one scene, as the scorer would: privileged agents
(``requires_scene``: log replay, PDM-Closed) get their ``SceneInputs`` from the metric cache (built for that
scene's log if missing), every other agent only the ``AgentInput`` from the scene store. For iPad planner runs the
plan also carries every proposal, its selection score and the selected index, which :func:`draw_proposals` draws
on the BEV (thin lines coloured by score with a colorbar, the selected one highlighted) under the plan itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.ticker import MaxNLocator

from latentvla.eval.runner import checked_poses

PROPOSAL_CMAP = "plasma"
SELECTED_COLOR = "#ffd700"
PROPOSAL_ZORDER = 9.5  # above boxes and the ego (8, 9), below the plotted trajectories (10)


@dataclass
class ScenePlan:
    """One agent's plan for one scene (ego frame at t0), plus iPad's proposals when the agent has them."""

    agent: str
    trajectory: np.ndarray  # (8, 3)
    proposals: np.ndarray | None = None  # (N, 8, 3)
    scores: np.ndarray | None = None  # (N,) selection scores (higher is better)
    selected: int | None = None


def plan_for_scene(data: str | Path, agent_spec: str, token: str, cache_dir: str | Path | None = None,
                   workers: int = 1) -> ScenePlan:
    """Run ``agent_spec`` on scene ``token`` of ``data``; unknown agents or tokens raise a ValueError / KeyError."""
    from latentvla.agents import load_agent
    from latentvla.data.store import open_store

    data = Path(data)
    agent = load_agent(agent_spec)  # unknown agents fail here, before any cache is touched
    store = open_store(data, verify_blobs=False)
    store.info(token)  # an unknown token fails before the agent runs
    if agent.requires_scene:
        from latentvla.eval.score_cli import _scene_and_plan

        _, _, agent, _, poses = _scene_and_plan(data, agent_spec, token, Path(cache_dir) if cache_dir else None,
                                                workers)
    else:
        agent_input = store.load_agent_input(token, sensors=agent.sensors != "none",
                                             history_sensors=agent.sensors == "history")
        poses = checked_poses(agent.compute_trajectory(agent_input))
    plan = ScenePlan(agent=str(agent.name), trajectory=poses)
    last = getattr(agent, "last_output", None) or {}  # PlannerAgent keeps the model's outputs of its last call
    if "proposals" in last and "selection_score" in last:
        plan.proposals = np.asarray(last["proposals"], dtype=np.float64)
        plan.scores = np.asarray(last["selection_score"], dtype=np.float64)
        plan.selected = int(last["selected"]) if "selected" in last else int(np.nanargmax(plan.scores))
    return plan


def draw_proposals(ax: Axes, proposals: np.ndarray, scores: np.ndarray, selected: int | None = None,
                   cmap: str = PROPOSAL_CMAP, label: str = "selection score") -> LineCollection:
    """Every proposal (N, 8, 3) from the ego origin as a thin line coloured by its score (colorbar inset in the
    BEV's upper left corner); the ``selected`` one as a wide gold band underneath the plan. Returns the lines."""
    proposals = np.asarray(proposals, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if proposals.ndim != 3 or proposals.shape[2] < 2 or len(proposals) != len(scores):
        raise ValueError(f"proposals must be (N, T, >=2) with N scores, got {proposals.shape} and {scores.shape}")
    finite = scores[np.isfinite(scores)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    norm = Normalize(lo, hi)
    cm = colormaps[cmap]
    origin = np.zeros((len(proposals), 1, 2))
    # BEV plot coordinates (bev.setup_bev_axes): horizontal = ego y (axis reversed), vertical = ego x
    segments = np.concatenate([origin, proposals[:, :, :2]], axis=1)[:, :, ::-1]
    order = np.argsort(np.where(np.isfinite(scores), scores, -np.inf))  # best drawn last (on top)
    lines = LineCollection(segments[order], colors=cm(norm(np.nan_to_num(scores[order], nan=lo))), linewidths=0.9,
                           alpha=0.9, zorder=PROPOSAL_ZORDER)
    ax.add_collection(lines)
    if selected is not None and 0 <= selected < len(proposals):
        seg = segments[selected]
        ax.plot(seg[:, 0], seg[:, 1], color=SELECTED_COLOR, lw=4.5, alpha=0.85, solid_capstyle="round",
                zorder=PROPOSAL_ZORDER + 0.1, label=f"selected proposal #{selected} ({scores[selected]:.2f})")
    ax.plot([], [], color=cm(0.75), lw=0.9, label=f"{len(proposals)} proposals")  # legend entry for the fan
    cax = ax.inset_axes((0.03, 0.55, 0.025, 0.4))
    bar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cm), cax=cax)
    bar.locator = MaxNLocator(4)
    bar.update_ticks()
    outline = [patheffects.withStroke(linewidth=2.0, foreground="black")]  # readable on grass and road alike
    bar.set_label(label, fontsize=7, color="white", path_effects=outline)
    bar.ax.tick_params(labelsize=6, colors="white")
    for text in bar.ax.get_yticklabels():
        text.set_path_effects(outline)
    return lines


def show_plan(store, token: str, out_path: str | Path, plan: ScenePlan, radius: float = 50.0) -> Path:
    """The scene figure of :func:`latentvla.viz.show.show_scene` with ``plan`` on the BEV and in ``cam_f0``
    (and its proposals, if any, on the BEV)."""
    from latentvla.viz.show import show_scene

    overlay = None
    if plan.proposals is not None and plan.scores is not None and len(plan.proposals):
        overlay = partial(draw_proposals, proposals=plan.proposals, scores=plan.scores, selected=plan.selected,
                          label="selection score (log)")
    return show_scene(store, token, out_path, extra_trajectories={plan.agent: plan.trajectory}, radius=radius,
                      bev_overlay=overlay)
