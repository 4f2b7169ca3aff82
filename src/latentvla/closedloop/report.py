"""Console table of a closed-loop result (one row per family plus the mean)."""

from __future__ import annotations

from rich.table import Table

COLUMNS = (  # key, header, format
    ("closed_loop_score", "score", lambda v: f"{100 * v:.1f}"),
    ("collision_rate", "collision %", lambda v: f"{100 * v:.1f}"),
    ("offroad_rate", "off-road %", lambda v: f"{100 * v:.1f}"),
    ("red_light_violations", "red lights/scene", lambda v: f"{v:.2f}"),
    ("route_completion", "route %", lambda v: f"{100 * v:.1f}"),
    ("mean_progress_m", "progress m", lambda v: f"{v:.1f}"),
    ("comfort_rate", "comfort %", lambda v: f"{100 * v:.1f}"),
)


def summary_table(result: dict) -> Table:
    table = Table(title=f"closed loop - {result['agent']} - {result['mode']}, {result['seconds']:g} s - split "
                        f"{result['split']} ({result['scenes']} scenes, {result['invalid']} invalid)")
    table.add_column("family")
    table.add_column("scenes", justify="right")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")

    def cells(vals: dict) -> list[str]:
        return ["-" if vals.get(k) is None else fmt(vals[k]) for k, _, fmt in COLUMNS]

    for fam, vals in result["by_family"].items():
        table.add_row(fam, str(vals["scenes"]), *cells(vals))
    table.add_row("[bold]all[/]", str(result["scenes"]), *[f"[bold]{c}[/]" for c in cells(result["mean"])])
    return table
