"""One parallel-map abstraction for data-parallel work: world generation, metric / planner / LAM feature caching,
scoring, anchor scoring and OpenScene export all call ``parallel_map(fn, items, workers)``.

``workers=1`` runs inline whatever the backend. Otherwise the backend runs the jobs: ``local`` (default) a
spawn-context process pool, ``ray`` one-CPU Ray tasks on a local or remote cluster (``runtime.ray_backend``). Both
use one compute thread per worker and keep a bounded number of jobs in flight. Results arrive as they complete;
callers that need an order sort by key, so output never depends on the backend or on ``workers``.

The backend is process-wide, so no call site passes it: ``with use_backend("ray", address):`` (what ``--ray`` does),
else ``$LATENTVLA_RAY=auto|ADDRESS`` (inherited by spawned tools), else ``local``.
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

BACKENDS = ("local", "ray")
T = TypeVar("T")
R = TypeVar("R")

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def pin_threads() -> None:
    """One compute thread per worker process (BLAS, OpenCV, torch if loaded). The environment variables only reach
    BLAS libraries loaded later; those already loaded (a spawned worker re-imports the parent's main module, which
    may import numpy) are limited through threadpoolctl."""
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a core dependency
        pass
    one_blas_thread()
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def one_blas_thread():
    """Limit the loaded BLAS libraries to one thread (returned handle: ``.restore()`` or use as a context manager).
    BLAS results depend on its thread count in the last bits, so inline jobs (``workers=1``) run like the pool's
    workers: this is what makes results independent of ``workers``."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def compute_threads(_item: object = None) -> dict[str, int]:
    """Threads this process computes with: the most of any loaded BLAS library, and torch's if loaded (a
    diagnostic of ``pin_threads``; takes an ignored item so it can be mapped)."""
    import sys

    from threadpoolctl import threadpool_info

    out = {"torch": sys.modules["torch"].get_num_threads() if "torch" in sys.modules else 0}
    out["blas"] = max([lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"], default=0)
    return out


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


_selected: list[tuple[str, str | None]] = []  # the use_backend stack


def current_backend() -> tuple[str, str | None]:
    """(name, address) of the backend ``parallel_map`` uses when none is passed."""
    if _selected:
        return _selected[-1]
    from latentvla.runtime.ray_backend import ENV_VAR

    address = os.environ.get(ENV_VAR, "").strip()
    return ("ray", address) if address else ("local", None)


def _address(name: str, address: str | None) -> str | None:
    """The Ray address a backend runs on (``auto`` unless given; None for ``local``); unknown names refused."""
    if name not in BACKENDS:
        raise ValueError(f"unknown parallel backend '{name}'; valid: {list(BACKENDS)}")
    return (address or "auto") if name == "ray" else None


@contextmanager
def use_backend(name: str = "local", address: str | None = None) -> Iterator[None]:
    """Run ``parallel_map`` calls of this block on ``name`` (``local`` | ``ray``; ``address``: ``auto`` or a Ray
    cluster address). For ``ray``, ``$LATENTVLA_RAY`` is set meanwhile (spawned tools inherit it), and a local
    cluster started inside the block is shut down when it exits."""
    from latentvla.runtime import ray_backend

    address = _address(name, address)
    before_env = os.environ.get(ray_backend.ENV_VAR)
    owned_before = ray_backend.owns_cluster()
    if address:
        os.environ[ray_backend.ENV_VAR] = address
    else:
        os.environ.pop(ray_backend.ENV_VAR, None)
    _selected.append((name, address))
    try:
        yield
    finally:
        _selected.pop()
        if before_env is None:
            os.environ.pop(ray_backend.ENV_VAR, None)
        else:
            os.environ[ray_backend.ENV_VAR] = before_env
        if not owned_before and ray_backend.owns_cluster():
            ray_backend.shutdown()


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, backend: str | None = None
                 ) -> Iterator[R]:
    """Apply ``fn`` to every item, yielding results in completion order (inline when workers == 1).

    ``backend``: ``local`` | ``ray`` (address from ``use_backend`` / ``$LATENTVLA_RAY``, else ``auto``) | None
    (the current backend). ``fn`` must be importable (a module-level function) and items picklable."""
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    name, address = current_backend()
    if backend is not None:
        name, address = backend, _address(backend, address)
    if workers == 1 or len(items) <= 1:
        for item in items:
            with one_blas_thread():  # as in a worker (not while the caller handles the result)
                result = fn(item)
            yield result
        return
    if name == "ray":
        from latentvla.runtime.ray_backend import ray_map

        yield from ray_map(fn, items, workers, address)
        return
    yield from _local_map(fn, items, workers)


def _local_map(fn: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=pin_threads) as pool:
        pending: set[Any] = set()
        it = iter(items)
        # Keep a bounded number of tasks in flight so memory stays flat on huge jobs.
        for item in it:
            pending.add(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                break
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                for item in it:
                    pending.add(pool.submit(fn, item))
                    if len(pending) >= 4 * workers:
                        break
        finally:  # an error or an abandoned generator: drop queued jobs, let running ones finish their shard
            for fut in pending:
                fut.cancel()
