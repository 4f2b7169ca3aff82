"""The failure gallery: per model of a comparison table, its worst test scenes by PDMS, each drawn as BEV + front
camera with the logged future (ground truth) and the student's, full model's and teacher's plans (and the model's
own), with the scorer's ``--explain`` reasons for the model's plan.

Plans are recomputed by loading each row's seed-0 run as ``latentvla score`` does (planner cache for the split's
features, metric cache for privileged agents), so they are the plans that were scored. Each scene's figure (map,
boxes, ground truth, student / full / teacher plans) is rendered once; a model's own plan is blitted onto it, so a
scene that many models fail on costs one render.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from latentvla.report.collect import Artifacts, TableDir
from latentvla.report.figures import png_uri
from latentvla.report.html import cap, esc, h3, img, na, pre

ROLES = {"student": ("distilled", "transfuser-distilled"), "full": ("full", "transfuser-full"),
         "teacher": ("teacher", "teacher-scratch")}
COLORS = {"ground truth": "#00a651", "student": "#1f77b4", "full": "#d62728", "teacher": "#9467bd",
          "model": "#ff7f0e"}
VIEW = (-16.0, 56.0)  # BEV forward range [m]; the lateral range is as wide, centred on the ego
SUBSCORES = ("nc", "dac", "ttc", "c", "ep", "pdms")
DPI = 72


@dataclass
class Case:
    model: str
    token: str
    row: dict


def _score(row: dict) -> float:
    v = row.get("pdms")
    return float(v) if row.get("valid") and v is not None else 0.0


def worst_cases(tdir: TableDir, models: list[str], worst: int) -> tuple[dict[str, list[Case]], list[str]]:
    """{model: its ``worst`` lowest-PDMS scenes of seed 0 (invalid = 0; ties in scoring order)}, models unscored."""
    out, missing = {}, []
    for m in models:
        rows = tdir.scene_rows(m)
        if not rows:
            missing.append(m)
            continue
        order = sorted(range(len(rows)), key=lambda i: (_score(rows[i]), i))[:worst]
        out[m] = [Case(m, rows[i]["token"], rows[i]) for i in order]
    return out, missing


def role_models(models: list[str]) -> dict[str, str]:
    """{role: the first table row that plays it} (student, full, teacher)."""
    return {role: next(m for m in cands if m in models) for role, cands in ROLES.items()
            if any(m in models for m in cands)}


def _load(tdir: TableDir, model: str):
    from latentvla.agents import load_agent

    run = tdir.model_run(model)
    return load_agent(model if run is None else str(run))


def compute_plans(tdir: TableDir, data: Path, split: str, needs: dict[str, set[str]], entries: dict,
                  planner_cache_root: Path | None) -> tuple[dict[str, dict], dict[str, str]]:
    """{model: {token: (8, 3) poses or Exception}} for the tokens each model needs; {model: why it failed}."""
    from latentvla.data.store import open_store
    from latentvla.eval.runner import agent_plans
    from latentvla.runtime.parallel import torch_threads

    store = open_store(data, verify_blobs=False)
    plans, errors = {}, {}
    with torch_threads(1):  # a handful of scenes per model: more threads only spin (and crawl on a busy machine)
        for model, tokens in needs.items():
            try:
                agent = _load(tdir, model)
                if hasattr(agent, "use_cache"):
                    agent.use_cache(data, split, cache_root=planner_cache_root, quiet=True)
                plans[model] = agent_plans(agent, store, [entries[t] for t in sorted(tokens)])
            except Exception as e:  # noqa: BLE001 - a model that cannot be run is reported, the rest still drawn
                errors[model] = f"{type(e).__name__}: {e}"
    return plans, errors


class SceneView:
    """One scene's figure: BEV (left) and front camera (right) with the logged future and the role models' plans,
    rendered once; ``png(own)`` blits one more plan (a table row's own) onto the rendered background, so a scene
    that many models fail on costs one full render."""

    def __init__(self, store, token: str, roles: list[tuple[str, np.ndarray, str]]):
        from latentvla.viz.bev import draw_boxes, draw_ego, draw_map, draw_trajectory, setup_bev_axes

        scene = store.load_scene(token, sensors="current", with_sim_state=False)
        frame = scene.current_frame
        self.info = store.info(token)
        try:
            future = scene.get_future_trajectory().poses
        except ValueError:
            future = np.zeros((0, 3))
        lines = ([("ground truth", future, COLORS["ground truth"])] if len(future) else []) + roles
        cam = frame.cameras.get("cam_f0")
        self.camera = cam if cam is not None and cam.image is not None else None
        half = (VIEW[1] - VIEW[0]) / 2
        self.fig = fig = Figure(figsize=(7.4, 3.2))
        FigureCanvasAgg(fig)
        self.bev = ax = fig.add_axes((0.07, 0.13, 0.36, 0.83))
        setup_bev_axes(ax, VIEW[1])
        draw_map(ax, scene.map_api, frame.ego_status.ego_pose, VIEW[1], traffic_lights=frame.traffic_lights,
                 route_roadblock_ids=frame.roadblock_ids)
        ann = frame.annotations
        draw_boxes(ax, ann.boxes, ann.names, ann.brake_lights)
        draw_ego(ax)
        ax.set_xlim(half, -half)
        ax.set_ylim(*VIEW)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
        ax.tick_params(labelsize=6)
        for label, poses, color in lines:
            draw_trajectory(ax, poses, color=color, label=label, lw=1.5, ms=2.5)
        self.cam = cax = fig.add_axes((0.46, 0.24, 0.53, 0.72))
        if self.camera is not None:
            h, w = self.camera.image.shape[:2]
            cax.imshow(self.camera.image, interpolation="bilinear")
            for label, poses, color in lines:
                self._project(poses, color, label)
            cax.set_xlim(-0.5, w - 0.5)
            cax.set_ylim(h - 0.5, -0.5)
            cax.set_title("cam_f0", fontsize=7)
        else:
            cax.text(0.5, 0.5, "no front camera image", ha="center", va="center")
        cax.plot([], [], color=COLORS["model"], lw=1.5, label="the model itself")
        cax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, frameon=False)
        cax.set_xticks([])
        cax.set_yticks([])
        fig.canvas.draw()
        self.background = fig.canvas.copy_from_bbox(fig.bbox)
        self.base = self._encode()

    def _project(self, poses: np.ndarray, color: str, label: str | None = None, animated: bool = False):
        from latentvla.viz.show import project_ground_polyline

        uv = project_ground_polyline(self.camera, poses)
        return self.cam.plot(uv[:, 0], uv[:, 1], color=color, lw=1.5, label=label, animated=animated)[0]

    def _encode(self) -> str:
        from PIL import Image

        buf = io.BytesIO()
        rgba = np.asarray(self.fig.canvas.buffer_rgba())
        Image.fromarray(rgba[..., :3].copy()).save(buf, format="PNG", optimize=False)
        return png_uri(buf.getvalue())

    def png(self, own: np.ndarray | None = None) -> str:
        """The scene's figure as a PNG data URI, with ``own`` ((8, 3) poses) drawn in the model's colour."""
        if own is None:
            return self.base
        from latentvla.viz.bev import draw_trajectory

        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        n = len(self.bev.lines)
        draw_trajectory(self.bev, own, color=COLORS["model"], lw=1.5, ms=2.5, animated=True)
        artists = list(self.bev.lines[n:]) + ([self._project(own, COLORS["model"], animated=True)]
                                              if self.camera is not None else [])
        for a in artists:
            a.axes.draw_artist(a)
        uri = self._encode()
        for a in artists:
            a.remove()
        return uri


def _explain(entries: dict, case: Case, poses) -> str:
    from latentvla.eval.explain import explain_lines, explain_pdms

    if isinstance(poses, Exception) or poses is None:
        return f"the model's plan is unusable: {poses}"
    try:
        return "\n".join(explain_lines(explain_pdms(entries[case.token], poses)))
    except Exception as e:  # noqa: BLE001 - an explanation that fails is reported, not fatal
        return f"explanation failed: {type(e).__name__}: {e}"


def gallery_section(arts: Artifacts, worst: int = 3, explain: bool = True, metric_cache_root: Path | None = None,
                    planner_cache_root: Path | None = None, models: list[str] | None = None) -> str:
    tdirs = [t for t in arts.tables if t.table is not None]
    if not tdirs:
        return na("no experiment table (table.json with per-scene scores in scores/) among the PATHs")
    if arts.data is None:
        return na(f"the scenes cannot be drawn: {arts.data_note}")
    if worst < 1:
        return na("--worst 0: no scenes requested")
    out = []
    for tdir in tdirs:
        if len(tdirs) > 1:
            out.append(h3(str(tdir.path)))
        out.append(_table_gallery(arts, tdir, worst, explain, metric_cache_root, planner_cache_root, models))
    return "".join(out)


def _table_gallery(arts: Artifacts, tdir: TableDir, worst: int, explain: bool, metric_cache_root, planner_cache_root,
                   models: list[str] | None) -> str:
    from latentvla.data.store import open_store
    from latentvla.eval.metric_cache import MetricCache

    rows = {r["model"]: r for r in tdir.table["rows"]}
    chosen = [m for m in (models or list(rows)) if m in rows]
    cases, unscored = worst_cases(tdir, chosen, worst)
    out = [na(f"no per-scene scores for {', '.join(unscored)} in {tdir.path / 'scores'}")] if unscored else []
    if not cases:
        return "".join(out)
    roles = role_models(list(rows))
    store = open_store(arts.data, verify_blobs=False)
    missing = sorted({c.token for cs in cases.values() for c in cs} - set(store.tokens()))
    if missing:
        return "".join(out) + na(f"scene {missing[0]} of the scores is not in {arts.data} (pass the scored --data)")
    union = sorted({c.token for cs in cases.values() for c in cs})
    needs = {m: {c.token for c in cs} for m, cs in cases.items()}
    for m in roles.values():
        needs[m] = set(union)
    cache = MetricCache.open(arts.data, cache_root=metric_cache_root, quiet=True, tokens=union)
    entries = {t: cache.load(t) for t in union}
    plans, errors = compute_plans(tdir, arts.data, tdir.table.get("split", "test"), needs, entries,
                                  planner_cache_root)
    out.append(cap(f"the {worst} lowest-PDMS test scenes of each model (seed 0; invalid scenes score 0). Lines: "
                   f"ground truth (logged future, green), " + ", ".join(f"{role} = {m}" for role, m in roles.items())
                   + ", and the model itself (orange) when it is none of these"
                   + ("; below each figure, the scorer's explanation of the model's plan" if explain else "")))
    for m, why in errors.items():
        out.append(na(f"{m} could not be run: {why}"))
    views: dict[str, SceneView] = {}

    def view(token: str) -> SceneView:
        if token not in views:
            lines = [(f"{role} ({rm})", plans[rm][token], COLORS[role]) for role, rm in roles.items()
                     if isinstance(plans.get(rm, {}).get(token), np.ndarray)]
            views[token] = SceneView(store, token, lines)
        return views[token]

    for model, model_cases in cases.items():
        out.append(h3(f"{model}: PDMS {rows[model]['pdms']:.3f}", anchor=f"gallery-{model}"))
        figs = []
        for case in model_cases:
            v = view(case.token)
            own = plans.get(model, {}).get(case.token)
            drawn = own if model not in roles.values() and isinstance(own, np.ndarray) else None
            r = case.row
            scores = " ".join(f"{k.upper()} {num3(r.get(k))}" for k in SUBSCORES)
            body = img(v.png(drawn), f"{model} on scene {case.token}")
            text = (f"{model} on scene {case.token} (family {v.info['family']}, command {v.info['command']}): "
                    f"{scores}" + ("" if r.get("valid") else f" (invalid: {r.get('error') or 'agent failed'})"))
            why = pre(_explain(entries, case, own)) if explain else ""
            figs.append(f"<figure>{body}<figcaption>{esc(text)}{why}</figcaption></figure>")
        out.append(f'<div class="grid">{"".join(figs)}</div>')
    return "".join(out)


def num3(v) -> str:
    return "-" if v is None or v == "" else f"{float(v):.3f}"
