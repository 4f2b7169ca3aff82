"""`latentvla demo`: the whole pipeline on the embedded world, as far as it is built (stage list in README)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from latentvla.config import dump_yaml, resolve
from latentvla.data.store import open_store
from latentvla.runtime.io import write_json
from latentvla.runtime.provenance import provenance
from latentvla.world.configuration import WorldConfig
from latentvla.world.generate import generate

GALLERY_PER_FAMILY = 2
BASELINES = ("log-replay", "pdm-closed", "constant-velocity")
DEMO_HOSTS = ("ego-mlp", "ipad")  # the shortcut baseline and the paper's host (transfuser: `planner train`)
STAGES = 8


def run_demo(out: Path, profile: str = "demo", scenes: int | None = None, workers: int = 1,
             console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"scenes={scenes}"] if scenes is not None else []
    cfg = resolve(WorldConfig, "world", profile, overrides=overrides)
    world = out / "world"
    console.rule(f"[bold]1/{STAGES} world[/] ({cfg.scenes} scenes, profile {profile})")
    resume = (world / ".generation.json").is_file()
    generate(world, cfg, workers=workers, resume=resume, overwrite=False)
    store = open_store(world)

    console.rule(f"[bold]2/{STAGES} statistics[/]")
    from latentvla.world.stats import compute_stats, plot_stats

    stats = compute_stats(store)
    write_json(out / "world_stats.json", stats, indent=1)
    plot_stats(stats, out / "world_stats.png")
    console.print(f"families: {stats['families']}")

    console.rule(f"[bold]3/{STAGES} gallery[/]")
    from latentvla.viz.show import show_scene

    gallery = out / "gallery"
    shown: dict[str, int] = {}
    written = []
    for token in store.tokens("test") or store.tokens():
        fam = store.info(token)["family"]
        if shown.get(fam, 0) >= GALLERY_PER_FAMILY:
            continue
        shown[fam] = shown.get(fam, 0) + 1
        written.append(show_scene(store, token, gallery / f"{fam}_{token}.png"))
    console.rule(f"[bold]4/{STAGES} baseline scores[/] (PDMS v1.1 and EPDMS v2 on split test)")
    if store.tokens("test"):
        scores = score_baselines(world, out / "eval", workers=workers, console=console)
    else:
        scores = {}
        console.print("[yellow]the world has no test scenes (too small to split): scoring skipped[/]")
    console.rule(f"[bold]5/{STAGES} planner hosts[/] ({', '.join(DEMO_HOSTS)}; PDMS v1.1 and EPDMS v2 on split test)")
    planners = {}
    if store.tokens("train") and store.tokens("val") and store.tokens("test"):
        planners = train_and_score_hosts(world, out, profile, workers=workers, console=console)
        scores.update({name: p["scores"] for name, p in planners.items()})
    else:
        console.print("[yellow]the world lacks a train, val or test split: planner hosts skipped[/]")
    lam, teacher = {}, {}
    console.rule(f"[bold]6/{STAGES} latent action model[/] (two stages, then labels and report on split test)")
    if store.tokens("train") and store.tokens("val") and store.tokens("test"):
        lam = train_lam(world, out, profile, workers=workers, console=console)
        console.rule(f"[bold]7/{STAGES} VLA teacher[/] (pretraining world, pretraining, fine-tuning on latent actions, "
                     f"eval and PDMS on split test)")
        teacher = train_teacher(world, out, profile, cfg.scenes, lam["run"], workers=workers, console=console)
        scores["vla-teacher"] = teacher["scores"]
    else:
        console.print("[yellow]the world lacks a train, val or test split: latent actions and teacher skipped[/]")
    table = None
    console.rule(f"[bold]8/{STAGES} LatentVLA comparison[/] (hosts, teachers, full, distilled, controls; "
                 f"`latentvla experiment table`)")
    if teacher:
        from latentvla.experiment.runs import Plan
        from latentvla.experiment.table import experiment_table

        table = experiment_table(Plan(world, out, profile, seeds=1, workers=workers), console=console)
    dump_yaml(cfg, out / "config.yaml")
    summary = {"world": str(world), "scenes": len(store), "stats": str(out / "world_stats.json"),
               "gallery": [str(p) for p in written], "scores": scores, "planners": planners, "lam": lam,
               "teacher": teacher, "table": None if table is None else str(out / "table.json"),
               "provenance": provenance({"manifest": world / "manifest.json"})}
    write_json(out / "demo.json", summary, indent=1)
    from latentvla.report.build import build_report

    report = build_report([out], out / "report.html", data=world)
    console.print(f"[green]world[/]    {world}  ({len(store)} scenes; `latentvla data verify {world}`)")
    console.print(f"[green]stats[/]    {out / 'world_stats.json'}, {out / 'world_stats.png'}")
    console.print(f"[green]gallery[/]  {gallery}/ ({len(written)} images, {GALLERY_PER_FAMILY} per family)")
    console.print(f"[green]scores[/]   {out / 'eval'}/ (per-scene CSV + summary per agent and metric)")
    console.print(f"[green]report[/]   {report} (`latentvla report --runs {out} --out report.html`)")
    if planners:
        console.print(f"[green]planners[/] {out / 'planner'}/ (runs: `latentvla score --agent {out / 'planner' / 'ipad'}`)")
    if teacher:
        console.print(f"[green]latents[/]  {out / 'lam'}/ (report: `latentvla lam report --run {out / 'lam'} --data {world}`)")
        console.print(f"[green]teacher[/]  {teacher['run']}/ (`latentvla vla eval --run {teacher['run']} --data {world}`)")
    if table is not None:
        console.print(f"[green]table[/]    {out / 'table.csv'}, {out / 'table.json'} (recovery {table['recovery']})")
    return summary


def train_lam(world: Path, out: Path, profile: str, workers: int = 1, console: Console | None = None) -> dict:
    """Both LAM stages (reusing a finished run), the label store and the test-split report."""
    from latentvla.lam.configuration import LAMConfig
    from latentvla.lam.report import label, report
    from latentvla.lam.train import train

    console = console or Console(stderr=True)
    run = out / "lam"
    metrics = train(world, run, resolve(LAMConfig, "lam", profile), resume=(run / "run.json").is_file(),
                    workers=workers)
    label(run, world, workers=workers)
    rep = report(run, world, workers=workers, quiet=True)
    console.print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rep.items()))
    return {"run": str(run), "report": rep, "train_seconds": (metrics.get("stage1_seconds") or 0)
            + (metrics.get("stage2_seconds") or 0)}


def train_teacher(world: Path, out: Path, profile: str, scenes: int, lam_run: str, workers: int = 1,
                  console: Console | None = None) -> dict:
    """A separate family-balanced pretraining world (half the scenes, another seed), image-text pretraining on
    its perception facts, fine-tuning on the LAM's latent actions (``--init``), eval and PDMS of the teacher."""
    from latentvla.experiment.runs import pretrain_world
    from latentvla.vla.agent import TeacherAgent
    from latentvla.vla.configuration import VLAConfig
    from latentvla.vla.evaluate import evaluate
    from latentvla.vla.pretrain import pretrain
    from latentvla.vla.train import train

    console = console or Console(stderr=True)
    pre_world = pretrain_world(out, profile, scenes, workers)
    cfg = resolve(VLAConfig, "vla", profile)
    pre = pretrain(pre_world, out / "vla" / "pretrain", cfg, workers=workers)
    run = out / "vla" / "teacher"
    metrics = train(world, run, cfg, lam_run, init=out / "vla" / "pretrain", workers=workers,
                    resume=(run / "run.json").is_file())
    ev = evaluate(run, world, workers=workers)
    console.print(f"teacher: token accuracy {ev['token_accuracy']:.3f} (majority {ev['baseline_token_accuracy']:.3f},"
                  f" blank images {ev['blind_token_accuracy']:.3f}), top-5 {ev['top5_accuracy']:.3f}")
    agent = TeacherAgent(run)
    agent.use_cache(world, "test", workers=workers)
    scores = score_agent(world, agent, out / "eval", workers=workers, console=console)
    console.print(f"teacher: PDMS {100 * scores['pdms-v1.1']:.1f} / EPDMS {100 * scores['epdms-v2']:.1f}")
    return {"run": str(run), "pretrain": str(out / "vla" / "pretrain"), "eval": ev, "scores": scores,
            "seconds": {"pretrain": pre.get("train_seconds"), "train": metrics.get("train_seconds"),
                        "head": metrics.get("head_train_seconds")}}


def score_agent(world: Path, agent, out: Path, workers: int = 1, console: Console | None = None) -> dict:
    """PDMS v1.1 and EPDMS v2 of one agent on the test split: {metric version: mean}; CSVs under ``out``."""
    from latentvla.eval.runner import score_split, write_results
    from latentvla.eval.score_cli import summary_table

    scores = {}
    for metric in ("pdms", "epdms"):
        rows, summary = score_split(world, agent, split="test", metric=metric, workers=workers)
        write_results(rows, summary, out / f"{agent.name.split(':')[0]}.{metric}.csv", metric)
        scores[summary["metric"]] = summary["mean"][metric]
        if metric == "pdms" and console is not None:
            console.print(summary_table(summary))
    return scores


def train_and_score_hosts(world: Path, out: Path, profile: str, workers: int = 1,
                          console: Console | None = None) -> dict:
    """Train the demo's planner hosts (reusing finished runs) and score them on the test split."""
    from latentvla.config import resolve
    from latentvla.planner.agent import PlannerAgent
    from latentvla.planner.configuration import PlannerConfig
    from latentvla.planner.train import train

    console = console or Console(stderr=True)
    result = {}
    for host in DEMO_HOSTS:
        run = out / "planner" / host
        cfg = resolve(PlannerConfig, "planner", profile, overrides=[f"host={host}"])
        metrics = train(world, run, cfg, workers=workers)
        agent = PlannerAgent(run)
        agent.use_cache(world, "test", workers=workers)
        scores = score_agent(world, agent, out / "eval", workers=workers, console=console)
        result[host] = {"run": str(run), "train_seconds": metrics.get("train_seconds"), "scores": scores}
        console.print(f"{host}: PDMS {100 * scores['pdms-v1.1']:.1f} / EPDMS {100 * scores['epdms-v2']:.1f} "
                      f"(trained in {metrics.get('train_seconds')} s)")
    return result


def score_baselines(world: Path, out: Path, workers: int = 1, console: Console | None = None) -> dict:
    """PDMS and EPDMS of the reference agents on the test split (builds the test split's metric cache)."""
    from latentvla.agents import load_agent

    console = console or Console(stderr=True)
    scores = {name: score_agent(world, load_agent(name), out, workers=workers, console=console)
              for name in BASELINES}
    console.print("  ".join(f"{n}: PDMS {100 * s['pdms-v1.1']:.1f} / EPDMS {100 * s['epdms-v2']:.1f}"
                            for n, s in scores.items()))
    return scores
