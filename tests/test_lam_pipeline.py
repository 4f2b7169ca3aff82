"""`latentvla lam train / label / report` end to end on the tiny world (quick profile, in-process CLI)."""

from __future__ import annotations

import json
import math

import pytest
from interrupt import dies_on_call

from latentvla.cli import app
from latentvla.data.store import SceneStore
from latentvla.lam.report import REPORT_KEYS


def test_train_writes_a_complete_run(lam_run):
    run, _ = lam_run
    for name in ("config.yaml", "run.json", "metrics.json", "stage1.safetensors", "stage2.safetensors",
                 "model.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stage1_steps"] == 40 and metrics["stage2_steps"] == 40


def test_report_json_contract(lam_run, runner, tiny_world):
    run, cache = lam_run
    res = runner.invoke(app, ["lam", "report", "--run", str(run), "--data", str(tiny_world), "--json",
                              "--workers", "1", "--cache-dir", str(cache)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(report) == set(REPORT_KEYS)
    assert all(math.isfinite(v) for v in report.values())
    assert 1.0 <= report["perplexity_ego"] <= 8 and 1 <= report["codes_used_ego"] <= 8  # quick codebook: 8 codes
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["perplexity_ego"] == report["perplexity_ego"]
    diag = saved["diagnostics"]  # beside the contract keys, not in --json
    assert set(diag) == {"recon_gain", "recon_gain_ego_shuffled", "recon_gain_env_shuffled",
                         "agents_ceiling_frame", "agents_ceiling_change", "agents_from_ego_motion"}
    assert all(math.isfinite(v) for v in diag.values())
    import cv2

    for name in ("code_usage.png", "codes_ego.png", "codes_env.png"):
        image = cv2.imread(str(run / "report" / name))
        assert image is not None and image.shape[0] > 50, name


def test_label_every_split_once(lam_run, runner, tiny_world, tiny_store):
    run, cache = lam_run
    args = ["lam", "label", "--run", str(run), "--data", str(tiny_world), "--workers", "1", "--cache-dir", str(cache)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    (path,) = (run / "labels").glob("*.json")
    labels = json.loads(path.read_text())
    assert set(labels["scenes"]) == set(tiny_store.tokens())
    row = labels["scenes"][tiny_store.tokens("test")[0]]
    assert len(row["ego"]) == len(row["env"]) == 4 * 3  # 4 windows x 3 queries
    assert all(0 <= c < 8 for c in row["ego"] + row["env"])
    before = path.stat().st_mtime_ns
    assert runner.invoke(app, args).exit_code == 0
    assert path.stat().st_mtime_ns == before  # re-labelling with the same run is a no-op


def test_resume_skips_finished_stages_and_stage_order(lam_run, runner, tiny_world, tmp_path):
    run, cache = lam_run
    before = (run / "model.safetensors").read_bytes()
    res = runner.invoke(app, ["lam", "train", "--data", str(tiny_world), "--out", str(run), "--profile", "quick",
                              "--resume", "--workers", "1", "--cache-dir", str(cache), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (run / "model.safetensors").read_bytes() == before
    res = runner.invoke(app, ["lam", "train", "--data", str(tiny_world), "--out", str(tmp_path / "r2"), "--profile",
                              "quick", "--stage", "2", "--workers", "1", "--cache-dir", str(cache), "--quiet"])
    assert res.exit_code == 2 and "stage 1 first" in res.output
    res = runner.invoke(app, ["lam", "train", "--data", str(tiny_world), "--out", str(run), "--profile", "quick",
                              "--set", "model.dim=16", "--workers", "1", "--cache-dir", str(cache), "--quiet"])
    assert res.exit_code == 2 and "holds a LAM run" in res.output


def test_label_is_sharded_by_log_and_resumes(lam_run, tiny_world, tmp_path, monkeypatch):
    """Labelling runs one job per log (parallel map); a run killed mid-way keeps its finished shards, the rerun
    labels only the rest and the merged file is byte-identical to an uninterrupted run's."""
    import shutil

    from latentvla.lam import report as lam_report

    src, features = lam_run
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    for d in (ref_run, run):
        shutil.copytree(src, d, ignore=shutil.ignore_patterns("labels"))
    ref = lam_report.label(ref_run, tiny_world, quiet=True, cache_root=features).read_bytes()
    real, calls = lam_report._label_log, []
    monkeypatch.setattr(lam_report, "_label_log", dies_on_call(real, 3, calls))
    with pytest.raises(KeyboardInterrupt):
        lam_report.label(run, tiny_world, quiet=True, cache_root=features)
    (shards,) = (run / "labels").glob("*.shards")
    assert len(list(shards.glob("*.json"))) == 2 and not list((run / "labels").glob("*.json"))
    calls.clear()
    monkeypatch.setattr(lam_report, "_label_log", dies_on_call(real, 0, calls))
    out = lam_report.label(run, tiny_world, quiet=True, cache_root=features)
    n_logs = len({log for s in ("train", "val", "test") for log in SceneStore(tiny_world).tokens_by_log(s)})
    assert len(calls) == n_logs - 2
    assert out.read_bytes() == ref and not shards.exists()


def test_camera_lidar_lam_trains_labels_and_reports(lam_run, runner, tiny_world, tmp_path):
    """``encoder.lidar``: the LAM reads camera + LiDAR-BEV tokens end to end; labelling in worker processes reopens
    both sensor caches from their paths."""
    _, cache = lam_run
    run = tmp_path / "lidar_run"
    common = ["--data", str(tiny_world), "--cache-dir", str(cache)]
    res = runner.invoke(app, ["lam", "train", "--out", str(run), "--profile", "quick", "--set", "encoder.lidar=true",
                              "--set", "encoder.lidar_scale=4.0", "--set", "encoder.bev_pixels=16", "--set",
                              "encoder.bev_grid=[2,2]", "--set", "train.steps_stage1=20", "--set",
                              "train.steps_stage2=20", "--quiet", "--workers", "1", *common])
    assert res.exit_code == 0, res.output
    from latentvla.lam.report import load_run

    _, model = load_run(run)
    assert (model.tokens, model.feat_dim) == (2 + 4, 1280 + 128)  # quick camera grid 1x2, then 2x2 LiDAR patches
    res = runner.invoke(app, ["lam", "label", "--run", str(run), "--workers", "2", *common])
    assert res.exit_code == 0, res.output
    (path,) = (run / "labels").glob("*.json")
    row = next(iter(json.loads(path.read_text())["scenes"].values()))
    assert len(row["ego"]) == len(row["env"]) == 12
    res = runner.invoke(app, ["lam", "report", "--run", str(run), "--json", "--workers", "1", *common])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(report) == set(REPORT_KEYS) and all(math.isfinite(v) for v in report.values())


def test_code_strips_show_the_sensor_each_idm_reads(tiny_store, tmp_path):
    """A LiDAR-only IDM's codes are shown as BEV pairs, a camera IDM's as camera pairs; a code used only at a
    later query position still gets its examples (the strips once looked at the first query only)."""
    import cv2
    import numpy as np

    from latentvla.lam.configuration import LAMConfig
    from latentvla.lam.figures import _image, code_examples_figure, example_sensor

    cfg = LAMConfig()
    cfg.model.env_sensor, cfg.model.ego_sensor = "lidar", "camera"
    assert (example_sensor(cfg, "env"), example_sensor(cfg, "ego"), example_sensor(LAMConfig(), "env")) == (
        "lidar", "camera", "camera")
    log = tiny_store.info(tiny_store.tokens("test")[0])["log"]
    bev = _image(tiny_store, log, 0, cfg, "lidar")
    assert bev.shape == (cfg.encoder.bev_pixels, cfg.encoder.bev_pixels, 3) and bev.dtype == np.uint8
    assert bev.min() < 255 == bev.max()  # some returns (dark) on an empty (white) background
    assert _image(tiny_store, log, 0, cfg, "camera").ndim == 3
    tokens = tiny_store.tokens("test")[:2]
    codes = np.zeros((2, cfg.windows, 3), np.int64)
    codes[1, 0, 2] = 1  # code 1 only at the third query of one window
    path = code_examples_figure(tiny_store, cfg, tokens, codes, 2, tmp_path / "env.png", sensor="lidar")
    blank = code_examples_figure(tiny_store, cfg, tokens, np.zeros_like(codes), 2, tmp_path / "blank.png",
                                 sensor="lidar")
    image, without = cv2.imread(str(path)), cv2.imread(str(blank))
    h = image.shape[0] // 2
    assert image.shape == without.shape
    assert (image[h:] != without[h:]).any(-1).sum() > 100  # code 1's row holds an example pair, not just its title
    np.testing.assert_array_equal(image[:h // 2], without[:h // 2])  # code 0's examples are the same windows
