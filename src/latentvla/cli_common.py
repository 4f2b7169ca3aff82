"""Shared by every command module: the stderr console and the decorator that turns expected errors into one
clear line and exit code 2 (so `cli.py`, `data/data_cli.py` and `eval/eval_cli.py` report errors alike)."""

from __future__ import annotations

import functools

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
