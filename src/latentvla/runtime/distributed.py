"""Multi-process / multi-node training for every ``train`` command (Lightning DDP, FSDP for the VLM).

The config states the **global** batch size; the per-device batch and gradient accumulation are derived from the
device count, so a run on 1 process, on 2 DDP processes or under ``torchrun`` optimises the same objective over
the same batches. The sample order does not depend on the device count either: every epoch draws one
permutation (``DistributedSampler``'s, seeded by the config seed and the epoch) and rank ``r`` takes every
``world``-th index, so the union of the ranks' micro-batches is exactly the single-process batch. Only rank 0
writes checkpoints, run files and metrics (the caller checks :func:`is_rank_zero` after ``fit``).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass

import lightning as L
import torch

STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")


@dataclass(frozen=True)
class Launch:
    """How to run a training job (runtime, not config: results must not depend on it, so it is not hashed)."""

    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    accelerator: str = "auto"  # auto | cpu | gpu
    max_device_batch: int = 0  # cap on the per-device batch (0: global / world); the rest is accumulated

    def __post_init__(self) -> None:
        if self.devices < 1 or self.num_nodes < 1:
            raise ValueError(f"--devices and --num-nodes must be >= 1, got {self.devices} and {self.num_nodes}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown --strategy '{self.strategy}'; valid: {list(STRATEGIES)}")
        if self.accelerator not in ("auto", "cpu", "gpu"):
            raise ValueError(f"unknown accelerator '{self.accelerator}'; valid: auto, cpu, gpu")

    @property
    def world_size(self) -> int:
        """Training processes (under torchrun/SLURM pass --devices = processes per node and --num-nodes)."""
        return self.devices * self.num_nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_accelerator(launch: Launch, default: str = "cpu") -> str:
    """The launch's accelerator, else the stage's default ("auto": a GPU when one is visible)."""
    choice = launch.accelerator if launch.accelerator != "auto" else default
    if choice == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return choice


def split_batch(global_batch: int, world: int, max_device_batch: int = 0) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with per_device * world * accumulation == global_batch."""
    if global_batch < world:
        raise ValueError(f"global batch {global_batch} is smaller than the {world} training processes")
    accum = 1
    if max_device_batch:
        accum = math.ceil(global_batch / (world * max_device_batch))
    while global_batch % (world * accum):
        accum += 1
        if accum > global_batch:
            break
    if global_batch % (world * accum):
        raise ValueError(f"global batch {global_batch} cannot be split evenly over {world} processes; choose a "
                         f"multiple of {world}")
    return global_batch // (world * accum), accum


def trainer_kwargs(launch: Launch, default_accelerator: str = "cpu") -> dict:
    """Lightning ``Trainer`` arguments for the launch (gloo on CPU, nccl on GPU)."""
    accelerator = resolve_accelerator(launch, default_accelerator)
    kw: dict = {"accelerator": accelerator, "devices": launch.devices, "num_nodes": launch.num_nodes}
    if launch.distributed or launch.strategy != "auto":
        from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

        backend = "nccl" if accelerator == "gpu" else "gloo"
        if launch.strategy == "fsdp":
            kw["strategy"] = FSDPStrategy(process_group_backend=backend)
        # some hosts hold trainable parameters a given loss does not reach (e.g. TransFuser's auxiliary heads
        # when their weights are 0, distillation heads in eval), which plain DDP refuses
        elif launch.strategy == "ddp_spawn":
            kw["strategy"] = DDPStrategy(start_method="spawn", process_group_backend=backend,
                                         find_unused_parameters=True)
        else:
            kw["strategy"] = DDPStrategy(process_group_backend=backend, find_unused_parameters=True)
    return kw


def train_loader(dataset, global_batch: int, launch: Launch, seed: int, collate_fn=None,
                 drop_last: bool = True) -> tuple[torch.utils.data.DataLoader, int]:
    """(loader, accumulation steps). Single process: a one-replica ``DistributedSampler`` (the same permutation a
    DDP rank splits); distributed: a shuffling loader that Lightning turns into each rank's DistributedSampler
    (seeded by ``seed`` through ``PL_GLOBAL_SEED``)."""
    per_device, accum = split_batch(global_batch, launch.world_size, launch.max_device_batch)
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    drop = drop_last and len(dataset) > per_device * launch.world_size
    if launch.distributed:
        loader = torch.utils.data.DataLoader(dataset, batch_size=per_device, shuffle=True, drop_last=drop,
                                             collate_fn=collate_fn)
    else:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=per_device, sampler=sampler, drop_last=drop,
                                             collate_fn=collate_fn)
    return loader, accum


def is_rank_zero() -> bool:
    """True outside distributed runs and on global rank 0 (the only process that writes files)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0 and \
        int(os.environ.get("NODE_RANK", "0")) == 0


def replica_checksums(module: torch.nn.Module, trainer) -> list[float]:
    """One parameter checksum per rank (all-gathered): equal values prove the replicas stayed in sync."""
    total = sum(float(p.detach().double().sum()) + 1e-3 * float(p.detach().double().abs().sum())
                for p in module.parameters())
    gathered = trainer.strategy.all_gather(torch.tensor([total], dtype=torch.float64))
    return [float(v) for v in torch.as_tensor(gathered).reshape(-1)]


class StepTimer(L.pytorch.callbacks.Callback):
    """Wall time between consecutive training batches, times the accumulation steps = one optimizer step.
    ``median_ms`` skips the first ``warmup`` batches, so process start-up and DDP set-up do not count (what the
    step-time benchmark compares)."""

    def __init__(self, accumulation: int = 1, warmup: int = 3):
        self.accumulation, self.warmup = accumulation, warmup
        self.intervals: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer, *args) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.intervals.append(now - self._last)
        self._last = now

    def on_train_epoch_start(self, trainer, *args) -> None:
        self._last = None  # validation and epoch boundaries are not steps

    @property
    def median_ms(self) -> float | None:
        kept = self.intervals[self.warmup:]
        return round(1000 * statistics.median(kept) * self.accumulation, 2) if kept else None


def curve_logger(run, name: str):
    """Lightning's CSVLogger writing ``RUN/curves/<name>/metrics.csv`` (rank 0 only): the training curves the
    report draws. Every logged step is kept (a CSV row per step is small next to a checkpoint). A resumed session
    writes ``<name>.part<k>/`` beside the earlier ones (the CSVLogger would delete an existing file)."""
    from pathlib import Path

    from lightning.pytorch.loggers import CSVLogger

    base, version, k = Path(run) / "curves", name, 1
    while (base / version / "metrics.csv").exists():
        version, k = f"{name}.part{k}", k + 1
    return CSVLogger(save_dir=str(Path(run)), name="curves", version=version)
