"""``latentvla vla``: the VLA teacher's commands (pretrain, train, eval, headroom)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from latentvla.cli_common import (
    DevicesOpt,
    NumNodesOpt,
    ProfileOpt,
    StrategyOpt,
    _friendly,
    console,
    make_launch,
    ray_option,
)
from latentvla.cli_common import default_workers as _default_workers

_Workers = typer.Option(0, "--workers", help="Worker processes for feature caching (0: one per core).")
_PlannerCache = typer.Option(None, "--cache-dir", help="Planner cache root (default DATA/planner_cache).")
_LamCache = typer.Option(None, "--lam-cache-dir", help="LAM feature cache root for labelling (default DATA/feature_cache).")

vla_app = typer.Typer(no_args_is_help=True, help="VLA teacher: predicts latent action tokens (pretrain, train, eval).")


def vla_config(profile: str, config: Path | None, overrides: list[str] | None, backbone: str | None = None):
    from latentvla.config import resolve
    from latentvla.vla.configuration import VLAConfig

    extra = [f"backbone.path={backbone}"] if backbone else []
    return resolve(VLAConfig, "vla", profile, config, [*extra, *(overrides or [])])


@vla_app.command("train")
@_friendly
@ray_option
def vla_train(
    data: Path = typer.Option(..., "--data", help="Dataset directory (trains on train, selects on val)."),
    labels: Path = typer.Option(..., "--labels", help="LAM run whose latent action tokens are the targets "
                                                      "(labelled on demand)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    init: Path | None = typer.Option(None, "--init", help="Start from this teacher / pretraining run."),
    profile: str = ProfileOpt,
    backbone: str | None = typer.Option(None, "--backbone", help="Local directory with pretrained VLM weights "
                                                                 "(never downloaded)."),
    resume: bool = typer.Option(False, "--resume", help="Resume an interrupted run from its last checkpoint."),
    workers: int = _Workers,
    config: Path | None = typer.Option(None, "--config", help="YAML file with config overrides."),
    set_: list[str] | None = typer.Option(None, "--set", help="Dotted override, e.g. train.epochs=5."),
    cache_dir: Path | None = _PlannerCache,
    lam_cache_dir: Path | None = _LamCache,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    devices: int = DevicesOpt,
    num_nodes: int = NumNodesOpt,
    strategy: str = StrategyOpt,
) -> None:
    """Train the teacher to predict the LAM run's latent action tokens (no language annotations)."""
    from latentvla.vla.train import train

    metrics = train(data, out, vla_config(profile, config, set_, backbone), labels, init=init, resume=resume,
                    workers=workers or _default_workers(), quiet=quiet, cache_root=cache_dir,
                    lam_cache_root=lam_cache_dir, launch=make_launch(devices, num_nodes, strategy))
    if metrics:
        console.print(f"[green]trained[/] {out}: {json.dumps(metrics)}")


@vla_app.command("pretrain")
@_friendly
@ray_option
def vla_pretrain(
    data: Path = typer.Option(..., "--data", help="A separately generated, family-balanced world (see "
                                                  "docs/TRAINING.md); trains on train, selects on val."),
    out: Path = typer.Option(..., "--out", help="Run directory (pass it to `vla train --init`)."),
    profile: str = ProfileOpt,
    workers: int = _Workers,
    config: Path | None = typer.Option(None, "--config", help="YAML file with config overrides."),
    set_: list[str] | None = typer.Option(None, "--set", help="Dotted override, e.g. pretrain.epochs=2."),
    cache_dir: Path | None = _PlannerCache,
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    devices: int = DevicesOpt,
    num_nodes: int = NumNodesOpt,
    strategy: str = StrategyOpt,
) -> None:
    """Image-text pretraining (captions and VQA on perception facts only) of the tiny backbone."""
    from latentvla.vla.pretrain import pretrain

    metrics = pretrain(data, out, vla_config(profile, config, set_), workers=workers or _default_workers(),
                       quiet=quiet, cache_root=cache_dir, launch=make_launch(devices, num_nodes, strategy))
    if metrics:
        console.print(f"[green]pretrained[/] {out}: {json.dumps(metrics)}")


@vla_app.command("eval")
@_friendly
@ray_option
def vla_eval(
    run: Path = typer.Option(..., "--run", help="Teacher run directory."),
    data: Path = typer.Option(..., "--data", help="Dataset directory."),
    split: str = typer.Option("test", "--split", help="test | val | train"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
    workers: int = _Workers,
    cache_dir: Path | None = _PlannerCache,
    lam_cache_dir: Path | None = _LamCache,
) -> None:
    """Token accuracy of the teacher's own generated actions against the labels, with the majority and
    blank-image controls (the blind teacher is trained on first use into RUN/blind)."""
    from latentvla.vla.evaluate import evaluate

    metrics = evaluate(run, data, split=split, workers=workers or _default_workers(), quiet=as_json,
                       cache_root=cache_dir, lam_cache_root=lam_cache_dir)
    if as_json:
        sys.stdout.write(json.dumps(metrics, sort_keys=True) + "\n")
        return
    for k, v in metrics.items():
        if isinstance(v, dict):
            for f, a in v.items():
                Console().print(f"{k}.{f:22s} {a:.4f}")
        else:
            Console().print(f"{k:24s} {v:.4f}")


@vla_app.command("headroom")
@_friendly
def vla_headroom(
    run: Path = typer.Option(..., "--run", help="Teacher run directory (its labels and feature config are used)."),
    data: Path = typer.Option(..., "--data", help="Dataset directory (probes fit on train, tuned on val, scored "
                                                  "on test)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    workers: int = _Workers,
    cache_dir: Path | None = _PlannerCache,
    lam_cache_dir: Path | None = _LamCache,
) -> None:
    """How much perfect perception facts (what `vla pretrain` teaches) add to a linear probe of the latent tokens
    beyond ego status and camera features: the headroom of the pretraining stand-in (RUN/headroom.json)."""
    from latentvla.vla.headroom import headroom

    out = headroom(run, data, workers=workers or _default_workers(), quiet=as_json,
                   cache_root=cache_dir, lam_cache_root=lam_cache_dir)
    if as_json:
        sys.stdout.write(json.dumps(out, sort_keys=True) + "\n")
        return
    for name, v in out["inputs"].items():
        lt = v["long_tail_token_accuracy"]
        Console().print(f"{name:18s} token {v['token_accuracy']:.4f}  long tail "
                        f"{'-' if lt is None else f'{lt:.4f}'}")
    gain = out["facts_gain_long_tail"]
    Console().print(f"facts gain on the long tail: {'-' if gain is None else f'{gain:+.4f}'}")
