"""Train every model of the comparison that is missing, in dependency order (each trainer reuses a finished run
whose config hash matches and refuses a run directory holding another config).

Layout under OUT (the same as ``latentvla demo``'s, so the demo's runs are reused):

    lam/                          both LAM stages + labels                    (seed 0)
    pretrain_world/, vla/pretrain the teacher's image-text pretraining         (seed 0)
    vla/teacher, vla/teacher-scratch, vla/random                              (seed 0)
    planner/<model>[.seed<k>]     every planner-family row, one run per seed

Seeds vary the planner-family models (hosts, full, students, controls); the LAM and the teachers are trained once
(seed 0) because they are the expensive, shared inputs. Rows built on them are still re-trained per seed, so the
seed spread of every fused / distilled row includes its own training noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from latentvla.config import resolve

PRETRAIN_WORLD = Path(__file__).resolve().parents[1] / "configs" / "world" / "pretrain.yaml"

# planner-family rows: (host, how the row is trained)
PLANNER_ROWS = {
    "ego-mlp": ("ego-mlp", "host"),
    "transfuser": ("transfuser", "host"),
    "ipad": ("ipad", "host"),
    "full": ("ipad", "fuse"),
    "transfuser-full": ("transfuser", "fuse"),
    "distilled": ("ipad", "distill:full"),
    "transfuser-distilled": ("transfuser", "distill:transfuser-full"),
    "ipad-aux": ("ipad", "aux"),
    "ipad-wide": ("ipad", "wide:full"),
    "full-random-vlm": ("ipad", "fuse-random"),
    "oracle-facts": ("ipad", "oracle=facts"),
    "oracle-latent": ("ipad", "oracle=latent"),
    "oracle-expert": ("ipad", "oracle=expert"),
}
TEACHER_ROWS = {"teacher": "teacher", "teacher-scratch": "teacher-scratch"}
REFERENCE_ROWS = ("constant-velocity", "pdm-closed", "log-replay")
MODELS = ("constant-velocity", "ego-mlp", "transfuser", "ipad", "teacher", "teacher-scratch", "full", "distilled",
          "transfuser-full", "transfuser-distilled", "ipad-aux", "ipad-wide", "full-random-vlm", "pdm-closed",
          "log-replay")
# Diagnostic rows, on request only (--models): the full architecture fed a privileged context (planner/oracle.py),
# an upper bound on what any teacher could add through fusion. Scored from the dataset; no latency, no closed loop.
ORACLE_ROWS = tuple(m for m, (_, how) in PLANNER_ROWS.items() if how.startswith("oracle="))


@dataclass
class Plan:
    data: Path
    out: Path
    profile: str = "demo"
    seeds: int = 1
    workers: int = 1
    quiet: bool = False
    planner_cache_root: Path | None = None
    metric_cache_root: Path | None = None
    lam_cache_root: Path | None = None
    overrides: dict[str, list[str]] = field(default_factory=dict)  # stage -> dotted overrides (tests, studies)
    closed_loop_scenes: int | None = None  # closed-loop scenes per row (None: the profile's; 0: no closed loop)

    def planner_run(self, model: str, seed: int) -> Path:
        return self.out / "planner" / (model if seed == 0 else f"{model}.seed{seed}")


def pretrain_world(out: Path, profile: str, scenes: int, workers: int = 1) -> Path:
    """The teacher's separate, family-balanced pretraining world (half the main world's scenes, another seed)."""
    from latentvla.world.configuration import WorldConfig
    from latentvla.world.generate import generate

    cfg = resolve(WorldConfig, "world", profile, PRETRAIN_WORLD, [f"scenes={max(20, scenes // 2)}"])
    world = out / "pretrain_world"
    generate(world, cfg, workers=workers, resume=(world / ".generation.json").is_file(), overwrite=False)
    return world


def train_lam(plan: Plan, run: Path | None = None, extra: list[str] | None = None) -> Path:
    """Both LAM stages and the label store (``extra``: LAM overrides of an ablation)."""
    from latentvla.lam.configuration import LAMConfig
    from latentvla.lam.report import label
    from latentvla.lam.train import train

    run = run or plan.out / "lam"
    train(plan.data, run, resolve(LAMConfig, "lam", plan.profile,
                                  overrides=[*plan.overrides.get("lam", []), *(extra or [])]),
          resume=(run / "run.json").is_file(), workers=plan.workers, quiet=plan.quiet,
          cache_root=plan.lam_cache_root)
    label(run, plan.data, workers=plan.workers, quiet=plan.quiet, cache_root=plan.lam_cache_root)
    return run


def vla_config(plan: Plan, extra: list[str] | None = None):
    from latentvla.vla.configuration import VLAConfig

    return resolve(VLAConfig, "vla", plan.profile, overrides=[*plan.overrides.get("vla", []), *(extra or [])])


def train_pretrain(plan: Plan) -> Path:
    """The teacher's pretraining world and image-text pretraining run (shared by every teacher of ``plan.out``)."""
    from latentvla.data.store import open_store
    from latentvla.vla.pretrain import pretrain

    world = pretrain_world(plan.out, plan.profile, len(open_store(plan.data, verify_blobs=False)), plan.workers)
    run = plan.out / "vla" / "pretrain"
    pretrain(world, run, vla_config(plan), workers=plan.workers, quiet=plan.quiet)
    return run


def train_teacher(plan: Plan, run: Path, lam: Path, init: Path | None, extra: list[str] | None = None) -> Path:
    """One teacher fine-tuned on ``lam``'s latent actions (``extra``: VLA overrides, e.g. ``blind=true``)."""
    from latentvla.vla.train import train

    train(plan.data, run, vla_config(plan, extra), lam, init=init, resume=(run / "run.json").is_file(),
          workers=plan.workers, quiet=plan.quiet, cache_root=plan.planner_cache_root,
          lam_cache_root=plan.lam_cache_root)
    return run


def train_teachers(plan: Plan, lam: Path, which: tuple[str, ...] = ("teacher", "teacher-scratch", "random")
                   ) -> dict[str, Path]:
    """Of the pretrained-init teacher, the random-init teacher and the untrained VLM of the ``full-random-vlm``
    control, those in ``which`` (paths of all three are returned)."""
    from latentvla.vla.train import untrained_teacher

    runs = {"teacher": plan.out / "vla" / "teacher", "teacher-scratch": plan.out / "vla" / "teacher-scratch",
            "random": plan.out / "vla" / "random"}
    if "teacher" in which:
        train_teacher(plan, runs["teacher"], lam, train_pretrain(plan))
    if "teacher-scratch" in which:
        train_teacher(plan, runs["teacher-scratch"], lam, None)
    if "random" in which:
        untrained_teacher(plan.data, runs["random"], vla_config(plan), lam, workers=plan.workers, quiet=plan.quiet,
                          cache_root=plan.planner_cache_root, lam_cache_root=plan.lam_cache_root)
    return runs


def planner_config(plan: Plan, host: str, seed: int, extra: list[str] | None = None):
    from latentvla.planner.configuration import PlannerConfig

    return resolve(PlannerConfig, "planner", plan.profile,
                   overrides=[f"host={host}", f"seed={seed}", *plan.overrides.get("planner", []), *(extra or [])])


def wide_dim(cfg, target: int) -> int:
    """The host width whose trainable parameter count is closest to ``target`` (the full model's)."""
    from dataclasses import replace

    from latentvla.planner.modeling import build_model

    heads = cfg.transfuser.heads
    best, best_gap = cfg.transfuser.dim, None
    for dim in range(cfg.transfuser.dim, 8 * cfg.transfuser.dim + 1, 2 * heads):
        n = build_model(replace(cfg, transfuser=replace(cfg.transfuser, dim=dim))).num_parameters(True)
        gap = abs(n - target)
        if best_gap is None or gap < best_gap:
            best, best_gap = dim, gap
        if n > target:
            break
    return best


def train_planner(plan: Plan, run: Path, host: str, seed: int, sources=None, extra: list[str] | None = None
                  ) -> Path:
    """Train (or reuse) one planner run; ``extra``: planner overrides after the plan's own (e.g. distill.*)."""
    from latentvla.planner.train import train

    cfg = planner_config(plan, host, seed, extra)
    train(plan.data, run, cfg, resume=(run / "run.json").is_file() and not (run / "metrics.json").is_file(),
          workers=plan.workers, quiet=plan.quiet, cache_root=plan.planner_cache_root,
          metric_cache_root=plan.metric_cache_root, sources=sources)
    return run


def train_planner_row(plan: Plan, model: str, seed: int, lam: Path, teachers: dict[str, Path]) -> Path:
    """Train (or reuse) one planner-family row for one seed; its dependencies must be trained already."""
    from latentvla.planner.sources import Sources

    host, how = PLANNER_ROWS[model]
    sources, extra = Sources(), []
    if how == "fuse":
        sources = Sources(teacher=teachers["teacher"])
    elif how == "fuse-random":
        sources = Sources(teacher=teachers["random"])
    elif how.startswith("distill:"):
        sources = Sources(distill_from=plan.planner_run(how.split(":", 1)[1], seed))
    elif how == "aux":
        sources = Sources(latent_labels=lam)
    elif how.startswith("oracle="):
        name = how.split("=", 1)[1]
        sources = Sources(oracle=name, latent_labels=lam if name == "latent" else None)
    elif how.startswith("wide:"):
        from latentvla.planner.checkpoint import load_planner

        full, _ = load_planner(plan.planner_run(how.split(":", 1)[1], seed) / "model.safetensors")
        extra = [f"transfuser.dim={wide_dim(planner_config(plan, host, seed), full.num_parameters(True))}"]
    return train_planner(plan, plan.planner_run(model, seed), host, seed, sources, extra)


def train_all(plan: Plan, models: tuple[str, ...] = MODELS, console: Console | None = None) -> dict:
    """Every run the requested rows need: {"lam": path, "teachers": {...}, "planner": {(model, seed): path}}."""
    console = console or Console(stderr=True)
    need = set(models)
    for model in list(need):  # dependencies of the requested rows
        how = PLANNER_ROWS.get(model, ("", ""))[1]
        if ":" in how:
            need.add(how.split(":", 1)[1])
    which = tuple(t for t, wanted in (
        ("teacher", need & {"teacher", "full", "transfuser-full", "distilled", "transfuser-distilled", "ipad-wide"}),
        ("teacher-scratch", need & {"teacher-scratch"}), ("random", need & {"full-random-vlm"})) if wanted)
    console.rule("[bold]latent actions[/]")
    lam = train_lam(plan)
    console.rule(f"[bold]VLA teachers[/] ({', '.join(which) or 'none needed'})")
    teachers = train_teachers(plan, lam, which)
    order = [m for m in PLANNER_ROWS if m in need]
    runs: dict[tuple[str, int], Path] = {}
    for seed in range(plan.seeds):
        for model in order:
            console.rule(f"[bold]{model}[/] (seed {seed})")
            runs[(model, seed)] = train_planner_row(plan, model, seed, lam, teachers)
    return {"lam": lam, "teachers": teachers, "planner": runs}
