"""Simulated kills for resume tests: wrap a per-job function so the n-th call raises as a killed process would."""

from __future__ import annotations

from collections.abc import Callable


def dies_on_call(real: Callable, n: int, calls: list) -> Callable:
    """``real`` with every call recorded in ``calls``; the ``n``-th call raises KeyboardInterrupt (n=0: never)."""

    def job(arg):
        calls.append(arg)
        if len(calls) == n:
            raise KeyboardInterrupt("killed")
        return real(arg)

    return job
