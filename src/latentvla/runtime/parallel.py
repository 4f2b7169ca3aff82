"""One parallel-map abstraction for data-parallel work (generation now; scoring and caching later).

``workers=1`` runs inline; ``workers>1`` uses a spawn-context process pool with one compute thread per worker.
Results arrive as they complete; callers that need an order sort by key, so output never depends on workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def pin_threads() -> None:
    """One compute thread per worker process (BLAS, OpenCV, torch if loaded)."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a core dependency
        pass
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run a block with ``count`` torch threads (None: unchanged) and restore the caller's count afterwards, so
    a stage run in-process (tests, the demo) never leaves its thread setting behind."""
    import torch

    before = torch.get_num_threads()
    try:
        if count is not None:
            torch.set_num_threads(count)
        yield
    finally:
        torch.set_num_threads(before)


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), disable=disable, transient=False,
    )


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1) -> Iterator[R]:
    """Apply ``fn`` to every item, yielding results in completion order (inline when workers == 1)."""
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=pin_threads) as pool:
        pending: set[Any] = set()
        it = iter(items)
        # Keep a bounded number of tasks in flight so memory stays flat on huge jobs.
        for item in it:
            pending.add(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
            for item in it:
                pending.add(pool.submit(fn, item))
                if len(pending) >= 4 * workers:
                    break
