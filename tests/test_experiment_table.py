"""`latentvla experiment table` end to end at the quick profile on the tiny world: every row trained (reusing the
session's LAM and scratch teacher), scored, tabulated with the contract's exact CSV / JSON keys; a second call
with two seeds reuses finished runs and scores."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.experiment.runs import MODELS
from latentvla.experiment.stats import CSV_COLUMNS

pytestmark = pytest.mark.usefixtures("one_thread")

ROW_KEYS = {"model", "nc", "dac", "ttc", "c", "ep", "pdms", "pdms_std", "epdms", "params", "latency_ms", "by_family",
            "closed_loop_score", "red_light_violations"}
PAIRS = {"full-ipad", "distilled-ipad", "full-distilled", "ipad-aux-ipad", "ipad-wide-ipad"}


@pytest.fixture(scope="module")
def table(tiny_world, runner, tmp_path_factory, lam_run, teacher_run, planner_cache_root, cache_dir):
    out = tmp_path_factory.mktemp("experiment") / "out"
    shutil.copytree(lam_run[0], out / "lam")  # same config and data: reused, as the scratch teacher is
    shutil.copytree(teacher_run["run"], out / "vla" / "teacher-scratch")
    args = ["experiment", "table", "--data", str(tiny_world), "--out", str(out), "--profile", "quick", "--workers",
            "1", "--quiet", "--cache-dir", str(planner_cache_root), "--metric-cache-dir", str(cache_dir),
            "--lam-cache-dir", str(lam_run[1])]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return {"out": out, "args": args, "output": res.output}


def test_table_contract(table, tiny_store):
    out = table["out"]
    doc = json.loads((out / "table.json").read_text())
    assert doc["metric"] == "pdms-v1.1" and doc["split"] == "test" and doc["seeds"] == 1
    assert doc["scenes"] == len(tiny_store.tokens("test"))
    assert [r["model"] for r in doc["rows"]] == list(MODELS)
    families = {tiny_store.info(t)["family"] for t in tiny_store.tokens("test")}
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS, row["model"]
        assert 0.0 <= row["pdms"] <= 1.0 and set(row["by_family"]) == families
    assert set(doc["paired"]) == PAIRS
    for lo_mean_hi in doc["paired"].values():
        mean, lo, hi = lo_mean_hi
        assert lo <= mean <= hi
    # the same differences with log-resampled CIs; the test logs are the store's
    assert doc["logs"] == len({tiny_store.info(t)["log"] for t in tiny_store.tokens("test")})
    assert set(doc["paired_by_log"]) == PAIRS
    for name, (mean, lo, hi) in doc["paired_by_log"].items():
        assert mean == doc["paired"][name][0] and lo <= mean <= hi
    rows = {r["model"]: r for r in doc["rows"]}
    assert rows["log-replay"]["pdms"] > rows["constant-velocity"]["pdms"] > 0.3  # the references make sense
    assert rows["log-replay"]["latency_ms"] is None and rows["ipad"]["latency_ms"] > 0
    # closed loop (quick: 4 scenes x 4 s, reactive): every row that drives; log replay is the world's expert
    assert rows["pdm-closed"]["closed_loop_score"] is None
    assert rows["log-replay"]["closed_loop_score"] > rows["constant-velocity"]["closed_loop_score"] - 1e-9
    for m, r in rows.items():
        if m != "pdm-closed":
            cl = json.loads((out / "closed_loop" / f"{m}.json").read_text())
            assert r["closed_loop_score"] == pytest.approx(cl["mean"]["closed_loop_score"]) and cl["scenes"] == 4
    # the full model carries its teacher (parameters and generation time); the student does not
    assert rows["full"]["params"] > rows["ipad"]["params"] + rows["teacher"]["params"] * 0.9
    assert rows["full"]["latency_ms"] > rows["distilled"]["latency_ms"]
    full, distilled, ipad = (rows[m]["pdms"] for m in ("full", "distilled", "ipad"))
    if abs(full - ipad) > 1e-9:
        assert doc["recovery"] == pytest.approx((distilled - ipad) / (full - ipad))
    with open(out / "table.csv") as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == CSV_COLUMNS and [r[0] for r in lines[1:]] == list(MODELS)
    assert float(lines[1 + MODELS.index("ipad")][6]) == pytest.approx(rows["ipad"]["pdms"], abs=1e-6)
    assert "recovery" in table["output"] and "PDMS by scene family" in table["output"]


def test_control_rows_are_what_they_claim(table):
    from latentvla.planner.checkpoint import read_config

    planner = table["out"] / "planner"
    wide, ipad, full = (read_config(planner / m / "model.safetensors") for m in ("ipad-wide", "ipad", "full"))
    assert wide.transfuser.dim > ipad.transfuser.dim and not wide.fusion.enabled
    n = {m: json.loads((planner / m / "metrics.json").read_text())["trainable_parameters"]
         for m in ("ipad-wide", "full", "ipad")}
    assert abs(n["ipad-wide"] - n["full"]) < abs(n["ipad"] - n["full"])  # capacity matched to the full model
    rand = json.loads((planner / "full-random-vlm" / "run.json").read_text())
    assert rand["teacher"].endswith("random") and full.fusion.enabled
    assert read_config(planner / "ipad-aux" / "model.safetensors").distill.latent_target == "labels"


def test_second_call_reuses_runs_and_adds_seeds(table, runner):
    out = table["out"]
    stamp = (out / "planner" / "ipad" / "model.safetensors").stat().st_mtime_ns
    res = runner.invoke(app, [*table["args"], "--seeds", "2", "--models", "ipad,full,distilled"])
    assert res.exit_code == 0, res.output
    assert (out / "planner" / "ipad" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "planner" / "distilled.seed1" / "model.safetensors").is_file()
    doc = json.loads((out / "table.json").read_text())
    assert doc["seeds"] == 2 and [r["model"] for r in doc["rows"]] == ["ipad", "full", "distilled"]
    assert all(np.isfinite(r["pdms_std"]) for r in doc["rows"])
    assert set(doc["paired_missing"]) == {"ipad-aux-ipad", "ipad-wide-ipad"}


def test_bad_arguments(runner, tiny_world, tmp_path):
    res = runner.invoke(app, ["experiment", "table", "--data", str(tiny_world), "--out", str(tmp_path / "o"),
                              "--models", "ipad,bogus"])
    assert res.exit_code != 0 and "bogus" in res.output
    res = runner.invoke(app, ["experiment", "table", "--data", str(tiny_world), "--out", str(tmp_path / "o"),
                              "--set", "train.epochs=1"])
    assert res.exit_code != 0 and "STAGE:KEY=VALUE" in res.output


def test_ablations_share_the_reference_chain(table, runner):
    """Three ablations (a LAM change, a codebook size, a distillation term) in the table's format."""
    from latentvla.lam.report import load_run

    out = table["out"]
    full_stamp = (out / "planner" / "full" / "model.safetensors").stat().st_mtime_ns
    args = [a if a != "table" else "ablations" for a in table["args"]]
    res = runner.invoke(app, [*args, "--ablations", "single-stage,codebook-8,no-score-kl"])
    assert res.exit_code == 0, res.output
    assert (out / "planner" / "full" / "model.safetensors").stat().st_mtime_ns == full_stamp  # reference reused
    doc = json.loads((out / "ablations.json").read_text())
    assert [r["model"] for r in doc["rows"]] == ["full", "distilled", "single-stage-full", "single-stage-distilled",
                                                 "codebook-8-full", "codebook-8-distilled", "distilled-no-score-kl"]
    assert set(doc["paired"]) == {"single-stage-full-vs-full", "single-stage-distilled-vs-distilled",
                                  "codebook-8-full-vs-full", "codebook-8-distilled-vs-distilled",
                                  "distilled-no-score-kl-vs-distilled"}
    assert set(doc["paired_by_log"]) == set(doc["paired"]) and doc["logs"] > 0
    for row in doc["rows"]:
        assert set(row) == ROW_KEYS
    with open(out / "ablations.csv") as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS
    lam_cfg, _ = load_run(out / "ablations" / "single-stage" / "lam")
    assert lam_cfg.model.env.codebook_size == 1  # one environment code: no information, no disentangling
    from latentvla.planner.checkpoint import read_config

    assert read_config(out / "ablations" / "codebook-8" / "distilled" / "model.safetensors").distill.latent_codes == 8
    student = read_config(out / "ablations" / "no-score-kl" / "distilled" / "model.safetensors")
    assert student.distill.score_weight == 0 and student.distill.latent_weight > 0
    res = runner.invoke(app, [*args, "--ablations", "nope"])
    assert res.exit_code != 0 and "unknown ablation" in res.output


def test_oracle_rows_on_request(table, runner):
    """The diagnostic rows train with their privileged context, are paired with iPad, and have no latency."""
    out = table["out"]
    res = runner.invoke(app, [*table["args"], "--models", "ipad,oracle-latent,oracle-expert"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "table.json").read_text())
    rows = {r["model"]: r for r in doc["rows"]}
    assert list(rows) == ["ipad", "oracle-latent", "oracle-expert"]
    assert rows["ipad"]["latency_ms"] is not None
    assert rows["oracle-latent"]["latency_ms"] is None and rows["oracle-expert"]["latency_ms"] is None
    assert {"oracle-latent-ipad", "oracle-expert-ipad"} <= set(doc["paired"])
    run = json.loads((out / "planner" / "oracle-latent" / "run.json").read_text())
    assert run["oracle"] == "latent" and run["latent_labels"]
    assert "oracle-facts" not in MODELS  # never part of the default table
