"""`latentvla demo`: the whole pipeline on the embedded world, as far as it is built (stage list in README)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from latentvla.config import dump_yaml, resolve
from latentvla.data.store import SceneStore
from latentvla.runtime.io import write_json
from latentvla.runtime.provenance import provenance
from latentvla.world.configuration import WorldConfig
from latentvla.world.generate import generate

GALLERY_PER_FAMILY = 2
BASELINES = ("log-replay", "pdm-closed", "constant-velocity")


def run_demo(out: Path, profile: str = "demo", scenes: int | None = None, workers: int = 1,
             console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"scenes={scenes}"] if scenes is not None else []
    cfg = resolve(WorldConfig, "world", profile, overrides=overrides)
    world = out / "world"
    console.rule(f"[bold]1/4 world[/] ({cfg.scenes} scenes, profile {profile})")
    resume = (world / ".generation.json").is_file()
    generate(world, cfg, workers=workers, resume=resume, overwrite=False)
    store = SceneStore(world)

    console.rule("[bold]2/4 statistics[/]")
    from latentvla.world.stats import compute_stats, plot_stats

    stats = compute_stats(store)
    write_json(out / "world_stats.json", stats, indent=1)
    plot_stats(stats, out / "world_stats.png")
    console.print(f"families: {stats['families']}")

    console.rule("[bold]3/4 gallery[/]")
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
    console.rule("[bold]4/4 baseline scores[/] (PDMS v1.1 and EPDMS v2 on split test)")
    if store.tokens("test"):
        scores = score_baselines(world, out / "eval", workers=workers, console=console)
    else:
        scores = {}
        console.print("[yellow]the world has no test scenes (too small to split): scoring skipped[/]")
    dump_yaml(cfg, out / "config.yaml")
    summary = {"world": str(world), "scenes": len(store), "stats": str(out / "world_stats.json"),
               "gallery": [str(p) for p in written], "scores": scores,
               "provenance": provenance({"manifest": world / "manifest.json"})}
    write_json(out / "demo.json", summary, indent=1)
    console.print(f"[green]world[/]    {world}  ({len(store)} scenes; `latentvla data verify {world}`)")
    console.print(f"[green]stats[/]    {out / 'world_stats.json'}, {out / 'world_stats.png'}")
    console.print(f"[green]gallery[/]  {gallery}/ ({len(written)} images, {GALLERY_PER_FAMILY} per family)")
    console.print(f"[green]scores[/]   {out / 'eval'}/ (per-scene CSV + summary per agent and metric)")
    return summary


def score_baselines(world: Path, out: Path, workers: int = 1, console: Console | None = None) -> dict:
    """PDMS and EPDMS of the reference agents on the test split (builds the test split's metric cache)."""
    from latentvla.agents import load_agent
    from latentvla.eval.runner import score_split, write_results
    from latentvla.eval.score_cli import summary_table

    console = console or Console(stderr=True)
    scores: dict[str, dict[str, float]] = {}
    for metric in ("pdms", "epdms"):
        for name in BASELINES:
            rows, summary = score_split(world, load_agent(name), split="test", metric=metric, workers=workers)
            write_results(rows, summary, out / f"{name}.{metric}.csv", metric)
            scores.setdefault(name, {})[summary["metric"]] = summary["mean"][metric]
            if metric == "pdms":
                console.print(summary_table(summary))
    console.print("  ".join(f"{n}: PDMS {100 * s['pdms-v1.1']:.1f} / EPDMS {100 * s['epdms-v2']:.1f}"
                            for n, s in scores.items()))
    return scores
