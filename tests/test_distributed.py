"""Distributed training: the global batch is split over processes without changing what is optimised.

A real 2-process DDP run (gloo, Lightning's subprocess launcher, the CLI as a user runs it) must end with the same
weights on both ranks and match single-process training with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvla.runtime.distributed import Launch, split_batch, train_loader

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_batch():
    assert split_batch(32, 1) == (32, 1)
    assert split_batch(32, 2) == (16, 1)
    assert split_batch(32, 2, max_device_batch=4) == (4, 4)
    assert split_batch(30, 2, max_device_batch=4) == (3, 5)  # 4 micro-batches of 4 do not divide 30: 5 of 3
    with pytest.raises(ValueError, match="cannot be split evenly over 4"):
        split_batch(30, 4)
    with pytest.raises(ValueError, match="smaller than the 8 training processes"):
        split_batch(4, 8)
    with pytest.raises(ValueError, match="unknown --strategy"):
        Launch(strategy="horovod")


def test_rank_batches_union_is_the_single_process_batch():
    """Rank r of W takes every W-th index of the epoch's permutation: the union of the ranks' k-th micro-batches
    is the single-process k-th batch (same seed, same epoch)."""
    data = torch.utils.data.TensorDataset(torch.arange(40))
    single, _ = train_loader(data, 8, Launch(), seed=3)
    single.sampler.set_epoch(2)
    batches = [set(b[0].tolist()) for b in single]
    ranks = []
    for r in range(2):
        s = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=3)
        s.set_epoch(2)
        ranks.append(list(s))
    for k, batch in enumerate(batches):
        union = {int(i) for r in range(2) for i in ranks[r][4 * k: 4 * k + 4]}
        assert union == batch


def _weights(run: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(run / "model.safetensors"))


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tiny_world, tmp_path, planner_cache_root):
    from latentvla.config import resolve
    from latentvla.planner.configuration import PlannerConfig
    from latentvla.planner.train import train

    args = ["--set", "train.batch_size=16", "--set", "train.epochs=1"]
    exe = Path(sys.executable).parent / "latentvla"
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([str(exe), "planner", "train", "--data", str(tiny_world), "--host", "ego-mlp", "--out",
                          str(ddp), "--profile", "quick", "--workers", "1", "--quiet", "--cache-dir",
                          str(planner_cache_root), "--devices", "2", "--strategy", "ddp", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["device_batch"] == 8 and metrics["global_batch"] == 16
    a, b = metrics["replica_checksums"]
    assert a == b  # both ranks hold the same weights after training

    cfg = resolve(PlannerConfig, "planner", "quick", None, ["host=ego-mlp", "train.batch_size=16", "train.epochs=1"])
    single = tmp_path / "single"
    train(tiny_world, single, cfg, workers=1, quiet=True, cache_root=planner_cache_root)
    wd, ws = _weights(ddp), _weights(single)
    assert set(wd) == set(ws)
    for k in ws:
        np.testing.assert_allclose(wd[k], ws[k], atol=2e-4, rtol=1e-3, err_msg=k)


@pytest.mark.slow
def test_torchrun_launch_matches_lightning_launcher(tiny_world, tmp_path, planner_cache_root):
    """Under torchrun (the multi-node path), Lightning joins torchrun's process group instead of launching: the
    same 2-process job gives the same weights as Lightning's own launcher."""
    exe = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    common = ["planner", "train", "--data", str(tiny_world), "--host", "ego-mlp", "--profile", "quick", "--workers",
              "1", "--quiet", "--cache-dir", str(planner_cache_root), "--devices", "2", "--strategy", "ddp",
              "--set", "train.batch_size=16", "--set", "train.epochs=1"]
    runs = {}
    for name, prefix in (("lightning", [str(exe / "latentvla")]),
                         ("torchrun", [str(exe / "torchrun"), "--standalone", "--nproc-per-node", "2",
                                       str(exe / "latentvla")])):
        runs[name] = tmp_path / name
        res = subprocess.run([*prefix, *common, "--out", str(runs[name])], capture_output=True, text=True, env=env,
                             timeout=600)
        assert res.returncode == 0, name + res.stdout[-2000:] + res.stderr[-2000:]
    a, b = _weights(runs["lightning"]), _weights(runs["torchrun"])
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, err_msg=k)
    metrics = json.loads((runs["torchrun"] / "metrics.json").read_text())
    assert metrics["processes"] == 2 and len(set(metrics["replica_checksums"])) == 1


@pytest.mark.slow
def test_resume_on_a_different_device_count(tiny_world, tmp_path, planner_cache_root, monkeypatch):
    """A single-process run killed after its first epoch resumes on 2 DDP processes (the checkpoint holds no
    process count) and ends where an uninterrupted single-process run ends."""
    from latentvla.config import resolve
    from latentvla.planner import train as planner_train
    from latentvla.planner.configuration import PlannerConfig

    overrides = ["host=ego-mlp", "train.batch_size=16", "train.epochs=2"]
    cfg = resolve(PlannerConfig, "planner", "quick", None, overrides)
    ref = tmp_path / "ref"
    planner_train.train(tiny_world, ref, cfg, workers=1, quiet=True, cache_root=planner_cache_root)

    class Killed(RuntimeError):
        pass

    class KillAfterFirstEpoch(planner_train.StepTimer):
        def on_train_epoch_start(self, trainer, *args):
            if trainer.current_epoch == 1:  # epoch 0 is trained, validated and checkpointed
                raise Killed("killed after the first epoch")
            super().on_train_epoch_start(trainer, *args)

    run = tmp_path / "run"
    monkeypatch.setattr(planner_train, "StepTimer", KillAfterFirstEpoch)
    with pytest.raises(Killed):
        planner_train.train(tiny_world, run, cfg, workers=1, quiet=True, cache_root=planner_cache_root)
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "model.safetensors").exists()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([str(Path(sys.executable).parent / "latentvla"), "planner", "train", "--data", str(tiny_world),
                          "--host", "ego-mlp", "--out", str(run), "--profile", "quick", "--workers", "1", "--quiet",
                          "--cache-dir", str(planner_cache_root), "--devices", "2", "--strategy", "ddp", "--resume",
                          "--set", "train.batch_size=16", "--set", "train.epochs=2"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["epochs"] == json.loads((ref / "metrics.json").read_text())["epochs"]
    a, b = _weights(run), _weights(ref)
    for k in b:
        np.testing.assert_allclose(a[k], b[k], atol=2e-4, rtol=1e-3, err_msg=k)
