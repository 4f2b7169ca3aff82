"""Planner hosts end to end on the tiny world: train (CLI, in-process) -> checkpoint -> agent -> PDMS, plus the
anchor vocabulary and its offline scores, run reuse / resume and the run directory as ``--agent``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.planner.anchors import fit_anchors, score_anchors_batch
from latentvla.planner.configuration import PROPOSAL_SCORE_COLUMNS

pytestmark = pytest.mark.usefixtures("one_thread")

HOSTS = ("ego-mlp", "transfuser", "ipad")


@pytest.fixture(scope="module")
def planner_runs(tiny_world, cache_dir, runner, tmp_path_factory, planner_cache_root):
    """One quick-profile run per host (the planner cache is built once and shared)."""
    root = tmp_path_factory.mktemp("planner_runs")
    runs = {}
    for host in HOSTS:
        out = root / host
        res = runner.invoke(app, ["planner", "train", "--data", str(tiny_world), "--host", host, "--out", str(out),
                                  "--profile", "quick", "--workers", "1", "--quiet", "--cache-dir",
                                  str(planner_cache_root), "--metric-cache-dir", str(cache_dir)])
        assert res.exit_code == 0, res.output
        runs[host] = out
    return runs


def test_fit_anchors_recovers_clusters_deterministically():
    rng = np.random.default_rng(0)
    t = np.arange(1, 9)[:, None]
    slow = np.concatenate([t * 2.0, np.zeros_like(t), np.zeros_like(t)], 1)
    left = np.concatenate([t * 5.0, t * 1.0, np.full_like(t, 0.2, dtype=float)], 1)
    trajs = np.stack([slow + rng.normal(0, 0.05, slow.shape) for _ in range(20)]
                     + [left + rng.normal(0, 0.05, left.shape) for _ in range(20)])
    a = fit_anchors(trajs, 2, seed=3)
    assert a.shape == (2, 8, 3) and a.dtype == np.float32
    # canonical order: by final x -> slow first
    np.testing.assert_allclose(a[0, :, :2], trajs[:20, :, :2].mean(0), atol=1e-5)
    np.testing.assert_allclose(a[1, :, :2], trajs[20:, :, :2].mean(0), atol=1e-5)
    np.testing.assert_allclose(a[1, :, 2], 0.2, atol=0.05)
    np.testing.assert_array_equal(a, fit_anchors(trajs, 2, seed=3))
    with pytest.raises(ValueError, match="at least 5"):
        fit_anchors(trajs[:4], 5)


def test_anchor_scores_equal_scoring_each_anchor_as_the_agent(tiny_cache):
    """An anchor's offline score is exactly the PDMS the scorer gives it as the submitted plan."""
    from latentvla.eval.scene_score import score_pdms_batch

    tokens = tiny_cache.tokens[:3]
    scenes = [tiny_cache.load(t) for t in tokens]
    t = np.arange(1, 9, dtype=np.float32)[:, None]
    anchors = np.stack([np.concatenate([t * v, t * lat, np.zeros_like(t)], 1)
                        for v, lat in ((0.0, 0.0), (4.0, 0.0), (9.0, 0.0), (6.0, 1.5))]).astype(np.float32)
    scores = score_anchors_batch(scenes, anchors)
    keys = ("nc", "dac", "ttc", "ep", "c", "pdms")
    assert len(keys) == len(PROPOSAL_SCORE_COLUMNS)
    for s, sc in zip(scenes, scores):
        assert sc.shape == (4, 6)
        for k, a in enumerate(anchors):
            ref = score_pdms_batch([s], [a.astype(np.float64)])[0]
            np.testing.assert_allclose(sc[k], [ref[key] for key in keys], atol=1e-6)


@pytest.mark.parametrize("host", HOSTS)
def test_trained_host_scores_and_round_trips(host, planner_runs, tiny_world, tiny_store, cache_dir):
    from latentvla.agents import load_agent
    from latentvla.eval.runner import score_split
    from latentvla.planner.agent import PlannerAgent

    run = planner_runs[host]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["host"] == host and metrics["steps"] > 0 and np.isfinite(metrics["val_ade"])
    assert (run / "config.yaml").is_file() and json.loads((run / "run.json").read_text())["stage"] == "planner"
    agent = load_agent(str(run))
    assert isinstance(agent, PlannerAgent) and agent.cfg.host == host
    tokens = tiny_store.tokens("test")[:4]
    inputs = [tiny_store.load_agent_input(t) for t in tokens]
    first = agent.plan(inputs)["trajectory"]
    again = PlannerAgent(run).plan(inputs)["trajectory"]  # save -> load -> identical trajectories
    np.testing.assert_array_equal(first, again)
    assert first.shape == (4, 8, 3) and np.isfinite(first).all()
    rows, summary = score_split(tiny_world, agent, split="test", cache_root=cache_dir, quiet=True, tokens=tokens)
    assert all(r["valid"] for r in rows), rows
    assert 0.0 <= summary["mean"]["pdms"] <= 1.0


def test_cached_features_match_live_features(planner_runs, tiny_world, tiny_store, planner_cache_root):
    from latentvla.planner.agent import PlannerAgent

    run = planner_runs["ipad"]
    live, cached = PlannerAgent(run), PlannerAgent(run)
    cached.use_cache(tiny_world, "test", cache_root=planner_cache_root)
    assert cached.sensors == "none" and live.sensors == "current"
    tokens = tiny_store.tokens("test")[:3]
    a = live.plan([tiny_store.load_agent_input(t) for t in tokens])
    b = cached.plan([tiny_store.load_agent_input(t, sensors=False) for t in tokens])
    np.testing.assert_allclose(a["trajectory"], b["trajectory"], atol=1e-3)
    assert a["proposals"].shape[1] == live.cfg.ipad.num_proposals


def test_run_reuse_refusal_and_resume(planner_runs, tiny_world, runner, cache_dir, planner_cache_root):
    root = planner_runs["ego-mlp"].parent
    run = root / "ego-mlp-again"
    args = ["planner", "train", "--data", str(tiny_world), "--host", "ego-mlp", "--out", str(run), "--profile",
            "quick", "--workers", "1", "--quiet", "--cache-dir", str(planner_cache_root)]
    assert runner.invoke(app, args).exit_code == 0
    before = (run / "model.safetensors").stat().st_mtime_ns
    assert runner.invoke(app, args).exit_code == 0  # same config, finished: reused, not retrained
    assert (run / "model.safetensors").stat().st_mtime_ns == before
    res = runner.invoke(app, [*args, "--set", "train.lr=0.5"])
    assert res.exit_code == 2 and "another config" in res.output
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "model.safetensors").unlink()  # as if killed after the last checkpoint
    (run / "metrics.json").unlink()
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["steps"] == metrics["steps"] and resumed["val_ade"] == pytest.approx(metrics["val_ade"])


def test_non_planner_run_is_not_an_agent(tmp_path):
    from latentvla.agents import load_agent

    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "run.json").write_text(json.dumps({"stage": "lam"}))
    with pytest.raises(ValueError, match="'lam' run directory"):
        load_agent(str(tmp_path))


def test_lr_schedule_warmup_then_per_epoch_cosine():
    """Golden, by hand: 3 epochs of 4 steps, half an epoch of warm-up (2 steps); the cosine steps per epoch."""
    from latentvla.planner.train import lr_factor

    f = lr_factor(epochs=3, steps_per_epoch=4, warmup_epochs=0.5)
    want = [0.5, 1.0, 1.0, 1.0, 0.75, 0.75, 0.75, 0.75, 0.25, 0.25, 0.25, 0.25]
    np.testing.assert_allclose([f(s) for s in range(12)], want, atol=1e-12)
    plain = lr_factor(epochs=3, steps_per_epoch=4)  # no warm-up: torch's per-epoch cosine annealing
    np.testing.assert_allclose([plain(s) for s in range(12)], [1.0] * 4 + [0.75] * 4 + [0.25] * 4, atol=1e-12)
    with pytest.raises(ValueError, match="warmup_epochs >= 0"):
        lr_factor(3, 4, -1.0)


def test_ema_decay_ramp_golden():
    from latentvla.planner.train import ema_decay_at

    assert [ema_decay_at(0.99, n) for n in (0, 1, 8)] == [0.1, 2 / 11, 0.5]
    assert ema_decay_at(0.99, 10_000) == 0.99


def test_ema_run_saves_the_averaged_weights(tiny_world, runner, planner_cache_root, tmp_path):
    """With ``train.ema_decay`` the saved model is the weight average that validation selected, not the raw
    weights (which the checkpoint keeps for resuming)."""
    import torch
    from safetensors.torch import load_file

    from latentvla.planner.train import MODEL_FILE

    run = tmp_path / "ego-mlp-ema"
    res = runner.invoke(app, ["planner", "train", "--data", str(tiny_world), "--host", "ego-mlp", "--out", str(run),
                              "--profile", "quick", "--workers", "1", "--quiet", "--cache-dir",
                              str(planner_cache_root), "--set", "train.ema_decay=0.9"])
    assert res.exit_code == 0, res.output
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    saved = load_file(str(run / MODEL_FILE))
    name = next(k for k in saved if k.endswith("weight"))
    torch.testing.assert_close(saved[name], ckpt["state_dict"][f"model.{name}"])
    assert not torch.equal(saved[name], ckpt["current_model_state"][f"model.{name}"])


@pytest.mark.parametrize("key,value", [("train.warmup_epochs", -1.0), ("train.grad_clip", -0.5),
                                       ("train.ema_decay", 1.0), ("train.ema_decay", -0.1)])
def test_bad_training_options_fail_before_any_work(key, value):
    from latentvla.planner.configuration import PlannerConfig

    cfg = PlannerConfig()
    section, name = key.split(".")
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ValueError, match="train.ema_decay in \\(0, 1\\)"):
        PlannerConfig(train=cfg.train)
