"""The Ray backend of ``runtime.parallel_map`` (``--ray auto|ADDRESS``; needs the optional extra ``[ray]``).

Each item runs as one Ray task pinned to one CPU (``num_cpus=1``; Ray sets ``OMP_NUM_THREADS=1`` for such tasks
and the task calls ``pin_threads``), at most ``workers`` tasks in flight (so ``workers`` caps the concurrency on a
cluster of any size and memory stays flat), results yielded as they complete. A task's exception is re-raised in
the driver as the original exception (type and message), its remote traceback chained as the cause.

``auto`` connects to ``$RAY_ADDRESS`` when it is set, else starts a private local cluster of ``workers`` CPUs that
lives until ``use_backend`` exits (or the process ends); any other value is a cluster address (``HOST:PORT`` or
``ray://HOST:10001``). Ray is imported lazily: the local backend never needs it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

ENV_VAR = "LATENTVLA_RAY"
INSTALL_HINT = 'pip install -e ".[ray]"'


class RayUnavailable(ImportError):
    """Ray is not installed (the message says how to install it)."""


_state: dict[str, Any] = {"owned": False, "remote": None, "epoch": 0}


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"the Ray backend (--ray) needs Ray, which is not installed ({e}); install the extra: "
                             f"{INSTALL_HINT}") from None
    return ray


def owns_cluster() -> bool:
    """Whether this process started the (local) cluster it is connected to."""
    return bool(_state["owned"])


def init(address: str | None = "auto", workers: int | None = None) -> float:
    """Connect to the cluster at ``address`` (``auto``: ``$RAY_ADDRESS`` if set, else start a local cluster of
    ``workers`` CPUs, default all cores). A no-op when Ray is already initialised. Returns the seconds spent."""
    ray = _ray()
    if ray.is_initialized():
        return 0.0
    t0 = time.perf_counter()
    opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True,
                            "logging_level": "WARNING"}
    local = _starts_local(address)
    address = (address or "auto").strip()
    if address == "auto" and os.environ.get("RAY_ADDRESS"):
        address = os.environ["RAY_ADDRESS"]
    if local:
        ctx = ray.init(address="local", num_cpus=workers or os.cpu_count() or 1, **opts)
        _state["owned"] = True
        if os.environ.get(ENV_VAR) in ("auto", "local"):  # tools spawned from here join this cluster
            os.environ[ENV_VAR] = ctx.address_info["gcs_address"]
    else:
        ray.init(address=address, **opts)
    return time.perf_counter() - t0


def _starts_local(address: str | None) -> bool:
    address = (address or "auto").strip()
    return address == "local" or (address == "auto" and not os.environ.get("RAY_ADDRESS"))


def cluster_cpus(address: str | None = "auto") -> int:
    """CPUs of the cluster (connecting to it if needed): the default ``--workers`` with ``--ray``. A local cluster
    still to be started gets all cores."""
    ray = _ray()
    if not ray.is_initialized() and _starts_local(address):
        return os.cpu_count() or 1
    init(address)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def shutdown() -> None:
    """Disconnect (and stop the local cluster this process started)."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    _state.update(owned=False, remote=None)


# Process-wide caches of the job modules, keyed by path. A local pool is fresh for every parallel_map call; Ray
# workers live on, so each call starts by clearing them (a dataset rewritten at the same path is never served stale).
_PROCESS_CACHES = (("latentvla.data.store", "_PROCESS_STORES"), ("latentvla.eval.metric_cache", "_PROCESS_CACHES"))
_worker: dict[str, Any] = {"pinned": False, "epoch": None}


def _run(fn: Callable[[Any], Any], item: Any, epoch: object) -> Any:
    """The task body, in a Ray worker process."""
    if not _worker["pinned"]:
        from latentvla.runtime.parallel import pin_threads

        pin_threads()
        _worker["pinned"] = True
    if _worker["epoch"] != epoch:
        for module, name in _PROCESS_CACHES:
            if module in sys.modules:
                getattr(sys.modules[module], name).clear()
        _worker["epoch"] = epoch
    return fn(item)


class _RemoteTraceback(Exception):
    def __str__(self) -> str:
        return str(self.args[0])


def _reraise(ray, err: BaseException):
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        raise cause from _RemoteTraceback(str(err))
    raise err


def ray_map(fn: Callable[[Any], Any], items: list, workers: int, address: str | None = "auto") -> Iterator[Any]:
    """``parallel_map`` on Ray: at most ``workers`` one-CPU tasks in flight, results in completion order."""
    ray = _ray()
    init(address, workers)
    if _state["remote"] is None:
        _state["remote"] = ray.remote(num_cpus=1)(_run)
    remote = _state["remote"]
    _state["epoch"] += 1
    epoch = (os.getpid(), _state["epoch"])
    fn_ref = ray.put(fn)
    it = iter(items)
    pending: list[Any] = []

    def refill() -> None:
        for item in it:
            pending.append(remote.remote(fn_ref, item, epoch))
            if len(pending) >= workers:
                break

    try:
        refill()
        while pending:
            done, rest = ray.wait(pending, num_returns=1)
            pending[:] = rest
            for ref in done:
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    _reraise(ray, err)
                yield result
            refill()
    finally:  # an error or an abandoned generator (Ctrl-C) stops the rest; shards are written atomically
        for ref in pending:
            ray.cancel(ref)
