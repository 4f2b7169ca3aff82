"""`latentvla vla train / eval` end to end on the tiny world (quick profile, in-process CLI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from interrupt import dies_on_call

from latentvla.cli import app
from latentvla.data.store import SceneStore
from latentvla.vla.evaluate import EVAL_KEYS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vla(teacher_run):
    return teacher_run


def test_train_writes_a_complete_run(vla, runner):
    run = vla["run"]
    for name in ("config.yaml", "run.json", "metrics.json", "model.safetensors", "tokenizer/tokenizer.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["stage"] == "vla" and info["labels"] == str(vla["lam"]) and info["init"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_positions"] == 12 and metrics["num_codes"] == 8 and metrics["epochs"] == 2
    assert metrics["trainable_parameters"] == metrics["parameters"] > 0
    before = (run / "model.safetensors").stat().st_mtime_ns
    res = runner.invoke(app, vla["args"])  # same config, labels and init: the finished run is reused
    assert res.exit_code == 0, res.output
    assert (run / "model.safetensors").stat().st_mtime_ns == before
    res = runner.invoke(app, [*vla["args"], "--set", "train.epochs=3"])
    assert res.exit_code != 0 and "another config" in res.output


def test_eval_json_contract_and_controls(vla, runner, tiny_world, tiny_store):
    cache = str(vla["cache"])
    res = runner.invoke(app, ["vla", "eval", "--run", str(vla["run"]), "--data", str(tiny_world), "--json",
                              "--workers", "1", "--cache-dir", cache])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout.strip().splitlines()[-1])
    assert tuple(sorted(metrics)) == tuple(sorted(EVAL_KEYS))
    for k in EVAL_KEYS[:-1]:
        assert np.isfinite(metrics[k]), k
        if k != "nll":
            assert 0.0 <= metrics[k] <= 1.0, k
    assert metrics["sequence_accuracy"] <= metrics["token_accuracy"] <= metrics["top5_accuracy"] + 1e-9
    families = {tiny_store.info(t)["family"] for t in tiny_store.tokens("test")}
    assert set(metrics["by_family"]) == families
    assert (vla["run"] / "blind" / "model.safetensors").is_file()  # the blank-image control was trained
    saved = json.loads((vla["run"] / "metrics.json").read_text())
    assert saved["token_accuracy"] == metrics["token_accuracy"] and saved["eval_split"] == "test"


def test_inference_never_reads_the_label_store(vla, tiny_world):
    """encode() on test scenes is unchanged after the LAM run's labels (and the whole LAM run) are deleted."""
    from latentvla.planner.cache import PlannerCache
    from latentvla.vla.checkpoint import load_teacher

    def encode():
        model, cfg = load_teacher(vla["run"])
        cache = PlannerCache.open(tiny_world, cfg.features, cache_root=vla["cache"], quiet=True)
        feats = cache.features(cache.tokens("test"))
        return model.encode({k: torch.from_numpy(feats[k]) for k in ("ego_status", "camera_s32")})

    before = encode()
    shutil.rmtree(vla["lam"] / "labels")
    shutil.move(vla["lam"], vla["root"] / "lam_gone")
    after = encode()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0)
    shutil.move(vla["root"] / "lam_gone", vla["lam"])


def test_init_copies_every_matching_weight(vla):
    from safetensors.torch import load_file

    from latentvla.vla.checkpoint import read_meta
    from latentvla.vla.train import build_teacher

    meta = read_meta(vla["run"])
    from latentvla.config import from_dict
    from latentvla.vla.configuration import VLAConfig

    cfg = from_dict(VLAConfig, json.loads(meta["config"]))
    cfg.seed = 123  # a different random init underneath
    model = build_teacher(cfg, int(meta["num_codes"]), int(meta["num_positions"]),
                          tuple(json.loads(meta["camera_grid"])), init=vla["run"])
    saved = load_file(str(vla["run"] / "model.safetensors"))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)


def test_labels_must_be_a_lam_run(tiny_world, runner, tmp_path):
    res = runner.invoke(app, ["vla", "train", "--data", str(tiny_world), "--labels", str(tmp_path), "--out",
                              str(tmp_path / "t"), "--profile", "quick", "--quiet"])
    assert res.exit_code != 0 and "not a LAM run directory" in res.output


def test_teacher_is_a_scoreable_agent(vla, tiny_world, tiny_store, cache_dir):
    """The run's trajectory head was trained (phase 2) and `score --agent RUN` scores the teacher alone, batched
    and scene by scene alike."""
    from latentvla.agents.registry import load_agent
    from latentvla.eval.runner import score_split

    metrics = json.loads((vla["run"] / "metrics.json").read_text())
    assert np.isfinite(metrics["val_ade"]) and metrics["val_ade"] > 0
    agent = load_agent(str(vla["run"]))
    assert agent.name.startswith("vla:") and agent.sensors == "current"
    tokens = tiny_store.tokens("test")[:4]
    rows, summary = score_split(tiny_world, agent, split="test", cache_root=cache_dir, quiet=True, tokens=tokens)
    assert all(r["valid"] for r in rows), rows
    single = [agent.compute_trajectory(tiny_store.load_agent_input(t)).poses for t in tokens]
    batch = agent.compute_trajectories([tiny_store.load_agent_input(t) for t in tokens])
    np.testing.assert_allclose(np.stack([b.poses for b in batch]), np.stack(single), atol=1e-4)


def test_teacher_outputs_are_cached_per_run_and_dataset(vla, tiny_world, tmp_path):
    from latentvla.planner.cache import PlannerCache
    from latentvla.vla.checkpoint import load_teacher
    from latentvla.vla.encode_cache import cache_file, teacher_outputs

    out = teacher_outputs(vla["run"], tiny_world, "test", cache_root=tmp_path, planner_cache_root=vla["cache"],
                          batch_size=4)
    path = cache_file(vla["run"], tiny_world, "test", tmp_path)
    assert path.is_file() and out["embeddings"].dtype == np.float16 and out["codes"].dtype == np.int16
    model, cfg = load_teacher(vla["run"])
    cache = PlannerCache.open(tiny_world, cfg.features, cache_root=vla["cache"], quiet=True)
    assert list(out["tokens"]) == cache.tokens("test")
    feats = cache.features(cache.tokens("test"))
    enc = model.encode({k: torch.from_numpy(feats[k]) for k in ("ego_status", "camera_s32")})
    np.testing.assert_array_equal(out["codes"], enc["codes"].numpy())
    np.testing.assert_allclose(out["embeddings"].astype(np.float32), enc["embeddings"].detach().numpy(), rtol=2e-3, atol=2e-3)
    before = path.stat().st_mtime_ns
    again = teacher_outputs(vla["run"], tiny_world, "test", cache_root=tmp_path, planner_cache_root=vla["cache"])
    assert path.stat().st_mtime_ns == before and np.array_equal(again["probs"], out["probs"])


def test_teacher_outputs_do_not_depend_on_workers_and_resume(vla, tiny_world, tmp_path, monkeypatch):
    """One job per log through the parallel map: 2 worker processes give the same arrays as 1; an export killed
    after its first log keeps that shard, and the rerun encodes only the other logs, to the same result."""
    from latentvla.vla import encode_cache
    from latentvla.vla.encode_cache import cache_file, teacher_outputs

    kw = {"planner_cache_root": vla["cache"], "batch_size": 4}
    one = teacher_outputs(vla["run"], tiny_world, "test", cache_root=tmp_path / "w1", **kw)
    two = teacher_outputs(vla["run"], tiny_world, "test", cache_root=tmp_path / "w2", workers=2, **kw)
    for k in ("embeddings", "probs", "codes", "tokens"):
        np.testing.assert_array_equal(one[k], two[k])
    assert not cache_file(vla["run"], tiny_world, "test", tmp_path / "w1").with_name("test.shards").exists()
    real, calls = encode_cache._encode_log, []
    monkeypatch.setattr(encode_cache, "_encode_log", dies_on_call(real, 2, calls))
    with pytest.raises(KeyboardInterrupt):
        teacher_outputs(vla["run"], tiny_world, "test", cache_root=tmp_path / "w3", **kw)
    calls.clear()
    monkeypatch.setattr(encode_cache, "_encode_log", dies_on_call(real, 0, calls))
    again = teacher_outputs(vla["run"], tiny_world, "test", cache_root=tmp_path / "w3", **kw)
    n_logs = len(SceneStore(tiny_world).tokens_by_log("test"))
    assert len(calls) == n_logs - 1
    for k in ("embeddings", "probs", "codes", "tokens"):
        np.testing.assert_array_equal(again[k], one[k])
