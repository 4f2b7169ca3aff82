"""The parallel-map backends: scoring and generation give the same results with ``local --workers 2`` and ``ray``
(a 2-CPU local cluster, one per module) as with ``--workers 1``; a job killed mid-way resumes to identical output
without redoing finished shards. (Resume after deleted files: test_world_generate, test_eval_metric_cache.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import latentvla.eval.runner as scoring
import latentvla.world.generate as gen
from latentvla.agents import load_agent
from latentvla.runtime.parallel import compute_threads, current_backend, parallel_map, use_backend


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason='the ray backend needs the extra: pip install -e ".[ray]"')
    from latentvla.runtime import ray_backend

    ray_backend.init("local", workers=2)
    yield
    ray_backend.shutdown()


@pytest.fixture(scope="module")
def gen_cfg(tiny_cfg):
    return dataclasses.replace(tiny_cfg, scenes=12, log_seconds=8.0)  # 4 logs of 3 scenes


@pytest.fixture(scope="module")
def reference_world(tmp_path_factory, gen_cfg):
    root = tmp_path_factory.mktemp("parallel") / "w1"
    gen.generate(root, gen_cfg, workers=1, quiet=True)
    return root


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_backend_selection(monkeypatch):
    monkeypatch.delenv("LATENTVLA_RAY", raising=False)
    assert current_backend() == ("local", None)
    monkeypatch.setenv("LATENTVLA_RAY", "auto")
    assert current_backend() == ("ray", "auto")
    with use_backend("local"):
        assert current_backend() == ("local", None) and "LATENTVLA_RAY" not in os.environ
        with use_backend("ray", "10.0.0.1:6379"):
            assert current_backend() == ("ray", "10.0.0.1:6379")
            assert os.environ["LATENTVLA_RAY"] == "10.0.0.1:6379"  # spawned tools inherit it
    assert current_backend() == ("ray", "auto") and os.environ["LATENTVLA_RAY"] == "auto"
    with pytest.raises(ValueError, match="unknown parallel backend"), use_backend("dask"):
        pass
    assert sorted(parallel_map(abs, [-3, 1, -2], workers=1)) == [1, 2, 3]  # workers=1: inline, no cluster


def test_one_compute_thread_per_worker(ray_cluster):
    """BLAS results move with its thread count, so inline jobs, pool workers and Ray tasks all use one."""
    pytest.importorskip("threadpoolctl")
    assert [t["blas"] for t in parallel_map(compute_threads, [0], workers=1)] == [1]
    assert {t["blas"] for t in parallel_map(compute_threads, range(4), workers=2)} == {1}
    with use_backend("ray"):
        assert {t["blas"] for t in parallel_map(compute_threads, range(4), workers=2)} == {1}


def test_generation_identical_across_backends(tmp_path, gen_cfg, reference_world, ray_cluster):
    expected = _digests(reference_world)
    assert len([k for k in expected if k.endswith("SHA256SUMS")]) == 4
    gen.generate(tmp_path / "local", gen_cfg, workers=2, quiet=True)
    with use_backend("ray"):
        gen.generate(tmp_path / "ray", gen_cfg, workers=2, quiet=True)
    assert _digests(tmp_path / "local") == expected
    assert _digests(tmp_path / "ray") == expected


def _canon(rows: list[dict]) -> str:
    return json.dumps(rows, sort_keys=True, default=float)  # NaN-safe, exact float reprs


def test_scoring_identical_across_backends(tiny_world, cache_dir, ray_cluster, monkeypatch):
    monkeypatch.setattr(scoring, "BATCH_SCENES", 8)  # several jobs (whole logs) on the tiny world
    agent = load_agent("constant-velocity")

    def score(workers: int) -> tuple[str, dict]:  # EPDMS: extended comfort pairs each scene with its predecessor
        rows, summary = scoring.score_split(tiny_world, agent, "all", "epdms", workers=workers, cache_root=cache_dir,
                                           quiet=True)
        summary.pop("seconds")
        return _canon(rows), summary

    expected = score(1)
    assert score(2) == expected
    with use_backend("ray"):
        assert score(2) == expected


def test_closed_loop_identical_across_backends(tiny_world, ray_cluster, monkeypatch):
    import latentvla.closedloop.runner as closed_loop

    monkeypatch.setattr(closed_loop, "CHUNK_SCENES", 2)  # several jobs

    def run(workers: int) -> list[dict]:
        return closed_loop.evaluate_closed_loop(tiny_world, "constant-velocity", seconds=4, scenes=5,
                                                workers=workers, quiet=True)["per_scene"]

    expected = run(1)
    with use_backend("ray"):
        assert run(2) == expected


class _Killed(Exception):
    pass


def _stop_after(real, n: int):
    """A parallel_map that is killed after yielding ``n`` results (its in-flight jobs are abandoned)."""
    def interrupted(fn, items, workers=1, backend=None):
        for i, result in enumerate(real(fn, items, workers, backend)):
            if i == n:
                raise _Killed
            yield result
    return interrupted


def test_scoring_killed_midway_resumes(tiny_world, cache_dir, tmp_path, ray_cluster, monkeypatch):
    monkeypatch.setattr(scoring, "BATCH_SCENES", 8)
    agent = load_agent("constant-velocity")
    real, partial = scoring.parallel_map, tmp_path / "partial"
    ran: list = []

    def counting(fn, items, workers=1, backend=None):
        ran.extend(items)
        return real(fn, items, workers, backend)

    monkeypatch.setattr(scoring, "parallel_map", counting)
    rows, _ = scoring.score_split(tiny_world, agent, "all", workers=1, cache_root=cache_dir, quiet=True)
    jobs, ran[:] = len(ran), []
    with use_backend("ray"):
        monkeypatch.setattr(scoring, "parallel_map", _stop_after(real, 2))
        with pytest.raises(_Killed):
            scoring.score_split(tiny_world, agent, "all", workers=2, cache_root=cache_dir, quiet=True,
                               resume_dir=partial)
        assert len(list(partial.glob("*.pkl"))) >= 2  # finished jobs' rows are on disk
        monkeypatch.setattr(scoring, "parallel_map", counting)
        resumed, _ = scoring.score_split(tiny_world, agent, "all", workers=2, cache_root=cache_dir, quiet=True,
                                        resume_dir=partial)
    assert _canon(resumed) == _canon(rows)
    assert jobs >= 4 and 0 < len(ran) <= jobs - 2  # the two finished jobs were not scored again
    # another agent never reuses these rows
    other, _ = scoring.score_split(tiny_world, load_agent("log-replay"), "all", workers=1, cache_root=cache_dir,
                                  quiet=True, resume_dir=partial)
    assert _canon(other) != _canon(rows)


def test_generation_killed_midway_resumes(tmp_path, gen_cfg, reference_world, ray_cluster):
    """SIGKILL `world generate --workers 2` (driver and pool) once a log is written; resume on Ray."""
    out = tmp_path / "w"
    cmd = [sys.executable, "-c", "from latentvla.cli import main; main()", "world", "generate", "--out", str(out),
           "--profile", "quick", "--scenes", str(gen_cfg.scenes), "--seed", str(gen_cfg.seed),
           "--set", f"log_seconds={gen_cfg.log_seconds}", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    logs = out / "logs"
    try:
        deadline = time.monotonic() + 60
        while not (logs.is_dir() and any(not p.name.startswith(".") for p in logs.iterdir())):
            assert proc.poll() is None and time.monotonic() < deadline, "generation ended before the kill"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.name: (p / "log.json").stat().st_mtime_ns for p in logs.iterdir() if not p.name.startswith(".")}
    assert 1 <= len(finished) < 4 and not (out / "manifest.json").exists()
    with use_backend("ray"):
        gen.generate(out, gen_cfg, workers=2, resume=True, quiet=True)
    assert _digests(out) == _digests(reference_world)
    assert {n: (logs / n / "log.json").stat().st_mtime_ns for n in finished} == finished  # not recomputed


def test_ray_errors_keep_the_original_exception(ray_cluster):
    with use_backend("ray"), pytest.raises(ValueError, match="invalid literal for int"):
        list(parallel_map(int, ["1", "x", "3"], workers=2))


def test_cli_ray_option_without_ray(runner, tmp_path, monkeypatch):
    from latentvla.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    res = runner.invoke(app, ["world", "generate", "--out", str(tmp_path / "w"), "--profile", "quick",
                              "--scenes", "2", "--ray", "auto"])
    assert res.exit_code == 2, res.output
    assert 'pip install -e ".[ray]"' in res.output
