"""``latentvla report --runs PATH... --out report.html`` (registered in ``latentvla.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer

from latentvla.cli_common import console, friendly


@friendly
def report_command(
    runs: list[Path] = typer.Option(..., "--runs", help="Run directories and/or `experiment table` / `demo` output "
                                                        "directories: --runs A B C or --runs A --runs B."),
    out: Path = typer.Option(..., "--out", help="The HTML file to write (self-contained: images embedded)."),
    explain: bool = typer.Option(True, "--explain/--no-explain", help="Show the scorer's reasons under each "
                                                                      "failure-gallery scene."),
    worst: int = typer.Option(3, "--worst", help="Failure gallery: the N lowest-PDMS test scenes per model."),
    data: Path | None = typer.Option(None, "--data", help="Dataset for the gallery and LAM figures (default: the "
                                                          "one recorded with the scores)."),
    more_runs: list[Path] | None = typer.Argument(None, metavar="[PATH]...", show_default=False,
                                                  help="More PATHs (what follows --runs A)."),
) -> None:
    """One self-contained HTML report: comparison table, PDMS per family, latency vs PDMS, training numbers, LAM
    codes, teacher token accuracy, failure gallery, closed-loop results and provenance."""
    from latentvla.report.build import build_report

    build_report([*runs, *(more_runs or [])], out, explain=explain, worst=worst, data=data, console=console)
