"""Shared by every command module: the stderr console and the decorator that turns expected errors into one
clear line and exit code 2 (so `cli.py`, `data/data_cli.py` and `eval/eval_cli.py` report errors alike)."""

from __future__ import annotations

import functools
import inspect
import os

import typer
from rich.console import Console

console = Console(stderr=True)


def friendly(fn):
    """Turn expected errors (bad config, bad files, refused overwrite) into a clear message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from latentvla.config import ConfigError
        from latentvla.data.store import DataError
        from latentvla.world.generate import GenerationError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError, GenerationError, ValueError, KeyError, FileNotFoundError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            console.print(f"[bold red]error:[/] {msg}", soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


_friendly = friendly


# --- distributed training options (every `train` command) -------------------------------------------------------
DevicesOpt = typer.Option(1, "--devices", help="Training processes per node (DDP); the global batch stays the same.")
NumNodesOpt = typer.Option(1, "--num-nodes", help="Nodes (with torchrun / SLURM).")
StrategyOpt = typer.Option("auto", "--strategy", help="auto | ddp | ddp_spawn | fsdp (gloo on CPU, nccl on GPU).")


def make_launch(devices: int, num_nodes: int, strategy: str):
    from latentvla.runtime.distributed import Launch

    return Launch(devices=devices, num_nodes=num_nodes, strategy=strategy)


RayOpt = typer.Option(None, "--ray", help="Run data-parallel work on Ray: auto (start a local cluster) or a cluster "
                                         "ADDRESS")


def ray_option(fn):
    """Give a command that has ``--workers`` the ``--ray auto|ADDRESS`` option: with it, the command runs inside
    ``use_backend("ray", ADDRESS)`` (every parallel_map of the command runs on Ray), and ``--workers 0`` means all
    CPUs of the cluster. Adds the parameter to the signature typer reads, so the command body is unchanged."""
    sig = inspect.signature(fn, eval_str=True)
    if "workers" not in sig.parameters:
        raise TypeError(f"{fn.__name__} has no --workers: --ray caps Ray's concurrency with it")
    ray_param = inspect.Parameter("ray", inspect.Parameter.KEYWORD_ONLY, default=RayOpt, annotation=str | None)

    @functools.wraps(fn)
    def wrapper(*args, ray: str | None = None, **kwargs):
        if ray is None:
            return fn(*args, **kwargs)
        from latentvla.runtime.parallel import use_backend
        from latentvla.runtime.ray_backend import RayUnavailable, cluster_cpus

        try:
            with use_backend("ray", ray):
                if kwargs.get("workers") == 0:
                    kwargs["workers"] = cluster_cpus(ray)
                return fn(*args, **kwargs)
        except RayUnavailable as e:
            from rich.markup import escape

            console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(code=2) from None

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), ray_param])
    wrapper.__annotations__ = {**fn.__annotations__, "ray": "str | None"}
    return wrapper


ProfileOpt = typer.Option("demo", "--profile", help="quick | demo | full")


def default_workers() -> int:
    """Worker processes when ``--workers 0``: one per core."""
    return max(1, os.cpu_count() or 1)
