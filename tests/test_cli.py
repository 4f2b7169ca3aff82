"""The command line, called in-process (typer's runner): contracts, exit codes, messages."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest

from latentvla.cli import app

SMALL = ["--set", "log_seconds=7", "--set", "sensors.image_width=64", "--set", "sensors.image_height=32",
         "--set", "sensors.lidar_beams=4"]


def test_generate_refuses_then_overwrites(runner, tmp_path):
    out = tmp_path / "w"
    args = ["world", "generate", "--out", str(out), "--scenes", "2", "--seed", "1", "--profile", "quick",
            "--workers", "1", *SMALL]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "manifest.json").is_file() and len(json.loads((out / "manifest.json").read_text())["scenes"]) == 2
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, args + ["--overwrite"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args + ["--resume"])
    assert r.exit_code == 0, r.output


def test_bad_values_list_valid_choices(runner, tmp_path):
    base = ["world", "generate", "--out", str(tmp_path / "x"), "--profile", "quick"]
    r = runner.invoke(app, base + ["--set", "sensors.cameras=[cam_x]"])
    assert r.exit_code == 2 and "cam_f0" in r.output
    r = runner.invoke(app, base + ["--set", "family_weights.train.dragon=1"])
    assert r.exit_code == 2 and "follow_brake" in r.output
    r = runner.invoke(app, ["world", "generate", "--out", str(tmp_path / "x"), "--profile", "huge"])
    assert r.exit_code == 2 and "quick" in r.output
    assert not (tmp_path / "x").exists()


def test_stats_json_contract(runner, tiny_world, tiny_store):
    r = runner.invoke(app, ["world", "stats", str(tiny_world), "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)
    assert {"scenes", "families", "commands", "splits"} <= set(stats)
    assert stats["scenes"] == len(tiny_store) == sum(stats["splits"].values()) == sum(stats["families"].values())
    assert set(stats["commands"]) <= {"left", "straight", "right", "unknown"}
    r = runner.invoke(app, ["world", "stats", str(tiny_world)])
    assert r.exit_code == 0 and "scenes" in r.output


def test_show_writes_png_and_names_unknown_token(runner, tiny_world, tiny_store, tmp_path):
    token = tiny_store.tokens("test")[0]
    out = tmp_path / "scene.png"
    r = runner.invoke(app, ["world", "show", str(tiny_world), "--scene", token, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert cv2.imread(str(out)) is not None
    r = runner.invoke(app, ["world", "show", str(tiny_world), "--scene", "deadbeef", "--out", str(out)])
    assert r.exit_code == 2 and "deadbeef" in r.output
    r = runner.invoke(app, ["world", "show", str(tmp_path), "--scene", token, "--out", str(out)])
    assert r.exit_code == 2 and "manifest.json" in r.output


def test_verify_exit_codes(runner, tiny_world, tmp_path):
    r = runner.invoke(app, ["data", "verify", str(tiny_world)])
    assert r.exit_code == 0, r.output
    copy = tmp_path / "w"
    shutil.copytree(tiny_world, copy)
    victim = sorted((copy / "logs").iterdir())[0] / "map.json"
    victim.write_text("{}")
    r = runner.invoke(app, ["data", "verify", str(copy)])
    assert r.exit_code == 1 and "map.json" in r.output and "corrupt" in r.output


def test_demo_quick(runner, tmp_path):
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--profile", "quick", "--scenes", "28", "--workers", "1"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "demo.json").read_text())
    assert summary["scenes"] == 28
    assert (out / "world_stats.png").is_file() and (out / "config.yaml").is_file()
    assert summary["gallery"] and all(cv2.imread(p) is not None for p in summary["gallery"])
    assert summary["provenance"]["inputs"]["manifest"]
    assert set(summary["scores"]) == {"log-replay", "pdm-closed", "constant-velocity", "ego-mlp", "ipad",
                                      "vla-teacher"}
    from latentvla.lam.report import REPORT_KEYS
    from latentvla.vla.evaluate import EVAL_KEYS

    assert set(summary["lam"]["report"]) == set(REPORT_KEYS) and (out / "lam" / "labels").is_dir()
    assert set(summary["teacher"]["eval"]) == set(EVAL_KEYS)
    assert (out / "vla" / "pretrain" / "model.safetensors").is_file() and (out / "pretrain_world").is_dir()
    assert set(summary["planners"]) == {"ego-mlp", "ipad"}
    assert (out / "planner" / "ipad" / "model.safetensors").is_file() and (out / "eval" / "ipad.pdms.csv").is_file()
    for scores in summary["scores"].values():
        assert 0.0 <= scores["pdms-v1.1"] <= 1.0 and 0.0 <= scores["epdms-v2"] <= 1.0
    assert (out / "eval" / "log-replay.pdms.csv").is_file() and (out / "eval" / "pdm-closed.epdms.summary.json").is_file()
    # stage 8 ends with the comparison table, built on the demo's own runs (the ipad host was reused, not retrained)
    table = json.loads((out / "table.json").read_text())
    assert summary["table"] == str(out / "table.json") and table["seeds"] == 1
    from latentvla.experiment.runs import MODELS

    assert [r["model"] for r in table["rows"]] == list(MODELS) and "full-ipad" in table["paired"]
    ipad = next(r for r in table["rows"] if r["model"] == "ipad")
    assert ipad["pdms"] == pytest.approx(summary["scores"]["ipad"]["pdms-v1.1"], abs=1e-9)
    # every row that can drive also drove in closed loop (pdm-closed cannot: privileged inputs)
    assert all((r["closed_loop_score"] is None) == (r["model"] == "pdm-closed") for r in table["rows"])
    # the report of the quick demo: parses, every image decodes, no external URL, closed loop beside open loop
    from latentvla.report.check import check_report

    assert check_report(out / "report.html") == []
    html = (out / "report.html").read_text()
    assert "Open loop vs closed loop" in html and "Spearman" in html and 'id="gallery-distilled"' in html
    # Running it again resumes (nothing regenerated or retrained) and succeeds.
    weights = [(out / p).stat().st_mtime_ns for p in ("planner/ipad/model.safetensors", "lam/model.safetensors",
                                                       "vla/teacher/model.safetensors")]
    r = runner.invoke(app, ["demo", "--out", str(out), "--profile", "quick", "--scenes", "28", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert [(out / p).stat().st_mtime_ns for p in ("planner/ipad/model.safetensors", "lam/model.safetensors",
                                                   "vla/teacher/model.safetensors")] == weights
