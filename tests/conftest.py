"""Shared, session-scoped fixtures: one tiny embedded world built once per test session (quick profile)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_SCENES = 70


@pytest.fixture(scope="session")
def tiny_cfg():
    from latentvla.config import resolve
    from latentvla.world.configuration import WorldConfig

    return resolve(WorldConfig, "world", "quick", overrides=[f"scenes={TINY_SCENES}", "seed=7"])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory, tiny_cfg):
    """A generated dataset shared read-only by many tests (do not modify it; copy it first)."""
    from latentvla.world.generate import generate

    root = tmp_path_factory.mktemp("tiny_world")
    generate(root, tiny_cfg, workers=1, quiet=True)
    return root


@pytest.fixture(scope="session")
def tiny_store(tiny_world):
    from latentvla.data.store import SceneStore

    return SceneStore(tiny_world)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny batches gain
    nothing from two, and on a busy 2-core machine OpenMP's spinning threads make steps up to 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def runner():
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def tiny_cache(tiny_world, tmp_path_factory):
    """The tiny world's metric cache (with PDM-Closed plans), built once into a temporary root."""
    from latentvla.eval.metric_cache import MetricCache

    root = tmp_path_factory.mktemp("metric_cache")
    return MetricCache.open(tiny_world, cache_root=root, workers=1, quiet=True)


@pytest.fixture(scope="session")
def cache_dir(tiny_cache):
    return tiny_cache.path.parent


@pytest.fixture(scope="session")
def lam_run(runner, tiny_world, tmp_path_factory):
    """A quick-profile LAM run on the tiny world (both stages) and its feature cache root."""
    from latentvla.cli import app

    root = tmp_path_factory.mktemp("lam")
    run, cache = root / "run", root / "features"
    res = runner.invoke(app, ["lam", "train", "--data", str(tiny_world), "--out", str(run), "--profile", "quick",
                              "--workers", "1", "--cache-dir", str(cache), "--quiet"])
    assert res.exit_code == 0, res.output
    return run, cache


@pytest.fixture(scope="session")
def planner_cache_root(tmp_path_factory):
    """One planner-cache root for the session: the planner hosts and the VLA teacher (quick features) share it."""
    return tmp_path_factory.mktemp("planner_cache")


@pytest.fixture(scope="session")
def teacher_run(tiny_world, lam_run, runner, tmp_path_factory, planner_cache_root):
    """A quick VLA teacher trained on a private copy of the LAM run (so a test may delete its label store);
    shared by the teacher tests and the fusion / distillation tests."""
    import shutil

    from latentvla.cli import app

    root = tmp_path_factory.mktemp("vla")
    lam = root / "lam"
    shutil.copytree(lam_run[0], lam)
    run = root / "teacher"
    args = ["vla", "train", "--data", str(tiny_world), "--labels", str(lam), "--out", str(run), "--profile", "quick",
            "--workers", "1", "--quiet", "--cache-dir", str(planner_cache_root), "--lam-cache-dir", str(lam_run[1])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return {"root": root, "lam": lam, "run": run, "args": args, "cache": planner_cache_root}
