"""LatentVLA proper on the tiny world: the full model (host + fused teacher), the distilled student and the
auxiliary-head control, trained through the CLI in-process, scored as agents, with their provenance and errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latentvla.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fused(tiny_world, cache_dir, runner, tmp_path_factory, planner_cache_root, teacher_run):
    root = tmp_path_factory.mktemp("fusion")
    base = ["planner", "train", "--data", str(tiny_world), "--host", "ipad", "--profile", "quick", "--workers", "1",
            "--quiet", "--cache-dir", str(planner_cache_root), "--metric-cache-dir", str(cache_dir)]
    runs = {"full": root / "full", "student": root / "student", "aux": root / "aux"}
    extra = {"full": ["--teacher", str(teacher_run["run"])], "student": ["--distill-from", str(runs["full"])],
             "aux": ["--latent-labels", str(teacher_run["lam"])]}
    for name, out in runs.items():
        res = runner.invoke(app, [*base, "--out", str(out), *extra[name]])
        assert res.exit_code == 0, res.output
    return {"base": base, "runs": runs, "teacher": teacher_run["run"], "root": root}


def _cfg(run):
    from latentvla.planner.checkpoint import read_config

    return read_config(run / "model.safetensors")


def test_runs_record_their_sources_and_config(fused):
    from latentvla.vla.encode_cache import run_key

    full, student, aux = (fused["runs"][k] for k in ("full", "student", "aux"))
    info = json.loads((full / "run.json").read_text())
    assert (full / info["teacher"]).resolve() == fused["teacher"].resolve()
    assert not info["teacher"].startswith("/")  # relative: the runs can move together
    cfg = _cfg(full)
    assert cfg.fusion.enabled and cfg.fusion.teacher_key == run_key(fused["teacher"])
    assert cfg.fusion.context_tokens > 12 and cfg.fusion.context_dim > 0
    metrics = json.loads((full / "metrics.json").read_text())
    assert len(metrics["fusion_gates"]) == 2 * cfg.ipad.iterations
    assert any(abs(g) > 0 for g in metrics["fusion_gates"])  # training opened the gates
    s = _cfg(student)
    assert not s.fusion.enabled and s.distill.latent_target == "teacher"
    assert s.distill.full_key == run_key(full) and (s.distill.latent_positions, s.distill.latent_codes) == (12, 8)
    a = _cfg(aux)
    assert a.distill.latent_target == "labels" and not a.distill.full_key and not a.fusion.enabled


def test_full_agent_cached_and_live_teacher_agree(fused, tiny_world, tiny_store, planner_cache_root):
    from latentvla.agents import load_agent

    tokens = tiny_store.tokens("test")[:3]
    live = load_agent(str(fused["runs"]["full"]))
    a = live.plan([tiny_store.load_agent_input(t) for t in tokens])
    cached = load_agent(str(fused["runs"]["full"]))
    cached.use_cache(tiny_world, "test", cache_root=planner_cache_root)
    b = cached.plan([tiny_store.load_agent_input(t, sensors=False) for t in tokens])
    np.testing.assert_allclose(a["trajectory"], b["trajectory"], atol=1e-4)


def test_every_variant_scores(fused, tiny_world, cache_dir, tiny_store):
    from latentvla.agents import load_agent
    from latentvla.eval.runner import score_split

    for name, run in fused["runs"].items():
        rows, summary = score_split(tiny_world, load_agent(str(run)), "test", cache_root=cache_dir, quiet=True)
        assert summary["invalid"] == 0 and 0.0 <= summary["mean"]["pdms"] <= 1.0, name
        assert len(rows) == len(tiny_store.tokens("test"))


def test_student_needs_no_teacher_but_full_model_does(fused, tiny_store):
    from latentvla.agents import load_agent

    inputs = [tiny_store.load_agent_input(tiny_store.tokens("test")[0])]
    moved = fused["root"] / "teacher_moved"
    shutil.move(fused["teacher"], moved)
    try:
        student = load_agent(str(fused["runs"]["student"]))
        assert student.teacher is None and np.isfinite(student.plan(inputs)["trajectory"]).all()
        with pytest.raises(FileNotFoundError, match="teacher"):
            load_agent(str(fused["runs"]["full"]))
    finally:
        shutil.move(moved, fused["teacher"])


def test_source_errors(fused, runner, teacher_run, tmp_path, planner_cache_root):
    plain = tmp_path / "plain"
    res = runner.invoke(app, [*fused["base"], "--out", str(tmp_path / "x"), "--teacher", str(teacher_run["run"]),
                              "--latent-labels", str(teacher_run["lam"])])
    assert res.exit_code != 0 and "exclude each other" in res.output
    res = runner.invoke(app, [*fused["base"], "--out", str(tmp_path / "y"), "--distill-from", str(plain)])
    assert res.exit_code != 0 and "no model.safetensors" in res.output
    res = runner.invoke(app, [*[a if a != "ipad" else "transfuser" for a in fused["base"]], "--out",
                              str(tmp_path / "z"), "--distill-from", str(fused["runs"]["full"])])
    assert res.exit_code != 0 and "--host ipad" in res.output
    res = runner.invoke(app, [*[a if a != "ipad" else "ego-mlp" for a in fused["base"]], "--out",
                              str(tmp_path / "w"), "--teacher", str(teacher_run["run"])])
    assert res.exit_code != 0 and "ego-mlp" in res.output
