"""``latentvla experiment ablations``: what each ingredient of LatentVLA contributes, in the table's format.

The reference chain is the comparison's own (``OUT/lam``, ``OUT/vla/teacher``, ``OUT/planner/full`` and
``distilled``: running both commands with the same OUT shares it). Each ablation changes one thing and retrains
only what depends on it, under ``OUT/ablations/<name>/``:

- ``single-stage``: latents without disentangling. The environment codebook gets a single code, which carries no
  information, so the one ego IDM / codebook must explain all change between frames (a single-stage LAM, as in
  LAPA); then teacher (same pretraining init), full and distilled are retrained on those latents.
- ``codebook-8`` / ``codebook-32``: the ego codebook size K (16 in the reference), same chain.
- ``blind-teacher``: the teacher fine-tuned on blank images (same labels and init), then full and distilled.
- ``no-latent-kl`` / ``no-score-kl`` / ``no-feature``: the student with one distillation term removed (same full
  model).

Rows: ``full``, ``distilled`` (reference), ``<ablation>-full`` and ``<ablation>-distilled`` for the chain ablations,
``distilled-<term>`` for the student ones. ``paired`` holds each row minus its reference (full or distilled), over
the same test scenes and seeds; ``recovery`` is the reference's.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from latentvla.experiment.runs import Plan, train_lam, train_planner, train_pretrain, train_teacher
from latentvla.runtime.io import write_json

SINGLE_STAGE_STEPS = 20  # stage 1 of a 1-code environment codebook learns nothing: do not spend time on it
CHAIN = {
    "single-stage": {"lam": ["model.env.codebook_size=1", f"train.steps_stage1={SINGLE_STAGE_STEPS}"]},
    "codebook-8": {"lam": ["model.ego.codebook_size=8"]},
    "codebook-32": {"lam": ["model.ego.codebook_size=32"]},
    "blind-teacher": {"vla": ["blind=true"]},
}
STUDENT = {
    "no-latent-kl": ["distill.latent_weight=0"],
    "no-score-kl": ["distill.score_weight=0"],
    "no-feature": ["distill.feature_weight=0"],
}
ABLATIONS = (*CHAIN, *STUDENT)
HOST = "ipad"


def train_chain(plan: Plan, name: str, ref_lam: Path, pretrain: Path, seed: int) -> dict[str, Path]:
    """LAM (if changed) -> teacher -> full -> distilled for one chain ablation and seed."""
    from latentvla.planner.sources import Sources

    root = plan.out / "ablations" / name
    change = CHAIN[name]
    lam = train_lam(plan, root / "lam", change["lam"]) if "lam" in change else ref_lam
    teacher = train_teacher(plan, root / "teacher", lam, pretrain, change.get("vla"))
    suffix = "" if seed == 0 else f".seed{seed}"
    full = train_planner(plan, root / f"full{suffix}", HOST, seed, Sources(teacher=teacher))
    distilled = train_planner(plan, root / f"distilled{suffix}", HOST, seed, Sources(distill_from=full))
    return {f"{name}-full": full, f"{name}-distilled": distilled}


def experiment_ablations(plan: Plan, names: tuple[str, ...] = ABLATIONS, threads: int = 1,
                         console: Console | None = None) -> dict:
    """Train, score and tabulate the ablations; writes OUT/ablations.csv and OUT/ablations.json. Closed loop runs
    only when asked for (``plan.closed_loop_scenes``): the ablations are open-loop comparisons by default."""
    import dataclasses

    from latentvla.data.store import open_store
    from latentvla.experiment.runs import train_all
    from latentvla.experiment.stats import build_table
    from latentvla.experiment.table import publish, scene_logs, score_models
    from latentvla.planner.sources import Sources

    console = console or Console(stderr=True)
    if plan.closed_loop_scenes is None:
        plan = dataclasses.replace(plan, closed_loop_scenes=0)
    unknown = [n for n in names if n not in ABLATIONS]
    if unknown:
        raise ValueError(f"unknown ablation '{unknown[0]}'; valid: {list(ABLATIONS)}")
    runs = train_all(plan, ("full", "distilled"), console)  # the reference chain (shared with `table`)
    pretrain = train_pretrain(plan)
    rows: dict[str, dict[int, Path]] = {"full": {}, "distilled": {}}
    for seed in range(plan.seeds):
        rows["full"][seed] = runs["planner"][("full", seed)]
        rows["distilled"][seed] = runs["planner"][("distilled", seed)]
        for name in names:
            console.rule(f"[bold]ablation {name}[/] (seed {seed})")
            if name in CHAIN:
                trained = train_chain(plan, name, runs["lam"], pretrain, seed)
            else:
                suffix = "" if seed == 0 else f".seed{seed}"
                run = plan.out / "ablations" / name / f"distilled{suffix}"
                trained = {f"distilled-{name}": train_planner(plan, run, HOST, seed,
                                                               Sources(distill_from=rows["full"][seed]),
                                                               STUDENT[name])}
            for row, path in trained.items():
                rows.setdefault(row, {})[seed] = path
    models = score_models(plan, rows, threads, console)
    pairs = {f"{row}-vs-{ref}": (row, ref) for row in rows if row not in ("full", "distilled")
             for ref in ["full" if row.endswith("-full") else "distilled"]}
    table = build_table(models, pairs=pairs, recovery_of=("full", "distilled", "ipad") if "ipad" in models else None,
                        logs=scene_logs(open_store(plan.data, verify_blobs=False)))
    table["ablations"] = list(names)
    publish(table, plan, threads, "ablations", console)
    write_json(plan.out / "ablation_runs.json", {row: {str(s): str(p) for s, p in by_seed.items()}
                                                 for row, by_seed in rows.items()}, indent=1)
    return table
