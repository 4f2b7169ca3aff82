"""Wall-clock timing for the scripts in benchmarks/ (never for tests: the machines are noisy)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def interleaved_ms(fns: list[Callable[[], object]], repeats: int, warmup: int,
                   sync: Callable[[], object] | None = None) -> list[np.ndarray]:
    """Per-call wall times (ms) of every function, timed round-robin (one call of each per round) so that a
    background load drifting during the run shifts all of them alike and their ratios stay fair. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read, so asynchronous GPU work is inside the call's time."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = np.empty((len(fns), repeats))
    for i in range(repeats):
        for k, fn in enumerate(fns):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out[k, i] = (time.perf_counter() - t0) * 1e3
    return list(out)
