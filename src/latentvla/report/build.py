"""``build_report``: collect the artifacts under the PATHs, build every section, write one self-contained HTML."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

from latentvla.report import sections as S
from latentvla.report.closed_loop import closed_loop_section
from latentvla.report.collect import collect, resolve_data
from latentvla.report.gallery import gallery_section
from latentvla.report.html import page
from latentvla.runtime.io import atomic_write_text

TITLE = "LatentVLA report"


def build_report(runs: list[Path], out: Path, explain: bool = True, worst: int = 3, data: Path | None = None,
                 metric_cache_root: Path | None = None, planner_cache_root: Path | None = None,
                 models: list[str] | None = None, console: Console | None = None) -> Path:
    """Write the report of ``runs`` (run directories and/or experiment / demo output directories) to ``out``.

    ``data``: the scored dataset for the gallery and the LAM figures (default: the one recorded with the scores);
    ``metric_cache_root`` / ``planner_cache_root``: where the scoring run kept its caches (default: under DATA);
    ``models``: the table rows that get a gallery (default: all)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must name an .html file, got {out}")
    if worst < 0:
        raise ValueError(f"--worst must be >= 0, got {worst}")
    start = time.time()
    arts = resolve_data(collect([Path(p) for p in runs]), data)
    bodies = {
        "comparison": S.comparison_section(arts),
        "families": S.families_section(arts),
        "latency": S.latency_section(arts),
        "training": S.training_section(arts),
        "lam": S.lam_section(arts),
        "teacher": S.teacher_section(arts),
        "gallery": gallery_section(arts, worst=worst, explain=explain, metric_cache_root=metric_cache_root,
                                   planner_cache_root=planner_cache_root, models=models),
        "closed-loop": closed_loop_section(arts),
        "provenance": S.provenance_section(arts),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (f"{len(arts.runs)} runs, {sum(t.table is not None for t in arts.tables)} comparison table(s) from "
                f"{', '.join(str(p) for p in arts.paths)}; generated {stamp}")
    atomic_write_text(out, page(TITLE, subtitle, bodies))
    if console is not None:
        console.print(f"[green]report[/] {out} ({out.stat().st_size / 1e6:.1f} MB, {time.time() - start:.1f} s)")
    return out
