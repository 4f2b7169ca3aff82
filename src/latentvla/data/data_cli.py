"""`latentvla data ...`: dataset integrity (verify), NAVSIM diagnosis (doctor) and export to the OpenScene format."""

from __future__ import annotations

from pathlib import Path

import typer

from latentvla.cli_common import console, ray_option
from latentvla.cli_common import friendly as _friendly

data_app = typer.Typer(no_args_is_help=True, help="Dataset integrity, NAVSIM diagnosis and OpenScene export.")


@data_app.command("verify")
@_friendly
def data_verify(data: Path = typer.Argument(..., help="Dataset directory or navsim:SPLIT.")) -> None:
    """Re-check every file against its log's SHA256SUMS; exit 1 naming each corrupt or missing file."""
    from latentvla.data.navsim_source import NavsimSource, is_navsim_spec
    from latentvla.data.store import verify_dataset
    from latentvla.runtime.io import read_json
    from latentvla.runtime.parallel import progress_bar

    if is_navsim_spec(data):  # OpenScene has no checksums: check that every referenced sensor file exists
        src = NavsimSource(str(data), verify_blobs=False, quiet=False)
        n_logs = len(src.index["logs"])
        check = src.verify
    else:
        n_logs = len(read_json(data / "manifest.json").get("logs", {})) if (data / "manifest.json").is_file() else 0
        check = lambda progress: verify_dataset(data, progress)  # noqa: E731
    with progress_bar() as bar:
        task = bar.add_task("verifying logs", total=n_logs, rate="")
        problems = check(progress=lambda _log: bar.advance(task))
    for p in problems:  # soft_wrap: paths stay on one line (copyable, greppable) whatever the terminal width
        console.print(f"[red]{p}[/]", soft_wrap=True)
    if problems:
        console.print(f"[bold red]{len(problems)} problem(s)[/] in {data}", soft_wrap=True)
        raise typer.Exit(code=1)
    console.print(f"[green]ok[/]: every file of {n_logs} logs matches its checksum")


@data_app.command("doctor")
@_friendly
def data_doctor(
    data: str = typer.Option(..., "--data", help="navsim:SPLIT[,SPLIT] (logs under $OPENSCENE_DATA_ROOT)."),
    sensors: bool = typer.Option(True, "--sensors/--no-sensors", help="Check every referenced sensor file."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Resolved NAVSIM paths, scenes found vs the filter and the official split size, missing maps and sensor
    files; exit 1 when anything would lose scenes."""
    import json

    from latentvla.data.doctor import diagnose
    from latentvla.data.navsim_source import is_navsim_spec
    from latentvla.runtime.parallel import progress_bar

    if not is_navsim_spec(data):
        raise ValueError(f"data doctor checks NAVSIM logs: pass --data navsim:SPLIT (for a generated dataset "
                         f"directory such as {data}, run `latentvla data verify {data}`)")
    with progress_bar(disable=as_json) as bar:
        task = bar.add_task("checking sensor files", total=None, rate="")
        report = diagnose(data, check_sensors=sensors, progress=None if as_json else lambda _log: bar.advance(task))
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        for var, e in report["env"].items():
            console.print(f"{var:20s} {e['value'] or '(unset)'}{'' if e['exists'] or not e['value'] else '  [red]missing[/]'}",
                          soft_wrap=True)
        for row in report["splits"]:
            expected = row.get("scenes_expected", row.get("official_scenes"))
            console.print(f"split [bold]{row['name']}[/] ({row['role']}): {row['scenes_found']} scenes"
                          f"{f' of {expected} expected' if expected else ''} in {row['logs_found']} logs; "
                          f"logs {row['log_dir']}; filter {row['scene_filter'] or '(none: every window with a route)'}",
                          soft_wrap=True)
        if report.get("roles"):
            console.print("roles: " + ", ".join(f"{k} {v}" for k, v in sorted(report["roles"].items())))
        for m in report["missing_sensor_files"][:20]:
            console.print(f"[red]{m}[/]", soft_wrap=True)
        for p in report["problems"]:
            console.print(f"[bold red]problem:[/] {p}", soft_wrap=True)
        if not report["problems"]:
            console.print("[green]ok[/]: every scene of the filter is present with its sensor files")
    if report["problems"]:
        raise typer.Exit(code=1)


@data_app.command("export-openscene")
@_friendly
@ray_option
def data_export_openscene(
    data: Path = typer.Option(..., "--data", help="Generated dataset directory (latentvla world generate)."),
    out: Path = typer.Option(..., "--out", help="OpenScene root to write (navsim_logs/, sensor_blobs/, maps/)."),
    jpeg_quality: int = typer.Option(95, "--jpeg-quality", help="JPEG quality of the exported camera images."),
    workers: int = typer.Option(1, "--workers", help="Parallel worker processes (one log each)."),
) -> None:
    """Write a generated dataset in the real OpenScene/nuPlan formats; read it back with --data navsim:SPLIT
    (OPENSCENE_DATA_ROOT=OUT, NUPLAN_MAPS_ROOT=OUT/maps). Resumes an interrupted export."""
    from latentvla.data.openscene_export import export_openscene

    counts = export_openscene(data, out, jpeg_quality=jpeg_quality, workers=workers)
    console.print(f"[green]wrote[/] {sum(counts.values())} scenes ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
                  f"to {out}; use: OPENSCENE_DATA_ROOT={out} NUPLAN_MAPS_ROOT={out / 'maps'} latentvla ... "
                  f"--data navsim:{next(iter(counts), 'test')}", soft_wrap=True)
