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
