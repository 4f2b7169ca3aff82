"""``vla headroom``: the linear token probe on synthetic codes, and the command on the tiny world's teacher."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.vla.headroom import INPUT_SETS, probe_hits

pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_reads_codes_that_inputs_determine_and_not_others() -> None:
    """Position 0's code is which of 4 input features is largest (linearly separable): the probe gets it; position
    1's code is random: the probe stays near chance on held-out rows."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 6))
    codes = np.stack([x[:, :4].argmax(1), rng.integers(0, 4, 1200)], 1)
    hits = probe_hits(x[:800], codes[:800], x[800:], codes[800:], num_codes=4)
    assert hits.shape == (400, 2)
    assert hits[:, 0].mean() > 0.9
    assert hits[:, 1].mean() < 0.4


def test_headroom_command(runner, tiny_world, teacher_run, lam_run) -> None:
    args = ["vla", "headroom", "--run", str(teacher_run["run"]), "--data", str(tiny_world), "--workers", "1",
            "--cache-dir", str(teacher_run["cache"]), "--lam-cache-dir", str(lam_run[1]), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out["inputs"]) == set(INPUT_SETS) and out["split"] == "test"
    for v in out["inputs"].values():
        assert 0.0 <= v["token_accuracy"] <= 1.0
    lt = {k: v["long_tail_token_accuracy"] for k, v in out["inputs"].items()}
    if lt["ego+camera"] is not None:
        assert out["facts_gain_long_tail"] == pytest.approx(lt["ego+camera+facts"] - lt["ego+camera"])
    on_disk = json.loads((teacher_run["run"] / "headroom.json").read_text())
    assert on_disk["inputs"] == out["inputs"]
